//! A job's timers (waiting for certificates, a token's return, the final acknowledgement, a
//! targeted token): armed and disarmed as the job machine asks; a fired timer of an older
//! arming is ignored.
//!
//! What this module does not do: decide what a timeout means (the job machine).

use std::time::Duration;

use ukey_protocol::ids::JobId;

use crate::job::{Input, Timer};

use super::{Daemon, DaemonError, Event};

impl Daemon {
    pub(super) fn timer_duration(&self, timer: Timer) -> Duration {
        let t = &self.config.timeouts;
        match timer {
            Timer::Certificates => t.certificates(),
            Timer::TokenReturn => t.token_removed(),
            Timer::FinalAck => t.bind_ack(),
            Timer::TargetToken => t.target_token(),
        }
    }

    pub(super) fn arm(&mut self, job_id: &JobId, timer: Timer) {
        self.timer_gen += 1;
        let generation = self.timer_gen;
        let Some(entry) = self.jobs.get_mut(job_id) else {
            return;
        };
        entry.timers.insert(timer, generation);
        let duration = self.timer_duration(timer);
        let tx = self.events.clone();
        let job_id = job_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            let _ = tx.send(Event::TimerFired(job_id, timer, generation)).await;
        });
    }

    pub(super) fn disarm(&mut self, job_id: &JobId, timer: Timer) {
        if let Some(entry) = self.jobs.get_mut(job_id) {
            entry.timers.remove(&timer);
        }
    }

    /// The platform has not acknowledged a job's last event within `timeouts.bind_ack_secs`.
    /// The token is finished and the event stays in the outbox (sent again every
    /// `timeouts.resend_secs`), so the job keeps waiting; the desk says so in a log line and
    /// in the inventory's `platform-unconfirmed` alert, which clears with the acknowledgement.
    pub(super) fn final_ack_overdue(&mut self, job_id: &JobId) {
        let Some(entry) = self.jobs.get(job_id) else {
            return;
        };
        if entry.machine.unconfirmed() != Some(true) {
            return;
        }
        tracing::warn!(
            job = %job_id,
            token = entry.machine.serial().map(|s| s.as_str()).unwrap_or("-"),
            step = %entry.machine.current_step().map_or("-", |s| s.as_str()),
            waited_secs = self.config.timeouts.bind_ack_secs,
            "the platform has not acknowledged the job's last event: the token is finished and may be taken out; the event is sent again until the platform acknowledges it, and the job succeeds then"
        );
        self.inventory_dirty = true;
    }

    /// The job whose token `serial` is finished while the platform has not acknowledged the
    /// job's last event yet.
    pub(super) fn unconfirmed_job(&self, serial: &str) -> Option<&JobId> {
        let serial = serial.trim();
        if serial.is_empty() {
            return None;
        }
        self.jobs
            .iter()
            .filter(|(_, e)| e.machine.unconfirmed().is_some())
            .find(|(_, e)| {
                e.machine
                    .serial()
                    .is_some_and(|s| s.as_str().trim() == serial)
            })
            .map(|(id, _)| id)
    }

    /// A timer fired: fed to its job as a timeout, unless it was disarmed or armed again since.
    pub(super) async fn on_timer(
        &mut self,
        job_id: JobId,
        timer: Timer,
        generation: u64,
    ) -> Result<(), DaemonError> {
        let current = self
            .jobs
            .get(&job_id)
            .and_then(|e| e.timers.get(&timer))
            .copied();
        if current == Some(generation) {
            self.disarm(&job_id, timer);
            self.feed(&job_id, Input::TimedOut { timer }).await?;
            if timer == Timer::FinalAck {
                self.final_ack_overdue(&job_id);
            }
        }
        Ok(())
    }
}
