//! Files of the state directory: atomic writes, the advisory lock, and reads cached by file
//! identity.
//!
//! Every change is written to a temporary file, flushed to disk, renamed over the old file
//! and the directory flushed: a reader (in any process) sees the old or the new file, never a
//! mix, and a process killed mid-way leaves the last committed state. Writers serialize on an
//! exclusive `flock` of `lock` in the directory (fs4), taken per operation on a fresh file
//! descriptor so threads of one process exclude each other too. Readers take no lock.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Identity of one version of a file: a rename-replaced file gets a new inode and times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        }
    }
}

/// A cache of parsed files, refreshed whenever the file on disk changed.
pub(crate) struct FileCache<T> {
    entries: Mutex<HashMap<PathBuf, (Stamp, Arc<T>)>>,
}

impl<T: DeserializeOwned> FileCache<T> {
    pub(crate) fn new() -> Self {
        FileCache {
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The latest committed content of `path`, or `None` when the file does not exist.
    pub(crate) fn read(&self, path: &Path) -> Result<Option<Arc<T>>> {
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("stat", path, e)),
        };
        let stamp = Stamp::of(&meta);
        if let Ok(entries) = self.entries.lock()
            && let Some((s, v)) = entries.get(path)
            && *s == stamp
        {
            return Ok(Some(Arc::clone(v)));
        }
        // Stamp the file we actually read (fstat of the open file), so that a rename between
        // the stat above and this open can never pair old content with a new stamp.
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open", path, e)),
        };
        let stamp = file
            .metadata()
            .map(|m| Stamp::of(&m))
            .map_err(|e| Error::io("stat", path, e))?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| Error::io("read", path, e))?;
        let value: T = serde_json::from_str(&text).map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let value = Arc::new(value);
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(path.to_path_buf(), (stamp, Arc::clone(&value)));
        }
        Ok(Some(value))
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `value` as JSON to `path` atomically and durably.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

/// Writes bytes to `path` through a temporary file, fsync and rename, then fsyncs the folder.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync", dir, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The directory's writer lock; released when dropped.
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Blocks until this caller holds the exclusive lock of `dir`.
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        fs4::FileExt::lock(&file).map_err(|e| Error::io("lock", &path, e))?;
        Ok(DirLock { _file: file })
    }
}
