//! The backup file: a point-in-time copy of everything a store holds, and
//! its restore.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! "IDRESBAK"                      magic, 8 bytes
//! frame*                          kind u8, length u32, payload, crc32 u32
//! ```
//!
//! The CRC-32 covers the kind, the length and the payload. Frames come in
//! this order:
//!
//! - one header (kind 0): format u16, schema u32, created u64 (Unix
//!   seconds), first sequence number u64 when the copy began;
//! - base frames (kind 1): the store's keys as they were read, each as
//!   key length u32, key, value length u32, value. The read runs while the
//!   node writes, so on its own it is not a point in time;
//! - redo frames (kind 2): every key the writer changed from the moment
//!   the read began to the moment it ended, in commit order, each as op u8
//!   (1 put, 2 delete), key length u32, key and, for a put, value length
//!   u32 and value. Applied over the base, they give the store exactly as
//!   it was at the end of the copy, whatever the read saw of them;
//! - one trailer (kind 255): base entries u64, redo operations u64, last
//!   sequence number u64, first retained change u64, record count u64,
//!   finished u64 (Unix seconds), and the SHA-256 of every byte before the
//!   trailer frame.
//!
//! Nothing may follow the trailer. A file is checked whole before anything
//! is written from it; a fault is reported with its byte offset.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::SCHEMA_VERSION;

/// The file's first eight bytes.
pub const MAGIC: &[u8; 8] = b"IDRESBAK";
/// Version of the layout above.
pub const FORMAT: u16 = 1;
/// Largest frame payload accepted.
pub const MAX_FRAME: usize = 64 << 20;
/// Payload size after which a writer closes a frame.
const FRAME_TARGET: usize = 1 << 20;

const KIND_HEADER: u8 = 0;
const KIND_BASE: u8 = 1;
const KIND_REDO: u8 = 2;
const KIND_TRAILER: u8 = 255;

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

/// What a backup says of itself at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Keys in the base frames.
    pub base_entries: u64,
    /// Operations in the redo frames.
    pub redo_ops: u64,
    /// The store's last sequence number at the point in time of the backup.
    pub last_seq: u64,
    /// The first change-log entry it retains.
    pub first_seq: u64,
    /// Records it holds.
    pub records: u64,
    /// When the copy was finished (Unix seconds).
    pub finished: u64,
}

/// What a backup says of itself at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Layout version.
    pub format: u16,
    /// Schema version of the store it was taken from.
    pub schema: u32,
    /// When the copy began (Unix seconds).
    pub created: u64,
    /// The last sequence number when the copy began.
    pub start_seq: u64,
}

/// Why a backup file was refused or could not be written or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The bytes are not a good backup.
    #[error("backup refused at byte offset {offset}: {reason}")]
    Corrupt {
        /// Where the fault is.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("{0}")]
    Io(String),
    /// The backup comes from a newer schema.
    #[error("backup of schema version {found} is newer than the supported {supported}")]
    UnsupportedSchema {
        /// Its version.
        found: u32,
        /// This build's.
        supported: u32,
    },
    /// The target already holds data.
    #[error("{0} is not empty: restore builds a new store, it never writes over one")]
    TargetNotEmpty(PathBuf),
}

fn io_err(context: &str) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |e| BackupError::Io(format!("{context}: {e}"))
}

fn sled_err(e: sled::Error) -> BackupError {
    BackupError::Io(format!("restoring: {e}"))
}

/// Appends one redo operation to `buf` (the writer's tap uses this too).
pub(crate) fn encode_op(buf: &mut Vec<u8>, key: &[u8], value: Option<&[u8]>) {
    buf.push(if value.is_some() { OP_PUT } else { OP_DELETE });
    put_bytes(buf, key);
    if let Some(v) = value {
        put_bytes(buf, v);
    }
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_be_bytes());
    buf.extend_from_slice(b);
}

/// Writes a backup file frame by frame, keeping its running digest.
pub(crate) struct Writer<W: Write> {
    out: W,
    digest: Sha256,
    bytes: u64,
    base: Vec<u8>,
    base_entries: u64,
    redo_ops: u64,
}

impl<W: Write> Writer<W> {
    pub(crate) fn new(out: W, header: Header) -> io::Result<Self> {
        let mut w = Self {
            out,
            digest: Sha256::new(),
            bytes: 0,
            base: Vec::with_capacity(FRAME_TARGET + 4096),
            base_entries: 0,
            redo_ops: 0,
        };
        w.raw(MAGIC)?;
        let mut p = Vec::with_capacity(22);
        p.extend_from_slice(&header.format.to_be_bytes());
        p.extend_from_slice(&header.schema.to_be_bytes());
        p.extend_from_slice(&header.created.to_be_bytes());
        p.extend_from_slice(&header.start_seq.to_be_bytes());
        w.frame(KIND_HEADER, &p)?;
        Ok(w)
    }

