//! The journal's per-job keys: one random key per job encrypts that job's records (its
//! document, PINs, inputs, CSR bundle), and erasing the key when the job ends makes them
//! unreadable at once, long before a compaction rewrites the journal.
//!
//! The keys live in a file of their own beside the journal, in fixed slots of [`SLOT_LEN`]
//! bytes, because erasing one must overwrite its bytes in place: the journal is append-only
//! and checksummed (an overwrite torn by a crash would read as damage in the middle of it),
//! and a rewrite by rename leaves the old blocks on the disk unwritten. A slot is
//!
//! ```text
//! magic "UKK1" (4) | SHA-256(job id) (32) | wrapped key (60) | SHA-256(the 96 bytes before)[..8] | zeros
//! ```
//!
//! where the wrapped key is the job's key encrypted with the journal key (AES-256-GCM,
//! nonce ‖ ciphertext ‖ tag), bound to the job id: the file alone, without the station's key,
//! opens nothing. A slot of zeros is free; so is a slot whose checksum fails (a write torn by
//! a crash — writes here only ever erase a finished job's key or store a new job's key before
//! its first record, so losing either is harmless).
//!
//! Erasing overwrites the slot with zeros and fsyncs the file. On a flash disk the old
//! physical block may survive until the drive reuses it; that is below what a file can
//! promise (full-disk encryption covers it).
//!
//! This module stores and erases wrapped keys; it does not make, wrap or unwrap them
//! ([`crate::trust::JournalKey`] does) nor decide when a job ends (the daemon does).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use ukey_protocol::ids::JobId;

use crate::journal::StoreError;

/// Length of one slot of the key file.
pub const SLOT_LEN: usize = 128;
/// Length of a wrapped key: AES-GCM nonce (12), the 32-byte key encrypted (32), tag (16).
pub const WRAPPED_LEN: usize = 60;

const MAGIC: [u8; 4] = *b"UKK1";
const ID_HASH: std::ops::Range<usize> = 4..36;
const WRAPPED: std::ops::Range<usize> = 36..96;
const CHECKSUM: std::ops::Range<usize> = 96..104;

/// A wrapped per-job key as the file stores it.
pub type WrappedKey = [u8; WRAPPED_LEN];

fn id_hash(job_id: &JobId) -> [u8; 32] {
    Sha256::digest(job_id.as_str().as_bytes()).into()
}

fn checksum(covered: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(covered);
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// One slot's bytes for `job_id`'s wrapped key.
fn encode_slot(job_id: &JobId, wrapped: &WrappedKey) -> [u8; SLOT_LEN] {
    let mut slot = [0u8; SLOT_LEN];
    slot[..4].copy_from_slice(&MAGIC);
    slot[ID_HASH].copy_from_slice(&id_hash(job_id));
    slot[WRAPPED].copy_from_slice(wrapped);
    let sum = checksum(&slot[..CHECKSUM.start]);
    slot[CHECKSUM].copy_from_slice(&sum);
    slot
}

/// A slot's job-id hash and wrapped key, or `None` for a free (or torn) slot.
fn decode_slot(slot: &[u8]) -> Option<([u8; 32], WrappedKey)> {
    if slot.len() != SLOT_LEN || slot[..4] != MAGIC {
        return None;
    }
    if checksum(&slot[..CHECKSUM.start]) != slot[CHECKSUM] {
        return None;
    }
    let hash: [u8; 32] = slot[ID_HASH].try_into().ok()?;
    let wrapped: WrappedKey = slot[WRAPPED].try_into().ok()?;
    Some((hash, wrapped))
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The per-job key file (see the module docs), locked while open.
pub struct JobKeys {
    path: PathBuf,
    file: File,
    /// Per job-id hash: its slot and wrapped key.
    keys: BTreeMap<[u8; 32], (usize, WrappedKey)>,
    /// Number of slots the file has (used or free).
    slots: usize,
}

impl std::fmt::Debug for JobKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobKeys")
            .field("path", &self.path)
            .field("keys", &self.keys.len())
            .field("slots", &self.slots)
            .finish()
    }
}

