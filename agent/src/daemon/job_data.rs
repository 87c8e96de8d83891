//! A job's data by phase: what it holds grows as it goes (its PINs at the claim, its CSR
//! bundle when `request-certificates` ends, the issued certificates when the platform answers,
//! the verified certificates when a step has checked them), and each phase holds only what
//! it has. Each transition consumes the old phase and returns the new one, or an error naming
//! the phase expected and the one found; the journal's replay drives the same transitions.
//!
//! What this module does not do: decide the job's next step (the job machine), journal
//! anything (`jobs`, `seats`, `runner`), or build a step's request from the data
//! (`step_request`).

use std::sync::Arc;

use ukey_protocol::bundle::{CertBundle, CsrBundle};

use crate::steps::Pins;

use super::step_request::Verified;

/// What a job holds, by phase. `pins` is `None` for a job whose plan sets no PINs (it
/// has no `initialize`: `renew`, `change` without rekey, `unlock`); that depends on the job's
/// kind, not its phase.
#[derive(Clone, Default)]
pub(super) enum JobData {
    /// Accepted, waiting for a token: nothing yet.
    #[default]
    Queued,
    /// A token claimed it: the PINs chosen for it, if it sets them.
    Claimed { pins: Option<Arc<Pins>> },
    /// Its token made the certificate requests: the CSR bundle sent to the platform.
    Requested {
        pins: Option<Arc<Pins>>,
        csr: CsrBundle,
    },
    /// The platform issued the certificates.
    Issued {
        pins: Option<Arc<Pins>>,
        csr: CsrBundle,
        certs: CertBundle,
    },
    /// A step checked the issued certificates against the job and the trust material (not
    /// journaled: after a restart the job is `Issued` again and the next step checks them).
    Verified {
        pins: Option<Arc<Pins>>,
        csr: CsrBundle,
        certs: CertBundle,
        verified: Verified,
    },
}

/// The name of a phase, for errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Queued,
    Claimed,
    Requested,
    Issued,
    Verified,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Queued => "queued",
            Phase::Claimed => "claimed",
            Phase::Requested => "requested",
            Phase::Issued => "issued",
            Phase::Verified => "verified",
        })
    }
}

/// A transition asked of a phase it does not start from (a flaw of the agent or a journal
/// of another version: the job machine orders the steps that give the data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job data: {transition} expects the {expected} phase, found {found}")]
pub(super) struct PhaseError {
    /// What was asked.
    pub(super) transition: &'static str,
    /// The phases it starts from.
    pub(super) expected: &'static str,
    /// The phase the job was in.
    pub(super) found: Phase,
}

/// A refused transition: the error, and the data unchanged (the caller keeps it; boxed so
/// that the transitions' results stay small).
pub(super) struct Refused {
    pub(super) error: PhaseError,
    pub(super) unchanged: Box<JobData>,
}

/// What a transition gives: the next phase, or the old one refused.
pub(super) type Transition = Result<JobData, Refused>;

impl JobData {
    /// The phase's name.
    pub(super) fn phase(&self) -> Phase {
        match self {
            JobData::Queued => Phase::Queued,
            JobData::Claimed { .. } => Phase::Claimed,
            JobData::Requested { .. } => Phase::Requested,
            JobData::Issued { .. } => Phase::Issued,
            JobData::Verified { .. } => Phase::Verified,
        }
    }

    fn mismatch(self, transition: &'static str, expected: &'static str) -> Transition {
        Err(Refused {
            error: PhaseError {
                transition,
                expected,
                found: self.phase(),
            },
            unchanged: Box::new(self),
        })
    }

    /// A token claimed the job, with the PINs chosen for it (if it sets them). From
    /// `Queued`, or from `Claimed` when a claim that never took effect (the agent stopping
    /// before journaling it) is made again with new PINs.
    pub(super) fn claim(self, pins: Option<Arc<Pins>>) -> Transition {
        match self {
            JobData::Queued | JobData::Claimed { .. } => Ok(JobData::Claimed { pins }),
            other => other.mismatch("claim", "queued or claimed"),
        }
    }

    /// The token made the certificate requests. From `Claimed`, or from `Requested` when
    /// the step ran again (after a restart) and made new ones.
    pub(super) fn request(self, csr: CsrBundle) -> Transition {
        match self {
            JobData::Claimed { pins } | JobData::Requested { pins, .. } => {
                Ok(JobData::Requested { pins, csr })
            }
            other => other.mismatch("request", "claimed or requested"),
        }
    }

    /// The platform issued the certificates for the requests sent.
    pub(super) fn issue(self, certs: CertBundle) -> Transition {
        match self {
            JobData::Requested { pins, csr } => Ok(JobData::Issued { pins, csr, certs }),
            other => other.mismatch("issue", "requested"),
        }
    }

    /// A step checked the issued certificates (again, for a later step that checks them
    /// too).
    pub(super) fn verify(self, verified: Verified) -> Transition {
        match self {
            JobData::Issued { pins, csr, certs }
            | JobData::Verified {
                pins, csr, certs, ..
            } => Ok(JobData::Verified {
                pins,
                csr,
                certs,
                verified,
            }),
            other => other.mismatch("verify", "issued or verified"),
        }
    }

    /// The PINs, from the claim on.
    pub(super) fn pins(&self) -> Option<&Arc<Pins>> {
        match self {
            JobData::Queued => None,
            JobData::Claimed { pins }
            | JobData::Requested { pins, .. }
            | JobData::Issued { pins, .. }
            | JobData::Verified { pins, .. } => pins.as_ref(),
        }
    }

    /// The CSR bundle, from the requests on.
    pub(super) fn csr(&self) -> Option<&CsrBundle> {
        match self {
            JobData::Queued | JobData::Claimed { .. } => None,
            JobData::Requested { csr, .. }
            | JobData::Issued { csr, .. }
            | JobData::Verified { csr, .. } => Some(csr),
        }
    }
}

/// Applies a transition to `data` in place: on a phase mismatch the phase stays as it was
/// and the error is returned for the caller to report.
pub(super) fn advance(
    data: &mut JobData,
    transition: impl FnOnce(JobData) -> Transition,
) -> Result<(), PhaseError> {
    match transition(std::mem::take(data)) {
        Ok(next) => {
            *data = next;
            Ok(())
        }
        Err(Refused { error, unchanged }) => {
            *data = *unchanged;
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests;
