//! A step as a typed request: each variant carries exactly what its step needs (PINs, the
//! token's serial, the issued certificates), built from the job's data (its phase, see
//! `job_data`) before the step starts. A step whose data the job's phase does not hold fails
//! there, with one error naming what is missing and the phase found, instead of each step
//! checking at run time.
//!
//! What this module does not do: run the step (`runner`), or decide which step is next
//! (the job machine).

use std::sync::Arc;

use ukey_protocol::bundle::CertBundle;
use ukey_protocol::codes;
use ukey_protocol::event::{Step, StepError};
use ukey_protocol::ids::TokenSerial;

use crate::certs::VerifiedCertificate;
use crate::job::code;
use crate::steps::{Pins, StepFailure};

use super::job_data::{JobData, Phase};

/// Certificates checked against the job and the trust material.
pub(super) type Verified = Arc<Vec<VerifiedCertificate>>;

/// How a step that writes or reports under the user's PIN gets it.
#[derive(Debug, Clone)]
pub(super) enum Login {
    /// The PINs set at `initialize`.
    Pins(Arc<Pins>),
    /// The job keeps the token's keys and PINs (`renew`, `change` without rekey): no user
    /// login, and no PINs in the report.
    KeptKeys,
}

impl Login {
    /// The PINs, if the job set them.
    pub(super) fn pins(&self) -> Option<&Pins> {
        match self {
            Login::Pins(pins) => Some(pins),
            Login::KeptKeys => None,
        }
    }
}

/// Which certificate requests the token makes.
#[derive(Debug, Clone)]
pub(super) enum Requests {
    /// For its new keys, logged in with the job's PINs.
    New(Arc<Pins>),
    /// Renewal requests for the keys it keeps (no login).
    Renewal,
}

/// The issued certificates a step works with.
#[derive(Debug, Clone)]
pub(super) enum Certificates {
    /// Verified already (by an earlier step of this run of the agent).
    Verified(Verified),
    /// As the platform sent them (or the journal kept them): verified first, read-only.
    ToVerify(CertBundle),
}

/// A step with what it needs.
#[derive(Debug, Clone)]
pub(super) enum StepRequest {
    Initialize {
        pins: Arc<Pins>,
    },
    GenerateKeys {
        pins: Arc<Pins>,
    },
    RequestCertificates {
        serial: TokenSerial,
        requests: Requests,
    },
    VerifyCertificates {
        certificates: Certificates,
    },
    Install {
        certificates: Certificates,
        login: Login,
    },
    Activate {
        pins: Arc<Pins>,
    },
    Bind {
        certificates: Certificates,
        login: Login,
    },
    ResetPin,
    ReadKeys,
    RemoveOldCertificates {
        certs: CertBundle,
    },
    /// A step this agent version does not know: it fails as unsupported.
    Unsupported(Step),
}

/// What the job holds when a step is to start (borrowed from its entry).
#[derive(Clone, Copy)]
pub(super) struct Holding<'a> {
    /// The job's data in its phase.
    pub(super) data: &'a JobData,
    /// The token working on the job (the job machine's).
    pub(super) serial: Option<&'a TokenSerial>,
    /// See [`super::runner::keeps_keys`].
    pub(super) keeps_keys: bool,
}

/// Data a step needs that its job does not hold in its phase (a flaw of the agent: the job
/// machine plans steps only after the ones that give their data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Missing {
    pub(super) step: Step,
    pub(super) what: &'static str,
    /// The phase the job's data was in.
    pub(super) found: Phase,
}

impl From<Missing> for StepFailure {
    fn from(m: Missing) -> StepFailure {
        StepFailure::Failed(StepError {
            code: code(codes::INTERNAL),
            message: format!(
                "{} missing for step {} (job data {})",
                m.what, m.step, m.found
            ),
            retryable: true,
        })
    }
}

impl StepRequest {
    /// The request for `step` from what the job holds: the certificates come from the
    /// phases that have them, a missing piece is a phase that lacks it.
    pub(super) fn build(step: Step, job: Holding<'_>) -> Result<StepRequest, Missing> {
        let missing = |what| Missing {
            step,
            what,
            found: job.data.phase(),
        };
        let pins = || job.data.pins().cloned().ok_or(missing("PINs"));
        let login = || match job.data.pins() {
            Some(pins) => Ok(Login::Pins(Arc::clone(pins))),
            None if job.keeps_keys => Ok(Login::KeptKeys),
            None => Err(missing("PINs")),
        };
        // Certificates verified earlier are used as they are; issued ones are verified first.
        let certificates = || match job.data {
            JobData::Verified { verified, .. } => Ok(Certificates::Verified(Arc::clone(verified))),
            JobData::Issued { certs, .. } => Ok(Certificates::ToVerify(certs.clone())),
            _ => Err(missing("certificates")),
        };
        let certs = || match job.data {
            JobData::Issued { certs, .. } | JobData::Verified { certs, .. } => Ok(certs.clone()),
            _ => Err(missing("certificates")),
        };
        Ok(match step {
            Step::Initialize => StepRequest::Initialize { pins: pins()? },
            Step::GenerateKeys => StepRequest::GenerateKeys { pins: pins()? },
            Step::RequestCertificates => {
                let missing_any = || missing("PINs or token serial");
                let serial = job.serial.cloned().ok_or_else(missing_any)?;
                let requests = match job.data.pins() {
                    _ if job.keeps_keys => Requests::Renewal,
                    Some(pins) => Requests::New(Arc::clone(pins)),
                    None => return Err(missing_any()),
                };
                StepRequest::RequestCertificates { serial, requests }
            }
            Step::VerifyCertificates => StepRequest::VerifyCertificates {
                certificates: certificates()?,
            },
            Step::Install => {
                let certificates = certificates()?;
                StepRequest::Install {
                    certificates,
                    login: login()?,
                }
            }
            Step::Activate => StepRequest::Activate { pins: pins()? },
            // After a restart the bundle is verified again (read-only) to rebuild the
            // fingerprints.
            Step::Bind => {
                let login = login()?;
                StepRequest::Bind {
                    certificates: certificates()?,
                    login,
                }
            }
            Step::ResetPin => StepRequest::ResetPin,
            Step::ReadKeys => StepRequest::ReadKeys,
            Step::RemoveOldCertificates => StepRequest::RemoveOldCertificates { certs: certs()? },
            other => StepRequest::Unsupported(other),
        })
    }

    /// The step it runs.
    pub(super) fn step(&self) -> Step {
        match self {
            StepRequest::Initialize { .. } => Step::Initialize,
            StepRequest::GenerateKeys { .. } => Step::GenerateKeys,
            StepRequest::RequestCertificates { .. } => Step::RequestCertificates,
            StepRequest::VerifyCertificates { .. } => Step::VerifyCertificates,
            StepRequest::Install { .. } => Step::Install,
            StepRequest::Activate { .. } => Step::Activate,
            StepRequest::Bind { .. } => Step::Bind,
            StepRequest::ResetPin => Step::ResetPin,
            StepRequest::ReadKeys => Step::ReadKeys,
            StepRequest::RemoveOldCertificates { .. } => Step::RemoveOldCertificates,
            StepRequest::Unsupported(step) => *step,
        }
    }
}

#[cfg(test)]
mod tests;
