//! Shared fixtures: fixed test keys, fixed times, and one valid sample of every message.
//! The keys are test keys made from constant bytes; they protect nothing.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use time::OffsetDateTime;
use time::macros::datetime;
use ukey_protocol::*;

pub const STATION: &str = "desk-01";
pub const KEY_ID: &str = "platform-2025";

/// The platform's job-signing key for the golden vectors (ES256).
pub fn platform_signing_key() -> JobSigningKey {
    JobSigningKey::Es256(p256::ecdsa::SigningKey::from_slice(&[0x11; 32]).unwrap())
}

/// The station's key for secrets sealed to it.
pub fn station_unseal_key() -> UnsealKey {
    UnsealKey::P256(p256::SecretKey::from_slice(&[0x22; 32]).unwrap())
}

/// The platform's key for secrets sealed to it.
pub fn platform_unseal_key() -> UnsealKey {
    UnsealKey::P256(p256::SecretKey::from_slice(&[0x33; 32]).unwrap())
}

pub const RSA_KEY_ID: &str = "platform-2025-rsa";

/// The platform's RSA test key (RS256 and PS256 vectors), also read by the independent check.
pub fn platform_rsa_key() -> rsa::PrivateKey {
    use p256::pkcs8::DecodePrivateKey;
    rsa::PrivateKey::from_pkcs8_pem(include_str!("../independent/platform-rsa-test-key.pem"))
        .unwrap()
}

pub fn keyring() -> JobKeyring {
    let mut ring = JobKeyring::single(KEY_ID, platform_signing_key().verifying_key());
    ring.insert(
        RSA_KEY_ID,
        JobSigningKey::Rs256(platform_rsa_key()).verifying_key(),
    );
    ring
}

/// A platform message signed as the vectors are: `key` under `kid`.
pub fn signed_with<M: PlatformMessage>(message: &M, key: &JobSigningKey, kid: &str) -> Vec<u8> {
    sign_platform_message(message, key, kid).unwrap()
}

pub fn station() -> StationId {
    StationId::new(STATION).unwrap()
}

pub const ISSUED: OffsetDateTime = datetime!(2025-03-01 08:00:00 UTC);
pub const EXPIRES: OffsetDateTime = datetime!(2025-03-08 08:00:00 UTC);
/// A `now` inside every sample job's validity window.
pub const NOW: OffsetDateTime = datetime!(2025-03-01 09:00:00 UTC);

pub const SO_PIN: &str = "84913027";
pub const USER_PIN: &str = "275103";

pub fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// Reads a vector file; the file holds the exact payload followed by one newline.
pub fn read_vector(name: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(vectors_dir().join(name)).unwrap();
    assert_eq!(bytes.pop(), Some(b'\n'), "{name} must end with one newline");
    bytes
}

pub fn job_id(kind: JobKind) -> JobId {
    JobId::new(format!("J-20250301-{}", kind.as_str())).unwrap()
}

pub fn sample_job(kind: JobKind) -> JobDocument {
    let id = job_id(kind);
    let (target, old, rekey) = match kind {
        JobKind::New => (None, None, false),
        JobKind::Replace => (
            None,
            Some(TokenSerial::new("7A3F0C1D2E4B5968").unwrap()),
            false,
        ),
        JobKind::Renew | JobKind::Unlock => (
            Some(TokenSerial::new("5C2D8E1F0A3B4C6D").unwrap()),
            None,
            false,
        ),
        JobKind::Change => (
            Some(TokenSerial::new("5C2D8E1F0A3B4C6D").unwrap()),
            None,
            true,
        ),
    };
    let so_pin = (kind == JobKind::Unlock || rekey).then(|| {
        seal(
            &station_unseal_key().recipient(),
            &SealContext::for_job(&id, SealPurpose::SoPin),
            SO_PIN.as_bytes(),
        )
        .unwrap()
    });
    JobDocument {
        v: V1,
        job_id: id,
        kind,
        station_id: station(),
        order_number: "PO-2025-000123".to_owned(),
        region: "110000".to_owned(),
        enterprise: Enterprise {
            name: "北京示例科技有限公司".to_owned(),
            credit_code: CreditCode::new(credit_code_with_check("91110108MA01ABCD1").unwrap())
                .unwrap(),
        },
        legal_representative: LegalRepresentative {
            name: "张三".to_owned(),
        },
        keys: vec![
            KeySpec::new(KeyLabel::SealOfficial, KeyAlgorithm::P256),
            KeySpec::new(KeyLabel::SealLegal, KeyAlgorithm::P256),
            KeySpec::new(KeyLabel::Encryption, KeyAlgorithm::Rsa2048),
        ],
        validity_days: 365,
        target_token_serial: target,
        old_token_serial: old,
        rekey,
        so_pin,
        delivery: DeliveryMethod::Pickup,
        issued_at: ISSUED,
        expires_at: EXPIRES,
        nonce: Nonce::new(format!("n0nce-{}-7f3a9c1e", kind.as_str())).unwrap(),
    }
}

