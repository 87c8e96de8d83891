//! Checks of an issued certificate before anything is written to a token (invariant 3).
//!
//! Pure: no IO, no token. [`verify_certificate`] accepts a certificate only if its public key
//! is the on-token key (SPKI compared byte for byte), its subject and key usage are exactly
//! those of the [`ukey_protocol::profile`] for its label, it is an end-entity certificate, its
//! validity window is sane, and it chains through given intermediates to a configured trust
//! anchor with signatures that verify (ecdsa-with-SHA256 on P-256, checked with ring, or
//! sha256WithRSAEncryption, checked with rsa).
//! Each failure is its own [`CertError`] variant naming the label and what differed.
//!
//! Revocation is not checked here (the platform that issues is the one that revokes).

use std::time::{Duration, SystemTime};

use der::asn1::ObjectIdentifier;
use der::{Decode, Encode};
use sha2::{Digest, Sha256};
use signature::Verifier;
use ukey_protocol::{KeyAlgorithm, KeyLabel};
use x509_cert::Certificate;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use ukey_protocol::profile::{ProfileError, SubjectData, key_usage, key_usage_text};

/// `id-ecPublicKey` (1.2.840.10045.2.1).
pub const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// `prime256v1` / `secp256r1` (1.2.840.10045.3.1.7).
pub const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// `rsaEncryption` (1.2.840.113549.1.1.1).
pub const OID_RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// `ecdsa-with-SHA256` (1.2.840.10045.4.3.2).
pub const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// `sha256WithRSAEncryption` (1.2.840.113549.1.1.11).
pub const OID_SHA256_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const OID_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");

/// The longest chain (intermediates above the leaf) that is followed.
pub const MAX_CHAIN: usize = 4;

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Not a DER X.509 certificate, or inconsistent inside.
    #[error("{label} certificate is malformed: {reason}")]
    Malformed {
        /// Which certificate.
        label: KeyLabel,
        /// What is wrong.
        reason: String,
    },
    /// A configured CA certificate cannot be parsed.
    #[error("configured CA certificate #{index} is malformed: {reason}")]
    BadAnchor {
        /// Its position in the configuration.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The certificate is for another key than the one on the token.
    #[error(
        "{label} certificate is for another key: SPKI SHA-256 {found}, on-token key {expected}"
    )]
    PublicKeyMismatch {
        /// Which certificate.
        label: KeyLabel,
        /// Fingerprint (hex) of the on-token key's SPKI.
        expected: String,
        /// Fingerprint (hex) of the certificate's SPKI.
        found: String,
    },
    /// The on-token key is of an algorithm no Ukey uses.
    #[error("{label}: unsupported key algorithm {algorithm}")]
    UnsupportedKey {
        /// Which key.
        label: KeyLabel,
        /// The SPKI algorithm OID (and curve or size).
        algorithm: String,
    },
    /// The subject differs from the profile's.
    #[error("{label} certificate subject is \"{found}\", expected \"{expected}\"")]
    SubjectMismatch {
        /// Which certificate.
        label: KeyLabel,
        /// The profile's subject (RFC 4514).
        expected: String,
        /// The certificate's subject (RFC 4514).
        found: String,
    },
    /// The subject data from the job cannot make a subject.
    #[error("{label}: {source}")]
    Profile {
        /// Which certificate.
        label: KeyLabel,
        /// Why.
        #[source]
        source: ProfileError,
    },
    /// No key usage extension.
    #[error("{label} certificate has no key usage, expected {expected}")]
    KeyUsageMissing {
        /// Which certificate.
        label: KeyLabel,
        /// The profile's key usage.
        expected: String,
    },
    /// The key usage differs from the profile's.
    #[error("{label} certificate key usage is {found}, expected {expected}")]
    KeyUsageMismatch {
        /// Which certificate.
        label: KeyLabel,
        /// The profile's key usage.
        expected: String,
        /// The certificate's key usage.
        found: String,
    },
    /// The certificate is a CA certificate (basicConstraints cA=true).
    #[error("{label} certificate is a CA certificate")]
    IsCa {
        /// Which certificate.
        label: KeyLabel,
    },
    /// No configured trust anchor (through the given intermediates) issued it.
    #[error("{label} certificate issuer \"{issuer}\" is not a configured CA")]
    UnknownIssuer {
        /// Which certificate.
        label: KeyLabel,
        /// The issuer name that was not found (RFC 4514).
        issuer: String,
    },
    /// An issuer by that name exists, but the signature does not verify with its key.
    #[error("{label} certificate signature by \"{issuer}\" does not verify: {reason}")]
    BadSignature {
        /// Which certificate.
        label: KeyLabel,
        /// The issuer (RFC 4514).
        issuer: String,
        /// Why.
        reason: String,
    },
    /// The chain is longer than [`MAX_CHAIN`].
    #[error("{label} certificate chain is longer than {MAX_CHAIN}")]
    ChainTooLong {
        /// Which certificate.
        label: KeyLabel,
    },
    /// notAfter has passed.
    #[error("{label} certificate expired at {not_after} (unix seconds)")]
    Expired {
        /// Which certificate.
        label: KeyLabel,
        /// notAfter, seconds since the Unix epoch.
        not_after: u64,
    },
    /// notBefore is in the future (beyond the allowed clock skew).
    #[error("{label} certificate is not valid before {not_before} (unix seconds)")]
    NotYetValid {
        /// Which certificate.
        label: KeyLabel,
        /// notBefore, seconds since the Unix epoch.
        not_before: u64,
    },
    /// The validity window is longer than the policy allows (or ends before it starts).
    #[error("{label} certificate validity of {days} days exceeds {max_days}")]
    ValidityTooLong {
        /// Which certificate.
        label: KeyLabel,
        /// The window's length in days.
        days: u64,
        /// The policy's maximum in days.
        max_days: u64,
    },
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureFailure {
    /// The signature algorithm is not ecdsa-with-SHA256 or sha256WithRSAEncryption.
    #[error("unsupported signature algorithm {0}")]
    UnsupportedAlgorithm(String),
    /// The key does not fit the algorithm or cannot be parsed.
    #[error("key unusable for this signature: {0}")]
    BadKey(String),
    /// The signature is malformed or wrong.
    #[error("signature invalid")]
    Invalid,
}