    /// Bytes written so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    fn raw(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.digest.update(b);
        self.bytes += b.len() as u64;
        Ok(())
    }

    fn frame(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l as usize <= MAX_FRAME)
            .ok_or_else(|| io::Error::other("a backup frame would exceed its size limit"))?;
        let mut head = [0u8; 5];
        head[0] = kind;
        head[1..].copy_from_slice(&len.to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.update(payload);
        self.raw(&head)?;
        self.raw(payload)?;
        self.raw(&crc.finalize().to_be_bytes())
    }

    pub(crate) fn base(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        put_bytes(&mut self.base, key);
        put_bytes(&mut self.base, value);
        self.base_entries += 1;
        if self.base.len() >= FRAME_TARGET {
            self.flush_base()?;
        }
        Ok(())
    }

    fn flush_base(&mut self) -> io::Result<()> {
        if self.base.is_empty() {
            return Ok(());
        }
        let payload = std::mem::take(&mut self.base);
        self.frame(KIND_BASE, &payload)?;
        self.base = payload;
        self.base.clear();
        Ok(())
    }

    /// Writes encoded redo operations (from [`encode_op`]) as frames.
    pub(crate) fn redo(&mut self, ops: &[u8], count: u64) -> io::Result<()> {
        self.flush_base()?;
        self.redo_ops += count;
        for chunk in split_ops(ops) {
            self.frame(KIND_REDO, chunk)?;
        }
        Ok(())
    }

    pub(crate) fn finish(mut self, t: Trailer) -> io::Result<(W, Trailer)> {
        self.flush_base()?;
        let t = Trailer {
            base_entries: self.base_entries,
            redo_ops: self.redo_ops,
            ..t
        };
        let digest = self.digest.clone().finalize();
        let mut p = Vec::with_capacity(48 + 32);
        for n in [
            t.base_entries,
            t.redo_ops,
            t.last_seq,
            t.first_seq,
            t.records,
            t.finished,
        ] {
            p.extend_from_slice(&n.to_be_bytes());
        }
        p.extend_from_slice(&digest);
        self.frame(KIND_TRAILER, &p)?;
        self.out.flush()?;
        Ok((self.out, t))
    }
}

/// Splits a run of encoded operations at operation boundaries into pieces
/// of about [`FRAME_TARGET`] bytes.
fn split_ops(ops: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut start, mut pos) = (0usize, 0usize);
    while pos < ops.len() {
        let next = op_end(ops, pos).unwrap_or(ops.len());
        if next - start > FRAME_TARGET && pos > start {
            out.push(&ops[start..pos]);
            start = pos;
        }
        pos = next;
    }
    if start < ops.len() {
        out.push(&ops[start..]);
    }
    out
}

fn op_end(ops: &[u8], pos: usize) -> Option<usize> {
    let op = *ops.get(pos)?;
    let mut p = pos + 1;
    let take = |p: &mut usize| -> Option<()> {
        let len = u32::from_be_bytes(ops.get(*p..*p + 4)?.try_into().ok()?) as usize;
        *p += 4 + len;
        Some(())
    };
    take(&mut p)?;
    if op == OP_PUT {
        take(&mut p)?;
    }
    Some(p)
}

/// One entry of a frame.
enum Entry<'a> {
    Put(&'a [u8], &'a [u8]),
    Delete(&'a [u8]),
}

/// Reads a backup file frame by frame, checking each.
struct FrameReader<R: Read> {
    input: R,
    offset: u64,
    digest: Sha256,
    /// Whether to keep the digest (a reader of one region does not).
    hash: bool,
}

struct Frame {
    kind: u8,
    offset: u64,
    payload: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    fn corrupt(offset: u64, reason: impl Into<String>) -> BackupError {
        BackupError::Corrupt {
            offset,
            reason: reason.into(),
        }
    }

