//! Unit tests of the journal replay: records sealed here with a journal key made for the
//! test, replayed without a journal file, a broker or a token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use time::OffsetDateTime;
use time::macros::datetime;
use ukey_protocol::Message;
use ukey_protocol::event::{ExecutionState, Step};
use ukey_protocol::ids::{JobId, Nonce, TokenSerial};
use ukey_protocol::job::JobDocument;
use ukey_protocol::seal::UnsealKey;
use ukey_protocol::signed::{JobEnvelope, JobSigningKey, sign_job};

use super::{Record, RecordKind, replayed};
use crate::daemon::DaemonError;
use crate::daemon::job_data::Phase;
use crate::job::{Input, JobState};
use crate::steps::Pins;
use crate::trust::JournalKey;

fn journal_key() -> JournalKey {
    use p256::elliptic_curve::Generate;
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let key = p256::SecretKey::generate_from_rng(&mut rand::rng());
    let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    JournalKey::derive(&UnsealKey::from_pkcs8_pem(&pem).unwrap())
}

/// The protocol's sample job of `name` (a golden vector), with its own id and nonce.
fn job(name: &str, job_id: &str) -> JobDocument {
    let text = match name {
        "new" => include_str!("../../../../protocol/tests/vectors/job-new.json"),
        _ => include_str!("../../../../protocol/tests/vectors/job-replace.json"),
    };
    // The vectors are signed envelopes: the job is their payload.
    let envelope = JobEnvelope::decode(text.as_bytes()).unwrap();
    let mut doc = JobDocument::decode(envelope.job_bytes()).unwrap();
    doc.job_id = JobId::new(job_id).unwrap();
    doc.nonce = Nonce::new(format!("nonce-{job_id}-0123456789abcdef")).unwrap();
    doc
}

fn job_record(key: &JournalKey, doc: &JobDocument) -> Record {
    let signer = JobSigningKey::Es256(p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap());
    let bytes = sign_job(doc, &signer, "platform")
        .unwrap()
        .encode()
        .unwrap();
    Record::Job {
        job_id: doc.job_id.clone(),
        envelope: key.seal(doc.job_id.as_str(), &bytes).unwrap(),
        seen_at: Some(CLAIMED_AT),
    }
}

fn input_record(key: &JournalKey, job_id: &JobId, at: OffsetDateTime, input: &Input) -> Record {
    let bytes = serde_json::to_vec(input).unwrap();
    Record::Input {
        job_id: job_id.clone(),
        at,
        input: key
            .seal(&RecordKind::Input.context(job_id), &bytes)
            .unwrap(),
    }
}

fn pins_record(key: &JournalKey, sealed_for: &JobId, job_id: &JobId) -> Record {
    let pins = Pins::generate(6, 16).unwrap();
    Record::Pins {
        job_id: job_id.clone(),
        pins: key
            .seal(
                &RecordKind::Pins.context(sealed_for),
                &pins.to_bytes().unwrap(),
            )
            .unwrap(),
    }
}

const CLAIMED_AT: OffsetDateTime = datetime!(2025-03-02 09:30 UTC);

#[test]
fn a_claimed_job_comes_back_running_with_its_pins_and_its_last_events() {
    let key = journal_key();
    let doc = job("new", "j-new");
    let id = doc.job_id.clone();
    let serial = TokenSerial::new("SERIAL-1").unwrap();
    let records = vec![
        job_record(&key, &doc),
        pins_record(&key, &id, &id),
        input_record(
            &key,
            &id,
            CLAIMED_AT,
            &Input::Claimed {
                serial: Some(serial.clone()),
            },
        ),
    ];
    let r = replayed(records, &key).unwrap();
    let entry = &r.jobs[&id];
    assert_eq!(entry.records, 3);
    assert_eq!(entry.data.phase(), Phase::Claimed);
    assert!(entry.data.pins().is_some());
    assert!(matches!(entry.machine.state(), JobState::Running { .. }));
    assert_eq!(entry.machine.serial(), Some(&serial));
    // The step the claim started, with the claim's time: its end reports that start.
    assert_eq!(entry.step_started, Some((Step::Initialize, CLAIMED_AT)));
    assert!(r.nonces.contains(&doc.nonce));
    assert_eq!(r.accepted_order, vec![id.clone()]);
    // The last record's events, as they were made: at the record's time.
    let events = &r.last_events[&id];
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e.at == CLAIMED_AT && e.job_id == id));
    assert!(events.iter().any(|e| e.state == ExecutionState::InProgress));
}

