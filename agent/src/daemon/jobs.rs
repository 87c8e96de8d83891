//! The job table and its queue: what the daemon knows of each job, and feeding a job's
//! machine an input (journal, outbox, then the other actions). Certificate responses,
//! cancels and the platform's acknowledgements arrive here as inputs, each verified first
//! (signed by a trusted platform key, addressed to this station); one that does not verify is
//! refused: counted, logged at a bounded rate, acknowledged to the broker, never acted on.
//!
//! What this module does not do: decide the next step (the job machine), publish events
//! (`sink`), or start steps (`runner`).

use std::collections::BTreeSet;
use std::sync::Arc;

use time::OffsetDateTime;
use ukey_protocol::ack::Ack;
use ukey_protocol::bundle::{CertOutcome, CertResponse};
use ukey_protocol::cancel::Cancel;
use ukey_protocol::event::{ExecutionState, Step};
use ukey_protocol::ids::{EventId, JobId, TokenSerial};
use ukey_protocol::job::JobDocument;
use ukey_protocol::signed::{PlatformMessage, verify_platform_message};
use ukey_protocol::{Message, ProtocolError};

use crate::desk::TokenKey;
use crate::job::{Action, Input, JobMachine, JobState, Report};
use crate::link::Incoming;

use super::admission::ack;
use super::job_data::{JobData, advance};
use super::records::{Record, RecordKind};
use super::refusals;
use super::{Daemon, DaemonError, now_utc};

/// A job the daemon knows.
pub(super) struct JobEntry {
    pub(super) doc: Arc<JobDocument>,
    pub(super) machine: JobMachine,
    /// Its PINs, CSR bundle and certificates, by phase.
    pub(super) data: JobData,
    /// When the CSR bundle was last published: unanswered, it is published again.
    pub(super) csr_sent: Option<tokio::time::Instant>,
    /// The desk key of the token it works on.
    pub(super) token: Option<TokenKey>,
    /// A step is running on the token.
    pub(super) running: bool,
    /// The step last started and when: its end's event carries the start time.
    pub(super) step_started: Option<(Step, OffsetDateTime)>,
    /// How many journal records are this job's: dead weight once it finished.
    pub(super) records: usize,
    /// When the station accepted the job: its replay memory is counted from here.
    pub(super) seen_at: OffsetDateTime,
}

impl JobEntry {
    pub(super) fn new(doc: Arc<JobDocument>, machine: JobMachine) -> JobEntry {
        JobEntry {
            doc,
            machine,
            data: JobData::Queued,
            csr_sent: None,
            token: None,
            running: false,
            step_started: None,
            records: 0,
            seen_at: OffsetDateTime::now_utc(),
        }
    }
}

/// A job in the queue, waiting for a token.
#[derive(Debug)]
pub(super) struct Waiting {
    pub(super) job: JobId,
    /// The token it names (`renew`, `change`, `unlock`), or `None` for any blank one.
    pub(super) target: Option<TokenSerial>,
}

impl Waiting {
    pub(super) fn of(job: &JobId, entry: &JobEntry) -> Waiting {
        Waiting {
            job: job.clone(),
            target: entry.doc.target_token_serial.clone(),
        }
    }
}

/// Whether the platform gives `input` again when the agent loses it, so that its journal
/// record needs no fsync of its own (the job's next fsync'd record, or any later fsync,
/// makes it durable). A certificate response lost in a power loss leaves the job waiting
/// for certificates: the agent sends its CSR bundle again and the platform answers it the
/// same way. A lost final acknowledgement leaves the job waiting for it: its `bind` event is
/// sent again (from the outbox, or re-made from the journal) and acknowledged again.
pub(super) fn platform_repeats(input: &Input) -> bool {
    matches!(
        input,
        Input::CertificatesArrived { .. }
            | Input::CertificatesRejected { .. }
            | Input::FinalAcknowledged
    )
}

/// The step events among `actions`.
pub(super) fn reports_of(actions: Vec<Action>) -> Vec<Report> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Report(report) => Some(*report),
            _ => None,
        })
        .collect()
}

