#![allow(clippy::unwrap_used, clippy::expect_used)]
use time::macros::datetime;

use super::*;

fn sample() -> Receipt {
    let t0 = datetime!(2026-12-07 02:00:00 UTC);
    Receipt {
        v: V1,
        receipt_id: EventId::new("r-0001").unwrap(),
        station_id: StationId::new("desk-01").unwrap(),
        job_id: JobId::new("J-0001").unwrap(),
        kind: JobKind::New,
        outcome: ReceiptOutcome::Succeeded,
        token_serial: TokenSerial::new("UK0001").unwrap(),
        token_model: "sim-ukey".to_owned(),
        position: Some(2),
        operator: Some("staff-7".to_owned()),
        steps: vec![ReceiptStep {
            step: Step::Initialize,
            started_at: t0,
            ended_at: t0 + time::Duration::seconds(2),
            ok: true,
        }],
        keys: vec![ReceiptKey {
            label: KeyLabel::SealOfficial,
            algorithm: KeyAlgorithm::P256,
            origin: KeyOrigin::Generated,
            attributes: KeyAttributes {
                token: true,
                private: true,
                sensitive: true,
                extractable: false,
                local: true,
                always_sensitive: true,
                never_extractable: true,
            },
        }],
        certificates: vec![ReceiptCertificate {
            label: KeyLabel::SealOfficial,
            serial: "01ab".to_owned(),
            sha256: "a".repeat(64),
        }],
        self_test: Some(SelfTestResult {
            passed: true,
            detail: None,
        }),
        agent_version: "0.1.0".to_owned(),
        made_at: t0 + time::Duration::seconds(10),
    }
}

fn p256_key(byte: u8) -> UnsealKey {
    UnsealKey::P256(p256::SecretKey::from_slice(&[byte; 32]).unwrap())
}

fn rsa_key() -> UnsealKey {
    let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
    UnsealKey::Rsa(Box::new(rsa::PrivateKey::new(&mut rng, 2048).unwrap()))
}

#[test]
fn es256_round_trip_and_jws_shape() {
    let key = p256_key(0x22);
    let signer = ReceiptSigner::new(&key).unwrap();
    let signed = SignedReceipt::sign(&sample(), &signer).unwrap();
    let wire = signed.encode().unwrap();
    let value: serde_json::Value = serde_json::from_slice(&wire).unwrap();
    let members: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(members, ["payload", "protected", "signature"]);
    let header = URL_SAFE_NO_PAD
        .decode(value["protected"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(header).unwrap(),
        format!(
            r#"{{"alg":"ES256","kid":"{}","typ":"ukey-receipt+jws"}}"#,
            signer.key_id()
        )
    );
    // ES256 signatures are the fixed 64-byte r ‖ s.
    let sig = URL_SAFE_NO_PAD
        .decode(value["signature"].as_str().unwrap())
        .unwrap();
    assert_eq!(sig.len(), 64);
    let verifier = ReceiptVerifier::new(key.recipient()).unwrap();
    let back = SignedReceipt::decode(&wire)
        .unwrap()
        .verify(&verifier)
        .unwrap();
    assert_eq!(back, sample());
}

#[test]
fn ps256_round_trip() {
    let key = rsa_key();
    let signed = SignedReceipt::sign(&sample(), &ReceiptSigner::new(&key).unwrap()).unwrap();
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&signed.protected).unwrap()).unwrap();
    assert_eq!(header["alg"], "PS256");
    let verifier = ReceiptVerifier::new(key.recipient()).unwrap();
    assert_eq!(signed.verify(&verifier).unwrap(), sample());
    // Another P-256 key does not verify it: unknown kid.
    let other = ReceiptVerifier::new(p256_key(0x33).recipient()).unwrap();
    assert!(matches!(
        signed.verify(&other),
        Err(ProtocolError::UnknownKeyId { .. })
    ));
}

