//! Bounds online guessing: failed credential checks per (identity, peer
//! address). After `max` failures within `window`, further attempts from
//! that address for that identity are refused without being checked until
//! the window ends. Keyed by address too, so that a stranger cannot lock
//! an administrator out from everywhere; the checking work a stranger can
//! cause stays bounded. Every face that checks credentials uses it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most (identity, address) pairs tracked at once.
const MAX_ENTRIES: usize = 65_536;

/// Failed checks per identity and address.
#[derive(Debug)]
pub struct Throttle {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<(String, IpAddr), (u32, Instant)>>,
}

impl Default for Throttle {
    /// Ten failures, then ten minutes.
    fn default() -> Self {
        Self::new(10, Duration::from_secs(600))
    }
}

impl Throttle {
    /// Refuse an identity from an address for `window` after `max` failed
    /// checks (0: never).
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// How long an address stays refused.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Whether attempts for `identity` from `ip` are refused unchecked.
    pub fn blocked(&self, identity: &str, ip: IpAddr) -> bool {
        if self.max == 0 {
            return false;
        }
        let Ok(map) = self.failures.lock() else {
            return false;
        };
        map.get(&(identity.to_owned(), ip))
            .is_some_and(|(n, since)| *n >= self.max && since.elapsed() < self.window)
    }

    /// Counts a failed check.
    pub fn failed(&self, identity: &str, ip: IpAddr) {
        if self.max == 0 {
            return;
        }
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        if map.len() >= MAX_ENTRIES {
            let window = self.window;
            map.retain(|_, (_, since)| since.elapsed() < window);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        let entry = map
            .entry((identity.to_owned(), ip))
            .or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    /// Forgets the failures after a successful check.
    pub fn succeeded(&self, identity: &str, ip: IpAddr) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&(identity.to_owned(), ip));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn blocks_per_identity_and_address() {
        let a = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let t = Throttle::new(2, Duration::from_secs(60));
        t.failed("300:88/A", a);
        assert!(!t.blocked("300:88/A", a));
        t.failed("300:88/A", a);
        assert!(t.blocked("300:88/A", a));
        assert!(
            !t.blocked("300:88/A", b),
            "other addresses are not locked out"
        );
        assert!(!t.blocked("300:88/B", a));
        t.succeeded("300:88/A", a);
        assert!(!t.blocked("300:88/A", a));
        let off = Throttle::new(0, Duration::from_secs(60));
        off.failed("x", a);
        off.failed("x", a);
        assert!(!off.blocked("x", a));
    }
}
