//! Refusals of the chain's own checks and of the job's validity: each bad chain is built
//! here with x509-cert.

use super::*;

/// A seal certificate issued by `sub` and its key, for the chain refusals below.
fn leaf_under(sub: &Ca) -> (Vec<u8>, SubjectPublicKeyInfoOwned) {
    let key = spki(p256_key().verifying_key());
    (sub.issue(KeyLabel::SealOfficial, &key), key)
}

#[test]
fn an_intermediate_outside_its_validity_is_refused() {
    let root = Ca::p256("Root CA");
    let now = SystemTime::now();
    for (name, window) in [
        ("expired", validity(now - 400 * DAY, now - DAY)),
        ("not yet valid", validity(now + DAY, now + 400 * DAY)),
    ] {
        let sub = root.subordinate_with("Issuing CA", CaShape::default(), window);
        let (der, key) = leaf_under(&sub);
        let err = check(
            KeyLabel::SealOfficial,
            &der,
            &key,
            &[sub.der()],
            &root.anchors(),
        )
        .unwrap_err();
        assert!(
            matches!(err, CertError::IntermediateNotValid { ref subject, .. }
                if subject.contains("Issuing CA")),
            "{name}: {err}"
        );
        assert!(err.to_string().contains("intermediate"), "{err}");
    }
}

