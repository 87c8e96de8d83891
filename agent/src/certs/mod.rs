//! Checks of an issued certificate before anything is written to a token (invariant 3).
//!
//! Pure: no IO, no token. [`verify_certificate`] accepts a certificate only if its public key
//! is the on-token key (SPKI compared byte for byte), its subject and key usage are exactly
//! those of the [`ukey_protocol::profile`] for its label, it is an end-entity certificate with no
//! critical extension this crate does not understand, its validity window is sane and as
//! long as the job asked for (within [`ValidityPolicy::validity_days_tolerance`]), and it
//! chains through given intermediates to a configured trust anchor with signatures that
//! verify (ecdsa-with-SHA256 on P-256, checked with ring; sha256WithRSAEncryption, checked
//! with rsa; SM2-with-SM3 with the GM/T 0009 default signer ID, checked with sm2 over the
//! digest [`sm2`] computes). The chain's own checks (validity, keyCertSign, path length,
//! critical extensions of every CA certificate on it) live in `chain`, the same for every
//! algorithm. The pure SM2 parts an SKF token's steps need (GM/T 0010 keys, `Z`, a CSR signed
//! elsewhere) are in [`sm2`].
//! Each failure is its own [`CertError`] variant naming the label and what differed.
//!
//! Revocation is not checked here (the platform that issues is the one that revokes).

use std::time::{Duration, SystemTime};

use der::asn1::ObjectIdentifier;
use der::{Any, Decode, Encode};
use sha2::{Digest, Sha256};
use signature::Verifier;
use ukey_protocol::{KeyAlgorithm, KeyLabel, SignerId};
use x509_cert::Certificate;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};