impl Daemon {
    pub(super) async fn on_certs(
        &mut self,
        job_id: JobId,
        message: Incoming,
    ) -> Result<(), DaemonError> {
        let response = match self.verify::<CertResponse>(message.payload()) {
            Ok(r) if r.job_id == job_id => r,
            Ok(_) => {
                tracing::warn!(job = %job_id, "certificate response for another job on this topic ignored");
                ack(message).await;
                return Ok(());
            }
            Err(e) => {
                self.refuse(CertResponse::NAME, Some(&job_id), &e);
                ack(message).await;
                return Ok(());
            }
        };
        let waiting = self
            .jobs
            .get(&job_id)
            .is_some_and(|e| matches!(e.machine.state(), JobState::AwaitingCertificates { .. }));
        if !waiting {
            tracing::info!(job = %job_id, "certificate response while not waiting for one ignored");
            ack(message).await;
            return Ok(());
        }
        let input = match response.outcome {
            CertOutcome::Issued(bundle) => {
                if let Some(entry) = self.jobs.get_mut(&job_id)
                    && let Err(e) = advance(&mut entry.data, |d| d.issue(bundle.clone()))
                {
                    tracing::warn!(job = %job_id, error = %e, "certificates not kept");
                }
                Input::CertificatesArrived { bundle }
            }
            CertOutcome::Rejected(r) => Input::CertificatesRejected {
                reason: format!("{}: {}", r.code, r.reason),
            },
        };
        self.feed(&job_id, input).await?;
        ack(message).await;
        Ok(())
    }

    pub(super) async fn on_cancel(
        &mut self,
        job_id: JobId,
        message: Incoming,
    ) -> Result<(), DaemonError> {
        match self.verify::<Cancel>(message.payload()) {
            Ok(cancel) if cancel.job_id == job_id => {
                if self
                    .jobs
                    .get(&job_id)
                    .is_some_and(|e| !e.machine.is_finished())
                {
                    tracing::info!(job = %job_id, "canceled by the platform");
                    self.queue.retain(|w| w.job != job_id);
                    self.feed(
                        &job_id,
                        Input::Cancel {
                            reason: cancel.reason,
                        },
                    )
                    .await?;
                }
            }
            Ok(_) => tracing::warn!(job = %job_id, "cancel naming another job ignored"),
            Err(e) => self.refuse(Cancel::NAME, Some(&job_id), &e),
        }
        ack(message).await;
        Ok(())
    }

    pub(super) async fn on_ack(&mut self, message: Incoming) -> Result<(), DaemonError> {
        match self.verify::<Ack>(message.payload()) {
            Ok(a) => {
                let ids: Vec<String> = a.event_ids.iter().map(|e| e.to_string()).collect();
                if let Err(e) = self.link.acknowledge(ids).await {
                    tracing::warn!(error = %e, "outbox acknowledgement failed");
                }
                let acked: BTreeSet<&EventId> = a.event_ids.iter().collect();
                let waiting: Vec<JobId> = self
                    .jobs
                    .iter()
                    .filter(|(_, e)| matches!(e.machine.state(), JobState::AwaitingFinalAck { event_id, .. } if acked.contains(event_id)))
                    .map(|(id, _)| id.clone())
                    .collect();
                for job_id in waiting {
                    self.feed(&job_id, Input::FinalAcknowledged).await?;
                }
            }
            Err(e) => self.refuse(Ack::NAME, None, &e),
        }
        ack(message).await;
        Ok(())
    }

    /// Verifies a platform message as received: signed by a trusted key, of kind `M`,
    /// addressed to this station.
    fn verify<M: PlatformMessage>(&self, payload: &[u8]) -> Result<M, ProtocolError> {
        verify_platform_message::<M>(payload, &self.trust.keyring, &self.station)
    }

