//! The token work of each job step: blocking code that runs on a token's worker thread.
//!
//! Steps reach the token only through the device seam ([`Device`]): the same step runs on a
//! PKCS#11 token or on any other interface behind it.
//!
//! Each function does one step of DESIGN.md's pipeline and **reconciles with what the token
//! already holds**, because after a crash (or a pulled token) the same step runs again:
//! `initialize` re-initializes a token that this very job had started, `generate_keys`
//! destroys a half-made key pair before making it again, `install` writes only what is
//! missing. Nothing here decides what comes next (that is [`crate::job`]) or talks to the
//! network (that is the runner). Failures become protocol [`StepError`]s with a stable code
//! and a `retryable` verdict via [`StepFailure`].

use std::collections::BTreeMap;
use std::time::SystemTime;

use cryptoki::error::RvError;
use secrecy::{ExposeSecret, SecretString};
use spki::SubjectPublicKeyInfoOwned;
use spki::der::{Decode, Encode};
use ukey_protocol::bundle::{CertBundle, CertificateRequest, CsrBundle};
use ukey_protocol::codes::{self, Code};
use ukey_protocol::event::{BindReport, CertFingerprint, StepData, StepError};
use ukey_protocol::ids::{JobId, TokenSerial};
use ukey_protocol::job::JobDocument;
use ukey_protocol::keys::KeyLabel;
use ukey_protocol::seal::{SealContext, SealPurpose, SealRecipient, SealedSecret, UnsealKey, seal};
use ukey_protocol::{Base64Bytes, V1};
use zeroize::Zeroizing;

use crate::certs::{
    CertError, Expected, TrustAnchors, ValidityPolicy, VerifiedCertificate, verify_certificate,
};
use crate::device::Device;
use crate::token::{Authorization, KeySelfTest, PinOwner, TokenError};
use ukey_protocol::profile::SubjectData;

/// The prefix of the token label the agent writes; a token whose label starts with it was
/// personalized by a ukey-station desk.
pub const LABEL_PREFIX: &str = "UKEY ";

/// The token label for a job: `UKEY ` and the order number, cut to PKCS#11's 32 bytes.
pub fn token_label(job: &JobDocument) -> String {
    let mut label = String::from(LABEL_PREFIX);
    for c in job.order_number.chars() {
        if label.len() + c.len_utf8() > crate::token::MAX_TOKEN_LABEL {
            break;
        }
        label.push(c);
    }
    label
}

/// A token's two PINs. Never printed; sealed before they are written anywhere.
pub struct Pins {
    /// The security officer PIN.
    pub so: SecretString,
    /// The user PIN the customer types.
    pub user: SecretString,
}

impl std::fmt::Debug for Pins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pins(<secret>)")
    }
}

/// The two PINs sealed (to the station itself, for the journal; or to the platform).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealedPins {
    /// The SO PIN.
    pub so: SealedSecret,
    /// The user PIN.
    pub user: SealedSecret,
}

const DIGITS: &[u8] = b"0123456789";
const SO_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";

fn random_text(len: usize, alphabet: &[u8]) -> Result<SecretString, TokenError> {
    let mut out = String::with_capacity(len);
    let mut buf = Zeroizing::new([0u8; 64]);
    // Rejection sampling keeps every character equally likely.
    let limit = 256 - (256 % alphabet.len());
    while out.len() < len {
        getrandom::fill(buf.as_mut()).map_err(|e| TokenError::Random(e.to_string()))?;
        for b in buf.iter() {
            if (*b as usize) < limit && out.len() < len {
                out.push(alphabet[*b as usize % alphabet.len()] as char);
            }
        }
    }
    Ok(SecretString::from(out))
}

