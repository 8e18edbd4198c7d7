//! Per-source byte budgets for connectionless faces, and per-identity
//! rate limits for writes, on `governor`'s token buckets (GCRA).
//!
//! A reply over UDP goes to whatever source address the request claimed,
//! so a spoofed request makes the node send its reply to a victim. What
//! bounds the harm is what one source can draw, counted in bytes: each
//! reply is charged its size against its source's bucket (a network
//! prefix, see [`Prefixes`]), and a reply the bucket cannot pay for is
//! not sent. As in the response-rate limiting of Knot and NSD, every
//! `slip`-th reply refused is answered instead with something smaller than
//! the request that tells a real client to come back over TCP; an attacker
//! gains nothing from those.
//!
//! The table of sources is bounded: it is swept of sources whose buckets
//! are full again about once a second, and when it holds `max_sources`
//! sources every new one shares a single bucket until a sweep makes room.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::source::{Prefixes, SourceKey};

/// How a connectionless face bounds what one source may draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Bytes per second one source may be sent (0: no limit).
    pub bytes_per_sec: u32,
    /// Bytes one source may be sent at once after being quiet.
    pub burst_bytes: u32,
    /// Every `slip`-th reply over budget is answered by a short reply
    /// that sends the client to TCP (0: never; 1: always).
    pub slip: u32,
    /// How addresses group into sources.
    pub prefixes: Prefixes,
    /// Most sources tracked one by one.
    pub max_sources: usize,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            bytes_per_sec: 128 * 1024,
            burst_bytes: 256 * 1024,
            slip: 2,
            prefixes: Prefixes::default(),
            max_sources: 100_000,
        }
    }
}

impl BudgetConfig {
    /// A budget of `bytes_per_sec` with bursts of `burst_bytes` per source,
    /// sources being /`v4` and /`v6` networks, with the given `slip`.
    pub fn per_source(bytes_per_sec: u32, burst_bytes: u32, slip: u32, v4: u8, v6: u8) -> Self {
        Self {
            bytes_per_sec,
            burst_bytes,
            slip,
            prefixes: Prefixes { v4, v6 },
            ..Self::default()
        }
    }
}

/// What to do with a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within budget: send it.
    Send,
    /// Over budget, and this one slips: send the short reply instead.
    Slip,
    /// Over budget: send nothing.
    Drop,
}

/// The bucket every source shares while the table is full.
const OVERFLOW: SourceKey = SourceKey::OVERFLOW;

/// Byte budgets per source.
#[derive(Debug)]
pub struct ByteBudget {
    limiter: Option<DefaultKeyedRateLimiter<SourceKey>>,
    config: BudgetConfig,
    refused: AtomicU32,
    limited: AtomicU64,
    epoch: Instant,
    last_sweep_ms: AtomicU64,
}

