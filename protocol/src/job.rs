//! The job document: what the platform asks a station to do with one token, for all five
//! job kinds, and its validation.
//!
//! A job document travels inside a signed [`crate::signed::JobEnvelope`]; decode it through
//! [`crate::signed::JobEnvelope::verify`], which checks the signature before looking at it.
//! This module knows nothing about signatures or about the token itself.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::codec::{Message, V1, check_len, check_text, check_utc, rfc3339};
use crate::error::{Problem, ProtocolError};
use crate::event::Step;
use crate::ident::CreditCode;
use crate::ids::{JobId, Nonce, StationId, TokenSerial};
use crate::keys::{KeyAlgorithm, KeyLabel, SignerId};
use crate::seal::{SealContext, SealPurpose, SealedSecret};

/// What a job does with its token (DESIGN.md, "Job kinds").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// 新办: personalize any blank token.
    New,
    /// 补办: as `new`; the job names the lost token (`old_token_serial`).
    Replace,
    /// 续费/延期: new certificates for the same keys on the named token.
    Renew,
    /// 变更: new subject on the named token; keys kept unless `rekey`.
    Change,
    /// 解锁: reset the named token's user PIN with the sealed SO PIN.
    Unlock,
}

impl JobKind {
    /// All kinds.
    pub const ALL: [JobKind; 5] = [
        JobKind::New,
        JobKind::Replace,
        JobKind::Renew,
        JobKind::Change,
        JobKind::Unlock,
    ];

    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::New => "new",
            JobKind::Replace => "replace",
            JobKind::Renew => "renew",
            JobKind::Change => "change",
            JobKind::Unlock => "unlock",
        }
    }

    /// Whether the job runs on any blank token (`new`, `replace`) rather than a named one.
    pub fn takes_blank_token(self) -> bool {
        matches!(self, JobKind::New | JobKind::Replace)
    }

    /// The steps a job of this kind goes through, in order, after it was received.
    /// `rekey` matters only for `change`.
    pub fn plan(self, rekey: bool) -> &'static [Step] {
        use Step::*;
        const PRODUCE: &[Step] = &[
            Claim,
            Initialize,
            GenerateKeys,
            RequestCertificates,
            VerifyCertificates,
            Install,
            Activate,
            Bind,
        ];
        const RECERTIFY: &[Step] = &[
            Claim,
            ReadKeys,
            RequestCertificates,
            VerifyCertificates,
            Install,
            RemoveOldCertificates,
            Bind,
        ];
        match (self, rekey) {
            (JobKind::New | JobKind::Replace, _) | (JobKind::Change, true) => PRODUCE,
            (JobKind::Renew, _) | (JobKind::Change, false) => RECERTIFY,
            (JobKind::Unlock, _) => &[Claim, ResetPin],
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the finished token reaches the customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMethod {
    /// 自取: collected at the counter.
    Pickup,
    /// 邮寄: sent by courier.
    Courier,
}

/// The company the certificates are for: what goes into them, nothing more (the platform
/// keeps the order's address, phone numbers and people; the station never needs them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enterprise {
    /// Registered name (1-128 characters); goes into the certificate subjects.
    pub name: String,
    /// Unified social credit code (GB 32100-2015); goes into the certificate subjects.
    pub credit_code: CreditCode,
}

/// The company's legal representative (法定代表人): the `seal-legal` certificate's person,
/// by name only. No ID-card number, mobile or other contact reaches the station.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegalRepresentative {
    /// Name (1-64 characters); the `seal-legal` certificate's common name.
    pub name: String,
}

/// The key pair a job asks for on one label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeySpec {
    /// Which key pair.
    pub label: KeyLabel,
    /// Its algorithm and size.
    pub alg: KeyAlgorithm,
    /// For an `sm2` key only: the signer ID its signatures (the CSR's among them) are made
    /// with; left out, the GM/T 0009 default [`SignerId::DEFAULT`]. Refused on other
    /// algorithms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer_id: Option<SignerId>,
}

impl KeySpec {
    /// A key spec without a signer ID (the default one for SM2).
    pub fn new(label: KeyLabel, alg: KeyAlgorithm) -> KeySpec {
        KeySpec {
            label,
            alg,
            signer_id: None,
        }
    }

    /// The SM2 signer ID this key signs with: the job's, or the default.
    pub fn sm2_signer_id(&self) -> SignerId {
        self.signer_id.unwrap_or_default()
    }
}

