//! Step events: what a station reports about a job, one event per finished step, and the job
//! execution state machine (AWS IoT Jobs style).
//!
//! Each event has a station-chosen [`EventId`] (the platform de-duplicates by it) and a
//! per-job sequence number starting at 1 (the platform orders by it). Events wait in the
//! station's outbox until the platform's [`crate::ack::Ack`] names their id. This module holds
//! the types and the transition rule; it does not keep any state.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::codec::{Message, V1, check_len, check_text, check_utc, rfc3339};
use crate::error::{Problem, ProtocolError};
use crate::ids::{ErrorCode, EventId, JobId, TokenSerial};
use crate::keys::KeyLabel;
use crate::seal::SealedSecret;

/// A step of a job. Which steps a kind goes through: [`crate::job::JobKind::plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// The job arrived: signature, expiry, station and nonce checked, job journaled.
    /// Reported as `queued` or `rejected`.
    Receive,
    /// A token took the job (a blank one, or the named one); the event carries its serial.
    Claim,
    /// `C_InitToken` with a random SO PIN, `C_InitPIN` with a random user PIN.
    Initialize,
    /// Three key pairs generated on the token and their attributes read back.
    GenerateKeys,
    /// The public keys (and current certificates) read from the token, no user PIN needed
    /// (`renew`, `change` without rekey).
    ReadKeys,
    /// CSRs or renewal requests sent to the platform.
    RequestCertificates,
    /// The issued certificates checked against the token's keys, the job and the CA.
    VerifyCertificates,
    /// Certificate objects written to the token.
    Install,
    /// The previous certificate objects removed after the new ones were written.
    RemoveOldCertificates,
    /// Self-test of every key on the token, then logout.
    Activate,
    /// The user PIN reset by the SO (`unlock`); the event carries the new PIN, sealed.
    ResetPin,
    /// Token serial, certificate fingerprints and sealed PINs reported to the platform.
    Bind,
}

impl Step {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Receive => "receive",
            Step::Claim => "claim",
            Step::Initialize => "initialize",
            Step::GenerateKeys => "generate-keys",
            Step::ReadKeys => "read-keys",
            Step::RequestCertificates => "request-certificates",
            Step::VerifyCertificates => "verify-certificates",
            Step::Install => "install",
            Step::RemoveOldCertificates => "remove-old-certificates",
            Step::Activate => "activate",
            Step::ResetPin => "reset-pin",
            Step::Bind => "bind",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's execution state, as in AWS IoT Jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecutionState {
    /// Accepted and journaled, waiting for a token.
    Queued,
    /// Being worked on; the event's step says where.
    InProgress,
    /// Done; the platform has everything it needs.
    Succeeded,
    /// Stopped by an error at the event's step; `error.retryable` says whether to try again.
    Failed,
    /// Refused on receipt (forged, expired, foreign, replayed, malformed, duplicate id).
    Rejected,
    /// A step or the whole job ran out of time (e.g. no certificates, token not re-inserted).
    TimedOut,
    /// Canceled by the platform.
    Canceled,
}

impl ExecutionState {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionState::Queued => "queued",
            ExecutionState::InProgress => "in-progress",
            ExecutionState::Succeeded => "succeeded",
            ExecutionState::Failed => "failed",
            ExecutionState::Rejected => "rejected",
            ExecutionState::TimedOut => "timed-out",
            ExecutionState::Canceled => "canceled",
        }
    }

    /// Whether nothing follows this state.
    pub fn is_terminal(self) -> bool {
        !matches!(self, ExecutionState::Queued | ExecutionState::InProgress)
    }

    /// Whether a job's first event may carry this state: `queued`, or `rejected` for a job
    /// refused on receipt.
    pub fn is_initial(self) -> bool {
        matches!(self, ExecutionState::Queued | ExecutionState::Rejected)
    }

    /// Whether a job in state `self` may move to `next`:
    ///
    /// | from | to |
    /// |---|---|
    /// | `queued` | `in-progress`, `failed`, `timed-out`, `canceled` |
    /// | `in-progress` | `in-progress` (next step), `succeeded`, `failed`, `timed-out`, `canceled` |
    /// | terminal | nothing |
    pub fn can_move_to(self, next: ExecutionState) -> bool {
        use ExecutionState::*;
        match self {
            Queued => matches!(next, InProgress | Failed | TimedOut | Canceled),
            InProgress => matches!(next, InProgress | Succeeded | Failed | TimedOut | Canceled),
            Succeeded | Failed | Rejected | TimedOut | Canceled => false,
        }
    }

    /// Whether an event in this state must carry an error.
    pub fn needs_error(self) -> bool {
        matches!(
            self,
            ExecutionState::Failed | ExecutionState::Rejected | ExecutionState::TimedOut
        )
    }
}

