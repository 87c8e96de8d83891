//! The job state machine: what happens next to one job, decided without IO.
//!
//! A [`JobMachine`] takes an [`Input`] (a token claimed the job, a step finished, certificates
//! arrived, a timer fired, …) and returns the [`Action`]s the IO shell must perform: run a
//! step on the token, report a step event, arm or disarm a timer, release the token. It never
//! touches a token, a file, a clock or the network, so every path through it is unit-tested.
//!
//! **Crash safety by replay.** The runner persists every input in the job journal before it
//! pushes the input's step events to the outbox and performs the other actions. After a
//! crash, replaying the journaled inputs through a fresh machine rebuilds the exact state,
//! including the per-job event sequence; event ids derive from (job id, sequence), so an event
//! re-made after a crash has the id it had before and the outbox and the platform see it once
//! (the runner pushes the events of the last journaled input again, in case the crash came
//! before they reached the outbox). An event is never published for an input the journal does
//! not hold: a step run again after a crash may end differently, and its event would reuse the
//! id. A step that was running when the agent died runs again: every step reconciles with what
//! the token already holds (see the runner).
//!
//! **Which steps.** [`JobKind::plan`] lists them. The first is always `claim` (a token took the
//! job); `request-certificates` is followed by a wait for the platform's certificates; the last
//! step's event is acknowledged by the platform before the job succeeds (the binding, or the
//! new PIN, must really have arrived — a broker's PUBACK proves nothing).
//!
//! **A finished token is never failed by a silent platform.** Once the last step is done the
//! token has nothing left to do: the machine releases it (the desk shows it finished and the
//! staff may pull it) and waits for the platform's acknowledgement however long it takes.
//! [`Timer::FinalAck`] only marks the wait as overdue (the desk raises an alert) and reports the
//! final event again — the same event, same id — so that it is in the outbox even if an
//! acknowledgement had emptied the outbox just before a crash that kept it from the journal.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ukey_protocol::bundle::CertBundle;
use ukey_protocol::codes::{self, Code};
use ukey_protocol::event::{ExecutionState, Step, StepData, StepError};
use ukey_protocol::ids::{ErrorCode, EventId, JobId, TokenSerial};
use ukey_protocol::job::JobKind;

/// Timers a job can wait on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Timer {
    /// The platform's certificates after the CSRs were sent.
    Certificates,
    /// The token to come back after it was pulled mid-job.
    TokenReturn,
    /// The platform's acknowledgement of the final step's event is overdue: it never fails the
    /// job, it marks the wait as overdue.
    FinalAck,
    /// The token a targeted job (`renew`, `change`, `unlock`) names to be plugged in.
    TargetToken,
}

/// What a successful step produced that the platform must hear about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepOutput {
    /// Nothing beyond "done".
    Done,
    /// Step data for the event (bind report, sealed PIN, CSR bundle hash).
    Data(StepData),
    /// `initialize` finished and the token now has this serial (a blank SoftHSM2 slot has
    /// none before `C_InitToken`; real Ukeys and hsm-sim have one from the factory).
    Initialized {
        /// The token's serial.
        serial: TokenSerial,
    },
}

/// Everything that can happen to a job. Inputs are journaled, so they carry what is needed
/// to rebuild the job after a crash — but never a secret in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "input")]
pub enum Input {
    /// The desk gave the job a token.
    Claimed {
        /// The token's serial; `None` for a blank token that gets its serial only when it is
        /// initialized (SoftHSM2).
        serial: Option<TokenSerial>,
    },
    /// The running step finished.
    StepSucceeded {
        /// Which step.
        step: Step,
        /// What it produced.
        output: StepOutput,
    },
    /// The running step failed for good.
    StepFailed {
        /// Which step.
        step: Step,
        /// Why; `retryable` tells the platform whether to try again.
        error: StepError,
    },
    /// The running step stopped because the token was pulled out; the job parks.
    TokenRemoved {
        /// Which step.
        step: Step,
    },
    /// The token of a parked job is back.
    TokenReturned,
    /// The platform's certificates arrived.
    CertificatesArrived {
        /// The bundle, checked by the `verify-certificates` step.
        bundle: CertBundle,
    },
    /// The platform refused to issue.
    CertificatesRejected {
        /// The platform's reason.
        reason: String,
    },
    /// The platform acknowledged the final step's event.
    FinalAcknowledged,
    /// A timer fired.
    TimedOut {
        /// Which.
        timer: Timer,
    },
    /// The platform canceled the job.
    Cancel {
        /// The platform's reason.
        reason: String,
    },
}

impl Input {
    fn name(&self) -> &'static str {
        match self {
            Input::Claimed { .. } => "claimed",
            Input::StepSucceeded { .. } => "step-succeeded",
            Input::StepFailed { .. } => "step-failed",
            Input::TokenRemoved { .. } => "token-removed",
            Input::TokenReturned => "token-returned",
            Input::CertificatesArrived { .. } => "certificates-arrived",
            Input::CertificatesRejected { .. } => "certificates-rejected",
            Input::FinalAcknowledged => "final-acknowledged",
            Input::TimedOut { .. } => "timed-out",
            Input::Cancel { .. } => "cancel",
        }
    }
}