/// Verifies `signature` over `message` with `key`, for the X.509 signature algorithms a Ukey
/// and its CA use: ecdsa-with-SHA256 (DER `Ecdsa-Sig-Value`, P-256) and
/// sha256WithRSAEncryption (PKCS#1 v1.5).
pub fn verify_signature(
    key: &SubjectPublicKeyInfoOwned,
    algorithm: &AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignatureFailure> {
    let bad_key = |e: &dyn std::fmt::Display| SignatureFailure::BadKey(e.to_string());
    if algorithm.oid == OID_ECDSA_SHA256 {
        if key_algorithm(key) != Some(KeyAlgorithm::P256) {
            return Err(SignatureFailure::BadKey("not a P-256 key".into()));
        }
        // The point is checked (on the curve) by p256; the signature, a DER `Ecdsa-Sig-Value`,
        // is verified by ring, about three times faster than p256 here (docs/BENCHMARKS.md).
        let point = p256::PublicKey::from_sec1_bytes(key.subject_public_key.raw_bytes())
            .map_err(|e| bad_key(&e))?
            .to_sec1_bytes();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &point)
            .verify(message, signature)
            .map_err(|_| SignatureFailure::Invalid)
    } else if algorithm.oid == OID_SHA256_RSA {
        let pk = rsa_public_key(key).map_err(SignatureFailure::BadKey)?;
        let vk = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(pk);
        let sig =
            rsa::pkcs1v15::Signature::try_from(signature).map_err(|_| SignatureFailure::Invalid)?;
        vk.verify(message, &sig)
            .map_err(|_| SignatureFailure::Invalid)
    } else {
        Err(SignatureFailure::UnsupportedAlgorithm(
            algorithm.oid.to_string(),
        ))
    }
}

/// The RSA public key of an SPKI.
pub(crate) fn rsa_public_key(key: &SubjectPublicKeyInfoOwned) -> Result<rsa::PublicKey, String> {
    if key.algorithm.oid != OID_RSA_ENCRYPTION {
        return Err("not an RSA key".into());
    }
    let der = key.to_der().map_err(|e| e.to_string())?;
    let spki_ref =
        x509_cert::spki::SubjectPublicKeyInfoRef::from_der(&der).map_err(|e| e.to_string())?;
    rsa::PublicKey::try_from(spki_ref).map_err(|e| e.to_string())
}