impl fmt::Display for ExecutionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a step failed. The message is for people and never contains PINs or personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    /// Machine-readable code, e.g. `token-removed`, `certificate-key-mismatch`.
    pub code: ErrorCode,
    /// Human-readable explanation (1-512 characters).
    pub message: String,
    /// Whether the platform may retry the job (e.g. token pulled) or must fix something first.
    pub retryable: bool,
}

/// A certificate as bound to the order: its label, serial number and SHA-256 fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertFingerprint {
    /// Which certificate.
    pub label: KeyLabel,
    /// The certificate's serial number, lower-case hex.
    pub serial: String,
    /// SHA-256 over the certificate's DER, lower-case hex (64 characters).
    pub sha256: String,
}

/// The `bind` step's report: what the platform binds to the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindReport {
    /// One fingerprint per label.
    pub certificates: Vec<CertFingerprint>,
    /// The SO PIN sealed to the platform (context `job/{jid}/so-pin`), when the job set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub so_pin: Option<SealedSecret>,
    /// The user PIN sealed to the platform (context `job/{jid}/user-pin`), when the job set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_pin: Option<SealedSecret>,
}

/// Step-specific data of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepData {
    /// Only with step `bind`.
    Bind(BindReport),
    /// Only with step `reset-pin`: the new user PIN sealed to the platform
    /// (context `job/{jid}/user-pin`).
    PinReset {
        /// The sealed PIN.
        user_pin: SealedSecret,
    },
    /// The job waits at the event's step (state `in-progress`), e.g. the token was pulled.
    Parked {
        /// Why, machine-readable (e.g. `token-removed`).
        reason: ErrorCode,
    },
    /// Only with step `request-certificates`: the requests were published on
    /// `jobs/{jid}/csr` as a bundle of this SHA-256 (lower-case hex), to correlate the two.
    Requested {
        /// SHA-256 of the CSR bundle payload.
        bundle_sha256: String,
    },
}

impl StepData {
    fn name(&self) -> &'static str {
        match self {
            StepData::Bind(_) => "bind",
            StepData::PinReset { .. } => "pin_reset",
            StepData::Parked { .. } => "parked",
            StepData::Requested { .. } => "requested",
        }
    }
}

/// A step event, station → platform on `{p}/stations/{sid}/jobs/{jid}/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepEvent {
    /// Protocol version.
    pub v: V1,
    /// Unique id of this event; the platform de-duplicates by it and acknowledges it.
    pub event_id: EventId,
    /// The job.
    pub job_id: JobId,
    /// Per-job sequence number, 1, 2, 3, … in the order the station produced the events.
    pub seq: u64,
    /// The step this event reports on.
    pub step: Step,
    /// The job's execution state after this step.
    pub state: ExecutionState,
    /// The token working on the job, once claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_serial: Option<TokenSerial>,
    /// Why the job failed, was rejected or timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
    /// Step-specific data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<StepData>,
    /// When the step started (UTC), if it ran.
    #[serde(
        default,
        with = "rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub started_at: Option<OffsetDateTime>,
    /// When the step ended and this event was made (UTC).
    #[serde(with = "rfc3339")]
    pub at: OffsetDateTime,
}

