#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use p256::elliptic_curve::Generate;
use ukey_protocol::profile::UkeyProfile;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::certificate::TbsCertificate;
use x509_cert::ext::pkix::{KeyUsages, SubjectKeyIdentifier};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{EncodePublicKey, SubjectPublicKeyInfoRef};
use x509_cert::time::{Time, Validity};

const DAY: Duration = Duration::from_secs(86_400);

fn data() -> SubjectData {
    SubjectData {
        company_name: "深圳示例电子有限公司".into(),
        credit_code: "91440300MA5ABCDE1F".into(),
        legal_representative: "王五".into(),
    }
}

fn spki(key: &impl EncodePublicKey) -> SubjectPublicKeyInfoOwned {
    SubjectPublicKeyInfoOwned::from_der(key.to_public_key_der().unwrap().as_bytes()).unwrap()
}

fn p256_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::generate_from_rng(&mut rand::rng())
}

/// A CA profile (self-signed root or intermediate): cA=true, keyCertSign unless a test
/// takes it away, optionally a path length and an extension no verifier knows.
struct CaProfile {
    subject: Name,
    issuer: Name,
    shape: CaShape,
}

/// What a test changes in a CA certificate.
#[derive(Clone, Copy)]
struct CaShape {
    usage: KeyUsages,
    path_len: Option<u8>,
    unknown_critical: bool,
}

impl Default for CaShape {
    fn default() -> Self {
        CaShape {
            usage: KeyUsages::KeyCertSign,
            path_len: None,
            unknown_critical: false,
        }
    }
}

/// An extension under a private-enterprise OID that no verifier understands.
fn unknown_extension(critical: bool) -> Extension {
    Extension {
        extn_id: ObjectIdentifier::new_unwrap("1.3.6.1.4.1.55555.1.1"),
        critical,
        extn_value: der::asn1::OctetString::new(vec![0x05, 0x00]).unwrap(),
    }
}

/// A leaf profile with an extra extension after the profile's own.
struct WithExtension(UkeyProfile, Extension);

impl BuilderProfile for WithExtension {
    fn get_issuer(&self, subject: &Name) -> Name {
        self.0.get_issuer(subject)
    }
    fn get_subject(&self) -> Name {
        self.0.get_subject()
    }
    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let mut ext = self.0.build_extensions(spk, issuer_spk, tbs)?;
        ext.push(self.1.clone());
        Ok(ext)
    }
}

impl BuilderProfile for CaProfile {
    fn get_issuer(&self, _: &Name) -> Name {
        self.issuer.clone()
    }
    fn get_subject(&self) -> Name {
        self.subject.clone()
    }
    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        _: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let mut ext = Vec::new();
        let bc = BasicConstraints {
            ca: true,
            path_len_constraint: self.shape.path_len,
        };
        ext.push(bc.to_extension(tbs.subject(), &ext)?);
        let ku = KeyUsage(self.shape.usage | KeyUsages::CRLSign);
        ext.push(ku.to_extension(tbs.subject(), &ext)?);
        ext.push(SubjectKeyIdentifier::try_from(spk)?.to_extension(tbs.subject(), &ext)?);
        if self.shape.unknown_critical {
            ext.push(unknown_extension(true));
        }
        Ok(ext)
    }
}

enum CaKey {
    P256(p256::ecdsa::SigningKey),
    Rsa(Box<rsa::pkcs1v15::SigningKey<Sha256>>),
    /// Signs with the ID it was made with (the default, unless a test says otherwise).
    Sm2(Box<::sm2::dsa::SigningKey>),
}

fn sm2_key(id: &str) -> (::sm2::SecretKey, Box<::sm2::dsa::SigningKey>) {
    let secret = ::sm2::SecretKey::generate_from_rng(&mut rand::rng());
    let key = ::sm2::dsa::SigningKey::new(id, &secret).unwrap();
    (secret, Box::new(key))
}

struct Ca {
    key: CaKey,
    cert: Certificate,
}

