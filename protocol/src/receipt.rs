//! Production receipts: what a station did to one token for one job, signed with the station's
//! key, station → platform on `{p}/stations/{sid}/receipts` and kept in the station's audit log.
//!
//! A [`Receipt`] names the job, the token (serial, model, rack position), the operator, each
//! step's start and end, each key's attributes as read back from the token, each certificate's
//! serial and SHA-256, the self-test's result and the agent's version. It has no field for a
//! PIN, an ID-card number or a phone number, and its free-text fields refuse anything that
//! looks like one ([`Receipt::validate`]).
//!
//! A [`SignedReceipt`] is a JWS (RFC 7515) in the flattened JSON serialization,
//! `{"protected":…,"payload":…,"signature":…}`, protected header exactly
//! `{"alg":…,"kid":…,"typ":"ukey-receipt+jws"}`: the same envelope form as the platform's
//! signed messages, so one verifier serves both. `alg` is `ES256` for a P-256 station key and
//! `PS256` for an RSA one (`RS256` is accepted on verification); `kid` is the first 16 bytes of
//! the SHA-256 of the station key's SubjectPublicKeyInfo, in hex, so a verifier holding several
//! station keys (a key rotated) knows which one signed. The signature covers the exact
//! received `protected ‖ "." ‖ payload` strings, never a re-serialization.
//!
//! This module is pure: no IO, no clock. The signing code is local to receipts until the
//! protocol's general JWS type exists; the wire form is already that type's.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use signature::{RandomizedSigner, SignatureEncoding, Signer, Verifier};
use spki::EncodePublicKey;
use time::OffsetDateTime;

use crate::codec::{Message, V1, check_len, check_text, check_utc, rfc3339};
use crate::error::{Problem, ProtocolError};
use crate::event::Step;
use crate::ids::{ErrorCode, EventId, JobId, StationId, TokenSerial};
use crate::job::JobKind;
use crate::keys::{KeyAlgorithm, KeyLabel};
use crate::seal::{SealRecipient, UnsealKey};
use crate::signed::SignatureAlgorithm;

/// The JWS `typ` of a signed receipt.
pub const RECEIPT_TYP: &str = "ukey-receipt+jws";
/// Most steps a receipt lists (a job has about a dozen; retried steps add some).
pub const MAX_STEPS: usize = 64;
/// Most keys or certificates a receipt lists (a Ukey holds three).
pub const MAX_ITEMS: usize = 8;
/// Longest free text (model, operator, version, self-test detail).
pub const MAX_TEXT_CHARS: usize = 128;
/// Longest certificate serial in hex (RFC 5280: at most 20 octets).
pub const MAX_SERIAL_HEX: usize = 40;

/// How a job ended, as far as the token is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum ReceiptOutcome {
    /// Every step done; the token is finished.
    Succeeded,
    /// The job failed after it touched the token.
    Failed {
        /// The step that failed.
        step: Step,
        /// The failure's code, as in the step event.
        code: ErrorCode,
    },
}

/// One step of the job as it ran on the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptStep {
    /// Which step.
    pub step: Step,
    /// When it started (UTC).
    #[serde(with = "rfc3339")]
    pub started_at: OffsetDateTime,
    /// When it ended (UTC).
    #[serde(with = "rfc3339")]
    pub ended_at: OffsetDateTime,
    /// Whether it succeeded.
    pub ok: bool,
}

/// Where a key pair came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyOrigin {
    /// Generated on the token.
    Generated,
    /// Imported, wrapped to the token (an escrowed encryption key from the platform's KMC).
    Imported,
    /// Already on the token (renewal, change without re-keying).
    Existing,
}

