//! Grouping client addresses into the networks they come from.
//!
//! Limits that are meant to bound one client are kept per network prefix,
//! not per address: a client, or an attacker spoofing sources, usually
//! holds a whole IPv4 /24 or IPv6 /56, and an IPv6 host has far more
//! addresses than anyone can count. The prefix lengths are configurable.

use std::net::IpAddr;

/// Prefix lengths that group addresses into sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefixes {
    /// Bits of an IPv4 address that name its source (default 24).
    pub v4: u8,
    /// Bits of an IPv6 address that name its source (default 56).
    pub v6: u8,
}

impl Default for Prefixes {
    fn default() -> Self {
        Self { v4: 24, v6: 56 }
    }
}

/// A source: an address with its host bits cleared, IPv4 kept apart from
/// IPv6 (an IPv4-mapped IPv6 address counts as IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey(u128);

impl SourceKey {
    /// A key no address maps to (its tag bit says IPv4 but bits above an
    /// IPv4 address are set).
    pub(crate) const OVERFLOW: Self = Self(u128::MAX);
}

impl Prefixes {
    /// The source `ip` belongs to.
    pub fn key(&self, ip: IpAddr) -> SourceKey {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let keep = u32::from(self.v4.min(32));
                let masked = if keep == 0 {
                    0
                } else {
                    bits & (u32::MAX << (32 - keep))
                };
                // The top bit tells IPv4 sources from IPv6 ones.
                SourceKey((1u128 << 127) | u128::from(masked))
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let keep = u32::from(self.v6.min(128));
                let masked = if keep == 0 {
                    0
                } else {
                    bits & (u128::MAX << (128 - keep))
                };
                // Global IPv6 space starts with 001; clearing the top bit
                // of the rare others keeps the tag unambiguous.
                SourceKey(masked & !(1u128 << 127))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn addresses_in_one_prefix_share_a_key() {
        let p = Prefixes::default();
        assert_eq!(p.key(ip("192.0.2.1")), p.key(ip("192.0.2.254")));
        assert_ne!(p.key(ip("192.0.2.1")), p.key(ip("192.0.3.1")));
        assert_eq!(p.key(ip("2001:db8:0:ab::1")), p.key(ip("2001:db8:0:ff::2")));
        assert_ne!(
            p.key(ip("2001:db8:0:100::1")),
            p.key(ip("2001:db8:0:ff::1"))
        );
        assert_eq!(p.key(ip("::ffff:192.0.2.7")), p.key(ip("192.0.2.9")));
    }

    #[test]
    fn full_and_empty_prefixes() {
        let exact = Prefixes { v4: 32, v6: 128 };
        assert_ne!(exact.key(ip("127.0.0.1")), exact.key(ip("127.0.0.2")));
        let all = Prefixes { v4: 0, v6: 0 };
        assert_eq!(all.key(ip("10.0.0.1")), all.key(ip("192.0.2.1")));
        assert_ne!(all.key(ip("10.0.0.1")), all.key(ip("2001:db8::1")));
        let wide = Prefixes { v4: 40, v6: 200 };
        assert_ne!(wide.key(ip("127.0.0.1")), wide.key(ip("127.0.0.2")));
    }
}
