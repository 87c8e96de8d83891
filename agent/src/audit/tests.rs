#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::os::unix::fs::PermissionsExt;

use time::macros::datetime;
use ukey_protocol::{
    ErrorCode, JobId, JobKind, KeyAlgorithm, KeyAttributes, KeyLabel, KeyOrigin, ReceiptSigner,
    ReceiptVerifier, StationId, Step, TokenSerial, UnsealKey,
};

use super::verify::{read_files, verify_files};
use super::*;

fn station_key() -> UnsealKey {
    UnsealKey::P256(p256::SecretKey::from_slice(&[0x22; 32]).unwrap())
}

fn verifier() -> ReceiptVerifier {
    ReceiptVerifier::new(station_key().recipient()).unwrap()
}

fn receipt(serial: &str) -> AuditEvent {
    let t = datetime!(2026-12-07 02:00:00 UTC);
    let mut b = ReceiptBuilder::new(
        StationId::new("desk-01").unwrap(),
        JobId::new(format!("J-{serial}")).unwrap(),
        JobKind::New,
        TokenSerial::new(serial).unwrap(),
        "sim-ukey",
        Some(1),
        Some("staff-7"),
    );
    b.step_started(Step::Initialize, t);
    b.step_started(Step::GenerateKeys, t + time::Duration::seconds(1));
    b.key(
        KeyLabel::SealOfficial,
        KeyAlgorithm::P256,
        KeyOrigin::Generated,
        KeyAttributes {
            token: true,
            private: true,
            sensitive: true,
            local: true,
            always_sensitive: true,
            never_extractable: true,
            extractable: false,
        },
    );
    b.self_test(true, None);
    let signed = b
        .finish_signed(
            None,
            t + time::Duration::seconds(5),
            &ReceiptSigner::new(&station_key()).unwrap(),
        )
        .unwrap();
    AuditEvent::Receipt { receipt: signed }
}

fn wiped(i: u32) -> AuditEvent {
    AuditEvent::Wiped {
        token: TokenSerial::new(format!("T{i:04}")).unwrap(),
        job: None,
        reason: format!("blank token initialized, round {i}"),
    }
}

/// A log of `n` entries in `dir` (one receipt among them), rotated at `max` bytes.
fn make_log(dir: &std::path::Path, n: u32, max: u64) {
    let mut log = AuditLog::open(dir, max).unwrap();
    log.record(receipt("UK0001")).unwrap();
    for i in 1..n {
        log.record(wiped(i)).unwrap();
    }
}

fn check(dir: &std::path::Path) -> Report {
    verify_files(&read_files(dir).unwrap(), Some(&verifier()))
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &std::path::Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn only_break(report: &Report) -> &Break {
    assert_eq!(report.breaks.len(), 1, "{:#?}", report.breaks);
    &report.breaks[0]
}

#[test]
fn intact_log_verifies_and_counts_receipts() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 10, DEFAULT_MAX_FILE_BYTES);
    let report = check(dir.path());
    assert!(report.ok(), "{:#?}", report.breaks);
    assert_eq!(report.entries, 10);
    assert_eq!(report.receipts, 1);
    assert_eq!(report.receipts_per_token.get("UK0001"), Some(&1));
    // Reopening continues the chain.
    let mut log = AuditLog::open(dir.path(), DEFAULT_MAX_FILE_BYTES).unwrap();
    assert_eq!(log.next_seq(), 10);
    log.record(receipt("UK0002")).unwrap();
    let report = check(dir.path());
    assert!(report.ok(), "{:#?}", report.breaks);
    assert_eq!(report.receipts, 2);
}

#[test]
fn files_and_folder_are_private_and_one_writer_only() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let log = AuditLog::open(&audit, DEFAULT_MAX_FILE_BYTES).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&audit), 0o700);
    assert_eq!(mode(&audit.join(file_name(1))), 0o600);
    assert!(matches!(
        AuditLog::open(&audit, DEFAULT_MAX_FILE_BYTES),
        Err(AuditError::Locked { .. })
    ));
    drop(log);
    AuditLog::open(&audit, DEFAULT_MAX_FILE_BYTES).unwrap();
}

#[test]
fn rotation_chains_across_files() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 1000, MIN_MAX_FILE_BYTES);
    let files = list_files(dir.path()).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    for (index, path) in &files {
        assert!(std::fs::metadata(path).unwrap().len() <= MIN_MAX_FILE_BYTES);
        if *index > 1 {
            let first = entry::decode_line(lines(path)[0].as_bytes()).unwrap();
            assert_eq!(
                first.entry.event,
                AuditEvent::Continued {
                    previous_file: file_name(index - 1)
                }
            );
        }
    }
    let report = check(dir.path());
    assert!(report.ok(), "{:#?}", report.breaks);
    assert_eq!(report.files, files.len());
}