/// A step event to report, without the timestamps (the IO shell adds the clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Derived from the job id and `seq`: the same after a crash and replay.
    pub event_id: EventId,
    /// Per-job sequence number, from 1.
    pub seq: u64,
    /// The step reported on.
    pub step: Step,
    /// The job's state after it.
    pub state: ExecutionState,
    /// The token, once claimed.
    pub token_serial: Option<TokenSerial>,
    /// Why it failed, for failed / timed-out / canceled-with-reason.
    pub error: Option<StepError>,
    /// Step data.
    pub data: Option<StepData>,
}

/// What the IO shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Publish this event through the outbox.
    Report(Box<Report>),
    /// Run this step on the job's token.
    Execute(Step),
    /// Start (or restart) a timer.
    Arm(Timer),
    /// Stop a timer.
    Disarm(Timer),
    /// The job no longer needs its token: the desk may show it as done/failed and the staff
    /// may pull it.
    Release,
}

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for a token.
    Queued,
    /// `plan[index]` is running on the token.
    Running {
        /// The token, once its serial is known.
        serial: Option<TokenSerial>,
        /// Index into the plan.
        index: usize,
    },
    /// CSRs sent; `plan[index]` (`verify-certificates`) runs when the certificates arrive.
    AwaitingCertificates {
        /// The token, once its serial is known.
        serial: Option<TokenSerial>,
        /// Index of the step that runs on arrival.
        index: usize,
    },
    /// The token was pulled while `plan[index]` ran; it runs again when the token is back.
    Parked {
        /// The token, once its serial is known.
        serial: Option<TokenSerial>,
        /// Index of the interrupted step.
        index: usize,
    },
    /// The last step is done and the token released (it is finished: the staff may pull it);
    /// waiting for the platform to acknowledge the last step's event, however long that takes.
    AwaitingFinalAck {
        /// The token, once its serial is known.
        serial: Option<TokenSerial>,
        /// The event the platform must acknowledge.
        event_id: EventId,
        /// [`Timer::FinalAck`] fired: the platform has not confirmed in the configured time
        /// (the desk raises a `platform-unconfirmed` alert). The job keeps waiting.
        overdue: bool,
    },
    /// Nothing more happens.
    Finished(ExecutionState),
}

impl JobState {
    fn name(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running { .. } => "running",
            JobState::AwaitingCertificates { .. } => "awaiting-certificates",
            JobState::Parked { .. } => "parked",
            JobState::AwaitingFinalAck { .. } => "awaiting-final-ack",
            JobState::Finished(_) => "finished",
        }
    }
}

/// An input that does not fit the job's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {job_id}: input {input} is not expected while {state}{detail}")]
pub struct JobError {
    /// The job.
    pub job_id: JobId,
    /// The job's state.
    pub state: &'static str,
    /// The input that arrived.
    pub input: &'static str,
    /// What was expected instead, if that says more.
    pub detail: String,
}

/// One job's state machine.
#[derive(Debug, Clone)]
pub struct JobMachine {
    job_id: JobId,
    plan: &'static [Step],
    /// The job waits for the token it names rather than for any blank token.
    targeted: bool,
    state: JobState,
    seq: u64,
    /// The platform asked to cancel while a step ran: the step finishes (a token write is
    /// never cut off), then the job ends as canceled.
    cancel_requested: Option<String>,
    /// The last step's event while the job waits for its acknowledgement: reported again
    /// (same id) when the wait becomes overdue.
    final_report: Option<Box<Report>>,
}

/// The [`ErrorCode`] of one of the protocol's [`codes`] (checked when it was compiled).
pub(crate) fn code(code: Code) -> ErrorCode {
    code.to_error_code()
}

impl JobMachine {
    /// A new job of `kind`, queued.
    pub fn new(job_id: JobId, kind: JobKind, rekey: bool) -> JobMachine {
        JobMachine {
            job_id,
            plan: kind.plan(rekey),
            targeted: !kind.takes_blank_token(),
            state: JobState::Queued,
            seq: 0,
            cancel_requested: None,
            final_report: None,
        }
    }

    /// Whether the job waits for the token it names (`renew`, `change`, `unlock`): the
    /// runner arms [`Timer::TargetToken`] while it is queued.
    pub fn is_targeted(&self) -> bool {
        self.targeted
    }

    /// The job's id.
    pub fn job_id(&self) -> &JobId {
        &self.job_id
    }

    /// Where the job is.
    pub fn state(&self) -> &JobState {
        &self.state
    }

