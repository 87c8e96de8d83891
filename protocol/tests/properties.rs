//! Property tests: every message round-trips (encode → decode → equal, and re-encode byte for
//! byte), and no decoder panics on arbitrary or mutated input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use proptest::prelude::*;
use time::OffsetDateTime;
use ukey_protocol::*;

fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9._-]{0,30}"
}

fn text(max: usize) -> impl Strategy<Value = String> {
    let inner = max.saturating_sub(2);
    let pattern = format!(
        "[a-zA-Z0-9\u{4e00}-\u{4e80}]([a-zA-Z0-9 ,.\u{4e00}-\u{4e80}]{{0,{inner}}}[a-zA-Z0-9\u{4e00}-\u{4e80}])?"
    );
    proptest::string::string_regex(&pattern).unwrap()
}

fn serial() -> impl Strategy<Value = TokenSerial> {
    "[A-Za-z0-9._:-]{1,16}".prop_map(|s| TokenSerial::new(s).unwrap())
}

fn timestamp() -> impl Strategy<Value = OffsetDateTime> {
    (0i64..4_000_000_000, 0u32..1_000_000_000).prop_map(|(s, ns)| {
        OffsetDateTime::from_unix_timestamp(s)
            .unwrap()
            .replace_nanosecond(ns)
            .unwrap()
    })
}

fn credit_code() -> impl Strategy<Value = CreditCode> {
    "[0-9ABCDEFGHJKLMNPQRTUWXY]{17}"
        .prop_map(|b| CreditCode::new(credit_code_with_check(&b).unwrap()).unwrap())
}

fn id_card() -> impl Strategy<Value = IdCardNumber> {
    (
        "[1-6][0-9]{5}",
        1900u32..2100,
        1u32..=12,
        1u32..=28,
        "[0-9]{3}",
    )
        .prop_map(|(region, y, m, d, seq)| {
            let body = format!("{region}{y:04}{m:02}{d:02}{seq}");
            IdCardNumber::new(id_card_with_check(&body).unwrap()).unwrap()
        })
}

fn alg() -> impl Strategy<Value = KeyAlgorithm> {
    prop_oneof![
        Just(KeyAlgorithm::P256),
        Just(KeyAlgorithm::Rsa2048),
        Just(KeyAlgorithm::Rsa3072),
        Just(KeyAlgorithm::Sm2)
    ]
}

fn kind() -> impl Strategy<Value = JobKind> {
    proptest::sample::select(JobKind::ALL.to_vec())
}

prop_compose! {
    fn job()(
        kind in kind(),
        rekey in any::<bool>(),
        job_id in id(),
        station in id(),
        order in text(64),
        region in text(64),
        name in text(128),
        credit in credit_code(),
        rep_name in text(64),
        algs in [alg(), alg(), alg()],
        order_of_keys in Just(KeyLabel::ALL).prop_shuffle(),
        validity in 1u32..=3650,
        target in serial(),
        old in serial(),
        delivery in prop_oneof![Just(DeliveryMethod::Pickup), Just(DeliveryMethod::Courier)],
        issued in timestamp(),
        lifetime in 1i64..10_000_000,
        nonce in "[A-Za-z0-9_-]{16,64}",
    ) -> JobDocument {
        let job_id = JobId::new(job_id).unwrap();
        let rekey = rekey && kind == JobKind::Change;
        let so_pin = (kind == JobKind::Unlock || rekey).then(|| {
            seal(
                &station_unseal_key().recipient(),
                &SealContext::for_job(&job_id, SealPurpose::SoPin),
                b"12345678",
            )
            .unwrap()
        });
        JobDocument {
            v: V1,
            job_id,
            kind,
            station_id: StationId::new(station).unwrap(),
            order_number: order,
            region,
            enterprise: Enterprise { name, credit_code: credit },
            legal_representative: LegalRepresentative { name: rep_name },
            keys: order_of_keys.iter().zip(algs).map(|(label, alg)| KeySpec::new(*label, alg)).collect(),
            validity_days: validity,
            target_token_serial: (!kind.takes_blank_token()).then_some(target),
            old_token_serial: (kind == JobKind::Replace).then_some(old),
            rekey,
            so_pin,
            delivery,
            issued_at: issued,
            expires_at: issued + time::Duration::seconds(lifetime),
            nonce: Nonce::new(nonce).unwrap(),
        }
    }
}

fn step() -> impl Strategy<Value = Step> {
    proptest::sample::select(vec![
        Step::Receive,
        Step::Claim,
        Step::Initialize,
        Step::GenerateKeys,
        Step::ReadKeys,
        Step::RequestCertificates,
        Step::VerifyCertificates,
        Step::Install,
        Step::RemoveOldCertificates,
        Step::Activate,
        Step::ResetPin,
        Step::Bind,
    ])
}

fn state() -> impl Strategy<Value = ExecutionState> {
    proptest::sample::select(vec![
        ExecutionState::Queued,
        ExecutionState::InProgress,
        ExecutionState::Succeeded,
        ExecutionState::Failed,
        ExecutionState::Rejected,
        ExecutionState::TimedOut,
        ExecutionState::Canceled,
    ])
}

