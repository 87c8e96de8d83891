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
//! magic "UKR1" (4 bytes) | payload length (u32 LE) | SHA-256(length ‖ payload)[..8] | payload
//! ```
//!
//! with the payload being the record as JSON. A crash while appending leaves at most one torn
//! record at the end of the file: [`Journal::open`] finds it, logs it and cuts it off. A bad
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

const MAGIC: [u8; 4] = *b"UKR1";
const HEADER_LEN: usize = 16;

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

fn checksum(len: u32, payload: &[u8]) -> [u8; 8] {
    let mut hasher = Sha256::new();
    hasher.update(len.to_le_bytes());
    hasher.update(payload);
    let digest = hasher.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// Frames one payload as a record.
fn frame(payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() > MAX_RECORD_LEN {
        return None;
    }
    let len = u32::try_from(payload.len()).ok()?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(len, payload));
    out.extend_from_slice(payload);
    Some(out)
}

/// Parses the record at the start of `bytes`: its payload range and total length.
fn parse_at(bytes: &[u8]) -> Result<(std::ops::Range<usize>, usize), &'static str> {
    if bytes.len() < HEADER_LEN {
        return Err("incomplete record header");
    }
    if bytes[..4] != MAGIC {
        return Err("bad record magic");
    }
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
    if checksum(len, &bytes[HEADER_LEN..end]) != bytes[8..16] {
        return Err("checksum mismatch");
    }
    Ok((HEADER_LEN..end, end))
}

/// The result of scanning a log file.
struct Scan {
    /// Payload ranges of the good records, in order.
    records: Vec<std::ops::Range<usize>>,
    /// Length of the good prefix; anything after it is a torn tail.
    valid_len: usize,
}

