//! Golden vectors in `tests/vectors/*.json`: each is decoded and checked field by field, and
//! re-encoded byte for byte. Regenerate them (after a deliberate format change) with
//! `cargo test -p ukey-protocol --test vectors -- --ignored regenerate`, then update
//! `docs/PROTOCOL.md` (the `docs` test checks that its examples match).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use secrecy::ExposeSecret;
use time::macros::datetime;
use ukey_protocol::*;

#[test]
#[ignore = "writes tests/vectors; run on purpose after a format change"]
fn regenerate() {
    for (name, bytes) in all_vectors() {
        let mut bytes = bytes;
        bytes.push(b'\n');
        std::fs::write(vectors_dir().join(name), bytes).unwrap();
    }
}

#[test]
fn every_vector_file_is_known() {
    let known: Vec<&str> = all_vectors().iter().map(|(n, _)| *n).collect();
    let mut count = 0;
    for entry in std::fs::read_dir(vectors_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(known.contains(&name.as_str()), "unexpected vector {name}");
        count += 1;
    }
    assert_eq!(count, known.len(), "a vector file is missing");
}

/// Decodes a vector, checks it re-encodes to the same bytes, returns it.
fn decode<M: Message + std::fmt::Debug>(name: &str) -> M {
    let bytes = read_vector(name);
    let message = M::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        String::from_utf8(message.encode().unwrap()).unwrap(),
        String::from_utf8(bytes).unwrap(),
        "{name} does not re-encode byte for byte"
    );
    message
}

fn check_job(name: &str, kind: JobKind) -> JobDocument {
    let envelope: JobEnvelope = decode(name);
    let header = envelope.jws().header();
    assert_eq!(header.alg, SignatureAlgorithm::Es256);
    assert_eq!(header.kid, KEY_ID);
    assert_eq!(header.typ, "ukey-job+jws");
    assert_eq!(envelope.jws().signature().len(), 64);
    let job = envelope.verify(&keyring(), &station(), NOW).unwrap();
    // The crate's encoder reproduces the signed bytes exactly.
    assert_eq!(job.encode().unwrap(), envelope.job_bytes());

    let mut expected = sample_job(kind);
    assert_eq!(job.job_id, expected.job_id);
    assert_eq!(job.kind, kind);
    assert_eq!(job.station_id.as_str(), STATION);
    assert_eq!(job.order_number, "PO-2025-000123");
    assert_eq!(job.region, "110000");
    assert_eq!(job.enterprise.name, "北京示例科技有限公司");
    assert_eq!(job.enterprise.credit_code.as_str(), "91110108MA01ABCD1E");
    assert_eq!(job.legal_representative.name, "张三");
    // Only what goes into the certificates: no address, phone, ID-card number or person
    // other than the legal representative's name.
    let payload = String::from_utf8(envelope.job_bytes().to_vec()).unwrap();
    for absent in [
        "address",
        "landline",
        "id_number",
        "mobile",
        "email",
        "handler",
    ] {
        assert!(!payload.contains(absent), "{name} carries {absent}");
    }
    assert_eq!(
        job.key_spec(KeyLabel::SealOfficial),
        Some(KeyAlgorithm::P256)
    );
    assert_eq!(job.key_spec(KeyLabel::SealLegal), Some(KeyAlgorithm::P256));
    assert_eq!(
        job.key_spec(KeyLabel::Encryption),
        Some(KeyAlgorithm::Rsa2048)
    );
    assert_eq!(job.validity_days, 365);
    assert_eq!(job.delivery, DeliveryMethod::Pickup);
    assert_eq!(job.issued_at, datetime!(2025-03-01 08:00:00 UTC));
    assert_eq!(job.expires_at, datetime!(2025-03-08 08:00:00 UTC));
    assert_eq!(job.nonce.as_str(), format!("n0nce-{kind}-7f3a9c1e"));
    assert_eq!(job.target_token_serial, expected.target_token_serial);
    assert_eq!(job.old_token_serial, expected.old_token_serial);
    assert_eq!(job.rekey, expected.rekey);
    match &job.so_pin {
        Some(sealed) => {
            let pin = sealed
                .unseal_pin(&station_unseal_key(), &job.so_pin_context())
                .unwrap();
            assert_eq!(pin.expose_secret(), SO_PIN);
        }
        None => assert!(expected.so_pin.is_none()),
    }
    // Everything else equal too (the sealed PIN differs per sealing: compared above).
    let mut got = job.clone();
    got.so_pin = None;
    expected.so_pin = None;
    assert_eq!(got, expected);
    job
}

#[test]
fn job_new() {
    let job = check_job("job-new.json", JobKind::New);
    assert!(job.target_token_serial.is_none() && job.so_pin.is_none());
}

#[test]
fn job_replace() {
    let job = check_job("job-replace.json", JobKind::Replace);
    assert_eq!(job.old_token_serial.unwrap().as_str(), "7A3F0C1D2E4B5968");
}

