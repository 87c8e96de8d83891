//! Unit tests of admission: jobs signed here with a key made for the test, decided without a
//! broker or a journal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use ukey_protocol::Message;
use ukey_protocol::ids::{JobId, Nonce, StationId, TokenSerial};
use ukey_protocol::job::{JobDocument, JobKind};
use ukey_protocol::signed::{JobEnvelope, JobKeyring, JobSigningKey, sign_job};

use super::{Admission, Policy, admit};

/// A time inside the sample jobs' validity (issued 2025-03-01, expiring 2025-03-08).
const NOW: OffsetDateTime = datetime!(2025-03-02 12:00 UTC);

fn key(seed: u8) -> JobSigningKey {
    JobSigningKey::Es256(p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap())
}

fn station() -> StationId {
    StationId::new("desk-01").unwrap()
}

fn keyring() -> JobKeyring {
    JobKeyring::single("platform", key(7).verifying_key())
}

/// The default policy: jobs valid for at most 7 days.
fn policy<'a>(keyring: &'a JobKeyring, station: &'a StationId) -> Policy<'a> {
    Policy {
        keyring,
        station,
        max_lifetime: Duration::days(7),
        replay_floor: None,
    }
}

/// The protocol's sample job of `name` (a golden vector), with its own id and nonce.
fn job(name: &str, job_id: &str) -> JobDocument {
    let text = match name {
        "new" => include_str!("../../../../protocol/tests/vectors/job-new.json"),
        "renew" => include_str!("../../../../protocol/tests/vectors/job-renew.json"),
        _ => include_str!("../../../../protocol/tests/vectors/job-replace.json"),
    };
    // The vectors are signed envelopes: the job is their payload.
    let envelope = JobEnvelope::decode(text.as_bytes()).unwrap();
    let mut doc = JobDocument::decode(envelope.job_bytes()).unwrap();
    doc.job_id = JobId::new(job_id).unwrap();
    doc.nonce = Nonce::new(format!("nonce-{job_id}-0123456789abcdef")).unwrap();
    doc
}

fn signed(doc: &JobDocument, by: &JobSigningKey) -> JobEnvelope {
    // Through the wire format, as the daemon receives it.
    let bytes = sign_job(doc, by, "platform").unwrap().encode().unwrap();
    JobEnvelope::decode(&bytes).unwrap()
}

/// Admission with no job known and the nonces in `seen`.
fn decide(envelope: &JobEnvelope, seen: &BTreeSet<Nonce>, now: OffsetDateTime) -> Admission {
    admit(
        envelope,
        |_| None,
        &policy(&keyring(), &station()),
        seen,
        now,
    )
}