impl JobKeys {
    /// Opens (or creates, `0600`) the key file at `path` and reads its keys. The parent
    /// folder must exist. A torn or damaged slot counts as free.
    pub fn open(path: impl AsRef<Path>) -> Result<JobKeys, StoreError> {
        let path = path.as_ref().to_path_buf();
        let existed = path.exists();
        let mut file = crate::private_files::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked { path });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("lock", &path)(e)),
        }
        if !existed {
            crate::private_files::fix_created(&file).map_err(io_err("chmod 600", &path))?;
            file.sync_all().map_err(io_err("fsync", &path))?;
            crate::journal::sync_dir(path.parent().unwrap_or_else(|| Path::new(".")))?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io_err("read", &path))?;
        let mut keys = BTreeMap::new();
        for (index, slot) in bytes.chunks(SLOT_LEN).enumerate() {
            if let Some((hash, wrapped)) = decode_slot(slot) {
                keys.insert(hash, (index, wrapped));
            }
        }
        Ok(JobKeys {
            path,
            file,
            keys,
            slots: bytes.len().div_ceil(SLOT_LEN),
        })
    }

    /// The wrapped key of `job_id` in the key file at `path`, read without the lock: for
    /// looking at the file of a running agent (tools, tests). `None` when there is none.
    pub fn peek(path: &Path, job_id: &JobId) -> Result<Option<WrappedKey>, StoreError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", path)(e)),
        };
        let hash = id_hash(job_id);
        Ok(bytes
            .chunks(SLOT_LEN)
            .filter_map(decode_slot)
            .find(|(h, _)| *h == hash)
            .map(|(_, wrapped)| wrapped))
    }

    /// The wrapped key of `job_id`, if the file holds one.
    pub fn get(&self, job_id: &JobId) -> Option<&WrappedKey> {
        self.keys.get(&id_hash(job_id)).map(|(_, wrapped)| wrapped)
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Stores `job_id`'s wrapped key in a free slot (replacing one it had) and fsyncs it.
    pub fn put(&mut self, job_id: &JobId, wrapped: &WrappedKey) -> Result<(), StoreError> {
        let hash = id_hash(job_id);
        let index = match self.keys.get(&hash) {
            Some((index, _)) => *index,
            None => self.free_slot(),
        };
        self.write_slot(index, &encode_slot(job_id, wrapped))?;
        self.keys.insert(hash, (index, *wrapped));
        self.slots = self.slots.max(index + 1);
        Ok(())
    }

    /// Overwrites `job_id`'s key with zeros and fsyncs the file: what it encrypted can no
    /// longer be read. Returns whether there was a key.
    pub fn erase(&mut self, job_id: &JobId) -> Result<bool, StoreError> {
        let hash = id_hash(job_id);
        let Some((index, _)) = self.keys.get(&hash).copied() else {
            return Ok(false);
        };
        self.write_slot(index, &[0u8; SLOT_LEN])?;
        self.keys.remove(&hash);
        Ok(true)
    }

    /// Erases every key but those of `live` jobs (keys left by a crash between a job's end
    /// and its key's erasure, or before its first record), with one fsync. Returns how many.
    pub fn erase_all_but<'a>(
        &mut self,
        live: impl IntoIterator<Item = &'a JobId>,
    ) -> Result<usize, StoreError> {
        let keep: std::collections::BTreeSet<[u8; 32]> = live.into_iter().map(id_hash).collect();
        let stale: Vec<([u8; 32], usize)> = self
            .keys
            .iter()
            .filter(|(hash, _)| !keep.contains(*hash))
            .map(|(hash, (index, _))| (*hash, *index))
            .collect();
        if stale.is_empty() {
            return Ok(0);
        }
        for (_, index) in &stale {
            self.file
                .write_all_at(&[0u8; SLOT_LEN], (*index * SLOT_LEN) as u64)
                .map_err(io_err("erase a key in", &self.path))?;
        }
        self.file.sync_data().map_err(io_err("fsync", &self.path))?;
        for (hash, _) in &stale {
            self.keys.remove(hash);
        }
        Ok(stale.len())
    }

    /// The lowest slot no key uses (a new one at the end when all are used).
    fn free_slot(&self) -> usize {
        let used: std::collections::BTreeSet<usize> =
            self.keys.values().map(|(index, _)| *index).collect();
        (0..self.slots)
            .find(|i| !used.contains(i))
            .unwrap_or(self.slots)
    }

    fn write_slot(&mut self, index: usize, bytes: &[u8; SLOT_LEN]) -> Result<(), StoreError> {
        self.file
            .write_all_at(bytes, (index * SLOT_LEN) as u64)
            .map_err(io_err("write a key in", &self.path))?;
        self.file.sync_data().map_err(io_err("fsync", &self.path))
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn job(n: u32) -> JobId {
        JobId::new(format!("job-{n}")).unwrap()
    }

    #[test]
    fn keys_survive_reopening_and_erased_ones_leave_only_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.keys");
        let a = [0xA5u8; WRAPPED_LEN];
        let b = [0x5Au8; WRAPPED_LEN];
        {
            let mut keys = JobKeys::open(&path).unwrap();
            keys.put(&job(1), &a).unwrap();
            keys.put(&job(2), &b).unwrap();
        }
        let mut keys = JobKeys::open(&path).unwrap();
        assert_eq!(keys.get(&job(1)), Some(&a));
        assert_eq!(keys.get(&job(2)), Some(&b));
        assert!(keys.erase(&job(1)).unwrap());
        assert!(!keys.erase(&job(1)).unwrap());
        drop(keys);
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(WRAPPED_LEN).any(|w| w == a),
            "erased key still on disk"
        );
        assert!(bytes.windows(WRAPPED_LEN).any(|w| w == b));
        let mut keys = JobKeys::open(&path).unwrap();
        assert_eq!(keys.get(&job(1)), None);
        // The freed slot is used again: the file does not grow.
        keys.put(&job(3), &a).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * SLOT_LEN as u64);
    }

    #[test]
    fn a_torn_slot_is_free_and_stale_keys_are_erased() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.keys");
        {
            let mut keys = JobKeys::open(&path).unwrap();
            for n in 1..=3 {
                keys.put(&job(n), &[n as u8; WRAPPED_LEN]).unwrap();
            }
        }
        // Tear the second slot: half its wrapped key is zeros.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SLOT_LEN + 40..SLOT_LEN + 70].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let mut keys = JobKeys::open(&path).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.get(&job(2)), None);
        assert_eq!(keys.erase_all_but([&job(3)]).unwrap(), 1);
        assert_eq!(keys.get(&job(1)), None);
        assert!(keys.get(&job(3)).is_some());
        drop(keys);
        let keys = JobKeys::open(&path).unwrap();
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn the_file_is_locked_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.keys");
        let _keys = JobKeys::open(&path).unwrap();
        assert!(matches!(
            JobKeys::open(&path),
            Err(StoreError::Locked { .. })
        ));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