impl Pins {
    /// Fresh PINs from the OS's CSPRNG: an 8-digit user PIN (what a customer can type) and
    /// a 16-character SO PIN, both clamped to the token's PIN length bounds.
    /// Bounds a token reports that make no sense (0, or absurdly large) are tamed: PINs are
    /// never shorter than 6 nor longer than 64 characters.
    pub fn generate(min_len: usize, max_len: usize) -> Result<Pins, TokenError> {
        let lo = min_len.clamp(6, 64);
        // A maximum of 0 says nothing (some modules report it): no bound beyond ours.
        let hi = if max_len == 0 {
            64
        } else {
            max_len.clamp(lo, 64)
        };
        let clamp = |want: usize| want.clamp(lo, hi);
        Ok(Pins {
            so: random_text(clamp(16), SO_ALPHABET)?,
            user: random_text(clamp(8), DIGITS)?,
        })
    }

    /// Seals both PINs to `recipient`, bound to `job_id` and each PIN's purpose.
    pub fn seal(&self, recipient: &SealRecipient, job_id: &JobId) -> Result<SealedPins, String> {
        let one = |pin: &SecretString, purpose| {
            seal(
                recipient,
                &SealContext::for_job(job_id, purpose),
                pin.expose_secret().as_bytes(),
            )
            .map_err(|e| e.to_string())
        };
        Ok(SealedPins {
            so: one(&self.so, SealPurpose::SoPin)?,
            user: one(&self.user, SealPurpose::UserPin)?,
        })
    }

    /// Both PINs as bytes, for the journal (which encrypts them): the SO PIN's length (2
    /// bytes, big-endian), the SO PIN, the user PIN.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, String> {
        let so = self.so.expose_secret().as_bytes();
        let user = self.user.expose_secret().as_bytes();
        let len = u16::try_from(so.len()).map_err(|_| "SO PIN too long".to_owned())?;
        let mut out = Zeroizing::new(Vec::with_capacity(2 + so.len() + user.len()));
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(so);
        out.extend_from_slice(user);
        Ok(out)
    }

    /// Reads what [`Pins::to_bytes`] made.
    pub fn from_bytes(bytes: &[u8]) -> Result<Pins, String> {
        let damaged = || "stored PINs are damaged".to_owned();
        let (len, rest) = bytes.split_first_chunk::<2>().ok_or_else(damaged)?;
        let (so, user) = rest
            .split_at_checked(usize::from(u16::from_be_bytes(*len)))
            .ok_or_else(damaged)?;
        let text = |b: &[u8]| {
            std::str::from_utf8(b)
                .map(|t| SecretString::from(t.to_owned()))
                .map_err(|_| damaged())
        };
        Ok(Pins {
            so: text(so)?,
            user: text(user)?,
        })
    }
}

/// How a step ended when it did not succeed.
#[derive(Debug)]
pub enum StepFailure {
    /// The token was pulled out: the job parks and the step runs again on re-insertion.
    Removed,
    /// The step failed; the error goes to the platform.
    Failed(StepError),
}

fn step_error(code: Code, message: impl Into<String>, retryable: bool) -> StepError {
    StepError {
        code: crate::job::code(code),
        message: ukey_protocol::fit_text(&message.into(), 512),
        retryable,
    }
}

