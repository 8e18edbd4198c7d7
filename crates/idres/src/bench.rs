//! `idres bench resolve`: a UDP load generator for the Handle protocol.
//!
//! Each client owns one connected UDP socket. In `--rate max` mode one
//! thread keeps a window of requests in flight: every answer frees a slot
//! that is refilled at once, and a slot whose request has waited longer
//! than the timeout is counted lost and reused. With `--rate N` a sender
//! thread puts requests on the wire on a fixed schedule (open loop, N per
//! second over all clients) whatever the answers do, and a receiver thread
//! blocked on the socket timestamps each answer as it arrives, so latency
//! is measured as a client of a busy service sees it. Latencies go into an
//! HDR histogram.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use idres_service::client::encode_request;
use idres_wire::{Envelope, Request, ResponseCode};

/// Options of `idres bench resolve`.
#[derive(Debug, clap::Args)]
pub struct BenchResolveArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:2641")]
    pub server: SocketAddr,
    /// File of handles to ask for: one per line, or JSON Lines records
    /// (their "handle" field is used).
    #[arg(long)]
    pub handles: PathBuf,
    /// How long to send, e.g. 15s or 500ms.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Queries per second over all threads, or "max".
    #[arg(long, default_value = "max")]
    pub rate: String,
    /// Client threads (one socket each).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Requests in flight per thread in max mode.
    #[arg(long, default_value_t = 200)]
    pub window: usize,
    /// A request unanswered for this long is lost.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Address to send from (any local address, such as another 127.x.y.z
    /// to play a second source).
    #[arg(long)]
    pub bind: Option<std::net::IpAddr>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    };
    if !(secs.is_finite() && secs > 0.0 && secs < 86_400.0) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn load_handles(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in BufReader::new(f).lines().enumerate() {
        let line = line?;
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        if t.starts_with('{') {
            let v: serde_json::Value =
                serde_json::from_str(t).with_context(|| format!("line {}", n + 1))?;
            match v.get("handle").and_then(|h| h.as_str()) {
                Some(h) => out.push(h.to_owned()),
                None => bail!("line {}: no \"handle\" field", n + 1),
            }
        } else {
            out.push(t.to_owned());
        }
    }
    if out.is_empty() {
        bail!("no handles in {}", path.display());
    }
    Ok(out)
}

#[derive(Debug, Default)]
struct ThreadResult {
    sent: u64,
    answered: u64,
    lost: u64,
    success: u64,
    not_found: u64,
    other: u64,
    bytes_sent: u64,
    bytes_received: u64,
    hist: Option<Histogram<u64>>,
}

struct Slot {
    sent_at: Option<Instant>,
    request_id: u32,
}

/// Runs `idres bench resolve`.
pub fn run(args: &BenchResolveArgs) -> anyhow::Result<()> {
    let handles = Arc::new(load_handles(&args.handles)?);
    // Pre-encode every request once; the request id is patched per send.
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        handles
            .iter()
            .map(|h| {
                encode_request(
                    &Request::Resolution {
                        handle: h,
                        indexes: vec![],
                        types: vec![],
                    },
                    0,
                    0,
                )
            })
            .collect(),
    );
    let rate: Option<f64> = match args.rate.as_str() {
        "max" => None,
        r => Some(
            r.parse::<f64>()
                .ok()
                .filter(|r| *r > 0.0)
                .with_context(|| {
                    format!("--rate must be \"max\" or a positive number, not {r:?}")
                })?,
        ),
    };
    let threads = args.threads.max(1);
    let started = Instant::now();
    let mut joins = Vec::new();
    for t in 0..threads {
        let requests = Arc::clone(&requests);
        let server = args.server;
        let duration = args.duration;
        let timeout = args.timeout;
        let window = args.window.max(1);
        let bind = args.bind;
        let per_thread_rate = rate.map(|r| r / threads as f64);
        joins.push(std::thread::spawn(move || match per_thread_rate {
            Some(q) => paced_client(t, server, bind, &requests, duration, timeout, q),
            None => client(t, server, bind, &requests, duration, timeout, window),
        }));
    }
    let mut total = ThreadResult {
        hist: Some(new_hist()?),
        ..ThreadResult::default()
    };
    for j in joins {
        let r = j
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        total.sent += r.sent;
        total.answered += r.answered;
        total.lost += r.lost;
        total.success += r.success;
        total.not_found += r.not_found;
        total.other += r.other;
        total.bytes_sent += r.bytes_sent;
        total.bytes_received += r.bytes_received;
        if let (Some(t), Some(h)) = (total.hist.as_mut(), r.hist.as_ref()) {
            t.add(h).context("merging histograms")?;
        }
    }
    let elapsed = args.duration.as_secs_f64();
    let _ = started;
    let hist = total.hist.take().context("histogram")?;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1e6;
    let qps = total.answered as f64 / elapsed;
    let lost_pct = if total.sent > 0 {
        100.0 * total.lost as f64 / total.sent as f64
    } else {
        0.0
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "rate": args.rate, "seconds": elapsed, "sent": total.sent, "answered": total.answered,
                "lost": total.lost, "lost_pct": lost_pct, "qps": qps,
                "success": total.success, "not_found": total.not_found, "other_rc": total.other,
                "p50_ms": ms(0.50), "p90_ms": ms(0.90), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
                "max_ms": hist.max() as f64 / 1e6,
                "bytes_sent": total.bytes_sent, "bytes_received": total.bytes_received,
            })
        );
    } else {
        println!(
            "rate={} seconds={elapsed:.1} sent={} answered={} lost={} ({lost_pct:.3}%) qps={qps:.0}",
            args.rate, total.sent, total.answered, total.lost
        );
        println!(
            "rc: success={} not_found={} other={}",
            total.success, total.not_found, total.other
        );
        println!(
            "latency ms: p50={:.3} p90={:.3} p99={:.3} p99.9={:.3} max={:.3}",
            ms(0.50),
            ms(0.90),
            ms(0.99),
            ms(0.999),
            hist.max() as f64 / 1e6
        );
    }
    Ok(())
}