/// One job for one token. Fields are in canonical (signed) order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDocument {
    /// Protocol version.
    pub v: V1,
    /// The platform's job id.
    pub job_id: JobId,
    /// What to do.
    pub kind: JobKind,
    /// The station the job is for; any other station refuses it.
    pub station_id: StationId,
    /// The platform's order / service number (1-64 characters).
    pub order_number: String,
    /// The region the order belongs to (1-64 characters, e.g. an administrative division).
    pub region: String,
    /// The company.
    pub enterprise: Enterprise,
    /// Its legal representative.
    pub legal_representative: LegalRepresentative,
    /// One key spec per label, each label exactly once. For jobs that keep the keys
    /// (`renew`, `change` without rekey, `unlock`) they describe the keys on the token.
    pub keys: Vec<KeySpec>,
    /// Certificate validity in days (1-3650).
    pub validity_days: u32,
    /// The token a `renew`, `change` or `unlock` job works on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_token_serial: Option<TokenSerial>,
    /// The lost token a `replace` job replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_token_serial: Option<TokenSerial>,
    /// For `change`: generate new keys (re-initializing the token) instead of keeping them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rekey: bool,
    /// The token's SO PIN, sealed to the station with context
    /// [`SealContext::for_job`]`(job_id, so-pin)`: for `unlock` and for `change` with `rekey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub so_pin: Option<SealedSecret>,
    /// How the token reaches the customer.
    pub delivery: DeliveryMethod,
    /// When the platform issued the job (UTC).
    #[serde(with = "rfc3339")]
    pub issued_at: OffsetDateTime,
    /// After this instant (UTC) the station refuses the job.
    #[serde(with = "rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Single-use nonce; the station refuses a nonce it has seen.
    pub nonce: Nonce,
}

/// Longest order number, region, person name.
const SHORT_TEXT: usize = 64;
/// Longest company name.
const NAME_TEXT: usize = 128;
/// Longest certificate validity.
pub const MAX_VALIDITY_DAYS: u32 = 3650;

impl JobDocument {
    /// The algorithm the job asks for on `label`.
    pub fn key_spec(&self, label: KeyLabel) -> Option<KeyAlgorithm> {
        self.keys.iter().find(|k| k.label == label).map(|k| k.alg)
    }

    /// The SM2 signer ID of `label`'s key: the one the job names, else the GM/T 0009
    /// default. Meaningful only when the key is `sm2`.
    pub fn signer_id(&self, label: KeyLabel) -> SignerId {
        self.keys
            .iter()
            .find(|k| k.label == label)
            .map(KeySpec::sm2_signer_id)
            .unwrap_or_default()
    }

    /// The context the SO PIN of this job is sealed under.
    pub fn so_pin_context(&self) -> SealContext {
        SealContext::for_job(&self.job_id, SealPurpose::SoPin)
    }

    fn validate_kind_fields(&self) -> Result<(), ProtocolError> {
        let kind = self.kind;
        let targeted = matches!(kind, JobKind::Renew | JobKind::Change | JobKind::Unlock);
        match (&self.target_token_serial, targeted) {
            (None, true) => {
                return Err(ProtocolError::invalid(
                    "target_token_serial",
                    Problem::RequiredFor { kind },
                ));
            }
            (Some(_), false) => {
                return Err(ProtocolError::invalid(
                    "target_token_serial",
                    Problem::NotAllowedFor { kind },
                ));
            }
            (Some(s), true) => s.check("target_token_serial")?,
            (None, false) => {}
        }
        match (&self.old_token_serial, kind == JobKind::Replace) {
            (None, true) => {
                return Err(ProtocolError::invalid(
                    "old_token_serial",
                    Problem::RequiredFor { kind },
                ));
            }
            (Some(_), false) => {
                return Err(ProtocolError::invalid(
                    "old_token_serial",
                    Problem::NotAllowedFor { kind },
                ));
            }
            (Some(s), true) => s.check("old_token_serial")?,
            (None, false) => {}
        }
        if self.rekey && kind != JobKind::Change {
            return Err(ProtocolError::invalid(
                "rekey",
                Problem::NotAllowedFor { kind },
            ));
        }
        let needs_so_pin = kind == JobKind::Unlock || (kind == JobKind::Change && self.rekey);
        match (&self.so_pin, needs_so_pin) {
            (None, true) if kind == JobKind::Change => {
                Err(ProtocolError::invalid("so_pin", Problem::RequiredForRekey))
            }
            (None, true) => Err(ProtocolError::invalid(
                "so_pin",
                Problem::RequiredFor { kind },
            )),
            (Some(_), false) => Err(ProtocolError::invalid(
                "so_pin",
                Problem::NotAllowedFor { kind },
            )),
            (Some(sealed), true) => sealed.check("so_pin"),
            (None, false) => Ok(()),
        }
    }
}