/// A private key's attributes as read back from the token after the job wrote or used it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyAttributes {
    /// `CKA_TOKEN`.
    pub token: bool,
    /// `CKA_PRIVATE`.
    pub private: bool,
    /// `CKA_SENSITIVE`.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`.
    pub extractable: bool,
    /// `CKA_LOCAL`: generated on the token.
    pub local: bool,
    /// `CKA_ALWAYS_SENSITIVE`.
    pub always_sensitive: bool,
    /// `CKA_NEVER_EXTRACTABLE`.
    pub never_extractable: bool,
}

/// One key pair on the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptKey {
    /// Which key.
    pub label: KeyLabel,
    /// Its algorithm.
    pub algorithm: KeyAlgorithm,
    /// Generated, imported or kept.
    pub origin: KeyOrigin,
    /// The private key's attributes as read back.
    pub attributes: KeyAttributes,
}

/// One certificate written to the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptCertificate {
    /// Which certificate.
    pub label: KeyLabel,
    /// Its serial number, lower-case hex (1-40 characters).
    pub serial: String,
    /// SHA-256 over its DER, lower-case hex (64 characters).
    pub sha256: String,
}

/// The self-test of every key on the token (sign / decrypt with the on-token key, check on
/// the host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfTestResult {
    /// Whether every key passed.
    pub passed: bool,
    /// What failed, when something did (1-128 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A production receipt (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Protocol version.
    pub v: V1,
    /// The receipt's id, chosen by the station and unique across its events and receipts (a
    /// UUID is fine); the platform acknowledges the receipt by it on `acks`, as it does events.
    pub receipt_id: EventId,
    /// The station that made the token.
    pub station_id: StationId,
    /// The job.
    pub job_id: JobId,
    /// The job's kind.
    pub kind: JobKind,
    /// How the job ended.
    pub outcome: ReceiptOutcome,
    /// The token's serial number.
    pub token_serial: TokenSerial,
    /// The token's model, as the configuration's model table names it (1-128 characters).
    pub token_model: String,
    /// The rack position the token sat in (0-based), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    /// Who was signed in at the desk (staff id, 1-128 characters), when someone was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// Each step's start and end, in the order they ran.
    pub steps: Vec<ReceiptStep>,
    /// Each key pair as read back.
    pub keys: Vec<ReceiptKey>,
    /// Each certificate written.
    pub certificates: Vec<ReceiptCertificate>,
    /// The self-test, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_test: Option<SelfTestResult>,
    /// The agent's version (1-128 characters).
    pub agent_version: String,
    /// When the receipt was made (UTC).
    #[serde(with = "rfc3339")]
    pub made_at: OffsetDateTime,
}

fn check_hex(path: &str, s: &str, min: usize, max: usize) -> Result<(), ProtocolError> {
    if s.is_empty() {
        return Err(ProtocolError::invalid(path, Problem::Empty));
    }
    if s.len() < min {
        return Err(ProtocolError::invalid(path, Problem::TooShort { min }));
    }
    if s.len() > max {
        return Err(ProtocolError::invalid(path, Problem::TooLong { max }));
    }
    if let Some(position) = s
        .chars()
        .position(|c| !(c.is_ascii_digit() || ('a'..='f').contains(&c)))
    {
        return Err(ProtocolError::invalid(
            path,
            Problem::BadCharacter { position },
        ));
    }
    Ok(())
}

/// Refuses free text holding what looks like personal data: a run of 11 or more digits (a
/// mobile number, an ID-card number, which may end in `X`). Receipts are kept for years and
/// read by auditors; no field of theirs is meant for such data.
pub fn check_no_personal_digits(path: &str, s: &str) -> Result<(), ProtocolError> {
    let mut run = 0usize;
    for c in s.chars() {
        if c.is_ascii_digit() {
            run += 1;
            if run >= 11 {
                return Err(ProtocolError::invalid(
                    path,
                    Problem::BadBinary {
                        detail: "looks like a phone or ID-card number",
                    },
                ));
            }
        } else {
            run = 0;
        }
    }
    Ok(())
}

