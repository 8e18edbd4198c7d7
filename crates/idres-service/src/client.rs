//! A small blocking Handle client, for the `idres resolve` command, the
//! load generator and tests.
//!
//! Over UDP it sends the request, gathers every packet of the reply and
//! retries after 500, 1000 and 1500 ms as the reference client does; over
//! TCP it writes the request and reads one framed reply.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use bytes::BufMut;
use idres_wire::{
    Assembled, Envelope, Header, Message, OpCode, OpFlags, Reassembler, ReassemblyLimits, Reply,
    Request, ResponseCode, ENVELOPE_LEN, MAX_MESSAGE_LEN,
};

/// Why a request got no usable reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A socket operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// No reply arrived in time.
    #[error("no reply from {0}")]
    Timeout(SocketAddr),
    /// The reply could not be decoded.
    #[error("malformed reply: {0}")]
    Malformed(String),
}

/// A decoded reply.
#[derive(Debug, Clone)]
pub struct ClientReply {
    /// The response code.
    pub response_code: ResponseCode,
    /// The body.
    pub reply: Reply,
    /// The reply's expiration time.
    pub expiration: u32,
    /// The request id the reply carried.
    pub request_id: u32,
    /// Number of UDP packets the reply came in (1 over TCP).
    pub packets: usize,
}

/// Builds a complete request message (envelope, header, body, empty
/// credential) for protocol 2.11.
pub fn encode_request(request: &Request<'_>, request_id: u32, flags: u32) -> Vec<u8> {
    let mut body = Vec::new();
    request.encode(&mut body);
    let mut out = Vec::with_capacity(ENVELOPE_LEN + 24 + body.len() + 4);
    Envelope {
        major: 2,
        minor: 11,
        flags: 2,
        suggested_minor: 11,
        session_id: 0,
        request_id,
        sequence: 0,
        message_length: (24 + body.len() + 4) as u32,
    }
    .encode(&mut out);
    Header {
        op_code: request.op_code(),
        response_code: ResponseCode::RESERVED,
        op_flags: OpFlags(flags),
        site_info_serial: 0xffff,
        recursion_count: 0,
        expiration: 0,
        body_length: body.len() as u32,
    }
    .encode(&mut out);
    out.extend_from_slice(&body);
    out.put_u32(0);
    out
}

/// Decodes a complete reply message.
pub fn decode_reply(full: &[u8], packets: usize) -> Result<ClientReply, ClientError> {
    let m =
        Message::parse_with_envelope(full).map_err(|e| ClientError::Malformed(e.to_string()))?;
    let reply = Reply::decode(
        m.header.op_code,
        m.header.response_code,
        m.header.op_flags,
        m.body,
    )
    .map_err(|e| ClientError::Malformed(e.to_string()))?;
    Ok(ClientReply {
        response_code: m.header.response_code,
        reply,
        expiration: m.header.expiration,
        request_id: m.envelope.request_id,
        packets,
    })
}

/// Sends `request` over UDP and waits for the whole reply, retrying after
/// 500, 1000 and 1500 ms.
pub fn request_udp(server: SocketAddr, request: &[u8]) -> Result<ClientReply, ClientError> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|_| ClientError::Malformed("bad bind address".into()))?;
    let socket = UdpSocket::bind(bind)?;
    socket.connect(server)?;
    let request_id = Envelope::decode(request)
        .map_err(|e| ClientError::Malformed(e.to_string()))?
        .request_id;
    let mut reassembler: Reassembler<()> = Reassembler::new(ReassemblyLimits::default());
    let mut buf = [0u8; 2048];
    for wait in [500u64, 1000, 1500] {
        socket.send(request)?;
        let deadline = Instant::now() + Duration::from_millis(wait);
        let mut packets = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            socket.set_read_timeout(Some(left))?;
            let n = match socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(e.into()),
            };
            let Ok(env) = Envelope::decode(&buf[..n]) else {
                continue;
            };
            if env.request_id != request_id {
                continue;
            }
            packets += 1;
            match reassembler.push(&(), &buf[..n], Instant::now()) {
                Ok(Assembled::Single(m)) => return decode_reply(m, packets),
                Ok(Assembled::Complete(m)) => return decode_reply(&m, packets),
                Ok(Assembled::Pending) => {}
                Err(e) => return Err(ClientError::Malformed(e.to_string())),
            }
        }
    }
    Err(ClientError::Timeout(server))
}

/// Sends `request` over TCP and reads one reply.
pub fn request_tcp(
    server: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> Result<ClientReply, ClientError> {
    let mut s = TcpStream::connect_timeout(&server, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(request)?;
    let full = read_framed(&mut s)?;
    decode_reply(&full, 1)
}

/// Reads one envelope-framed message (envelope and message) from a
/// stream, refusing one longer than the protocol allows.
pub fn read_framed(s: &mut impl Read) -> Result<Vec<u8>, ClientError> {
    let mut head = [0u8; ENVELOPE_LEN];
    s.read_exact(&mut head)?;
    let env = Envelope::decode(&head).map_err(|e| ClientError::Malformed(e.to_string()))?;
    let len = env.message_length as usize;
    if len > MAX_MESSAGE_LEN {
        return Err(ClientError::Malformed("reply too large".into()));
    }
    let mut full = head.to_vec();
    full.resize(ENVELOPE_LEN + len, 0);
    s.read_exact(&mut full[ENVELOPE_LEN..])?;
    Ok(full)
}

/// Resolves a handle, optionally only some indexes and types.
pub fn resolve(
    server: SocketAddr,
    handle: &str,
    indexes: &[u32],
    types: &[&str],
    tcp: bool,
) -> Result<ClientReply, ClientError> {
    let req = Request::Resolution {
        handle,
        indexes: indexes.to_vec(),
        types: types.to_vec(),
    };
    let id = request_id();
    let msg = encode_request(&req, id, OpFlags::RETURN_DIGEST);
    if tcp {
        request_tcp(server, &msg, Duration::from_secs(5))
    } else {
        request_udp(server, &msg)
    }
}

/// Asks a server for its site information.
pub fn get_site_info(server: SocketAddr, tcp: bool) -> Result<ClientReply, ClientError> {
    let msg = encode_request(&Request::GetSiteInfo, request_id(), 0);
    if tcp {
        request_tcp(server, &msg, Duration::from_secs(5))
    } else {
        request_udp(server, &msg)
    }
}

fn request_id() -> u32 {
    // Unpredictable enough to tell replies apart; not a security feature.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(16))
        .unwrap_or(1);
    t ^ std::process::id().rotate_left(8)
}

/// The op code a reply answers (for callers that print it).
pub fn op_name(op: OpCode) -> String {
    op.name().map_or_else(|| op.0.to_string(), str::to_owned)
}