#[test]
fn an_edited_entry_is_found() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 10, DEFAULT_MAX_FILE_BYTES);
    let path = dir.path().join(file_name(1));
    let mut l = lines(&path);
    l[4] = l[4].replace("round 4", "round 9");
    write_lines(&path, &l);
    let b = only_break(&check(dir.path())).clone();
    assert_eq!(
        (b.kind, b.line, b.file.as_str()),
        (BreakKind::Edited, 5, "audit-000001.jsonl")
    );
    assert!(b.detail.contains("does not match its hash"), "{b}");
}

#[test]
fn an_edited_and_rehashed_entry_is_found_at_its_successor() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 10, DEFAULT_MAX_FILE_BYTES);
    let path = dir.path().join(file_name(1));
    let mut l = lines(&path);
    let mut read = entry::decode_line(l[4].as_bytes()).unwrap();
    read.entry.event = wiped(99);
    let (line, _) = entry::encode_line(&read.entry).unwrap();
    l[4] = String::from_utf8(line).unwrap().trim_end().to_owned();
    write_lines(&path, &l);
    let b = only_break(&check(dir.path())).clone();
    assert_eq!((b.kind, b.line), (BreakKind::Edited, 6));
    assert!(b.detail.contains("does not follow"), "{b}");
}

#[test]
fn a_deleted_entry_is_found() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 10, DEFAULT_MAX_FILE_BYTES);
    let path = dir.path().join(file_name(1));
    let mut l = lines(&path);
    l.remove(3);
    write_lines(&path, &l);
    let b = only_break(&check(dir.path())).clone();
    assert_eq!((b.kind, b.line), (BreakKind::Deleted, 4));
    assert!(b.detail.contains("entry 3 missing"), "{b}");
}

#[test]
fn reordered_entries_are_found() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 10, DEFAULT_MAX_FILE_BYTES);
    let path = dir.path().join(file_name(1));
    let mut l = lines(&path);
    l.swap(2, 3);
    write_lines(&path, &l);
    let b = only_break(&check(dir.path())).clone();
    assert_eq!((b.kind, b.line), (BreakKind::Reordered, 3));
    assert!(b.detail.contains("entry 3 comes before entry 2"), "{b}");

    // A copied line is found too.
    let mut l = lines(&path);
    l.swap(2, 3);
    let copy = l[2].clone();
    l.push(copy);
    write_lines(&path, &l);
    let b = only_break(&check(dir.path())).clone();
    assert_eq!((b.kind, b.line), (BreakKind::Reordered, 11));
}

#[test]
fn a_truncated_file_is_found_and_a_torn_tail_is_repaired_on_open() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 5, DEFAULT_MAX_FILE_BYTES);
    let path = dir.path().join(file_name(1));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 20]).unwrap();
    let b = only_break(&check(dir.path())).clone();
    assert_eq!((b.kind, b.line), (BreakKind::Truncated, 5));

    // The agent, on start, cuts the partial line and says so in the log.
    let mut log = AuditLog::open(dir.path(), DEFAULT_MAX_FILE_BYTES).unwrap();
    log.record(wiped(7)).unwrap();
    let report = check(dir.path());
    assert!(report.ok(), "{:#?}", report.breaks);
    let last = lines(&path);
    assert!(last[4].contains("torn-tail-removed"), "{}", last[4]);
}