fn check_free_text(path: &str, s: &str) -> Result<(), ProtocolError> {
    check_text(path, s, MAX_TEXT_CHARS)?;
    check_no_personal_digits(path, s)
}

impl Message for Receipt {
    const NAME: &'static str = "receipt";
    const MAX_BYTES: usize = 32 * 1024;

    fn validate(&self) -> Result<(), ProtocolError> {
        self.receipt_id.check("receipt_id")?;
        self.station_id.check("station_id")?;
        self.job_id.check("job_id")?;
        self.token_serial.check("token_serial")?;
        if let ReceiptOutcome::Failed { code, .. } = &self.outcome {
            code.check("outcome.code")?;
        }
        check_free_text("token_model", &self.token_model)?;
        if let Some(operator) = &self.operator {
            check_free_text("operator", operator)?;
        }
        check_free_text("agent_version", &self.agent_version)?;
        check_utc("made_at", &self.made_at)?;
        check_len("steps", &self.steps, MAX_STEPS)?;
        for (i, step) in self.steps.iter().enumerate() {
            check_utc(&format!("steps[{i}].started_at"), &step.started_at)?;
            check_utc(&format!("steps[{i}].ended_at"), &step.ended_at)?;
            if step.ended_at < step.started_at {
                return Err(ProtocolError::invalid(
                    format!("steps[{i}].ended_at"),
                    Problem::NotAfter {
                        other: "started_at",
                    },
                ));
            }
        }
        check_len("keys", &self.keys, MAX_ITEMS)?;
        check_len("certificates", &self.certificates, MAX_ITEMS)?;
        for (i, cert) in self.certificates.iter().enumerate() {
            check_hex(
                &format!("certificates[{i}].serial"),
                &cert.serial,
                1,
                MAX_SERIAL_HEX,
            )?;
            check_hex(&format!("certificates[{i}].sha256"), &cert.sha256, 64, 64)?;
        }
        if let Some(detail) = self.self_test.as_ref().and_then(|t| t.detail.as_ref()) {
            check_free_text("self_test.detail", detail)?;
        }
        Ok(())
    }
}

/// The station's key as a receipt signer: `ES256` for P-256, `PS256` for RSA. `Debug` hides
/// the key.
#[derive(Clone)]
pub struct ReceiptSigner {
    key: SignerKey,
    key_id: String,
}

#[derive(Clone)]
enum SignerKey {
    Es256(p256::ecdsa::SigningKey),
    Ps256(Box<rsa::PrivateKey>),
}

impl fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReceiptSigner({}, <secret>)", self.key_id)
    }
}

impl ReceiptSigner {
    /// The signer of the station whose private key is `key`.
    pub fn new(key: &UnsealKey) -> Result<ReceiptSigner, ProtocolError> {
        let key_id = station_key_id(&key.recipient())?;
        let key = match key {
            UnsealKey::P256(k) => SignerKey::Es256(p256::ecdsa::SigningKey::from(k)),
            UnsealKey::Rsa(k) => SignerKey::Ps256(k.clone()),
        };
        Ok(ReceiptSigner { key, key_id })
    }

    /// The `kid` this signer writes.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    fn alg(&self) -> SignatureAlgorithm {
        match self.key {
            SignerKey::Es256(_) => SignatureAlgorithm::Es256,
            SignerKey::Ps256(_) => SignatureAlgorithm::Ps256,
        }
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let failed = |e: signature::Error| ProtocolError::Key {
            what: "station signing key",
            detail: e.to_string(),
        };
        match &self.key {
            SignerKey::Es256(k) => {
                let sig: p256::ecdsa::Signature = k.try_sign(msg).map_err(failed)?;
                Ok(sig.to_bytes().to_vec())
            }
            SignerKey::Ps256(k) => rsa::pss::SigningKey::<Sha256>::new((**k).clone())
                .try_sign_with_rng(&mut getrandom::SysRng, msg)
                .map(|s| s.to_vec())
                .map_err(failed),
        }
    }
}

