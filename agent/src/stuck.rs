//! Stuck token calls: which tokens have a call running past `timeouts.wedged_call_secs`, and
//! what the desk says about them.
//!
//! A PKCS#11 call into a hung module or a wedged USB device may never return. The daemon
//! hands [`StuckCalls::update`] the calls its token workers are running (when each started,
//! from [`crate::worker::TokenWorker::call_started`]) on a periodic tick; this module keeps
//! those past the limit, logs one warning when a call becomes stuck and one info line when it
//! ends (it returned, another call took its place, or its token went away), and turns them
//! into `token-call-stuck` desk alerts for the inventory.
//!
//! The alert says "for over N s" with N the limit doubled as often as it fits in the time run
//! so far (120, 240, 480 … s): the retained inventory is published again a few times over a
//! long hang, not on every tick.
//!
//! What it does not do: interrupt the call (nothing can, short of pulling the token), fail
//! the job (its step may still finish), or read the clock itself (callers pass the time, so
//! tests need no sleeps).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use ukey_protocol::codes;
use ukey_protocol::event::Step;
use ukey_protocol::ids::JobId;
use ukey_protocol::inventory::DeskAlert;

use crate::desk::TokenKey;
use crate::job::code;

/// A call running on a token's worker now, as the daemon sees it.
#[derive(Debug, Clone)]
pub struct RunningCall {
    /// The token.
    pub key: TokenKey,
    /// When the call started (its identity: a new call has a new start).
    pub started: Instant,
    /// The token's slot as the inventory numbers it.
    pub slot: u32,
    /// The job whose step made the call, if any.
    pub job: Option<JobId>,
    /// That step.
    pub step: Option<Step>,
}

/// A call that has run past the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckCall {
    started: Instant,
    started_at: OffsetDateTime,
    over_secs: u64,
    slot: u32,
    job: Option<JobId>,
    step: Option<Step>,
}

impl StuckCall {
    /// How long it has run at `now`.
    pub fn running_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// The step it belongs to, if known.
    pub fn step(&self) -> Option<Step> {
        self.step
    }
}

/// The stuck calls of the desk's tokens.
#[derive(Debug)]
pub struct StuckCalls {
    limit: Duration,
    calls: BTreeMap<TokenKey, StuckCall>,
}

/// `limit` (whole seconds, at least 1) doubled as often as it stays within `running`.
fn over_secs(running: Duration, limit: Duration) -> u64 {
    let running = running.as_secs();
    let mut over = limit.as_secs().max(1);
    while over.saturating_mul(2) <= running {
        over = over.saturating_mul(2);
    }
    over
}

fn or_dash<T: ToString>(v: Option<&T>) -> String {
    v.map_or_else(|| "-".to_owned(), ToString::to_string)
}

impl StuckCalls {
    /// No stuck calls yet; a call is stuck once it has run for `limit`.
    pub fn new(limit: Duration) -> StuckCalls {
        StuckCalls {
            limit: limit.max(Duration::from_secs(1)),
            calls: BTreeMap::new(),
        }
    }

    /// How often [`StuckCalls::update`] should run: often enough that a stuck call is seen
    /// within half the limit, never more often than every 250 ms nor less than every 2 s.
    pub fn check_every(&self) -> Duration {
        (self.limit / 2).clamp(Duration::from_millis(250), Duration::from_secs(2))
    }

    /// The stuck call of `key`, if it has one.
    pub fn get(&self, key: &TokenKey) -> Option<&StuckCall> {
        self.calls.get(key)
    }

    /// Whether no call is stuck.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Takes the calls running at `now` (`now_utc` is the same moment on the wall clock), logs
    /// stuck calls that begin and end, and returns whether the alerts changed.
    pub fn update(
        &mut self,
        now: Instant,
        now_utc: OffsetDateTime,
        running: impl IntoIterator<Item = RunningCall>,
    ) -> bool {
        let mut stuck = BTreeMap::new();
        for call in running {
            let ran = now.saturating_duration_since(call.started);
            if ran < self.limit {
                continue;
            }
            let started_at = match self.calls.get(&call.key) {
                Some(known) if known.started == call.started => known.started_at,
                _ => now_utc - ran,
            };
            let entry = StuckCall {
                started: call.started,
                started_at,
                over_secs: over_secs(ran, self.limit),
                slot: call.slot,
                job: call.job,
                step: call.step,
            };
            if self
                .calls
                .get(&call.key)
                .is_none_or(|known| known.started != entry.started)
            {
                tracing::warn!(
                    token = %call.key,
                    slot = entry.slot,
                    job = %or_dash(entry.job.as_ref()),
                    step = %or_dash(entry.step.as_ref()),
                    secs = ran.as_secs(),
                    limit_secs = self.limit.as_secs(),
                    "a call on the token has not returned within the limit: the token or its module may be hung"
                );
            }
            stuck.insert(call.key, entry);
        }
        for (key, gone) in &self.calls {
            if stuck
                .get(key)
                .is_none_or(|now_stuck| now_stuck.started != gone.started)
            {
                tracing::info!(
                    token = %key,
                    slot = gone.slot,
                    job = %or_dash(gone.job.as_ref()),
                    step = %or_dash(gone.step.as_ref()),
                    secs = gone.running_for(now).as_secs(),
                    "the stuck call on the token has ended"
                );
            }
        }
        let changed = stuck != self.calls;
        self.calls = stuck;
        changed
    }