impl ByteBudget {
    /// A budget as `config` says (`bytes_per_sec` 0: unlimited).
    pub fn new(config: BudgetConfig) -> Self {
        let limiter = NonZeroU32::new(config.bytes_per_sec).map(|rate| {
            let burst =
                NonZeroU32::new(config.burst_bytes.max(config.bytes_per_sec)).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            config,
            refused: AtomicU32::new(0),
            limited: AtomicU64::new(0),
            epoch: Instant::now(),
            last_sweep_ms: AtomicU64::new(0),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    /// Charges a reply of `bytes` to `ip`'s source.
    pub fn charge(&self, ip: IpAddr, bytes: usize) -> Verdict {
        let Some(limiter) = &self.limiter else {
            return Verdict::Send;
        };
        self.sweep(limiter);
        let mut key = self.config.prefixes.key(ip);
        if limiter.len() >= self.config.max_sources {
            // A source already tracked keeps its own bucket; a new one
            // shares the overflow bucket.
            key = OVERFLOW;
        }
        let cost = NonZeroU32::new(u32::try_from(bytes).unwrap_or(u32::MAX).max(1))
            .unwrap_or(NonZeroU32::MIN);
        match limiter.check_key_n(&key, cost) {
            Ok(Ok(())) => Verdict::Send,
            Ok(Err(_)) | Err(_) => {
                self.limited.fetch_add(1, Ordering::Relaxed);
                let slip = self.config.slip;
                if slip == 0 {
                    return Verdict::Drop;
                }
                let n = self.refused.fetch_add(1, Ordering::Relaxed);
                if n % slip == slip - 1 {
                    Verdict::Slip
                } else {
                    Verdict::Drop
                }
            }
        }
    }

    /// Whether `ip`'s source has spent its budget already (it is charged
    /// one byte for asking): a face can skip the work of answering a source
    /// that floods it.
    pub fn spent(&self, ip: IpAddr) -> bool {
        let Some(limiter) = &self.limiter else {
            return false;
        };
        let key = self.config.prefixes.key(ip);
        !matches!(limiter.check_key_n(&key, NonZeroU32::MIN), Ok(Ok(())))
    }

    /// Replies refused so far (slipped or dropped).
    pub fn limited(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }

    /// Sources tracked one by one now.
    pub fn sources(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }

    fn sweep(&self, limiter: &DefaultKeyedRateLimiter<SourceKey>) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1000 {
            return;
        }
        // One caller sweeps; the others go on.
        if self
            .last_sweep_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Rate limits per authenticated identity (writes, say).
#[derive(Debug)]
pub struct IdentityLimiter {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    max_identities: usize,
    limited: AtomicU64,
}

impl IdentityLimiter {
    /// `per_sec` operations a second per identity with bursts of `burst`
    /// (`per_sec` 0: unlimited).
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_sec).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_sec)).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            max_identities: 100_000,
            limited: AtomicU64::new(0),
        }
    }

    /// Takes `n` operations from `identity`'s allowance, or says how long
    /// until it has them.
    pub fn check(&self, identity: &str, n: u32) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() >= self.max_identities {
            limiter.retain_recent();
        }
        let clock = DefaultClock::default();
        let key = identity.to_owned();
        let cost = NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
        match limiter.check_key_n(&key, cost) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                self.limited.fetch_add(1, Ordering::Relaxed);
                Err(not_until.wait_time_from(clock.now()))
            }
            // More than a whole burst at once: let it through alone only
            // when the bucket is full, by charging one burst.
            Err(insufficient) => {
                let all = NonZeroU32::new(insufficient.0).unwrap_or(NonZeroU32::MIN);
                match limiter.check_key_n(&key, all) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(not_until)) => {
                        self.limited.fetch_add(1, Ordering::Relaxed);
                        Err(not_until.wait_time_from(clock.now()))
                    }
                    Err(_) => Ok(()),
                }
            }
        }
    }

    /// Operations refused so far.
    pub fn limited(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn a_source_is_bounded_in_bytes_and_others_are_not() {
        let b = ByteBudget::new(BudgetConfig {
            bytes_per_sec: 10_000,
            burst_bytes: 10_000,
            slip: 0,
            ..BudgetConfig::default()
        });
        let mut sent = 0;
        for _ in 0..100 {
            if b.charge(ip("192.0.2.1"), 1000) == Verdict::Send {
                sent += 1000;
            }
        }
        // The burst, and whatever refilled while the loop ran.
        assert!((10_000..=12_000).contains(&sent), "{sent}");
        // The same /24 shares the bucket; another /24 has its own.
        assert_eq!(b.charge(ip("192.0.2.200"), 1000), Verdict::Drop);
        assert_eq!(b.charge(ip("198.51.100.1"), 1000), Verdict::Send);
        assert!(b.limited() >= 89);
    }

    #[test]
    fn a_spent_source_is_told_before_the_work() {
        // Slow refill (a byte per 100 ms), so the test sees the bucket as
        // it left it.
        let b = ByteBudget::new(BudgetConfig {
            bytes_per_sec: 10,
            burst_bytes: 1000,
            slip: 0,
            ..BudgetConfig::default()
        });
        // Asking costs one byte; the reply takes the rest.
        assert!(!b.spent(ip("192.0.2.1")));
        assert_eq!(b.charge(ip("192.0.2.1"), 999), Verdict::Send);
        assert!(b.spent(ip("192.0.2.1")));
        assert!(!b.spent(ip("198.51.100.1")));
    }

    #[test]
    fn every_slip_th_refusal_slips() {
        let b = ByteBudget::new(BudgetConfig {
            bytes_per_sec: 1000,
            burst_bytes: 1000,
            slip: 2,
            ..BudgetConfig::default()
        });
        assert_eq!(b.charge(ip("192.0.2.1"), 1000), Verdict::Send);
        let verdicts: Vec<Verdict> = (0..6).map(|_| b.charge(ip("192.0.2.1"), 1000)).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Drop,
                Verdict::Slip,
                Verdict::Drop,
                Verdict::Slip,
                Verdict::Drop,
                Verdict::Slip
            ]
        );
    }

    #[test]
    fn a_reply_larger_than_the_burst_is_never_sent() {
        let b = ByteBudget::new(BudgetConfig {
            bytes_per_sec: 1000,
            burst_bytes: 1000,
            slip: 0,
            ..BudgetConfig::default()
        });
        assert_eq!(b.charge(ip("192.0.2.1"), 5000), Verdict::Drop);
    }

    #[test]
    fn the_source_table_is_bounded() {
        let b = ByteBudget::new(BudgetConfig {
            bytes_per_sec: 1000,
            burst_bytes: 1000,
            slip: 0,
            max_sources: 10,
            ..BudgetConfig::default()
        });
        for i in 0..=255u8 {
            let _ = b.charge(IpAddr::from([10, i, 0, 1]), 600);
        }
        assert!(b.sources() <= 11, "{}", b.sources());
        // New sources share one bucket, which is spent.
        assert_eq!(b.charge(ip("10.200.0.9"), 600), Verdict::Drop);
    }

    #[test]
    fn unlimited_when_off() {
        let b = ByteBudget::new(BudgetConfig {
            bytes_per_sec: 0,
            ..BudgetConfig::default()
        });
        for _ in 0..1000 {
            assert_eq!(b.charge(ip("192.0.2.1"), 60_000), Verdict::Send);
        }
    }

    #[test]
    fn identities_are_limited_apart() {
        let l = IdentityLimiter::new(5, 5);
        for _ in 0..5 {
            assert!(l.check("300:0.NA/A", 1).is_ok());
        }
        let wait = l.check("300:0.NA/A", 1).expect_err("over the limit");
        assert!(wait <= Duration::from_millis(250), "{wait:?}");
        assert!(l.check("300:0.NA/B", 1).is_ok());
        // A batch bigger than the burst passes alone on a full bucket.
        assert!(l.check("300:0.NA/C", 50).is_ok());
        assert!(l.check("300:0.NA/C", 1).is_err());
        assert_eq!(l.limited(), 2);
    }
}
