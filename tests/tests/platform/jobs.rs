//! The simulated platform's jobs, events, acks and sealed PINs over a real Mosquitto: a test
//! station verifies dispatched jobs with the trust files the platform wrote, sends step events
//! and bind reports, and checks what the platform acknowledged, counted and unsealed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::platform_station;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use platform_station::{Station, WAIT, platform};
use secrecy::ExposeSecret;
use time::OffsetDateTime;
use ukey_platform_sim::{
    JobDraft, KeyOptions, KeySource, Misbehaviour, PlatformError, PlatformKeys, Times,
};
use ukey_protocol::{
    BindReport, CertFingerprint, ExecutionState, Inventory, JobKind, KeyLabel, Presence,
    PresenceStatus, ProtocolError, SealContext, SealPurpose, SlotInfo, Step, StepData, StepError,
    TokenInfo, TokenSerial, TokenState, V1, check_nonce, seal,
};

#[tokio::test]
async fn dispatched_jobs_verify_at_the_station_with_the_written_trust() {
    let broker = ukey_tests::Mosquitto::start();
    let platform = platform(&broker, KeyOptions::default()).await;
    let mut station = Station::connect(&broker, &platform).await;
    let old = TokenSerial::new("LOST0001").unwrap();
    let drafts = [
        JobDraft::new(JobKind::New, &station.id).unwrap(),
        JobDraft::new(JobKind::Replace, &station.id)
            .unwrap()
            .with_old_token(old.clone()),
        JobDraft::new(JobKind::Renew, &station.id)
            .unwrap()
            .with_target(old.clone()),
        JobDraft::new(JobKind::Change, &station.id)
            .unwrap()
            .with_target(old.clone()),
    ];
    let mut nonces = BTreeSet::new();
    for draft in &drafts {
        let job_id = platform.dispatch_draft(draft).await.unwrap();
        let job = station.next_verified_job().await;
        assert_eq!(job.job_id, job_id);
        assert_eq!(job.kind, draft.kind);
        assert_eq!(job.station_id, station.id);
        check_nonce(&job, &nonces).unwrap();
        nonces.insert(job.nonce.clone());
        // Made-up but valid order data (decoding validated checksums already).
        assert!(
            job.enterprise.name.ends_with("有限公司"),
            "{}",
            job.enterprise.name
        );
        assert_eq!(job.enterprise.credit_code.as_str().len(), 18);
        // The order's people stay with the platform: the job names the representative only.
        assert_eq!(
            job.legal_representative.name,
            draft.order.legal_representative.name
        );
        let sent = platform.job_record(&job_id).unwrap().envelopes_sent()[0].clone();
        let payload = String::from_utf8(sent.job_bytes().to_vec()).unwrap();
        for absent in ["id_number", "mobile", "handler", "landline", "address"] {
            assert!(!payload.contains(absent), "the job carries {absent}");
        }
        assert!(job.issued_at <= OffsetDateTime::now_utc());
        assert!(job.expires_at > OffsetDateTime::now_utc() + time::Duration::minutes(50));
        let record = platform.job_record(&job_id).unwrap();
        assert_eq!(record.document(), Some(&job));
        assert_eq!(record.envelopes_sent().len(), 1);
    }
    assert_eq!(nonces.len(), 4);
    assert_eq!(platform.snapshot().dispatched().len(), 4);
}

