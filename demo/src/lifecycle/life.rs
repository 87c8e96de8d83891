//! The player of the lifecycle story ([`play`]): one [`Life`] holds the platform, the rack,
//! the keypad and what the phases recorded so far; it plays the phases in order (each one in
//! [`phases`]), prints one line per phase as it ends, and stops the story at the first
//! phase that cannot go on.
//!
//! What it does not do: verify the tokens afterwards or build the summary (see `summary`).

mod phases;

use std::path::Path;
use std::time::Instant;

use secrecy::ExposeSecret;
use ukey_protocol::{ExecutionState, JobKind, KeyLabel, StationId, TokenSerial, TokenState};

use super::super::error::DemoError;
use super::super::interrupt::Interrupt;
use super::super::progress::{Progress, pad};
use super::super::report::ms;
use super::super::station::Station;
use super::keypad::{Keypad, blocking};
use super::summary::{CertState, PhaseReport, Story, StoryToken, TokenPhase};
use super::{PHASE_TIMEOUT, PHASES, Plan};
use hsm_sim::rack::Rack;
use ukey_platform_sim::{JobDraft, JobRecord, Platform};

/// The player of the story.
struct Life<'a> {
    platform: &'a Platform,
    station: &'a StationId,
    rack: &'a Rack,
    keypad: Keypad,
    plan: &'a Plan,
    progress: &'a Progress,
    phases: Vec<PhaseReport>,
    tokens: Vec<StoryToken>,
}

/// A phase that could not be played to its end.
struct Stop(String);

impl From<String> for Stop {
    fn from(s: String) -> Stop {
        Stop(s)
    }
}

impl From<DemoError> for Stop {
    fn from(e: DemoError) -> Stop {
        Stop(e.to_string())
    }
}

impl From<ukey_platform_sim::PlatformError> for Stop {
    fn from(e: ukey_platform_sim::PlatformError) -> Stop {
        Stop(e.to_string())
    }
}

impl From<hsm_sim::Error> for Stop {
    fn from(e: hsm_sim::Error) -> Stop {
        Stop(e.to_string())
    }
}