fn check_hex(path: &str, s: &str, len: Option<usize>) -> Result<(), ProtocolError> {
    if s.is_empty() {
        return Err(ProtocolError::invalid(path, Problem::Empty));
    }
    if let Some(expected) = len
        && s.len() != expected
    {
        return Err(ProtocolError::invalid(
            path,
            Problem::WrongLength {
                expected,
                got: s.chars().count(),
            },
        ));
    }
    if s.len() > 128 {
        return Err(ProtocolError::invalid(path, Problem::TooLong { max: 128 }));
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

impl Message for StepEvent {
    const NAME: &'static str = "step event";
    const MAX_BYTES: usize = 16 * 1024;

    fn validate(&self) -> Result<(), ProtocolError> {
        self.event_id.check("event_id")?;
        self.job_id.check("job_id")?;
        if self.seq == 0 {
            return Err(ProtocolError::invalid(
                "seq",
                Problem::OutOfRange {
                    min: 1,
                    max: u64::MAX,
                    got: 0,
                },
            ));
        }
        if let Some(serial) = &self.token_serial {
            serial.check("token_serial")?;
        }
        match (&self.error, self.state.needs_error()) {
            (None, true) => {
                return Err(ProtocolError::invalid(
                    "error",
                    Problem::ErrorPresence {
                        state: self.state.as_str(),
                        needs: "requires an error",
                    },
                ));
            }
            // A cancel's reason rides in its `canceled` event's error (code `canceled`).
            (Some(e), false) if self.state == ExecutionState::Canceled => {
                e.code.check("error.code")?;
                check_text("error.message", &e.message, 512)?;
            }
            (Some(_), false) => {
                return Err(ProtocolError::invalid(
                    "error",
                    Problem::ErrorPresence {
                        state: self.state.as_str(),
                        needs: "must not carry an error",
                    },
                ));
            }
            (Some(e), true) => {
                e.code.check("error.code")?;
                check_text("error.message", &e.message, 512)?;
            }
            (None, false) => {}
        }
        if let Some(data) = &self.data {
            let fits = match data {
                StepData::Bind(_) => self.step == Step::Bind,
                StepData::PinReset { .. } => self.step == Step::ResetPin,
                StepData::Requested { .. } => self.step == Step::RequestCertificates,
                StepData::Parked { .. } => self.state == ExecutionState::InProgress,
            };
            if !fits {
                return Err(ProtocolError::invalid(
                    "data",
                    Problem::DataNotForStep {
                        data: data.name(),
                        step: self.step.as_str(),
                    },
                ));
            }
            match data {
                StepData::Bind(report) => {
                    check_len("data.bind.certificates", &report.certificates, 3)?;
                    crate::job::check_labels(
                        "data.bind.certificates",
                        &report.certificates,
                        |c| c.label,
                    )?;
                    for (i, c) in report.certificates.iter().enumerate() {
                        check_hex(
                            &format!("data.bind.certificates[{i}].serial"),
                            &c.serial,
                            None,
                        )?;
                        check_hex(
                            &format!("data.bind.certificates[{i}].sha256"),
                            &c.sha256,
                            Some(64),
                        )?;
                    }
                    if let Some(s) = &report.so_pin {
                        s.check("data.bind.so_pin")?;
                    }
                    if let Some(s) = &report.user_pin {
                        s.check("data.bind.user_pin")?;
                    }
                }
                StepData::PinReset { user_pin } => user_pin.check("data.pin_reset.user_pin")?,
                StepData::Parked { reason } => reason.check("data.parked.reason")?,
                StepData::Requested { bundle_sha256 } => {
                    check_hex("data.requested.bundle_sha256", bundle_sha256, Some(64))?;
                }
            }
        }
        if let Some(started) = &self.started_at {
            check_utc("started_at", started)?;
        }
        check_utc("at", &self.at)?;
        if let Some(started) = self.started_at
            && started > self.at
        {
            return Err(ProtocolError::invalid(
                "at",
                Problem::NotAfter {
                    other: "started_at",
                },
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine() {
        use ExecutionState::*;
        let all = [
            Queued, InProgress, Succeeded, Failed, Rejected, TimedOut, Canceled,
        ];
        assert!(Queued.can_move_to(InProgress));
        assert!(InProgress.can_move_to(InProgress));
        assert!(InProgress.can_move_to(Succeeded));
        assert!(!Queued.can_move_to(Succeeded));
        assert!(!Queued.can_move_to(Rejected));
        assert!(!InProgress.can_move_to(Queued));
        for s in all.into_iter().filter(|s| s.is_terminal()) {
            assert!(all.iter().all(|n| !s.can_move_to(*n)), "{s} moves on");
        }
        assert_eq!(
            all.iter().filter(|s| s.is_initial()).count(),
            2,
            "queued and rejected"
        );
    }
}
