//! Connections: who may hold one, for how long, and who goes when the
//! node is full.
//!
//! Clients of an identifier node keep connections for hours (CAICT's
//! ID-SDK holds one for its whole life and cannot reconnect), so a short
//! idle cut is the wrong defence against exhaustion. Instead every stream
//! face admits connections through a [`Tracker`]: at most
//! `max_connections` in all and `max_per_address` from one address; when
//! the node is full, the connection that has been idle longest (no request
//! in progress) is closed to make room, and only when none is idle is the
//! newcomer refused. The idle cut stays, long (an hour by default), for
//! connections whose peer vanished without a word.
//!
//! [`accept_loop`] is the accept loop every stream face runs: it admits,
//! spawns the face's connection future, and ends that future when its
//! connection is evicted.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Limits of one stream face.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one address.
    pub max_per_address: usize,
    /// How long a connection may sit with nothing in progress.
    pub idle: Duration,
    /// How long a client may take over a TLS handshake.
    pub handshake: Duration,
    /// How long a client may take to send one request once it began, or
    /// to take one reply.
    pub request: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            max_per_address: 256,
            idle: Duration::from_secs(3600),
            handshake: Duration::from_secs(10),
            request: Duration::from_secs(30),
        }
    }
}

impl ConnLimits {
    /// The limits of a TCP listener as its configuration gives them, in
    /// seconds (zeros taken as the smallest value that means anything).
    pub fn tcp(
        max_connections: usize,
        max_per_address: usize,
        idle_secs: u64,
        request_secs: u64,
    ) -> Self {
        Self {
            max_connections: max_connections.max(1),
            max_per_address: max_per_address.max(1),
            idle: Duration::from_secs(idle_secs.max(1)),
            request: Duration::from_secs(request_secs.max(1)),
            ..Self::default()
        }
    }
}

/// When a connection was last used and whether a request is in progress.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    inflight: AtomicUsize,
}

impl Activity {
    fn new(epoch: Instant) -> Self {
        let a = Self {
            epoch,
            last_ms: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
        };
        a.touch();
        a
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Notes that the connection was used now.
    pub fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Marks a request in progress until the guard is dropped (also when
    /// the request's future is dropped half-way).
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        Busy(Arc::clone(self))
    }

    /// How long the connection has been idle; `None` while a request is in
    /// progress.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.inflight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = self.last_ms.load(Ordering::Relaxed);
        Some(Duration::from_millis(self.now_ms().saturating_sub(last)))
    }
}

/// A request in progress; see [`Activity::busy`].
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node is full and no connection is idle.
    Full,
    /// The address holds its whole share.
    AddressFull,
}

impl Refusal {
    /// A fixed label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Full => "connection_limit",
            Self::AddressFull => "address_limit",
        }
    }
}

#[derive(Debug)]
struct Entry {
    addr: IpAddr,
    activity: Arc<Activity>,
    cancel: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    conns: HashMap<u64, Entry>,
    per_addr: HashMap<IpAddr, usize>,
}

impl State {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.conns.remove(&id)?;
        if let Some(n) = self.per_addr.get_mut(&entry.addr) {
            *n -= 1;
            if *n == 0 {
                self.per_addr.remove(&entry.addr);
            }
        }
        Some(entry)
    }
}

/// Reports what the tracker did: `"evicted"` or a [`Refusal::label`].
pub type Reporter = Arc<dyn Fn(&'static str) + Send + Sync>;

/// The connections of one face.
pub struct Tracker {
    limits: ConnLimits,
    epoch: Instant,
    state: Mutex<State>,
    report: Option<Reporter>,
    evicted: AtomicU64,
    refused: AtomicU64,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("limits", &self.limits)
            .field("open", &self.open())
            .finish_non_exhaustive()
    }
}

impl Tracker {
    /// A tracker enforcing `limits`.
    pub fn new(limits: ConnLimits) -> Arc<Self> {
        Self::with_reporter(limits, None)
    }

    /// A tracker that counts every eviction and refusal as a drop of
    /// `face` (`idres_dropped_total{face, reason}`).
    pub fn for_face(limits: ConnLimits, face: Option<idres_metrics::FaceMetrics>) -> Arc<Self> {
        let report = face.map(|f| Arc::new(move |what: &'static str| f.dropped(what)) as Reporter);
        Self::with_reporter(limits, report)
    }

    /// A tracker that tells `report` of every eviction and refusal.
    pub fn with_reporter(limits: ConnLimits, report: Option<Reporter>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            epoch: Instant::now(),
            state: Mutex::new(State::default()),
            report,
            evicted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.state.lock().map_or(0, |s| s.conns.len())
    }

    /// Connections evicted so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn tell(&self, what: &'static str) {
        if let Some(r) = &self.report {
            r(what);
        }
    }

    /// Admits a connection from `addr`, evicting the longest-idle one if
    /// the node is full.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Result<Slot, Refusal> {
        let mut victim = None;
        let admitted = {
            let Ok(mut state) = self.state.lock() else {
                return Err(Refusal::Full);
            };
            if state.per_addr.get(&addr).copied().unwrap_or(0) >= self.limits.max_per_address.max(1)
            {
                Err(Refusal::AddressFull)
            } else {
                let mut room = state.conns.len() < self.limits.max_connections.max(1);
                if !room {
                    let oldest = state
                        .conns
                        .iter()
                        .filter_map(|(id, e)| {
                            e.activity.idle_for().map(|d| (d, std::cmp::Reverse(*id)))
                        })
                        .max();
                    if let Some((_, std::cmp::Reverse(id))) = oldest {
                        victim = state.remove(id);
                        room = true;
                    }
                }
                if room {
                    let id = state.next_id;
                    state.next_id += 1;
                    let activity = Arc::new(Activity::new(self.epoch));
                    let cancel = CancellationToken::new();
                    state.conns.insert(
                        id,
                        Entry {
                            addr,
                            activity: Arc::clone(&activity),
                            cancel: cancel.clone(),
                        },
                    );
                    *state.per_addr.entry(addr).or_insert(0) += 1;
                    Ok(Slot {
                        tracker: Arc::clone(self),
                        id,
                        activity,
                        cancel,
                    })
                } else {
                    Err(Refusal::Full)
                }
            }
        };
        if let Some(v) = victim {
            v.cancel.cancel();
            self.evicted.fetch_add(1, Ordering::Relaxed);
            self.tell("evicted");
        }
        if let Err(r) = &admitted {
            self.refused.fetch_add(1, Ordering::Relaxed);
            self.tell(r.label());
        }
        admitted
    }