    /// Fills `buf` whole; `Ok(false)` at a clean end of the input before
    /// the first byte.
    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<bool, BackupError> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => {
                    return Err(Self::corrupt(
                        self.offset + got as u64,
                        format!("the file ends inside {what} (truncated)"),
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BackupError::Io(format!("reading the backup: {e}"))),
            }
        }
        Ok(true)
    }

    fn magic(&mut self) -> Result<(), BackupError> {
        let mut m = [0u8; 8];
        if !self.fill(&mut m, "the magic")? {
            return Err(Self::corrupt(0, "the file is empty"));
        }
        if &m != MAGIC {
            return Err(Self::corrupt(0, "not an idres backup (bad magic)"));
        }
        self.digest.update(m);
        self.offset = 8;
        Ok(())
    }

    fn next(&mut self) -> Result<Option<Frame>, BackupError> {
        let at = self.offset;
        let mut head = [0u8; 5];
        if !self.fill(&mut head, "a frame header")? {
            return Ok(None);
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FRAME {
            return Err(Self::corrupt(
                at,
                format!("frame length {len} exceeds the limit of {MAX_FRAME}"),
            ));
        }
        self.offset += 5;
        let mut payload = vec![0u8; len];
        if len > 0 && !self.fill(&mut payload, "a frame")? {
            return Err(Self::corrupt(
                self.offset,
                "the file ends inside a frame (truncated)",
            ));
        }
        self.offset += len as u64;
        let mut crc = [0u8; 4];
        if !self.fill(&mut crc, "a checksum")? {
            return Err(Self::corrupt(
                self.offset,
                "the file ends before a frame's checksum (truncated)",
            ));
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&head);
        h.update(&payload);
        if h.finalize() != u32::from_be_bytes(crc) {
            return Err(Self::corrupt(
                at,
                "the frame's checksum does not match (damaged)",
            ));
        }
        self.offset += 4;
        if head[0] != KIND_TRAILER && self.hash {
            self.digest.update(head);
            self.digest.update(&payload);
            self.digest.update(crc);
        }
        Ok(Some(Frame {
            kind: head[0],
            offset: at,
            payload,
        }))
    }
}

fn entries(frame: &Frame) -> Result<Vec<Entry<'_>>, BackupError> {
    let p = &frame.payload;
    let bad = |pos: usize, what: &str| BackupError::Corrupt {
        offset: frame.offset + 5 + pos as u64,
        reason: format!("bad {what} in a frame"),
    };
    let mut out = Vec::new();
    let mut pos = 0usize;
    let bytes = |pos: &mut usize| -> Option<&[u8]> {
        let len = u32::from_be_bytes(p.get(*pos..*pos + 4)?.try_into().ok()?) as usize;
        let b = p.get(*pos + 4..(*pos + 4).checked_add(len)?)?;
        *pos += 4 + len;
        Some(b)
    };
    while pos < p.len() {
        let start = pos;
        match frame.kind {
            KIND_BASE => {
                let k = bytes(&mut pos).ok_or_else(|| bad(start, "key"))?;
                let v = bytes(&mut pos).ok_or_else(|| bad(start, "value"))?;
                out.push(Entry::Put(k, v));
            }
            _ => {
                let op = p[pos];
                pos += 1;
                let k = bytes(&mut pos).ok_or_else(|| bad(start, "key"))?;
                match op {
                    OP_PUT => {
                        let v = bytes(&mut pos).ok_or_else(|| bad(start, "value"))?;
                        out.push(Entry::Put(k, v));
                    }
                    OP_DELETE => out.push(Entry::Delete(k)),
                    _ => return Err(bad(start, "operation")),
                }
            }
        }
    }
    Ok(out)
}