#[tokio::test]
async fn forged_and_duplicated_jobs_are_what_they_say() {
    let broker = ukey_tests::Mosquitto::start();
    let platform = platform(&broker, KeyOptions::default()).await;
    let mut station = Station::connect(&broker, &platform).await;

    platform.misbehave(Misbehaviour::ForgedSignature, Times::Once);
    let forged_id = platform
        .dispatch_draft(&JobDraft::new(JobKind::New, &station.id).unwrap())
        .await
        .unwrap();
    let forged = station.next_job().await;
    assert_eq!(
        forged.jws().header().kid,
        station.trust.job_key_id,
        "same key id"
    );
    let err = forged
        .verify(&station.keyring, &station.id, OffsetDateTime::now_utc())
        .unwrap_err();
    assert!(matches!(err, ProtocolError::BadSignature { .. }), "{err}");
    assert!(platform.job_record(&forged_id).is_some());

    platform.misbehave(Misbehaviour::DuplicateJob, Times::Once);
    let dup_id = platform
        .dispatch_draft(&JobDraft::new(JobKind::New, &station.id).unwrap())
        .await
        .unwrap();
    let a = station.next_job().await;
    let b = station.next_job().await;
    assert_eq!(a, b);
    let job = a
        .verify(&station.keyring, &station.id, OffsetDateTime::now_utc())
        .unwrap();
    assert_eq!(job.job_id, dup_id);
    assert_eq!(
        platform.job_record(&dup_id).unwrap().envelopes_sent().len(),
        2
    );

    // Both were once: the next job is single and genuine.
    let id = platform
        .dispatch_draft(&JobDraft::new(JobKind::New, &station.id).unwrap())
        .await
        .unwrap();
    assert_eq!(station.next_verified_job().await.job_id, id);
    assert_eq!(platform.job_record(&id).unwrap().envelopes_sent().len(), 1);
}

#[tokio::test]
async fn events_are_acknowledged_and_counted_once() {
    let broker = ukey_tests::Mosquitto::start();
    let platform = platform(&broker, KeyOptions::default()).await;
    let mut station = Station::connect(&broker, &platform).await;
    let job_id = platform
        .dispatch_draft(&JobDraft::new(JobKind::New, &station.id).unwrap())
        .await
        .unwrap();
    let serial = TokenSerial::new("SIM1000").unwrap();
    let queued = station.event(&job_id, Step::Receive, ExecutionState::Queued, None, None);
    let claim = station.event(
        &job_id,
        Step::Claim,
        ExecutionState::InProgress,
        Some(&serial),
        None,
    );
    let init = station.event(
        &job_id,
        Step::Initialize,
        ExecutionState::InProgress,
        Some(&serial),
        None,
    );
    // Out of order and with duplicates, as after a reconnect.
    for event in [&queued, &init, &claim, &queued, &init] {
        station.send_event(event).await;
    }
    let mut acked = Vec::new();
    for _ in 0..5 {
        acked.extend(station.next_ack().await);
    }
    acked.sort();
    let mut expected = vec![
        queued.event_id.clone(),
        queued.event_id.clone(),
        claim.event_id.clone(),
        init.event_id.clone(),
        init.event_id.clone(),
    ];
    expected.sort();
    assert_eq!(acked, expected, "every copy is acknowledged");

    let record = platform
        .wait_for(&job_id, |j| j.events().len() == 3, WAIT)
        .await
        .unwrap();
    let seqs: Vec<u64> = record.events().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3], "ordered by seq");
    assert_eq!(record.duplicate_events(), 2);
    for (event, copies) in [(&queued, 1), (&claim, 0), (&init, 1)] {
        assert_eq!(record.duplicates_of(&event.event_id), copies, "{event:?}");
    }
    assert_eq!(record.token_serial(), Some(&serial));
    assert!(record.problems().is_empty(), "{:?}", record.problems());
    assert_eq!(record.state(), Some(ExecutionState::InProgress));
    platform
        .wait_for_state(&job_id, ExecutionState::InProgress, WAIT)
        .await
        .unwrap();

    // A failed job: waiting for success fails at once, naming the failure.
    let mut failed = station.event(
        &job_id,
        Step::GenerateKeys,
        ExecutionState::Failed,
        Some(&serial),
        None,
    );
    failed.error = Some(StepError {
        code: ukey_protocol::ErrorCode::new("attribute-check").unwrap(),
        message: "CKA_SENSITIVE is false".to_owned(),
        retryable: false,
    });
    station.send_event(&failed).await;
    let err = platform
        .wait_for_state(&job_id, ExecutionState::Succeeded, WAIT)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PlatformError::JobEnded {
                state: ExecutionState::Failed,
                step: Step::GenerateKeys,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("attribute-check"), "{err}");
}