/// The `kid` of a station key: the first 16 bytes of SHA-256 over its DER
/// SubjectPublicKeyInfo, lower-case hex (32 characters).
pub fn station_key_id(key: &SealRecipient) -> Result<String, ProtocolError> {
    let der = match key {
        SealRecipient::P256(k) => k.to_public_key_der(),
        SealRecipient::Rsa(k) => k.to_public_key_der(),
    }
    .map_err(|e| ProtocolError::Key {
        what: "station public key",
        detail: e.to_string(),
    })?;
    Ok(hex::encode(&Sha256::digest(der.as_bytes())[..16]))
}

/// The station public keys that receipts are checked against, by `kid`.
#[derive(Debug, Clone, Default)]
pub struct ReceiptVerifier {
    keys: Vec<(String, SealRecipient)>,
}

impl ReceiptVerifier {
    /// A verifier trusting one station key.
    pub fn new(key: SealRecipient) -> Result<ReceiptVerifier, ProtocolError> {
        let mut verifier = ReceiptVerifier::default();
        verifier.insert(key)?;
        Ok(verifier)
    }

    /// Trusts one more station key (e.g. the key used before a rotation).
    pub fn insert(&mut self, key: SealRecipient) -> Result<(), ProtocolError> {
        let kid = station_key_id(&key)?;
        self.keys.retain(|(id, _)| *id != kid);
        self.keys.push((kid, key));
        Ok(())
    }

    fn verify(
        &self,
        alg: SignatureAlgorithm,
        kid: &str,
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), ProtocolError> {
        let key = self
            .keys
            .iter()
            .find(|(id, _)| id == kid)
            .map(|(_, k)| k)
            .ok_or_else(|| ProtocolError::UnknownKeyId {
                key_id: kid.to_owned(),
            })?;
        let bad = || ProtocolError::BadSignature {
            key_id: kid.to_owned(),
        };
        match (alg, key) {
            (SignatureAlgorithm::Es256, SealRecipient::P256(k)) => {
                let point = k.to_sec1_bytes();
                ring::signature::UnparsedPublicKey::new(
                    &ring::signature::ECDSA_P256_SHA256_FIXED,
                    &point,
                )
                .verify(msg, sig)
                .map_err(|_| bad())
            }
            (SignatureAlgorithm::Rs256, SealRecipient::Rsa(k)) => {
                let sig = rsa::pkcs1v15::Signature::try_from(sig).map_err(|_| bad())?;
                rsa::pkcs1v15::VerifyingKey::<Sha256>::new(k.clone())
                    .verify(msg, &sig)
                    .map_err(|_| bad())
            }
            (SignatureAlgorithm::Ps256, SealRecipient::Rsa(k)) => {
                let sig = rsa::pss::Signature::try_from(sig).map_err(|_| bad())?;
                rsa::pss::VerifyingKey::<Sha256>::new(k.clone())
                    .verify(msg, &sig)
                    .map_err(|_| bad())
            }
            (alg, key) => Err(ProtocolError::SignatureAlgorithmMismatch {
                alg: alg.as_str(),
                key_type: match key {
                    SealRecipient::P256(_) => "EC P-256",
                    SealRecipient::Rsa(_) => "RSA",
                },
                key_id: kid.to_owned(),
            }),
        }
    }
}

/// The JWS protected header of a receipt, exactly these members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptHeader {
    alg: SignatureAlgorithm,
    kid: String,
    typ: String,
}

/// A signed receipt as published and as kept in the audit log (see the module documentation).
/// Parsing checks the shape; [`SignedReceipt::verify`] checks the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReceipt {
    protected: String,
    payload: String,
    signature: String,
}

fn b64(field: &'static str, text: &str) -> Result<Vec<u8>, ProtocolError> {
    URL_SAFE_NO_PAD.decode(text).map_err(|_| {
        ProtocolError::invalid(
            field,
            Problem::BadBinary {
                detail: "not base64url without padding",
            },
        )
    })
}

