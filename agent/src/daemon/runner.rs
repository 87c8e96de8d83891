//! The step runner: a job's step started on its token's worker with what the step needs, and
//! its end fed back to the job (with its CSR bundle journaled first).
//!
//! What this module does not do: touch token objects itself (the steps module, on the
//! worker), or decide the next step (the job machine).

use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use ukey_protocol::Message;
use ukey_protocol::bundle::CsrBundle;
use ukey_protocol::codes;
use ukey_protocol::event::{Step, StepData, StepError};
use ukey_protocol::ids::{JobId, TokenSerial};
use ukey_protocol::job::{JobDocument, JobKind};

use crate::device::Device;
use crate::job::{Input, JobState, StepOutput, code};
use crate::steps::{self, StepFailure};
use crate::token::TokenError;
use crate::trust::TrustMaterial;
use crate::worker::TokenWorker;

use super::job_data::advance;
use super::records::{Record, RecordKind};
use super::step_request::{Certificates, Holding, Requests, StepRequest, Verified};
use super::{Daemon, DaemonError, Event, now_utc};

pub(super) struct StepDone {
    pub(super) job_id: JobId,
    pub(super) step: Step,
    pub(super) outcome: Result<StepOutput, StepFailure>,
    pub(super) verified: Option<Verified>,
    pub(super) csr: Option<CsrBundle>,
}

/// Whether the job keeps the token's keys and PINs (`renew`, `change` without rekey): its
/// certificates are requested with renewal requests and written without a user login.
pub(super) fn keeps_keys(doc: &JobDocument) -> bool {
    matches!(doc.kind, JobKind::Renew) || (doc.kind == JobKind::Change && !doc.rekey)
}

