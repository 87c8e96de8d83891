//! The desk staff: plugs blank tokens into the rack as slots free up, has the platform
//! dispatch one `new` job per token, takes finished tokens away, and — with `--faults` —
//! plays the script: one token is pulled out mid-job and plugged back in, and the token whose
//! job failed on a certificate for the wrong key is wiped and plugged in again for a new job.
//!
//! Everything it knows about a job comes from the simulated platform's records (the step
//! events the agent reported); everything it knows about a slot comes from the rack. It wakes
//! on every change of the records, and at least every [`TICK`] to redraw elapsed times.
//!
//! A finished token is taken out only when a blank one waits for its slot: the last tokens
//! stay plugged in at the end, so the rack's lights show how each of them ended.
//!
//! With another PKCS#11 module (`--module`) there is no rack: all jobs are dispatched at once
//! and the module's blank tokens take them, one line per job.
//!
//! On an interruption (Ctrl-C, SIGTERM) the desk stops at once: nothing more is plugged in or
//! dispatched, no token is pulled, and each token in progress is recorded as
//! [`Outcome::Interrupted`]; [`settle`] brings those up to date once the agent has stopped.
//!
//! What it does not do: touch a token's objects (the agent does), or judge the tokens
//! (the verification pass does).

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use ukey_protocol::{
    ExecutionState, JobId, JobKind, KeyAlgorithm, StationId, Step, StepData, TokenSerial,
};

use super::error::DemoError;
use super::progress::{Progress, SeatLine, Status};
use hsm_sim::rack::fault::{Fault, FaultAction};
use hsm_sim::rack::latency::Profile;
use hsm_sim::rack::{InsertOptions, Rack};
use ukey_platform_sim::{JobDraft, JobRecord, Misbehaviour, Platform, Records, Times};

/// How often lines are redrawn when nothing happens.
pub(crate) const TICK: Duration = Duration::from_millis(200);

/// A run ends when the records have not changed for this long.
pub(crate) const STALL: Duration = Duration::from_secs(90);

/// The error code the agent reports for a certificate that certifies another key.
const KEY_MISMATCH: &str = "certificate-key-mismatch";

/// Where the tokens are.
#[derive(Clone, Copy)]
pub(crate) enum Tokens<'a> {
    /// The virtual rack: the desk plugs and pulls tokens.
    Rack(&'a Rack),
    /// Another module's blank tokens: nothing to plug.
    Module,
}

/// What the desk does.
#[derive(Debug, Clone)]
pub(crate) struct DeskPlan {
    /// Tokens to make.
    pub(crate) tokens: usize,
    /// Rack slots used (rack only).
    pub(crate) slots: usize,
    /// Key algorithm of every job.
    pub(crate) algorithm: KeyAlgorithm,
    /// Latency profile of every token plugged in.
    pub(crate) latency: Profile,
    /// Play the fault script.
    pub(crate) faults: bool,
    /// The station the jobs are for.
    pub(crate) station: StationId,
}

/// How one token ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// Its job succeeded.
    Succeeded,
    /// Its job failed, or the run stopped (stalled, the agent died) before it finished.
    Failed(String),
    /// The run was interrupted (Ctrl-C, SIGTERM) before its job ended: `interrupted (last
    /// step: …)`.
    Interrupted(String),
}

/// One token (or, without a rack, one job) and how it ended.
#[derive(Debug, Clone)]
pub(crate) struct TokenResult {
    /// Rack slot, or job number without a rack.
    pub(crate) position: usize,
    /// The token.
    pub(crate) serial: Option<TokenSerial>,
    /// Its last job's record.
    pub(crate) job: Option<JobRecord>,
    /// How it ended.
    pub(crate) outcome: Outcome,
    /// From the job's claim to its last event (the agent's clock).
    pub(crate) duration: Option<Duration>,
}

/// Which scripted fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultKind {
    /// The token was pulled out in the middle of key generation and plugged back in.
    TokenPulled,
    /// The platform certified another key than the token's.
    CertificateForAnotherKey,
}

impl FaultKind {
    /// The name in the output.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FaultKind::TokenPulled => "token-pulled",
            FaultKind::CertificateForAnotherKey => "certificate-for-another-key",
        }
    }
}