fn malformed(message: &'static str) -> impl Fn(serde_json::Error) -> ProtocolError {
    move |e| ProtocolError::Malformed {
        message,
        detail: e.to_string(),
    }
}

impl SignedReceipt {
    /// The largest signed receipt: the receipt's bound in base64url plus header and an
    /// RSA-4096 signature.
    pub const MAX_BYTES: usize = Receipt::MAX_BYTES / 3 * 4 + 1024;

    /// Validates and encodes `receipt`, then signs those exact bytes.
    pub fn sign(receipt: &Receipt, signer: &ReceiptSigner) -> Result<SignedReceipt, ProtocolError> {
        let header = ReceiptHeader {
            alg: signer.alg(),
            kid: signer.key_id.clone(),
            typ: RECEIPT_TYP.to_owned(),
        };
        let header = serde_json::to_vec(&header).map_err(malformed("receipt JWS header"))?;
        let protected = URL_SAFE_NO_PAD.encode(header);
        let payload = URL_SAFE_NO_PAD.encode(receipt.encode()?);
        let signature =
            URL_SAFE_NO_PAD.encode(signer.sign(signing_input(&protected, &payload).as_bytes())?);
        Ok(SignedReceipt {
            protected,
            payload,
            signature,
        })
    }

    /// Parses a signed receipt as received (size, JSON shape, members); not yet verified.
    pub fn decode(bytes: &[u8]) -> Result<SignedReceipt, ProtocolError> {
        if bytes.len() > Self::MAX_BYTES {
            return Err(ProtocolError::TooLarge {
                message: "signed receipt",
                size: bytes.len(),
                limit: Self::MAX_BYTES,
            });
        }
        serde_json::from_slice(bytes).map_err(malformed("signed receipt"))
    }

    /// The wire form: compact JSON, members `protected`, `payload`, `signature`.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        serde_json::to_vec(self).map_err(malformed("signed receipt"))
    }

    /// The receipt as carried, **unverified** (to list or filter; trust it only after
    /// [`SignedReceipt::verify`]).
    pub fn receipt_unverified(&self) -> Result<Receipt, ProtocolError> {
        Receipt::decode(&b64("payload", &self.payload)?)
    }

    /// The `kid` the header names, unverified.
    pub fn key_id(&self) -> Result<String, ProtocolError> {
        Ok(self.header()?.kid)
    }

    fn header(&self) -> Result<ReceiptHeader, ProtocolError> {
        let header: ReceiptHeader = serde_json::from_slice(&b64("protected", &self.protected)?)
            .map_err(malformed("receipt JWS header"))?;
        check_text("protected.kid", &header.kid, 64)?;
        Ok(header)
    }

    /// Checks the signature over the received bytes with the key the `kid` names, then the
    /// `typ`, then decodes and validates the receipt.
    pub fn verify(&self, keys: &ReceiptVerifier) -> Result<Receipt, ProtocolError> {
        let header = self.header()?;
        keys.verify(
            header.alg,
            &header.kid,
            signing_input(&self.protected, &self.payload).as_bytes(),
            &b64("signature", &self.signature)?,
        )?;
        if header.typ != RECEIPT_TYP {
            return Err(ProtocolError::invalid(
                "protected.typ",
                Problem::BadBinary {
                    detail: "not a receipt (typ must be ukey-receipt+jws)",
                },
            ));
        }
        self.receipt_unverified()
    }
}

/// The JWS signing input, `ASCII(protected ‖ "." ‖ payload)` (RFC 7515 §5.1).
fn signing_input(protected: &str, payload: &str) -> String {
    let mut input = String::with_capacity(protected.len() + 1 + payload.len());
    input.push_str(protected);
    input.push('.');
    input.push_str(payload);
    input
}

#[cfg(test)]
mod tests;