fn rejected_with(admission: Admission) -> (String, &'static str) {
    match admission {
        Admission::Reject { job_id, code, .. } => (job_id.to_string(), code.as_str()),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn a_good_job_is_accepted() {
    let doc = job("new", "j-good");
    match decide(&signed(&doc, &key(7)), &BTreeSet::new(), NOW) {
        Admission::Accept(accepted) => assert_eq!(*accepted, doc),
        other => panic!("expected acceptance, got {other:?}"),
    }
}

#[test]
fn a_forged_job_is_rejected_as_a_bad_signature() {
    let doc = job("new", "j-forged");
    let got = rejected_with(decide(&signed(&doc, &key(8)), &BTreeSet::new(), NOW));
    assert_eq!(got, ("j-forged".into(), "bad-signature"));
}

#[test]
fn an_expired_or_not_yet_valid_job_is_rejected() {
    let doc = job("new", "j-time");
    let envelope = signed(&doc, &key(7));
    let after = doc.expires_at + Duration::minutes(10);
    let got = rejected_with(decide(&envelope, &BTreeSet::new(), after));
    assert_eq!(got, ("j-time".into(), "expired"));
    let before = doc.issued_at - Duration::days(1);
    let got = rejected_with(decide(&envelope, &BTreeSet::new(), before));
    assert_eq!(got, ("j-time".into(), "not-yet-valid"));
}

#[test]
fn a_replayed_nonce_is_rejected() {
    let doc = job("new", "j-replay");
    let seen: BTreeSet<Nonce> = [doc.nonce.clone()].into_iter().collect();
    let got = rejected_with(decide(&signed(&doc, &key(7)), &seen, NOW));
    assert_eq!(got, ("j-replay".into(), "replayed-nonce"));
}

#[test]
fn a_job_for_another_station_is_rejected() {
    let mut doc = job("new", "j-foreign");
    doc.station_id = StationId::new("desk-02").unwrap();
    let got = rejected_with(decide(&signed(&doc, &key(7)), &BTreeSet::new(), NOW));
    assert_eq!(got, ("j-foreign".into(), "wrong-station"));
}

#[test]
fn a_redelivered_job_is_a_duplicate_even_with_a_seen_nonce() {
    let doc = job("new", "j-dup");
    let envelope = signed(&doc, &key(7));
    let seen: BTreeSet<Nonce> = [doc.nonce.clone()].into_iter().collect();
    let known = |id: &JobId| (id == &doc.job_id).then_some(&doc.nonce);
    // Recognised by job id before the nonce check, and before the expiry: a finished job
    // redelivered late is still a duplicate, not a new rejection event.
    for now in [NOW, doc.expires_at + Duration::days(1)] {
        match admit(
            &envelope,
            known,
            &policy(&keyring(), &station()),
            &seen,
            now,
        ) {
            Admission::Duplicate(id) => assert_eq!(id, doc.job_id),
            other => panic!("expected a duplicate, got {other:?}"),
        }
    }
}

#[test]
fn another_job_under_a_known_id_is_rejected_when_it_verifies_and_ignored_when_not() {
    let first = job("new", "j-same-id");
    let mut second = job("new", "j-same-id");
    second.nonce = Nonce::new("another-nonce-0123456789abcdef").unwrap();
    let known = |id: &JobId| (id == &first.job_id).then_some(&first.nonce);
    let seen = BTreeSet::new();
    let verified = admit(
        &signed(&second, &key(7)),
        known,
        &policy(&keyring(), &station()),
        &seen,
        NOW,
    );
    assert_eq!(
        rejected_with(verified),
        ("j-same-id".into(), "duplicate-job-id")
    );
    // A forger must not make the real job report a rejection.
    match admit(
        &signed(&second, &key(9)),
        known,
        &policy(&keyring(), &station()),
        &seen,
        NOW,
    ) {
        Admission::ForgedReuse { job_id, .. } => assert_eq!(job_id, first.job_id),
        other => panic!("expected a forged reuse, got {other:?}"),
    }
}

#[test]
fn a_job_naming_a_revoked_token_is_admitted_and_left_to_the_claim_matcher() {
    // Admission does not know the desk: the matcher never gives a revoked token a job, and
    // the job ends when its target-token timer runs out.
    let mut doc = job("renew", "j-revoked-target");
    doc.target_token_serial = Some(TokenSerial::new("7A3F0C1D2E4B5968").unwrap());
    assert_eq!(doc.kind, JobKind::Renew);
    assert!(matches!(
        decide(&signed(&doc, &key(7)), &BTreeSet::new(), NOW),
        Admission::Accept(_)
    ));
}

#[test]
fn a_job_valid_for_longer_than_the_lifetime_cap_is_rejected() {
    let mut doc = job("new", "j-long");
    // The sample is valid for exactly 7 days: the cap itself is allowed.
    assert_eq!(doc.expires_at - doc.issued_at, Duration::days(7));
    assert!(matches!(
        decide(&signed(&doc, &key(7)), &BTreeSet::new(), NOW),
        Admission::Accept(_)
    ));
    doc.expires_at = doc.issued_at + Duration::days(7) + Duration::seconds(1);
    let got = rejected_with(decide(&signed(&doc, &key(7)), &BTreeSet::new(), NOW));
    assert_eq!(got, ("j-long".into(), "lifetime-too-long"));
    // A shorter cap, configured, refuses the 7-day sample too.
    doc.expires_at = doc.issued_at + Duration::days(7);
    let (ring, desk) = (keyring(), station());
    let short = Policy {
        max_lifetime: Duration::days(1),
        ..policy(&ring, &desk)
    };
    match admit(
        &signed(&doc, &key(7)),
        |_| None,
        &short,
        &BTreeSet::new(),
        NOW,
    ) {
        Admission::Reject { code, reason, .. } => {
            assert_eq!(code.as_str(), "lifetime-too-long");
            assert!(reason.contains("at most"), "{reason}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    // A forged long-lived job is still a bad signature (the signature is checked first).
    doc.expires_at = doc.issued_at + Duration::days(30);
    let got = rejected_with(decide(&signed(&doc, &key(8)), &BTreeSet::new(), NOW));
    assert_eq!(got, ("j-long".into(), "bad-signature"));
}

#[test]
fn a_job_signed_with_any_trusted_key_id_is_accepted() {
    // Rotation: the platform signs with a new key under a new id while the old one's jobs
    // are still valid; the station trusts both.
    let mut ring = keyring();
    ring.insert("platform-2", key(9).verifying_key());
    let doc = job("new", "j-rotated");
    let bytes = sign_job(&doc, &key(9), "platform-2")
        .unwrap()
        .encode()
        .unwrap();
    let rotated = JobEnvelope::decode(&bytes).unwrap();
    for envelope in [signed(&doc, &key(7)), rotated.clone()] {
        assert!(matches!(
            admit(
                &envelope,
                |_| None,
                &policy(&ring, &station()),
                &BTreeSet::new(),
                NOW
            ),
            Admission::Accept(_)
        ));
    }
    // The new key under the old id does not verify.
    let bytes = sign_job(&doc, &key(9), "platform")
        .unwrap()
        .encode()
        .unwrap();
    let got = rejected_with(admit(
        &JobEnvelope::decode(&bytes).unwrap(),
        |_| None,
        &policy(&ring, &station()),
        &BTreeSet::new(),
        NOW,
    ));
    assert_eq!(got, ("j-rotated".into(), "bad-signature"));
}

/// The station's clock set back: a job it finished and then forgot (its memory ran out by
/// the clock of that time) verifies again by the wrong clock. The replay floor, raised when
/// the job was forgotten, refuses it whatever the clock says; a job issued later passes.
#[test]
fn a_clock_set_back_past_a_forgotten_job_does_not_let_it_run_again() {
    let old = job("new", "j-old");
    let envelope = signed(&old, &key(7));
    // The clock set back to a time inside the old job's validity.
    let wrong_now = NOW;
    let (ring, desk) = (keyring(), station());
    let forgetful = policy(&ring, &desk);
    assert!(
        matches!(
            admit(&envelope, |_| None, &forgetful, &BTreeSet::new(), wrong_now),
            Admission::Accept(_)
        ),
        "without the floor the replay would run"
    );
    let guarded = Policy {
        replay_floor: Some(old.issued_at),
        ..policy(&ring, &desk)
    };
    let got = rejected_with(admit(
        &envelope,
        |_| None,
        &guarded,
        &BTreeSet::new(),
        wrong_now,
    ));
    assert_eq!(got, ("j-old".into(), "replayed-nonce"));

    let mut fresh = job("new", "j-fresh");
    fresh.issued_at = old.issued_at + Duration::seconds(1);
    match admit(
        &signed(&fresh, &key(7)),
        |_| None,
        &guarded,
        &BTreeSet::new(),
        wrong_now,
    ) {
        Admission::Accept(accepted) => assert_eq!(*accepted, fresh),
        other => panic!("a job issued after the floor is accepted, got {other:?}"),
    }
}
