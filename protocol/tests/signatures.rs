//! Signed jobs with real generated keys: good (ES256, RS256, PS256), tampered, wrong key,
//! unknown key id, algorithm/key mismatch, expired, not yet valid, foreign station, replayed
//! nonce, and the "exact bytes as received" rule.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashSet};

use common::*;
use time::Duration;
use ukey_protocol::*;

fn random_es256() -> JobSigningKey {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).unwrap();
    JobSigningKey::Es256(p256::ecdsa::SigningKey::from_slice(&bytes).unwrap())
}

fn random_rsa() -> rsa::PrivateKey {
    rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap()
}

fn envelope_bytes(key: &JobSigningKey, job: &JobDocument) -> Vec<u8> {
    sign_job(job, key, "k1").unwrap().encode().unwrap()
}

fn verify(bytes: &[u8], ring: &JobKeyring) -> Result<JobDocument, ProtocolError> {
    JobEnvelope::decode(bytes)?.verify(ring, &station(), NOW)
}

#[test]
fn es256_good_tampered_and_wrong_key() {
    let key = random_es256();
    let ring = JobKeyring::single("k1", key.verifying_key());
    let job = sample_job(JobKind::New);
    let bytes = envelope_bytes(&key, &job);
    assert_eq!(verify(&bytes, &ring).unwrap(), job);

    // Tampered: one character of the signed job changed (the order number).
    let text = String::from_utf8(bytes.clone()).unwrap();
    let tampered = text.replace("PO-2025-000123", "PO-2025-000124");
    assert_ne!(tampered, text);
    assert_eq!(
        verify(tampered.as_bytes(), &ring).unwrap_err(),
        ProtocolError::BadSignature {
            key_id: "k1".into()
        }
    );

    // Wrong key under the trusted id.
    let other = JobKeyring::single("k1", random_es256().verifying_key());
    assert_eq!(
        verify(&bytes, &other).unwrap_err(),
        ProtocolError::BadSignature {
            key_id: "k1".into()
        }
    );

    // Unknown key id.
    let elsewhere = JobKeyring::single("k2", key.verifying_key());
    assert_eq!(
        verify(&bytes, &elsewhere).unwrap_err(),
        ProtocolError::UnknownKeyId {
            key_id: "k1".into()
        }
    );
    assert!(matches!(
        verify(&bytes, &JobKeyring::new()),
        Err(ProtocolError::UnknownKeyId { .. })
    ));
}