/// Which Ukey key algorithm an SPKI holds: P-256, RSA-2048 or RSA-3072; `None` otherwise.
pub fn key_algorithm(key: &SubjectPublicKeyInfoOwned) -> Option<KeyAlgorithm> {
    if key.algorithm.oid == OID_EC_PUBLIC_KEY {
        let curve = key
            .algorithm
            .parameters
            .as_ref()?
            .decode_as::<ObjectIdentifier>()
            .ok()?;
        (curve == OID_P256).then_some(KeyAlgorithm::P256)
    } else if key.algorithm.oid == OID_RSA_ENCRYPTION {
        use rsa::traits::PublicKeyParts;
        match rsa_public_key(key).ok()?.n().bit_width() {
            2048 => Some(KeyAlgorithm::Rsa2048),
            3072 => Some(KeyAlgorithm::Rsa3072),
            _ => None,
        }
    } else {
        None
    }
}

/// SHA-256 of a DER encoding (certificate fingerprint).
pub fn fingerprint_sha256(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// SHA-256 (hex) of an SPKI's DER: how public keys are named in messages.
pub fn spki_fingerprint_hex(key: &SubjectPublicKeyInfoOwned) -> String {
    key.to_der()
        .map(|der| hex::encode(fingerprint_sha256(&der)))
        .unwrap_or_else(|_| "unencodable".into())
}

/// The notAfter of a DER certificate (for inventory and expiry warnings).
pub fn not_after(der: &[u8]) -> Result<SystemTime, der::Error> {
    let cert = Certificate::from_der(der)?;
    Ok(cert.tbs_certificate().validity().not_after.to_system_time())
}

/// The CA certificates issued certificates must chain to (from the configuration).
#[derive(Debug, Clone, Default)]
pub struct TrustAnchors {
    anchors: Vec<Certificate>,
}

impl TrustAnchors {
    /// Trust anchors from DER certificates.
    pub fn from_der<I, B>(certs: I) -> Result<TrustAnchors, CertError>
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        let anchors = certs
            .into_iter()
            .enumerate()
            .map(|(index, der)| {
                Certificate::from_der(der.as_ref()).map_err(|e| CertError::BadAnchor {
                    index,
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustAnchors { anchors })
    }

    /// Trust anchors from PEM text holding one or more certificates.
    /// The text is read leniently (CRLF, other line widths, text between the blocks).
    pub fn from_pem(pem: &str) -> Result<TrustAnchors, CertError> {
        let blocks = ukey_protocol::pem::blocks(pem, "CA certificate").map_err(|e| {
            CertError::BadAnchor {
                index: 0,
                reason: e.to_string(),
            }
        })?;
        let ders: Vec<Vec<u8>> = blocks
            .into_iter()
            .filter(|b| b.label == "CERTIFICATE")
            .map(|b| b.der.to_vec())
            .collect();
        if ders.is_empty() {
            return Err(CertError::BadAnchor {
                index: 0,
                reason: "no \"CERTIFICATE\" PEM block".to_owned(),
            });
        }
        TrustAnchors::from_der(&ders)
    }

    /// How many anchors are configured.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }
}

/// Bounds of a sane validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidityPolicy {
    /// How far notBefore may lie in the future (clocks differ).
    pub max_clock_skew: Duration,
    /// The longest validity window accepted.
    pub max_validity: Duration,
}

impl Default for ValidityPolicy {
    /// Five minutes of skew; at most ten years (and a few days) of validity.
    fn default() -> Self {
        ValidityPolicy {
            max_clock_skew: Duration::from_secs(5 * 60),
            max_validity: Duration::from_secs((10 * 366 + 5) * 24 * 3600),
        }
    }
}

/// What a certificate must match: its label, the on-token key and the job's subject data.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// Which of the three certificates.
    pub label: KeyLabel,
    /// The public key read from the token.
    pub token_key: &'a SubjectPublicKeyInfoOwned,
    /// The subject data of the job.
    pub subject: &'a SubjectData,
}

/// A certificate that passed [`verify_certificate`]; the only input
/// [`crate::token::Token::install_certificate`] accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCertificate {
    label: KeyLabel,
    der: Vec<u8>,
    certificate: Certificate,
}

impl VerifiedCertificate {
    /// The label it was verified for.
    pub fn label(&self) -> KeyLabel {
        self.label
    }

    /// Its DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The parsed certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }

    /// SHA-256 of the DER.
    pub fn fingerprint_sha256(&self) -> [u8; 32] {
        fingerprint_sha256(&self.der)
    }

