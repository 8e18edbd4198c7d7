//! The Handle challenge-response (RFC 3652 §3.5).
//!
//! A server answers an administrative request with AUTHENTICATION_NEEDED
//! (402), a fresh session id and a body of the request digest and a nonce.
//! The client answers (opcode 200) in that session with the identity it
//! speaks for and a proof over the nonce and the digest: a MAC under its
//! secret key (HS_SECKEY) or a signature with its private key
//! (HS_PUBKEY). [`Challenges`] keeps the open challenges: each is good for
//! one answer and for a bounded time, the table is bounded in size and per
//! peer address, and the session id is drawn at random, so that a
//! challenge can be answered on another connection or socket (as the
//! Handle.Net client may) but not guessed. [`verify_answer`] checks an
//! answer against the identity's key in the state given.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore as _;

/// Bytes of a nonce.
pub const NONCE_LEN: usize = 16;
/// How long a challenge may be answered.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Most open challenges.
pub const DEFAULT_MAX_OPEN: usize = 16_384;
/// Most open challenges of one peer address.
pub const DEFAULT_MAX_PER_PEER: usize = 256;

/// One open challenge.
#[derive(Debug)]
pub struct Pending<T> {
    /// The nonce sent.
    pub nonce: [u8; NONCE_LEN],
    /// The digest of the challenged request, as sent (type byte and
    /// digest).
    pub digest: Vec<u8>,
    /// What to carry out once the answer checks (the request).
    pub request: T,
    /// Who was challenged.
    pub peer: IpAddr,
    issued: Instant,
}

/// Why an answer found no challenge to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeError {
    /// No open challenge has this session id (never issued, or already
    /// answered).
    Unknown,
    /// The challenge was issued too long ago.
    Expired,
}

/// Why no challenge could be issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// The open challenges of a node.
#[derive(Debug)]
pub struct Challenges<T> {
    open: Mutex<HashMap<u32, Pending<T>>>,
    ttl: Duration,
    max_open: usize,
    max_per_peer: usize,
}

impl<T> Default for Challenges<T> {
    fn default() -> Self {
        Self::new(DEFAULT_TTL, DEFAULT_MAX_OPEN, DEFAULT_MAX_PER_PEER)
    }
}

impl<T> Challenges<T> {
    /// A table whose challenges last `ttl`, with at most `max_open` open
    /// and `max_per_peer` per peer address.
    pub fn new(ttl: Duration, max_open: usize, max_per_peer: usize) -> Self {
        Self {
            open: Mutex::new(HashMap::new()),
            ttl,
            max_open: max_open.max(1),
            max_per_peer: max_per_peer.max(1),
        }
    }

    /// How long a challenge lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Opens a challenge for `request` from `peer`, whose digest (as sent)
    /// is `digest`: returns the session id and the nonce to send.
    pub fn issue(
        &self,
        peer: IpAddr,
        digest: Vec<u8>,
        request: T,
    ) -> Result<(u32, [u8; NONCE_LEN]), Busy> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let Ok(mut open) = self.open.lock() else {
            return Err(Busy);
        };
        let now = Instant::now();
        if open.len() >= self.max_open {
            let ttl = self.ttl;
            open.retain(|_, p| now.duration_since(p.issued) < ttl);
            if open.len() >= self.max_open {
                return Err(Busy);
            }
        }
        if open.values().filter(|p| p.peer == peer).count() >= self.max_per_peer {
            let ttl = self.ttl;
            open.retain(|_, p| p.peer != peer || now.duration_since(p.issued) < ttl);
            if open.values().filter(|p| p.peer == peer).count() >= self.max_per_peer {
                return Err(Busy);
            }
        }
        let session = loop {
            let id = rand::rngs::OsRng.next_u32();
            if id != 0 && !open.contains_key(&id) {
                break id;
            }
        };
        open.insert(
            session,
            Pending {
                nonce,
                digest,
                request,
                peer,
                issued: now,
            },
        );
        Ok((session, nonce))
    }

    /// Takes the challenge of `session` for answering: it is gone from the
    /// table whatever the answer, so that no challenge is answered twice.
    pub fn take(&self, session: u32) -> Result<Pending<T>, TakeError> {
        let Ok(mut open) = self.open.lock() else {
            return Err(TakeError::Unknown);
        };
        let p = open.remove(&session).ok_or(TakeError::Unknown)?;
        if p.issued.elapsed() >= self.ttl {
            return Err(TakeError::Expired);
        }
        Ok(p)
    }

    /// Number of open challenges.
    pub fn len(&self) -> usize {
        self.open.lock().map_or(0, |o| o.len())
    }

    /// Whether no challenge is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn one_answer_each() {
        let c = Challenges::default();
        let (s1, n1) = c.issue(A, vec![3, 1, 2], "create").unwrap();
        let (s2, n2) = c.issue(A, vec![3, 1, 2], "delete").unwrap();
        assert_ne!(s1, s2);
        assert_ne!(n1, n2);
        assert_eq!(c.take(s1).unwrap().request, "create");
        assert_eq!(c.take(s1).unwrap_err(), TakeError::Unknown);
        assert_eq!(c.take(12345).unwrap_err(), TakeError::Unknown);
        assert_eq!(c.take(s2).unwrap().nonce, n2);
    }

    #[test]
    fn expiry_and_bounds() {
        let c = Challenges::new(Duration::from_millis(30), 4, 2);
        let (s, _) = c.issue(A, vec![], 1).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.take(s).unwrap_err(), TakeError::Expired);
        let c = Challenges::new(Duration::from_secs(60), 3, 2);
        c.issue(A, vec![], 1).unwrap();
        c.issue(A, vec![], 2).unwrap();
        assert_eq!(c.issue(A, vec![], 3), Err(Busy), "per-peer bound");
        c.issue(B, vec![], 4).unwrap();
        assert_eq!(c.issue(B, vec![], 5), Err(Busy), "table bound");
    }
}