    /// One `token-call-stuck` alert per stuck call.
    pub fn alerts(&self) -> Vec<DeskAlert> {
        self.calls
            .iter()
            .map(|(key, call)| DeskAlert {
                code: code(codes::TOKEN_CALL_STUCK),
                port: None,
                message: ukey_protocol::fit_text(
                    &format!(
                        "token {key} (slot {}): a call on the token in step {} of job {} has not returned for over {} s (since {} UTC); the token or its PKCS#11 module may be hung. The job is not failed for it and goes on if the call returns; check the token and its USB connection",
                        call.slot,
                        or_dash(call.step.as_ref()),
                        or_dash(call.job.as_ref()),
                        call.over_secs,
                        call.started_at
                            .replace_nanosecond(0)
                            .unwrap_or(call.started_at)
                            .format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_else(|_| "?".into()),
                    ),
                    512,
                ),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn call(serial: &str, started: Instant) -> RunningCall {
        RunningCall {
            key: TokenKey::Serial(serial.into()),
            started,
            slot: 2,
            job: Some(JobId::new("J-1").unwrap()),
            step: Some(Step::GenerateKeys),
        }
    }

    #[test]
    fn the_limit_doubles_in_the_message() {
        let limit = Duration::from_secs(120);
        assert_eq!(over_secs(Duration::from_secs(120), limit), 120);
        assert_eq!(over_secs(Duration::from_secs(239), limit), 120);
        assert_eq!(over_secs(Duration::from_secs(240), limit), 240);
        assert_eq!(over_secs(Duration::from_secs(1000), limit), 960);
        assert_eq!(over_secs(Duration::from_millis(1500), Duration::ZERO), 1);
    }

    #[test]
    fn checks_run_within_half_the_limit() {
        let every = |s| StuckCalls::new(Duration::from_secs(s)).check_every();
        assert_eq!(every(1), Duration::from_millis(500));
        assert_eq!(every(120), Duration::from_secs(2));
        assert_eq!(
            StuckCalls::new(Duration::ZERO).check_every(),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn a_call_past_the_limit_raises_an_alert_until_it_ends() {
        let t0 = Instant::now();
        let utc = OffsetDateTime::now_utc();
        let limit = Duration::from_secs(10);
        let mut calls = StuckCalls::new(limit);
        let at = |s: u64| (t0 + Duration::from_secs(s), utc + Duration::from_secs(s));

        // Under the limit: nothing.
        let (now, now_utc) = at(9);
        assert!(!calls.update(now, now_utc, [call("SIM01", t0)]));
        assert!(calls.alerts().is_empty());

        // Past it: one alert naming the token, slot, job, step and how long.
        let (now, now_utc) = at(12);
        assert!(calls.update(now, now_utc, [call("SIM01", t0), call("SIM02", now)]));
        let alerts = calls.alerts();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let a = &alerts[0];
        assert_eq!(a.code.as_str(), "token-call-stuck");
        for needle in ["SIM01", "slot 2", "generate-keys", "J-1", "over 10 s"] {
            assert!(a.message.contains(needle), "{needle}: {}", a.message);
        }
        assert!(a.message.len() <= 512);
        let key = TokenKey::Serial("SIM01".into());
        assert_eq!(calls.get(&key).unwrap().step(), Some(Step::GenerateKeys));
        assert_eq!(
            calls.get(&key).unwrap().running_for(now),
            Duration::from_secs(12)
        );

        // The same call a little later: same alert, nothing to publish.
        let (now, now_utc) = at(15);
        assert!(!calls.update(now, now_utc, [call("SIM01", t0)]));
        assert_eq!(calls.alerts(), alerts);

        // Twice the limit: the message says so.
        let (now, now_utc) = at(21);
        assert!(calls.update(now, now_utc, [call("SIM01", t0)]));
        assert!(calls.alerts()[0].message.contains("over 20 s"));

        // A new call on the token (the stuck one returned): the alert goes.
        let (now, now_utc) = at(22);
        assert!(calls.update(now, now_utc, [call("SIM01", now)]));
        assert!(calls.is_empty());
        assert!(calls.alerts().is_empty());
    }

    #[test]
    fn an_idle_or_vanished_token_clears_its_alert() {
        let t0 = Instant::now();
        let utc = OffsetDateTime::now_utc();
        let mut calls = StuckCalls::new(Duration::from_secs(1));
        let later = t0 + Duration::from_secs(5);
        assert!(calls.update(later, utc, [call("A", t0), call("B", t0)]));
        assert_eq!(calls.alerts().len(), 2);
        assert!(calls.update(later, utc, [call("B", t0)]));
        assert_eq!(calls.alerts().len(), 1);
        assert!(calls.update(later, utc, []));
        assert!(calls.is_empty());
        assert!(!calls.update(later, utc, []));
    }
}