#[test]
fn replay_makes_the_same_event_ids_every_time() {
    let key = journal_key();
    let doc = job("new", "j-ids");
    let id = doc.job_id.clone();
    let records = vec![
        job_record(&key, &doc),
        input_record(&key, &id, CLAIMED_AT, &Input::Claimed { serial: None }),
    ];
    let ids = |r: &super::Replayed| -> Vec<String> {
        r.last_events[&id]
            .iter()
            .map(|e| e.event_id.to_string())
            .collect()
    };
    let first = replayed(records.clone(), &key).unwrap();
    let again = replayed(records, &key).unwrap();
    assert_eq!(ids(&first), ids(&again));
}

#[test]
fn revocations_summaries_and_order_survive_replay() {
    let key = journal_key();
    let a = job("new", "j-a");
    let b = job("replace", "j-b");
    let done_nonce = Nonce::new("nonce-of-a-finished-job-0123").unwrap();
    let records = vec![
        job_record(&key, &a),
        // The replacement's own `Revoked` record never reached the journal: its lost token
        // stays revoked all the same.
        job_record(&key, &b),
        Record::Revoked {
            serial: TokenSerial::new("LOST-2").unwrap(),
        },
        Record::Done {
            job_id: JobId::new("j-done").unwrap(),
            nonce: done_nonce.clone(),
            expires_at: datetime!(2025-03-08 08:00 UTC),
            keep_until: None,
            issued_at: None,
        },
        // A record of a job nobody knows (its job was compacted away): skipped.
        input_record(
            &key,
            &JobId::new("j-unknown").unwrap(),
            CLAIMED_AT,
            &Input::Claimed { serial: None },
        ),
    ];
    let r = replayed(records, &key).unwrap();
    let old = b
        .old_token_serial
        .as_ref()
        .unwrap()
        .as_str()
        .trim()
        .to_owned();
    assert!(r.revoked.contains(&old), "{:?}", r.revoked);
    assert!(r.revoked.contains("LOST-2"));
    assert_eq!(r.accepted_order, vec![a.job_id.clone(), b.job_id.clone()]);
    assert!(r.finished.contains_key(&JobId::new("j-done").unwrap()));
    for nonce in [&a.nonce, &b.nonce, &done_nonce] {
        assert!(r.nonces.contains(nonce));
    }
    assert_eq!(r.jobs.len(), 2);
    assert!(matches!(
        r.jobs[&a.job_id].machine.state(),
        JobState::Queued
    ));
}

#[test]
fn a_record_sealed_for_another_job_or_with_another_key_stops_the_replay() {
    let key = journal_key();
    let a = job("new", "j-a");
    let b = job("new", "j-b");
    // B's PINs passed off as A's.
    let records = vec![
        job_record(&key, &a),
        job_record(&key, &b),
        pins_record(&key, &b.job_id, &a.job_id),
    ];
    assert!(matches!(
        replayed(records, &key),
        Err(DaemonError::Journal(_))
    ));
    // Another station's journal.
    let records = vec![job_record(&journal_key(), &a)];
    assert!(matches!(
        replayed(records, &key),
        Err(DaemonError::Journal(_))
    ));
}

fn csr_record(key: &JournalKey, job_id: &JobId, serial: &TokenSerial) -> Record {
    let bundle = ukey_protocol::bundle::CsrBundle {
        v: ukey_protocol::V1,
        job_id: job_id.clone(),
        token_serial: serial.clone(),
        requests: Vec::new(),
    };
    Record::Csr {
        job_id: job_id.clone(),
        bundle: key
            .seal(
                &RecordKind::Csr.context(job_id),
                &serde_json::to_vec(&bundle).unwrap(),
            )
            .unwrap(),
    }
}