impl From<TokenError> for StepFailure {
    fn from(e: TokenError) -> StepFailure {
        if e.is_removed() {
            return StepFailure::Removed;
        }
        let (code, retryable) = match &e {
            TokenError::WrongPin { .. } => (codes::WRONG_PIN, false),
            TokenError::PinLocked { .. } => (codes::PIN_LOCKED, false),
            TokenError::PinLength { .. } => (codes::PIN_LENGTH, false),
            TokenError::NotBlank { .. } => (codes::TOKEN_NOT_BLANK, false),
            TokenError::WrongToken { .. } => (codes::WRONG_TOKEN, false),
            TokenError::AttributeCheck { .. } => (codes::KEY_ATTRIBUTE_CHECK, false),
            TokenError::ObjectExists { .. } | TokenError::ObjectMissing { .. } => {
                (codes::TOKEN_OBJECTS, true)
            }
            TokenError::MechanismUnsupported { .. } => (codes::MECHANISM_UNSUPPORTED, false),
            // A vendor module's own limits: asking again gives the same answer.
            TokenError::Pkcs11 {
                rv: RvError::DeviceMemory,
                ..
            } => (codes::TOKEN_FULL, false),
            TokenError::Pkcs11 {
                rv: RvError::FunctionNotSupported,
                function,
                ..
            } if function == "C_InitToken" => (codes::INIT_TOKEN_UNSUPPORTED, false),
            TokenError::Pkcs11 {
                rv: RvError::MechanismInvalid,
                ..
            } => (codes::MECHANISM_UNSUPPORTED, false),
            TokenError::Pkcs11 {
                rv: RvError::PinLenRange,
                ..
            } => (codes::PIN_LENGTH, false),
            TokenError::SelfTest { .. } => (codes::SELF_TEST_FAILED, false),
            TokenError::Csr { .. } => (codes::CSR_FAILED, true),
            TokenError::NotFound { .. } => (codes::TOKEN_NOT_FOUND, true),
            TokenError::Blank { .. } => (codes::TOKEN_BLANK, false),
            _ => (codes::TOKEN_ERROR, true),
        };
        StepFailure::Failed(step_error(code, e.to_string(), retryable))
    }
}

impl From<CertError> for StepFailure {
    fn from(e: CertError) -> StepFailure {
        let code = match &e {
            CertError::PublicKeyMismatch { .. } => codes::CERTIFICATE_KEY_MISMATCH,
            CertError::SubjectMismatch { .. } | CertError::Profile { .. } => {
                codes::CERTIFICATE_SUBJECT_MISMATCH
            }
            CertError::KeyUsageMissing { .. } | CertError::KeyUsageMismatch { .. } => {
                codes::CERTIFICATE_KEY_USAGE
            }
            CertError::IsCa { .. } => codes::CERTIFICATE_IS_CA,
            CertError::UnknownIssuer { .. } | CertError::ChainTooLong { .. } => {
                codes::CERTIFICATE_UNKNOWN_ISSUER
            }
            CertError::BadSignature { .. } => codes::CERTIFICATE_BAD_SIGNATURE,
            CertError::Expired { .. } | CertError::NotYetValid { .. } => {
                codes::CERTIFICATE_VALIDITY
            }
            CertError::ValidityTooLong { .. } => codes::CERTIFICATE_VALIDITY,
            CertError::ValidityDaysMismatch { .. } => codes::CERTIFICATE_VALIDITY_DAYS,
            CertError::UnknownCriticalExtension { .. } => codes::CERTIFICATE_CRITICAL_EXTENSION,
            CertError::IntermediateNotValid { .. } => codes::CERTIFICATE_INTERMEDIATE_VALIDITY,
            CertError::IntermediateKeyUsage { .. } => codes::CERTIFICATE_INTERMEDIATE_KEY_USAGE,
            CertError::PathLengthExceeded { .. } => codes::CERTIFICATE_PATH_LENGTH,
            CertError::AnchorNotValid { .. } => codes::CERTIFICATE_ANCHOR_VALIDITY,
            _ => codes::CERTIFICATE_INVALID,
        };
        // The platform sent a bad certificate: asking again gives the same one.
        StepFailure::Failed(step_error(code, e.to_string(), false))
    }
}

/// The subject data of a job's certificates.
pub fn subject_data(job: &JobDocument) -> SubjectData {
    SubjectData {
        company_name: job.enterprise.name.clone(),
        credit_code: job.enterprise.credit_code.as_str().to_owned(),
        legal_representative: job.legal_representative.name.clone(),
    }
}