#[tokio::test]
async fn a_state_change_the_protocol_forbids_is_recorded_as_a_problem() {
    let broker = ukey_tests::Mosquitto::start();
    let platform = platform(&broker, KeyOptions::default()).await;
    let mut station = Station::connect(&broker, &platform).await;
    let job_id = platform
        .dispatch_draft(&JobDraft::new(JobKind::New, &station.id).unwrap())
        .await
        .unwrap();
    // The first event claims to be in progress, not queued.
    let event = station.event(&job_id, Step::Claim, ExecutionState::InProgress, None, None);
    station.send_event(&event).await;
    let record = platform
        .wait_for(&job_id, |j| !j.events().is_empty(), WAIT)
        .await
        .unwrap();
    assert_eq!(record.problems().len(), 1, "{:?}", record.problems());
    assert!(record.problems()[0].contains("first event"));
}

#[tokio::test]
async fn silence_acks_withholds_exactly_one_ack() {
    let broker = ukey_tests::Mosquitto::start();
    let platform = platform(&broker, KeyOptions::default()).await;
    let mut station = Station::connect(&broker, &platform).await;
    let job_id = platform
        .dispatch_draft(&JobDraft::new(JobKind::New, &station.id).unwrap())
        .await
        .unwrap();
    platform.misbehave(Misbehaviour::SilenceAcks, Times::Once);
    let first = station.event(&job_id, Step::Receive, ExecutionState::Queued, None, None);
    let second = station.event(&job_id, Step::Claim, ExecutionState::InProgress, None, None);
    station.send_event(&first).await;
    station.send_event(&second).await;
    // Only the second is acknowledged although both are recorded.
    assert_eq!(station.next_ack().await, vec![second.event_id.clone()]);
    let record = platform
        .wait_for(&job_id, |j| j.events().len() == 2, WAIT)
        .await
        .unwrap();
    assert_eq!(record.duplicate_events(), 0);
    // The station re-sends the unacknowledged one: acknowledged now, counted as a duplicate.
    station.send_event(&first).await;
    assert_eq!(station.next_ack().await, vec![first.event_id.clone()]);
    let record = platform
        .wait_for(&job_id, |j| j.duplicate_events() == 1, WAIT)
        .await
        .unwrap();
    assert_eq!(record.events().len(), 2);
    assert_eq!(platform.snapshot().acks_sent(), 2);
}