fn validity(from: SystemTime, to: SystemTime) -> Validity {
    Validity::new(Time::try_from(from).unwrap(), Time::try_from(to).unwrap())
}

impl Ca {
    fn name(cn: &str) -> Name {
        format!("CN={cn},O=Test CA,C=CN").parse().unwrap()
    }

    fn build<P: BuilderProfile>(
        signer: &CaKey,
        profile: P,
        serial: u32,
        validity: Validity,
        spki: SubjectPublicKeyInfoOwned,
    ) -> Certificate {
        let builder =
            CertificateBuilder::new(profile, SerialNumber::from(serial), validity, spki).unwrap();
        match signer {
            CaKey::P256(k) => builder.build::<_, p256::ecdsa::DerSignature>(k).unwrap(),
            CaKey::Rsa(k) => builder
                .build::<_, rsa::pkcs1v15::Signature>(k.as_ref())
                .unwrap(),
            CaKey::Sm2(k) => {
                // The sm2 signer's own signature encodes as raw r||s: X.509 wants DER.
                let mut builder = builder;
                let tbs = builder.finalize(k.as_ref()).unwrap();
                let signature: ::sm2::dsa::Signature = signature::Signer::sign(k.as_ref(), &tbs);
                let bits = der::asn1::BitString::from_bytes(signature.to_der().as_bytes()).unwrap();
                builder.assemble(bits, k.as_ref()).unwrap()
            }
        }
    }

    fn key_spki(key: &CaKey) -> SubjectPublicKeyInfoOwned {
        match key {
            CaKey::P256(k) => spki(k.verifying_key()),
            CaKey::Rsa(k) => spki(&signature::Keypair::verifying_key(k.as_ref())),
            CaKey::Sm2(k) => spki(k.verifying_key()),
        }
    }

    fn root(cn: &str, key: CaKey) -> Ca {
        let now = SystemTime::now();
        Ca::root_with(
            cn,
            key,
            CaShape::default(),
            validity(now - DAY, now + 3650 * DAY),
        )
    }

    fn root_with(cn: &str, key: CaKey, shape: CaShape, validity: Validity) -> Ca {
        let profile = CaProfile {
            subject: Ca::name(cn),
            issuer: Ca::name(cn),
            shape,
        };
        let cert = Ca::build(&key, profile, 1, validity, Ca::key_spki(&key));
        Ca { key, cert }
    }

    fn p256(cn: &str) -> Ca {
        Ca::root(cn, CaKey::P256(p256_key()))
    }

    fn rsa(cn: &str) -> Ca {
        let key = rsa::pkcs1v15::SigningKey::<Sha256>::random(&mut rand::rng(), 2048).unwrap();
        Ca::root(cn, CaKey::Rsa(Box::new(key)))
    }

    fn subordinate(&self, cn: &str) -> Ca {
        let now = SystemTime::now();
        self.subordinate_with(
            cn,
            CaShape::default(),
            validity(now - DAY, now + 1000 * DAY),
        )
    }

    fn sm2(cn: &str) -> Ca {
        Ca::root(cn, CaKey::Sm2(sm2_key(SignerId::DEFAULT.as_str()).1))
    }

    fn subordinate_with(&self, cn: &str, shape: CaShape, validity: Validity) -> Ca {
        // Under an SM2 CA, an SM2 intermediate: a 国密 chain is SM2 throughout.
        let key = match self.key {
            CaKey::Sm2(_) => CaKey::Sm2(sm2_key(SignerId::DEFAULT.as_str()).1),
            _ => CaKey::P256(p256_key()),
        };
        let profile = CaProfile {
            subject: Ca::name(cn),
            issuer: self.cert.tbs_certificate().subject().clone(),
            shape,
        };
        let cert = Ca::build(&self.key, profile, 2, validity, Ca::key_spki(&key));
        Ca { key, cert }
    }

    fn der(&self) -> Vec<u8> {
        self.cert.to_der().unwrap()
    }

