//! Sequences of datagrams from a few peers, at advancing times, through
//! the reassembler: no panic, and memory stays within its limits.
#![no_main]

use std::time::{Duration, Instant};

use idres_wire::{Assembled, Reassembler, ReassemblyLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = ReassemblyLimits {
        max_pending: 4,
        max_bytes: 64 * 1024,
        timeout: Duration::from_millis(50),
        max_pending_per_sender: 2,
        max_bytes_per_sender: 32 * 1024,
    };
    let mut r: Reassembler<u8> = Reassembler::new(limits);
    let start = Instant::now();
    let mut t = 0u64;
    // Each chunk: peer byte, time step byte, 2-byte length, datagram.
    let mut rest = data;
    while rest.len() >= 4 {
        let peer = rest[0] % 3;
        t += u64::from(rest[1]);
        let len = (usize::from(rest[2]) << 8 | usize::from(rest[3])).min(rest.len() - 4);
        let datagram = &rest[4..4 + len];
        rest = &rest[4 + len..];
        if let Ok(Assembled::Complete(m)) = r.push(&peer, datagram, start + Duration::from_millis(t)) {
            assert!(m.len() <= 20 + 262_144);
        }
        assert!(r.pending() <= 4);
    }
});
