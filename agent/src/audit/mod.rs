//! The audit log: an append-only, hash-chained record of what the station did that someone
//! may later have to account for — production receipts, PIN locks and unlocks, wipes,
//! refused certificates and jobs, foreign tokens, configuration changes, operators signing in
//! and out, the agent's start and stop.
//!
//! It lives in `state_dir/audit/` as files `audit-000001.jsonl`, `audit-000002.jsonl`, …, one
//! JSON entry a line ([`entry`] has the line format), each entry carrying the hash of the one
//! before, across files: when a file reaches the configured size the next one starts with a
//! [`AuditEvent::Continued`] entry naming the file before it. Every entry is `fsync`'d before
//! [`AuditLog::record`] returns. Nothing here is ever compacted or rewritten; the job journal
//! is a separate file with its own life.
//!
//! What the log does **not** do: it cannot tell, from its own files, that its newest entries
//! or its newest file were cut away at a line boundary (nothing after them names them).
//! Receipts also go to the platform, which keeps its own copy; compare counts there.
//!
//! [`verify`] reads the files and tells where the chain breaks; the `ukey-agent audit`
//! command is a thin shell over it. Entries never carry PINs, ID-card numbers or phone
//! numbers: no event has a field for them, and free text is scrubbed ([`redact`]).

pub mod builder;
pub mod entry;
pub mod verify;
pub mod writer;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use ukey_protocol::{JobId, KeyLabel, SignedReceipt, TokenSerial};

pub use builder::ReceiptBuilder;
use entry::{Entry, GENESIS_HASH, encode_line};
pub use verify::{Break, BreakKind, Report, verify_dir};
pub use writer::{AuditHealth, AuditWriter};

/// The audit folder inside the state folder.
pub fn audit_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("audit")
}

/// Default size at which the log moves on to a new file.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Smallest allowed file size (one large receipt entry must fit).
pub const MIN_MAX_FILE_BYTES: u64 = 64 * 1024;
/// Longest free text kept in an entry.
const MAX_TEXT_CHARS: usize = 512;

/// The name of the `index`-th file (from 1).
pub fn file_name(index: u32) -> String {
    format!("audit-{index:06}.jsonl")
}

/// The index of an audit file's name, if it is one.
pub fn file_index(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    if digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// An audit log that cannot be opened or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// A file operation failed.
    #[error("audit log {path}: {what}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The newest entry cannot be read, so the next one cannot be chained to it.
    #[error("audit log {path}, line {line}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// Another process has the log open for writing.
    #[error("audit log {path}: in use by another agent (file lock held)")]
    Locked {
        /// The folder.
        path: PathBuf,
    },
    /// An entry could not be encoded.
    #[error("audit entry cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Which PIN locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinKind {
    /// The user PIN.
    User,
    /// The SO (admin) PIN.
    So,
}

/// Something the audit log records. No variant has a field for a PIN, an ID-card number or
/// a phone number; free-text fields are scrubbed of digit runs that look like one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum AuditEvent {
    /// The agent started.
    Started {
        /// The agent's version.
        version: String,
        /// The station id.
        station_id: String,
    },
    /// The agent stopped (gracefully; a crash leaves no entry, the next start shows it).
    Stopped {
        /// Why: `signal`, `error: …`.
        reason: String,
    },
    /// The first entry of every file after the first: names the file before it.
    Continued {
        /// The previous file's name.
        previous_file: String,
    },
    /// At start-up the newest file ended in a partly written line (a crash mid-append,
    /// before its `fsync` returned): it was cut off, and this entry keeps its digest.
    TornTailRemoved {
        /// The file.
        file: String,
        /// How many bytes were cut.
        bytes: u64,
        /// SHA-256 of the bytes cut.
        sha256: String,
    },
    /// A production receipt, signed with the station's key.
    Receipt {
        /// The signed receipt exactly as published.
        receipt: SignedReceipt,
    },
    /// A PIN of a token locked (retry counter at 0).
    PinLocked {
        /// The token.
        token: TokenSerial,
        /// Which PIN.
        pin: PinKind,
        /// The job that was running, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<JobId>,
    },
    /// A user PIN was reset by an `unlock` job.
    PinUnlocked {
        /// The token.
        token: TokenSerial,
        /// The job.
        job: JobId,
    },
    /// A token was wiped (`C_InitToken`): initialized blank, or re-initialized by a job.
    Wiped {
        /// The token.
        token: TokenSerial,
        /// The job, if one did it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<JobId>,
        /// Why.
        reason: String,
    },
    /// An issued certificate was refused (wrong key, subject, usage or issuer).
    CertificateRefused {
        /// The job.
        job: JobId,
        /// The token.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<TokenSerial>,
        /// Which certificate.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<KeyLabel>,
        /// Why.
        reason: String,
    },
    /// A job was refused (forged, expired, replayed, for another station, malformed).
    JobRefused {
        /// The job, when it could be read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<JobId>,
        /// Why.
        reason: String,
    },
    /// A token that is initialized but not ours was inserted.
    ForeignToken {
        /// Its serial, when it could be read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<TokenSerial>,
        /// Its rack position.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<u32>,
    },
    /// The configuration changed (at start or on SIGHUP).
    ConfigChanged {
        /// The changed keys (names only, never values).
        keys: Vec<String>,
        /// Whether the change applied at once (else it waits for a restart).
        applied: bool,
    },
    /// An operator signed in at the desk.
    OperatorSignedIn {
        /// The staff id.
        operator: String,
    },
    /// An operator signed out.
    OperatorSignedOut {
        /// The staff id.
        operator: String,
    },
}

