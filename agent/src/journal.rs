//! The job journal: an append-only, fsync'd, checksummed log of serde records.
//!
//! Invariant 5 of the design says a job is journaled before work on it starts; this module is
//! the durable half of that promise. It is generic over the record type `R`: the job code
//! defines what a record is, this module only makes sure that what [`Journal::append`]
//! returned `Ok` for is still there after a crash, in the order it was written.
//!
//! On disk every record is framed as
//!
//! ```text
//! magic "UKR2" (4 bytes) | payload length (u32 LE) | SHA-256(offset ‖ length ‖ payload)[..8] | payload
//! ```
//!
//! with the payload being the record as JSON and `offset` (u64 LE) the record's byte offset in
//! the file: a record copied to another place (a page written twice, a misdirected write)
//! does not check there, so replay never yields a record twice. Files written before the
//! offset was bound read as before (magic "UKR1", checksum over length ‖ payload) until the
//! next rewrite; a "UKR1" record after a "UKR2" one is damage.
//!
//! After the records comes a *commit marker*, `"UKC1" | acknowledged length (u64 LE) |
//! SHA-256("UKC1" ‖ its own offset ‖ acknowledged length)[..8]`: the length of the content
//! that an fsync has made durable. It is written after each fsync (one small write into the
//! page cache, not synced itself) and again, unchanged, behind every unsynced append; the next
//! append overwrites it. It tells damage from a torn write: a crash while appending leaves at
//! most one torn record at the end of the file, after the acknowledged length, and
//! [`Journal::open`] logs it and cuts it off; a bad record *before* the acknowledged length
//! was fsync'd and acted upon, so opening fails with [`StoreError::Damaged`]. A marker that
//! did not reach the disk only makes the reader fall back to the older rule (a bad last
//! record is a torn tail): it errs towards starting, never towards a false alarm.
//!
//! Without the marker's help, a bad
//! record followed by good ones is not a torn write but damage, and opening fails with
//! [`StoreError::Corrupt`] rather than silently dropping history — unless the bad bytes are a
//! page that was never written back (zeros up to a page boundary): records appended without an
//! fsync may reach the disk out of order, and what follows such a hole was never fsync'd, so
//! it is cut off like a torn tail.
//!
//! The file grows in zero-filled chunks of [`GROWTH`] bytes, written ahead of the records:
//! an fsync that leaves a file's size alone only writes the data, where one that changes the
//! size writes the inode too (a second, synchronous I/O). The zeros after the last record are
//! free room, not damage: a scan ends at them.
//!
//! Compaction is the caller's: it knows which records still matter and hands a snapshot to
//! [`Journal::rewrite`], which replaces the file atomically (write, fsync, rename, fsync the
//! folder).
//!
//! The file is locked (`flock`) while a [`Journal`] is open, so two agents cannot write one
//! journal. This module does not interpret records, keep them in memory, or decide when to
//! compact. The on-disk outbox ([`crate::outbox`]) is built on the same log.

use std::fs::File;
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

/// Errors of the on-disk stores (the job journal and the outbox).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file or folder operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`"open"`, `"append to"`, `"fsync"`, …).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Another process (or another open store in this process) holds the file.
    #[error("{path} is in use by another agent (file lock held)")]
    Locked {
        /// The locked file.
        path: PathBuf,
    },
    /// A damaged record that is not a torn tail: good records follow it.
    #[error("{path} is damaged at byte {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the first bad record.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// A record that had been written and fsync'd — acknowledged, and acted upon — is damaged:
    /// the disk or the file was damaged after the write, it was not torn by a crash.
    #[error(
        "{path} is damaged: record {record} at byte {offset} ({reason}) had been written and \
         acknowledged (fsync'd), so this is damage to the disk or the file, not a write torn \
         by a crash; refusing to start rather than silently drop acknowledged work. Keep a copy \
         of the file, then restore the state folder from a backup, or accept the loss of \
         record {record} and everything after it with `ukey-agent journal accept-loss {path}`"
    )]
    Damaged {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damaged record.
        offset: u64,
        /// Its number in the file, counting from 1.
        record: usize,
        /// What is wrong there.
        reason: String,
    },
    /// A record could not be turned into bytes.
    #[error("cannot encode a record for {path}: {source}")]
    Encode {
        /// The file the record was meant for.
        path: PathBuf,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// A record is larger than [`MAX_RECORD_LEN`].
    #[error("a record of {len} bytes for {path} exceeds the limit of {MAX_RECORD_LEN} bytes")]
    RecordTooLarge {
        /// The file the record was meant for.
        path: PathBuf,
        /// The record's encoded length.
        len: usize,
    },
}

