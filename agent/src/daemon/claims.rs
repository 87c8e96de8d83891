//! Claiming: queued jobs matched to free tokens (a blank one, or the token a targeted job
//! names), PINs chosen for the claim, tokens released at a job's end, and jobs resumed when
//! their token is back. Also tells a wrong token plugged in for a waiting targeted job.
//!
//! What this module does not do: read tokens (`seats`) or run steps (`runner`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use ukey_protocol::event::Step;
use ukey_protocol::ids::{JobId, TokenSerial};
use ukey_protocol::inventory::TokenState;

use crate::desk::TokenKey;
use crate::job::{Input, JobState};
use crate::steps::{self, Pins};

use super::job_data::advance;
use super::jobs::Waiting;
use super::seats::Seat;
use super::{Daemon, DaemonError};

/// The jobs as the desk's lights and alerts see them (see `Daemon::desk_view`).
pub(super) struct DeskView<'a> {
    /// The oldest queued job that names a token, and that token.
    pub(super) first_waiting: Option<(&'a JobId, &'a TokenSerial)>,
    /// Every token a queued job names (trimmed serials).
    pub(super) targets: BTreeSet<&'a str>,
    /// Finished tokens whose job waits for the platform's acknowledgement (trimmed serials).
    pub(super) unconfirmed: BTreeSet<&'a str>,
}

/// What the claim matcher decided for one queued job (see [`match_claims`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Match {
    /// The job takes this token now.
    Claim(JobId, TokenKey),
    /// The job is no longer in the job table: it leaves the queue.
    Stale(JobId),
}

/// Which queued jobs take which free tokens now (pure), in queue order. Blank tokens take the
/// oldest queued untargeted jobs (`new`, `replace`), in seat order; a targeted job (`renew`,
/// `change`, `unlock`) takes only the token whose serial it names, once that is seated, free,
/// readable, initialized and not revoked. A job waiting for its token does not hold up the
/// jobs behind it. `live` says which jobs are still in the job table.
pub(super) fn match_claims(
    queue: &VecDeque<Waiting>,
    seats: &BTreeMap<TokenKey, Seat>,
    revoked: &BTreeSet<String>,
    live: impl Fn(&JobId) -> bool,
) -> Vec<Match> {
    let is_revoked = |serial: &str| revoked.contains(serial.trim());
    // What an untargeted job can claim, in seat order: free blank tokens not revoked.
    // Collected once, so a long queue costs a pass without allocations when none is free.
    let mut blanks: VecDeque<&TokenKey> = seats
        .iter()
        .filter(|(k, s)| {
            s.job.is_none()
                && s.state == TokenState::Blank
                && s.present.is_blank()
                && !k.serial().is_some_and(is_revoked)
        })
        .map(|(k, _)| k)
        .collect();
    // A targeted job can only take a free, readable, initialized token. With neither that
    // nor a blank one seated (the usual case: every seat busy), no queued job can claim,
    // and a long queue costs nothing on each turn of the loop.
    if blanks.is_empty()
        && !seats
            .values()
            .any(|s| s.job.is_none() && s.state != TokenState::Damaged && !s.present.is_blank())
    {
        return Vec::new();
    }
    let mut matches = Vec::new();
    // Targeted tokens given in this pass (two jobs may name the same token).
    let mut taken: BTreeSet<&TokenKey> = BTreeSet::new();
    for waiting in queue {
        if !live(&waiting.job) {
            matches.push(Match::Stale(waiting.job.clone()));
            continue;
        }
        let free = match &waiting.target {
            Some(target) => {
                let key = TokenKey::Serial(target.to_string());
                seats
                    .get_key_value(&key)
                    .filter(|(k, s)| {
                        s.job.is_none()
                            && s.state != TokenState::Damaged
                            && !s.present.is_blank()
                            && !is_revoked(target.as_str())
                            && !taken.contains(k)
                    })
                    .map(|(k, _)| k)
            }
            None => blanks.pop_front(),
        };
        if let Some(key) = free {
            taken.insert(key);
            matches.push(Match::Claim(waiting.job.clone(), key.clone()));
        }
    }
    matches
}

/// The PIN length bounds for a claimed token (pure): what the token reports (`max` 0 says
/// nothing), narrowed by its model's configured PIN policy where USB told the model.
pub(super) fn pin_bounds(
    min: usize,
    max: usize,
    model: Option<&crate::config::ModelConfig>,
) -> (usize, usize) {
    let Some(model) = model else {
        return (min, max);
    };
    let max = if max == 0 {
        model.pin_max
    } else {
        max.min(model.pin_max)
    };
    (min.max(model.pin_min), max)
}