    /// Counts a refused platform message, never acted on, and logs it unless a line was
    /// written less than a minute ago (whoever can publish on the station's topics must not
    /// flood the log). The line names the kind of message and why, nothing of its content.
    fn refuse(&mut self, what: &'static str, job_id: Option<&JobId>, e: &ProtocolError) {
        let Some(line) = self.refusals.refuse(std::time::Instant::now()) else {
            return;
        };
        let job = job_id.map(tracing::field::display);
        tracing::warn!(
            message_kind = what,
            job,
            reason = refusals::reason(e),
            refused_total = self.refusals.total(),
            not_logged_since_last_line = line.unlogged,
            "refused a platform message that is not signed by a trusted key for this station; not acted on"
        );
    }

    /// Feeds `input` to a job: journal, outbox, then the other actions.
    pub(super) async fn feed(&mut self, job_id: &JobId, input: Input) -> Result<(), DaemonError> {
        self.feed_with(job_id, input, Vec::new()).await
    }

    /// [`Daemon::feed`], journaling `records` in the same write and fsync, before the input.
    pub(super) async fn feed_with(
        &mut self,
        job_id: &JobId,
        input: Input,
        mut records: Vec<Record>,
    ) -> Result<(), DaemonError> {
        let Some(entry) = self.jobs.get_mut(job_id) else {
            return Ok(());
        };
        let actions = match entry.machine.on(input.clone()) {
            Ok(actions) => actions,
            Err(e) => {
                tracing::warn!(error = %e, "input ignored");
                return Ok(());
            }
        };
        records.push(Record::Input {
            job_id: job_id.clone(),
            at: now_utc(),
            input: self.seal_json(job_id, RecordKind::Input, &input)?,
        });
        // This record takes over from the job's last one, which alone re-makes its events
        // after a crash: those events must be on disk first, unless already acknowledged.
        if let Some(ids) = self.replayable.remove(job_id) {
            self.link.make_durable(&ids)?;
        }
        if platform_repeats(&input) {
            self.journal.append_all_unsynced(&records)?;
        } else {
            self.journal.append_all(&records)?;
        }
        // Every record passed to `feed_with` is this job's (PINs, a CSR bundle, the input).
        if let Some(entry) = self.jobs.get_mut(job_id) {
            entry.records += records.len();
        }
        self.perform_reports(job_id, &actions).await?;
        let failure = super::receipts::failure_of(&actions);
        for action in actions {
            match action {
                Action::Report(_) => {}
                Action::Execute(step) => self.execute(job_id, step),
                Action::Arm(timer) => self.arm(job_id, timer),
                Action::Disarm(timer) => self.disarm(job_id, timer),
                Action::Release => self.release(job_id),
            }
        }
        let finished = self
            .jobs
            .get(job_id)
            .is_some_and(|e| e.machine.is_finished());
        if finished && let Some(entry) = self.jobs.remove(job_id) {
            let state = match entry.machine.state() {
                JobState::Finished(s) => *s,
                _ => ExecutionState::Failed,
            };
            let token = entry.token.as_ref().map(tracing::field::display);
            tracing::info!(job = %job_id, token, state = %state, "job finished");
            self.finish_receipt(job_id, state, failure).await?;
            // Only its `Done` record follows a finished job's last one, once the outbox is
            // durable (`erase_job_secrets`).
            self.replayable.remove(job_id);
            // One that ended while queued (expired, timed out waiting for its token).
            self.queue.retain(|w| w.job != *job_id);
            self.dead_records += entry.records;
            self.timers.disarm_all(job_id);
            if let Some(seat) = entry.token.as_ref().and_then(|k| self.seats.get_mut(k)) {
                seat.outcome = Some(state);
                seat.acknowledged = false;
            }
            // A job that ended before its claim took effect (canceled, timed out) had no
            // `Release`: free whatever token still names it.
            for seat in self.seats.values_mut() {
                if seat.job.as_ref() == Some(job_id) {
                    seat.job = None;
                }
            }
            let finished = self.finished_job(&entry);
            self.dead_records += self.erase_job_secrets(job_id, &finished)?;
            self.finished.insert(job_id.clone(), finished);
            self.compact_if_due()?;
        }
        self.try_claim_all().await
    }
}
