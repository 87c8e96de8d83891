//! The audit log's writer thread: the daemon hands entries over without waiting, and one
//! thread of its own appends and `fsync`s them, in the order they were handed over.
//!
//! Every append is `fsync`'d ([`AuditLog::record`]); on a slow disk that takes tens of
//! milliseconds, which the daemon's single loop (panel, MQTT, every token's steps) must not
//! spend. So [`AuditWriter::record`] only sends the entry to the thread and returns.
//!
//! A failed append is never silent: it is logged as an error at once, the log is opened again
//! (which cuts a partly written line and records that) and the entry tried once more; an
//! entry that still cannot be written is counted as lost in [`AuditHealth`], which the daemon
//! shows as a desk alert (`audit-log-failed`) in the inventory, the status and on the panel
//! for as long as the agent runs. What it does not do: keep entries across a crash before
//! they reach the thread (the receipts among them are also in the outbox until the platform
//! has them).

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use time::OffsetDateTime;

use super::{AuditError, AuditEvent, AuditLog};

/// How the writer has fared: entries it could not write and the last error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditHealth {
    /// Entries written.
    pub written: u64,
    /// Entries that could not be written, even after the log was opened again.
    pub lost: u64,
    /// The last error, if any (kept after a later success, so the alert can say why).
    pub last_error: Option<String>,
}

enum Request {
    Record {
        event: AuditEvent,
        operator: Option<String>,
        at: OffsetDateTime,
    },
    Flush(mpsc::SyncSender<()>),
    Stop,
}

/// The handle to the writer thread (see the module documentation). Clones share the thread,
/// the health and the signed-in operator.
#[derive(Debug, Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<Request>,
    health: Arc<Mutex<AuditHealth>>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Who is signed in at the desk: named in every entry recorded from now on.
    operator: Arc<Mutex<Option<String>>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AuditWriter {
    /// Starts the thread that owns `log` (opened in `dir` with `max_file_bytes`, to open it
    /// again after a failure).
    pub fn start(log: AuditLog, dir: PathBuf, max_file_bytes: u64) -> Result<Self, AuditError> {
        let (tx, rx) = mpsc::channel::<Request>();
        let health = Arc::new(Mutex::new(AuditHealth::default()));
        let shared = Arc::clone(&health);
        let thread = std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || write_loop(log, &dir, max_file_bytes, &rx, &shared))
            .map_err(|source| AuditError::Io {
                path: PathBuf::new(),
                what: "cannot start the writer thread",
                source,
            })?;
        Ok(AuditWriter {
            tx,
            health,
            thread: Arc::new(Mutex::new(Some(thread))),
            operator: Arc::new(Mutex::new(None)),
        })
    }

    /// Opens the log of the state folder `state_dir` ([`super::audit_dir`]) and starts its
    /// writer. Fails when another process holds the log ([`AuditError::Locked`]).
    pub fn open(state_dir: &std::path::Path, max_file_bytes: u64) -> Result<Self, AuditError> {
        let dir = super::audit_dir(state_dir);
        let log = AuditLog::open(&dir, max_file_bytes)?;
        AuditWriter::start(log, dir, max_file_bytes)
    }

    /// Hands `event` to the writer, stamped now and with the signed-in operator; returns at
    /// once.
    pub fn record(&self, event: AuditEvent) {
        let request = Request::Record {
            event,
            operator: self.operator(),
            at: OffsetDateTime::now_utc(),
        };
        if self.tx.send(request).is_err() {
            // The thread is gone (stopped or panicked): count the entry as lost, loudly.
            tracing::error!("audit log writer is not running: entry not recorded");
            let mut health = locked(&self.health);
            health.lost += 1;
            health.last_error = Some("the audit log writer is not running".into());
        }
    }

    /// Sets who is signed in (`None`: nobody); entries recorded later name them.
    pub fn set_operator(&self, operator: Option<String>) {
        *locked(&self.operator) = operator;
    }

    /// Who is signed in.
    pub fn operator(&self) -> Option<String> {
        locked(&self.operator).clone()
    }

    /// How the writer has fared so far.
    pub fn health(&self) -> AuditHealth {
        locked(&self.health).clone()
    }

    /// Waits (blocking) until every entry handed over so far is written or counted lost.
    pub fn flush(&self) {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if self.tx.send(Request::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv();
        }
    }

    /// Records `last` (the stop), waits (blocking) for every entry to be written and ends
    /// the thread; entries handed over later by a clone are counted lost.
    pub fn finish(self, last: AuditEvent) -> AuditHealth {
        self.record(last);
        let _ = self.tx.send(Request::Stop);
        let thread = locked(&self.thread).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("audit log writer ended with a panic");
        }
        self.health()
    }
}