mod chain;
pub mod sm2;
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
    /// The validity window is not as long as the job's `validity_days` (beyond the policy's
    /// tolerance).
    #[error(
        "{label} certificate is valid for {hours} hours, the job asked for {expected_days} days \
         (within {tolerance_hours} hours)"
    )]
    ValidityDaysMismatch {
        /// Which certificate.
        label: KeyLabel,
        /// The window's length in hours (rounded down).
        hours: u64,
        /// The job's `validity_days`.
        expected_days: u32,
        /// The accepted difference, in hours.
        tolerance_hours: u64,
    },
    /// A certificate of the chain (the issued one or an intermediate) marks an extension
    /// critical that is not understood here, so its restriction could not be honoured.
    #[error("{label} certificate chain: \"{subject}\" has an unknown critical extension {oid}")]
    UnknownCriticalExtension {
        /// Which certificate was being verified.
        label: KeyLabel,
        /// The subject (RFC 4514) of the certificate with the extension.
        subject: String,
        /// The extension's OID.
        oid: String,
    },
    /// An intermediate CA certificate is outside its validity window.
    #[error(
        "{label} certificate chain: intermediate \"{subject}\" is valid only from {not_before} \
         to {not_after} (unix seconds)"
    )]
    IntermediateNotValid {
        /// Which certificate was being verified.
        label: KeyLabel,
        /// The intermediate's subject (RFC 4514).
        subject: String,
        /// Its notBefore, seconds since the Unix epoch.
        not_before: u64,
        /// Its notAfter, seconds since the Unix epoch.
        not_after: u64,
    },
    /// An intermediate CA certificate may not sign certificates (no keyCertSign).
    #[error("{label} certificate chain: intermediate \"{subject}\" has no keyCertSign key usage")]
    IntermediateKeyUsage {
        /// Which certificate was being verified.
        label: KeyLabel,
        /// The intermediate's subject (RFC 4514).
        subject: String,
    },
    /// A CA certificate's pathLenConstraint allows fewer intermediates below it than the
    /// chain has.
    #[error(
        "{label} certificate chain: \"{subject}\" allows {path_len} intermediate(s) below it, \
         the chain has {below}"
    )]
    PathLengthExceeded {
        /// Which certificate was being verified.
        label: KeyLabel,
        /// The constraining CA's subject (RFC 4514).
        subject: String,
        /// Its pathLenConstraint.
        path_len: u8,
        /// How many intermediates follow it in the chain.
        below: usize,
    },
    /// The configured CA certificate that ends the chain is outside its validity window.
    #[error(
        "{label} certificate chain: configured CA \"{subject}\" is valid only from \
         {not_before} to {not_after} (unix seconds)"
    )]
    AnchorNotValid {
        /// Which certificate was being verified.
        label: KeyLabel,
        /// The anchor's subject (RFC 4514).
        subject: String,
        /// Its notBefore, seconds since the Unix epoch.
        not_before: u64,
        /// Its notAfter, seconds since the Unix epoch.
        not_after: u64,
    },
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureFailure {
    /// The signature algorithm is not ecdsa-with-SHA256, sha256WithRSAEncryption or
    /// SM2-with-SM3.
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
/// and its CA use: ecdsa-with-SHA256 (DER `Ecdsa-Sig-Value`, P-256),
/// sha256WithRSAEncryption (PKCS#1 v1.5) and SM2-with-SM3 (DER `SEQUENCE { r, s }`, SM2, the
/// default signer ID: certificates are signed with it, GM/T 0015).
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
    } else if algorithm.oid == sm2::OID_SM2_WITH_SM3 {
        // Parameters absent (GM/T 0010); a NULL, which some CAs write, is tolerated on input.
        if algorithm
            .parameters
            .as_ref()
            .is_some_and(|p| p != &Any::null())
        {
            return Err(SignatureFailure::UnsupportedAlgorithm(
                "SM2-with-SM3 with parameters".into(),
            ));
        }
        let key = sm2::Sm2PublicKey::from_spki(key).map_err(|e| bad_key(&e))?;
        key.verify(&SignerId::DEFAULT, message, signature)
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

/// Which Ukey key algorithm an SPKI holds: P-256, RSA-2048, RSA-3072 or SM2 (GM/T 0010:
/// `id-ecPublicKey` with the SM2 curve); `None` otherwise.
pub fn key_algorithm(key: &SubjectPublicKeyInfoOwned) -> Option<KeyAlgorithm> {
    if key.algorithm.oid == OID_EC_PUBLIC_KEY {
        let curve = key
            .algorithm
            .parameters
            .as_ref()?
            .decode_as::<ObjectIdentifier>()
            .ok()?;
        if curve == sm2::OID_SM2_CURVE {
            return Some(KeyAlgorithm::Sm2);
        }
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
    /// How far the window's length may differ from the job's `validity_days`: CAs backdate
    /// notBefore against clock skew, count notAfter inclusively, or round to a day boundary.
    pub validity_days_tolerance: Duration,
}

impl Default for ValidityPolicy {
    /// Five minutes of skew; at most ten years (and a few days) of validity; the job's
    /// `validity_days` give or take one day.
    fn default() -> Self {
        ValidityPolicy {
            max_clock_skew: Duration::from_secs(5 * 60),
            max_validity: Duration::from_secs((10 * 366 + 5) * 24 * 3600),
            validity_days_tolerance: Duration::from_secs(24 * 3600),
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
    /// The job's `validity_days`: the length the certificate's validity window must have.
    pub validity_days: u32,
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
    chain::unknown_critical_extension(label, &cert)?;
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
    let asked = Duration::from_secs(u64::from(expected.validity_days) * 86_400);
    let difference = window.abs_diff(asked);
    if difference > policy.validity_days_tolerance {
        return Err(CertError::ValidityDaysMismatch {
            label,
            hours: window.as_secs() / 3600,
            expected_days: expected.validity_days,
            tolerance_hours: policy.validity_days_tolerance.as_secs() / 3600,
        });
    }

    // The chain: through intermediates to a configured anchor.
    let intermediates = intermediates
        .iter()
        .map(|d| Certificate::from_der(d).map_err(|e| malformed(format!("intermediate: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    chain::check_chain(label, &cert, &intermediates, anchors, policy, now)?;

    Ok(VerifiedCertificate {
        label,
        der: der.to_vec(),
        certificate: cert,
    })
}

#[cfg(test)]
mod tests;
