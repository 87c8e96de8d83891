//! Sequence numbers that must keep rising across restarts and across a wall clock set back:
//! the presence `seq` (one per start; the platform ignores a birth or will with a lower one)
//! and the inventory `seq` (the platform keeps the retained inventory with the highest one).
//!
//! Both live in small files of the state folder, written durably (temporary file, fsync,
//! rename, fsync of the folder) before a number they cover is used:
//! - `presence.seq` holds the last presence number handed out; a start takes the next one;
//! - `inventory.seq` holds the end of the block of inventory numbers reserved so far. A start
//!   reserves a block from the larger of that end and the wall clock in milliseconds (so that
//!   numbers still rise over those of an agent that never had the file), and another block is
//!   reserved when one runs out. A clock set back changes nothing: the stored end wins.
//!
//! The same folder keeps `replay.floor`, the replay floor (`compaction::raised_floor`): an
//! RFC 3339 time that only rises, written the same durable way before the jobs it covers are
//! forgotten.
//!
//! The arithmetic is pure ([`presence_after`], [`block_start`]); the file access is the thin
//! shell around it. A file that exists but cannot be read as a number stops the start: a
//! number counted again from zero would make the platform ignore the station.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::DaemonError;

/// How many inventory numbers one reservation covers: at the inventory's fastest pace (10 a
/// second) a file write every few hours.
pub(super) const INVENTORY_BLOCK: u64 = 100_000;

/// The presence number after `last` (`None`: no file yet).
pub(super) fn presence_after(last: Option<u64>) -> u64 {
    last.unwrap_or(0).saturating_add(1)
}

/// Where a new block of inventory numbers starts: after every number reserved before
/// (`reserved_end`), and not below the wall clock's milliseconds at `now` (numbers of
/// agents before the file existed were the start time in milliseconds).
pub(super) fn block_start(reserved_end: Option<u64>, now: OffsetDateTime) -> u64 {
    let clock = u64::try_from(now.unix_timestamp())
        .unwrap_or(0)
        .saturating_mul(1000);
    clock.max(reserved_end.unwrap_or(0))
}

/// Reads a number file: `None` when it does not exist.
fn read(path: &Path) -> Result<Option<u64>, DaemonError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(DaemonError::StateDir {
                path: path.to_owned(),
                source,
            });
        }
    };
    text.trim()
        .parse()
        .map(Some)
        .map_err(|_| DaemonError::StateDir {
            path: path.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a sequence number: restore the file from a backup, or write a number larger \
             than any the platform has seen from this station",
            ),
        })
}

/// Writes `value` to `path` durably: a crash leaves the old number or the new one.
fn write(path: &Path, value: u64) -> Result<(), DaemonError> {
    write_text(path, &value.to_string())
}

/// Writes `text` to `path` durably (temporary file, fsync, rename, fsync of the folder).
fn write_text(path: &Path, text: &str) -> Result<(), DaemonError> {
    let state_err = |source| DaemonError::StateDir {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    crate::private_files::write(&tmp, text.as_bytes()).map_err(state_err)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(state_err)?;
    std::fs::rename(&tmp, path).map_err(state_err)?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    crate::journal::sync_dir(dir).map_err(|e| DaemonError::Journal(e.to_string()))
}

/// The replay floor kept in the state folder `dir`, if any.
pub(super) fn read_replay_floor(dir: &Path) -> Result<Option<OffsetDateTime>, DaemonError> {
    let path = dir.join("replay.floor");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(DaemonError::StateDir { path, source }),
    };
    OffsetDateTime::parse(text.trim(), &Rfc3339)
        .map(Some)
        .map_err(|_| DaemonError::StateDir {
            path,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not an RFC 3339 time: restore the file from a backup, or write the issue                  time of the newest job this station has finished",
            ),
        })
}

/// Keeps `floor` as the replay floor of the state folder `dir`, durably.
pub(super) fn write_replay_floor(dir: &Path, floor: OffsetDateTime) -> Result<(), DaemonError> {
    let text = floor
        .format(&Rfc3339)
        .map_err(|e| DaemonError::Journal(format!("replay floor {floor}: {e}")))?;
    write_text(&dir.join("replay.floor"), &text)
}

/// Takes the next presence number of the state folder `dir`, durably.
pub(super) fn next_presence_seq(dir: &Path) -> Result<u64, DaemonError> {
    let path = dir.join("presence.seq");
    let next = presence_after(read(&path)?);
    write(&path, next)?;
    Ok(next)
}