#[test]
fn a_changed_receipt_signature_is_found() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 3, DEFAULT_MAX_FILE_BYTES);
    let path = dir.path().join(file_name(1));
    let mut l = lines(&path);
    // Re-sign the receipt with another key and re-hash the entry and the chain after it, as
    // a forger who knows the hash scheme would: only the signature gives it away.
    let mut read = entry::decode_line(l[0].as_bytes()).unwrap();
    let AuditEvent::Receipt { receipt } = &read.entry.event else {
        panic!()
    };
    let other = UnsealKey::P256(p256::SecretKey::from_slice(&[0x55; 32]).unwrap());
    let mut forged = receipt.receipt_unverified().unwrap();
    forged.token_model = "forged".to_owned();
    let forged =
        ukey_protocol::SignedReceipt::sign(&forged, &ReceiptSigner::new(&other).unwrap()).unwrap();
    read.entry.event = AuditEvent::Receipt { receipt: forged };
    let mut prev = GENESIS_HASH.to_owned();
    for (i, line) in l.iter_mut().enumerate() {
        let mut entry = if i == 0 {
            read.entry.clone()
        } else {
            entry::decode_line(line.as_bytes()).unwrap().entry
        };
        entry.prev = prev;
        let (text, hash) = entry::encode_line(&entry).unwrap();
        *line = String::from_utf8(text).unwrap().trim_end().to_owned();
        prev = hash;
    }
    write_lines(&path, &l);
    let b = only_break(&check(dir.path())).clone();
    assert_eq!((b.kind, b.line), (BreakKind::BadReceiptSignature, 1));
    // Without the station key the chain alone looks whole: the signature is what binds it.
    assert!(verify_files(&read_files(dir.path()).unwrap(), None).ok());
}

#[test]
fn a_removed_file_of_the_rotation_is_found() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 1000, MIN_MAX_FILE_BYTES);
    assert!(list_files(dir.path()).unwrap().len() >= 3);
    std::fs::remove_file(dir.path().join(file_name(2))).unwrap();
    let b = only_break(&check(dir.path())).clone();
    assert_eq!(
        (b.kind, b.line, b.file.as_str()),
        (BreakKind::MissingFile, 0, "audit-000003.jsonl")
    );
    assert!(b.detail.contains("audit-000002.jsonl"), "{b}");

    // And the first file.
    std::fs::remove_file(dir.path().join(file_name(1))).unwrap();
    let report = check(dir.path());
    assert!(
        report
            .breaks
            .iter()
            .any(|b| b.kind == BreakKind::MissingFile && b.detail.contains("audit-000001.jsonl")),
        "{:#?}",
        report.breaks
    );
}

#[test]
fn entries_never_hold_personal_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(dir.path(), DEFAULT_MAX_FILE_BYTES).unwrap();
    let id_card = "11010519491231002X";
    let mobile = "13800138000";
    log.record(AuditEvent::JobRefused {
        job: None,
        reason: format!("handler {id_card} phone {mobile} refused"),
    })
    .unwrap();
    log.record(AuditEvent::CertificateRefused {
        job: JobId::new("J-1").unwrap(),
        token: None,
        label: Some(KeyLabel::SealLegal),
        reason: format!("subject names {mobile}"),
    })
    .unwrap();
    log.record(AuditEvent::OperatorSignedIn {
        operator: format!("op {id_card}"),
    })
    .unwrap();
    log.record(receipt("UK0003")).unwrap();
    let text = std::fs::read_to_string(dir.path().join(file_name(1))).unwrap();
    assert!(
        !text.contains(id_card) && !text.contains("11010519491231002"),
        "{text}"
    );
    assert!(!text.contains(mobile), "{text}");
    assert!(text.contains("[redacted]"));
    assert!(!text.to_lowercase().contains("pin\":"), "{text}");
    assert!(check(dir.path()).ok());
}

#[test]
fn redact_keeps_short_numbers() {
    assert_eq!(redact("slot 3, CKR 0x000000A0"), "slot 3, CKR 0x000000A0");
    assert_eq!(redact("id 11010519491231002x end"), "id [redacted] end");
    assert_eq!(redact("a\nb"), "a b");
}

#[test]
fn the_builder_records_steps_and_a_failure() {
    let t = datetime!(2026-12-07 02:00:00 UTC);
    let mut b = ReceiptBuilder::new(
        StationId::new("desk-01").unwrap(),
        JobId::new("J-9").unwrap(),
        JobKind::Renew,
        TokenSerial::new("UK9").unwrap(),
        "m",
        None,
        None,
    );
    b.step_started(Step::ReadKeys, t);
    b.step_ended(true, t + time::Duration::seconds(1));
    b.step_started(Step::Install, t + time::Duration::seconds(2));
    let r = b.finish(
        Some((Step::Install, ErrorCode::new("token-removed").unwrap())),
        t + time::Duration::seconds(3),
    );
    assert_eq!(r.steps.len(), 2);
    assert!(r.steps[0].ok && !r.steps[1].ok);
    assert_eq!(
        r.outcome,
        ukey_protocol::ReceiptOutcome::Failed {
            step: Step::Install,
            code: ErrorCode::new("token-removed").unwrap()
        }
    );
    assert_eq!(r.agent_version, env!("CARGO_PKG_VERSION"));
    ukey_protocol::Message::validate(&r).unwrap();
}