/// Step `initialize`: the token is initialized with the SO PIN, the job's label and the user
/// PIN ([`Device::initialize`]).
///
/// On a blank token. On a token that already carries this job's label (the agent died during
/// this step or the next), the job names the token through its journal, so it is wiped and
/// initialized again with the same journaled SO PIN (invariant 2). A `change` job with rekey
/// names its token by serial and carries the token's SO PIN: that token is wiped and
/// initialized again with that same SO PIN (read from the job, not from `pins`, so a PIN that
/// does not open never costs an SO retry).
pub fn initialize(
    token: &mut dyn Device,
    job: &JobDocument,
    pins: &Pins,
    station_key: &UnsealKey,
) -> Result<(), StepFailure> {
    let label = token_label(job);
    let present = token.describe()?;
    let named = job
        .target_token_serial
        .as_ref()
        .filter(|_| job.rekey && job.so_pin.is_some())
        .map(|s| s.as_str().trim());
    let (authorization, so) = if let Some(serial) = named {
        if present.serial.trim() != serial {
            return Err(TokenError::WrongToken {
                expected: serial.to_owned(),
                found: Some(present.serial.clone()),
            }
            .into());
        }
        if present.flags.so_pin_locked {
            return Err(StepFailure::Failed(step_error(
                codes::SO_PIN_LOCKED,
                format!("the SO PIN of token {serial} is locked: it cannot be re-keyed"),
                false,
            )));
        }
        let so = job_so_pin(job, station_key)?;
        (
            Authorization::NamedByJob {
                serial: serial.to_owned(),
            },
            so,
        )
    } else if present.is_blank() {
        (Authorization::BlankOnly, pins.so.clone())
    } else if present.label == label && !present.serial.is_empty() {
        tracing::info!(job = %job.job_id, serial = %present.serial, "re-initializing the token this job had started");
        (
            Authorization::NamedByJob {
                serial: present.serial.clone(),
            },
            pins.so.clone(),
        )
    } else {
        return Err(TokenError::NotBlank {
            serial: token.serial().map(str::to_owned),
            label: present.label,
        }
        .into());
    };
    // `present` was read just above: it is not read a second time.
    token
        .initialize(&present, &label, &so, &pins.user, &authorization)
        .map_err(so_failure)?;
    Ok(())
}

/// Step `generate-keys`: the three key pairs, after removing any half-made one.
pub fn generate_keys(
    token: &mut dyn Device,
    job: &JobDocument,
    pins: &Pins,
) -> Result<BTreeMap<KeyLabel, SubjectPublicKeyInfoOwned>, StepFailure> {
    token.login_user(&pins.user)?;
    let mut keys = BTreeMap::new();
    for label in KeyLabel::ALL {
        let Some(alg) = job.key_spec(label) else {
            return Err(StepFailure::Failed(step_error(
                codes::JOB_KEY_SPEC,
                format!("the job has no key spec for {label}"),
                false,
            )));
        };
        // One search finds what an interrupted attempt left (destroyed first) and proves that
        // no second pair is made.
        let (leftovers, key) = token.replace_key_pair(label, alg).inspect_err(|e| {
            if matches!(e, TokenError::AttributeCheck { .. }) {
                // A key that failed its read-back must not stay on the token.
                let _ = token.discard_key_pair(label);
            }
        })?;
        if leftovers > 0 {
            tracing::info!(job = %job.job_id, %label, leftovers, "removed objects of an interrupted attempt");
        }
        keys.insert(label, key);
    }
    Ok(keys)
}

/// Step `request-certificates`: a PKCS#10 CSR per label, signed on the token.
pub fn request_certificates(
    token: &mut dyn Device,
    job: &JobDocument,
    pins: &Pins,
    serial: &TokenSerial,
) -> Result<CsrBundle, StepFailure> {
    let subject = subject_data(job);
    token.login_user(&pins.user)?;
    let mut requests = Vec::with_capacity(3);
    for label in KeyLabel::ALL {
        let name = subject.subject(label).map_err(|e| {
            StepFailure::Failed(step_error(codes::JOB_SUBJECT, e.to_string(), false))
        })?;
        let csr = token.sign_csr(label, &name)?;
        requests.push(CertificateRequest {
            label,
            csr: Some(Base64Bytes::new(csr)),
            current_certificate: None,
            public_key: None,
        });
    }
    Ok(CsrBundle {
        v: V1,
        job_id: job.job_id.clone(),
        token_serial: serial.clone(),
        requests,
    })
}