fn write_loop(
    log: AuditLog,
    dir: &std::path::Path,
    max_file_bytes: u64,
    rx: &mpsc::Receiver<Request>,
    health: &Mutex<AuditHealth>,
) {
    let mut log = Some(log);
    let note = |f: &dyn Fn(&mut AuditHealth)| {
        f(&mut health.lock().unwrap_or_else(PoisonError::into_inner));
    };
    while let Ok(request) = rx.recv() {
        let (event, operator, at) = match request {
            Request::Record {
                event,
                operator,
                at,
            } => (event, operator, at),
            Request::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Request::Stop => break,
        };
        let kind = event.kind();
        let first = match log.as_mut() {
            Some(l) => l.record_by(event.clone(), operator.as_deref(), at),
            None => Err(AuditError::Io {
                path: dir.to_owned(),
                what: "not open (opening it again failed earlier)",
                source: std::io::Error::other("closed"),
            }),
        };
        let error = match first {
            Ok(_) => {
                note(&|h| h.written += 1);
                continue;
            }
            Err(e) => e,
        };
        tracing::error!(entry = kind, error = %error, "audit log: entry not written; opening the log again to retry");
        // Opening again cuts a partly written line (and records that) and re-reads the chain's
        // end; the lock must be let go first.
        drop(log.take());
        // Only the log that was there: a folder emptied or removed behind the agent's back
        // must not become a fresh chain that would verify as if nothing had been lost.
        let still_there = super::list_files(dir).is_ok_and(|files| !files.is_empty());
        log = if still_there {
            AuditLog::open(dir, max_file_bytes).ok()
        } else {
            tracing::error!(folder = %dir.display(), "audit log: its files are gone; no new log is started");
            None
        };
        let retry = match log.as_mut() {
            Some(l) => l.record_by(event, operator.as_deref(), at),
            None => Err(error),
        };
        match retry {
            Ok(_) => {
                tracing::warn!(entry = kind, "audit log: entry written on the second try");
                note(&|h| {
                    h.written += 1;
                    h.last_error = Some(format!("recovered: {kind}"));
                });
            }
            Err(e) => {
                tracing::error!(entry = kind, error = %e, "audit log: entry LOST; the desk shows an audit-log-failed alert");
                let text = e.to_string();
                note(&|h| {
                    h.lost += 1;
                    h.last_error = Some(text.clone());
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::audit::{DEFAULT_MAX_FILE_BYTES, verify_dir};

    #[test]
    fn entries_are_written_in_order_with_the_operator_and_the_stop_last() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), DEFAULT_MAX_FILE_BYTES).unwrap();
        let writer =
            AuditWriter::start(log, dir.path().to_owned(), DEFAULT_MAX_FILE_BYTES).unwrap();
        writer.record(AuditEvent::Started {
            version: "1".into(),
            station_id: "desk-01".into(),
        });
        writer.set_operator(Some("staff-7".into()));
        writer.record(AuditEvent::OperatorSignedIn {
            operator: "staff-7".into(),
        });
        writer.flush();
        assert_eq!(writer.health().written, 2);
        let health = writer.finish(AuditEvent::Stopped {
            reason: "signal".into(),
        });
        assert_eq!((health.written, health.lost), (3, 0));
        let text = std::fs::read_to_string(dir.path().join(crate::audit::file_name(1))).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(!lines[0].contains("\"operator\""), "{}", lines[0]);
        assert!(
            lines[1].contains("\"operator\":\"staff-7\""),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains("\"type\":\"stopped\""), "{}", lines[2]);
        assert!(
            lines[2].contains("\"operator\":\"staff-7\""),
            "{}",
            lines[2]
        );
        let report = verify_dir(dir.path(), None).unwrap();
        assert!(report.breaks.is_empty(), "{:?}", report.breaks);
    }

    #[test]
    fn an_entry_that_cannot_be_written_is_counted_lost_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let max = crate::audit::MIN_MAX_FILE_BYTES;
        let log = AuditLog::open(dir.path(), max).unwrap();
        let writer = AuditWriter::start(log, dir.path().to_owned(), max).unwrap();
        // One entry larger than a file: the next one must start the second file, whose name
        // is taken by a folder, so neither the append nor the log opened again can write.
        writer.record(AuditEvent::ConfigChanged {
            keys: vec!["k".repeat(500); 200],
            applied: false,
        });
        writer.flush();
        std::fs::create_dir(dir.path().join(crate::audit::file_name(2))).unwrap();
        writer.record(AuditEvent::Stopped {
            reason: "test".into(),
        });
        writer.flush();
        let health = writer.health();
        assert_eq!((health.written, health.lost), (1, 1));
        assert!(
            health
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("audit-000002.jsonl")),
            "{health:?}"
        );
    }

    #[test]
    fn a_log_whose_folder_went_away_is_not_started_afresh() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("audit");
        let max = crate::audit::MIN_MAX_FILE_BYTES;
        let log = AuditLog::open(&dir, max).unwrap();
        let writer = AuditWriter::start(log, dir.clone(), max).unwrap();
        writer.record(AuditEvent::ConfigChanged {
            keys: vec!["k".repeat(500); 200],
            applied: false,
        });
        writer.flush();
        // The folder is moved away: the next entry needs a new file in it.
        std::fs::rename(&dir, root.path().join("moved")).unwrap();
        writer.record(AuditEvent::Stopped {
            reason: "test".into(),
        });
        writer.flush();
        assert_eq!(writer.health().lost, 1);
        assert!(!dir.exists(), "a fresh chain was started in a new folder");
    }
}
