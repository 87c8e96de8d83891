//! Production receipts in the running daemon, and the audit entries a job's steps leave.
//!
//! A job's [`ReceiptBuilder`] starts with its first step on the token and follows each step:
//! start and end, the keys the job generated with their attributes as read back (the token
//! layer reads `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE`, `CKA_EXTRACTABLE`, `CKA_LOCAL`,
//! `CKA_ALWAYS_SENSITIVE`, `CKA_NEVER_EXTRACTABLE` back after generating and fails the step
//! unless each has its required value, so a key listed here showed exactly those), each
//! certificate installed (serial, SHA-256), the self-test, the token's serial, model and
//! position, and the operator signed in when the job started on the token. When the job
//! ends, succeeded or failed after its token was touched, the receipt is signed with the
//! station key, handed to the audit log, and pushed to the outbox (fsync'd) for the
//! `receipts` topic: the platform acknowledges it by its `receipt_id` like an event, and it
//! is sent again until then, across restarts.
//!
//! Along the way the steps' audit entries are recorded: a token wiped (`initialize`), a user
//! PIN reset (`reset-pin`), a PIN found locked, a certificate refused.
//!
//! What it does not do: keep a receipt in the making across a restart (a job resumed after
//! one gets a receipt of the steps run since), or list keys a job kept (`renew`, `change`
//! without re-keying: their private attributes cannot be read without the user PIN).

use std::collections::BTreeMap;

use ukey_protocol::codes::{self, Code};
use ukey_protocol::event::{ExecutionState, Step, StepError};
use ukey_protocol::ids::{ErrorCode, JobId, TokenSerial};
use ukey_protocol::keys::KeyLabel;
use ukey_protocol::seal::UnsealKey;
use ukey_protocol::{KeyAttributes, KeyOrigin, ReceiptSigner};

use crate::audit::{AuditEvent, PinKind, ReceiptBuilder};
use crate::job::{Action, StepOutput};
use crate::outbox::OutboxEntry;
use crate::steps::StepFailure;

use super::runner::StepDone;
use super::{Daemon, DaemonError, now_utc};

/// The receipts being made, and the key that signs them.
pub(super) struct Receipts {
    /// `None` when the station key cannot sign (said once at start; no receipts then).
    signer: Option<ReceiptSigner>,
    building: BTreeMap<JobId, Building>,
    /// Receipts made since start (for the status and the metrics).
    made: u64,
}

struct Building {
    builder: ReceiptBuilder,
    /// Whether the builder holds the token's real serial (a blank SoftHSM2 token has none
    /// until it is initialized).
    serial_known: bool,
}

/// The attributes the token layer requires of every private key it generates, and checks
/// after reading them back (`token::keys::required_private_attributes`).
const GENERATED_KEY_ATTRIBUTES: KeyAttributes = KeyAttributes {
    token: true,
    private: true,
    sensitive: true,
    extractable: false,
    local: true,
    always_sensitive: true,
    never_extractable: true,
};

/// Stands in for a serial the token does not have yet.
const UNKNOWN_SERIAL: &str = "unknown";

impl Receipts {
    pub(super) fn new(station_key: &UnsealKey) -> Receipts {
        let signer = match ReceiptSigner::new(station_key) {
            Ok(signer) => Some(signer),
            Err(e) => {
                tracing::error!(error = %e, "the station key cannot sign receipts: no production receipts are made");
                None
            }
        };
        Receipts {
            signer,
            building: BTreeMap::new(),
            made: 0,
        }
    }

    /// Receipts made since start.
    pub(super) fn made(&self) -> u64 {
        self.made
    }
}

fn is(code: &ErrorCode, expected: Code) -> bool {
    code.as_str() == expected.as_str()
}

/// The failing step and code among a job's last reports (the one that ended it).
pub(super) fn failure_of(actions: &[Action]) -> Option<(Step, ErrorCode)> {
    actions.iter().rev().find_map(|a| match a {
        Action::Report(report) => report
            .error
            .as_ref()
            .map(|e: &StepError| (report.step, e.code.clone())),
        _ => None,
    })
}