#[test]
fn signature_covers_the_exact_bytes_received() {
    let key = random_es256();
    let ring = JobKeyring::single("k1", key.verifying_key());
    let job = sample_job(JobKind::New);
    let bytes = envelope_bytes(&key, &job);
    let text = String::from_utf8(bytes).unwrap();

    // Re-formatting the job (same JSON value) breaks the signature: bytes are what count.
    let spaced = text.replacen("\"kind\":\"new\"", "\"kind\": \"new\"", 1);
    assert!(matches!(
        verify(spaced.as_bytes(), &ring),
        Err(ProtocolError::BadSignature { .. })
    ));

    // A platform that signs non-canonical bytes is still accepted: the station verifies
    // what arrived, it does not re-serialize.
    let job_text = String::from_utf8(job.encode().unwrap()).unwrap();
    let pretty = serde_json::to_string_pretty(
        &serde_json::from_str::<serde_json::Value>(&job_text).unwrap(),
    )
    .unwrap();
    let JobSigningKey::Es256(sk) = &key else {
        unreachable!()
    };
    let sig: p256::ecdsa::Signature = signature::Signer::sign(sk, pretty.as_bytes());
    let envelope = format!(
        r#"{{"v":1,"job":{pretty},"sig":{{"alg":"ES256","key_id":"k1","value":"{}"}}}}"#,
        base64_of(&sig.to_bytes())
    );
    let decoded = JobEnvelope::decode(envelope.as_bytes()).unwrap();
    assert_eq!(decoded.job_bytes(), pretty.as_bytes());
    assert_eq!(decoded.verify(&ring, &station(), NOW).unwrap(), job);
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn rsa_rs256_and_ps256() {
    let rsa_key = random_rsa();
    let job = sample_job(JobKind::Renew);
    for key in [
        JobSigningKey::Rs256(rsa_key.clone()),
        JobSigningKey::Ps256(rsa_key.clone()),
    ] {
        let ring = JobKeyring::single("k1", key.verifying_key());
        let bytes = envelope_bytes(&key, &job);
        assert_eq!(verify(&bytes, &ring).unwrap(), job, "{:?}", key.alg());
        let text = String::from_utf8(bytes).unwrap();
        let tampered = text.replace("\"validity_days\":365", "\"validity_days\":730");
        assert!(matches!(
            verify(tampered.as_bytes(), &ring),
            Err(ProtocolError::BadSignature { .. })
        ));
    }
    // RS256 and PS256 are not interchangeable.
    let ring = JobKeyring::single("k1", JobSigningKey::Rs256(rsa_key.clone()).verifying_key());
    let pss = envelope_bytes(&JobSigningKey::Ps256(rsa_key), &job);
    let text = String::from_utf8(pss).unwrap().replace("PS256", "RS256");
    assert!(matches!(
        verify(text.as_bytes(), &ring),
        Err(ProtocolError::BadSignature { .. })
    ));
}

#[test]
fn algorithm_must_fit_the_key() {
    let ec = random_es256();
    let bytes = envelope_bytes(&ec, &sample_job(JobKind::New));
    let text = String::from_utf8(bytes).unwrap().replace("ES256", "RS256");
    let ring = JobKeyring::single("k1", ec.verifying_key());
    assert_eq!(
        verify(text.as_bytes(), &ring).unwrap_err(),
        ProtocolError::SignatureAlgorithmMismatch {
            alg: "RS256",
            key_type: "EC P-256",
            key_id: "k1".into()
        }
    );
}

#[test]
fn expired_not_yet_valid_and_foreign_station() {
    let key = random_es256();
    let ring = JobKeyring::single("k1", key.verifying_key());
    let job = sample_job(JobKind::New);
    let envelope = JobEnvelope::decode(&envelope_bytes(&key, &job)).unwrap();

    let after = job.expires_at + Duration::seconds(1);
    assert_eq!(
        envelope.verify(&ring, &station(), after).unwrap_err(),
        ProtocolError::Expired {
            job_id: job.job_id.to_string(),
            expires_at: job.expires_at
        }
    );
    // At the expiry instant itself the job is still good.
    assert!(envelope.verify(&ring, &station(), job.expires_at).is_ok());

    let early = job.issued_at - Duration::minutes(6);
    assert!(matches!(
        envelope.verify(&ring, &station(), early),
        Err(ProtocolError::NotYetValid { .. })
    ));
    let slightly_early = job.issued_at - Duration::minutes(4);
    assert!(envelope.verify(&ring, &station(), slightly_early).is_ok());

    let other = StationId::new("desk-02").unwrap();
    assert_eq!(
        envelope.verify(&ring, &other, NOW).unwrap_err(),
        ProtocolError::WrongStation {
            job_id: job.job_id.to_string(),
            expected: "desk-02".into(),
            got: STATION.into()
        }
    );
}

#[test]
fn forged_job_fails_signature_before_validation() {
    // A signed envelope whose job is invalid is refused for the signature when forged, and for
    // validation only when the signature is good.
    let key = random_es256();
    let ring = JobKeyring::single("k1", key.verifying_key());
    let bytes = envelope_bytes(&key, &sample_job(JobKind::New));
    let text = String::from_utf8(bytes)
        .unwrap()
        .replace("13800138000", "12800138000");
    assert!(matches!(
        verify(text.as_bytes(), &ring),
        Err(ProtocolError::BadSignature { .. })
    ));
}

#[test]
fn replayed_nonce_is_refused() {
    let key = random_es256();
    let ring = JobKeyring::single("k1", key.verifying_key());
    let job = verify(&envelope_bytes(&key, &sample_job(JobKind::New)), &ring).unwrap();

    let mut seen: HashSet<Nonce> = HashSet::new();
    check_nonce(&job, &seen).unwrap();
    seen.insert(job.nonce.clone());
    assert_eq!(
        check_nonce(&job, &seen).unwrap_err(),
        ProtocolError::Replay {
            job_id: job.job_id.to_string()
        }
    );
    let tree: BTreeSet<Nonce> = seen.into_iter().collect();
    assert!(check_nonce(&job, &tree).is_err());
    assert!(check_nonce(&job, &|n: &Nonce| n.as_str().starts_with("n0nce")).is_err());
    assert!(check_nonce(&job, &|_: &Nonce| false).is_ok());
}

#[test]
fn keys_load_from_pem_and_der() {
    use p256::pkcs8::EncodePublicKey;
    let JobSigningKey::Es256(sk) = random_es256() else {
        unreachable!()
    };
    let pem = sk
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .unwrap();
    let key = JobVerifyingKey::from_public_key_pem(&pem).unwrap();
    assert_eq!(key, JobVerifyingKey::P256(*sk.verifying_key()));
    let der = sk.verifying_key().to_public_key_der().unwrap();
    assert!(JobVerifyingKey::from_public_key_der(der.as_bytes()).is_ok());
    assert!(matches!(
        JobVerifyingKey::from_public_key_der(b"garbage"),
        Err(ProtocolError::Key { .. })
    ));
    let debug = format!("{:?}", JobSigningKey::Es256(sk));
    assert!(debug.contains("<secret>"));
}