impl Life<'_> {
    fn line(&self, report: &PhaseReport) {
        let verdict = if report.ok {
            self.progress.green(&report.outcome)
        } else {
            self.progress.red(&report.outcome)
        };
        let mut text = format!(
            "{}  {}  {}  {}",
            pad(report.phase, 7),
            pad(report.job_id.as_deref().unwrap_or("-"), 18),
            pad(report.token_serial.as_deref().unwrap_or("-"), 16),
            verdict
        );
        for d in &report.details {
            text += &format!("\n         {d}");
        }
        for p in &report.problems {
            text += &format!("\n         {}", self.progress.red(p));
        }
        self.progress.note(&text);
    }

    fn finish(&mut self, mut report: PhaseReport, started: Instant) {
        report.ok = report.ok && report.problems.is_empty();
        report.duration_ms = ms(started.elapsed());
        self.line(&report);
        self.phases.push(report);
    }

    fn report(phase: &'static str) -> PhaseReport {
        PhaseReport {
            phase,
            job_id: None,
            token_serial: None,
            outcome: String::new(),
            ok: true,
            company: None,
            keys: None,
            certificates: None,
            user_pin: None,
            wrong_pins: None,
            details: Vec::new(),
            problems: Vec::new(),
            duration_ms: 0,
        }
    }

    async fn run_job(&self, draft: &JobDraft) -> Result<JobRecord, Stop> {
        let job = self.platform.dispatch_draft(draft).await?;
        Ok(self
            .platform
            .wait_for(
                &job,
                |r| r.state().is_some_and(ExecutionState::is_terminal),
                PHASE_TIMEOUT,
            )
            .await?)
    }

    async fn certificates(&self, serial: &TokenSerial) -> Result<Vec<CertState>, Stop> {
        let keypad = self.keypad.clone();
        let serial = serial.clone();
        Ok(blocking(move || keypad.certificates(&serial)).await?)
    }

    /// Waits until the desk's inventory shows `serial` in a state `want` accepts, or gone
    /// (`want(None)`).
    async fn inventory(
        &self,
        serial: &TokenSerial,
        what: &str,
        want: impl Fn(Option<TokenState>) -> bool,
    ) -> Result<Option<ukey_protocol::TokenInfo>, Stop> {
        let station = self.station.clone();
        Ok(self
            .platform
            .wait_until(what, PHASE_TIMEOUT, |r| {
                let inventory = r.current_inventory(&station)?;
                let info = inventory
                    .slots
                    .iter()
                    .filter_map(|s| s.token.as_ref())
                    .find(|t| t.serial.as_ref() == Some(serial))
                    .cloned();
                want(info.as_ref().map(|t| t.state)).then_some(info)
            })
            .await?)
    }

    /// Pulls the token out of `slot` and waits until the desk has seen it leave.
    async fn pull(&self, slot: usize, serial: &TokenSerial) -> Result<(), Stop> {
        self.rack.remove(slot)?;
        self.inventory(serial, "the token to leave the inventory", |s| s.is_none())
            .await?;
        Ok(())
    }

    fn token_mut(&mut self, serial: &TokenSerial) -> Option<&mut StoryToken> {
        self.tokens.iter_mut().find(|t| &t.serial == serial)
    }

    /// Records the token after `phase` and returns the certificates before it.
    async fn snapshot(
        &mut self,
        serial: &TokenSerial,
        phase: &'static str,
        job: Option<&JobRecord>,
    ) -> Result<(Vec<CertState>, Vec<CertState>), Stop> {
        let certs = self.certificates(serial).await?;
        let pin = self.platform.user_pin(serial);
        let issued: Option<Vec<(KeyLabel, Vec<u8>)>> = job.and_then(|j| j.issued()).map(|c| {
            c.iter()
                .map(|c| (c.label, c.certificate.as_bytes().to_vec()))
                .collect()
        });
        let token = self
            .token_mut(serial)
            .ok_or_else(|| Stop(format!("token {serial} is not in the story")))?;
        let before = token.certificates().to_vec();
        token.phases.push(TokenPhase {
            phase,
            job_id: job.map(|j| j.job_id().to_string()),
            user_pin: pin.as_ref().map(|p| p.expose_secret().to_owned()),
            certificates: certs.clone(),
        });
        token.user_pin = pin;
        if let Some(issued) = issued {
            token.issued = issued;
        }
        Ok((before, certs))
    }

    fn pin_of(&self, serial: &TokenSerial) -> Option<String> {
        self.tokens
            .iter()
            .find(|t| &t.serial == serial)
            .and_then(|t| t.user_pin.as_ref())
            .map(|p| p.expose_secret().to_owned())
    }

    /// Plays the story; a phase that cannot continue stops it.
    async fn play(&mut self) -> Option<String> {
        // new
        let started = Instant::now();
        let mut report = Self::report("new");
        let made = self.new_token(&mut report).await;
        let (made, serial) = match made {
            Ok(m) => {
                self.finish(report, started);
                m
            }
            Err(Stop(why)) => return self.stopped(report, started, why),
        };

        // renew: the same order, the same keys.
        let started = Instant::now();
        let mut report = Self::report("renew");
        let draft = match JobDraft::new(JobKind::Renew, self.station) {
            Ok(d) => d
                .with_algorithm(self.plan.algorithm)
                .with_order(made.order.clone())
                .with_target(serial.clone()),
            Err(e) => return self.stopped(report, started, e.to_string()),
        };
        if let Err(Stop(why)) = self.reissue(&mut report, &draft, &serial, "renew").await {
            return self.stopped(report, started, why);
        }
        self.finish(report, started);

        // change: a new company name, keys kept.
        let started = Instant::now();
        let mut report = Self::report("change");
        let renamed = match made.order.renamed() {
            Ok(o) => o,
            Err(e) => return self.stopped(report, started, e.to_string()),
        };
        let draft = match JobDraft::new(JobKind::Change, self.station) {
            Ok(d) => d
                .with_algorithm(self.plan.algorithm)
                .with_order(renamed.clone())
                .with_target(serial.clone()),
            Err(e) => return self.stopped(report, started, e.to_string()),
        };
        report.details.push(format!(
            "company renamed: {} → {}",
            made.order.enterprise.name, renamed.enterprise.name
        ));
        if let Err(Stop(why)) = self.reissue(&mut report, &draft, &serial, "change").await {
            return self.stopped(report, started, why);
        }
        self.finish(report, started);

        // lock
        let started = Instant::now();
        let mut report = Self::report("lock");
        if let Err(Stop(why)) = self.lock(&mut report, &serial).await {
            return self.stopped(report, started, why);
        }
        self.finish(report, started);

        // unlock
        let started = Instant::now();
        let mut report = Self::report("unlock");
        let draft = match JobDraft::new(JobKind::Unlock, self.station) {
            Ok(d) => d
                .with_algorithm(self.plan.algorithm)
                .with_order(renamed.clone())
                .with_target(serial.clone()),
            Err(e) => return self.stopped(report, started, e.to_string()),
        };
        if let Err(Stop(why)) = self.unlock(&mut report, &draft, &serial).await {
            return self.stopped(report, started, why);
        }
        self.finish(report, started);

        // replace
        let started = Instant::now();
        let mut report = Self::report("replace");
        if let Err(Stop(why)) = self.replace(&mut report, &renamed, &serial).await {
            return self.stopped(report, started, why);
        }
        self.finish(report, started);
        None
    }

    fn stopped(
        &mut self,
        mut report: PhaseReport,
        started: Instant,
        why: String,
    ) -> Option<String> {
        report.ok = false;
        if report.outcome.is_empty() {
            report.outcome = "stopped".to_owned();
        }
        report.problems.push(why.clone());
        let phase = report.phase;
        self.finish(report, started);
        Some(format!("{phase}: {why}"))
    }
}