#[test]
fn job_renew() {
    let job = check_job("job-renew.json", JobKind::Renew);
    assert_eq!(
        job.target_token_serial.unwrap().as_str(),
        "5C2D8E1F0A3B4C6D"
    );
}

#[test]
fn job_change_rekey() {
    let job = check_job("job-change-rekey.json", JobKind::Change);
    assert!(job.rekey);
    assert!(job.so_pin.is_some());
}

#[test]
fn job_unlock() {
    let job = check_job("job-unlock.json", JobKind::Unlock);
    assert!(matches!(job.so_pin, Some(SealedSecret::Hpke { .. })));
}

#[test]
fn event_claim() {
    let e: StepEvent = decode("event-claim.json");
    assert_eq!(e.event_id.as_str(), "E-0002");
    assert_eq!(e.job_id.as_str(), "J-20250301-new");
    assert_eq!(e.seq, 2);
    assert_eq!(e.step, Step::Claim);
    assert_eq!(e.state, ExecutionState::InProgress);
    assert_eq!(
        e.token_serial.as_ref().unwrap().as_str(),
        "9E8D7C6B5A493827"
    );
    assert_eq!(e.started_at, Some(datetime!(2025-03-01 08:05:00 UTC)));
    assert_eq!(e.at, datetime!(2025-03-01 08:05:01 UTC));
    assert!(e.error.is_none() && e.data.is_none());
    assert_eq!(e, sample_claim_event());
}

#[test]
fn event_failed() {
    let e: StepEvent = decode("event-failed.json");
    assert_eq!(e.step, Step::VerifyCertificates);
    assert_eq!(e.state, ExecutionState::Failed);
    let err = e.error.as_ref().unwrap();
    assert_eq!(err.code.as_str(), "certificate-key-mismatch");
    assert!(!err.retryable);
    assert_eq!(e.at, datetime!(2025-03-01 08:06:00.25 UTC));
    assert_eq!(e, sample_failed_event());
}

#[test]
fn event_bind() {
    let e: StepEvent = decode("event-bind.json");
    assert_eq!(e.step, Step::Bind);
    assert_eq!(e.seq, 9);
    let Some(StepData::Bind(report)) = &e.data else {
        panic!("no bind report")
    };
    assert_eq!(report.certificates.len(), 3);
    assert_eq!(report.certificates[0].label, KeyLabel::SealOfficial);
    assert_eq!(report.certificates[0].serial, "1f2e3d4c5b6a79800");
    assert_eq!(report.certificates[2].sha256.len(), 64);
    let key = platform_unseal_key();
    let so = report
        .so_pin
        .as_ref()
        .unwrap()
        .unseal_pin(&key, &SealContext::for_job(&e.job_id, SealPurpose::SoPin));
    let user = report
        .user_pin
        .as_ref()
        .unwrap()
        .unseal_pin(&key, &SealContext::for_job(&e.job_id, SealPurpose::UserPin));
    assert_eq!(so.unwrap().expose_secret(), SO_PIN);
    assert_eq!(user.unwrap().expose_secret(), USER_PIN);
}

#[test]
fn event_pin_reset() {
    let e: StepEvent = decode("event-pin-reset.json");
    assert_eq!(e.step, Step::ResetPin);
    assert_eq!(e.state, ExecutionState::Succeeded);
    assert_eq!(e.started_at, None);
    let Some(StepData::PinReset { user_pin }) = &e.data else {
        panic!("no pin reset data")
    };
    let pin = user_pin
        .unseal_pin(
            &platform_unseal_key(),
            &SealContext::for_job(&e.job_id, SealPurpose::UserPin),
        )
        .unwrap();
    assert_eq!(pin.expose_secret(), USER_PIN);
}

#[test]
fn csr_bundles() {
    let b: CsrBundle = decode("csr-bundle.json");
    assert_eq!(b.token_serial.as_str(), "9E8D7C6B5A493827");
    assert_eq!(b.requests[1].label, KeyLabel::SealLegal);
    assert_eq!(b.requests[1].csr.as_ref().unwrap().as_bytes()[4], 2);
    assert_eq!(b, sample_csr_bundle());

    let r: CsrBundle = decode("csr-bundle-renew.json");
    assert!(r.requests.iter().all(|q| q.csr.is_none()));
    assert_eq!(
        r.requests[2].public_key.as_ref().unwrap().as_bytes()[4],
        0x13
    );
    assert_eq!(r, sample_renewal_bundle());
}

/// Verifies a signed vector as the station does, and checks it re-encodes byte for byte.
fn verify_signed<M: PlatformMessage>(name: &str, alg: SignatureAlgorithm) -> M {
    let bytes = read_vector(name);
    let jws = Jws::decode(&bytes, M::NAME, MAX_MESSAGE_BYTES).unwrap();
    assert_eq!(jws.header().alg, alg, "{name}");
    assert_eq!(jws.header().typ, M::TYP, "{name}");
    assert_eq!(
        jws.encode().unwrap(),
        bytes,
        "{name} does not re-encode byte for byte"
    );
    let message: M = verify_platform_message(&bytes, &keyring(), &station())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    // The payload is the message's canonical encoding.
    assert_eq!(message.encode().unwrap(), jws.payload(), "{name}");
    message
}