fn new_hist() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).context("creating a histogram")
}

/// Open-loop client: a paced sender and a blocking receiver sharing the
/// socket and a table of send times indexed by request id.
fn paced_client(
    thread: usize,
    server: SocketAddr,
    bind: Option<std::net::IpAddr>,
    requests: &[Vec<u8>],
    duration: Duration,
    timeout: Duration,
    rate: f64,
) -> anyhow::Result<ThreadResult> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let local = bind.unwrap_or(if server.is_ipv4() {
        std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    } else {
        std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    });
    let socket = UdpSocket::bind(SocketAddr::new(local, 0))?;
    socket.connect(server)?;
    let receiver_socket = socket.try_clone()?;
    receiver_socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    // Enough slots that a slot comes round again only after the timeout.
    let slots_len = ((rate * timeout.as_secs_f64() * 2.0) as usize + 1024).min(1 << 20);
    // Each slot: send time in ns since start (0 = free) and the request id.
    let sent_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..slots_len).map(|_| AtomicU64::new(0)).collect());
    let ids: Arc<Vec<AtomicU64>> = Arc::new((0..slots_len).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let receiver = {
        let sent_at = Arc::clone(&sent_at);
        let ids = Arc::clone(&ids);
        let done = Arc::clone(&done);
        std::thread::spawn(move || -> anyhow::Result<ThreadResult> {
            let mut r = ThreadResult {
                hist: Some(new_hist()?),
                ..ThreadResult::default()
            };
            let mut buf = [0u8; 2048];
            loop {
                let n = match receiver_socket.recv(&mut buf) {
                    Ok(n) => n,
                    Err(_) if done.load(Ordering::Acquire) => break,
                    Err(_) => continue,
                };
                r.bytes_received += n as u64;
                let got = start.elapsed().as_nanos() as u64;
                let Ok(env) = Envelope::decode(&buf[..n]) else {
                    continue;
                };
                if env.sequence != 0 {
                    continue;
                }
                let slot = (env.request_id as usize) % slots_len;
                if ids[slot].load(Ordering::Acquire) != u64::from(env.request_id) {
                    continue;
                }
                let t = sent_at[slot].swap(0, Ordering::AcqRel);
                if t == 0 {
                    continue;
                }
                r.answered += 1;
                let rc = buf
                    .get(24..28)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map_or(0, u32::from_be_bytes);
                match ResponseCode(rc) {
                    ResponseCode::SUCCESS => r.success += 1,
                    ResponseCode::HANDLE_NOT_FOUND => r.not_found += 1,
                    _ => r.other += 1,
                }
                if let Some(h) = r.hist.as_mut() {
                    let _ = h.record(got.saturating_sub(t).clamp(1_000, 60_000_000_000));
                }
            }
            Ok(r)
        })
    };
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut sent = 0u64;
    let mut bytes_sent = 0u64;
    let mut pick = (thread as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut msg = Vec::with_capacity(600);
    let mut id: u32 = (thread as u32).wrapping_mul(0x0100_0000);
    let mut next = start;
    while next < start + duration {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        pick ^= pick << 13;
        pick ^= pick >> 7;
        pick ^= pick << 17;
        let req = &requests[(pick % requests.len() as u64) as usize];
        id = id.wrapping_add(1);
        let slot = (id as usize) % slots_len;
        msg.clear();
        msg.extend_from_slice(req);
        msg[8..12].copy_from_slice(&id.to_be_bytes());
        ids[slot].store(u64::from(id), Ordering::Release);
        sent_at[slot].store(
            (start.elapsed().as_nanos() as u64).max(1),
            Ordering::Release,
        );
        sent += 1;
        match socket.send(&msg) {
            Ok(n) => bytes_sent += n as u64,
            Err(_) => sent_at[slot].store(0, Ordering::Release),
        }
        next += interval;
    }
    // Give the last answers the timeout to arrive.
    std::thread::sleep(timeout);
    done.store(true, Ordering::Release);
    let mut r = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiver thread panicked"))??;
    r.sent = sent;
    r.bytes_sent = bytes_sent;
    r.lost = sent.saturating_sub(r.answered);
    Ok(r)
}

fn client(
    thread: usize,
    server: SocketAddr,
    bind: Option<std::net::IpAddr>,
    requests: &[Vec<u8>],
    duration: Duration,
    timeout: Duration,
    window: usize,
) -> anyhow::Result<ThreadResult> {
    let local = bind.unwrap_or(if server.is_ipv4() {
        std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    } else {
        std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    });
    let socket = UdpSocket::bind(SocketAddr::new(local, 0))?;
    socket.connect(server)?;
    let mut r = ThreadResult {
        hist: Some(new_hist()?),
        ..ThreadResult::default()
    };
    let slots_len = window;
    let mut slots: Vec<Slot> = (0..slots_len)
        .map(|_| Slot {
            sent_at: None,
            request_id: 0,
        })
        .collect();
    let mut seq: u32 = (thread as u32) << 24;
    let mut pick = (thread as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = [0u8; 2048];
    let mut msg = Vec::with_capacity(600);
    let start = Instant::now();
    let end = start + duration;
    let mut free: Vec<usize> = (0..slots_len).rev().collect();
    let mut send_one = |slot: usize,
                        slots: &mut Vec<Slot>,
                        r: &mut ThreadResult,
                        now: Instant|
     -> anyhow::Result<()> {
        pick ^= pick << 13;
        pick ^= pick >> 7;
        pick ^= pick << 17;
        let req = &requests[(pick % requests.len() as u64) as usize];
        seq = seq.wrapping_add(1);
        // Request id: slot number in the low 20 bits, a generation above.
        let id = (seq << 20) | slot as u32;
        msg.clear();
        msg.extend_from_slice(req);
        msg[8..12].copy_from_slice(&id.to_be_bytes());
        slots[slot] = Slot {
            sent_at: Some(now),
            request_id: id,
        };
        r.sent += 1;
        r.bytes_sent += msg.len() as u64;
        if let Err(e) = socket.send(&msg) {
            // A full send buffer or an ICMP error: count the request lost.
            slots[slot].sent_at = None;
            r.lost += 1;
            if e.kind() != std::io::ErrorKind::WouldBlock {
                std::thread::sleep(Duration::from_millis(1));
            }
            return Ok(());
        }
        Ok(())
    };
    if slots_len > (1 << 20) {
        bail!("too many requests in flight for one thread; use more threads");
    }
    let mut last_sweep = start;
    socket.set_read_timeout(Some(timeout / 4))?;
    loop {
        let now = Instant::now();
        let sending = now < end;
        // Send what is due.
        if sending {
            while let Some(slot) = free.pop() {
                send_one(slot, &mut slots, &mut r, now)?;
            }
        } else if free.len() == slots_len || now > end + timeout {
            break;
        }
        // Expire old requests now and then.
        if now.duration_since(last_sweep) > timeout / 4 {
            last_sweep = now;
            for (i, s) in slots.iter_mut().enumerate() {
                if s.sent_at.is_some_and(|t| now.duration_since(t) > timeout) {
                    s.sent_at = None;
                    r.lost += 1;
                    free.push(i);
                }
            }
        }
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => continue,
        };
        let got = Instant::now();
        r.bytes_received += n as u64;
        let Ok(env) = Envelope::decode(&buf[..n]) else {
            continue;
        };
        let slot = (env.request_id & 0xF_FFFF) as usize;
        let Some(s) = slots.get_mut(slot) else {
            continue;
        };
        if s.request_id != env.request_id || env.sequence != 0 {
            continue;
        }
        let Some(sent_at) = s.sent_at.take() else {
            continue;
        };
        r.answered += 1;
        let rc = buf
            .get(24..28)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, u32::from_be_bytes);
        match ResponseCode(rc) {
            ResponseCode::SUCCESS => r.success += 1,
            ResponseCode::HANDLE_NOT_FOUND => r.not_found += 1,
            _ => r.other += 1,
        }
        if let Some(h) = r.hist.as_mut() {
            let ns = got.duration_since(sent_at).as_nanos() as u64;
            let _ = h.record(ns.clamp(1_000, 60_000_000_000));
        }
        free.push(slot);
    }
    Ok(r)
}