    fn issue_with(
        &self,
        label: KeyLabel,
        usage_of: KeyLabel,
        subject: &SubjectData,
        key: &SubjectPublicKeyInfoOwned,
        validity: Validity,
    ) -> Vec<u8> {
        let alg = key_algorithm(key).unwrap();
        let mut profile = UkeyProfile::new(
            usage_of,
            alg,
            subject,
            self.cert.tbs_certificate().subject().clone(),
        )
        .unwrap();
        if usage_of != label {
            // Same key usage as `usage_of`, subject of `label`.
            let right = UkeyProfile::new(label, alg, subject, Name::default()).unwrap();
            profile = UkeyProfile::with_subject(profile, right.get_subject());
        }
        Ca::build(&self.key, profile, 77, validity, key.clone())
            .to_der()
            .unwrap()
    }

    fn issue(&self, label: KeyLabel, key: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
        let now = SystemTime::now();
        self.issue_with(
            label,
            label,
            &data(),
            key,
            validity(now - DAY, now + 365 * DAY),
        )
    }

    fn anchors(&self) -> TrustAnchors {
        TrustAnchors::from_der([self.cert.to_der().unwrap()]).unwrap()
    }
}

fn check(
    label: KeyLabel,
    der: &[u8],
    key: &SubjectPublicKeyInfoOwned,
    intermediates: &[Vec<u8>],
    anchors: &TrustAnchors,
) -> Result<VerifiedCertificate, CertError> {
    check_days(label, der, key, intermediates, anchors, 365)
}

/// [`check`] for a job that asked for `validity_days`.
fn check_days(
    label: KeyLabel,
    der: &[u8],
    key: &SubjectPublicKeyInfoOwned,
    intermediates: &[Vec<u8>],
    anchors: &TrustAnchors,
    validity_days: u32,
) -> Result<VerifiedCertificate, CertError> {
    let data = data();
    verify_certificate(
        der,
        intermediates,
        &Expected {
            label,
            token_key: key,
            subject: &data,
            validity_days,
        },
        anchors,
        &ValidityPolicy::default(),
        SystemTime::now(),
    )
}

#[test]
fn good_certificates_from_p256_and_rsa_cas() {
    let key = spki(p256_key().verifying_key());
    for ca in [Ca::p256("P-256 CA"), Ca::rsa("RSA CA")] {
        for label in KeyLabel::ALL {
            let der = ca.issue(label, &key);
            let ok = check(label, &der, &key, &[], &ca.anchors()).unwrap();
            assert_eq!(ok.label(), label);
            assert_eq!(ok.der(), der.as_slice());
            assert_eq!(ok.fingerprint_sha256(), fingerprint_sha256(&der));
            let after = not_after(&der).unwrap();
            assert_eq!(ok.not_after(), after);
            assert!(after > SystemTime::now() + 360 * DAY);
        }
    }
}

#[test]
fn certificate_for_another_key_is_refused() {
    let ca = Ca::p256("CA");
    let token_key = spki(p256_key().verifying_key());
    let other = spki(p256_key().verifying_key());
    let der = ca.issue(KeyLabel::SealOfficial, &other);
    let err = check(KeyLabel::SealOfficial, &der, &token_key, &[], &ca.anchors()).unwrap_err();
    assert_eq!(
        err,
        CertError::PublicKeyMismatch {
            label: KeyLabel::SealOfficial,
            expected: spki_fingerprint_hex(&token_key),
            found: spki_fingerprint_hex(&other),
        }
    );
}

