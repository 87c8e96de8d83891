//! Checking the audit log: the chain of hashes across lines and files, and every receipt's
//! signature. [`verify_files`] is pure (it takes the files' names and bytes);
//! [`verify_dir`] reads them from the audit folder.
//!
//! Each problem is a [`Break`] naming the file, the line and what happened:
//! * **edited**: a line does not match its own hash, is not an entry at all, or does not
//!   follow the entry before it (that one was replaced and re-hashed);
//! * **deleted**: entries are missing between two lines;
//! * **reordered**: an entry comes before one it should follow, or appears twice;
//! * **truncated**: a file ends in the middle of a line;
//! * **missing file**: a file of the rotation is gone;
//! * **bad receipt signature**: a receipt does not verify with the station's key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::Serialize;
use ukey_protocol::ReceiptVerifier;

use super::entry::{GENESIS_HASH, ReadLine, decode_line};
use super::{AuditError, AuditEvent, file_index, file_name, list_files};

/// What kind of break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakKind {
    /// A line was changed.
    Edited,
    /// Lines were removed.
    Deleted,
    /// Lines were moved or copied.
    Reordered,
    /// A file ends in a partial line.
    Truncated,
    /// A file of the rotation is missing.
    MissingFile,
    /// A receipt's signature does not verify.
    BadReceiptSignature,
}

impl BreakKind {
    /// The kind as written in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakKind::Edited => "edited",
            BreakKind::Deleted => "deleted",
            BreakKind::Reordered => "reordered",
            BreakKind::Truncated => "truncated",
            BreakKind::MissingFile => "missing file",
            BreakKind::BadReceiptSignature => "bad receipt signature",
        }
    }
}

/// One place where the log is not what the agent wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    /// The file.
    pub file: String,
    /// The line, from 1 (0: the file as a whole).
    pub line: usize,
    /// What happened.
    pub kind: BreakKind,
    /// Details, e.g. which entries are missing.
    pub detail: String,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file,
            self.line,
            self.kind.as_str(),
            self.detail
        )
    }
}

/// The result of a check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Files read.
    pub files: usize,
    /// Entries read (valid or not).
    pub entries: u64,
    /// Receipts whose signature verified.
    pub receipts: u64,
    /// Verified receipts per token serial.
    pub receipts_per_token: BTreeMap<String, u64>,
    /// Every break found, in log order.
    pub breaks: Vec<Break>,
}

impl Report {
    /// Whether the chain is intact and every receipt verified.
    pub fn ok(&self) -> bool {
        self.breaks.is_empty()
    }
}

struct Line {
    file: String,
    number: usize,
    read: Result<ReadLine, String>,
}