/// A scripted fault and what became of it.
#[derive(Debug, Clone)]
pub(crate) struct FaultResult {
    /// Which fault.
    pub(crate) kind: FaultKind,
    /// The token it hit.
    pub(crate) serial: String,
    /// The job it hit.
    pub(crate) job_id: Option<JobId>,
    /// Whether the agent noticed (parked the job / refused the certificate).
    pub(crate) caught: bool,
    /// Whether the token was finished in the end.
    pub(crate) recovered: bool,
    /// What happened, in words.
    pub(crate) detail: String,
}

/// Everything the desk saw.
#[derive(Debug, Clone)]
pub(crate) struct DeskRun {
    /// Per token, in the order they finished.
    pub(crate) results: Vec<TokenResult>,
    /// The scripted faults.
    pub(crate) faults: Vec<FaultResult>,
    /// From the first token plugged in (or job dispatched) to the last one finished.
    pub(crate) makespan: Duration,
    /// Why the run stopped early, if it did.
    pub(crate) aborted: Option<String>,
    /// The run was interrupted (Ctrl-C, SIGTERM).
    pub(crate) interrupted: bool,
}

/// The pull fault's progress on its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pull {
    None,
    Armed,
    Pulled(Instant),
    Reinserted,
}

/// One line: a rack slot, or a job without a rack.
struct Seat {
    /// The token in the slot (rack), or the token that took the job (module).
    serial: Option<String>,
    /// The job of this line (module only).
    dispatched: Option<JobId>,
    /// Jobs of this token that ended and are not its result (the wiped token's first job).
    ignore: Vec<JobId>,
    since: Instant,
    pull: Pull,
    /// Index into `faults` of this token's pull fault.
    pull_fault: Option<usize>,
    /// Index into `faults` of this token's certificate fault.
    cert_fault: Option<usize>,
    /// Shown when the line is idle.
    last: Option<Status>,
}

impl Seat {
    fn new() -> Seat {
        Seat {
            serial: None,
            dispatched: None,
            ignore: Vec::new(),
            since: Instant::now(),
            pull: Pull::None,
            pull_fault: None,
            cert_fault: None,
            last: None,
        }
    }

    fn clear(&mut self) {
        self.serial = None;
        self.dispatched = None;
        self.ignore.clear();
        self.pull = Pull::None;
        self.pull_fault = None;
        self.cert_fault = None;
    }

    /// The job this line follows now.
    fn job<'r>(&self, records: &'r Records) -> Option<&'r JobRecord> {
        if let Some(id) = &self.dispatched {
            return records.job(id);
        }
        let serial = self.serial.as_deref()?;
        records
            .dispatched()
            .iter()
            .rev()
            .filter(|id| !self.ignore.contains(id))
            .filter_map(|id| records.job(id))
            .find(|j| j.token_serial().map(TokenSerial::as_str) == Some(serial))
    }
}

/// A number that changes whenever something the desk follows changes.
fn digest(records: &Records) -> usize {
    records
        .jobs()
        .map(|j| j.events().len() + j.cert_responses().len())
        .sum::<usize>()
        + records.dispatched().len()
}

/// What a job's line says.
fn status_of(job: Option<&JobRecord>, waiting: &str) -> Status {
    let Some(event) = job.and_then(JobRecord::last_event) else {
        return Status::Working(waiting.to_owned());
    };
    match event.state {
        ExecutionState::Queued => Status::Working("queued".to_owned()),
        ExecutionState::InProgress => match &event.data {
            Some(StepData::Parked { reason }) => Status::Working(format!("parked ({reason})")),
            _ if event.step == Step::RequestCertificates => {
                Status::Working("request-certificates".to_owned())
            }
            _ => Status::Working(event.step.as_str().to_owned()),
        },
        ExecutionState::Succeeded => Status::Done("done".to_owned()),
        other => Status::Failed(failure_text(job, other)),
    }
}

/// `failed at verify-certificates: certificate-key-mismatch: …`.
fn failure_text(job: Option<&JobRecord>, state: ExecutionState) -> String {
    let Some(event) = job.and_then(JobRecord::last_event) else {
        return state.as_str().to_owned();
    };
    let mut text = format!("{} at {}", event.state, event.step);
    if let Some(e) = &event.error {
        text += &format!(": {}: {}", e.code, e.message);
    }
    text
}

fn error_code(job: &JobRecord) -> Option<&str> {
    job.last_event()
        .and_then(|e| e.error.as_ref())
        .map(|e| e.code.as_str())
}