pub fn signed(job: &JobDocument) -> Vec<u8> {
    sign_job(job, &platform_signing_key(), KEY_ID)
        .unwrap()
        .encode()
        .unwrap()
}

/// Short stand-ins for DER objects (the protocol does not parse DER).
pub fn der(tag: u8) -> Base64Bytes {
    Base64Bytes::new(vec![0x30, 0x06, 0x02, 0x01, tag, 0x04, 0x01, 0xAA])
}

pub fn event_id(n: u32) -> EventId {
    EventId::new(format!("E-{n:04}")).unwrap()
}

pub fn sample_claim_event() -> StepEvent {
    StepEvent {
        v: V1,
        event_id: event_id(2),
        job_id: job_id(JobKind::New),
        seq: 2,
        step: Step::Claim,
        state: ExecutionState::InProgress,
        token_serial: Some(TokenSerial::new("9E8D7C6B5A493827").unwrap()),
        error: None,
        data: None,
        started_at: Some(datetime!(2025-03-01 08:05:00 UTC)),
        at: datetime!(2025-03-01 08:05:01 UTC),
    }
}

pub fn sample_failed_event() -> StepEvent {
    StepEvent {
        v: V1,
        event_id: event_id(5),
        job_id: job_id(JobKind::New),
        seq: 5,
        step: Step::VerifyCertificates,
        state: ExecutionState::Failed,
        token_serial: Some(TokenSerial::new("9E8D7C6B5A493827").unwrap()),
        error: Some(StepError {
            code: ErrorCode::new("certificate-key-mismatch").unwrap(),
            message: "seal-official certificate does not certify the on-token key".to_owned(),
            retryable: false,
        }),
        data: None,
        started_at: Some(datetime!(2025-03-01 08:06:00 UTC)),
        at: datetime!(2025-03-01 08:06:00.250 UTC),
    }
}

pub fn sample_bind_event() -> StepEvent {
    let jid = job_id(JobKind::New);
    let platform = platform_unseal_key().recipient();
    StepEvent {
        v: V1,
        event_id: event_id(9),
        job_id: jid.clone(),
        seq: 9,
        step: Step::Bind,
        state: ExecutionState::InProgress,
        token_serial: Some(TokenSerial::new("9E8D7C6B5A493827").unwrap()),
        error: None,
        data: Some(StepData::Bind(BindReport {
            certificates: KeyLabel::ALL
                .iter()
                .enumerate()
                .map(|(i, label)| CertFingerprint {
                    label: *label,
                    serial: format!("1f2e3d4c5b6a7980{i}"),
                    sha256: format!("{:064x}", 0xabcdef01u64 + i as u64),
                })
                .collect(),
            so_pin: Some(
                seal(
                    &platform,
                    &SealContext::for_job(&jid, SealPurpose::SoPin),
                    SO_PIN.as_bytes(),
                )
                .unwrap(),
            ),
            user_pin: Some(
                seal(
                    &platform,
                    &SealContext::for_job(&jid, SealPurpose::UserPin),
                    USER_PIN.as_bytes(),
                )
                .unwrap(),
            ),
        })),
        started_at: Some(datetime!(2025-03-01 08:07:00 UTC)),
        at: datetime!(2025-03-01 08:07:00.5 UTC),
    }
}

pub fn sample_pin_reset_event() -> StepEvent {
    let jid = job_id(JobKind::Unlock);
    StepEvent {
        v: V1,
        event_id: event_id(13),
        job_id: jid.clone(),
        seq: 3,
        step: Step::ResetPin,
        state: ExecutionState::Succeeded,
        token_serial: Some(TokenSerial::new("5C2D8E1F0A3B4C6D").unwrap()),
        error: None,
        data: Some(StepData::PinReset {
            user_pin: seal(
                &platform_unseal_key().recipient(),
                &SealContext::for_job(&jid, SealPurpose::UserPin),
                USER_PIN.as_bytes(),
            )
            .unwrap(),
        }),
        started_at: None,
        at: datetime!(2025-03-01 08:10:00 UTC),
    }
}

pub fn sample_csr_bundle() -> CsrBundle {
    CsrBundle {
        v: V1,
        job_id: job_id(JobKind::New),
        token_serial: TokenSerial::new("9E8D7C6B5A493827").unwrap(),
        requests: KeyLabel::ALL
            .iter()
            .map(|label| CertificateRequest {
                label: *label,
                csr: Some(der(label.key_id())),
                current_certificate: None,
                public_key: None,
            })
            .collect(),
    }
}

pub fn sample_renewal_bundle() -> CsrBundle {
    CsrBundle {
        v: V1,
        job_id: job_id(JobKind::Renew),
        token_serial: TokenSerial::new("5C2D8E1F0A3B4C6D").unwrap(),
        requests: KeyLabel::ALL
            .iter()
            .map(|label| CertificateRequest {
                label: *label,
                csr: None,
                current_certificate: Some(der(label.key_id())),
                public_key: Some(der(0x10 + label.key_id())),
            })
            .collect(),
    }
}