fn parse_header(f: &Frame) -> Result<Header, BackupError> {
    let p = &f.payload;
    if f.kind != KIND_HEADER || p.len() != 22 {
        return Err(BackupError::Corrupt {
            offset: f.offset,
            reason: "the first frame is not a header".into(),
        });
    }
    let u64_at = |i: usize| u64::from_be_bytes(p[i..i + 8].try_into().unwrap_or([0; 8]));
    let h = Header {
        format: u16::from_be_bytes([p[0], p[1]]),
        schema: u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
        created: u64_at(6),
        start_seq: u64_at(14),
    };
    if h.format != FORMAT {
        return Err(BackupError::Corrupt {
            offset: f.offset,
            reason: format!("unknown backup format {}", h.format),
        });
    }
    if h.schema > SCHEMA_VERSION {
        return Err(BackupError::UnsupportedSchema {
            found: h.schema,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(h)
}

fn parse_trailer(f: &Frame, digest: &[u8]) -> Result<Trailer, BackupError> {
    let p = &f.payload;
    if p.len() != 48 + 32 {
        return Err(BackupError::Corrupt {
            offset: f.offset,
            reason: "the trailer has the wrong length".into(),
        });
    }
    if &p[48..] != digest {
        return Err(BackupError::Corrupt {
            offset: f.offset,
            reason: "the file's SHA-256 does not match its trailer".into(),
        });
    }
    let n = |i: usize| u64::from_be_bytes(p[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    Ok(Trailer {
        base_entries: n(0),
        redo_ops: n(1),
        last_seq: n(2),
        first_seq: n(3),
        records: n(4),
        finished: n(5),
    })
}

/// Reads a whole backup, checking every frame, the order of frames, the
/// counts and the digest, and hands each base and redo frame, its entries
/// checked, to `each` (which may be a no-op for a check). Returns the
/// header and the trailer.
fn walk(
    path: &Path,
    progress: &mut dyn FnMut(u64),
    mut each: impl FnMut(Frame) -> Result<(), BackupError>,
) -> Result<(Header, Trailer), BackupError> {
    let file = File::open(path).map_err(io_err("opening the backup"))?;
    let mut r = FrameReader {
        input: BufReader::with_capacity(1 << 20, file),
        offset: 0,
        digest: Sha256::new(),
        hash: true,
    };
    r.magic()?;
    let first = r.next()?.ok_or_else(|| BackupError::Corrupt {
        offset: 8,
        reason: "the file ends after the magic (truncated)".into(),
    })?;
    let header = parse_header(&first)?;
    let (mut base, mut redo) = (0u64, 0u64);
    let mut in_redo = false;
    loop {
        let digest_before = r.digest.clone().finalize();
        let Some(f) = r.next()? else {
            return Err(BackupError::Corrupt {
                offset: r.offset,
                reason: "the file ends without its trailer (truncated)".into(),
            });
        };
        progress(r.offset);
        match f.kind {
            KIND_BASE if !in_redo => {
                base += entries(&f)?.len() as u64;
                each(f)?;
            }
            KIND_REDO => {
                in_redo = true;
                redo += entries(&f)?.len() as u64;
                each(f)?;
            }
            KIND_TRAILER => {
                let t = parse_trailer(&f, &digest_before)?;
                if t.base_entries != base || t.redo_ops != redo {
                    return Err(BackupError::Corrupt {
                        offset: f.offset,
                        reason: format!(
                            "the trailer counts {} keys and {} changes, the file holds {base} and {redo}",
                            t.base_entries, t.redo_ops
                        ),
                    });
                }
                let mut extra = [0u8; 1];
                if r.fill(&mut extra, "trailing bytes")? {
                    return Err(BackupError::Corrupt {
                        offset: r.offset,
                        reason: "bytes after the trailer".into(),
                    });
                }
                return Ok((header, t));
            }
            k => {
                return Err(BackupError::Corrupt {
                    offset: f.offset,
                    reason: format!("unexpected frame kind {k}"),
                })
            }
        }
    }
}

/// Checks a backup file whole without writing anything.
pub fn verify(
    path: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<(Header, Trailer), BackupError> {
    walk(path, progress, |_| Ok(()))
}

/// Where a checked file's frames are: base and redo frame offsets, and the
/// file's length and modification time when checked.
struct Plan {
    base: Vec<u64>,
    redo: Vec<u64>,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

fn plan(path: &Path, progress: &mut dyn FnMut(u64)) -> Result<(Trailer, Plan), BackupError> {
    let meta = std::fs::metadata(path).map_err(io_err("reading the backup"))?;
    let (mut base, mut redo) = (Vec::new(), Vec::new());
    let (_, t) = walk(path, progress, |f| {
        match f.kind {
            KIND_BASE => base.push(f.offset),
            _ => redo.push(f.offset),
        }
        Ok(())
    })?;
    Ok((
        t,
        Plan {
            base,
            redo,
            len: meta.len(),
            modified: meta.modified().ok(),
        },
    ))
}

/// Builds a new store in `dir` from a backup: the file is checked whole
/// first, then loaded in bulk with one flush at the end. `dir` must be
/// absent or empty; if loading fails, what was made is removed.
/// `progress` is told the byte offset reached, once while checking and
/// again while loading (`phase` 0 and 1).
pub fn restore(
    path: &Path,
    dir: &Path,
    progress: &mut dyn FnMut(u8, u64),
) -> Result<Trailer, BackupError> {
    restore_with(path, dir, progress, &|_| Vec::new())
}

/// An auxiliary value to write with a restore: key space, key, value.
pub type AuxEntry = (String, Vec<u8>, Vec<u8>);

/// [`restore`], also writing the auxiliary values `extra` gives for the
/// backup (such as a follower cursor at its sequence number), in the same
/// load and under the same final flush.
pub fn restore_with(
    path: &Path,
    dir: &Path,
    progress: &mut dyn FnMut(u8, u64),
    extra: &dyn Fn(&Trailer) -> Vec<AuxEntry>,
) -> Result<Trailer, BackupError> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(io_err("reading the target directory"))?;
        if entries.next().is_some() {
            return Err(BackupError::TargetNotEmpty(dir.to_path_buf()));
        }
    }
    let (checked, plan) = plan(path, &mut |o| progress(0, o))?;
    let aux = extra(&checked);
    match load(path, dir, &plan, &aux, &mut |o| progress(1, o)) {
        Ok(()) => Ok(checked),
        Err(e) => {
            let _ = std::fs::remove_dir_all(dir);
            Err(e)
        }
    }
}

/// Threads that insert base frames (twice the processors: sled's inserts
/// wait on its own locks and background work, and measured faster so);
/// the redo frames are applied after them, in order.
fn load_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| (2 * n.get()).clamp(2, 16))
}

/// Reads the frames at `offsets` (each checked against its CRC again) and
/// inserts their entries, telling `done` the bytes read.
fn load_frames(
    db: &sled::Db,
    path: &Path,
    offsets: &[u64],
    done: &std::sync::atomic::AtomicU64,
) -> Result<(), BackupError> {
    use std::io::{Seek, SeekFrom};
    let Some(&first) = offsets.first() else {
        return Ok(());
    };
    let mut file = File::open(path).map_err(io_err("opening the backup"))?;
    file.seek(SeekFrom::Start(first))
        .map_err(io_err("reading the backup"))?;
    let mut r = FrameReader {
        input: BufReader::with_capacity(1 << 20, file),
        offset: first,
        digest: Sha256::new(),
        hash: false,
    };
    for &at in offsets {
        if r.offset != at {
            return Err(BackupError::Io(
                "the backup changed while it was being restored".into(),
            ));
        }
        let before = r.offset;
        let f = r.next()?.ok_or_else(|| {
            BackupError::Io("the backup changed while it was being restored".into())
        })?;
        for e in entries(&f)? {
            match e {
                Entry::Put(k, v) => db.insert(k, v).map(drop),
                Entry::Delete(k) => db.remove(k).map(drop),
            }
            .map_err(sled_err)?;
        }
        done.fetch_add(r.offset - before, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

fn load(
    path: &Path,
    dir: &Path,
    plan: &Plan,
    aux: &[AuxEntry],
    progress: &mut dyn FnMut(u64),
) -> Result<(), BackupError> {
    let meta = std::fs::metadata(path).map_err(io_err("reading the backup"))?;
    if meta.len() != plan.len || meta.modified().ok() != plan.modified {
        return Err(BackupError::Io(
            "the backup changed between its check and its restore".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(io_err("creating the target directory"))?;
    let db = sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()
        .map_err(sled_err)?;
    // Base frames hold disjoint runs of keys in key order: each thread
    // loads a contiguous share of them, reading the file at its own place,
    // so that the threads write far apart in the tree (sled takes
    // concurrent writers; one insert per key costs less than large
    // batches). The redo frames land after every base key, in order.
    // Nothing is flushed until the end.
    let done = std::sync::atomic::AtomicU64::new(0);
    let threads = load_threads();
    let share = plan.base.len().div_ceil(threads).max(1);
    let loaded: Result<(), BackupError> = std::thread::scope(|scope| {
        let workers: Vec<_> = plan
            .base
            .chunks(share)
            .map(|part| {
                let (db, done) = (&db, &done);
                scope.spawn(move || load_frames(db, path, part, done))
            })
            .collect();
        while !workers.iter().all(|w| w.is_finished()) {
            progress(done.load(std::sync::atomic::Ordering::Relaxed));
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        for w in workers {
            w.join()
                .map_err(|_| BackupError::Io("restoring: a loader thread failed".into()))??;
        }
        Ok(())
    });
    loaded?;
    load_frames(&db, path, &plan.redo, &done)?;
    progress(plan.len);
    for (space, key, value) in aux {
        db.insert(crate::keys::aux(space, key), value.as_slice())
            .map_err(sled_err)?;
    }
    db.flush().map_err(sled_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ops_split_on_boundaries() {
        let mut ops = Vec::new();
        for i in 0..3000u32 {
            encode_op(&mut ops, &i.to_be_bytes(), Some(&[7u8; 1000]));
            encode_op(&mut ops, &i.to_be_bytes(), None);
        }
        let parts = split_ops(&ops);
        assert!(parts.len() > 2);
        assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), ops.len());
        for p in parts {
            let mut pos = 0;
            while pos < p.len() {
                pos = op_end(p, pos).unwrap();
            }
            assert_eq!(pos, p.len());
        }
    }
}
