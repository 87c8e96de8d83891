//! The chain half of [`super::verify_certificate`]: from the issued certificate through the
//! intermediates the platform sent to one configured trust anchor, in the manner of RFC 5280
//! §6.1 for the parts a Ukey's short chains use.
//!
//! A path is first built by issuer name and signature; then every CA certificate on it is
//! checked: each intermediate must be inside its validity window, a CA (basicConstraints
//! cA=true), allowed to sign certificates (keyUsage with keyCertSign) and carry no critical
//! extension this module does not understand; the anchor must be inside its validity
//! window; and no pathLenConstraint (of an intermediate or of the anchor) may be exceeded.
//! Policies, name constraints and revocation are not processed: an intermediate that makes
//! them critical is refused, since its meaning would otherwise be ignored.
//!
//! Pure: no IO.

use std::time::SystemTime;

use der::asn1::ObjectIdentifier;
use der::{Decode, Encode};
use ukey_protocol::KeyLabel;
use x509_cert::Certificate;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};

use super::{
    CertError, MAX_CHAIN, OID_BASIC_CONSTRAINTS, OID_KEY_USAGE, TrustAnchors, ValidityPolicy,
    unix_secs, verify_signature,
};

/// `extKeyUsage` (2.5.29.37): understood in the sense that a critical one restricts nothing
/// a Ukey's certificates are used for beyond what the key usage already says.
const OID_EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
/// `subjectAltName` (2.5.29.17): critical when the subject is empty (RFC 5280 §4.2.1.6).
const OID_SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
/// `subjectKeyIdentifier` (2.5.29.14) and `authorityKeyIdentifier` (2.5.29.35): identifiers
/// only, never a restriction.
const OID_SUBJECT_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
const OID_AUTHORITY_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.35");

/// The extensions whose criticality this crate honours: a critical extension not in this
/// list makes a certificate unusable (RFC 5280 §4.2).
pub(super) const UNDERSTOOD_EXTENSIONS: [ObjectIdentifier; 6] = [
    OID_KEY_USAGE,
    OID_BASIC_CONSTRAINTS,
    OID_EXT_KEY_USAGE,
    OID_SUBJECT_ALT_NAME,
    OID_SUBJECT_KEY_ID,
    OID_AUTHORITY_KEY_ID,
];

/// The first critical extension of `cert` that is not understood, as a refusal.
pub(super) fn unknown_critical_extension(
    label: KeyLabel,
    cert: &Certificate,
) -> Result<(), CertError> {
    let unknown = cert
        .tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
        .find(|e| e.critical && !UNDERSTOOD_EXTENSIONS.contains(&e.extn_id));
    match unknown {
        Some(ext) => Err(CertError::UnknownCriticalExtension {
            label,
            subject: cert.tbs_certificate().subject().to_string(),
            oid: ext.extn_id.to_string(),
        }),
        None => Ok(()),
    }
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

/// The basic constraints of `cert`, if it has them and they parse.
fn basic_constraints(cert: &Certificate) -> Option<BasicConstraints> {
    cert.tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
        .find(|e| e.extn_id == OID_BASIC_CONSTRAINTS)
        .and_then(|e| BasicConstraints::from_der(e.extn_value.as_bytes()).ok())
}

fn is_ca(cert: &Certificate) -> bool {
    basic_constraints(cert).is_some_and(|bc| bc.ca)
}

/// Whether `cert` has a key usage extension that includes keyCertSign. A CA certificate
/// without key usage is refused too: RFC 5280 §4.2.1.3 requires it in every CA certificate
/// that signs certificates, and leaving it out is how a key meant for something else ends
/// up issuing.
fn may_sign_certificates(cert: &Certificate) -> bool {
    cert.tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
        .find(|e| e.extn_id == OID_KEY_USAGE)
        .and_then(|e| KeyUsage::from_der(e.extn_value.as_bytes()).ok())
        .is_some_and(|ku| ku.0.contains(KeyUsages::KeyCertSign))
}

/// Checks `cert` (an intermediate or the anchor) is inside its validity window at `now`.
fn inside_window(cert: &Certificate, policy: &ValidityPolicy, now: SystemTime) -> bool {
    let validity = cert.tbs_certificate().validity();
    let not_before = validity.not_before.to_system_time();
    let not_after = validity.not_after.to_system_time();
    not_before <= now + policy.max_clock_skew && now < not_after
}

fn window_secs(cert: &Certificate) -> (u64, u64) {
    let validity = cert.tbs_certificate().validity();
    (
        unix_secs(validity.not_before.to_system_time()),
        unix_secs(validity.not_after.to_system_time()),
    )
}

/// Builds the path from `leaf` to an anchor and checks every CA certificate on it.
pub(super) fn check_chain(
    label: KeyLabel,
    leaf: &Certificate,
    intermediates: &[Certificate],
    anchors: &TrustAnchors,
    policy: &ValidityPolicy,
    now: SystemTime,
) -> Result<(), CertError> {
    let (path, anchor) = build_path(label, leaf, intermediates, anchors)?;
    for (below, ca) in path.iter().enumerate() {
        let subject = || ca.tbs_certificate().subject().to_string();
        if !inside_window(ca, policy, now) {
            let (not_before, not_after) = window_secs(ca);
            return Err(CertError::IntermediateNotValid {
                label,
                subject: subject(),
                not_before,
                not_after,
            });
        }
        if !may_sign_certificates(ca) {
            return Err(CertError::IntermediateKeyUsage {
                label,
                subject: subject(),
            });
        }
        unknown_critical_extension(label, ca)?;
        check_path_len(label, ca, below)?;
    }
    if !inside_window(anchor, policy, now) {
        let (not_before, not_after) = window_secs(anchor);
        return Err(CertError::AnchorNotValid {
            label,
            subject: anchor.tbs_certificate().subject().to_string(),
            not_before,
            not_after,
        });
    }
    check_path_len(label, anchor, path.len())
}

/// `below` CA certificates follow `ca` on the way to the leaf: its pathLenConstraint must
/// allow that many (self-issued ones are not counted by RFC 5280, but a Ukey's chains have
/// none below the anchor: the path builder uses each certificate once).
fn check_path_len(label: KeyLabel, ca: &Certificate, below: usize) -> Result<(), CertError> {
    let limit = basic_constraints(ca).and_then(|bc| bc.path_len_constraint);
    match limit {
        Some(limit) if below > usize::from(limit) => Err(CertError::PathLengthExceeded {
            label,
            subject: ca.tbs_certificate().subject().to_string(),
            path_len: limit,
            below,
        }),
        _ => Ok(()),
    }
}

/// The intermediates from the leaf's issuer upwards, and the anchor that ends the path.
fn build_path<'a>(
    label: KeyLabel,
    leaf: &'a Certificate,
    intermediates: &'a [Certificate],
    anchors: &'a TrustAnchors,
) -> Result<(Vec<&'a Certificate>, &'a Certificate), CertError> {
    let mut current = leaf;
    let mut path = Vec::new();
    // Each intermediate is used once: a self-signed root sent as "intermediate" (or any
    // loop) would otherwise be followed to itself until the length limit.
    let mut used = vec![false; intermediates.len()];
    for _ in 0..=MAX_CHAIN {
        let issuer_name = current.tbs_certificate().issuer();
        let mut bad: Option<String> = None;
        for anchor in &anchors.anchors {
            if anchor.tbs_certificate().subject() == issuer_name {
                match signed_by(current, anchor) {
                    Ok(()) => return Ok((path, anchor)),
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
                path.push(next);
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