pub fn sample_certs_issued() -> CertResponse {
    CertResponse {
        v: V1,
        station_id: station(),
        job_id: job_id(JobKind::New),
        outcome: CertOutcome::Issued(CertBundle {
            certificates: KeyLabel::ALL
                .iter()
                .map(|label| IssuedCertificate {
                    label: *label,
                    certificate: der(0x20 + label.key_id()),
                })
                .collect(),
            ca_chain: vec![der(0x31), der(0x32)],
        }),
    }
}

pub fn sample_certs_rejected() -> CertResponse {
    CertResponse {
        v: V1,
        station_id: station(),
        job_id: job_id(JobKind::New),
        outcome: CertOutcome::Rejected(CertRejection {
            code: ErrorCode::new("csr-subject-mismatch").unwrap(),
            reason: "seal-legal CSR subject does not name the legal representative".to_owned(),
        }),
    }
}

pub fn sample_ack() -> Ack {
    Ack {
        v: V1,
        station_id: station(),
        event_ids: vec![event_id(1), event_id(2)],
    }
}

pub fn sample_cancel() -> Cancel {
    Cancel {
        v: V1,
        station_id: station(),
        job_id: job_id(JobKind::New),
        reason: "order withdrawn by the customer".to_owned(),
        at: datetime!(2025-03-01 08:30:00 UTC),
    }
}

pub fn sample_presence(status: PresenceStatus) -> Presence {
    Presence {
        v: V1,
        station_id: station(),
        status,
        seq: 42,
        agent_version: "0.1.0".to_owned(),
        at: datetime!(2025-03-01 07:59:00 UTC),
    }
}

pub fn sample_inventory() -> Inventory {
    Inventory {
        v: V1,
        station_id: station(),
        seq: 17,
        at: datetime!(2025-03-01 08:05:02 UTC),
        slots: vec![
            SlotInfo {
                port: None,
                slot: 0,
                token: Some(TokenInfo {
                    serial: Some(TokenSerial::new("9E8D7C6B5A493827").unwrap()),
                    model: "UK-300".to_owned(),
                    state: TokenState::InProduction,
                    job_id: Some(job_id(JobKind::New)),
                    certificates: vec![],
                    damage: None,
                }),
            },
            SlotInfo {
                port: None,
                slot: 1,
                token: Some(TokenInfo {
                    serial: Some(TokenSerial::new("5C2D8E1F0A3B4C6D").unwrap()),
                    model: "UK-300".to_owned(),
                    state: TokenState::Expiring,
                    job_id: None,
                    certificates: KeyLabel::ALL
                        .iter()
                        .map(|label| CertificateExpiry {
                            label: *label,
                            not_after: datetime!(2025-03-20 23:59:59 UTC),
                        })
                        .collect(),
                    damage: None,
                }),
            },
            SlotInfo {
                port: None,
                slot: 2,
                token: None,
            },
        ],
        alerts: vec![],
    }
}

/// Every golden vector: file name and a generator of its payload.
pub fn all_vectors() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("job-new.json", signed(&sample_job(JobKind::New))),
        ("job-replace.json", signed(&sample_job(JobKind::Replace))),
        ("job-renew.json", signed(&sample_job(JobKind::Renew))),
        (
            "job-change-rekey.json",
            signed(&sample_job(JobKind::Change)),
        ),
        ("job-unlock.json", signed(&sample_job(JobKind::Unlock))),
        ("event-claim.json", sample_claim_event().encode().unwrap()),
        ("event-failed.json", sample_failed_event().encode().unwrap()),
        ("event-bind.json", sample_bind_event().encode().unwrap()),
        (
            "event-pin-reset.json",
            sample_pin_reset_event().encode().unwrap(),
        ),
        ("csr-bundle.json", sample_csr_bundle().encode().unwrap()),
        (
            "csr-bundle-renew.json",
            sample_renewal_bundle().encode().unwrap(),
        ),
        (
            "certs-issued.json",
            signed_with(&sample_certs_issued(), &platform_signing_key(), KEY_ID),
        ),
        (
            "certs-rejected.json",
            signed_with(
                &sample_certs_rejected(),
                &JobSigningKey::Ps256(platform_rsa_key()),
                RSA_KEY_ID,
            ),
        ),
        (
            "ack.json",
            signed_with(&sample_ack(), &platform_signing_key(), KEY_ID),
        ),
        (
            "cancel.json",
            signed_with(
                &sample_cancel(),
                &JobSigningKey::Rs256(platform_rsa_key()),
                RSA_KEY_ID,
            ),
        ),
        (
            "presence-online.json",
            sample_presence(PresenceStatus::Online).encode().unwrap(),
        ),
        (
            "presence-offline.json",
            sample_presence(PresenceStatus::Offline).encode().unwrap(),
        ),
        ("inventory.json", sample_inventory().encode().unwrap()),
    ]
}