    /// The steps this job goes through.
    pub fn plan(&self) -> &'static [Step] {
        self.plan
    }

    /// The token working on the job, once claimed.
    pub fn serial(&self) -> Option<&TokenSerial> {
        match &self.state {
            JobState::Running { serial, .. }
            | JobState::AwaitingCertificates { serial, .. }
            | JobState::Parked { serial, .. }
            | JobState::AwaitingFinalAck { serial, .. } => serial.as_ref(),
            JobState::Queued | JobState::Finished(_) => None,
        }
    }

    /// Whether the job holds a token: claimed, and the token still has work to do. A job
    /// waiting for the platform's final acknowledgement has released its finished token.
    pub fn holds_token(&self) -> bool {
        !matches!(
            self.state,
            JobState::Queued | JobState::AwaitingFinalAck { .. } | JobState::Finished(_)
        )
    }

    /// Whether the job's token is finished and the job waits for the platform to acknowledge
    /// its last event, and whether that wait is overdue ([`Timer::FinalAck`] fired).
    pub fn unconfirmed(&self) -> Option<bool> {
        match self.state {
            JobState::AwaitingFinalAck { overdue, .. } => Some(overdue),
            _ => None,
        }
    }

    /// The step running or waited on, if any.
    pub fn current_step(&self) -> Option<Step> {
        match &self.state {
            JobState::Running { index, .. }
            | JobState::AwaitingCertificates { index, .. }
            | JobState::Parked { index, .. } => self.plan.get(*index).copied(),
            JobState::AwaitingFinalAck { .. } => self.plan.last().copied(),
            JobState::Queued | JobState::Finished(_) => None,
        }
    }

    /// Whether nothing more will happen.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, JobState::Finished(_))
    }

    /// The event id of the `seq`-th event of `job_id`: stable across crashes.
    pub fn event_id(job_id: &JobId, seq: u64) -> EventId {
        let digest = Sha256::digest(format!("{job_id}/{seq}").as_bytes());
        let id = hex::encode(&digest[..16]);
        // 32 lower-case hex characters always satisfy EventId's rules.
        EventId::new(format!("e{id}")).unwrap_or_else(|_| unreachable!("hex event id is valid"))
    }

    /// The first event of an accepted job: `receive` / `queued`.
    pub fn accepted(&mut self) -> Action {
        Action::Report(Box::new(self.report(
            Step::Receive,
            ExecutionState::Queued,
            None,
            None,
            None,
        )))
    }

    fn report(
        &mut self,
        step: Step,
        state: ExecutionState,
        token_serial: Option<TokenSerial>,
        error: Option<StepError>,
        data: Option<StepData>,
    ) -> Report {
        self.seq += 1;
        Report {
            event_id: Self::event_id(&self.job_id, self.seq),
            seq: self.seq,
            step,
            state,
            token_serial,
            error,
            data,
        }
    }

    fn unexpected(&self, input: &Input, detail: impl Into<String>) -> JobError {
        JobError {
            job_id: self.job_id.clone(),
            state: self.state.name(),
            input: input.name(),
            detail: detail.into(),
        }
    }

    fn finish(
        &mut self,
        step: Step,
        state: ExecutionState,
        serial: Option<TokenSerial>,
        error: Option<StepError>,
    ) -> Vec<Action> {
        let held = self.holds_token();
        let report = self.report(step, state, serial, error, None);
        self.state = JobState::Finished(state);
        self.final_report = None;
        let mut actions = vec![Action::Report(Box::new(report))];
        if held {
            actions.push(Action::Release);
        }
        actions
    }

    /// Feeds one input; returns the actions to perform, or an error naming what was expected.
    /// On error the machine is unchanged.
    pub fn on(&mut self, input: Input) -> Result<Vec<Action>, JobError> {
        let state = self.state.clone();
        match (state, input) {
            (JobState::Finished(_), input) => Err(self.unexpected(&input, " (the job is over)")),

            (_, Input::Cancel { reason }) if matches!(self.state, JobState::Running { .. }) => {
                // Never cut a token write off: finish the step, then end as canceled.
                self.cancel_requested = Some(reason);
                Ok(Vec::new())
            }
            (state, Input::Cancel { reason }) => {
                let step = self.current_step().unwrap_or(Step::Receive);
                let serial = self.serial().cloned();
                let mut actions = disarm_for(&state);
                actions.extend(self.finish(
                    step,
                    ExecutionState::Canceled,
                    serial,
                    Some(canceled(&reason)),
                ));
                Ok(actions)
            }

            (JobState::Queued, Input::Claimed { serial }) => {
                let claim = self.report(
                    Step::Claim,
                    ExecutionState::InProgress,
                    serial.clone(),
                    None,
                    None,
                );
                let mut actions = vec![Action::Report(Box::new(claim))];
                if self.targeted {
                    actions.push(Action::Disarm(Timer::TargetToken));
                }
                actions.extend(self.start(serial, 1));
                Ok(actions)
            }

            (
                JobState::Queued,
                Input::TimedOut {
                    timer: Timer::TargetToken,
                },
            ) => Ok(self.finish(
                Step::Claim,
                ExecutionState::TimedOut,
                None,
                Some(StepError {
                    code: code(codes::TARGET_TOKEN_TIMEOUT),
                    message: "the token the job names was not plugged in in time".into(),
                    retryable: true,
                }),
            )),

            (JobState::Running { serial, index }, Input::StepSucceeded { step, output })
                if self.plan.get(index) == Some(&step) =>
            {
                let (serial, data) = match output {
                    StepOutput::Done => (serial, None),
                    StepOutput::Data(data) => (serial, Some(data)),
                    StepOutput::Initialized { serial } => (Some(serial), None),
                };
                let report =
                    self.report(step, ExecutionState::InProgress, serial.clone(), None, data);
                let event_id = report.event_id.clone();
                let mut actions = vec![Action::Report(Box::new(report))];
                if let Some(reason) = self.cancel_requested.take() {
                    actions.extend(self.finish(
                        step,
                        ExecutionState::Canceled,
                        serial,
                        Some(canceled(&reason)),
                    ));
                } else if index + 1 == self.plan.len() {
                    // The token is finished: it is released now, not when the platform answers.
                    self.final_report = actions.first().and_then(|a| match a {
                        Action::Report(r) => Some(r.clone()),
                        _ => None,
                    });
                    self.state = JobState::AwaitingFinalAck {
                        serial,
                        event_id,
                        overdue: false,
                    };
                    actions.push(Action::Arm(Timer::FinalAck));
                    actions.push(Action::Release);
                } else if step == Step::RequestCertificates {
                    self.state = JobState::AwaitingCertificates {
                        serial,
                        index: index + 1,
                    };
                    actions.push(Action::Arm(Timer::Certificates));
                } else {
                    actions.extend(self.start(serial, index + 1));
                }
                Ok(actions)
            }

            (JobState::Running { serial, index }, Input::StepFailed { step, error })
                if self.plan.get(index) == Some(&step) =>
            {
                self.cancel_requested = None;
                Ok(self.finish(step, ExecutionState::Failed, serial, Some(error)))
            }

            (JobState::Running { serial, index }, Input::TokenRemoved { step })
                if self.plan.get(index) == Some(&step) =>
            {
                if let Some(reason) = self.cancel_requested.take() {
                    return Ok(self.finish(
                        step,
                        ExecutionState::Canceled,
                        serial,
                        Some(canceled(&reason)),
                    ));
                }
                let report = self.report(
                    step,
                    ExecutionState::InProgress,
                    serial.clone(),
                    None,
                    Some(StepData::Parked {
                        reason: code(codes::TOKEN_REMOVED),
                    }),
                );
                self.state = JobState::Parked { serial, index };
                Ok(vec![
                    Action::Report(Box::new(report)),
                    Action::Arm(Timer::TokenReturn),
                ])
            }

            (JobState::Parked { serial, index }, Input::TokenReturned) => {
                let mut actions = vec![Action::Disarm(Timer::TokenReturn)];
                actions.extend(self.start(serial, index));
                Ok(actions)
            }

            (
                JobState::Parked { serial, index },
                Input::TimedOut {
                    timer: Timer::TokenReturn,
                },
            ) => {
                let step = self.plan.get(index).copied().unwrap_or(Step::Claim);
                Ok(self.finish(
                    step,
                    ExecutionState::Failed,
                    serial,
                    Some(StepError {
                        code: code(codes::TOKEN_RETURN_TIMEOUT),
                        message: "the token was pulled out and not plugged in again in time".into(),
                        retryable: true,
                    }),
                ))
            }

            (
                JobState::AwaitingCertificates { serial, index },
                Input::CertificatesArrived { .. },
            ) => {
                let mut actions = vec![Action::Disarm(Timer::Certificates)];
                actions.extend(self.start(serial, index));
                Ok(actions)
            }

            (
                JobState::AwaitingCertificates { serial, .. },
                Input::CertificatesRejected { reason },
            ) => {
                let mut actions = vec![Action::Disarm(Timer::Certificates)];
                actions.extend(self.finish(
                    Step::RequestCertificates,
                    ExecutionState::Failed,
                    serial,
                    Some(StepError {
                        code: code(codes::CERTIFICATES_REJECTED),
                        message: truncate(&format!("the platform refused to issue: {reason}")),
                        retryable: false,
                    }),
                ));
                Ok(actions)
            }

            (
                JobState::AwaitingCertificates { serial, .. },
                Input::TimedOut {
                    timer: Timer::Certificates,
                },
            ) => Ok(self.finish(
                Step::RequestCertificates,
                ExecutionState::TimedOut,
                serial,
                Some(StepError {
                    code: code(codes::CERTIFICATES_TIMEOUT),
                    message: "no certificates arrived from the platform in time".into(),
                    retryable: true,
                }),
            )),

            (JobState::AwaitingFinalAck { serial, .. }, Input::FinalAcknowledged) => {
                let step = self.plan.last().copied().unwrap_or(Step::Bind);
                let mut actions = vec![Action::Disarm(Timer::FinalAck)];
                actions.extend(self.finish(step, ExecutionState::Succeeded, serial, None));
                Ok(actions)
            }

            (
                JobState::AwaitingFinalAck {
                    serial, event_id, ..
                },
                Input::TimedOut {
                    timer: Timer::FinalAck,
                },
            ) => {
                // A silent platform never fails a finished token: the wait is overdue, the
                // job goes on waiting, and the final event is reported again (same id; the
                // outbox and the platform take it once).
                self.state = JobState::AwaitingFinalAck {
                    serial,
                    event_id,
                    overdue: true,
                };
                Ok(self
                    .final_report
                    .clone()
                    .map(Action::Report)
                    .into_iter()
                    .collect())
            }

            (state, input) => {
                let expected = match &state {
                    JobState::Queued => "claimed, cancel or the target-token timer".to_owned(),
                    JobState::Running { index, .. } => format!(
                        "the outcome of step {}",
                        self.plan.get(*index).map_or("?", |s| s.as_str())
                    ),
                    JobState::AwaitingCertificates { .. } => {
                        "certificates, a rejection or the certificates timer".into()
                    }
                    JobState::Parked { .. } => "token-returned or the token-return timer".into(),
                    JobState::AwaitingFinalAck { .. } => {
                        "the platform's acknowledgement or its timer".into()
                    }
                    JobState::Finished(_) => "nothing".into(),
                };
                Err(self.unexpected(&input, format!("; expected {expected}")))
            }
        }
    }

    /// Moves to `plan[index]` on `serial`.
    fn start(&mut self, serial: Option<TokenSerial>, index: usize) -> Vec<Action> {
        match self.plan.get(index).copied() {
            Some(step) => {
                self.state = JobState::Running { serial, index };
                vec![Action::Execute(step)]
            }
            // A plan always ends with a step awaiting the platform's acknowledgement, so this
            // is reached only by a plan of a single `claim` step: nothing left to do.
            None => self.finish(Step::Claim, ExecutionState::Succeeded, serial, None),
        }
    }
}