/// Checks a per-label list: every label exactly once. `label_of` picks an entry's label.
pub(crate) fn check_labels<T>(
    path: &str,
    entries: &[T],
    label_of: impl Fn(&T) -> KeyLabel,
) -> Result<(), ProtocolError> {
    for (i, entry) in entries.iter().enumerate() {
        let label = label_of(entry);
        if entries[..i].iter().any(|e| label_of(e) == label) {
            return Err(ProtocolError::invalid(
                format!("{path}[{i}].label"),
                Problem::DuplicateLabel { label },
            ));
        }
    }
    for label in KeyLabel::ALL {
        if !entries.iter().any(|e| label_of(e) == label) {
            return Err(ProtocolError::invalid(
                path,
                Problem::MissingLabel { label },
            ));
        }
    }
    Ok(())
}

impl Message for JobDocument {
    const NAME: &'static str = "job document";
    /// What still fits a signed envelope of [`crate::MAX_MESSAGE_BYTES`].
    const MAX_BYTES: usize = crate::jws::max_payload_for(crate::codec::MAX_MESSAGE_BYTES);

    fn validate(&self) -> Result<(), ProtocolError> {
        self.job_id.check("job_id")?;
        self.station_id.check("station_id")?;
        check_text("order_number", &self.order_number, SHORT_TEXT)?;
        check_text("region", &self.region, SHORT_TEXT)?;

        let e = &self.enterprise;
        check_text("enterprise.name", &e.name, NAME_TEXT)?;
        e.credit_code.check("enterprise.credit_code")?;
        check_text(
            "legal_representative.name",
            &self.legal_representative.name,
            SHORT_TEXT,
        )?;

        check_len("keys", &self.keys, KeyLabel::ALL.len())?;
        check_labels("keys", &self.keys, |k| k.label)?;
        for (i, k) in self.keys.iter().enumerate() {
            if !k.label.allows(k.alg) {
                return Err(ProtocolError::invalid(
                    format!("keys[{i}].alg"),
                    Problem::AlgorithmNotAllowed {
                        label: k.label,
                        alg: k.alg,
                    },
                ));
            }
            if k.signer_id.is_some() && k.alg != KeyAlgorithm::Sm2 {
                return Err(ProtocolError::invalid(
                    format!("keys[{i}].signer_id"),
                    Problem::OnlyForAlgorithm {
                        alg: KeyAlgorithm::Sm2,
                    },
                ));
            }
        }
        if !(1..=MAX_VALIDITY_DAYS).contains(&self.validity_days) {
            return Err(ProtocolError::invalid(
                "validity_days",
                Problem::OutOfRange {
                    min: 1,
                    max: MAX_VALIDITY_DAYS.into(),
                    got: self.validity_days.into(),
                },
            ));
        }
        self.validate_kind_fields()?;
        check_utc("issued_at", &self.issued_at)?;
        check_utc("expires_at", &self.expires_at)?;
        if self.expires_at <= self.issued_at {
            return Err(ProtocolError::invalid(
                "expires_at",
                Problem::NotAfter { other: "issued_at" },
            ));
        }
        self.nonce.check("nonce")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_follow_the_design() {
        assert_eq!(JobKind::New.plan(false).first(), Some(&Step::Claim));
        assert_eq!(JobKind::New.plan(false).last(), Some(&Step::Bind));
        assert!(!JobKind::Renew.plan(false).contains(&Step::Initialize));
        assert!(JobKind::Change.plan(true).contains(&Step::GenerateKeys));
        assert!(!JobKind::Change.plan(false).contains(&Step::GenerateKeys));
        assert_eq!(JobKind::Unlock.plan(false), &[Step::Claim, Step::ResetPin]);
        assert!(JobKind::Replace.takes_blank_token());
        assert!(!JobKind::Unlock.takes_blank_token());
    }
}