prop_compose! {
    fn event()(
        event_id in id(),
        job_id in id(),
        seq in 1u64..u64::MAX,
        step in step(),
        state in state(),
        serial in proptest::option::of(serial()),
        code in "[a-z][a-z0-9-]{0,20}",
        message in text(100),
        retryable in any::<bool>(),
        parked in any::<bool>(),
        at in timestamp(),
        started_before in proptest::option::of(0i64..100_000),
    ) -> StepEvent {
        let error = state.needs_error().then(|| StepError {
            code: ErrorCode::new(code.clone()).unwrap(),
            message,
            retryable,
        });
        let data = (parked && state == ExecutionState::InProgress)
            .then(|| StepData::Parked { reason: ErrorCode::new(code).unwrap() });
        StepEvent {
            v: V1,
            event_id: EventId::new(event_id).unwrap(),
            job_id: JobId::new(job_id).unwrap(),
            seq,
            step,
            state,
            token_serial: serial,
            error,
            data,
            started_at: started_before.map(|s| at - time::Duration::seconds(s)),
            at,
        }
    }
}

fn der() -> impl Strategy<Value = Base64Bytes> {
    proptest::collection::vec(any::<u8>(), 1..200).prop_map(Base64Bytes::new)
}

prop_compose! {
    fn csr_bundle()(
        job_id in id(),
        serial in serial(),
        renewal in any::<bool>(),
        blobs in proptest::collection::vec(der(), 6),
    ) -> CsrBundle {
        CsrBundle {
            v: V1,
            job_id: JobId::new(job_id).unwrap(),
            token_serial: serial,
            requests: KeyLabel::ALL.iter().enumerate().map(|(i, label)| CertificateRequest {
                label: *label,
                csr: (!renewal).then(|| blobs[i].clone()),
                current_certificate: renewal.then(|| blobs[i].clone()),
                public_key: renewal.then(|| blobs[i + 3].clone()),
            }).collect(),
        }
    }
}

prop_compose! {
    fn cert_response()(
        job_id in id(),
        issued in any::<bool>(),
        certs in proptest::collection::vec(der(), 3),
        chain in proptest::collection::vec(der(), 0..=8),
        code in "[a-z][a-z0-9-]{0,20}",
        reason in text(200),
    ) -> CertResponse {
        let outcome = if issued {
            CertOutcome::Issued(CertBundle {
                certificates: KeyLabel::ALL.iter().zip(certs).map(|(label, certificate)| {
                    IssuedCertificate { label: *label, certificate }
                }).collect(),
                ca_chain: chain,
            })
        } else {
            CertOutcome::Rejected(CertRejection { code: ErrorCode::new(code).unwrap(), reason })
        };
        CertResponse { v: V1, station_id: station(), job_id: JobId::new(job_id).unwrap(), outcome }
    }
}

prop_compose! {
    fn inventory()(
        station in id(),
        seq in any::<u64>(),
        at in timestamp(),
        slots in proptest::collection::btree_map(0u32..64, proptest::option::of((
            serial(), text(20), proptest::sample::select(vec![
                TokenState::Blank, TokenState::InProduction, TokenState::Active,
                TokenState::Expiring, TokenState::Expired, TokenState::LockedUser,
                TokenState::LockedSo, TokenState::Revoked, TokenState::Foreign,
                TokenState::Damaged,
            ]),
            proptest::option::of(id()),
            proptest::collection::vec(timestamp(), 0..=3),
        )), 0..16),
    ) -> Inventory {
        Inventory {
            v: V1,
            station_id: StationId::new(station).unwrap(),
            seq,
            at,
            slots: slots.into_iter().map(|(slot, token)| SlotInfo {
                port: None,
                slot,
                token: token.map(|(serial, model, state, job, expiries)| TokenInfo {
                    // A damaged token may be unreadable down to its serial.
                    serial: (state != TokenState::Damaged || model.len() % 2 == 0).then_some(serial),
                    damage: (state == TokenState::Damaged).then(|| TokenDamage {
                        function: Some("C_GetTokenInfo".to_owned()),
                        return_code: Some("CKR_DEVICE_ERROR".to_owned()),
                        message: model.clone(),
                    }),
                    model,
                    state,
                    job_id: job.map(|j| JobId::new(j).unwrap()),
                    certificates: KeyLabel::ALL.iter().zip(expiries).map(|(label, not_after)| {
                        CertificateExpiry { label: *label, not_after }
                    }).collect(),
                }),
            }).collect(),
            alerts: vec![],
        }
    }
}