/// Plays the whole story with the agent running; the agent is stopped on return. An
/// interruption cuts the phase in play at its current wait (a PKCS#11 call under way ends
/// on its own) and records it as stopped.
pub(crate) async fn play(
    station: &mut Station,
    rack: &Rack,
    module: &Path,
    plan: &Plan,
    progress: &Progress,
    interrupt: &Interrupt,
) -> Result<(Story, Option<String>), DemoError> {
    let keypad = Keypad::open(module)?;
    let started = Instant::now();
    let mut life = Life {
        platform: &station.platform,
        station: &station.station,
        rack,
        keypad,
        plan,
        progress,
        phases: Vec::new(),
        tokens: Vec::new(),
    };
    let played = tokio::select! {
        aborted = life.play() => Some(aborted),
        () = interrupt.cancelled() => None,
    };
    let aborted = match (played, interrupt.signal()) {
        (Some(aborted), _) => aborted,
        (None, signal) => {
            let signal = signal.map(|s| s.name()).unwrap_or("a signal");
            let phase = PHASES.get(life.phases.len()).copied().unwrap_or("replace");
            progress.finish();
            life.stopped(
                Life::report(phase),
                Instant::now(),
                format!("interrupted by {signal}"),
            );
            if let Some(signal) = interrupt.signal() {
                progress.note(&progress.yellow(&signal.stopping()));
            }
            Some(format!("interrupted by {signal} during {phase}"))
        }
    };
    let story = Story {
        phases: life.phases,
        tokens: life.tokens,
        aborted,
        took: started.elapsed(),
    };
    let agent_error = station.stop_agent().await;
    Ok((story, agent_error))
}