impl AuditEvent {
    /// The event's `type` as written.
    pub fn kind(&self) -> &'static str {
        match self {
            AuditEvent::Started { .. } => "started",
            AuditEvent::Stopped { .. } => "stopped",
            AuditEvent::Continued { .. } => "continued",
            AuditEvent::TornTailRemoved { .. } => "torn-tail-removed",
            AuditEvent::Receipt { .. } => "receipt",
            AuditEvent::PinLocked { .. } => "pin-locked",
            AuditEvent::PinUnlocked { .. } => "pin-unlocked",
            AuditEvent::Wiped { .. } => "wiped",
            AuditEvent::CertificateRefused { .. } => "certificate-refused",
            AuditEvent::JobRefused { .. } => "job-refused",
            AuditEvent::ForeignToken { .. } => "foreign-token",
            AuditEvent::ConfigChanged { .. } => "config-changed",
            AuditEvent::OperatorSignedIn { .. } => "operator-signed-in",
            AuditEvent::OperatorSignedOut { .. } => "operator-signed-out",
        }
    }

    /// The token the event is about, if any (a receipt's is read unverified).
    pub fn token(&self) -> Option<TokenSerial> {
        match self {
            AuditEvent::Receipt { receipt } => {
                receipt.receipt_unverified().ok().map(|r| r.token_serial)
            }
            AuditEvent::PinLocked { token, .. }
            | AuditEvent::PinUnlocked { token, .. }
            | AuditEvent::Wiped { token, .. } => Some(token.clone()),
            AuditEvent::CertificateRefused { token, .. }
            | AuditEvent::ForeignToken { token, .. } => token.clone(),
            _ => None,
        }
    }

    /// The same event with every free-text field passed through [`redact`].
    fn scrubbed(self) -> AuditEvent {
        match self {
            AuditEvent::Stopped { reason } => AuditEvent::Stopped {
                reason: redact(&reason),
            },
            AuditEvent::Wiped { token, job, reason } => AuditEvent::Wiped {
                token,
                job,
                reason: redact(&reason),
            },
            AuditEvent::CertificateRefused {
                job,
                token,
                label,
                reason,
            } => AuditEvent::CertificateRefused {
                job,
                token,
                label,
                reason: redact(&reason),
            },
            AuditEvent::JobRefused { job, reason } => AuditEvent::JobRefused {
                job,
                reason: redact(&reason),
            },
            AuditEvent::ConfigChanged { keys, applied } => AuditEvent::ConfigChanged {
                keys: keys.iter().map(|k| redact(k)).collect(),
                applied,
            },
            AuditEvent::OperatorSignedIn { operator } => AuditEvent::OperatorSignedIn {
                operator: redact(&operator),
            },
            AuditEvent::OperatorSignedOut { operator } => AuditEvent::OperatorSignedOut {
                operator: redact(&operator),
            },
            other => other,
        }
    }
}