#[test]
fn an_intermediate_without_key_cert_sign_is_refused() {
    let root = Ca::p256("Root CA");
    let now = SystemTime::now();
    let shape = CaShape {
        usage: KeyUsages::DigitalSignature,
        ..CaShape::default()
    };
    let sub = root.subordinate_with("Issuing CA", shape, validity(now - DAY, now + 900 * DAY));
    let (der, key) = leaf_under(&sub);
    let err = check(
        KeyLabel::SealOfficial,
        &der,
        &key,
        &[sub.der()],
        &root.anchors(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        CertError::IntermediateKeyUsage {
            label: KeyLabel::SealOfficial,
            subject: "CN=Issuing CA,O=Test CA,C=CN".into(),
        }
    );
}

#[test]
fn a_violated_path_length_is_refused() {
    let now = SystemTime::now();
    let window = || validity(now - DAY, now + 900 * DAY);
    let zero = CaShape {
        path_len: Some(0),
        ..CaShape::default()
    };
    // The anchor allows no intermediate below it, yet one is there.
    let root = Ca::root_with("Root CA", CaKey::P256(p256_key()), zero, window());
    let sub = root.subordinate("Issuing CA");
    let (der, key) = leaf_under(&sub);
    let err = check(
        KeyLabel::SealOfficial,
        &der,
        &key,
        &[sub.der()],
        &root.anchors(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        CertError::PathLengthExceeded {
            label: KeyLabel::SealOfficial,
            subject: "CN=Root CA,O=Test CA,C=CN".into(),
            path_len: 0,
            below: 1,
        }
    );
    // An intermediate that allows none below it, with one below it.
    let root = Ca::p256("Root CA");
    let upper = root.subordinate_with("Policy CA", zero, window());
    let lower = upper.subordinate("Issuing CA");
    let (der, key) = leaf_under(&lower);
    let chain = [lower.der(), upper.der()];
    let err = check(KeyLabel::SealOfficial, &der, &key, &chain, &root.anchors()).unwrap_err();
    assert!(
        matches!(err, CertError::PathLengthExceeded { ref subject, path_len: 0, below: 1, .. }
            if subject.contains("Policy CA")),
        "{err}"
    );
    // Within the limit: path length 1 with one intermediate below.
    let one = CaShape {
        path_len: Some(1),
        ..CaShape::default()
    };
    let upper = root.subordinate_with("Policy CA", one, window());
    let lower = upper.subordinate("Issuing CA");
    let (der, key) = leaf_under(&lower);
    let chain = [lower.der(), upper.der()];
    check(KeyLabel::SealOfficial, &der, &key, &chain, &root.anchors()).unwrap();
}

#[test]
fn an_expired_anchor_is_refused() {
    let now = SystemTime::now();
    let root = Ca::root_with(
        "Old Root CA",
        CaKey::P256(p256_key()),
        CaShape::default(),
        validity(now - 4000 * DAY, now - DAY),
    );
    let key = spki(p256_key().verifying_key());
    let der = root.issue(KeyLabel::Encryption, &key);
    let err = check(KeyLabel::Encryption, &der, &key, &[], &root.anchors()).unwrap_err();
    assert!(
        matches!(err, CertError::AnchorNotValid { ref subject, .. }
            if subject.contains("Old Root CA")),
        "{err}"
    );
    assert!(err.to_string().contains("configured CA"), "{err}");
}

#[test]
fn an_unknown_critical_extension_is_refused_in_the_leaf_and_in_an_intermediate() {
    let root = Ca::p256("Root CA");
    let key = spki(p256_key().verifying_key());
    let now = SystemTime::now();
    let label = KeyLabel::SealLegal;
    let leaf_with = |critical: bool| {
        let profile = UkeyProfile::new(
            label,
            key_algorithm(&key).unwrap(),
            &data(),
            root.cert.tbs_certificate().subject().clone(),
        )
        .unwrap();
        let profile = WithExtension(profile, unknown_extension(critical));
        let window = validity(now - DAY, now + 365 * DAY);
        Ca::build(&root.key, profile, 78, window, key.clone())
            .to_der()
            .unwrap()
    };
    // The same extension, not critical, may be ignored.
    check(label, &leaf_with(false), &key, &[], &root.anchors()).unwrap();
    let err = check(label, &leaf_with(true), &key, &[], &root.anchors()).unwrap_err();
    assert_eq!(
        err,
        CertError::UnknownCriticalExtension {
            label,
            subject: data().subject(label).unwrap().to_string(),
            oid: "1.3.6.1.4.1.55555.1.1".into(),
        }
    );

    let shape = CaShape {
        unknown_critical: true,
        ..CaShape::default()
    };
    let sub = root.subordinate_with("Issuing CA", shape, validity(now - DAY, now + 900 * DAY));
    let (der, key) = leaf_under(&sub);
    let err = check(
        KeyLabel::SealOfficial,
        &der,
        &key,
        &[sub.der()],
        &root.anchors(),
    )
    .unwrap_err();
    assert!(
        matches!(err, CertError::UnknownCriticalExtension { ref subject, ref oid, .. }
            if subject.contains("Issuing CA") && oid == "1.3.6.1.4.1.55555.1.1"),
        "{err}"
    );
}

#[test]
fn a_validity_other_than_the_jobs_is_refused_beyond_a_day() {
    let ca = Ca::p256("CA");
    let key = spki(p256_key().verifying_key());
    let now = SystemTime::now();
    let label = KeyLabel::SealOfficial;
    let issue = |from, to| ca.issue_with(label, label, &data(), &key, validity(from, to));
    // A minute of backdating, and a day's rounding, are within the tolerance.
    let backdated = issue(now - Duration::from_secs(60), now + 730 * DAY);
    check_days(label, &backdated, &key, &[], &ca.anchors(), 730).unwrap();
    let rounded = issue(now - DAY, now + 730 * DAY);
    check_days(label, &rounded, &key, &[], &ca.anchors(), 730).unwrap();
    // A year where the job asked for two, and two where it asked for one.
    for (days, asked) in [(365, 730), (730, 365)] {
        let der = issue(now - Duration::from_secs(60), now + days * DAY);
        let err = check_days(label, &der, &key, &[], &ca.anchors(), asked).unwrap_err();
        assert!(
            matches!(err, CertError::ValidityDaysMismatch { expected_days, hours, .. }
                if expected_days == asked && hours / 24 == u64::from(days)),
            "{err}"
        );
    }
    // Two days too many is beyond the tolerance.
    let der = issue(now, now + 367 * DAY);
    assert!(matches!(
        check_days(label, &der, &key, &[], &ca.anchors(), 365),
        Err(CertError::ValidityDaysMismatch { .. })
    ));
}