#[test]
fn replay_rebuilds_the_job_data_phase_by_phase() {
    let key = journal_key();
    let doc = job("new", "j-data");
    let id = doc.job_id.clone();
    let serial = TokenSerial::new("SERIAL-1").unwrap();
    let claimed = input_record(
        &key,
        &id,
        CLAIMED_AT,
        &Input::Claimed {
            serial: Some(serial.clone()),
        },
    );
    let bundle = ukey_protocol::bundle::CertBundle {
        certificates: Vec::new(),
        ca_chain: Vec::new(),
    };
    let issued = input_record(
        &key,
        &id,
        CLAIMED_AT,
        &Input::CertificatesArrived {
            bundle: bundle.clone(),
        },
    );
    let mut records = vec![job_record(&key, &doc)];
    let r = replayed(records.clone(), &key).unwrap();
    assert_eq!(r.jobs[&id].data.phase(), Phase::Queued);

    records.push(pins_record(&key, &id, &id));
    records.push(claimed);
    let r = replayed(records.clone(), &key).unwrap();
    assert_eq!(r.jobs[&id].data.phase(), Phase::Claimed);
    assert!(r.jobs[&id].data.pins().is_some());

    records.push(csr_record(&key, &id, &serial));
    let r = replayed(records.clone(), &key).unwrap();
    let data = &r.jobs[&id].data;
    assert_eq!(data.phase(), Phase::Requested);
    assert_eq!(data.csr().map(|c| &c.token_serial), Some(&serial));
    assert!(data.pins().is_some());

    // The certificates are kept as the response arrived, whatever the machine made of it.
    records.push(issued);
    let r = replayed(records, &key).unwrap();
    let entry = &r.jobs[&id];
    assert_eq!(entry.records, 5);
    match &entry.data {
        crate::daemon::job_data::JobData::Issued {
            pins: Some(_),
            csr,
            certs,
        } => {
            assert_eq!(csr.token_serial, serial);
            assert_eq!(certs, &bundle);
        }
        other => panic!("replayed as {}", other.phase()),
    }
}

#[test]
fn a_claim_without_a_pins_record_replays_as_claimed_without_pins() {
    let key = journal_key();
    let doc = job("new", "j-nopins");
    let id = doc.job_id.clone();
    let records = vec![
        job_record(&key, &doc),
        input_record(
            &key,
            &id,
            CLAIMED_AT,
            &Input::Claimed {
                serial: Some(TokenSerial::new("SERIAL-2").unwrap()),
            },
        ),
    ];
    let r = replayed(records, &key).unwrap();
    let data = &r.jobs[&id].data;
    assert_eq!(data.phase(), Phase::Claimed);
    assert!(data.pins().is_none());
}

#[test]
fn a_csr_bundle_before_any_claim_is_not_applicable_and_the_replay_goes_on() {
    let key = journal_key();
    let doc = job("new", "j-early");
    let id = doc.job_id.clone();
    let serial = TokenSerial::new("SERIAL-3").unwrap();
    let records = vec![
        job_record(&key, &doc),
        csr_record(&key, &id, &serial),
        pins_record(&key, &id, &id),
    ];
    let r = replayed(records, &key).unwrap();
    let entry = &r.jobs[&id];
    assert_eq!(entry.records, 3);
    assert_eq!(entry.data.phase(), Phase::Claimed);
    assert!(entry.data.csr().is_none());
}

#[test]
fn a_job_whose_key_was_erased_is_only_remembered_as_finished() {
    use std::collections::BTreeMap;

    use super::{RecordKeys, replayed_with};

    let journal = journal_key();
    let a = job("new", "j-a");
    let b = job("new", "j-b");
    let (key_a, key_b) = (
        JournalKey::generate().unwrap(),
        JournalKey::generate().unwrap(),
    );
    let claimed = Input::Claimed {
        serial: Some(TokenSerial::new("SERIAL-1").unwrap()),
    };
    let records = vec![
        job_record(&key_a, &a),
        pins_record(&key_a, &a.job_id, &a.job_id),
        input_record(&key_a, &a.job_id, CLAIMED_AT, &claimed),
        job_record(&key_b, &b),
        pins_record(&key_b, &b.job_id, &b.job_id),
        Record::Done {
            job_id: a.job_id.clone(),
            nonce: a.nonce.clone(),
            expires_at: a.expires_at,
            keep_until: None,
            issued_at: Some(a.issued_at),
        },
    ];
    // A finished and its key is gone; B runs and has its key.
    let mut keys = BTreeMap::new();
    keys.insert(b.job_id.clone(), key_b.clone());
    let r = replayed_with(
        records.clone(),
        &RecordKeys {
            journal: &journal,
            jobs: &keys,
        },
    )
    .unwrap();
    assert!(!r.jobs.contains_key(&a.job_id));
    assert!(r.finished.contains_key(&a.job_id));
    assert!(r.nonces.contains(&a.nonce));
    assert!(r.jobs[&b.job_id].data.pins().is_some());
    // B without its key (a key file from elsewhere, or lost) does not open: the replay stops.
    assert!(matches!(
        replayed_with(
            records,
            &RecordKeys {
                journal: &journal,
                jobs: &BTreeMap::new(),
            },
        ),
        Err(DaemonError::Journal(_))
    ));
}
