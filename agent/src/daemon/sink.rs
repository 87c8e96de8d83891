//! The event sink: step events made from a job's reports and written to the outbox, the
//! bookkeeping of which of them a crash would re-make, and CSR bundles (sent and re-sent).
//!
//! What this module does not do: speak MQTT (the link) or decide which events happen (the
//! job machine).

use std::time::Duration;

use time::OffsetDateTime;
use ukey_protocol::bundle::CsrBundle;
use ukey_protocol::event::{Step, StepEvent};
use ukey_protocol::ids::JobId;
use ukey_protocol::{Message, V1};

use crate::job::{Action, JobState, Report};
use crate::outbox::OutboxEntry;

use super::{Daemon, DaemonError, now_utc};

/// The step event of a job's `report`, made at `at`; a step's end carries its start time
/// when `started` is that step's start.
pub(super) fn step_event(
    job_id: &JobId,
    report: &Report,
    started: Option<(Step, OffsetDateTime)>,
    at: OffsetDateTime,
) -> StepEvent {
    StepEvent {
        v: V1,
        event_id: report.event_id.clone(),
        job_id: job_id.clone(),
        seq: report.seq,
        step: report.step,
        state: report.state,
        token_serial: report.token_serial.clone(),
        error: report.error.clone(),
        data: report.data.clone(),
        started_at: started
            .filter(|(step, _)| *step == report.step)
            .map(|(_, at)| at),
        at,
    }
}

impl Daemon {
    pub(super) async fn perform_reports(
        &mut self,
        job_id: &JobId,
        actions: &[Action],
    ) -> Result<(), DaemonError> {
        for action in actions {
            if let Action::Report(report) = action {
                let event = self.event_from(job_id, report);
                self.publish_replayable_event(job_id, &event)?;
            }
        }
        Ok(())
    }

    /// The step event of `report`, made now.
    pub(super) fn event_from(&self, job_id: &JobId, report: &Report) -> StepEvent {
        let started = self.jobs.get(job_id).and_then(|e| e.step_started);
        step_event(job_id, report, started, now_utc())
    }

    /// Publishes an event that nothing in the journal can make again (a rejection): it is
    /// on disk before this returns.
    pub(super) async fn publish_event(
        &mut self,
        job_id: &JobId,
        event: &StepEvent,
    ) -> Result<(), DaemonError> {
        let entry = self.outbox_entry(job_id, event)?;
        self.link
            .publish_event(entry)
            .await
            .map_err(DaemonError::Link)
    }

    /// Publishes a step event that the job's last journal record makes again after a crash:
    /// written to the outbox without an fsync, made durable before the job's next record
    /// (`feed_with`) if the platform has not acknowledged it by then.
    pub(super) fn publish_replayable_event(
        &mut self,
        job_id: &JobId,
        event: &StepEvent,
    ) -> Result<(), DaemonError> {
        let entry = self.outbox_entry(job_id, event)?;
        let event_id = entry.event_id.clone();
        self.link
            .publish_replayable_event(entry)
            .map_err(DaemonError::Link)?;
        self.replayable
            .entry(job_id.clone())
            .or_default()
            .push(event_id);
        Ok(())
    }

    pub(super) fn outbox_entry(
        &self,
        job_id: &JobId,
        event: &StepEvent,
    ) -> Result<OutboxEntry, DaemonError> {
        // The platform has every step event; the log keeps the milestones (accepted, claimed,
        // finished) and the errors, not a line per step of every token.
        match &event.error {
            Some(error) => tracing::info!(
                job = %job_id,
                seq = event.seq,
                step = %event.step,
                state = %event.state,
                error = error.code.as_str(),
                "step event"
            ),
            None => tracing::debug!(
                job = %job_id,
                seq = event.seq,
                step = %event.step,
                state = %event.state,
                "step event"
            ),
        }
        let payload = match event.encode() {
            Ok(payload) => payload,
            Err(e) => {
                // An event the protocol refuses must not stop the desk (and, re-made from the
                // journal, stop it again after every restart): send it without its details.
                tracing::error!(job = %job_id, seq = event.seq, error = %e, "step event refused by the protocol; sent without details");
                let mut plain = event.clone();
                plain.data = None;
                if let Some(err) = plain.error.as_mut() {
                    err.message = ukey_protocol::fit_text(&err.message, 512);
                }
                plain
                    .encode()
                    .map_err(|e| DaemonError::Journal(format!("step event: {e}")))?
            }
        };
        Ok(OutboxEntry {
            event_id: event.event_id.to_string(),
            topic: self.topics.job_events(job_id),
            payload,
        })
    }

    /// Publishes `job_id`'s CSR bundle (the platform answers a repeated bundle the same way).
    pub(super) fn send_job_csr(&mut self, job_id: &JobId) {
        let Some(entry) = self.jobs.get_mut(job_id) else {
            return;
        };
        let Some(bundle) = entry.data.csr().cloned() else {
            return;
        };
        entry.csr_sent = Some(tokio::time::Instant::now());
        self.send_csr(&bundle);
    }

    /// Publishes again the CSR bundles the platform has not answered within `after`: a
    /// broker that lost the platform's session drops a bundle and still says PUBACK.
    pub(super) fn resend_csrs(&mut self, after: Duration) {
        let due: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, e)| matches!(e.machine.state(), JobState::AwaitingCertificates { .. }))
            .filter(|(_, e)| e.csr_sent.is_none_or(|t| t.elapsed() >= after))
            .map(|(id, _)| id.clone())
            .collect();
        for job_id in due {
            tracing::info!(job = %job_id, "CSR bundle not answered yet: sending it again");
            self.send_job_csr(&job_id);
        }
    }

    pub(super) fn send_csr(&self, bundle: &CsrBundle) {
        match bundle.encode() {
            Ok(payload) => {
                if let Err(e) = self
                    .link
                    .publish(self.topics.job_csr(&bundle.job_id), payload)
                {
                    tracing::warn!(job = %bundle.job_id, error = %e, "CSR bundle not published");
                }
            }
            Err(e) => {
                tracing::error!(job = %bundle.job_id, error = %e, "CSR bundle cannot be encoded")
            }
        }
    }
}