#[tokio::test]
async fn bind_report_pins_are_unsealed_and_unlock_jobs_carry_the_so_pin() {
    let broker = ukey_tests::Mosquitto::start();
    let platform = platform(&broker, KeyOptions::default()).await;
    let mut station = Station::connect(&broker, &platform).await;
    let job_id = platform
        .dispatch_draft(&JobDraft::new(JobKind::New, &station.id).unwrap())
        .await
        .unwrap();
    station.next_verified_job().await;
    let serial = TokenSerial::new("SIM2000").unwrap();
    let (so_pin, user_pin) = ("87654321-so", "123456");
    let sealed = |pin: &str, purpose| {
        seal(
            &station.platform_recipient,
            &SealContext::for_job(&job_id, purpose),
            pin.as_bytes(),
        )
        .unwrap()
    };
    let report = BindReport {
        certificates: KeyLabel::ALL
            .into_iter()
            .map(|label| CertFingerprint {
                label,
                serial: "0a1b".to_owned(),
                sha256: "ab".repeat(32),
            })
            .collect(),
        so_pin: Some(sealed(so_pin, SealPurpose::SoPin)),
        user_pin: Some(sealed(user_pin, SealPurpose::UserPin)),
    };
    for (step, state) in [
        (Step::Receive, ExecutionState::Queued),
        (Step::Claim, ExecutionState::InProgress),
    ] {
        let e = station.event(&job_id, step, state, Some(&serial), None);
        station.send_event(&e).await;
    }
    let bind = station.event(
        &job_id,
        Step::Bind,
        ExecutionState::InProgress,
        Some(&serial),
        Some(StepData::Bind(report.clone())),
    );
    station.send_event(&bind).await;
    let token = platform
        .wait_until("the bind report", WAIT, |r| r.token(&serial).cloned())
        .await
        .unwrap();
    assert_eq!(token.so_pin().unwrap().expose_secret(), so_pin);
    assert_eq!(token.user_pin().unwrap().expose_secret(), user_pin);
    assert_eq!(
        platform.user_pin(&serial).unwrap().expose_secret(),
        user_pin
    );
    assert_eq!(token.certificates(), report.certificates.as_slice());
    assert_eq!(token.job_id(), &job_id);
    assert!(!format!("{token:?}").contains(so_pin), "Debug hides PINs");
    let record = platform.job_record(&job_id).unwrap();
    assert!(record.problems().is_empty(), "{:?}", record.problems());
    assert_eq!(
        record.bound_certificates().unwrap(),
        report.certificates.as_slice()
    );

    // An unlock job for that token carries its SO PIN, sealed to the station.
    let draft = JobDraft::new(JobKind::Unlock, &station.id)
        .unwrap()
        .with_target(serial.clone());
    let unlock_id = platform.dispatch_draft(&draft).await.unwrap();
    let unlock = station.next_verified_job().await;
    assert_eq!(unlock.job_id, unlock_id);
    let pin = unlock
        .so_pin
        .as_ref()
        .unwrap()
        .unseal_pin(&station.station_key, &unlock.so_pin_context())
        .unwrap();
    assert_eq!(pin.expose_secret(), so_pin);

    // The new user PIN of the reset is unsealed and replaces the old one.
    let reset = station.event(
        &unlock_id,
        Step::ResetPin,
        ExecutionState::InProgress,
        Some(&serial),
        Some(StepData::PinReset {
            user_pin: seal(
                &station.platform_recipient,
                &SealContext::for_job(&unlock_id, SealPurpose::UserPin),
                b"654321",
            )
            .unwrap(),
        }),
    );
    station.send_event(&reset).await;
    platform
        .wait_until("the new user PIN", WAIT, |r| {
            r.token(&serial)
                .and_then(|t| t.user_pin())
                .filter(|p| p.expose_secret() == "654321")
                .map(|_| ())
        })
        .await
        .unwrap();

    // A PIN sealed under another job's context does not open: recorded as a problem.
    let stale = station.event(
        &unlock_id,
        Step::ResetPin,
        ExecutionState::InProgress,
        Some(&serial),
        Some(StepData::PinReset {
            user_pin: seal(
                &station.platform_recipient,
                &SealContext::for_job(&job_id, SealPurpose::UserPin),
                b"000000",
            )
            .unwrap(),
        }),
    );
    station.send_event(&stale).await;
    let record = platform
        .wait_for(&unlock_id, |j| !j.problems().is_empty(), WAIT)
        .await
        .unwrap();
    assert!(
        record.problems()[0].contains("user-pin"),
        "{:?}",
        record.problems()
    );
    assert_eq!(
        platform.user_pin(&serial).unwrap().expose_secret(),
        "654321"
    );

    // An unlock for a token the platform never bound cannot be made.
    let unknown = JobDraft::new(JobKind::Unlock, &station.id)
        .unwrap()
        .with_target(TokenSerial::new("NEVERSEEN").unwrap());
    assert!(matches!(
        platform.job(&unknown),
        Err(PlatformError::UnknownToken { .. })
    ));
}