/// Largest payload of one record (16 MiB). A length field above it is treated as damage.
pub const MAX_RECORD_LEN: usize = 16 * 1024 * 1024;

const MAGIC: [u8; 4] = *b"UKR2";
/// Records written before the checksum covered the record's offset.
const MAGIC_V1: [u8; 4] = *b"UKR1";
const HEADER_LEN: usize = 16;
const MARKER_MAGIC: [u8; 4] = *b"UKC1";
/// Length of a commit marker (see the module docs).
const MARKER_LEN: usize = 20;

/// The file grows by zero-filled chunks of this size (see the module docs).
pub const GROWTH: u64 = 64 * 1024;

/// `len` rounded up to the next whole chunk of [`GROWTH`] (a chunk more when already whole,
/// so that there is always room after the content).
fn allocation_for(len: u64) -> u64 {
    (len / GROWTH + 1) * GROWTH
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn checksum(offset: Option<u64>, len: u32, payload: &[u8]) -> [u8; 8] {
    let mut hasher = Sha256::new();
    if let Some(offset) = offset {
        hasher.update(offset.to_le_bytes());
    }
    hasher.update(len.to_le_bytes());
    hasher.update(payload);
    let digest = hasher.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// Frames one payload as a record that starts at byte `offset` of the file.
fn frame(payload: &[u8], offset: u64) -> Option<Vec<u8>> {
    if payload.len() > MAX_RECORD_LEN {
        return None;
    }
    let len = u32::try_from(payload.len()).ok()?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(Some(offset), len, payload));
    out.extend_from_slice(payload);
    Some(out)
}

fn marker_checksum(offset: u64, acked: u64) -> [u8; 8] {
    let mut hasher = Sha256::new();
    hasher.update(MARKER_MAGIC);
    hasher.update(offset.to_le_bytes());
    hasher.update(acked.to_le_bytes());
    let digest = hasher.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// The commit marker written at byte `offset`, saying that `acked` bytes are durable.
fn marker(offset: u64, acked: u64) -> [u8; MARKER_LEN] {
    let mut out = [0u8; MARKER_LEN];
    out[..4].copy_from_slice(&MARKER_MAGIC);
    out[4..12].copy_from_slice(&acked.to_le_bytes());
    out[12..].copy_from_slice(&marker_checksum(offset, acked));
    out
}

/// The acknowledged length of a valid commit marker at byte `offset` of the file (`bytes`
/// starts there). A marker never claims more than what precedes it.
fn marker_at(bytes: &[u8], offset: usize) -> Option<usize> {
    let bytes = bytes.get(..MARKER_LEN)?;
    if bytes[..4] != MARKER_MAGIC {
        return None;
    }
    let mut acked = [0u8; 8];
    acked.copy_from_slice(&bytes[4..12]);
    let acked = u64::from_le_bytes(acked);
    (bytes[12..] == marker_checksum(offset as u64, acked) && acked <= offset as u64)
        .then_some(acked as usize)
}

/// Parses the record at the start of `bytes`, which is byte `offset` of the file: its payload
/// range, total length, and whether it is of the old format (see the module docs).
fn parse_at(
    bytes: &[u8],
    offset: usize,
    allow_v1: bool,
) -> Result<(std::ops::Range<usize>, usize, bool), &'static str> {
    if bytes.len() < HEADER_LEN {
        return Err("incomplete record header");
    }
    let v1 = match &bytes[..4] {
        m if m == MAGIC => false,
        m if m == MAGIC_V1 && allow_v1 => true,
        m if m == MAGIC_V1 => return Err("old-format record after a new-format one"),
        _ => return Err("bad record magic"),
    };
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(&bytes[4..8]);
    let len = u32::from_le_bytes(len_bytes);
    let len_usize = len as usize;
    if len_usize > MAX_RECORD_LEN {
        return Err("record length out of range");
    }
    let end = HEADER_LEN + len_usize;
    if bytes.len() < end {
        return Err("incomplete record payload");
    }
    let bound = (!v1).then_some(offset as u64);
    if checksum(bound, len, &bytes[HEADER_LEN..end]) != bytes[8..16] {
        return Err("checksum mismatch");
    }
    Ok((HEADER_LEN..end, end, v1))
}

/// The result of scanning a log file.
struct Scan {
    /// Payload ranges of the good records, in order.
    records: Vec<std::ops::Range<usize>>,
    /// Length of the good prefix; anything after it is a torn tail or free room.
    valid_len: usize,
    /// The acknowledged length of the commit marker right after the records, if there is one.
    acked: Option<usize>,
    /// Whether only free room (and the marker) follows the records: no torn tail to cut.
    clean: bool,
}

/// Why a scan refused a file.
struct ScanError {
    /// Byte offset of the first bad record.
    offset: usize,
    /// Its number, counting from 1.
    record: usize,
    /// What is wrong there.
    reason: &'static str,
    /// Whether a commit marker says the bad record had been fsync'd.
    acknowledged: bool,
}

/// Scans a whole log: good records, then at most a torn tail. Damage followed by a good
/// record, or damage to a record that a commit marker says was acknowledged, is an error.
fn scan(bytes: &[u8]) -> Result<Scan, ScanError> {
    let mut records = Vec::new();
    let mut pos = 0;
    let mut allow_v1 = true;
    while pos < bytes.len() {
        match parse_at(&bytes[pos..], pos, allow_v1) {
            Ok((range, total, v1)) => {
                records.push(pos + range.start..pos + range.end);
                allow_v1 = v1;
                pos += total;
            }
            Err(reason) => {
                let rest = &bytes[pos..];
                if let Some(acked) = marker_at(rest, pos)
                    && rest[MARKER_LEN..].iter().all(|b| *b == 0)
                {
                    return Ok(Scan {
                        records,
                        valid_len: pos,
                        acked: Some(acked),
                        clean: true,
                    });
                }
                if rest.iter().all(|b| *b == 0) {
                    return Ok(Scan {
                        records,
                        valid_len: pos,
                        acked: None,
                        clean: true,
                    });
                }
                let error = |acknowledged| ScanError {
                    offset: pos,
                    record: records.len() + 1,
                    reason,
                    acknowledged,
                };
                // A marker past this point that says more was acknowledged than the good
                // prefix holds: the bad bytes were fsync'd, so they are damage, not a tear.
                let acked = (pos + 1..bytes.len())
                    .filter(|i| bytes[*i..].starts_with(&MARKER_MAGIC))
                    .filter_map(|i| marker_at(&bytes[i..], i))
                    .max();
                if acked.is_some_and(|acked| acked > pos) {
                    return Err(error(true));
                }
                // A torn append only ever damages the last record. If any good record starts
                // after this point, the file was damaged in the middle: refuse to guess.
                let later_good = (pos + 1..bytes.len())
                    .filter(|i| {
                        bytes[*i..].starts_with(&MAGIC) || bytes[*i..].starts_with(&MAGIC_V1)
                    })
                    .find(|i| parse_at(&bytes[*i..], *i, allow_v1).is_ok());
                if let Some(next) = later_good
                    && !unsynced_hole(bytes, pos, next)
                {
                    return Err(error(false));
                }
                return Ok(Scan {
                    records,
                    valid_len: pos,
                    acked: None,
                    clean: false,
                });
            }
        }
    }
    Ok(Scan {
        records,
        valid_len: pos,
        acked: None,
        clean: true,
    })
}

/// The page size the kernel writes a file's cached data back in.
const PAGE: usize = 4096;

/// Whether the damage between `pos` and the good record at `next` is a page the kernel never
/// wrote back: appends made without an fsync ([`Journal::append_unsynced`]) may reach the disk
/// out of order, so a power loss can leave a later page written and an earlier one not (it
/// reads as zeros). Everything from such a hole on was unsynced — an fsync would have written
/// the hole too — so it may be dropped like a torn tail. The sign: the bytes from `pos` (or
/// from a page start after it) to the end of their page are all zero. Damage of any other
/// shape stays an error.
fn unsynced_hole(bytes: &[u8], pos: usize, next: usize) -> bool {
    let first_boundary = (pos / PAGE + 1) * PAGE;
    (first_boundary..=next)
        .step_by(PAGE)
        .any(|end| bytes[pos.max(end - PAGE)..end].iter().all(|b| *b == 0))
}

/// The error for a file that `scan` refused.
fn scan_error(path: &Path, e: ScanError) -> StoreError {
    if e.acknowledged {
        StoreError::Damaged {
            path: path.to_path_buf(),
            offset: e.offset as u64,
            record: e.record,
            reason: e.reason.to_string(),
        }
    } else {
        StoreError::Corrupt {
            path: path.to_path_buf(),
            offset: e.offset as u64,
            reason: format!("record {}: {}", e.record, e.reason),
        }
    }
}

/// Lower-case hex of `bytes`, for the stores' JSON records (ciphertexts, event payloads).
/// Table-driven: about eight times faster than `hex::encode`'s character iterator, and a
/// token writes some fifteen kilobytes of it.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    match hex::encode_to_slice(bytes, &mut out) {
        Ok(()) => String::from_utf8(out).unwrap_or_else(|_| hex::encode(bytes)),
        // Only a length mismatch fails, and the buffer is sized for it.
        Err(_) => hex::encode(bytes),
    }
}