/// Options of `idres bench admin`.
#[derive(Debug, clap::Args)]
pub struct BenchAdminArgs {
    /// Server address (TCP).
    #[arg(long, default_value = "127.0.0.1:2641")]
    pub server: SocketAddr,
    /// The identity, index:handle.
    #[arg(long)]
    pub auth: String,
    /// The identity's private key (PEM, RSA or SM2).
    #[arg(long, conflicts_with = "secret_file")]
    pub key: Option<PathBuf>,
    /// A file holding the identity's secret key.
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// The prefix to create handles under.
    #[arg(long)]
    pub prefix: String,
    /// Part of every handle name, to keep runs apart.
    #[arg(long, default_value = "bench")]
    pub tag: String,
    /// How long to create, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Connections, each its own thread, one request at a time.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
}

/// `idres bench admin`: authenticated CREATE_HANDLE requests over TCP as
/// fast as they are answered, each challenged and answered; prints
/// creates per second and latency.
pub fn admin(args: &BenchAdminArgs) -> anyhow::Result<()> {
    use idres_auth::challenge::Credential;
    let identity =
        idres_auth::Identity::parse(&args.auth).map_err(|e| anyhow::anyhow!("--auth: {e}"))?;
    let credential = match (&args.key, &args.secret_file) {
        (Some(k), _) => Credential::Key(idres_auth::NodeKey::load(k)?),
        (None, Some(s)) => {
            let mut b = std::fs::read(s).with_context(|| format!("reading {}", s.display()))?;
            while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                b.pop();
            }
            Credential::Secret(b)
        }
        (None, None) => bail!("give --key or --secret-file"),
    };
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut threads = Vec::new();
    for t in 0..args.connections.max(1) {
        let (identity, credential) = (identity.clone(), credential.clone());
        let (server, prefix, tag) = (args.server, args.prefix.clone(), args.tag.clone());
        threads.push(std::thread::spawn(
            move || -> anyhow::Result<(u64, u64, Histogram<u64>)> {
                let mut c = idres_service::admin_client::AdminClient::connect(
                    server,
                    identity,
                    credential,
                    Duration::from_secs(10),
                )?;
                let mut hist = new_hist()?;
                let (mut ok, mut failed) = (0u64, 0u64);
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let handle = format!("{prefix}/{tag}-{t}-{i}");
                    let value = idres_model::HandleValue::new(
                        1,
                        "URL",
                        format!("https://bench.example/{i}"),
                    );
                    let t0 = Instant::now();
                    let o = c.create(&handle, vec![value], false, false)?;
                    let _ = hist.record(t0.elapsed().as_nanos() as u64);
                    if o.response_code == ResponseCode::SUCCESS {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                    i += 1;
                }
                Ok((ok, failed, hist))
            },
        ));
    }
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut hist = new_hist()?;
    for t in threads {
        let (o, f, h) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        ok += o;
        failed += f;
        hist.add(&h).context("merging histograms")?;
    }
    let secs = started.elapsed().as_secs_f64();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1e6;
    println!(
        "creates={ok} failed={failed} seconds={secs:.1} creates_per_s={:.0} p50_ms={:.2} p99_ms={:.2}",
        ok as f64 / secs,
        ms(0.5),
        ms(0.99)
    );
    Ok(())
}