impl Daemon {
    /// A step starts on a job's token: the receipt begins with the job's first one.
    pub(super) fn receipt_step_started(&mut self, job_id: &JobId, step: Step) {
        let Some(entry) = self.jobs.get(job_id) else {
            return;
        };
        if !self.receipts.building.contains_key(job_id) {
            let seat = entry.token.as_ref().and_then(|k| self.seats.get(k));
            let serial = entry
                .machine
                .serial()
                .cloned()
                .or_else(|| seat.and_then(|s| TokenSerial::new(s.present.serial.clone()).ok()));
            let model = entry
                .token
                .as_ref()
                .and_then(|key| self.model_of(key))
                .map(|m| m.name.clone())
                .or_else(|| seat.map(|s| s.present.model.clone()))
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| "unknown".to_owned());
            let serial_known = serial.is_some();
            let Some(serial) = serial.or_else(|| TokenSerial::new(UNKNOWN_SERIAL).ok()) else {
                return;
            };
            let builder = ReceiptBuilder::new(
                self.station.clone(),
                job_id.clone(),
                entry.doc.kind,
                serial,
                &model,
                entry
                    .token
                    .as_ref()
                    .zip(seat)
                    .map(|(key, seat)| self.rack_view().slot(key, seat)),
                self.audit.operator().as_deref(),
            );
            self.receipts.building.insert(
                job_id.clone(),
                Building {
                    builder,
                    serial_known,
                },
            );
        }
        if let Some(b) = self.receipts.building.get_mut(job_id) {
            b.builder.step_started(step, now_utc());
        }
    }

    /// A step ended: its end and what it left go into the receipt, and what someone may
    /// have to account for into the audit log.
    pub(super) fn receipt_step_done(&mut self, done: &StepDone) {
        let job_id = &done.job_id;
        let Some(entry) = self.jobs.get(job_id) else {
            return;
        };
        let doc = std::sync::Arc::clone(&entry.doc);
        let machine_serial = entry.machine.serial().cloned();
        let Some(b) = self.receipts.building.get_mut(job_id) else {
            return;
        };
        b.builder.step_ended(done.outcome.is_ok(), now_utc());
        let mut serial = machine_serial;
        if let Ok(StepOutput::Initialized { serial: s }) = &done.outcome {
            b.builder.set_token_serial(s.clone());
            b.serial_known = true;
            serial = Some(s.clone());
        }
        match (done.step, &done.outcome) {
            (Step::Initialize, Ok(_)) => {
                if let Some(token) = serial.clone() {
                    self.audit.record(AuditEvent::Wiped {
                        token,
                        job: Some(job_id.clone()),
                        reason: format!("initialized for a {} job", doc.kind),
                    });
                }
            }
            (Step::GenerateKeys, Ok(_)) => {
                for label in KeyLabel::ALL {
                    if let Some(alg) = doc.key_spec(label) {
                        b.builder
                            .key(label, alg, KeyOrigin::Generated, GENERATED_KEY_ATTRIBUTES);
                    }
                }
            }
            (Step::Install | Step::Bind, Ok(_)) => {
                for cert in done.verified.iter().flat_map(|v| v.iter()) {
                    b.builder.certificate(cert);
                }
            }
            (Step::Activate, Ok(_)) => b.builder.self_test(true, None),
            (Step::ResetPin, Ok(_)) => {
                if let Some(token) = serial.clone() {
                    self.audit.record(AuditEvent::PinUnlocked {
                        token,
                        job: job_id.clone(),
                    });
                }
            }
            (step, Err(StepFailure::Failed(error))) => {
                if is(&error.code, codes::SELF_TEST_FAILED) {
                    b.builder.self_test(false, Some(&error.message));
                }
                let locked = if is(&error.code, codes::SO_PIN_LOCKED) {
                    Some(PinKind::So)
                } else if is(&error.code, codes::PIN_LOCKED) {
                    Some(if step == Step::ResetPin {
                        PinKind::So
                    } else {
                        PinKind::User
                    })
                } else {
                    None
                };
                if let (Some(pin), Some(token)) = (locked, serial.clone()) {
                    self.audit.record(AuditEvent::PinLocked {
                        token,
                        pin,
                        job: Some(job_id.clone()),
                    });
                }
                if error.code.as_str().starts_with("certificate-") {
                    self.audit.record(AuditEvent::CertificateRefused {
                        job: job_id.clone(),
                        token: serial,
                        label: None,
                        reason: format!("{}: {}", error.code, error.message),
                    });
                }
            }
            _ => {}
        }
    }

    /// A job ended in `state`; `failure` is the step and code of its last error report.
    /// A job that touched its token leaves a signed receipt: audit log, then outbox.
    pub(super) async fn finish_receipt(
        &mut self,
        job_id: &JobId,
        state: ExecutionState,
        failure: Option<(Step, ErrorCode)>,
    ) -> Result<(), DaemonError> {
        let Some(b) = self.receipts.building.remove(job_id) else {
            // No step ran on a token: nothing to account for.
            return Ok(());
        };
        if !b.serial_known {
            tracing::warn!(job = %job_id, "no receipt: the token never had a serial number (it was not written)");
            return Ok(());
        }
        let Some(signer) = &self.receipts.signer else {
            return Ok(());
        };
        let failure = match state {
            ExecutionState::Succeeded => None,
            other => Some(failure.unwrap_or_else(|| {
                (
                    b.builder.last_step().unwrap_or(Step::Claim),
                    crate::job::code(match other {
                        ExecutionState::Canceled => codes::CANCELED,
                        _ => codes::INTERNAL,
                    }),
                )
            })),
        };
        let receipt_id = b.builder.receipt_id().to_string();
        let signed = match b.builder.finish_signed(failure, now_utc(), signer) {
            Ok(signed) => signed,
            Err(e) => {
                tracing::error!(job = %job_id, error = %e, "receipt cannot be signed or is invalid: not made");
                return Ok(());
            }
        };
        let payload = match signed.encode() {
            Ok(payload) => payload,
            Err(e) => {
                tracing::error!(job = %job_id, error = %e, "receipt cannot be encoded: not made");
                return Ok(());
            }
        };
        self.audit.record(AuditEvent::Receipt { receipt: signed });
        self.receipts.made += 1;
        tracing::info!(job = %job_id, receipt = %receipt_id, "production receipt made");
        self.link
            .publish_event(OutboxEntry {
                event_id: receipt_id,
                topic: self.topics.receipts(),
                payload,
            })
            .await
            .map_err(DaemonError::Link)
    }
}
