//! SM2 certificates and chains (SM2-with-SM3, GM/T 0010 keys) under the same checks as P-256
//! and RSA: accepted when right, refused with the same variants when not.

use super::*;

fn sm2_token_key() -> SubjectPublicKeyInfoOwned {
    spki(sm2_key(SignerId::DEFAULT.as_str()).1.verifying_key())
}

#[test]
fn good_sm2_certificates_from_an_sm2_root_and_through_an_sm2_intermediate() {
    let key = sm2_token_key();
    assert_eq!(key_algorithm(&key), Some(KeyAlgorithm::Sm2));
    let root = Ca::sm2("SM2 Root CA");
    let sub = root.subordinate("SM2 Issuing CA");
    for label in KeyLabel::ALL {
        let direct = root.issue(label, &key);
        let ok = check(label, &direct, &key, &[], &root.anchors()).unwrap();
        assert_eq!(ok.certificate().signature_algorithm(), &sm2::sm2_with_sm3());
        let below = sub.issue(label, &key);
        check(label, &below, &key, &[sub.der()], &root.anchors()).unwrap();
    }
    // The encryption key enciphers (SM2 public-key encryption), it does not agree keys.
    let enc = root.issue(KeyLabel::Encryption, &key);
    let usage = check(KeyLabel::Encryption, &enc, &key, &[], &root.anchors()).unwrap();
    let ku = usage
        .certificate()
        .tbs_certificate()
        .get_extension::<KeyUsage>()
        .unwrap()
        .unwrap()
        .1;
    assert!(ku.key_encipherment() && ku.data_encipherment() && !ku.key_agreement());
}

#[test]
fn an_sm2_certificate_for_another_key_or_usage_is_refused() {
    let root = Ca::sm2("SM2 Root CA");
    let token_key = sm2_token_key();
    let other = sm2_token_key();
    let der = root.issue(KeyLabel::SealLegal, &other);
    assert!(matches!(
        check(KeyLabel::SealLegal, &der, &token_key, &[], &root.anchors()),
        Err(CertError::PublicKeyMismatch { .. })
    ));
    // The encryption certificate with the seals' usage.
    let now = SystemTime::now();
    let der = root.issue_with(
        KeyLabel::Encryption,
        KeyLabel::SealOfficial,
        &data(),
        &token_key,
        validity(now - DAY, now + 365 * DAY),
    );
    assert_eq!(
        check(KeyLabel::Encryption, &der, &token_key, &[], &root.anchors()).unwrap_err(),
        CertError::KeyUsageMismatch {
            label: KeyLabel::Encryption,
            expected: "keyEncipherment, dataEncipherment".into(),
            found: "digitalSignature, nonRepudiation".into(),
        }
    );
}

#[test]
fn a_certificate_signed_with_another_signer_id_is_refused() {
    // The CA's key, but signing with ID "ca@example.cn": Z differs, so the signature does not
    // verify with the default ID certificates are checked with.
    let (secret, default_key) = sm2_key(SignerId::DEFAULT.as_str());
    let root = Ca::root("SM2 Root CA", CaKey::Sm2(default_key));
    let other_id = ::sm2::dsa::SigningKey::new("ca@example.cn", &secret).unwrap();
    let impostor = Ca {
        key: CaKey::Sm2(Box::new(other_id)),
        cert: root.cert.clone(),
    };
    let key = sm2_token_key();
    let der = impostor.issue(KeyLabel::SealOfficial, &key);
    assert!(matches!(
        check(KeyLabel::SealOfficial, &der, &key, &[], &root.anchors()),
        Err(CertError::BadSignature { .. })
    ));
    // The same certificate from the default-ID key passes.
    let der = root.issue(KeyLabel::SealOfficial, &key);
    check(KeyLabel::SealOfficial, &der, &key, &[], &root.anchors()).unwrap();
}