#[test]
fn tampering_is_a_bad_signature() {
    let key = p256_key(0x22);
    let verifier = ReceiptVerifier::new(key.recipient()).unwrap();
    let signed = SignedReceipt::sign(&sample(), &ReceiptSigner::new(&key).unwrap()).unwrap();

    let mut other = sample();
    other.token_serial = TokenSerial::new("UK0002").unwrap();
    let mut forged = signed.clone();
    forged.payload = URL_SAFE_NO_PAD.encode(other.encode().unwrap());
    assert!(matches!(
        forged.verify(&verifier),
        Err(ProtocolError::BadSignature { .. })
    ));

    let mut flipped = signed.clone();
    let mut sig = URL_SAFE_NO_PAD.decode(&flipped.signature).unwrap();
    sig[5] ^= 1;
    flipped.signature = URL_SAFE_NO_PAD.encode(sig);
    assert!(matches!(
        flipped.verify(&verifier),
        Err(ProtocolError::BadSignature { .. })
    ));

    // A key of another station under this station's kid: still refused.
    let mut wrong_key =
        SignedReceipt::sign(&sample(), &ReceiptSigner::new(&p256_key(0x44)).unwrap()).unwrap();
    wrong_key.protected = signed.protected.clone();
    assert!(matches!(
        wrong_key.verify(&verifier),
        Err(ProtocolError::BadSignature { .. })
    ));
}

#[test]
fn another_typ_is_refused() {
    let key = p256_key(0x22);
    let signer = ReceiptSigner::new(&key).unwrap();
    let header = format!(
        r#"{{"alg":"ES256","kid":"{}","typ":"ukey-job+jws"}}"#,
        signer.key_id()
    );
    let protected = URL_SAFE_NO_PAD.encode(header);
    let payload = URL_SAFE_NO_PAD.encode(sample().encode().unwrap());
    let signature = URL_SAFE_NO_PAD.encode(
        signer
            .sign(signing_input(&protected, &payload).as_bytes())
            .unwrap(),
    );
    let jws = SignedReceipt {
        protected,
        payload,
        signature,
    };
    let e = jws
        .verify(&ReceiptVerifier::new(key.recipient()).unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("typ"), "{e}");
}

#[test]
fn validation_names_the_field() {
    let field = |r: Receipt| match r.validate() {
        Err(ProtocolError::Invalid { path, .. }) => path,
        other => panic!("{other:?}"),
    };
    let mut r = sample();
    r.operator = Some("call 13800138000".to_owned());
    assert_eq!(field(r), "operator");
    let mut r = sample();
    r.self_test = Some(SelfTestResult {
        passed: false,
        detail: Some("id 11010519491231002X".to_owned()),
    });
    assert_eq!(field(r), "self_test.detail");
    let mut r = sample();
    r.certificates[0].sha256 = "A".repeat(64);
    assert_eq!(field(r), "certificates[0].sha256");
    let mut r = sample();
    r.certificates[0].serial = "0".repeat(41);
    assert_eq!(field(r), "certificates[0].serial");
    let mut r = sample();
    r.steps[0].ended_at = r.steps[0].started_at - time::Duration::seconds(1);
    assert_eq!(field(r), "steps[0].ended_at");
    let mut r = sample();
    r.steps = vec![r.steps[0].clone(); MAX_STEPS + 1];
    assert_eq!(field(r), "steps");
    let mut r = sample();
    r.token_model = " padded".to_owned();
    assert_eq!(field(r), "token_model");
}

#[test]
fn largest_receipt_fits_its_bounds() {
    let mut r = sample();
    r.token_model = "m".repeat(MAX_TEXT_CHARS);
    r.operator = Some("o".repeat(MAX_TEXT_CHARS));
    r.agent_version = "v".repeat(MAX_TEXT_CHARS);
    r.steps = vec![r.steps[0].clone(); MAX_STEPS];
    r.keys = vec![r.keys[0].clone(); MAX_ITEMS];
    r.certificates = vec![
        ReceiptCertificate {
            label: KeyLabel::SealOfficial,
            serial: "f".repeat(MAX_SERIAL_HEX),
            sha256: "f".repeat(64),
        };
        MAX_ITEMS
    ];
    r.self_test = Some(SelfTestResult {
        passed: false,
        detail: Some("d".repeat(MAX_TEXT_CHARS)),
    });
    let signed = SignedReceipt::sign(&r, &ReceiptSigner::new(&rsa_key()).unwrap()).unwrap();
    assert!(signed.encode().unwrap().len() <= SignedReceipt::MAX_BYTES);
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let big = vec![b' '; SignedReceipt::MAX_BYTES + 1];
    assert!(matches!(
        SignedReceipt::decode(&big),
        Err(ProtocolError::TooLarge { .. })
    ));
}
