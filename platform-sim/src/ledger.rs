//! The platform's ledger: what it can tell about each job from the events it received,
//! whatever order they arrived in (re-sends after a reconnect or a restart of the station
//! make later events overtake earlier ones).
//!
//! For each job, from the events kept by event id and ordered by `seq`:
//! - **lost**: sequence numbers below the highest one received that never arrived;
//! - **duplicated**: a sequence number that arrived under two event ids (the same event made
//!   twice, which de-duplication by event id cannot catch). An event id that arrived again
//!   is a harmless **repeat**, counted apart;
//! - **out of order**: events that arrived after an event with a higher `seq`;
//! - **bad transitions**: the first event is not `queued`/`rejected`, a state change the
//!   execution state machine forbids, a step that goes back in the job's plan, anything
//!   after a terminal event. Checked on the `seq` order, so arrival order does not matter;
//!   a pair with a lost event between them is not checked (it is reported as lost).
//!
//! Pure: it reads [`JobRecord`]s.

use std::collections::BTreeMap;
use std::fmt;

use ukey_protocol::{ExecutionState, JobId, Step, StepEvent};

use super::records::{JobRecord, Records};

/// What the ledger says about one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLedger {
    /// The job.
    pub job_id: JobId,
    /// The state of its last event (by `seq`), if any arrived.
    pub state: Option<ExecutionState>,
    /// The error code of a terminal event that carries one.
    pub error_code: Option<String>,
    /// How many unique events arrived.
    pub events: usize,
    /// Sequence numbers missing below the highest one received.
    pub lost: Vec<u64>,
    /// Sequence numbers that arrived under more than one event id.
    pub duplicated: Vec<u64>,
    /// How many arrivals repeated an event id already recorded (harmless re-sends).
    pub repeats: usize,
    /// How many events arrived after one with a higher `seq`.
    pub out_of_order: usize,
    /// Transitions the protocol forbids, described.
    pub bad_transitions: Vec<String>,
}

impl JobLedger {
    /// The ledger of `record`.
    pub fn of(record: &JobRecord) -> JobLedger {
        let events = record.events();
        let mut lost = Vec::new();
        let mut duplicated = Vec::new();
        let mut expected = 1;
        for e in events {
            if e.seq < expected {
                // Same seq as the previous unique event (events are ordered by seq).
                if duplicated.last() != Some(&e.seq) {
                    duplicated.push(e.seq);
                }
                continue;
            }
            lost.extend(expected..e.seq);
            expected = e.seq + 1;
        }
        let mut highest = 0;
        let mut out_of_order = 0;
        for &seq in record.arrivals() {
            if seq < highest {
                out_of_order += 1;
            }
            highest = highest.max(seq);
        }
        let last = events.last();
        JobLedger {
            job_id: record.job_id().clone(),
            state: last.map(|e| e.state),
            error_code: last
                .filter(|e| e.state.is_terminal())
                .and_then(|e| e.error.as_ref())
                .map(|e| e.code.to_string()),
            events: events.len(),
            lost,
            duplicated,
            repeats: record.duplicate_events(),
            out_of_order,
            bad_transitions: transitions(record),
        }
    }

    /// No event lost, none duplicated, every transition allowed. Repeats and arrivals out of
    /// order are allowed: the protocol makes them.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.duplicated.is_empty() && self.bad_transitions.is_empty()
    }
}

impl fmt::Display for JobLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.map_or("no event".to_owned(), |s| s.to_string());
        write!(
            f,
            "job {}: {state}, {} events, lost {:?}, duplicated {:?}, {} repeats, {} out of order",
            self.job_id, self.events, self.lost, self.duplicated, self.repeats, self.out_of_order
        )?;
        if let Some(code) = &self.error_code {
            write!(f, ", error {code}")?;
        }
        for t in &self.bad_transitions {
            write!(f, "; {t}")?;
        }
        Ok(())
    }
}