#[tokio::test]
async fn presence_and_inventory_are_recorded() {
    let broker = ukey_tests::Mosquitto::start();
    let platform = platform(&broker, KeyOptions::default()).await;
    let station = Station::connect(&broker, &platform).await;
    let now = OffsetDateTime::now_utc();
    let presence = |status, seq| Presence {
        v: V1,
        station_id: station.id.clone(),
        status,
        seq,
        agent_version: "0.1.0".to_owned(),
        at: now,
    };
    use ukey_protocol::codec::Message;
    for p in [
        presence(PresenceStatus::Online, 2),
        presence(PresenceStatus::Offline, 1),
    ] {
        station
            .publish(station.topics.presence(), p.encode().unwrap())
            .await;
    }
    let inventory = Inventory {
        v: V1,
        station_id: station.id.clone(),
        seq: 7,
        at: now,
        slots: vec![
            SlotInfo {
                port: None,
                slot: 0,
                token: Some(TokenInfo {
                    serial: Some(TokenSerial::new("SIM3000").unwrap()),
                    model: "hsm-sim".to_owned(),
                    state: TokenState::Blank,
                    job_id: None,
                    certificates: vec![],
                    damage: None,
                }),
            },
            SlotInfo {
                port: None,
                slot: 1,
                token: None,
            },
        ],
        alerts: vec![],
    };
    station
        .publish(station.topics.inventory(), inventory.encode().unwrap())
        .await;
    let records = platform
        .wait_until("presence and inventory", WAIT, |r| {
            (r.presence().len() == 2 && !r.inventory().is_empty()).then(|| r.clone())
        })
        .await
        .unwrap();
    // The late offline of an older connection does not hide the newer online.
    let current = records.current_presence(&station.id).unwrap();
    assert_eq!((current.status, current.seq), (PresenceStatus::Online, 2));
    assert_eq!(records.current_inventory(&station.id), Some(&inventory));
    // Garbage on a station topic is recorded as unreadable, not fatal.
    station
        .publish(station.topics.inventory(), b"{\"v\":2}".to_vec())
        .await;
    platform
        .wait_until("the unreadable message", WAIT, |r| {
            r.unreadable().first().cloned()
        })
        .await
        .unwrap();
}

#[test]
fn keys_persist_in_a_folder_and_trust_files_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let options = KeyOptions::default();
    let a = PlatformKeys::load_or_generate(dir.path(), &options).unwrap();
    let b = PlatformKeys::load_or_generate(dir.path(), &options).unwrap();
    assert_eq!(a.ca().certificate_der(), b.ca().certificate_der());
    assert_eq!(a.job_key().verifying_key(), b.job_key().verifying_key());
    assert_eq!(a.sealing_key().recipient(), b.sealing_key().recipient());
    let _ = KeySource::Folder(dir.path().to_path_buf(), options);

    let station = ukey_protocol::StationId::new("desk-07").unwrap();
    let trust_dir = dir.path().join("trust");
    let trust = b.write_station_trust(&station, &trust_dir).unwrap();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    assert!(read(&trust.ca_certs[0]).starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(read(&trust.platform_signing_key).starts_with("-----BEGIN PUBLIC KEY-----"));
    assert!(read(&trust.platform_sealing_key).starts_with("-----BEGIN PUBLIC KEY-----"));
    assert!(read(&trust.station_key).starts_with("-----BEGIN PRIVATE KEY-----"));
    let mode = std::fs::metadata(&trust.station_key)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let station_key = ukey_protocol::UnsealKey::from_pkcs8_pem(&read(&trust.station_key)).unwrap();
    assert_eq!(
        b.station_recipient(&station),
        Some(station_key.recipient()),
        "the platform keeps the station's public key"
    );
    let section = trust.toml_section();
    assert!(section.starts_with("[trust]\n"));
    assert!(
        section.contains(&format!(
            "station_key = {:?}",
            trust.station_key.to_str().unwrap()
        )),
        "{section}"
    );
}

#[tokio::test]
async fn the_platform_reconnects_after_the_broker_restarts() {
    let mut broker = ukey_tests::Mosquitto::start();
    let platform = platform(&broker, KeyOptions::default()).await;
    assert_eq!(platform.snapshot().subscriptions(), 1);
    broker.kill();
    broker.restart();
    platform
        .wait_until("the platform to subscribe again", WAIT, |r| {
            (r.subscriptions() >= 2).then_some(())
        })
        .await
        .unwrap();
    assert!(platform.snapshot().connections() >= 2);
    let mut station = Station::connect(&broker, &platform).await;
    let job_id = platform
        .dispatch_draft(&JobDraft::new(JobKind::New, &station.id).unwrap())
        .await
        .unwrap();
    assert_eq!(station.next_verified_job().await.job_id, job_id);
    let event = station.event(&job_id, Step::Receive, ExecutionState::Queued, None, None);
    station.send_event(&event).await;
    assert_eq!(station.next_ack().await, vec![event.event_id.clone()]);
}