/// Free text fit for the log: control characters out, at most 512 characters, and every run
/// of 11 or more digits (a mobile number, an ID-card number with its final digit or `X`)
/// replaced by `[redacted]`. Error texts from libraries or the platform may quote such data.
pub fn redact(text: &str) -> String {
    let fitted = ukey_protocol::fit_text(text, MAX_TEXT_CHARS);
    let chars: Vec<char> = fitted.chars().collect();
    let mut out = String::with_capacity(fitted.len());
    let mut i = 0;
    while i < chars.len() {
        let run = chars[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if run >= 11 {
            out.push_str("[redacted]");
            i += run;
            if chars.get(i).is_some_and(|c| *c == 'X' || *c == 'x') {
                i += 1;
            }
        } else if run > 0 {
            out.extend(&chars[i..i + run]);
            i += run;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// Where an entry went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Its `seq`.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// The file it is in.
    pub file: String,
}

/// The open audit log: appends entries, `fsync`s each, rotates by size. One writer per state
/// folder (the agent already holds the state folder's lock).
#[derive(Debug)]
pub struct AuditLog {
    /// Held while the log is open: two writers would fork the chain.
    _lock: File,
    dir: PathBuf,
    max_file_bytes: u64,
    file: File,
    index: u32,
    len: u64,
    next_seq: u64,
    last_hash: String,
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> AuditError {
    let path = path.to_owned();
    move |source| AuditError::Io { path, what, source }
}

/// The audit files in `dir`, by index.
pub fn list_files(dir: &Path) -> Result<Vec<(u32, PathBuf)>, AuditError> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(io(dir, "cannot list the folder")(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(dir, "cannot list the folder"))?;
        if let Some(index) = entry.file_name().to_str().and_then(file_index) {
            files.push((index, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "cannot sync the folder"))
}

fn create_file(dir: &Path, index: u32) -> Result<File, AuditError> {
    let path = dir.join(file_name(index));
    let file = crate::private_files::options()
        .append(true)
        .read(true)
        .create_new(true)
        .open(&path)
        .map_err(io(&path, "cannot create"))?;
    crate::private_files::fix_created(&file).map_err(io(&path, "cannot set mode 0600"))?;
    sync_dir(dir)?;
    Ok(file)
}

/// The last complete line of `bytes` (without `\n`) and its number (from 1).
fn last_line(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let body = bytes.strip_suffix(b"\n")?;
    let start = body.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    let number = body.iter().filter(|b| **b == b'\n').count() + 1;
    Some((number, &body[start..]))
}

impl AuditLog {
    /// Opens (or starts) the log in `dir` (see [`audit_dir`]), moving on to a new file when
    /// the current one would pass `max_file_bytes` (at least [`MIN_MAX_FILE_BYTES`]). A
    /// partly written last line is cut off and recorded as [`AuditEvent::TornTailRemoved`].
    pub fn open(dir: &Path, max_file_bytes: u64) -> Result<AuditLog, AuditError> {
        crate::private_files::create_dir(dir).map_err(io(dir, "cannot create the folder"))?;
        let lock_path = dir.join("lock");
        let lock = crate::private_files::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io(&lock_path, "cannot open"))?;
        crate::private_files::fix_created(&lock).map_err(io(&lock_path, "cannot set mode 0600"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(AuditError::Locked {
                    path: dir.to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path, "cannot lock")(e)),
        }
        let files = list_files(dir)?;
        let max_file_bytes = max_file_bytes.max(MIN_MAX_FILE_BYTES);
        let Some((index, path)) = files.last().cloned() else {
            let file = create_file(dir, 1)?;
            return Ok(AuditLog {
                _lock: lock,
                dir: dir.to_owned(),
                max_file_bytes,
                file,
                index: 1,
                len: 0,
                next_seq: 0,
                last_hash: GENESIS_HASH.to_owned(),
            });
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io(&path, "cannot open"))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io(&path, "cannot read"))?;
        let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        let torn = bytes.split_off(keep);
        if !torn.is_empty() {
            file.set_len(keep as u64)
                .and_then(|()| file.sync_all())
                .map_err(io(&path, "cannot cut the torn last line"))?;
            file.seek(SeekFrom::End(0))
                .map_err(io(&path, "cannot seek"))?;
        }
        // The newest entry: in this file, or (a file created just before a crash) the one
        // before it.
        let (next_seq, last_hash) = match last_line(&bytes) {
            Some((line, text)) => Self::tail_of(&path, line, text)?,
            None => match files.iter().rev().nth(1) {
                Some((_, before)) => {
                    let earlier = std::fs::read(before).map_err(io(before, "cannot read"))?;
                    match last_line(&earlier) {
                        Some((line, text)) => Self::tail_of(before, line, text)?,
                        None => (0, GENESIS_HASH.to_owned()),
                    }
                }
                None => (0, GENESIS_HASH.to_owned()),
            },
        };
        let mut log = AuditLog {
            _lock: lock,
            dir: dir.to_owned(),
            max_file_bytes,
            file,
            index,
            len: keep as u64,
            next_seq,
            last_hash,
        };
        if log.len == 0 && index > 1 {
            log.append(
                AuditEvent::Continued {
                    previous_file: file_name(index - 1),
                },
                OffsetDateTime::now_utc(),
            )?;
        }
        if !torn.is_empty() {
            log.record(AuditEvent::TornTailRemoved {
                file: file_name(index),
                bytes: torn.len() as u64,
                sha256: entry::sha256_hex(&torn),
            })?;
        }
        Ok(log)
    }

    fn tail_of(path: &Path, line: usize, text: &[u8]) -> Result<(u64, String), AuditError> {
        let read = entry::decode_line(text).map_err(|detail| AuditError::Corrupt {
            path: path.to_owned(),
            line,
            detail,
        })?;
        if read.stored_hash != read.computed_hash {
            return Err(AuditError::Corrupt {
                path: path.to_owned(),
                line,
                detail: "the newest entry does not match its hash (edited)".to_owned(),
            });
        }
        Ok((read.entry.seq + 1, read.stored_hash))
    }

    /// Appends `event` (free text scrubbed, see [`redact`]) stamped with the current time,
    /// and returns once it is on disk.
    pub fn record(&mut self, event: AuditEvent) -> Result<Recorded, AuditError> {
        self.record_at(event, OffsetDateTime::now_utc())
    }

    /// As [`AuditLog::record`], stamped `at`.
    pub fn record_at(
        &mut self,
        event: AuditEvent,
        at: OffsetDateTime,
    ) -> Result<Recorded, AuditError> {
        self.record_by(event, None, at)
    }

    /// As [`AuditLog::record_at`], naming the `operator` signed in at the desk (scrubbed as
    /// free text).
    pub fn record_by(
        &mut self,
        event: AuditEvent,
        operator: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<Recorded, AuditError> {
        let event = event.scrubbed();
        let operator = operator.map(redact);
        let (line, _) = encode_line(&self.entry(event.clone(), operator.clone(), at))?;
        if self.len > 0 && self.len + line.len() as u64 > self.max_file_bytes {
            self.rotate(at)?;
        }
        self.append_by(event, operator, at)
    }

    fn entry(&self, event: AuditEvent, operator: Option<String>, at: OffsetDateTime) -> Entry {
        Entry {
            seq: self.next_seq,
            at: at.to_offset(time::UtcOffset::UTC),
            prev: self.last_hash.clone(),
            operator,
            event,
        }
    }

    fn rotate(&mut self, at: OffsetDateTime) -> Result<(), AuditError> {
        let previous = file_name(self.index);
        self.file = create_file(&self.dir, self.index + 1)?;
        self.index += 1;
        self.len = 0;
        self.append(
            AuditEvent::Continued {
                previous_file: previous,
            },
            at,
        )?;
        Ok(())
    }

    fn append(&mut self, event: AuditEvent, at: OffsetDateTime) -> Result<Recorded, AuditError> {
        self.append_by(event, None, at)
    }

    fn append_by(
        &mut self,
        event: AuditEvent,
        operator: Option<String>,
        at: OffsetDateTime,
    ) -> Result<Recorded, AuditError> {
        let (line, hash) = encode_line(&self.entry(event, operator, at))?;
        let path = self.dir.join(file_name(self.index));
        self.file
            .write_all(&line)
            .map_err(io(&path, "cannot append"))?;
        self.file.sync_data().map_err(io(&path, "cannot sync"))?;
        let recorded = Recorded {
            seq: self.next_seq,
            hash: hash.clone(),
            file: file_name(self.index),
        };
        self.len += line.len() as u64;
        self.next_seq += 1;
        self.last_hash = hash;
        Ok(recorded)
    }

    /// The `seq` the next entry will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

#[cfg(test)]
mod tests;