/// Runs `request` on the token's worker.
pub(super) async fn run_step(
    request: StepRequest,
    job_id: JobId,
    doc: Arc<JobDocument>,
    trust: Arc<TrustMaterial>,
    worker: Arc<TokenWorker>,
) -> StepDone {
    let step = request.step();
    let mut done = StepDone {
        job_id: job_id.clone(),
        step,
        outcome: Ok(StepOutput::Done),
        verified: None,
        csr: None,
    };
    let flatten = |r: Result<Result<StepOutput, StepFailure>, TokenError>| match r {
        Ok(inner) => inner,
        Err(e) => Err(StepFailure::from(e)),
    };
    done.outcome = match request {
        StepRequest::Initialize { pins } => flatten(
            worker
                .call(move |token| {
                    Ok(steps::initialize(token, &doc, &pins, &trust.station_key).and_then(|()| {
                        let serial = token.serial().and_then(|s| TokenSerial::new(s).ok());
                        serial
                            .map(|serial| StepOutput::Initialized { serial })
                            .ok_or_else(|| StepFailure::Failed(StepError {
                                code: code(codes::TOKEN_SERIAL),
                                message: "the token has no usable serial number after initialization".into(),
                                retryable: false,
                            }))
                    }))
                })
                .await,
        ),
        StepRequest::GenerateKeys { pins } => flatten(
            worker
                .call(move |token| Ok(steps::generate_keys(token, &doc, &pins).map(|_| StepOutput::Done)))
                .await,
        ),
        StepRequest::RequestCertificates { serial, requests } => {
            let result = worker
                .call(move |token| {
                    Ok(match requests {
                        Requests::New(pins) => steps::request_certificates(token, &doc, &pins, &serial),
                        Requests::Renewal => steps::request_renewal(token, &doc, &serial),
                    })
                })
                .await;
            match result {
                Ok(Ok(bundle)) => match bundle.encode() {
                    Ok(bytes) => {
                        let sha = hex::encode(Sha256::digest(&bytes));
                        done.csr = Some(bundle);
                        Ok(StepOutput::Data(StepData::Requested { bundle_sha256: sha }))
                    }
                    Err(e) => Err(StepFailure::Failed(StepError {
                        code: code(codes::CSR_ENCODING),
                        message: ukey_protocol::fit_text(&e.to_string(), 512),
                        retryable: false,
                    })),
                },
                Ok(Err(f)) => Err(f),
                Err(e) => Err(StepFailure::from(e)),
            }
        }
        StepRequest::VerifyCertificates { certificates } => {
            let result = worker
                .call(move |token| Ok(verify(token, &doc, certificates, &trust)))
                .await;
            match result {
                Ok(Ok(v)) => {
                    done.verified = Some(v);
                    Ok(StepOutput::Done)
                }
                Ok(Err(f)) => Err(f),
                Err(e) => Err(StepFailure::from(e)),
            }
        }
        StepRequest::Install { certificates, login } => {
            let result = worker
                .call(move |token| {
                    let verified = match verify(token, &doc, certificates, &trust) {
                        Ok(v) => v,
                        Err(f) => return Ok(Err(f)),
                    };
                    if let Err(f) = steps::install(token, login.pins(), &verified) {
                        return Ok(Err(f));
                    }
                    Ok(Ok(verified))
                })
                .await;
            match result {
                Ok(Ok(v)) => {
                    done.verified = Some(v);
                    Ok(StepOutput::Done)
                }
                Ok(Err(f)) => Err(f),
                Err(e) => Err(StepFailure::from(e)),
            }
        }
        StepRequest::Activate { pins } => flatten(
            worker
                .call(move |token| Ok(steps::activate(token, &pins).map(|_| StepOutput::Done)))
                .await,
        ),
        StepRequest::Bind { certificates: Certificates::Verified(verified), login } => {
            steps::bind_report(&job_id, &verified, login.pins(), &trust.platform_seal)
                .map(|report| StepOutput::Data(StepData::Bind(report)))
        }
        StepRequest::Bind { certificates: Certificates::ToVerify(bundle), login } => {
            // After a restart: verify again (read-only) to rebuild the fingerprints.
            let trust2 = Arc::clone(&trust);
            let result = worker
                .call(move |token| Ok(steps::verify_certificates(token, &doc, &bundle, &trust2.certificates, SystemTime::now())))
                .await;
            match result {
                Ok(Ok(v)) => {
                    let report = steps::bind_report(&job_id, &v, login.pins(), &trust.platform_seal);
                    done.verified = Some(Arc::new(v));
                    report.map(|r| StepOutput::Data(StepData::Bind(r)))
                }
                Ok(Err(f)) => Err(f),
                Err(e) => Err(StepFailure::from(e)),
            }
        }
        StepRequest::ResetPin => {
            let trust = Arc::clone(&trust);
            flatten(
                worker
                    .call(move |token| {
                        Ok(steps::reset_pin(token, &doc, &trust.station_key, &trust.platform_seal)
                            .map(StepOutput::Data))
                    })
                    .await,
            )
        }
        StepRequest::ReadKeys => flatten(
            worker
                .call(move |token| Ok(steps::read_keys(token, &doc).map(|()| StepOutput::Done)))
                .await,
        ),
        StepRequest::RemoveOldCertificates { certs } => flatten(
            worker
                .call(move |token| {
                    Ok(steps::remove_old_certificates(token, &certs).map(|removed| {
                        tracing::info!(job = %job_id, removed, "old certificates removed");
                        StepOutput::Done
                    }))
                })
                .await,
        ),
        StepRequest::Unsupported(other) => Err(StepFailure::Failed(StepError {
            code: code(codes::STEP_UNSUPPORTED),
            message: format!("step {other} is not supported by this agent version"),
            retryable: false,
        })),
    };
    done
}

/// The certificates verified against the job and the trust material, on the token's worker
/// (those verified already are taken as they are).
fn verify(
    token: &dyn Device,
    doc: &JobDocument,
    certificates: Certificates,
    trust: &TrustMaterial,
) -> Result<Verified, StepFailure> {
    match certificates {
        Certificates::Verified(v) => Ok(v),
        Certificates::ToVerify(bundle) => {
            steps::verify_certificates(token, doc, &bundle, &trust.certificates, SystemTime::now())
                .map(Arc::new)
        }
    }
}

impl Daemon {
    /// Runs (again) the step a running job is at: after a restart, or once its token is back.
    pub(super) fn execute_current(&mut self, job_id: &JobId) {
        let step = self.jobs.get(job_id).and_then(|e| match e.machine.state() {
            JobState::Running { index, .. } => e.machine.plan().get(*index).copied(),
            _ => None,
        });
        if let Some(step) = step {
            self.execute(job_id, step);
        }
    }

