//! Online backup of a [`SledStore`] (the file layout is in
//! [`crate::backup`]).
//!
//! sled has no snapshots, so a backup is a read of every key while the
//! node goes on writing, plus a redo log of what the writer changed during
//! that read. The writer hands each committed group's key changes to the
//! backup (the tap), installed and removed between two groups, and the
//! backup spools them to a temporary file beside the store so that a long
//! copy under heavy writes holds little memory. Replayed over the read,
//! they give the store exactly as it was when the tap was removed.
//! Trimming of the change log waits while a backup runs.

use std::io::{Read as _, Seek as _, SeekFrom, Write};
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use super::{io, now_secs, SledStore};
use crate::backup::{Header, Trailer, Writer, FORMAT};
use crate::{Store, StoreError, SCHEMA_VERSION};

/// What the writer hands a running backup.
#[derive(Debug)]
pub(crate) enum TapMsg {
    /// One committed group's key changes ([`crate::backup::encode_op`]).
    Ops(Vec<u8>, u64),
    /// A group failed after some of it may have reached the database: the
    /// copy can no longer be trusted.
    Failed(String),
}

/// Keys read between two looks at the tap.
const DRAIN_EVERY: usize = 4096;

fn bio(e: std::io::Error) -> StoreError {
    StoreError::Io(format!("writing the backup: {e}"))
}

impl SledStore {
    /// Writes a consistent point-in-time backup of everything the store
    /// holds to `out` while writes go on; `progress` is told the bytes
    /// written so far.
    pub fn backup<W: Write>(
        &self,
        out: W,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(W, Trailer), StoreError> {
        let shared = &self.shared;
        let _no_trim = shared
            .trim_lock
            .lock()
            .map_err(|_| StoreError::Io("trim lock poisoned".into()))?;
        let mut spool = tempfile::tempfile_in(&self.path)
            .map_err(|e| StoreError::Io(format!("making the backup's spool file: {e}")))?;
        let (tx, rx) = mpsc::channel::<TapMsg>();
        let start_seq = {
            let mut tap = shared
                .tap
                .lock()
                .map_err(|_| StoreError::Io("tap lock poisoned".into()))?;
            if tap.is_some() {
                return Err(StoreError::Io("a backup is already running".into()));
            }
            *tap = Some(tx);
            shared.last_seq.load(Ordering::Acquire)
        };
        let result = (|| {
            let drain = |spool: &mut std::fs::File| -> Result<(), StoreError> {
                for msg in rx.try_iter() {
                    match msg {
                        TapMsg::Ops(buf, n) => {
                            spool
                                .write_all(&(buf.len() as u64).to_be_bytes())
                                .map_err(bio)?;
                            spool.write_all(&n.to_be_bytes()).map_err(bio)?;
                            spool.write_all(&buf).map_err(bio)?;
                        }
                        TapMsg::Failed(e) => {
                            return Err(StoreError::Io(format!(
                                "a write failed during the backup: {e}"
                            )))
                        }
                    }
                }
                Ok(())
            };
            let header = Header {
                format: FORMAT,
                schema: SCHEMA_VERSION,
                created: u64::from(now_secs()),
                start_seq,
            };
            let mut w = Writer::new(out, header).map_err(bio)?;
            let mut n = 0usize;
            for item in shared.db.iter() {
                let (k, v) = item.map_err(io)?;
                w.base(&k, &v).map_err(bio)?;
                n += 1;
                if n % DRAIN_EVERY == 0 {
                    drain(&mut spool)?;
                    progress(w.bytes());
                }
            }
            // Remove the tap between two groups: what is committed now is
            // the backup's point in time.
            let (last_seq, records) = {
                let mut tap = shared
                    .tap
                    .lock()
                    .map_err(|_| StoreError::Io("tap lock poisoned".into()))?;
                tap.take();
                (
                    shared.last_seq.load(Ordering::Acquire),
                    shared.handle_count.load(Ordering::Acquire) as u64,
                )
            };
            drain(&mut spool)?;
            // The spool holds one entry per group: length u64, count u64
            // and its operations.
            let spooled = spool.stream_position().map_err(bio)?;
            spool.seek(SeekFrom::Start(0)).map_err(bio)?;
            let mut reader = std::io::BufReader::new(&mut spool);
            let mut pos = 0u64;
            let mut ops = Vec::new();
            let mut head = [0u8; 16];
            while pos < spooled {
                reader.read_exact(&mut head).map_err(bio)?;
                let len = u64::from_be_bytes(head[..8].try_into().unwrap_or([0; 8]));
                let count = u64::from_be_bytes(head[8..].try_into().unwrap_or([0; 8]));
                ops.resize(usize::try_from(len).unwrap_or(usize::MAX), 0);
                reader.read_exact(&mut ops).map_err(bio)?;
                w.redo(&ops, count).map_err(bio)?;
                pos += 16 + len;
                progress(w.bytes());
            }
            let first_seq = self.first_seq()?;
            let (out, t) = w
                .finish(Trailer {
                    base_entries: 0,
                    redo_ops: 0,
                    last_seq,
                    first_seq,
                    records,
                    finished: u64::from(now_secs()),
                })
                .map_err(bio)?;
            Ok((out, t))
        })();
        if let Ok(mut tap) = shared.tap.lock() {
            tap.take();
        }
        result
    }
}