/// Checks the files (name and bytes, in any order; they are sorted by index). With
/// `receipts`, every receipt's signature is checked too.
pub fn verify_files(files: &[(String, Vec<u8>)], receipts: Option<&ReceiptVerifier>) -> Report {
    let mut report = Report::default();
    let mut named: Vec<(u32, &String, &Vec<u8>)> = files
        .iter()
        .filter_map(|(name, bytes)| file_index(name).map(|i| (i, name, bytes)))
        .collect();
    named.sort_by_key(|(i, _, _)| *i);
    report.files = named.len();

    // First pass: every line of every file, and the files' gaps.
    let mut lines = Vec::new();
    let mut file_starts = BTreeSet::new();
    let mut after_missing = BTreeSet::new();
    let mut expected_index = 1;
    for (index, name, bytes) in &named {
        if *index != expected_index {
            let missing: Vec<String> = (expected_index..*index).map(file_name).collect();
            report.breaks.push(Break {
                file: (*name).clone(),
                line: 0,
                kind: BreakKind::MissingFile,
                detail: format!("{} missing before this file", missing.join(", ")),
            });
            after_missing.insert(lines.len());
        }
        expected_index = index + 1;
        file_starts.insert(lines.len());
        let mut rest: &[u8] = bytes;
        let mut number = 0;
        while !rest.is_empty() {
            number += 1;
            let Some(end) = rest.iter().position(|b| *b == b'\n') else {
                report.breaks.push(Break {
                    file: (*name).clone(),
                    line: number,
                    kind: BreakKind::Truncated,
                    detail: format!("the file ends in a partial line of {} bytes", rest.len()),
                });
                break;
            };
            lines.push(Line {
                file: (*name).clone(),
                number,
                read: decode_line(&rest[..end]),
            });
            rest = &rest[end + 1..];
        }
    }
    let present: BTreeSet<u64> = lines
        .iter()
        .filter_map(|l| l.read.as_ref().ok().map(|r| r.entry.seq))
        .collect();

    // Second pass: the chain.
    let mut expected_seq = 0u64;
    let mut expected_prev = GENESIS_HASH.to_owned();
    let mut previous_in_order = true;
    let mut seen = BTreeSet::new();
    let mut previous_file: Option<String> = None;
    for (i, line) in lines.iter().enumerate() {
        report.entries += 1;
        let at = |kind, detail: String| Break {
            file: line.file.clone(),
            line: line.number,
            kind,
            detail,
        };
        let read = match &line.read {
            Ok(read) => read,
            Err(detail) => {
                report.breaks.push(at(BreakKind::Edited, detail.clone()));
                previous_in_order = false;
                continue;
            }
        };
        let entry = &read.entry;
        let mut in_order = true;
        if read.stored_hash != read.computed_hash {
            report.breaks.push(at(
                BreakKind::Edited,
                format!("entry {} does not match its hash", entry.seq),
            ));
            in_order = false;
        }
        if !seen.insert(entry.seq) {
            report.breaks.push(at(
                BreakKind::Reordered,
                format!("entry {} appears a second time", entry.seq),
            ));
            previous_in_order = false;
            continue;
        }
        if entry.seq > expected_seq {
            let missing = expected_seq..entry.seq;
            let moved = missing.clone().all(|s| present.contains(&s));
            if moved {
                report.breaks.push(at(
                    BreakKind::Reordered,
                    format!(
                        "entry {} comes before entr{} {}",
                        entry.seq,
                        if missing.end - missing.start == 1 {
                            "y"
                        } else {
                            "ies"
                        },
                        range_text(missing.start, missing.end - 1)
                    ),
                ));
            } else if !after_missing.contains(&i) {
                report.breaks.push(at(
                    BreakKind::Deleted,
                    format!(
                        "entr{} {} missing before entry {}",
                        if missing.end - missing.start == 1 {
                            "y"
                        } else {
                            "ies"
                        },
                        range_text(missing.start, missing.end - 1),
                        entry.seq
                    ),
                ));
            }
            in_order = false;
        } else if entry.seq < expected_seq {
            // Reported where the entries around it came out of place.
            in_order = false;
        } else if in_order && previous_in_order && entry.prev != expected_prev {
            report.breaks.push(at(
                BreakKind::Edited,
                format!(
                    "entry {} does not follow the entry before it (that one was replaced)",
                    entry.seq
                ),
            ));
        }
        if file_starts.contains(&i)
            && let Some(previous) = &previous_file
        {
            match &entry.event {
                AuditEvent::Continued { previous_file } if previous_file == previous => {}
                AuditEvent::Continued { previous_file } if !after_missing.contains(&i) => {
                    report.breaks.push(at(
                        BreakKind::MissingFile,
                        format!("this file continues {previous_file}, which is missing"),
                    ));
                }
                AuditEvent::Continued { .. } => {}
                _ => report.breaks.push(at(
                    BreakKind::Edited,
                    "the first entry of a file does not name the file before it".to_owned(),
                )),
            }
        }
        if file_starts.contains(&i) {
            previous_file = Some(line.file.clone());
        }
        if let AuditEvent::Receipt { receipt } = &entry.event
            && let Some(keys) = receipts
        {
            match receipt.verify(keys) {
                Ok(r) => {
                    report.receipts += 1;
                    *report
                        .receipts_per_token
                        .entry(r.token_serial.to_string())
                        .or_default() += 1;
                }
                Err(e) => report.breaks.push(at(
                    BreakKind::BadReceiptSignature,
                    format!("receipt in entry {}: {e}", entry.seq),
                )),
            }
        }
        expected_seq = expected_seq.max(entry.seq + 1);
        expected_prev = read.stored_hash.clone();
        previous_in_order = in_order;
    }
    report
}

fn range_text(first: u64, last: u64) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}

/// Reads every audit file of `dir` and checks them (see [`verify_files`]).
pub fn verify_dir(dir: &Path, receipts: Option<&ReceiptVerifier>) -> Result<Report, AuditError> {
    let files = read_files(dir)?;
    Ok(verify_files(&files, receipts))
}

/// Every audit file of `dir`, name and bytes, by index.
pub fn read_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, AuditError> {
    list_files(dir)?
        .into_iter()
        .map(|(index, path)| {
            std::fs::read(&path)
                .map(|bytes| (file_name(index), bytes))
                .map_err(|source| AuditError::Io {
                    path,
                    what: "cannot read",
                    source,
                })
        })
        .collect()
}