/// Scans a whole log: good records, then at most a torn tail. Damage followed by a good
/// record is an error (`offset`, reason).
fn scan(bytes: &[u8]) -> Result<Scan, (usize, &'static str)> {
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        match parse_at(&bytes[pos..]) {
            Ok((range, total)) => {
                records.push(pos + range.start..pos + range.end);
                pos += total;
            }
            Err(reason) => {
                // A torn append only ever damages the last record. If any good record starts
                // after this point, the file was damaged in the middle: refuse to guess.
                let rest = &bytes[pos + 1..];
                let later_good = rest
                    .windows(MAGIC.len())
                    .enumerate()
                    .filter(|(_, w)| *w == MAGIC)
                    .find(|(i, _)| parse_at(&rest[*i..]).is_ok())
                    .map(|(i, _)| pos + 1 + i);
                if let Some(next) = later_good
                    && !unsynced_hole(bytes, pos, next)
                {
                    return Err((pos, reason));
                }
                return Ok(Scan {
                    records,
                    valid_len: pos,
                });
            }
        }
    }
    Ok(Scan {
        records,
        valid_len: pos,
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
        let scan = scan(&bytes).map_err(|(offset, reason)| StoreError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            reason: reason.to_string(),
        })?;
        let tail = &bytes[scan.valid_len..];
        let mut allocated = bytes.len() as u64;
        if tail.iter().any(|b| *b != 0) {
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
        let scan = scan(good).map_err(|(offset, reason)| StoreError::Corrupt {
            path: self.path.clone(),
            offset: offset as u64,
            reason: reason.to_string(),
        })?;
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
        self.file.sync_data().map_err(io_err("fsync", &self.path))
    }

    fn write_records(&mut self, records: &[R], sync: bool) -> Result<(), StoreError> {
        let mut bytes = Vec::new();
        for record in records {
            bytes.extend_from_slice(&self.encode(record)?);
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let end = self.len + bytes.len() as u64;
        if end > self.allocated {
            // The next chunk of zeros goes with these records, in the same write and fsync.
            bytes.resize(bytes.len() + (allocation_for(end) - end) as usize, 0);
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
            content.extend_from_slice(&self.encode(record)?);
        }
        let len = content.len() as u64;
        content.resize(allocation_for(len) as usize, 0);
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

    fn encode(&self, record: &R) -> Result<Vec<u8>, StoreError> {
        let payload = serde_json::to_vec(record).map_err(|source| StoreError::Encode {
            path: self.path.clone(),
            source,
        })?;
        frame(&payload).ok_or_else(|| StoreError::RecordTooLarge {
            path: self.path.clone(),
            len: payload.len(),
        })
    }
}

/// A log file's records without the zeros that follow them (a record ends in `}`), for
/// tests that tear or damage files.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn content_of(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    bytes.truncate(end);
    bytes
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Rec {
        job: String,
        step: u32,
    }

    fn rec(step: u32) -> Rec {
        Rec {
            job: format!("job-{step}"),
            step,
        }
    }

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    #[test]
    fn the_file_grows_by_zeroed_chunks_and_their_room_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.journal");
        let mut j = Journal::<Rec>::open(&path).unwrap();
        j.append(&rec(0)).unwrap();
        assert_eq!(
            file_len(&path),
            GROWTH,
            "one chunk, written with the first record"
        );
        let mut i = 1;
        while j.content_len() + 60 < GROWTH {
            j.append_unsynced(&rec(i)).unwrap();
            assert_eq!(file_len(&path), GROWTH, "no size change within the chunk");
            i += 1;
        }
        assert_eq!(content_of(&path).len() as u64, j.content_len());
        drop(j);
        // Reopened: the zeros are room, not a torn tail; appends go after the records.
        let mut j = Journal::<Rec>::open(&path).unwrap();
        assert_eq!(file_len(&path), GROWTH);
        j.append_all(&[rec(i), rec(i + 1), rec(i + 2)]).unwrap();
        assert_eq!(
            file_len(&path),
            2 * GROWTH,
            "the next chunk, with the records past it"
        );
        assert_eq!(content_of(&path).len() as u64, j.content_len());
        drop(j);
        let j = Journal::<Rec>::open(&path).unwrap();
        assert_eq!(j.replay().unwrap(), (0..i + 3).map(rec).collect::<Vec<_>>());
    }

    #[test]
    fn to_hex_is_lower_case_hex() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(to_hex(&bytes), hex::encode(&bytes));
        assert_eq!(to_hex(&[0xab, 0x01]), "ab01");
        assert_eq!(to_hex(&[]), "");
    }

    #[test]
    fn appended_records_replay_in_order_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.journal");
        {
            let mut j = Journal::<Rec>::open(&path).unwrap();
            assert!(j.replay().unwrap().is_empty());
            for i in 0..5 {
                j.append(&rec(i)).unwrap();
            }
            assert_eq!(j.record_count(), 5);
        }
        let j = Journal::<Rec>::open(&path).unwrap();
        assert_eq!(j.replay().unwrap(), (0..5).map(rec).collect::<Vec<_>>());
    }

    #[test]
    fn a_second_open_of_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.journal");
        let _first = Journal::<Rec>::open(&path).unwrap();
        let second = Journal::<Rec>::open(&path);
        assert!(
            matches!(second, Err(StoreError::Locked { .. })),
            "{second:?}"
        );
    }

    #[test]
    fn every_torn_tail_is_cut_off_and_appending_continues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.journal");
        {
            let mut j = Journal::<Rec>::open(&path).unwrap();
            j.append(&rec(0)).unwrap();
            j.append(&rec(1)).unwrap();
        }
        let good = content_of(&path);
        let one = frame(&serde_json::to_vec(&rec(2)).unwrap()).unwrap();
        // A crash can stop an append after any number of bytes.
        for cut in 1..one.len() {
            std::fs::write(&path, [&good[..], &one[..cut]].concat()).unwrap();
            let mut j = Journal::<Rec>::open(&path).unwrap();
            assert_eq!(file_len(&path), good.len() as u64, "cut at {cut}");
            assert_eq!(j.replay().unwrap(), vec![rec(0), rec(1)]);
            j.append(&rec(3)).unwrap();
            drop(j);
            let j = Journal::<Rec>::open(&path).unwrap();
            assert_eq!(j.replay().unwrap(), vec![rec(0), rec(1), rec(3)]);
        }
    }

    #[test]
    fn a_batch_torn_anywhere_keeps_a_prefix_of_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.journal");
        {
            let mut j = Journal::<Rec>::open(&path).unwrap();
            j.append(&rec(0)).unwrap();
            j.append_all(&[rec(1), rec(2)]).unwrap();
            j.append_unsynced(&rec(3)).unwrap();
            assert_eq!(j.record_count(), 4);
        }
        let whole = std::fs::read(&path).unwrap();
        let first = frame(&serde_json::to_vec(&rec(0)).unwrap()).unwrap().len();
        let second = frame(&serde_json::to_vec(&rec(1)).unwrap()).unwrap().len();
        let batch_end =
            first + second + frame(&serde_json::to_vec(&rec(2)).unwrap()).unwrap().len();
        for cut in first..=batch_end {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let j = Journal::<Rec>::open(&path).unwrap();
            let expected: Vec<Rec> = match cut {
                c if c < first + second => vec![rec(0)],
                c if c < batch_end => vec![rec(0), rec(1)],
                _ => vec![rec(0), rec(1), rec(2)],
            };
            assert_eq!(j.replay().unwrap(), expected, "cut at {cut}");
        }
        std::fs::write(&path, &whole).unwrap();
        let j = Journal::<Rec>::open(&path).unwrap();
        assert_eq!(j.replay().unwrap(), (0..4).map(rec).collect::<Vec<_>>());
    }

    #[test]
    fn a_tail_of_garbage_is_a_torn_write_and_one_of_zeros_is_room() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.journal");
        {
            let mut j = Journal::<Rec>::open(&path).unwrap();
            j.append(&rec(0)).unwrap();
        }
        let good = content_of(&path);
        for (tail, kept) in [
            (vec![0u8; 4096], 4096),
            (b"UKR1\xff\xff\xff\xff garbage".to_vec(), 0),
            ([&b"UKR1\xff"[..], &[0u8; 100]].concat(), 0),
        ] {
            std::fs::write(&path, [&good[..], &tail[..]].concat()).unwrap();
            let mut j = Journal::<Rec>::open(&path).unwrap();
            assert_eq!(j.replay().unwrap(), vec![rec(0)]);
            assert_eq!(file_len(&path), (good.len() + kept) as u64);
            j.append(&rec(1)).unwrap();
            drop(j);
            let j = Journal::<Rec>::open(&path).unwrap();
            assert_eq!(j.replay().unwrap(), vec![rec(0), rec(1)]);
        }
    }

    #[test]
    fn damage_in_the_middle_is_an_error_not_a_silent_loss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.journal");
        {
            let mut j = Journal::<Rec>::open(&path).unwrap();
            for i in 0..3 {
                j.append(&rec(i)).unwrap();
            }
        }
        let mut bytes = std::fs::read(&path).unwrap();
        // Flip a payload byte of the first record.
        bytes[HEADER_LEN + 2] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let err = Journal::<Rec>::open(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt { offset: 0, .. }),
            "{err:?}"
        );
        // The file is left as it was for an operator to look at.
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_page_never_written_back_ends_the_log_like_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.journal");
        {
            let mut j = Journal::<Rec>::open(&path).unwrap();
            j.append(&rec(0)).unwrap();
            for i in 1..400 {
                j.append_unsynced(&rec(i)).unwrap();
            }
        }
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 3 * PAGE, "records span several pages");
        // A power loss wrote pages 0 and 2 back, page 1 never: it reads as zeros.
        bytes[PAGE..2 * PAGE].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let j = Journal::<Rec>::open(&path).unwrap();
        let kept = j.replay().unwrap();
        assert!(!kept.is_empty() && kept.len() < 400, "{} kept", kept.len());
        assert_eq!(kept, (0..kept.len() as u32).map(rec).collect::<Vec<_>>());
        assert!(file_len(&path) <= PAGE as u64, "cut at the hole");

        // The rest of a page zeroed from inside a record: the same.
        let mut bytes = std::fs::read(&path).unwrap();
        let cut = bytes.len();
        drop(j);
        {
            let mut j = Journal::<Rec>::open(&path).unwrap();
            for i in 0..400 {
                j.append_unsynced(&rec(1000 + i)).unwrap();
            }
        }
        bytes = std::fs::read(&path).unwrap();
        let hole_end = (cut / PAGE + 2) * PAGE;
        assert!(bytes.len() > hole_end + PAGE);
        bytes[cut + 10..hole_end].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let j = Journal::<Rec>::open(&path).unwrap();
        assert_eq!(j.replay().unwrap(), kept);
    }

    #[test]
    fn a_record_of_another_type_is_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.journal");
        {
            let mut j = Journal::<String>::open(&path).unwrap();
            j.append(&"not a Rec".to_string()).unwrap();
        }
        let j = Journal::<Rec>::open(&path).unwrap();
        assert!(matches!(j.replay(), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn rewrite_replaces_the_content_atomically_and_appends_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.journal");
        let mut j = Journal::<Rec>::open(&path).unwrap();
        for i in 0..10 {
            j.append(&rec(i)).unwrap();
        }
        j.rewrite(&[rec(7), rec(9)]).unwrap();
        assert_eq!(j.record_count(), 2);
        j.append(&rec(10)).unwrap();
        assert_eq!(j.replay().unwrap(), vec![rec(7), rec(9), rec(10)]);
        // The lock moved to the new file with the rewrite.
        assert!(matches!(
            Journal::<Rec>::open(&path),
            Err(StoreError::Locked { .. })
        ));
        drop(j);
        let j = Journal::<Rec>::open(&path).unwrap();
        assert_eq!(j.replay().unwrap(), vec![rec(7), rec(9), rec(10)]);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }

    #[test]
    fn a_crash_before_the_rename_leaves_the_old_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.journal");
        {
            let mut j = Journal::<Rec>::open(&path).unwrap();
            j.append(&rec(1)).unwrap();
        }
        // A half-written rewrite file next to it is ignored (and replaced by the next rewrite).
        std::fs::write(dir.path().join("jobs.journal.rewrite"), b"UKR1 half").unwrap();
        let mut j = Journal::<Rec>::open(&path).unwrap();
        assert_eq!(j.replay().unwrap(), vec![rec(1)]);
        j.rewrite(&[rec(2)]).unwrap();
        assert_eq!(j.replay().unwrap(), vec![rec(2)]);
    }
}