#[test]
fn wrong_subject_is_refused() {
    let ca = Ca::p256("CA");
    let key = spki(p256_key().verifying_key());
    let mut other = data();
    other.legal_representative = "赵六".into();
    let now = SystemTime::now();
    let der = ca.issue_with(
        KeyLabel::SealLegal,
        KeyLabel::SealLegal,
        &other,
        &key,
        validity(now - DAY, now + DAY),
    );
    match check(KeyLabel::SealLegal, &der, &key, &[], &ca.anchors()).unwrap_err() {
        CertError::SubjectMismatch {
            label,
            expected,
            found,
        } => {
            assert_eq!(label, KeyLabel::SealLegal);
            assert!(expected.contains("CN=王五"), "{expected}");
            assert!(found.contains("CN=赵六"), "{found}");
        }
        other => panic!("{other}"),
    }
    // The seal-official certificate presented as the legal representative's.
    let der = ca.issue(KeyLabel::SealOfficial, &key);
    assert!(matches!(
        check(KeyLabel::SealLegal, &der, &key, &[], &ca.anchors()),
        Err(CertError::SubjectMismatch { .. })
    ));
}

#[test]
fn wrong_key_usage_is_refused() {
    let ca = Ca::p256("CA");
    let key = spki(p256_key().verifying_key());
    let now = SystemTime::now();
    // A seal certificate carrying the encryption key's usage.
    let der = ca.issue_with(
        KeyLabel::SealOfficial,
        KeyLabel::Encryption,
        &data(),
        &key,
        validity(now - DAY, now + DAY),
    );
    assert_eq!(
        check(KeyLabel::SealOfficial, &der, &key, &[], &ca.anchors()).unwrap_err(),
        CertError::KeyUsageMismatch {
            label: KeyLabel::SealOfficial,
            expected: "digitalSignature, nonRepudiation".into(),
            found: "keyAgreement".into(),
        }
    );
}

#[test]
fn unknown_issuer_and_bad_signature_are_refused() {
    let ca = Ca::p256("Real CA");
    let stranger = Ca::p256("Stranger CA");
    let key = spki(p256_key().verifying_key());
    let der = stranger.issue(KeyLabel::Encryption, &key);
    assert_eq!(
        check(KeyLabel::Encryption, &der, &key, &[], &ca.anchors()).unwrap_err(),
        CertError::UnknownIssuer {
            label: KeyLabel::Encryption,
            issuer: "CN=Stranger CA,O=Test CA,C=CN".into(),
        }
    );
    // Same name as the configured CA, other key: the signature does not verify.
    let impostor = Ca::rsa("Real CA");
    let der = impostor.issue(KeyLabel::Encryption, &key);
    assert!(matches!(
        check(KeyLabel::Encryption, &der, &key, &[], &ca.anchors()).unwrap_err(),
        CertError::BadSignature { label: KeyLabel::Encryption, ref issuer, .. }
            if issuer == "CN=Real CA,O=Test CA,C=CN"
    ));
    // A flipped bit in the signed part.
    let mut der = ca.issue(KeyLabel::Encryption, &key);
    let spot = der.len() / 2;
    der[spot] ^= 0x01;
    assert!(check(KeyLabel::Encryption, &der, &key, &[], &ca.anchors()).is_err());
}

#[test]
fn expired_not_yet_valid_and_too_long_are_refused() {
    let ca = Ca::p256("CA");
    let key = spki(p256_key().verifying_key());
    let now = SystemTime::now();
    let label = KeyLabel::SealOfficial;
    let issue = |from, to| ca.issue_with(label, label, &data(), &key, validity(from, to));
    let expired = issue(now - 400 * DAY, now - DAY);
    assert!(matches!(
        check(label, &expired, &key, &[], &ca.anchors()),
        Err(CertError::Expired { .. })
    ));
    let future = issue(now + DAY, now + 400 * DAY);
    assert!(matches!(
        check(label, &future, &key, &[], &ca.anchors()),
        Err(CertError::NotYetValid { .. })
    ));
    // A little clock skew is fine.
    let skewed = issue(now + Duration::from_secs(60), now + 365 * DAY);
    check(label, &skewed, &key, &[], &ca.anchors()).unwrap();
    let long = issue(now - DAY, now + 30 * 366 * DAY);
    assert!(matches!(
        check(label, &long, &key, &[], &ca.anchors()),
        Err(CertError::ValidityTooLong { .. })
    ));
}

