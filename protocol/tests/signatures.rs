//! Signed jobs with real generated keys: good (ES256, RS256, PS256), tampered, wrong key,
//! unknown key id, algorithm/key mismatch, expired, not yet valid, foreign station, replayed
//! nonce, the "exact bytes as received" rule; acks, cancels and certificate responses signed,
//! unsigned, forged and of the wrong kind.
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

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64url(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

/// Rewrites one member (`protected` or `payload`) of a JWS: decodes it, replaces `from` by
/// `to` (which must occur), encodes it again; the signature is left as it was.
fn tamper(bytes: &[u8], member: &str, from: &str, to: &str) -> Vec<u8> {
    let mut jws: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    let text = String::from_utf8(unb64url(jws[member].as_str().unwrap())).unwrap();
    assert!(text.contains(from), "{member} has no {from}");
    jws[member] = serde_json::Value::String(b64url(text.replacen(from, to, 1).as_bytes()));
    serde_json::to_vec(&jws).unwrap()
}

#[test]
fn es256_good_tampered_and_wrong_key() {
    let key = random_es256();
    let ring = JobKeyring::single("k1", key.verifying_key());
    let job = sample_job(JobKind::New);
    let bytes = envelope_bytes(&key, &job);
    assert_eq!(verify(&bytes, &ring).unwrap(), job);

    // Tampered: one character of the signed job changed (the order number).
    let tampered = tamper(&bytes, "payload", "PO-2025-000123", "PO-2025-000124");
    assert_eq!(
        verify(&tampered, &ring).unwrap_err(),
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

    // Re-formatting the job (same JSON value) breaks the signature: bytes are what count.
    let spaced = tamper(&bytes, "payload", "\"kind\":\"new\"", "\"kind\": \"new\"");
    assert!(matches!(
        verify(&spaced, &ring),
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
    let protected = b64url(br#"{"typ":"ukey-job+jws","alg":"ES256","kid":"k1"}"#);
    let payload = b64url(pretty.as_bytes());
    let sig: p256::ecdsa::Signature =
        signature::Signer::sign(sk, format!("{protected}.{payload}").as_bytes());
    let envelope = format!(
        r#"{{ "signature": "{}", "payload": "{payload}", "protected": "{protected}" }}"#,
        b64url(&sig.to_bytes())
    );
    let decoded = JobEnvelope::decode(envelope.as_bytes()).unwrap();
    assert_eq!(decoded.job_bytes(), pretty.as_bytes());
    assert_eq!(decoded.verify(&ring, &station(), NOW).unwrap(), job);
}

#[test]
fn signed_messages_of_one_kind_never_pass_as_another() {
    let key = random_es256();
    let ring = JobKeyring::single("k1", key.verifying_key());
    // A correctly signed ack is not a job, and a job is not an ack.
    let ack = sign_platform_message(&sample_ack(), &key, "k1").unwrap();
    assert_eq!(
        verify(&ack, &ring).unwrap_err(),
        ProtocolError::WrongMessageType {
            expected: "ukey-job+jws",
            got: "ukey-ack+jws".into()
        }
    );
    let job = envelope_bytes(&key, &sample_job(JobKind::New));
    assert!(matches!(
        verify_platform_message::<Ack>(&job, &ring, &station()),
        Err(ProtocolError::WrongMessageType { .. })
    ));
    // Rewriting the header's `typ` breaks the signature.
    let retyped = tamper(&ack, "protected", "ukey-ack+jws", "ukey-job+jws");
    assert!(matches!(
        verify(&retyped, &ring),
        Err(ProtocolError::BadSignature { .. })
    ));
}

#[test]
fn acks_cancels_and_cert_responses_are_verified() {
    let key = random_es256();
    let ring = JobKeyring::single("k1", key.verifying_key());
    let station = station();

    let ack = sign_platform_message(&sample_ack(), &key, "k1").unwrap();
    assert_eq!(
        verify_platform_message::<Ack>(&ack, &ring, &station).unwrap(),
        sample_ack()
    );
    let cancel = sign_platform_message(&sample_cancel(), &key, "k1").unwrap();
    assert_eq!(
        verify_platform_message::<Cancel>(&cancel, &ring, &station).unwrap(),
        sample_cancel()
    );
    let certs = sign_platform_message(&sample_certs_rejected(), &key, "k1").unwrap();
    assert_eq!(
        verify_platform_message::<CertResponse>(&certs, &ring, &station).unwrap(),
        sample_certs_rejected()
    );

    // Unsigned (the plain message), signed by a key the station does not trust, tampered,
    // or meant for another station: all refused.
    let plain = sample_ack().encode().unwrap();
    assert_eq!(
        verify_platform_message::<Ack>(&plain, &ring, &station).unwrap_err(),
        ProtocolError::Unsigned { message: "ack" }
    );
    let forger = random_es256();
    let forged = sign_platform_message(&sample_cancel(), &forger, "k1").unwrap();
    assert_eq!(
        verify_platform_message::<Cancel>(&forged, &ring, &station).unwrap_err(),
        ProtocolError::BadSignature {
            key_id: "k1".into()
        }
    );
    let tampered = tamper(&ack, "payload", "E-", "F-");
    assert!(matches!(
        verify_platform_message::<Ack>(&tampered, &ring, &station),
        Err(ProtocolError::BadSignature { .. })
    ));
    let other = StationId::new("desk-02").unwrap();
    assert_eq!(
        verify_platform_message::<CertResponse>(&certs, &ring, &other).unwrap_err(),
        ProtocolError::OtherStation {
            message: "certificate response",
            expected: "desk-02".into(),
            got: STATION.into()
        }
    );
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
        let tampered = tamper(
            &bytes,
            "payload",
            "\"validity_days\":365",
            "\"validity_days\":730",
        );
        assert!(matches!(
            verify(&tampered, &ring),
            Err(ProtocolError::BadSignature { .. })
        ));
    }
    // RS256 and PS256 are not interchangeable.
    let ring = JobKeyring::single("k1", JobSigningKey::Rs256(rsa_key.clone()).verifying_key());
    let pss = envelope_bytes(&JobSigningKey::Ps256(rsa_key), &job);
    let text = tamper(&pss, "protected", "PS256", "RS256");
    assert!(matches!(
        verify(&text, &ring),
        Err(ProtocolError::BadSignature { .. })
    ));
}

#[test]
fn algorithm_must_fit_the_key() {
    let ec = random_es256();
    let bytes = envelope_bytes(&ec, &sample_job(JobKind::New));
    let text = tamper(&bytes, "protected", "ES256", "RS256");
    let ring = JobKeyring::single("k1", ec.verifying_key());
    assert_eq!(
        verify(&text, &ring).unwrap_err(),
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
    let text = tamper(
        &bytes,
        "payload",
        "91110108MA01ABCD1E",
        "91110108MA01ABCD1F",
    );
    assert!(matches!(
        verify(&text, &ring),
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