#[test]
fn a_raw_r_s_signature_is_not_x509s_and_is_refused() {
    let root = Ca::sm2("SM2 Root CA");
    let key = sm2_token_key();
    let der = root.issue(KeyLabel::SealOfficial, &key);
    let cert = Certificate::from_der(&der).unwrap();
    let signature = ::sm2::dsa::Signature::from_der(cert.signature().raw_bytes()).unwrap();
    // The same certificate with the signature as raw r||s (64 bytes) instead of DER.
    #[derive(der::Sequence)]
    struct Raw {
        tbs: der::asn1::Any,
        algorithm: AlgorithmIdentifierOwned,
        signature: der::asn1::BitString,
    }
    let raw = Raw {
        tbs: der::asn1::Any::from_der(&cert.tbs_certificate().to_der().unwrap()).unwrap(),
        algorithm: cert.signature_algorithm().clone(),
        signature: der::asn1::BitString::from_bytes(&signature.to_vec()).unwrap(),
    };
    let raw = raw.to_der().unwrap();
    assert!(Certificate::from_der(&raw).is_ok());
    assert!(matches!(
        check(KeyLabel::SealOfficial, &raw, &key, &[], &root.anchors()),
        Err(CertError::BadSignature { .. })
    ));
}

#[test]
fn sm2_chains_get_the_chain_checks() {
    let root = Ca::sm2("SM2 Root CA");
    let now = SystemTime::now();
    let key = sm2_token_key();
    // No keyCertSign on the intermediate.
    let shape = CaShape {
        usage: KeyUsages::DigitalSignature,
        ..CaShape::default()
    };
    let sub = root.subordinate_with(
        "SM2 Issuing CA",
        shape,
        validity(now - DAY, now + 900 * DAY),
    );
    let der = sub.issue(KeyLabel::SealOfficial, &key);
    assert!(matches!(
        check(
            KeyLabel::SealOfficial,
            &der,
            &key,
            &[sub.der()],
            &root.anchors()
        ),
        Err(CertError::IntermediateKeyUsage { .. })
    ));
    // An expired intermediate.
    let sub = root.subordinate_with(
        "SM2 Issuing CA",
        CaShape::default(),
        validity(now - 400 * DAY, now - DAY),
    );
    let der = sub.issue(KeyLabel::SealOfficial, &key);
    assert!(matches!(
        check(
            KeyLabel::SealOfficial,
            &der,
            &key,
            &[sub.der()],
            &root.anchors()
        ),
        Err(CertError::IntermediateNotValid { .. })
    ));
    // A root that allows no intermediate below it.
    let strict = Ca::root_with(
        "SM2 Strict Root",
        CaKey::Sm2(sm2_key(SignerId::DEFAULT.as_str()).1),
        CaShape {
            path_len: Some(0),
            ..CaShape::default()
        },
        validity(now - DAY, now + 3650 * DAY),
    );
    let sub = strict.subordinate("SM2 Issuing CA");
    let der = sub.issue(KeyLabel::SealOfficial, &key);
    assert!(matches!(
        check(
            KeyLabel::SealOfficial,
            &der,
            &key,
            &[sub.der()],
            &strict.anchors()
        ),
        Err(CertError::PathLengthExceeded {
            path_len: 0,
            below: 1,
            ..
        })
    ));
    // An unknown critical extension in the intermediate.
    let sub = root.subordinate_with(
        "SM2 Issuing CA",
        CaShape {
            unknown_critical: true,
            ..CaShape::default()
        },
        validity(now - DAY, now + 900 * DAY),
    );
    let der = sub.issue(KeyLabel::SealOfficial, &key);
    assert!(matches!(
        check(
            KeyLabel::SealOfficial,
            &der,
            &key,
            &[sub.der()],
            &root.anchors()
        ),
        Err(CertError::UnknownCriticalExtension { .. })
    ));
    // An SM2 leaf under a P-256 root is fine too (the algorithms are per certificate).
    let p256_root = Ca::p256("P-256 Root");
    let der = p256_root.issue(KeyLabel::SealOfficial, &key);
    check(
        KeyLabel::SealOfficial,
        &der,
        &key,
        &[],
        &p256_root.anchors(),
    )
    .unwrap();
}