/// Claim to last event, on the agent's clock.
fn job_duration(job: &JobRecord) -> Option<Duration> {
    let first = job
        .events()
        .iter()
        .find(|e| e.step == Step::Claim)
        .or_else(|| job.events().first())?;
    let last = job.last_event()?;
    Duration::try_from(last.at - first.at).ok()
}

fn company(job: Option<&JobRecord>) -> Option<String> {
    job.and_then(JobRecord::document)
        .map(|d| d.enterprise.name.clone())
}

/// The desk staff at work.
pub(crate) struct Desk<'a> {
    platform: &'a Platform,
    tokens: Tokens<'a>,
    plan: DeskPlan,
    progress: &'a Progress,
    seats: Vec<Seat>,
    /// Tokens not plugged in yet (rack), or jobs not dispatched yet.
    remaining: usize,
    results: Vec<TokenResult>,
    faults: Vec<FaultResult>,
    /// The pull fault was armed already.
    pull_armed: bool,
}

impl<'a> Desk<'a> {
    /// A desk about to make `plan.tokens` tokens.
    pub(crate) fn new(
        platform: &'a Platform,
        tokens: Tokens<'a>,
        plan: DeskPlan,
        progress: &'a Progress,
    ) -> Desk<'a> {
        let lines = match tokens {
            Tokens::Rack(_) => plan.slots,
            Tokens::Module => plan.tokens,
        };
        Desk {
            platform,
            tokens,
            remaining: plan.tokens,
            plan,
            progress,
            seats: (0..lines).map(|_| Seat::new()).collect(),
            results: Vec::new(),
            faults: Vec::new(),
            pull_armed: false,
        }
    }

    /// Runs until every token is finished, the run stalls, the agent stops (`agent_alive`
    /// turns false) or `interrupt` is cancelled.
    pub(crate) async fn run(
        mut self,
        agent_alive: impl Fn() -> bool,
        interrupt: CancellationToken,
    ) -> Result<DeskRun, DemoError> {
        let started = Instant::now();
        if self.plan.faults {
            self.platform
                .misbehave(Misbehaviour::CertificateForAnotherKey, Times::Once);
            self.progress.note(&self.progress.yellow(
                "fault script: the platform will certify a wrong key once; one token will be pulled out mid-job",
            ));
        }
        self.fill().await?;
        let mut last_digest = usize::MAX;
        let mut last_change = Instant::now();
        let mut aborted = None;
        let mut interrupted = false;
        loop {
            let seen = last_digest;
            let waited = tokio::select! {
                biased;
                () = interrupt.cancelled() => {
                    aborted = Some("interrupted".to_owned());
                    interrupted = true;
                    break;
                }
                waited = self.platform.wait_until("a change", TICK, |r| {
                    let d = digest(r);
                    (d != seen).then_some(d)
                }) => waited,
            };
            if let Ok(d) = waited {
                last_digest = d;
                last_change = Instant::now();
            }
            if interrupt.is_cancelled() {
                // Nothing more is plugged in or dispatched once the signal came: the next
                // turn stops.
                continue;
            }
            let records = self.platform.snapshot();
            self.step(&records).await?;
            self.fill().await?;
            if self.finished() {
                break;
            }
            if !agent_alive() {
                aborted = Some("the agent stopped".to_owned());
                break;
            }
            if last_change.elapsed() >= STALL {
                aborted = Some(format!("no progress for {} s", STALL.as_secs()));
                break;
            }
        }
        let makespan = started.elapsed();
        if let Some(why) = &aborted {
            let records = self.platform.snapshot();
            for i in 0..self.seats.len() {
                let occupied = self.seats[i].serial.is_some() || self.seats[i].dispatched.is_some();
                if occupied {
                    let job = self.seats[i].job(&records).cloned();
                    let step = job
                        .as_ref()
                        .and_then(JobRecord::last_event)
                        .map(|e| format!(" (last step: {})", e.step))
                        .unwrap_or_default();
                    let outcome = if interrupted {
                        Outcome::Interrupted(format!("{why}{step}"))
                    } else {
                        Outcome::Failed(format!("{why}{step}"))
                    };
                    self.finish_seat(i, job, outcome);
                }
            }
        }
        for fault in &mut self.faults {
            fault.recovered = self.results.iter().any(|r| {
                matches!(r.outcome, Outcome::Succeeded)
                    && r.serial.as_ref().map(TokenSerial::as_str) == Some(fault.serial.as_str())
            });
        }
        Ok(DeskRun {
            results: self.results,
            faults: self.faults,
            makespan,
            aborted,
            interrupted,
        })
    }

    fn finished(&self) -> bool {
        self.remaining == 0
            && self
                .seats
                .iter()
                .all(|s| s.serial.is_none() && s.dispatched.is_none())
    }

    async fn dispatch(&self) -> Result<JobId, DemoError> {
        let draft =
            JobDraft::new(JobKind::New, &self.plan.station)?.with_algorithm(self.plan.algorithm);
        Ok(self.platform.dispatch_draft(&draft).await?)
    }

    /// Plugs blank tokens into free slots (rack), or dispatches every job (module).
    async fn fill(&mut self) -> Result<(), DemoError> {
        match self.tokens {
            Tokens::Module => {
                for i in 0..self.seats.len() {
                    if self.remaining == 0 {
                        break;
                    }
                    if self.seats[i].dispatched.is_none() && self.seats[i].last.is_none() {
                        let job = self.dispatch().await?;
                        self.remaining -= 1;
                        let seat = &mut self.seats[i];
                        seat.dispatched = Some(job);
                        seat.since = Instant::now();
                    }
                }
            }
            Tokens::Rack(rack) => {
                for i in 0..self.seats.len() {
                    if self.remaining == 0 {
                        break;
                    }
                    if !self.takes_a_blank(rack, i) {
                        continue;
                    }
                    let options = InsertOptions {
                        latency: Some(self.plan.latency),
                        ..Default::default()
                    };
                    let serial = rack.insert(i, options)?;
                    let arm = self.plan.faults && !self.pull_armed;
                    if arm {
                        // The second key pair's generation pulls the token out.
                        let fault = Fault::new("C_GenerateKeyPair", 2, FaultAction::Pull)?;
                        rack.set_fault(i, fault)?;
                        self.pull_armed = true;
                    }
                    self.dispatch().await?;
                    self.remaining -= 1;
                    let seat = &mut self.seats[i];
                    seat.serial = Some(serial);
                    seat.since = Instant::now();
                    seat.pull = if arm { Pull::Armed } else { Pull::None };
                }
            }
        }
        Ok(())
    }

    /// Looks at every line once: redraws it and acts on what changed.
    async fn step(&mut self, records: &Records) -> Result<(), DemoError> {
        for i in 0..self.seats.len() {
            let occupied = self.seats[i].serial.is_some() || self.seats[i].dispatched.is_some();
            if !occupied {
                let seat = &self.seats[i];
                let status = seat.last.clone().unwrap_or_else(|| match self.tokens {
                    Tokens::Rack(_) => Status::Idle("empty".to_owned()),
                    Tokens::Module => Status::Idle("not dispatched".to_owned()),
                });
                self.progress.update(
                    i,
                    &SeatLine {
                        position: self.position_name(i),
                        serial: None,
                        company: None,
                        status,
                        elapsed: Duration::ZERO,
                    },
                );
                continue;
            }
            let job = self.seats[i].job(records).cloned();
            if let Tokens::Rack(rack) = self.tokens {
                self.watch_pull(i, rack, job.as_ref())?;
            }
            let waiting = match self.tokens {
                Tokens::Rack(_) => "waiting for a job",
                Tokens::Module => "waiting for a blank token",
            };
            let mut status = status_of(job.as_ref(), waiting);
            if matches!(self.seats[i].pull, Pull::Pulled(_)) {
                status = Status::Working("token pulled out".to_owned());
            }
            let serial = self.seats[i].serial.clone().or_else(|| {
                job.as_ref()
                    .and_then(|j| j.token_serial())
                    .map(|s| s.to_string())
            });
            self.progress.update(
                i,
                &SeatLine {
                    position: self.position_name(i),
                    serial,
                    company: company(job.as_ref()),
                    status,
                    elapsed: self.seats[i].since.elapsed(),
                },
            );
            let Some(job) = job else { continue };
            let Some(state) = job.state() else { continue };
            if !state.is_terminal() {
                continue;
            }
            if state == ExecutionState::Succeeded {
                self.finish_seat(i, Some(job), Outcome::Succeeded);
                continue;
            }
            let retry = self.plan.faults
                && error_code(&job) == Some(KEY_MISMATCH)
                && self.seats[i].cert_fault.is_none()
                && !self
                    .faults
                    .iter()
                    .any(|f| f.kind == FaultKind::CertificateForAnotherKey);
            match (retry, self.tokens) {
                (true, Tokens::Rack(rack)) => self.wipe_and_retry(i, rack, &job).await?,
                _ => {
                    let reason = failure_text(Some(&job), state);
                    self.finish_seat(i, Some(job), Outcome::Failed(reason));
                }
            }
        }
        Ok(())
    }

    fn position_name(&self, i: usize) -> String {
        match self.tokens {
            Tokens::Rack(_) => format!("slot {i}"),
            Tokens::Module => format!("job {}", i + 1),
        }
    }

    /// The pull fault: notices the empty slot, waits for the agent to park the job, plugs
    /// the token back in.
    fn watch_pull(
        &mut self,
        i: usize,
        rack: &Rack,
        job: Option<&JobRecord>,
    ) -> Result<(), DemoError> {
        let Some(serial) = self.seats[i].serial.clone() else {
            return Ok(());
        };
        match self.seats[i].pull {
            Pull::Armed => {
                if rack.serial_in(i)?.is_none() {
                    self.seats[i].pull = Pull::Pulled(Instant::now());
                    self.progress.note(&self.progress.yellow(&format!(
                        "slot {i}   {serial}  fault: the token was pulled out mid-job (2nd key pair generation)"
                    )));
                    self.faults.push(FaultResult {
                        kind: FaultKind::TokenPulled,
                        serial: serial.clone(),
                        job_id: job.map(|j| j.job_id().clone()),
                        caught: false,
                        recovered: false,
                        detail: format!("pulled out of slot {i} by its 2nd C_GenerateKeyPair call"),
                    });
                    self.seats[i].pull_fault = Some(self.faults.len() - 1);
                }
            }
            Pull::Pulled(at) => {
                let parked = job.and_then(|j| {
                    j.events().iter().find_map(|e| match &e.data {
                        Some(StepData::Parked { .. }) => Some(e.step),
                        _ => None,
                    })
                });
                // The agent parks the job at once; a short grace covers a lost event.
                if parked.is_some() || at.elapsed() > Duration::from_secs(15) {
                    rack.insert(
                        i,
                        InsertOptions {
                            serial: Some(serial.clone()),
                            ..Default::default()
                        },
                    )?;
                    self.seats[i].pull = Pull::Reinserted;
                    let text = match parked {
                        Some(step) => format!(
                            "the agent parked the job at {step}; the desk plugged the token back into slot {i} and the job resumed"
                        ),
                        None => format!(
                            "no parked event seen; the desk plugged the token back into slot {i}"
                        ),
                    };
                    self.progress.note(
                        &self
                            .progress
                            .yellow(&format!("slot {i}   {serial}  caught: {text}")),
                    );
                    if let Some(f) = self.seats[i]
                        .pull_fault
                        .and_then(|n| self.faults.get_mut(n))
                    {
                        f.caught = parked.is_some();
                        f.job_id = job.map(|j| j.job_id().clone()).or(f.job_id.clone());
                        f.detail = format!("{}; {text}", f.detail);
                    }
                }
            }
            Pull::None | Pull::Reinserted => {}
        }
        Ok(())
    }

    /// The certificate fault: the token holds keys without certificates now, so it is not
    /// blank; the desk wipes it (`hsm-sim wipe`), plugs it in again and asks for a new job.
    async fn wipe_and_retry(
        &mut self,
        i: usize,
        rack: &Rack,
        job: &JobRecord,
    ) -> Result<(), DemoError> {
        let Some(serial) = self.seats[i].serial.clone() else {
            return Ok(());
        };
        let reason = failure_text(Some(job), ExecutionState::Failed);
        rack.remove(i)?;
        rack.wipe(&serial)?;
        rack.insert(
            i,
            InsertOptions {
                serial: Some(serial.clone()),
                latency: Some(self.plan.latency),
                ..Default::default()
            },
        )?;
        let next = self.dispatch().await?;
        let code = error_code(job).unwrap_or(KEY_MISMATCH).to_owned();
        self.progress.note(&self.progress.yellow(&format!(
            "slot {i}   {serial}  caught: job {} refused the certificates ({code}), nothing written; \
             the desk wiped the token and plugged it back in; new job {next}",
            job.job_id()
        )));
        let text = format!(
            "the agent refused the certificates of job {} ({reason}); nothing was written. \
             The desk wiped the token (hsm-sim wipe), plugged it back into slot {i}, and the \
             platform dispatched job {next}",
            job.job_id()
        );
        self.faults.push(FaultResult {
            kind: FaultKind::CertificateForAnotherKey,
            serial,
            job_id: Some(job.job_id().clone()),
            caught: true,
            recovered: false,
            detail: text,
        });
        let seat = &mut self.seats[i];
        seat.cert_fault = Some(self.faults.len() - 1);
        seat.ignore.push(job.job_id().clone());
        Ok(())
    }

    /// Whether slot `i` is free for the next blank token: no token of the desk's there, and
    /// none in the rack either (a finished token left in its slot keeps it).
    fn takes_a_blank(&self, rack: &Rack, i: usize) -> bool {
        self.seats[i].serial.is_none() && matches!(rack.serial_in(i), Ok(None))
    }

    /// Records a finished token, takes it out of the rack and frees the line.
    fn finish_seat(&mut self, i: usize, job: Option<JobRecord>, outcome: Outcome) {
        let seat = &self.seats[i];
        let serial = seat.serial.clone().or_else(|| {
            job.as_ref()
                .and_then(|j| j.token_serial())
                .map(|s| s.to_string())
        });
        let serial = serial.and_then(|s| TokenSerial::new(s).ok());
        let duration = job.as_ref().and_then(job_duration);
        let name = self.position_name(i);
        let line = format!(
            "{}  {}  {}  {}",
            super::progress::pad(&name, 7),
            super::progress::pad(serial.as_ref().map(TokenSerial::as_str).unwrap_or("-"), 16),
            super::progress::pad(&company(job.as_ref()).unwrap_or_else(|| "-".to_owned()), 26),
            match &outcome {
                Outcome::Succeeded => self.progress.green(&format!(
                    "finished in {:.1} s (job {})",
                    duration.unwrap_or_default().as_secs_f64(),
                    job.as_ref().map(|j| j.job_id().as_str()).unwrap_or("-")
                )),
                Outcome::Failed(why) => self.progress.red(&format!("FAILED: {why}")),
                Outcome::Interrupted(why) => self.progress.yellow(&format!("stopped: {why}")),
            }
        );
        self.progress.note(&line);
        // Taken out only to make room for a blank token: the last ones stay, lit. Slots
        // already emptied (by tokens that finished in the same pass) take the blank tokens
        // first. An interrupted token stays where it is, for the agent to park its job.
        let empty = match &self.tokens {
            Tokens::Rack(rack) => (0..self.seats.len())
                .filter(|&j| j != i && self.takes_a_blank(rack, j))
                .count(),
            Tokens::Module => 0,
        };
        let taken_out = self.remaining > empty && !matches!(outcome, Outcome::Interrupted(_));
        if let (Tokens::Rack(rack), Some(_), true) = (&self.tokens, &seat.serial, taken_out) {
            // The token may be out already (pulled and never returned).
            let _ = rack.remove(i);
        }
        let last = match &outcome {
            Outcome::Succeeded if taken_out => Status::Idle("empty".to_owned()),
            Outcome::Succeeded => Status::Done("done (left in the slot)".to_owned()),
            Outcome::Failed(why) | Outcome::Interrupted(why) => Status::Failed(why.clone()),
        };
        self.results.push(TokenResult {
            position: i,
            serial,
            job,
            outcome,
            duration,
        });
        let seat = &mut self.seats[i];
        seat.clear();
        seat.last = Some(match self.tokens {
            Tokens::Rack(_) => last,
            // A job line without a rack is never reused.
            Tokens::Module => Status::Idle("finished".to_owned()),
        });
    }
}

/// After an interrupted run, once the agent has stopped: each token recorded as interrupted
/// takes the state its job reached meanwhile (a job may end during the agent's graceful
/// stop); a job still open stays interrupted, with its latest record.
pub(crate) fn settle(run: &mut DeskRun, records: &Records) {
    for result in &mut run.results {
        if !matches!(result.outcome, Outcome::Interrupted(_)) {
            continue;
        }
        let Some(job) = result.job.as_ref().and_then(|j| records.job(j.job_id())) else {
            continue;
        };
        match job.state() {
            Some(ExecutionState::Succeeded) => result.outcome = Outcome::Succeeded,
            Some(state) if state.is_terminal() => {
                result.outcome = Outcome::Failed(failure_text(Some(job), state));
            }
            _ => {
                if let Some(last) = job.last_event() {
                    result.outcome =
                        Outcome::Interrupted(format!("interrupted (last step: {})", last.step));
                }
            }
        }
        result.duration = job_duration(job);
        result.job = Some(job.clone());
    }
}