/// Fsyncs a folder so that a created or renamed entry in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync folder", dir))
}

fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or_else(|| Path::new("."))
}

fn lock(file: &File, path: &Path) -> Result<(), StoreError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: path.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err("lock", path)(e)),
    }
}

/// An append-only, crash-safe log of records of type `R` (see the module docs).
pub struct Journal<R> {
    path: PathBuf,
    file: File,
    /// Length of the file's good content; a failed append is cut back to it.
    len: u64,
    /// Length of the content an fsync has made durable (what the commit marker says).
    acked: u64,
    /// Length of the file: the content, then zeros up to here.
    allocated: u64,
    records: usize,
    _record: PhantomData<fn(R) -> R>,
}

impl<R> std::fmt::Debug for Journal<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("records", &self.records)
            .finish()
    }
}

impl<R: Serialize + DeserializeOwned> Journal<R> {
    /// Opens (or creates) the journal at `path`, locks it, and cuts off a torn tail.
    ///
    /// The parent folder must exist. Fails with [`StoreError::Corrupt`] when a damaged record
    /// is followed by good ones, and with [`StoreError::Locked`] when another open journal
    /// holds the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let existed = path.exists();
        let mut file = crate::private_files::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open", &path))?;
        lock(&file, &path)?;
        if !existed {
            crate::private_files::fix_created(&file).map_err(io_err("chmod 600", &path))?;
            file.sync_all().map_err(io_err("fsync", &path))?;
            sync_dir(parent_of(&path))?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io_err("read", &path))?;
        let scan = scan(&bytes).map_err(|e| scan_error(&path, e))?;
        let mut allocated = bytes.len() as u64;
        if !scan.clean {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = bytes.len() - scan.valid_len,
                "journal ends with a torn record (a crash during an append); cutting it off"
            );
            // Cut, not zeroed: an unsynced record after a hole must not survive to be
            // half-overwritten by the next append.
            file.set_len(scan.valid_len as u64)
                .map_err(io_err("truncate", &path))?;
            file.sync_all().map_err(io_err("fsync", &path))?;
            allocated = scan.valid_len as u64;
        }
        Ok(Journal {
            path,
            file,
            len: scan.valid_len as u64,
            acked: scan.acked.unwrap_or(0) as u64,
            allocated,
            records: scan.records.len(),
            _record: PhantomData,
        })
    }

    /// Reads every record back from disk, in the order they were appended.
    ///
    /// Fails with [`StoreError::Corrupt`] when a record's checksum is good but its JSON is
    /// not an `R` (a record type that changed incompatibly).
    pub fn replay(&self) -> Result<Vec<R>, StoreError> {
        let mut file = File::open(&self.path).map_err(io_err("open", &self.path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io_err("read", &self.path))?;
        let good = &bytes[..bytes.len().min(self.len as usize)];
        let scan = scan(good).map_err(|e| scan_error(&self.path, e))?;
        scan.records
            .into_iter()
            .map(|range| {
                serde_json::from_slice(&good[range.clone()]).map_err(|e| StoreError::Corrupt {
                    path: self.path.clone(),
                    offset: (range.start - HEADER_LEN) as u64,
                    reason: format!("record does not decode: {e}"),
                })
            })
            .collect()
    }

    /// Appends one record and fsyncs it before returning.
    pub fn append(&mut self, record: &R) -> Result<(), StoreError> {
        self.append_all(std::slice::from_ref(record))
    }

    /// Appends `records` in one write and one fsync: after a crash either all of them are
    /// there or the torn tail is cut off at a record boundary (a prefix of them survives,
    /// in order, never a later one without an earlier one).
    ///
    /// Records are written at the end of the good content (positioned writes), so the file
    /// offset left by reading or by a cut-off torn tail does not matter.
    ///
    /// When the write or the fsync fails, the file is cut back to its previous length so
    /// that a half-written record cannot hide the records appended after it.
    pub fn append_all(&mut self, records: &[R]) -> Result<(), StoreError> {
        self.write_records(records, true)
    }

    /// [`Journal::append_all`] without waiting for the disk: the records survive the agent's
    /// own crash but not a power loss until the next fsync'd append, [`Journal::sync`] or
    /// rewrite. Only for records whose loss is harmless.
    pub fn append_all_unsynced(&mut self, records: &[R]) -> Result<(), StoreError> {
        self.write_records(records, false)
    }

    /// Appends one record without waiting for the disk. It survives the agent's own crash
    /// (the kernel holds it) but not a power loss or kernel crash until the next fsync'd
    /// append or rewrite. Only for records whose loss is harmless (an acknowledgement that,
    /// lost, makes an event be sent once more).
    pub fn append_unsynced(&mut self, record: &R) -> Result<(), StoreError> {
        self.write_records(std::slice::from_ref(record), false)
    }

    /// Makes every record appended so far durable (one fsync), including those appended with
    /// [`Journal::append_unsynced`].
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.file.sync_data().map_err(io_err("fsync", &self.path))?;
        self.acknowledge();
        Ok(())
    }

    /// Records, after an fsync, that the whole content is durable: a commit marker behind it
    /// (see the module docs). Not synced: lost, it only weakens the next open's verdict.
    fn acknowledge(&mut self) {
        self.acked = self.len;
        let marker = marker(self.len, self.acked);
        if let Err(e) = self.file.write_all_at(&marker, self.len) {
            tracing::warn!(path = %self.path.display(), error = %e,
                "cannot write the journal's commit marker; damage to its last record would read as a torn write");
        }
    }

    fn write_records(&mut self, records: &[R], sync: bool) -> Result<(), StoreError> {
        let mut bytes = Vec::new();
        for record in records {
            let offset = self.len + bytes.len() as u64;
            bytes.extend_from_slice(&self.encode(record, offset)?);
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let end = self.len + bytes.len() as u64;
        // The marker moves behind the new records, still saying what was acknowledged before.
        bytes.extend_from_slice(&marker(end, self.acked));
        let with_marker = end + MARKER_LEN as u64;
        if with_marker > self.allocated {
            // The next chunk of zeros goes with these records, in the same write and fsync.
            bytes.resize(
                bytes.len() + (allocation_for(with_marker) - with_marker) as usize,
                0,
            );
        }
        let written = self.len + bytes.len() as u64;
        let result = self
            .file
            .write_all_at(&bytes, self.len)
            .map_err(io_err("append to", &self.path))
            .and_then(|()| {
                if sync {
                    self.file.sync_data().map_err(io_err("fsync", &self.path))
                } else {
                    Ok(())
                }
            });
        match result {
            Ok(()) => {
                self.len = end;
                self.allocated = self.allocated.max(written);
                self.records += records.len();
                if sync {
                    self.acknowledge();
                }
                Ok(())
            }
            Err(e) => {
                match self.file.set_len(self.len) {
                    Ok(()) => self.allocated = self.len,
                    Err(cut) => tracing::error!(path = %self.path.display(), error = %cut,
                        "cannot cut a failed append back; the next open drops the torn record"),
                }
                Err(e)
            }
        }
    }

    /// Replaces the whole journal with `records`, atomically: a crash leaves either the old
    /// file or the new one, never a mix.
    pub fn rewrite(&mut self, records: &[R]) -> Result<(), StoreError> {
        let mut content = Vec::new();
        for record in records {
            let offset = content.len() as u64;
            content.extend_from_slice(&self.encode(record, offset)?);
        }
        let len = content.len() as u64;
        // Synced below together with the records, before the new file becomes the journal.
        content.extend_from_slice(&marker(len, len));
        content.resize(allocation_for(len + MARKER_LEN as u64) as usize, 0);
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".rewrite");
        let tmp = self.path.with_file_name(tmp_name);
        let mut file = crate::private_files::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        crate::private_files::fix_created(&file).map_err(io_err("chmod 600", &tmp))?;
        // Lock the new file before it replaces the old one, so the lock never lapses.
        lock(&file, &tmp)?;
        file.write_all(&content).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io_err("rename over", &self.path))?;
        // From the rename on, the new file is the journal: appends must go to it even when
        // the folder's fsync below fails (the old handle names an unlinked file).
        self.file = file;
        self.len = len;
        self.acked = len;
        self.allocated = content.len() as u64;
        self.records = records.len();
        sync_dir(parent_of(&self.path))
    }

    /// Number of records in the file (appended since the last rewrite, plus the rewrite's).
    pub fn record_count(&self) -> usize {
        self.records
    }

    /// Length of the records in the file, in bytes (the file itself is longer: zeros follow).
    pub fn content_len(&self) -> u64 {
        self.len
    }

    /// The journal's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn encode(&self, record: &R, offset: u64) -> Result<Vec<u8>, StoreError> {
        let payload = serde_json::to_vec(record).map_err(|source| StoreError::Encode {
            path: self.path.clone(),
            source,
        })?;
        frame(&payload, offset).ok_or_else(|| StoreError::RecordTooLarge {
            path: self.path.clone(),
            len: payload.len(),
        })
    }
}

