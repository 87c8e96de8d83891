//! A job's timers (waiting for certificates, a token's return, the final acknowledgement, a
//! targeted token): armed and disarmed as the job machine asks, kept in one [`DelayQueue`]
//! that the daemon's loop polls. Nothing runs detached: a timer disarmed or armed again
//! never fires in its old arming, and nothing is left running at shutdown.
//!
//! What this module does not do: decide what a timeout means (the job machine).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::time::{DelayQueue, delay_queue};

use ukey_protocol::ids::JobId;

use crate::job::{Input, Timer};

use super::{Daemon, DaemonError};

/// The jobs' armed timers: at most one arming per job and timer.
pub(super) struct Timers {
    queue: DelayQueue<(JobId, Timer)>,
    keys: BTreeMap<(JobId, Timer), delay_queue::Key>,
}

impl Timers {
    pub(super) fn new() -> Timers {
        Timers {
            queue: DelayQueue::new(),
            keys: BTreeMap::new(),
        }
    }

    /// Arms `timer` of `job` to fire after `after`, replacing an earlier arming.
    pub(super) fn arm(&mut self, job: &JobId, timer: Timer, after: Duration) {
        self.disarm(job, timer);
        let key = self.queue.insert((job.clone(), timer), after);
        self.keys.insert((job.clone(), timer), key);
    }

    /// Disarms `timer` of `job` (nothing if it is not armed).
    pub(super) fn disarm(&mut self, job: &JobId, timer: Timer) {
        if let Some(key) = self.keys.remove(&(job.clone(), timer)) {
            self.queue.try_remove(&key);
        }
    }

    /// Disarms every timer of `job` (it finished).
    pub(super) fn disarm_all(&mut self, job: &JobId) {
        let armed: Vec<Timer> = self
            .keys
            .keys()
            .filter(|(j, _)| j == job)
            .map(|(_, t)| *t)
            .collect();
        for timer in armed {
            self.disarm(job, timer);
        }
    }

    /// The next timer to fire; pending while none is armed (cancel-safe: a timer is taken
    /// out only when this returns it).
    pub(super) async fn next(&mut self) -> (JobId, Timer) {
        loop {
            let fired = std::future::poll_fn(|cx| self.queue.poll_expired(cx)).await;
            match fired {
                Some(expired) => {
                    let (job, timer) = expired.into_inner();
                    self.keys.remove(&(job.clone(), timer));
                    return (job, timer);
                }
                // Empty: nothing can fire until a timer is armed, which happens on another
                // branch of the loop (this future is made again then).
                None => std::future::pending::<()>().await,
            }
        }
    }
}

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

    /// Arms a job's timer for the duration the configuration gives it.
    pub(super) fn arm(&mut self, job_id: &JobId, timer: Timer) {
        if !self.jobs.contains_key(job_id) {
            return;
        }
        let after = self.timer_duration(timer);
        self.timers.arm(job_id, timer, after);
    }

    pub(super) fn disarm(&mut self, job_id: &JobId, timer: Timer) {
        self.timers.disarm(job_id, timer);
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

    /// A timer fired: fed to its job as a timeout.
    pub(super) async fn on_timer(
        &mut self,
        job_id: JobId,
        timer: Timer,
    ) -> Result<(), DaemonError> {
        self.feed(&job_id, Input::TimedOut { timer }).await?;
        if timer == Timer::FinalAck {
            self.final_ack_overdue(&job_id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn id(s: &str) -> JobId {
        JobId::new(s).unwrap()
    }

    #[tokio::test]
    async fn timers_fire_in_order_and_an_arming_again_replaces_the_old_one() {
        let mut timers = Timers::new();
        timers.arm(&id("a"), Timer::TargetToken, Duration::from_secs(3600));
        timers.arm(&id("b"), Timer::Certificates, Duration::from_millis(40));
        // Armed again, sooner: fires once, at the new time.
        timers.arm(&id("a"), Timer::TargetToken, Duration::from_millis(10));
        assert_eq!(timers.next().await, (id("a"), Timer::TargetToken));
        assert_eq!(timers.next().await, (id("b"), Timer::Certificates));
        let nothing = tokio::time::timeout(Duration::from_millis(60), timers.next()).await;
        assert!(nothing.is_err(), "a replaced arming fired: {nothing:?}");
    }

    #[tokio::test]
    async fn a_disarmed_timer_never_fires() {
        let mut timers = Timers::new();
        timers.arm(&id("a"), Timer::FinalAck, Duration::from_millis(5));
        timers.arm(&id("a"), Timer::TokenReturn, Duration::from_millis(5));
        timers.arm(&id("b"), Timer::FinalAck, Duration::from_millis(30));
        timers.disarm_all(&id("a"));
        assert_eq!(timers.next().await, (id("b"), Timer::FinalAck));
        timers.arm(&id("c"), Timer::Certificates, Duration::from_millis(5));
        timers.disarm(&id("c"), Timer::Certificates);
        let nothing = tokio::time::timeout(Duration::from_millis(40), timers.next()).await;
        assert!(nothing.is_err(), "a disarmed timer fired: {nothing:?}");
    }
}