    /// Ends every open connection.
    pub fn close_all(&self) {
        if let Ok(state) = self.state.lock() {
            for e in state.conns.values() {
                e.cancel.cancel();
            }
        }
    }

    fn release(&self, id: u64) {
        if let Ok(mut state) = self.state.lock() {
            state.remove(id);
        }
    }
}

/// A connection's place in its [`Tracker`], given back when dropped.
#[derive(Debug)]
pub struct Slot {
    tracker: Arc<Tracker>,
    id: u64,
    activity: Arc<Activity>,
    cancel: CancellationToken,
}

impl Slot {
    /// The connection's activity, to mark requests and use.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Fires when the connection is evicted or closed by the tracker.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// The limits of the face.
    pub fn limits(&self) -> &ConnLimits {
        &self.tracker.limits
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.tracker.release(self.id);
    }
}

/// Accepts connections on `listener` until `shutdown` turns true, admits
/// each through `tracker` and runs `serve` for it on its own task; a
/// connection evicted by the tracker has its future dropped, which closes
/// it. A failing accept (out of descriptors, say) backs off briefly
/// instead of spinning.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    tracker: Arc<Tracker>,
    mut shutdown: watch::Receiver<bool>,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr, Slot) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            r = shutdown.changed() => {
                if r.is_err() {
                    return;
                }
                continue;
            }
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match tracker.admit(peer.ip()) {
            Ok(s) => s,
            Err(why) => {
                tracing::debug!(%peer, reason = why.label(), "connection refused");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let token = slot.token();
        let conn = serve(stream, peer, slot);
        tokio::spawn(async move {
            tokio::select! {
                () = conn => {}
                () = token.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per: usize) -> ConnLimits {
        ConnLimits {
            max_connections: max,
            max_per_address: per,
            ..ConnLimits::default()
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn the_longest_idle_connection_makes_room() {
        let t = Tracker::new(limits(3, 10));
        let a = t.admit(ip(1)).expect("a");
        std::thread::sleep(Duration::from_millis(5));
        let b = t.admit(ip(2)).expect("b");
        let c = t.admit(ip(3)).expect("c");
        // `a` is busy, so `b` is the longest idle.
        let _busy = a.activity().busy();
        let d = t.admit(ip(4)).expect("d evicts b");
        assert!(b.token().is_cancelled());
        assert!(!a.token().is_cancelled() && !c.token().is_cancelled());
        assert_eq!(t.open(), 3);
        assert_eq!(t.evicted(), 1);
        drop(b);
        assert_eq!(t.open(), 3, "the evicted slot was already given back");
        drop((c, d));
        assert_eq!(t.open(), 1);
    }

    #[test]
    fn a_full_node_with_nothing_idle_refuses() {
        let t = Tracker::new(limits(2, 10));
        let a = t.admit(ip(1)).expect("a");
        let b = t.admit(ip(2)).expect("b");
        let (_x, _y) = (a.activity().busy(), b.activity().busy());
        assert_eq!(t.admit(ip(3)).err(), Some(Refusal::Full));
        assert_eq!(t.refused(), 1);
    }

    #[test]
    fn one_address_has_a_share() {
        let t = Tracker::new(limits(100, 2));
        let _a = t.admit(ip(1)).expect("a");
        let b = t.admit(ip(1)).expect("b");
        assert_eq!(t.admit(ip(1)).err(), Some(Refusal::AddressFull));
        assert!(t.admit(ip(2)).is_ok());
        drop(b);
        assert!(t.admit(ip(1)).is_ok());
    }

    #[test]
    fn busy_connections_are_not_idle() {
        let a = Arc::new(Activity::new(Instant::now()));
        let g = a.busy();
        assert!(a.idle_for().is_none());
        drop(g);
        assert!(a.idle_for().is_some_and(|d| d < Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn the_accept_loop_closes_evicted_connections() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tracker = Tracker::new(limits(1, 10));
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&tracker),
            rx,
            |s, _, slot| async move {
                let _slot = slot;
                let _s = s;
                std::future::pending::<()>().await;
            },
        ));
        let mut first = TcpStream::connect(addr).await.expect("first");
        // Let the loop admit the first before the second comes.
        while tracker.open() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _second = TcpStream::connect(addr).await.expect("second");
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf))
            .await
            .expect("the first is closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(tracker.evicted(), 1);
        let _ = stop.send(true);
        task.await.expect("loop ends");
    }
}