/// What [`accept_loss`] did to a damaged file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedLoss {
    /// Records kept (those before the first bad one).
    pub kept_records: usize,
    /// Bytes cut off from the first bad record on (0: the file had no damage).
    pub dropped_bytes: u64,
    /// The untouched copy of the file, kept for inspection (`None` when nothing was cut).
    pub copy: Option<PathBuf>,
}

/// Accepts the loss of a damaged journal's (or outbox log's) records from the first bad one
/// on, on the operator's explicit request (`ukey-agent journal accept-loss`): keeps an exact
/// copy of the file next to it (`<file>.damaged-<unix seconds>`), then cuts the file at the
/// first bad record. Refused with [`StoreError::Locked`] while an agent has the file open.
pub fn accept_loss(path: &Path) -> Result<AcceptedLoss, StoreError> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("open", path))?;
    lock(&file, path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_err("read", path))?;
    let cut = match scan(&bytes) {
        Ok(scan) if scan.clean => {
            return Ok(AcceptedLoss {
                kept_records: scan.records.len(),
                dropped_bytes: 0,
                copy: None,
            });
        }
        Ok(scan) => scan.valid_len,
        Err(e) => e.offset,
    };
    let kept_records = scan(&bytes[..cut]).map_or(0, |s| s.records.len());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut copy_name = path.file_name().unwrap_or_default().to_os_string();
    copy_name.push(format!(".damaged-{stamp}"));
    let copy = path.with_file_name(copy_name);
    let mut out = crate::private_files::options()
        .write(true)
        .create_new(true)
        .open(&copy)
        .map_err(io_err("create", &copy))?;
    crate::private_files::fix_created(&out).map_err(io_err("chmod 600", &copy))?;
    out.write_all(&bytes).map_err(io_err("write", &copy))?;
    out.sync_all().map_err(io_err("fsync", &copy))?;
    sync_dir(parent_of(path))?;
    file.set_len(cut as u64).map_err(io_err("truncate", path))?;
    file.sync_all().map_err(io_err("fsync", path))?;
    Ok(AcceptedLoss {
        kept_records,
        dropped_bytes: (bytes.len() - cut) as u64,
        copy: Some(copy),
    })
}

/// A log file's records without the commit marker and zeros that follow them, for
/// tests that tear or damage files.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn content_of(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    let end = scan(&bytes).ok().unwrap().valid_len;
    bytes.truncate(end);
    bytes
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
