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
mod tests;