fn round_trip<M: Message + PartialEq + std::fmt::Debug>(m: &M) -> Result<(), TestCaseError> {
    let bytes = m.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back = M::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, m);
    prop_assert_eq!(back.encode().unwrap(), bytes);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn job_documents_round_trip(job in job()) {
        round_trip(&job)?;
    }

    #[test]
    fn signed_jobs_round_trip_and_verify(job in job()) {
        let key = platform_signing_key();
        let bytes = sign_job(&job, &key, KEY_ID).unwrap().encode().unwrap();
        let envelope = JobEnvelope::decode(&bytes).unwrap();
        prop_assert_eq!(envelope.encode().unwrap(), bytes);
        let now = job.issued_at;
        prop_assert_eq!(envelope.verify(&keyring(), &job.station_id, now).unwrap(), job);
    }

    #[test]
    fn events_round_trip(e in event()) {
        round_trip(&e)?;
    }

    #[test]
    fn bundles_round_trip(b in csr_bundle(), c in cert_response()) {
        round_trip(&b)?;
        round_trip(&c)?;
    }

    #[test]
    fn small_messages_round_trip(
        ids in proptest::collection::btree_set(id(), 1..50),
        job_id in id(),
        reason in text(512),
        station in id(),
        seq in any::<u64>(),
        online in any::<bool>(),
        version in "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        at in timestamp(),
    ) {
        round_trip(&Ack { v: V1, station_id: StationId::new(station.clone()).unwrap(), event_ids: ids.into_iter().map(|i| EventId::new(i).unwrap()).collect() })?;
        round_trip(&Cancel { v: V1, station_id: StationId::new(station.clone()).unwrap(), job_id: JobId::new(job_id).unwrap(), reason, at })?;
        round_trip(&Presence {
            v: V1,
            station_id: StationId::new(station).unwrap(),
            status: if online { PresenceStatus::Online } else { PresenceStatus::Offline },
            seq,
            agent_version: version,
            at,
        })?;
    }

    #[test]
    fn inventories_round_trip(inv in inventory()) {
        round_trip(&inv)?;
    }

    #[test]
    fn credit_codes_and_id_cards_from_generators_validate(c in credit_code(), i in id_card()) {
        prop_assert!(c.check("c").is_ok());
        prop_assert!(i.check("i").is_ok());
        // Changing the check character always breaks it.
        let mut s = c.as_str().to_owned();
        let last = s.pop().unwrap();
        s.push(if last == '0' { '1' } else { '0' });
        prop_assert!(CreditCode::new(s).is_err());
    }
}

/// Runs every decoder on `bytes`; none may panic.
fn decode_all(bytes: &[u8]) {
    let _ = JobDocument::decode(bytes);
    if let Ok(envelope) = JobEnvelope::decode(bytes) {
        let _ = envelope.verify(&keyring(), &station(), NOW);
    }
    let _ = StepEvent::decode(bytes);
    let _ = CsrBundle::decode(bytes);
    let _ = CertResponse::decode(bytes);
    let _ = Ack::decode(bytes);
    let _ = Cancel::decode(bytes);
    let _ = verify_platform_message::<Ack>(bytes, &keyring(), &station());
    let _ = verify_platform_message::<Cancel>(bytes, &keyring(), &station());
    let _ = verify_platform_message::<CertResponse>(bytes, &keyring(), &station());
    let _ = Presence::decode(bytes);
    let _ = Inventory::decode(bytes);
    let _ = serde_json::from_slice::<SealedSecret>(bytes).map(|s| {
        s.unseal(
            &station_unseal_key(),
            &SealContext::for_job(&JobId::new("J").unwrap(), SealPurpose::SoPin),
        )
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        decode_all(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(value in arb_json()) {
        decode_all(&serde_json::to_vec(&value).unwrap());
        let mut object = serde_json::Map::new();
        object.insert("v".into(), serde_json::json!(1));
        object.insert("job".into(), value.clone());
        object.insert("outcome".into(), value);
        decode_all(&serde_json::to_vec(&object).unwrap());
    }

    #[test]
    fn mutated_vectors_never_panic(
        which in 0usize..18,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let (name, _) = &all_vectors()[which];
        let mut bytes = read_vector(name);
        for (i, b) in &edits {
            let at = i.index(bytes.len());
            bytes[at] = *b;
        }
        decode_all(&bytes);
        bytes.truncate(cut.index(bytes.len() + 1));
        decode_all(&bytes);
    }

    #[test]
    fn arbitrary_topics_never_panic(topic in "\\PC{0,80}", suffix in "[a-z/+#]{0,20}") {
        let topics = Topics::new(DEFAULT_PREFIX, &station()).unwrap();
        let _ = topics.parse(&topic);
        let _ = topics.parse(&format!("ukey/v1/stations/desk-01/{suffix}"));
        let _ = ukey_protocol::topic::parse_any_station(DEFAULT_PREFIX, &topic);
    }
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::String),
        proptest::sample::select(vec![
            "new",
            "p256",
            "seal-official",
            "in-progress",
            "ES256",
            "2025-03-01T08:00:00Z",
            "MAA=",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(
                proptest::sample::select(vec![
                    "v",
                    "job",
                    "protected",
                    "payload",
                    "signature",
                    "alg",
                    "kid",
                    "typ",
                    "job_id",
                    "kind",
                    "keys",
                    "label",
                    "event_ids",
                    "slots",
                    "token",
                    "so_pin",
                    "enc",
                    "ct",
                    "nonce",
                    "issued",
                    "rejected",
                    "certificates",
                    "step",
                    "state",
                    "data",
                    "bind",
                    "x",
                ])
                .prop_map(str::to_owned),
                inner,
                0..8,
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}