    /// notAfter.
    pub fn not_after(&self) -> SystemTime {
        self.certificate
            .tbs_certificate()
            .validity()
            .not_after
            .to_system_time()
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks `der` (a certificate the platform issued for `expected.label`) at time `now`.
///
/// `intermediates` are CA certificates sent along with it (may be empty); the chain must end
/// at one of `anchors`. See the module documentation for what is checked.
pub fn verify_certificate(
    der: &[u8],
    intermediates: &[Vec<u8>],
    expected: &Expected<'_>,
    anchors: &TrustAnchors,
    policy: &ValidityPolicy,
    now: SystemTime,
) -> Result<VerifiedCertificate, CertError> {
    let label = expected.label;
    let malformed = |reason: String| CertError::Malformed { label, reason };
    let cert = Certificate::from_der(der).map_err(|e| malformed(e.to_string()))?;
    let tbs = cert.tbs_certificate();
    if tbs.signature() != cert.signature_algorithm() {
        return Err(malformed(
            "inner and outer signature algorithms differ".into(),
        ));
    }

    // The key: the very key on the token.
    let found_key = tbs.subject_public_key_info();
    let same_key = match (found_key.to_der(), expected.token_key.to_der()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same_key {
        return Err(CertError::PublicKeyMismatch {
            label,
            expected: spki_fingerprint_hex(expected.token_key),
            found: spki_fingerprint_hex(found_key),
        });
    }
    let algorithm = key_algorithm(expected.token_key).ok_or_else(|| CertError::UnsupportedKey {
        label,
        algorithm: expected.token_key.algorithm.oid.to_string(),
    })?;

    // The subject: exactly the profile's.
    let subject = expected
        .subject
        .subject(label)
        .map_err(|source| CertError::Profile { label, source })?;
    let same_subject =
        matches!((subject.to_der(), tbs.subject().to_der()), (Ok(a), Ok(b)) if a == b);
    if !same_subject {
        return Err(CertError::SubjectMismatch {
            label,
            expected: subject.to_string(),
            found: tbs.subject().to_string(),
        });
    }

    // Key usage: exactly the label's; and not a CA.
    let wanted = key_usage(label, algorithm);
    let mut found_usage: Option<KeyUsage> = None;
    for ext in tbs.extensions().into_iter().flatten() {
        if ext.extn_id == OID_KEY_USAGE {
            found_usage = Some(
                KeyUsage::from_der(ext.extn_value.as_bytes())
                    .map_err(|e| malformed(format!("key usage: {e}")))?,
            );
        } else if ext.extn_id == OID_BASIC_CONSTRAINTS {
            let bc = BasicConstraints::from_der(ext.extn_value.as_bytes())
                .map_err(|e| malformed(format!("basic constraints: {e}")))?;
            if bc.ca {
                return Err(CertError::IsCa { label });
            }
        }
    }
    match found_usage {
        None => {
            return Err(CertError::KeyUsageMissing {
                label,
                expected: key_usage_text(&wanted),
            });
        }
        Some(found) if found != wanted => {
            return Err(CertError::KeyUsageMismatch {
                label,
                expected: key_usage_text(&wanted),
                found: key_usage_text(&found),
            });
        }
        Some(_) => {}
    }

    // Validity window.
    let not_before = tbs.validity().not_before.to_system_time();
    let not_after = tbs.validity().not_after.to_system_time();
    if not_before > now + policy.max_clock_skew {
        return Err(CertError::NotYetValid {
            label,
            not_before: unix_secs(not_before),
        });
    }
    if not_after <= now {
        return Err(CertError::Expired {
            label,
            not_after: unix_secs(not_after),
        });
    }
    let window = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::MAX);
    if window > policy.max_validity {
        return Err(CertError::ValidityTooLong {
            label,
            days: window.as_secs() / 86_400,
            max_days: policy.max_validity.as_secs() / 86_400,
        });
    }

    // The chain: through intermediates to a configured anchor.
    let intermediates = intermediates
        .iter()
        .map(|d| Certificate::from_der(d).map_err(|e| malformed(format!("intermediate: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    check_chain(label, &cert, &intermediates, anchors)?;

    Ok(VerifiedCertificate {
        label,
        der: der.to_vec(),
        certificate: cert,
    })
}

fn signed_by(child: &Certificate, issuer: &Certificate) -> Result<(), String> {
    let tbs = child
        .tbs_certificate()
        .to_der()
        .map_err(|e| e.to_string())?;
    let signature = child
        .signature()
        .as_bytes()
        .ok_or_else(|| "signature has unused bits".to_string())?;
    verify_signature(
        issuer.tbs_certificate().subject_public_key_info(),
        child.signature_algorithm(),
        &tbs,
        signature,
    )
    .map_err(|e| e.to_string())
}

fn is_ca(cert: &Certificate) -> bool {
    cert.tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
        .filter(|e| e.extn_id == OID_BASIC_CONSTRAINTS)
        .any(|e| {
            BasicConstraints::from_der(e.extn_value.as_bytes())
                .map(|bc| bc.ca)
                .unwrap_or(false)
        })
}

fn check_chain(
    label: KeyLabel,
    leaf: &Certificate,
    intermediates: &[Certificate],
    anchors: &TrustAnchors,
) -> Result<(), CertError> {
    let mut current = leaf;
    // Each intermediate is used once: a self-signed root sent as "intermediate" (or any
    // loop) would otherwise be followed to itself until the length limit.
    let mut used = vec![false; intermediates.len()];
    for _ in 0..=MAX_CHAIN {
        let issuer_name = current.tbs_certificate().issuer();
        let mut bad: Option<String> = None;
        for anchor in &anchors.anchors {
            if anchor.tbs_certificate().subject() == issuer_name {
                match signed_by(current, anchor) {
                    Ok(()) => return Ok(()),
                    Err(reason) => bad = Some(reason),
                }
            }
        }
        let next = intermediates.iter().enumerate().find(|(i, c)| {
            !used[*i]
                && c.tbs_certificate().subject() == issuer_name
                && is_ca(c)
                && match signed_by(current, c) {
                    Ok(()) => true,
                    Err(reason) => {
                        bad = Some(reason);
                        false
                    }
                }
        });
        match next {
            Some((i, next)) => {
                used[i] = true;
                current = next;
            }
            None => {
                return Err(match bad {
                    // Formatted only for the error: a name's text costs more than its check.
                    Some(reason) => CertError::BadSignature {
                        label,
                        issuer: issuer_name.to_string(),
                        reason,
                    },
                    None => CertError::UnknownIssuer {
                        label,
                        issuer: issuer_name.to_string(),
                    },
                });
            }
        }
    }
    Err(CertError::ChainTooLong { label })
}

#[cfg(test)]
mod tests {
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

    /// A CA profile (self-signed root or intermediate): cA=true, keyCertSign.
    struct CaProfile {
        subject: Name,
        issuer: Name,
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
                path_len_constraint: None,
            };
            ext.push(bc.to_extension(tbs.subject(), &ext)?);
            let ku = KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign);
            ext.push(ku.to_extension(tbs.subject(), &ext)?);
            ext.push(SubjectKeyIdentifier::try_from(spk)?.to_extension(tbs.subject(), &ext)?);
            Ok(ext)
        }
    }

    enum CaKey {
        P256(p256::ecdsa::SigningKey),
        Rsa(Box<rsa::pkcs1v15::SigningKey<Sha256>>),
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
                CertificateBuilder::new(profile, SerialNumber::from(serial), validity, spki)
                    .unwrap();
            match signer {
                CaKey::P256(k) => builder.build::<_, p256::ecdsa::DerSignature>(k).unwrap(),
                CaKey::Rsa(k) => builder
                    .build::<_, rsa::pkcs1v15::Signature>(k.as_ref())
                    .unwrap(),
            }
        }

        fn key_spki(key: &CaKey) -> SubjectPublicKeyInfoOwned {
            match key {
                CaKey::P256(k) => spki(k.verifying_key()),
                CaKey::Rsa(k) => spki(&signature::Keypair::verifying_key(k.as_ref())),
            }
        }

        fn root(cn: &str, key: CaKey) -> Ca {
            let profile = CaProfile {
                subject: Ca::name(cn),
                issuer: Ca::name(cn),
            };
            let now = SystemTime::now();
            let cert = Ca::build(
                &key,
                profile,
                1,
                validity(now - DAY, now + 3650 * DAY),
                Ca::key_spki(&key),
            );
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
            let key = CaKey::P256(p256_key());
            let profile = CaProfile {
                subject: Ca::name(cn),
                issuer: self.cert.tbs_certificate().subject().clone(),
            };
            let now = SystemTime::now();
            let cert = Ca::build(
                &self.key,
                profile,
                2,
                validity(now - DAY, now + 1000 * DAY),
                Ca::key_spki(&key),
            );
            Ca { key, cert }
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
        let data = data();
        verify_certificate(
            der,
            intermediates,
            &Expected {
                label,
                token_key: key,
                subject: &data,
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
        let skewed = issue(now + Duration::from_secs(60), now + 400 * DAY);
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
}