fn disarm_for(state: &JobState) -> Vec<Action> {
    match state {
        JobState::Queued => vec![Action::Disarm(Timer::TargetToken)],
        JobState::AwaitingCertificates { .. } => vec![Action::Disarm(Timer::Certificates)],
        JobState::Parked { .. } => vec![Action::Disarm(Timer::TokenReturn)],
        JobState::AwaitingFinalAck { .. } => vec![Action::Disarm(Timer::FinalAck)],
        _ => Vec::new(),
    }
}

/// The error of a job the platform canceled.
fn canceled(reason: &str) -> StepError {
    StepError {
        code: code(codes::CANCELED),
        message: truncate(&format!("canceled by the platform: {reason}")),
        retryable: false,
    }
}

/// Event messages are at most 512 characters.
fn truncate(s: &str) -> String {
    ukey_protocol::fit_text(s, 512)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn job(kind: JobKind) -> JobMachine {
        JobMachine::new(JobId::new("job-1").unwrap(), kind, false)
    }

    fn serial() -> TokenSerial {
        TokenSerial::new("SIM0000000000001").unwrap()
    }

    fn ok(step: Step) -> Input {
        Input::StepSucceeded {
            step,
            output: StepOutput::Done,
        }
    }

    fn reports(actions: &[Action]) -> Vec<(Step, ExecutionState)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Report(r) => Some((r.step, r.state)),
                _ => None,
            })
            .collect()
    }

    fn executes(actions: &[Action]) -> Vec<Step> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Execute(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn new_job_runs_every_step_and_succeeds_on_the_platforms_ack() {
        let mut m = job(JobKind::New);
        assert_eq!(
            reports(&[m.accepted()]),
            vec![(Step::Receive, ExecutionState::Queued)]
        );
        let a = m
            .on(Input::Claimed {
                serial: Some(serial()),
            })
            .unwrap();
        assert_eq!(reports(&a), vec![(Step::Claim, ExecutionState::InProgress)]);
        assert_eq!(executes(&a), vec![Step::Initialize]);
        let a = m.on(ok(Step::Initialize)).unwrap();
        assert_eq!(executes(&a), vec![Step::GenerateKeys]);
        let a = m.on(ok(Step::GenerateKeys)).unwrap();
        assert_eq!(executes(&a), vec![Step::RequestCertificates]);
        let a = m.on(ok(Step::RequestCertificates)).unwrap();
        assert!(executes(&a).is_empty(), "waits for the platform");
        assert!(a.contains(&Action::Arm(Timer::Certificates)));
        let a = m
            .on(Input::CertificatesArrived {
                bundle: sample_bundle(),
            })
            .unwrap();
        assert_eq!(executes(&a), vec![Step::VerifyCertificates]);
        assert!(a.contains(&Action::Disarm(Timer::Certificates)));
        for (done, next) in [
            (Step::VerifyCertificates, Step::Install),
            (Step::Install, Step::Activate),
            (Step::Activate, Step::Bind),
        ] {
            assert_eq!(executes(&m.on(ok(done)).unwrap()), vec![next]);
        }
        let a = m.on(ok(Step::Bind)).unwrap();
        assert_eq!(reports(&a), vec![(Step::Bind, ExecutionState::InProgress)]);
        assert!(a.contains(&Action::Arm(Timer::FinalAck)));
        assert!(
            a.contains(&Action::Release),
            "the finished token is released"
        );
        assert!(!m.is_finished());
        let a = m.on(Input::FinalAcknowledged).unwrap();
        assert_eq!(reports(&a), vec![(Step::Bind, ExecutionState::Succeeded)]);
        assert!(!a.contains(&Action::Release), "released once, at bind");
        assert_eq!(m.state(), &JobState::Finished(ExecutionState::Succeeded));
    }

    fn sample_bundle() -> CertBundle {
        CertBundle {
            certificates: Vec::new(),
            ca_chain: Vec::new(),
        }
    }

    #[test]
    fn sequence_numbers_and_event_ids_are_stable_across_replay() {
        let inputs = vec![
            Input::Claimed {
                serial: Some(serial()),
            },
            ok(Step::Initialize),
            Input::TokenRemoved {
                step: Step::GenerateKeys,
            },
            Input::TokenReturned,
            ok(Step::GenerateKeys),
        ];
        let run = || {
            let mut m = job(JobKind::New);
            let mut ids = vec![];
            if let Action::Report(r) = m.accepted() {
                ids.push((r.seq, r.event_id));
            }
            for i in inputs.clone() {
                for a in m.on(i).unwrap() {
                    if let Action::Report(r) = a {
                        ids.push((r.seq, r.event_id));
                    }
                }
            }
            (ids, m.state().clone())
        };
        let (first, state1) = run();
        let (second, state2) = run();
        assert_eq!(first, second);
        assert_eq!(state1, state2);
        let seqs: Vec<u64> = first.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        let unique: std::collections::BTreeSet<_> =
            first.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(
            unique.len(),
            first.len(),
            "event ids are unique within a job"
        );
        let other = JobMachine::event_id(&JobId::new("job-2").unwrap(), 1);
        assert!(!unique.contains(&other), "and across jobs");
    }

    #[test]
    fn pulled_token_parks_then_resumes_the_same_step() {
        let mut m = job(JobKind::New);
        m.on(Input::Claimed {
            serial: Some(serial()),
        })
        .unwrap();
        let a = m
            .on(Input::TokenRemoved {
                step: Step::Initialize,
            })
            .unwrap();
        assert!(a.contains(&Action::Arm(Timer::TokenReturn)));
        assert!(matches!(m.state(), JobState::Parked { .. }));
        let parked = a.iter().find_map(|a| match a {
            Action::Report(r) => r.data.clone(),
            _ => None,
        });
        assert!(matches!(parked, Some(StepData::Parked { .. })));
        let a = m.on(Input::TokenReturned).unwrap();
        assert_eq!(executes(&a), vec![Step::Initialize]);
    }

    #[test]
    fn parked_job_fails_retryable_when_the_token_stays_away() {
        let mut m = job(JobKind::New);
        m.on(Input::Claimed {
            serial: Some(serial()),
        })
        .unwrap();
        m.on(Input::TokenRemoved {
            step: Step::Initialize,
        })
        .unwrap();
        let a = m
            .on(Input::TimedOut {
                timer: Timer::TokenReturn,
            })
            .unwrap();
        let Action::Report(r) = &a[0] else {
            panic!("{a:?}")
        };
        assert_eq!(r.state, ExecutionState::Failed);
        assert!(r.error.as_ref().unwrap().retryable);
        assert!(a.contains(&Action::Release));
    }

    #[test]
    fn failure_ends_the_job_with_the_steps_error() {
        let mut m = job(JobKind::New);
        m.on(Input::Claimed {
            serial: Some(serial()),
        })
        .unwrap();
        m.on(ok(Step::Initialize)).unwrap();
        let error = StepError {
            code: ErrorCode::new("attribute-check").unwrap(),
            message: "CKA_NEVER_EXTRACTABLE is false".into(),
            retryable: false,
        };
        let a = m
            .on(Input::StepFailed {
                step: Step::GenerateKeys,
                error: error.clone(),
            })
            .unwrap();
        let Action::Report(r) = &a[0] else {
            panic!("{a:?}")
        };
        assert_eq!(
            (r.step, r.state),
            (Step::GenerateKeys, ExecutionState::Failed)
        );
        assert_eq!(r.error.as_ref(), Some(&error));
        assert!(
            m.on(ok(Step::RequestCertificates)).is_err(),
            "nothing after the end"
        );
    }

    #[test]
    fn cancel_waits_for_the_running_step() {
        let mut m = job(JobKind::New);
        m.on(Input::Claimed {
            serial: Some(serial()),
        })
        .unwrap();
        let a = m
            .on(Input::Cancel {
                reason: "order withdrawn".into(),
            })
            .unwrap();
        assert!(a.is_empty(), "the token write in progress is not cut off");
        let a = m.on(ok(Step::Initialize)).unwrap();
        assert!(executes(&a).is_empty());
        assert_eq!(
            reports(&a),
            vec![
                (Step::Initialize, ExecutionState::InProgress),
                (Step::Initialize, ExecutionState::Canceled)
            ]
        );
    }

    /// A `new` job that sent its CSRs and waits for the platform's certificates.
    fn waiting_for_certificates() -> JobMachine {
        let mut m = job(JobKind::New);
        m.on(Input::Claimed {
            serial: Some(serial()),
        })
        .unwrap();
        for step in [
            Step::Initialize,
            Step::GenerateKeys,
            Step::RequestCertificates,
        ] {
            m.on(ok(step)).unwrap();
        }
        assert!(matches!(m.state(), JobState::AwaitingCertificates { .. }));
        m
    }

    #[test]
    fn cancel_while_waiting_disarms_and_ends() {
        let mut m = waiting_for_certificates();
        let a = m.on(Input::Cancel { reason: "x".into() }).unwrap();
        assert_eq!(a[0], Action::Disarm(Timer::Certificates));
        assert_eq!(m.state(), &JobState::Finished(ExecutionState::Canceled));
    }

    #[test]
    fn targeted_job_waits_for_its_token_then_times_out() {
        let mut m = job(JobKind::Unlock);
        assert!(m.is_targeted());
        assert!(!job(JobKind::New).is_targeted());
        m.accepted();
        let a = m
            .on(Input::TimedOut {
                timer: Timer::TargetToken,
            })
            .unwrap();
        assert_eq!(reports(&a), vec![(Step::Claim, ExecutionState::TimedOut)]);
        assert!(!a.contains(&Action::Release), "no token was held");
        assert_eq!(m.state(), &JobState::Finished(ExecutionState::TimedOut));

        let mut m = job(JobKind::Unlock);
        m.accepted();
        let a = m
            .on(Input::Claimed {
                serial: Some(serial()),
            })
            .unwrap();
        assert!(a.contains(&Action::Disarm(Timer::TargetToken)));
        assert_eq!(executes(&a), vec![Step::ResetPin]);
        assert!(
            m.on(Input::TimedOut {
                timer: Timer::TargetToken
            })
            .is_err(),
            "a claimed job ignores a late target timer"
        );
        let a = m
            .on(Input::StepSucceeded {
                step: Step::ResetPin,
                output: StepOutput::Done,
            })
            .unwrap();
        assert!(a.contains(&Action::Arm(Timer::FinalAck)));
        let a = m.on(Input::FinalAcknowledged).unwrap();
        assert_eq!(
            reports(&a),
            vec![(Step::ResetPin, ExecutionState::Succeeded)]
        );
    }

    #[test]
    fn rejection_and_timeouts_end_the_wait() {
        let mut m = waiting_for_certificates();
        let mut timed_out = m.clone();
        m.on(Input::CertificatesRejected {
            reason: "order unpaid".into(),
        })
        .unwrap();
        assert_eq!(m.state(), &JobState::Finished(ExecutionState::Failed));
        timed_out
            .on(Input::TimedOut {
                timer: Timer::Certificates,
            })
            .unwrap();
        assert_eq!(
            timed_out.state(),
            &JobState::Finished(ExecutionState::TimedOut)
        );
    }

    #[test]
    fn unexpected_input_names_state_and_expectation_and_changes_nothing() {
        let mut m = job(JobKind::New);
        let err = m.on(ok(Step::Initialize)).unwrap_err();
        assert_eq!(err.state, "queued");
        assert!(err.to_string().contains("expected claimed"), "{err}");
        assert_eq!(m.state(), &JobState::Queued);
        m.on(Input::Claimed {
            serial: Some(serial()),
        })
        .unwrap();
        let err = m.on(ok(Step::Bind)).unwrap_err();
        assert!(
            err.to_string().contains("outcome of step initialize"),
            "{err}"
        );
    }

    /// A `new` job whose `bind` step is done: the token is finished, the platform's ack is
    /// awaited. Returns the bind event's report.
    fn bound() -> (JobMachine, Report) {
        let mut m = waiting_for_certificates();
        m.on(Input::CertificatesArrived {
            bundle: sample_bundle(),
        })
        .unwrap();
        for step in [Step::VerifyCertificates, Step::Install, Step::Activate] {
            m.on(ok(step)).unwrap();
        }
        let a = m.on(ok(Step::Bind)).unwrap();
        let report = a
            .iter()
            .find_map(|a| match a {
                Action::Report(r) => Some((**r).clone()),
                _ => None,
            })
            .unwrap();
        (m, report)
    }

    #[test]
    fn a_finished_token_is_released_while_the_platform_has_not_confirmed() {
        let (m, bind) = bound();
        assert_eq!(
            (bind.step, bind.state),
            (Step::Bind, ExecutionState::InProgress)
        );
        assert_eq!(
            m.state(),
            &JobState::AwaitingFinalAck {
                serial: Some(serial()),
                event_id: bind.event_id.clone(),
                overdue: false,
            }
        );
        assert!(!m.holds_token(), "the staff may pull the finished token");
        assert_eq!(m.serial(), Some(&serial()), "the job still names its token");
        assert_eq!(m.unconfirmed(), Some(false));
        assert_eq!(m.current_step(), Some(Step::Bind));
        assert_eq!(waiting_for_certificates().unconfirmed(), None);
    }

    #[test]
    fn a_silent_platform_never_fails_a_finished_token() {
        let (mut m, bind) = bound();
        // The ack is overdue, twice (the timer is armed again after a restart): no new event,
        // no end; the bind event itself is reported again, with its own id and seq.
        for _ in 0..2 {
            let a = m
                .on(Input::TimedOut {
                    timer: Timer::FinalAck,
                })
                .unwrap();
            assert_eq!(a, vec![Action::Report(Box::new(bind.clone()))]);
            assert!(!m.is_finished());
            assert_eq!(m.unconfirmed(), Some(true));
            assert!(!m.holds_token());
        }
        // However late, the ack makes the job succeed: the next seq, no timed-out anywhere.
        let a = m.on(Input::FinalAcknowledged).unwrap();
        assert_eq!(a[0], Action::Disarm(Timer::FinalAck));
        let Action::Report(done) = &a[1] else {
            panic!("{a:?}")
        };
        assert_eq!(
            (done.step, done.state, done.seq),
            (Step::Bind, ExecutionState::Succeeded, bind.seq + 1)
        );
        assert_eq!(done.token_serial, Some(serial()));
        assert!(done.error.is_none());
        assert!(
            !a.contains(&Action::Release),
            "the token was released at bind"
        );
        assert_eq!(m.state(), &JobState::Finished(ExecutionState::Succeeded));
        assert_eq!(m.unconfirmed(), None);
        assert!(
            m.on(Input::TimedOut {
                timer: Timer::FinalAck
            })
            .is_err(),
            "a late timer after the end changes nothing"
        );
    }

    #[test]
    fn an_overdue_wait_survives_replay_and_reports_the_final_event_again() {
        // The journal of a job whose ack became overdue, replayed into a fresh machine (as
        // after a restart): same state, and the last record's reports are the bind event,
        // so the restart pushes it to the outbox again.
        let (mut m, bind) = bound();
        let mut inputs = vec![
            Input::Claimed {
                serial: Some(serial()),
            },
            ok(Step::Initialize),
            ok(Step::GenerateKeys),
            ok(Step::RequestCertificates),
            Input::CertificatesArrived {
                bundle: sample_bundle(),
            },
            ok(Step::VerifyCertificates),
            ok(Step::Install),
            ok(Step::Activate),
            ok(Step::Bind),
        ];
        let timeout = Input::TimedOut {
            timer: Timer::FinalAck,
        };
        m.on(timeout.clone()).unwrap();
        inputs.push(timeout);
        let mut replayed = job(JobKind::New);
        let mut last = Vec::new();
        for input in inputs {
            last = replayed.on(input).unwrap();
        }
        assert_eq!(replayed.state(), m.state());
        assert_eq!(replayed.unconfirmed(), Some(true));
        assert_eq!(last, vec![Action::Report(Box::new(bind))]);
        let a = replayed.on(Input::FinalAcknowledged).unwrap();
        assert_eq!(reports(&a), vec![(Step::Bind, ExecutionState::Succeeded)]);
    }

    #[test]
    fn cancel_after_the_token_is_finished_releases_nothing_more() {
        let (mut m, _) = bound();
        m.on(Input::TimedOut {
            timer: Timer::FinalAck,
        })
        .unwrap();
        let a = m
            .on(Input::Cancel {
                reason: "order withdrawn".into(),
            })
            .unwrap();
        assert_eq!(a[0], Action::Disarm(Timer::FinalAck));
        assert_eq!(reports(&a), vec![(Step::Bind, ExecutionState::Canceled)]);
        assert!(!a.contains(&Action::Release));
        assert_eq!(m.state(), &JobState::Finished(ExecutionState::Canceled));
    }

    #[test]
    fn unlock_resets_the_pin_and_waits_for_the_ack() {
        let mut m = job(JobKind::Unlock);
        let a = m
            .on(Input::Claimed {
                serial: Some(serial()),
            })
            .unwrap();
        assert_eq!(executes(&a), vec![Step::ResetPin]);
        let a = m.on(ok(Step::ResetPin)).unwrap();
        assert!(a.contains(&Action::Arm(Timer::FinalAck)));
        assert!(a.contains(&Action::Release));
        // Overdue: the reset-pin event (with the sealed new PIN) goes out again, unchanged.
        let a = m
            .on(Input::TimedOut {
                timer: Timer::FinalAck,
            })
            .unwrap();
        assert_eq!(
            reports(&a),
            vec![(Step::ResetPin, ExecutionState::InProgress)]
        );
        let a = m.on(Input::FinalAcknowledged).unwrap();
        assert_eq!(
            reports(&a),
            vec![(Step::ResetPin, ExecutionState::Succeeded)]
        );
    }
}