#[test]
fn chain_through_an_intermediate() {
    let root = Ca::rsa("Root CA");
    let sub = root.subordinate("Issuing CA");
    let key = spki(p256_key().verifying_key());
    let der = sub.issue(KeyLabel::SealLegal, &key);
    let chain = vec![sub.cert.to_der().unwrap()];
    check(KeyLabel::SealLegal, &der, &key, &chain, &root.anchors()).unwrap();
    assert!(matches!(
        check(KeyLabel::SealLegal, &der, &key, &[], &root.anchors()),
        Err(CertError::UnknownIssuer { .. })
    ));
    // A chain that does not lead to a configured anchor.
    let elsewhere = Ca::p256("Elsewhere CA");
    assert!(matches!(
        check(KeyLabel::SealLegal, &der, &key, &chain, &elsewhere.anchors()),
        Err(CertError::UnknownIssuer { ref issuer, .. }) if issuer.contains("Root CA")
    ));
    // The whole chain up to an untrusted self-signed root: unknown, not "too long".
    let full = vec![sub.cert.to_der().unwrap(), root.cert.to_der().unwrap()];
    assert!(matches!(
        check(KeyLabel::SealLegal, &der, &key, &full, &elsewhere.anchors()),
        Err(CertError::UnknownIssuer { ref issuer, .. }) if issuer.contains("Root CA")
    ));
}

#[test]
fn a_self_signed_stranger_root_sent_as_chain_is_an_unknown_issuer() {
    let ca = Ca::p256("Real CA");
    let stranger = Ca::p256("Stranger CA");
    let key = spki(p256_key().verifying_key());
    let der = stranger.issue(KeyLabel::Encryption, &key);
    let chain = vec![stranger.cert.to_der().unwrap()];
    assert_eq!(
        check(KeyLabel::Encryption, &der, &key, &chain, &ca.anchors()).unwrap_err(),
        CertError::UnknownIssuer {
            label: KeyLabel::Encryption,
            issuer: "CN=Stranger CA,O=Test CA,C=CN".into(),
        }
    );
}

#[test]
fn garbage_is_malformed() {
    let ca = Ca::p256("CA");
    let key = spki(p256_key().verifying_key());
    assert!(matches!(
        check(
            KeyLabel::SealOfficial,
            b"not a certificate",
            &key,
            &[],
            &ca.anchors()
        ),
        Err(CertError::Malformed { .. })
    ));
    assert!(matches!(
        TrustAnchors::from_der([b"junk".to_vec()]),
        Err(CertError::BadAnchor { index: 0, .. })
    ));
}

#[test]
fn signature_algorithms_are_checked() {
    let signer = p256_key();
    let key = spki(signer.verifying_key());
    let msg = b"challenge";
    let sig: p256::ecdsa::Signature = signature::Signer::sign(&signer, msg);
    let alg = AlgorithmIdentifierOwned {
        oid: OID_ECDSA_SHA256,
        parameters: None,
    };
    let der = sig.to_der();
    verify_signature(&key, &alg, msg, der.as_bytes()).unwrap();
    assert_eq!(
        verify_signature(&key, &alg, b"other", der.as_bytes()),
        Err(SignatureFailure::Invalid)
    );
    let rsa_alg = AlgorithmIdentifierOwned {
        oid: OID_SHA256_RSA,
        parameters: None,
    };
    assert!(matches!(
        verify_signature(&key, &rsa_alg, msg, der.as_bytes()),
        Err(SignatureFailure::BadKey(_))
    ));
    let md5 = AlgorithmIdentifierOwned {
        oid: ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.4"),
        parameters: None,
    };
    assert!(matches!(
        verify_signature(&key, &md5, msg, der.as_bytes()),
        Err(SignatureFailure::UnsupportedAlgorithm(_))
    ));
}

mod chain;
mod sm2_chain;