#[test]
fn cert_responses() {
    let issued: CertResponse = verify_signed("certs-issued.json", SignatureAlgorithm::Es256);
    let CertOutcome::Issued(bundle) = &issued.outcome else {
        panic!("not issued")
    };
    assert_eq!(bundle.certificates.len(), 3);
    assert_eq!(bundle.ca_chain.len(), 2);
    assert_eq!(issued, sample_certs_issued());

    let rejected: CertResponse = verify_signed("certs-rejected.json", SignatureAlgorithm::Ps256);
    let CertOutcome::Rejected(r) = &rejected.outcome else {
        panic!("not rejected")
    };
    assert_eq!(r.code.as_str(), "csr-subject-mismatch");
    assert_eq!(rejected, sample_certs_rejected());
}

#[test]
fn ack_cancel_presence_inventory() {
    let ack: Ack = verify_signed("ack.json", SignatureAlgorithm::Es256);
    assert_eq!(ack.event_ids, vec![event_id(1), event_id(2)]);
    assert_eq!(ack, sample_ack());

    let cancel: Cancel = verify_signed("cancel.json", SignatureAlgorithm::Rs256);
    assert_eq!(cancel.job_id.as_str(), "J-20250301-new");
    assert_eq!(cancel, sample_cancel());

    let online: Presence = decode("presence-online.json");
    let offline: Presence = decode("presence-offline.json");
    assert_eq!(online.status, PresenceStatus::Online);
    assert_eq!(online.seq, 42);
    assert_eq!(online.agent_version, "0.1.0");
    assert!(offline.supersedes(&online));
    assert!(!online.supersedes(&offline));
    assert_eq!(online, sample_presence(PresenceStatus::Online));

    let inv: Inventory = decode("inventory.json");
    assert_eq!(inv.seq, 17);
    assert_eq!(inv.slots.len(), 3);
    let t0 = inv.slots[0].token.as_ref().unwrap();
    assert_eq!(t0.state, TokenState::InProduction);
    assert_eq!(t0.job_id.as_ref().unwrap().as_str(), "J-20250301-new");
    let t1 = inv.slots[1].token.as_ref().unwrap();
    assert_eq!(t1.state, TokenState::Expiring);
    assert_eq!(
        t1.certificates[2].not_after,
        datetime!(2025-03-20 23:59:59 UTC)
    );
    assert!(inv.slots[2].token.is_none());
    assert_eq!(inv, sample_inventory());
}

#[test]
fn unknown_fields_are_ignored_and_newer_versions_refused() {
    let mut value: serde_json::Value =
        serde_json::from_slice(&read_vector("event-claim.json")).unwrap();
    value["future_field"] = serde_json::json!({"x": [1, 2]});
    let bytes = serde_json::to_vec(&value).unwrap();
    assert_eq!(StepEvent::decode(&bytes).unwrap(), sample_claim_event());

    value["v"] = serde_json::json!(2);
    let err = StepEvent::decode(&serde_json::to_vec(&value).unwrap()).unwrap_err();
    assert!(matches!(err, ProtocolError::UnsupportedVersion { ref got, .. } if got == "2"));

    value.as_object_mut().unwrap().remove("v");
    let err = StepEvent::decode(&serde_json::to_vec(&value).unwrap()).unwrap_err();
    assert!(matches!(err, ProtocolError::MissingVersion { .. }));
}

#[test]
fn oversized_payloads_are_refused_before_parsing() {
    // Not even JSON: the size check comes first.
    let big = vec![b'x'; Ack::MAX_BYTES + 1];
    assert_eq!(
        Ack::decode(&big).unwrap_err(),
        ProtocolError::TooLarge {
            message: "ack",
            size: Ack::MAX_BYTES + 1,
            limit: Ack::MAX_BYTES
        }
    );
    let big = vec![b' '; JobEnvelope::MAX_BYTES + 1];
    assert!(matches!(
        JobEnvelope::decode(&big),
        Err(ProtocolError::TooLarge { .. })
    ));
}

#[test]
fn arrays_are_not_messages() {
    assert!(matches!(
        Ack::decode(br#"[1, ["E-1"]]"#),
        Err(ProtocolError::Malformed { .. })
    ));
}

#[test]
fn debug_output_hides_personal_data_and_pins() {
    let job = sample_job(JobKind::Unlock);
    let debug = format!("{job:?}");
    for secret in [
        "110105198001011238",
        "13800138000",
        "13912345678",
        "zhangsan@",
        "62345678",
    ] {
        assert!(!debug.contains(secret), "Debug prints {secret}");
    }
    // The job carries no personal number at all now; the sealed SO PIN stays hidden.
    assert!(debug.contains("<sealed>"));
}