/// What certificates are checked against.
#[derive(Debug, Clone)]
pub struct Trust {
    /// The configured CAs.
    pub anchors: TrustAnchors,
    /// Validity bounds.
    pub policy: ValidityPolicy,
}

/// Step `verify-certificates`: every certificate against its on-token key (read as a public
/// object, no PIN), the job's subject, the label's key usage and the configured CAs.
/// Nothing is written.
pub fn verify_certificates(
    token: &dyn Device,
    job: &JobDocument,
    bundle: &CertBundle,
    trust: &Trust,
    now: SystemTime,
) -> Result<Vec<VerifiedCertificate>, StepFailure> {
    let subject = subject_data(job);
    let chain: Vec<Vec<u8>> = bundle
        .ca_chain
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    let mut verified = Vec::with_capacity(3);
    for label in KeyLabel::ALL {
        let issued = bundle
            .certificates
            .iter()
            .find(|c| c.label == label)
            .ok_or_else(|| {
                StepFailure::Failed(step_error(
                    codes::CERTIFICATE_MISSING,
                    format!("the platform sent no certificate for {label}"),
                    false,
                ))
            })?;
        let key = token.public_key(label)?;
        let expected = Expected {
            label,
            token_key: &key,
            subject: &subject,
            validity_days: job.validity_days,
        };
        verified.push(verify_certificate(
            issued.certificate.as_bytes(),
            &chain,
            &expected,
            &trust.anchors,
            &trust.policy,
            now,
        )?);
    }
    Ok(verified)
}

/// Step `install`: writes the verified certificates that are not on the token yet.
///
/// With `pins` (production) the user logs in first. Without (`renew`, `change` without
/// rekey: the station has no user PIN) the certificates are written as the public objects
/// they are, in a read/write session without login, which PKCS#11 allows.
pub fn install(
    token: &mut dyn Device,
    pins: Option<&Pins>,
    certs: &[VerifiedCertificate],
) -> Result<usize, StepFailure> {
    if let Some(pins) = pins {
        token.login_user(&pins.user)?;
    }
    // One listing of the token's certificates for all three.
    Ok(token.install_certificates(certs)?)
}

/// Step `activate`: every key proves itself (sign / decrypt or agree on the token, checked
/// in software), then the session logs out.
pub fn activate(token: &mut dyn Device, pins: &Pins) -> Result<Vec<KeySelfTest>, StepFailure> {
    token.login_user(&pins.user)?;
    let result = token.self_test(&KeyLabel::ALL);
    let logout = token.logout();
    let tests = result?;
    logout?;
    Ok(tests)
}

/// Step `bind`: what the platform binds to the order — each certificate's serial and
/// fingerprint, and the PINs sealed to the platform.
///
/// Without `pins` (the job set none: `renew`, `change` without rekey) the report carries
/// only the certificates.
pub fn bind_report(
    job_id: &JobId,
    certs: &[VerifiedCertificate],
    pins: Option<&Pins>,
    platform: &SealRecipient,
) -> Result<BindReport, StepFailure> {
    let sealed = pins
        .map(|pins| pins.seal(platform, job_id))
        .transpose()
        .map_err(|e| StepFailure::Failed(step_error(codes::SEAL_FAILED, e, false)))?;
    let mut certificates = Vec::with_capacity(certs.len());
    for cert in certs {
        let serial = cert
            .certificate()
            .tbs_certificate()
            .serial_number()
            .as_bytes()
            .to_vec();
        certificates.push(CertFingerprint {
            label: cert.label(),
            serial: hex::encode(serial),
            sha256: hex::encode(cert.fingerprint_sha256()),
        });
    }
    let (so_pin, user_pin) = match sealed {
        Some(sealed) => (Some(sealed.so), Some(sealed.user)),
        None => (None, None),
    };
    Ok(BindReport {
        certificates,
        so_pin,
        user_pin,
    })
}

