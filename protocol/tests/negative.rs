//! One negative vector per validation rule: a valid sample with one field broken must fail
//! with that field's path and that rule's specific problem.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use ukey_protocol::*;

/// A JSON edit: set the value at a JSON pointer, or remove the member.
enum Edit {
    Set(&'static str, Value),
    Remove(&'static str),
}
use Edit::{Remove, Set};

fn apply(mut value: Value, edits: Vec<Edit>) -> Vec<u8> {
    for edit in edits {
        match edit {
            Set(ptr, v) => match value.pointer_mut(ptr) {
                Some(slot) => *slot = v,
                None => {
                    let (parent, key) = ptr.rsplit_once('/').unwrap();
                    let parent = value.pointer_mut(parent).unwrap_or_else(|| panic!("{ptr}"));
                    parent.as_object_mut().unwrap().insert(key.to_owned(), v);
                }
            },
            Remove(ptr) => {
                let (parent, key) = ptr.rsplit_once('/').unwrap();
                let parent = value.pointer_mut(parent).unwrap_or_else(|| panic!("{ptr}"));
                let removed = match parent {
                    Value::Array(items) => Some(items.remove(key.parse().unwrap())),
                    Value::Object(members) => members.remove(key),
                    _ => None,
                };
                assert!(removed.is_some(), "{ptr}");
            }
        }
    }
    serde_json::to_vec(&value).unwrap()
}

fn check<M: Message + std::fmt::Debug>(
    sample: &M,
    cases: Vec<(Vec<Edit>, &str, Problem)>,
) -> usize {
    let base: Value = serde_json::from_slice(&sample.encode().unwrap()).unwrap();
    let n = cases.len();
    for (edits, path, problem) in cases {
        let bytes = apply(base.clone(), edits);
        let err = M::decode(&bytes).expect_err(&format!("{path}: {problem} accepted"));
        assert_eq!(
            err,
            ProtocolError::invalid(path, problem.clone()),
            "wanted {path}: {problem}"
        );
        // The message's Display is `path: reason`.
        assert!(err.to_string().starts_with(&format!("{path}: ")));
    }
    n
}

fn one(ptr: &'static str, v: Value) -> Vec<Edit> {
    vec![Set(ptr, v)]
}

#[test]
fn job_document_rules() {
    let new = sample_job(JobKind::New);
    let long = |n: usize| json!("x".repeat(n));
    let cases = vec![
        (
            one("/job_id", json!("J/1")),
            "job_id",
            Problem::BadCharacter { position: 1 },
        ),
        (one("/station_id", json!("")), "station_id", Problem::Empty),
        (
            one("/order_number", json!("")),
            "order_number",
            Problem::Empty,
        ),
        (
            one("/order_number", json!(" PO-1")),
            "order_number",
            Problem::Untrimmed,
        ),
        (
            one("/order_number", json!("PO\n1")),
            "order_number",
            Problem::ControlCharacter,
        ),
        (
            one("/region", long(65)),
            "region",
            Problem::TooLong { max: 64 },
        ),
        (
            one("/enterprise/name", long(129)),
            "enterprise.name",
            Problem::TooLong { max: 128 },
        ),
        (
            one("/enterprise/credit_code", json!("91110108MA01ABCD1X")),
            "enterprise.credit_code",
            Problem::CheckCharacterMismatch,
        ),
        (
            one("/enterprise/credit_code", json!("91110108MA01ABCD1")),
            "enterprise.credit_code",
            Problem::WrongLength {
                expected: 18,
                got: 17,
            },
        ),
        (
            one("/enterprise/credit_code", json!("91110108MI01ABCD1E")),
            "enterprise.credit_code",
            Problem::BadCharacter { position: 9 },
        ),
        (
            one("/legal_representative/name", json!("")),
            "legal_representative.name",
            Problem::Empty,
        ),
        (
            vec![Remove("/keys/2")],
            "keys",
            Problem::MissingLabel {
                label: KeyLabel::Encryption,
            },
        ),
        (
            one("/keys/2/label", json!("seal-official")),
            "keys[2].label",
            Problem::DuplicateLabel {
                label: KeyLabel::SealOfficial,
            },
        ),
        (
            // keys[1] is p256: a signer ID belongs to sm2 keys only.
            one("/keys/1/signer_id", json!("1234567812345678")),
            "keys[1].signer_id",
            Problem::OnlyForAlgorithm {
                alg: KeyAlgorithm::Sm2,
            },
        ),
        (
            one(
                "/keys",
                json!([
                    {"label": "seal-official", "alg": "p256"}, {"label": "seal-legal", "alg": "p256"},
                    {"label": "encryption", "alg": "p256"}, {"label": "encryption", "alg": "p256"}
                ]),
            ),
            "keys",
            Problem::TooLong { max: 3 },
        ),
        (
            one("/validity_days", json!(0)),
            "validity_days",
            Problem::OutOfRange {
                min: 1,
                max: 3650,
                got: 0,
            },
        ),
        (
            one("/validity_days", json!(3651)),
            "validity_days",
            Problem::OutOfRange {
                min: 1,
                max: 3650,
                got: 3651,
            },
        ),
        (
            one("/kind", json!("renew")),
            "target_token_serial",
            Problem::RequiredFor {
                kind: JobKind::Renew,
            },
        ),
        (
            one("/kind", json!("change")),
            "target_token_serial",
            Problem::RequiredFor {
                kind: JobKind::Change,
            },
        ),
        (
            one("/kind", json!("unlock")),
            "target_token_serial",
            Problem::RequiredFor {
                kind: JobKind::Unlock,
            },
        ),
        (
            one("/kind", json!("replace")),
            "old_token_serial",
            Problem::RequiredFor {
                kind: JobKind::Replace,
            },
        ),
        (
            one("/issued_at", json!("2025-03-01T16:00:00+08:00")),
            "issued_at",
            Problem::NotUtc,
        ),
        (
            one("/expires_at", json!("2025-03-01T08:00:00Z")),
            "expires_at",
            Problem::NotAfter { other: "issued_at" },
        ),
        (
            one("/nonce", json!("abc")),
            "nonce",
            Problem::TooShort { min: 16 },
        ),
    ];
    assert!(check(&new, cases) > 20);

    // Kind-specific fields, on samples of the other kinds.
    let renew = sample_job(JobKind::Renew);
    check(
        &renew,
        vec![
            (
                one("/kind", json!("new")),
                "target_token_serial",
                Problem::NotAllowedFor { kind: JobKind::New },
            ),
            (
                one("/rekey", json!(true)),
                "rekey",
                Problem::NotAllowedFor {
                    kind: JobKind::Renew,
                },
            ),
            (
                one("/target_token_serial", json!("0123456789ABCDEF0")),
                "target_token_serial",
                Problem::TooLong { max: 16 },
            ),
        ],
    );
    let replace = sample_job(JobKind::Replace);
    check(
        &replace,
        vec![(
            one("/kind", json!("new")),
            "old_token_serial",
            Problem::NotAllowedFor { kind: JobKind::New },
        )],
    );
    let unlock = sample_job(JobKind::Unlock);
    check(
        &unlock,
        vec![
            (
                vec![Remove("/so_pin")],
                "so_pin",
                Problem::RequiredFor {
                    kind: JobKind::Unlock,
                },
            ),
            (
                one("/kind", json!("renew")),
                "so_pin",
                Problem::NotAllowedFor {
                    kind: JobKind::Renew,
                },
            ),
            (
                one("/so_pin/enc", json!("BAAA")),
                "so_pin.enc",
                Problem::BadBinary {
                    detail: "not an uncompressed P-256 point (65 bytes, 0x04 first)",
                },
            ),
        ],
    );
    let change = sample_job(JobKind::Change);
    check(
        &change,
        vec![(vec![Remove("/so_pin")], "so_pin", Problem::RequiredForRekey)],
    );
}

#[test]
fn every_algorithm_is_allowed_on_every_label() {
    // The "key spec allowed for a label" rule exists but allows every combination by design
    // (an EC encryption key does key agreement), so it has no negative vector.
    for label in KeyLabel::ALL {
        for alg in [
            KeyAlgorithm::P256,
            KeyAlgorithm::Rsa2048,
            KeyAlgorithm::Rsa3072,
            KeyAlgorithm::Sm2,
        ] {
            assert!(label.allows(alg));
        }
    }
}

#[test]
fn sm2_keys_take_a_bounded_signer_id() {
    let base: Value = serde_json::from_slice(&sample_job(JobKind::New).encode().unwrap()).unwrap();
    let bytes = apply(
        base.clone(),
        vec![
            Set("/keys/0/alg", json!("sm2")),
            Set("/keys/0/signer_id", json!("seal@example.cn")),
            Set("/keys/1/alg", json!("sm2")),
        ],
    );
    let job = JobDocument::decode(&bytes).unwrap();
    assert_eq!(
        job.key_spec(KeyLabel::SealOfficial),
        Some(KeyAlgorithm::Sm2)
    );
    assert_eq!(
        job.signer_id(KeyLabel::SealOfficial).as_str(),
        "seal@example.cn"
    );
    // No signer ID: the GM/T 0009 default.
    assert_eq!(job.signer_id(KeyLabel::SealLegal), SignerId::DEFAULT);
    // The longest allowed ID decodes; the encoder writes it back.
    let longest = "A".repeat(SignerId::MAX_LEN);
    let bytes = apply(
        base,
        vec![
            Set("/keys/0/alg", json!("sm2")),
            Set("/keys/0/signer_id", json!(longest)),
        ],
    );
    let job = JobDocument::decode(&bytes).unwrap();
    assert_eq!(job.signer_id(KeyLabel::SealOfficial).as_str(), longest);
    let again = JobDocument::decode(&job.encode().unwrap()).unwrap();
    assert_eq!(again, job);
}

#[test]
fn malformed_json_is_a_decode_error() {
    let base: Value = serde_json::from_slice(&sample_job(JobKind::New).encode().unwrap()).unwrap();
    for edits in [
        one("/kind", json!("destroy")),
        one("/keys/0/alg", json!("rsa1024")),
        // A signer ID outside its bounds cannot even be held (1-64 printable ASCII).
        vec![
            Set("/keys/0/alg", json!("sm2")),
            Set("/keys/0/signer_id", json!("")),
        ],
        vec![
            Set("/keys/0/alg", json!("sm2")),
            Set("/keys/0/signer_id", json!("1".repeat(65))),
        ],
        vec![
            Set("/keys/0/alg", json!("sm2")),
            Set("/keys/0/signer_id", json!("公章")),
        ],
        one("/validity_days", json!(-1)),
        vec![Remove("/enterprise")],
        one("/issued_at", json!("yesterday")),
    ] {
        let bytes = apply(base.clone(), edits);
        assert!(matches!(
            JobDocument::decode(&bytes),
            Err(ProtocolError::Malformed {
                message: "job document",
                ..
            })
        ));
    }
    let bundle: Value = serde_json::from_slice(&sample_csr_bundle().encode().unwrap()).unwrap();
    let bytes = apply(bundle, one("/requests/0/csr", json!("not base64!")));
    assert!(matches!(
        CsrBundle::decode(&bytes),
        Err(ProtocolError::Malformed { .. })
    ));
}

#[test]
fn step_event_rules() {
    let claim = sample_claim_event();
    check(
        &claim,
        vec![
            (
                one("/seq", json!(0)),
                "seq",
                Problem::OutOfRange {
                    min: 1,
                    max: u64::MAX,
                    got: 0,
                },
            ),
            (
                one("/event_id", json!("-1")),
                "event_id",
                Problem::BadCharacter { position: 0 },
            ),
            (
                one("/state", json!("failed")),
                "error",
                Problem::ErrorPresence {
                    state: "failed",
                    needs: "requires an error",
                },
            ),
            (
                one("/state", json!("rejected")),
                "error",
                Problem::ErrorPresence {
                    state: "rejected",
                    needs: "requires an error",
                },
            ),
            (
                vec![Set("/started_at", json!("2025-03-01T08:05:02Z"))],
                "at",
                Problem::NotAfter {
                    other: "started_at",
                },
            ),
            (
                one("/at", json!("2025-03-01T08:05:01-01:00")),
                "at",
                Problem::NotUtc,
            ),
            (
                vec![Set("/token_serial", json!("a/b"))],
                "token_serial",
                Problem::BadCharacter { position: 1 },
            ),
        ],
    );
    let failed = sample_failed_event();
    check(
        &failed,
        vec![
            (
                one("/state", json!("in-progress")),
                "error",
                Problem::ErrorPresence {
                    state: "in-progress",
                    needs: "must not carry an error",
                },
            ),
            (
                one("/error/code", json!("Bad")),
                "error.code",
                Problem::BadCharacter { position: 0 },
            ),
            (
                one("/error/message", json!("")),
                "error.message",
                Problem::Empty,
            ),
            (
                vec![
                    Set("/state", json!("canceled")),
                    Set("/error/message", json!("")),
                ],
                "error.message",
                Problem::Empty,
            ),
        ],
    );
    // A cancel's reason may ride in the `canceled` event's error, or be left out.
    let mut canceled = failed.clone();
    canceled.state = ExecutionState::Canceled;
    StepEvent::decode(&canceled.encode().unwrap()).unwrap();
    canceled.error = None;
    StepEvent::decode(&canceled.encode().unwrap()).unwrap();
    let bind = sample_bind_event();
    check(
        &bind,
        vec![
            (
                one("/step", json!("claim")),
                "data",
                Problem::DataNotForStep {
                    data: "bind",
                    step: "claim",
                },
            ),
            (
                vec![Remove("/data/bind/certificates/1")],
                "data.bind.certificates",
                Problem::MissingLabel {
                    label: KeyLabel::SealLegal,
                },
            ),
            (
                one("/data/bind/certificates/0/sha256", json!("abcd")),
                "data.bind.certificates[0].sha256",
                Problem::WrongLength {
                    expected: 64,
                    got: 4,
                },
            ),
            (
                one("/data/bind/certificates/0/serial", json!("ABCD")),
                "data.bind.certificates[0].serial",
                Problem::BadCharacter { position: 0 },
            ),
            (
                one("/data/bind/user_pin/ct", json!("AAAA")),
                "data.bind.user_pin.ct",
                Problem::BadBinary {
                    detail: "ciphertext length out of range",
                },
            ),
        ],
    );
    let reset = sample_pin_reset_event();
    check(
        &reset,
        vec![(
            one("/step", json!("bind")),
            "data",
            Problem::DataNotForStep {
                data: "pin_reset",
                step: "bind",
            },
        )],
    );
}

#[test]
fn bundle_rules() {
    let csr = sample_csr_bundle();
    check(
        &csr,
        vec![
            (
                one("/requests/0/current_certificate", json!("MAA=")),
                "requests[0]",
                Problem::ExactlyOneOf {
                    alternatives: "csr, or current_certificate with public_key",
                },
            ),
            (
                one("/requests/1/csr", json!("")),
                "requests[1].csr",
                Problem::Empty,
            ),
            (
                one("/requests/2/label", json!("seal-legal")),
                "requests[2].label",
                Problem::DuplicateLabel {
                    label: KeyLabel::SealLegal,
                },
            ),
            (
                one("/token_serial", json!("")),
                "token_serial",
                Problem::Empty,
            ),
        ],
    );
    let renew = sample_renewal_bundle();
    check(
        &renew,
        vec![(
            vec![Remove("/requests/0/public_key")],
            "requests[0]",
            Problem::ExactlyOneOf {
                alternatives: "csr, or current_certificate with public_key",
            },
        )],
    );
    let issued = sample_certs_issued();
    let nine: Vec<&str> = vec!["MAA="; 9];
    check(
        &issued,
        vec![
            (
                vec![Remove("/outcome/issued/certificates/0")],
                "outcome.issued.certificates",
                Problem::MissingLabel {
                    label: KeyLabel::SealOfficial,
                },
            ),
            (
                one("/outcome/issued/ca_chain", json!(nine)),
                "outcome.issued.ca_chain",
                Problem::TooLong { max: 8 },
            ),
            (
                one(
                    "/outcome/issued/certificates/0/certificate",
                    json!(base64_of(&vec![0u8; 8 * 1024 + 1])),
                ),
                "outcome.issued.certificates[0].certificate",
                Problem::TooLong { max: 8 * 1024 },
            ),
        ],
    );
    let rejected = sample_certs_rejected();
    check(
        &rejected,
        vec![(
            one("/outcome/rejected/reason", json!("")),
            "outcome.rejected.reason",
            Problem::Empty,
        )],
    );
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn small_message_rules() {
    check(
        &sample_ack(),
        vec![
            (
                one("/event_ids", json!([])),
                "event_ids",
                Problem::NoEntries,
            ),
            (
                one("/event_ids", json!(["E-1", "E-1"])),
                "event_ids[1]",
                Problem::Duplicate,
            ),
            (
                one(
                    "/event_ids",
                    json!((0..257).map(|i| format!("E-{i}")).collect::<Vec<_>>()),
                ),
                "event_ids",
                Problem::TooLong { max: 256 },
            ),
        ],
    );
    check(
        &sample_cancel(),
        vec![(one("/reason", json!("")), "reason", Problem::Empty)],
    );
    check(
        &sample_presence(PresenceStatus::Online),
        vec![
            (
                one("/agent_version", json!("")),
                "agent_version",
                Problem::Empty,
            ),
            (
                one("/station_id", json!("a b")),
                "station_id",
                Problem::BadCharacter { position: 1 },
            ),
        ],
    );
    check(
        &sample_inventory(),
        vec![
            (
                one("/slots/1/slot", json!(0)),
                "slots[1].slot",
                Problem::Duplicate,
            ),
            (
                one(
                    "/slots/1/token/certificates/1/label",
                    json!("seal-official"),
                ),
                "slots[1].token.certificates[1].label",
                Problem::DuplicateLabel {
                    label: KeyLabel::SealOfficial,
                },
            ),
            (
                one("/slots/0/token/model", json!("")),
                "slots[0].token.model",
                Problem::Empty,
            ),
            (
                one(
                    "/slots",
                    json!((0..65).map(|i| json!({"slot": i})).collect::<Vec<_>>()),
                ),
                "slots",
                Problem::TooLong { max: 64 },
            ),
        ],
    );
}

#[test]
fn encode_refuses_invalid_messages() {
    let mut event = sample_claim_event();
    event.seq = 0;
    assert_eq!(event.encode().unwrap_err().as_invalid().unwrap().0, "seq");
}