/// The transitions of `record`'s events (by `seq`) that the protocol forbids.
fn transitions(record: &JobRecord) -> Vec<String> {
    let events = record.events();
    let plan = record.document().map(|d| d.kind.plan(d.rekey));
    // `receive` comes before every planned step.
    let position = |step: Step| -> Option<usize> {
        if step == Step::Receive {
            return Some(0);
        }
        plan?.iter().position(|s| *s == step).map(|p| p + 1)
    };
    let mut out = Vec::new();
    if let Some(first) = events.first()
        && first.seq == 1
        && !first.state.is_initial()
    {
        out.push(format!(
            "first event {} is {}, not queued or rejected",
            first.event_id, first.state
        ));
    }
    for pair in events.windows(2) {
        let [prev, next]: &[StepEvent; 2] = match pair.try_into() {
            Ok(p) => p,
            Err(_) => continue,
        };
        if next.seq != prev.seq + 1 {
            continue;
        }
        if prev.state.is_terminal() {
            out.push(format!(
                "event {} (seq {}) comes after the terminal {} event",
                next.event_id, next.seq, prev.state
            ));
            continue;
        }
        if !prev.state.can_move_to(next.state) {
            out.push(format!(
                "event {} (seq {}) moves the job from {} to {}",
                next.event_id, next.seq, prev.state, next.state
            ));
        }
        if let (Some(a), Some(b)) = (position(prev.step), position(next.step))
            && b < a
        {
            out.push(format!(
                "event {} (seq {}) goes back from step {} to {}",
                next.event_id,
                next.seq,
                prev.step.as_str(),
                next.step.as_str()
            ));
        }
    }
    out
}

/// The ledger of every job the platform knows, and its totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    /// One entry per job, in dispatch order, then the jobs the platform did not dispatch.
    pub jobs: Vec<JobLedger>,
    /// How many jobs the platform dispatched.
    pub dispatched: usize,
}

impl Ledger {
    /// The ledger of `records`.
    pub fn of(records: &Records) -> Ledger {
        let dispatched = records.dispatched();
        let jobs = dispatched
            .iter()
            .filter_map(|id| records.job(id))
            .chain(records.jobs().filter(|j| !dispatched.contains(j.job_id())))
            .map(JobLedger::of)
            .collect();
        Ledger {
            jobs,
            dispatched: dispatched.len(),
        }
    }

    /// Jobs whose last event is `succeeded`.
    pub fn succeeded(&self) -> usize {
        self.in_state(ExecutionState::Succeeded)
    }

    /// Jobs ended otherwise than `succeeded`, by error code (`-` when none).
    pub fn failed(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for j in &self.jobs {
            if let Some(state) = j.state
                && state.is_terminal()
                && state != ExecutionState::Succeeded
            {
                let code = j.error_code.clone().unwrap_or_else(|| "-".to_owned());
                *out.entry(format!("{state} {code}")).or_insert(0) += 1;
            }
        }
        out
    }

    /// Jobs whose last event is in `state`.
    pub fn in_state(&self, state: ExecutionState) -> usize {
        self.jobs.iter().filter(|j| j.state == Some(state)).count()
    }

    /// Events lost, over all jobs.
    pub fn lost(&self) -> usize {
        self.jobs.iter().map(|j| j.lost.len()).sum()
    }

    /// Events duplicated after de-duplication by event id, over all jobs.
    pub fn duplicated(&self) -> usize {
        self.jobs.iter().map(|j| j.duplicated.len()).sum()
    }

    /// Arrivals that repeated an event id, over all jobs.
    pub fn repeats(&self) -> usize {
        self.jobs.iter().map(|j| j.repeats).sum()
    }

    /// Events that arrived out of order, over all jobs.
    pub fn out_of_order(&self) -> usize {
        self.jobs.iter().map(|j| j.out_of_order).sum()
    }

    /// Forbidden transitions, over all jobs.
    pub fn bad_transitions(&self) -> usize {
        self.jobs.iter().map(|j| j.bad_transitions.len()).sum()
    }

    /// Every job clean ([`JobLedger::is_clean`]).
    pub fn is_clean(&self) -> bool {
        self.jobs.iter().all(JobLedger::is_clean)
    }
}

impl fmt::Display for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "jobs dispatched {}, succeeded {}, failed {:?}",
            self.dispatched,
            self.succeeded(),
            self.failed()
        )?;
        writeln!(
            f,
            "events lost {}, duplicated {}, bad transitions {}, repeats {}, out of order {}",
            self.lost(),
            self.duplicated(),
            self.bad_transitions(),
            self.repeats(),
            self.out_of_order()
        )?;
        for j in self.jobs.iter().filter(|j| !j.is_clean()) {
            writeln!(f, "  {j}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