/// The SO PIN a job carries (`unlock`, `change` with rekey), opened with the station's key.
pub fn job_so_pin(job: &JobDocument, station_key: &UnsealKey) -> Result<SecretString, StepFailure> {
    let sealed = job.so_pin.as_ref().ok_or_else(|| {
        StepFailure::Failed(step_error(
            codes::SO_PIN_MISSING,
            format!("job {} carries no SO PIN", job.job_id),
            false,
        ))
    })?;
    sealed
        .unseal_pin(station_key, &job.so_pin_context())
        .map_err(|e| {
            StepFailure::Failed(step_error(
                codes::SO_PIN_UNSEAL,
                format!("the job's SO PIN does not open with this station's key: {e}"),
                false,
            ))
        })
}

/// Step `reset-pin` (`unlock`): the SO logs in with the PIN the job carries and sets a fresh
/// random user PIN, which also resets the user PIN's retry counter. Returns the new PIN
/// sealed to the platform (context `job/{jid}/user-pin`).
///
/// A locked SO PIN is reported as `so-pin-locked` before any login is tried, and nothing on
/// the token changes. Run again after a crash, the step simply sets another fresh PIN: only
/// the PIN of the reported event counts.
pub fn reset_pin(
    token: &mut dyn Device,
    job: &JobDocument,
    station_key: &UnsealKey,
    platform: &SealRecipient,
) -> Result<StepData, StepFailure> {
    let present = token.describe()?;
    if present.flags.so_pin_locked {
        return Err(StepFailure::Failed(step_error(
            codes::SO_PIN_LOCKED,
            format!(
                "the SO PIN of token {} is locked: the user PIN cannot be reset at the desk",
                present.serial
            ),
            false,
        )));
    }
    let so = job_so_pin(job, station_key)?;
    let fresh = Pins::generate(present.min_pin_len, present.max_pin_len)?;
    token.reset_user_pin(&so, &fresh.user).map_err(so_failure)?;
    let user_pin = seal(
        platform,
        &SealContext::for_job(&job.job_id, SealPurpose::UserPin),
        fresh.user.expose_secret().as_bytes(),
    )
    .map_err(|e| StepFailure::Failed(step_error(codes::SEAL_FAILED, e.to_string(), false)))?;
    Ok(StepData::PinReset { user_pin })
}

/// Maps an SO login failure to codes that say whose PIN it was.
fn so_failure(e: TokenError) -> StepFailure {
    match &e {
        TokenError::PinLocked {
            owner: PinOwner::SecurityOfficer,
            ..
        } => StepFailure::Failed(step_error(codes::SO_PIN_LOCKED, e.to_string(), false)),
        TokenError::WrongPin {
            owner: PinOwner::SecurityOfficer,
            ..
        } => StepFailure::Failed(step_error(codes::WRONG_SO_PIN, e.to_string(), false)),
        _ => StepFailure::from(e),
    }
}

mod renewal;
pub use renewal::{
    prove_kept_keys, read_keys, read_keys_with_pin, remove_old_certificates, request_renewal,
};

/// DER of a public key, for journaling.
pub fn spki_der(key: &SubjectPublicKeyInfoOwned) -> Result<Vec<u8>, StepFailure> {
    key.to_der()
        .map_err(|e| StepFailure::Failed(step_error(codes::ENCODING, e.to_string(), false)))
}

#[cfg(test)]
mod tests;