/// The inventory's sequence numbers, reserved in durable blocks.
#[derive(Debug)]
pub(super) struct InventorySeq {
    path: PathBuf,
    /// The last number handed out.
    last: u64,
    /// The end of the reserved block: numbers below it may be handed out.
    end: u64,
}

impl InventorySeq {
    /// Reserves the first block of the state folder `dir` at wall-clock time `now`.
    pub(super) fn open(dir: &Path, now: OffsetDateTime) -> Result<InventorySeq, DaemonError> {
        let path = dir.join("inventory.seq");
        let start = block_start(read(&path)?, now);
        let end = start.saturating_add(INVENTORY_BLOCK);
        write(&path, end)?;
        Ok(InventorySeq {
            path,
            last: start,
            end,
        })
    }

    /// The next number. When the block is used up another one is reserved; if that cannot be
    /// written the number is still given (the inventory goes on), with a warning: only a
    /// restart before the next successful reservation could then repeat numbers.
    pub(super) fn next(&mut self) -> u64 {
        self.last = self.last.saturating_add(1);
        if self.last >= self.end {
            let end = self.last.saturating_add(INVENTORY_BLOCK);
            match write(&self.path, end) {
                Ok(()) => self.end = end,
                Err(e) => {
                    tracing::warn!(error = %e, "inventory sequence block not reserved");
                }
            }
        }
        self.last
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).unwrap()
    }

    #[test]
    fn presence_numbers_rise_from_the_last_one() {
        assert_eq!(presence_after(None), 1);
        assert_eq!(presence_after(Some(41)), 42);
    }

    #[test]
    fn inventory_blocks_start_after_the_reserved_end_whatever_the_clock_says() {
        let now = at(1_800_000_000);
        assert_eq!(block_start(None, now), 1_800_000_000_000);
        // The clock set back a day: the reserved end wins.
        let end = 1_800_000_000_000 + INVENTORY_BLOCK;
        assert_eq!(block_start(Some(end), at(1_800_000_000 - 86_400)), end);
        // The clock ahead of the reservations: the clock wins.
        assert_eq!(block_start(Some(5), now), 1_800_000_000_000);
    }

    #[test]
    fn presence_numbers_rise_across_restarts_and_survive_in_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let seqs: Vec<u64> = (0..3)
            .map(|_| next_presence_seq(dir.path()).unwrap())
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("presence.seq")).unwrap(),
            "3"
        );
        assert!(!dir.path().join("presence.seq.tmp").exists());
    }

    #[test]
    fn the_replay_floor_survives_in_its_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_replay_floor(dir.path()).unwrap(), None);
        let floor = at(1_800_000_000) + time::Duration::milliseconds(250);
        write_replay_floor(dir.path(), floor).unwrap();
        assert_eq!(read_replay_floor(dir.path()).unwrap(), Some(floor));
        std::fs::write(dir.path().join("replay.floor"), "yesterday").unwrap();
        let e = read_replay_floor(dir.path()).unwrap_err().to_string();
        assert!(e.contains("replay.floor"), "{e}");
    }

    #[test]
    fn a_presence_file_that_is_no_number_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("presence.seq"), "garbage").unwrap();
        let e = next_presence_seq(dir.path()).unwrap_err().to_string();
        assert!(e.contains("presence.seq"), "{e}");
    }

    #[test]
    fn inventory_numbers_rise_across_restarts_with_the_clock_set_back() {
        let dir = tempfile::tempdir().unwrap();
        let now = at(1_800_000_000);
        let mut first = InventorySeq::open(dir.path(), now).unwrap();
        let a: Vec<u64> = (0..3).map(|_| first.next()).collect();
        assert!(a.windows(2).all(|w| w[0] < w[1]), "{a:?}");
        // A restart with the clock set back an hour.
        let mut second = InventorySeq::open(dir.path(), at(1_800_000_000 - 3600)).unwrap();
        let b = second.next();
        assert!(b > a[2], "{b} after {a:?}");
        // And a restart at the same (wrong) time again.
        let mut third = InventorySeq::open(dir.path(), at(1_800_000_000 - 3600)).unwrap();
        assert!(third.next() > b);
    }

    #[test]
    fn a_used_up_block_reserves_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut seq = InventorySeq::open(dir.path(), at(0)).unwrap();
        let mut last = 0;
        for _ in 0..INVENTORY_BLOCK + 2 {
            last = seq.next();
        }
        let stored: u64 = std::fs::read_to_string(dir.path().join("inventory.seq"))
            .unwrap()
            .parse()
            .unwrap();
        assert!(stored > last, "{stored} must cover {last}");
        let mut after = InventorySeq::open(dir.path(), at(0)).unwrap();
        assert!(after.next() > last);
    }
}