/// When `seat` holds an initialized token that no job works on while a targeted job waits
/// for another serial, the staff probably plugged in the wrong Ukey (pure): the job and the
/// serial it waits for. The token is never touched for it.
pub(super) fn wrong_token(seat: &Seat, view: &DeskView<'_>) -> Option<(JobId, TokenSerial)> {
    // A token this agent just finished (or failed) shows that outcome instead.
    let serial = seat.present.serial.trim();
    if seat.job.is_some()
        || seat.outcome.is_some()
        || seat.present.is_blank()
        || serial.is_empty()
        || view.unconfirmed.contains(serial)
    {
        return None;
    }
    let (job, target) = view.first_waiting?;
    if view.targets.contains(serial) {
        return None;
    }
    Some((job.clone(), target.clone()))
}

impl Daemon {
    /// [`wrong_token`] with the job table and queue as they are now.
    pub(super) fn wrong_token_now(&self, seat: &Seat) -> Option<(JobId, TokenSerial)> {
        wrong_token(seat, &self.desk_view())
    }

    /// What [`wrong_token`] and the lights need to know of the jobs, gathered once for
    /// all seats (the queue and the job table may be long; the seats are up to a rack's).
    pub(super) fn desk_view(&self) -> DeskView<'_> {
        let mut waiting = self
            .queue
            .iter()
            .filter_map(|w| Some((&w.job, w.target.as_ref()?)));
        let first_waiting = waiting.next();
        let mut targets: BTreeSet<&str> = waiting.map(|(_, t)| t.as_str().trim()).collect();
        if let Some((_, t)) = first_waiting {
            targets.insert(t.as_str().trim());
        }
        let unconfirmed = self
            .jobs
            .values()
            .filter(|e| e.machine.unconfirmed().is_some())
            .filter_map(|e| e.machine.serial())
            .map(|s| s.as_str().trim())
            .collect();
        DeskView {
            first_waiting,
            targets,
            unconfirmed,
        }
    }

    /// Jobs whose token is present again: a parked job resumes; a job whose step was running
    /// when the agent stopped runs it again. A job whose step was running when the agent
    /// stopped and whose token is away now parks (and fails if the token stays away).
    pub(super) async fn resume_jobs_on_present_tokens(&mut self) -> Result<(), DaemonError> {
        let away: Vec<(JobId, Step)> = self
            .jobs
            .iter()
            .filter(|(_, e)| !e.running)
            .filter(|(_, e)| e.token.as_ref().is_none_or(|k| !self.seats.contains_key(k)))
            .filter_map(|(id, e)| match e.machine.state() {
                JobState::Running { index, .. } => {
                    e.machine.plan().get(*index).map(|step| (id.clone(), *step))
                }
                _ => None,
            })
            .collect();
        for (job_id, step) in away {
            self.execute(&job_id, step);
        }
        let candidates: Vec<(JobId, TokenKey)> = self
            .jobs
            .iter()
            .filter(|(_, e)| !e.running && e.machine.holds_token())
            .filter_map(|(id, e)| e.token.clone().map(|k| (id.clone(), k)))
            // A token that cannot be read is not back for its job (opening it would fail).
            .filter(|(_, k)| {
                self.seats
                    .get(k)
                    .is_some_and(|s| !s.reading.is_unreadable())
            })
            .collect();
        for (job_id, key) in candidates {
            let needs_worker = self
                .seats
                .get(&key)
                .is_some_and(|s| s.sessions.worker().is_none());
            let Some(entry) = self.jobs.get(&job_id) else {
                continue;
            };
            let state = entry.machine.state().clone();
            if let Some(seat) = self.seats.get_mut(&key) {
                seat.job = Some(job_id.clone());
                seat.state = TokenState::InProduction;
            }
            match state {
                JobState::Parked { .. } | JobState::Running { .. } if needs_worker => {
                    self.start_worker(key);
                }
                JobState::Parked { .. } => self.feed(&job_id, Input::TokenReturned).await?,
                JobState::Running { .. } => self.execute_current(&job_id),
                _ => {}
            }
        }
        Ok(())
    }

    /// A job given to `key` whose claim could not start (the token could not be opened or is
    /// gone) goes back to the front of the queue, and the token is free again.
    pub(super) fn requeue_unclaimed(&mut self, key: &TokenKey) {
        let job_id = self
            .jobs
            .iter()
            .find(|(_, e)| {
                e.token.as_ref() == Some(key) && matches!(e.machine.state(), JobState::Queued)
            })
            .map(|(id, _)| id.clone());
        let Some(job_id) = job_id else { return };
        if let Some(entry) = self.jobs.get_mut(&job_id) {
            entry.token = None;
            if !self.queue.iter().any(|w| w.job == job_id) {
                self.queue.push_front(Waiting::of(&job_id, entry));
            }
        }
        if let Some(seat) = self.seats.get_mut(key)
            && seat.job.as_ref() == Some(&job_id)
        {
            seat.job = None;
        }
        tracing::info!(job = %job_id, token = %key, "claim not started; the job waits for a token again");
    }

    /// Starts every claim [`match_claims`] finds now.
    pub(super) async fn try_claim_all(&mut self) -> Result<(), DaemonError> {
        if !self.claiming || self.queue.is_empty() || !self.staffed() {
            return Ok(());
        }
        let jobs = &self.jobs;
        let matches = match_claims(&self.queue, &self.seats, &self.revoked, |id| {
            jobs.contains_key(id)
        });
        for m in matches {
            match m {
                Match::Claim(job_id, key) => {
                    self.queue.retain(|w| w.job != job_id);
                    self.claim(job_id, key)?;
                }
                // Ended while queued (every end removes it; this is a safety net).
                Match::Stale(job_id) => self.queue.retain(|w| w.job != job_id),
            }
        }
        Ok(())
    }

    /// Gives `key`'s token to `job_id`: PINs for jobs that set them (journaled with the
    /// claim, before any token write that uses them); then the token's worker starts.
    pub(super) fn claim(&mut self, job_id: JobId, key: TokenKey) -> Result<(), DaemonError> {
        let Some(entry) = self.jobs.get(&job_id) else {
            return Ok(());
        };
        let sets_pins = entry.machine.plan().contains(&Step::Initialize);
        let doc = Arc::clone(&entry.doc);
        let mut chosen = None;
        if sets_pins {
            let (min, max) = self
                .seats
                .get(&key)
                .map(|s| (s.present.min_pin_len, s.present.max_pin_len))
                .unwrap_or((6, 16));
            // The model's PIN policy (from the configuration), where USB told us the model.
            let model = self.model_of(&key);
            let (min, max) = pin_bounds(min, max, model);
            let mut pins = Pins::generate(min, max)?;
            if doc.so_pin.is_some() {
                // Re-keying a named token: C_InitToken needs its current SO PIN, which stays.
                // One that does not open fails the `initialize` step, which reads it again.
                if let Ok(so) = steps::job_so_pin(&doc, &self.trust.station_key) {
                    pins.so = so;
                }
            }
            chosen = Some(Arc::new(pins));
        }
        if let Some(entry) = self.jobs.get_mut(&job_id) {
            // The PINs are journaled with the claim (`on_worker`), before any token write
            // uses them.
            // A refusal (a flaw: only a queued job is claimed) leaves the data as it was;
            // the first step that needs the PINs then fails, naming the phase.
            if let Err(e) = advance(&mut entry.data, |d| d.claim(chosen)) {
                tracing::warn!(job = %job_id, error = %e, "PINs not kept");
            }
            entry.token = Some(key.clone());
        }
        if let Some(seat) = self.seats.get_mut(&key) {
            seat.job = Some(job_id.clone());
            seat.state = TokenState::InProduction;
        }
        tracing::info!(job = %job_id, kind = %doc.kind, token = %key, "token claims job");
        self.start_worker(key);
        Ok(())
    }

    /// A token just named lost by a `replace` job: if it is at the desk and idle, it is
    /// classified again (and shows as revoked).
    pub(super) fn mark_revoked(&mut self, serial: &str) {
        let key = TokenKey::Serial(serial.to_owned());
        if self.seats.get(&key).is_some_and(|s| s.job.is_none()) {
            self.observe(key);
        }
    }

    pub(super) fn release(&mut self, job_id: &JobId) {
        let key = self.jobs.get(job_id).and_then(|e| e.token.clone());
        if let Some(key) = key
            && let Some(seat) = self.seats.get_mut(&key)
        {
            seat.job = None;
            seat.sessions = std::mem::take(&mut seat.sessions).worker_closed();
            // What the slot shows now (done) is new to the operator.
            seat.acknowledged = false;
            self.observe(key);
        }
    }
}

#[cfg(test)]
mod tests;