    pub(super) fn execute(&mut self, job_id: &JobId, step: Step) {
        let Some(entry) = self.jobs.get_mut(job_id) else {
            return;
        };
        if entry.running {
            return;
        }
        if !self.claiming {
            // Stopping: a step that has not started is not started now (it runs after the
            // restart, from the journal); running steps finish.
            tracing::info!(job = %job_id, step = %step, "not started: the agent is stopping");
            return;
        }
        let worker = entry
            .token
            .as_ref()
            .and_then(|k| self.seats.get(k))
            .and_then(|s| s.sessions.worker().cloned());
        let doc = Arc::clone(&entry.doc);
        let request = StepRequest::build(
            step,
            Holding {
                data: &entry.data,
                serial: entry.machine.serial(),
                keeps_keys: keeps_keys(&doc),
            },
        );
        let trust = Arc::clone(&self.trust);
        let tx = self.events.clone();
        let job_id = job_id.clone();
        let Some(worker) = worker else {
            let away = self.scanned
                && entry
                    .token
                    .as_ref()
                    .is_none_or(|k| !self.seats.contains_key(k));
            if away {
                // Pulled while no step ran (e.g. while the platform issued): the step meets a
                // pulled token, so the job parks, reports it and waits for the token's return.
                tracing::info!(job = %job_id, step = %step, "the token is not plugged in: parking");
                entry.running = true;
                let done = StepDone {
                    job_id,
                    step,
                    outcome: Err(StepFailure::Removed),
                    verified: None,
                    csr: None,
                };
                tokio::spawn(async move {
                    let _ = tx.send(Event::StepDone(Box::new(done))).await;
                });
                return;
            }
            // The token is here but its worker is still opening, or it was not seen yet after
            // a restart: the step runs when the worker is ready.
            tracing::info!(job = %job_id, step = %step, "waiting for the token");
            return;
        };
        entry.running = true;
        entry.step_started = Some((step, now_utc()));
        tracing::debug!(job = %job_id, step = %step, "step started");
        let started_job = job_id.clone();
        tokio::spawn(async move {
            let done = match request {
                Ok(request) => run_step(request, job_id, doc, trust, worker).await,
                // The step fails as it starts, as a step fails (the job machine decides).
                Err(missing) => StepDone {
                    job_id,
                    step,
                    outcome: Err(missing.into()),
                    verified: None,
                    csr: None,
                },
            };
            let _ = tx.send(Event::StepDone(Box::new(done))).await;
        });
        self.receipt_step_started(&started_job, step);
    }

    pub(super) async fn on_step_done(&mut self, done: StepDone) -> Result<(), DaemonError> {
        let job_id = done.job_id.clone();
        self.receipt_step_done(&done);
        let Some(entry) = self.jobs.get_mut(&job_id) else {
            return Ok(());
        };
        entry.running = false;
        if let Some(v) = done.verified
            && let Err(e) = advance(&mut entry.data, |d| d.verify(v))
        {
            tracing::warn!(job = %job_id, error = %e, "verified certificates not kept");
        }
        let mut records = Vec::new();
        if let Some(csr) = &done.csr {
            if let Err(e) = advance(&mut entry.data, |d| d.request(csr.clone())) {
                tracing::warn!(job = %job_id, error = %e, "CSR bundle not kept");
            }
            records.push(Record::Csr {
                job_id: job_id.clone(),
                bundle: self.seal_json(&job_id, RecordKind::Csr, csr)?,
            });
        }
        let input = match done.outcome {
            Ok(output) => {
                if let StepOutput::Initialized { serial } = &output {
                    self.rekey_seat(&job_id, serial);
                }
                Input::StepSucceeded {
                    step: done.step,
                    output,
                }
            }
            Err(StepFailure::Removed) => {
                // The worker's session died with the token; a new one is opened on return.
                if let Some(key) = self.jobs.get(&job_id).and_then(|e| e.token.clone())
                    && let Some(seat) = self.seats.get_mut(&key)
                {
                    seat.sessions = std::mem::take(&mut seat.sessions).worker_closed();
                }
                Input::TokenRemoved { step: done.step }
            }
            Err(StepFailure::Failed(error)) => {
                tracing::warn!(job = %job_id, step = %done.step, code = %error.code, message = %error.message, "step failed");
                Input::StepFailed {
                    step: done.step,
                    error,
                }
            }
        };
        self.feed_with(&job_id, input, records).await?;
        if done.csr.is_some() {
            // Journaled with the step's end: only now may the platform see it.
            self.send_job_csr(&job_id);
        }
        // The step's end is reported: later events (a timeout, the final ack) are not its end.
        if let Some(entry) = self.jobs.get_mut(&job_id)
            && entry.step_started.is_some_and(|(s, _)| s == done.step)
        {
            entry.step_started = None;
        }
        Ok(())
    }
}
