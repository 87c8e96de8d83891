//! Reports of the desk's state: the retained inventory (tokens and alerts), the panel's
//! lights and buttons, the status snapshot, and the check for stuck token calls.
//!
//! What this module does not do: change a job or a token (a retry press only asks the desk
//! to read a token again).

use std::collections::BTreeSet;
use std::time::Duration;

use ukey_protocol::event::ExecutionState;
use ukey_protocol::inventory::TokenState;

use crate::job::JobState;
use crate::panel::{ButtonAction, ButtonPress, Light};
use crate::status::{RunningJob, Snapshot, TokenLine};
use crate::stuck::RunningCall;

use super::claims::wrong_token;
use super::{Daemon, now_utc};

pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Daemon {
    pub(super) fn update_lights(&mut self) {
        let mut lit = BTreeSet::new();
        let view = self.desk_view();
        let rack = self.rack_view();
        // A desk that requires an operator and has none: the blank tokens waiting for a job
        // call for someone (`attention`) instead of sitting dark.
        let unstaffed = !self.staffed();
        for (key, seat) in &self.seats {
            let Some(slot) = rack.panel(key, seat) else {
                continue;
            };
            // A finished token whose job waits for the platform's acknowledgement: its job is
            // still in progress, but the token's part is over.
            let outcome = if view.unconfirmed.contains(seat.present.serial.trim()) {
                Some(ExecutionState::InProgress)
            } else {
                seat.outcome
            };
            let light = if self.stuck_calls.get(key).is_some()
                || (wrong_token(seat, &view).is_some() && !seat.acknowledged)
            {
                // A stuck call needs the staff whatever was acknowledged: it is happening now.
                Light::Attention
            } else if unstaffed && seat.job.is_none() && seat.state == TokenState::Blank {
                Light::Attention
            } else {
                crate::desk::light(seat.state, seat.job.is_some(), outcome, seat.acknowledged)
            };
            let _ = self.panel.set(slot, light);
            lit.insert(slot);
        }
        drop(view);
        for gone in self.lit.difference(&lit) {
            let _ = self.panel.set(*gone, Light::Off);
        }
        self.lit = lit;
    }

    /// Acknowledge clears a slot's done/failed/attention light; retry reads the token again
    /// (a token whose job failed may be taken by a new job once the platform sends one).
    pub(super) fn on_press(&mut self, press: ButtonPress) {
        let slot = usize::from(press.slot);
        let rack = self.rack_view();
        let key = self
            .seats
            .iter()
            .find(|(k, s)| rack.panel(k, s) == Some(slot))
            .map(|(k, _)| k.clone());
        let Some(key) = key else {
            tracing::info!(slot, "button pressed on an empty slot");
            return;
        };
        tracing::info!(slot, token = %key, action = ?press.action, "panel button");
        match press.action {
            ButtonAction::Ack => {
                if let Some(seat) = self.seats.get_mut(&key) {
                    seat.acknowledged = true;
                }
            }
            ButtonAction::Retry => {
                if let Some(seat) = self.seats.get_mut(&key) {
                    seat.outcome = None;
                    seat.acknowledged = false;
                }
                self.observe(key);
            }
        }
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        let broker = match &*self.link.state().borrow() {
            crate::link::LinkState::Connected { .. } => "connected".to_owned(),
            crate::link::LinkState::Connecting => "connecting".to_owned(),
            crate::link::LinkState::Down { last_error, .. } => format!("down: {last_error}"),
            crate::link::LinkState::Stopped => "stopped".to_owned(),
        };
        let panel = self.panel.status();
        let panel = match (&panel.device, panel.connected, &panel.board) {
            (None, _, _) => "none".to_owned(),
            (Some(_), true, Some(board)) => format!(
                "connected ({}, {} slots, firmware {})",
                board.model, board.slots, board.firmware
            ),
            (Some(device), _, _) => format!(
                "disconnected ({}){}",
                device.display(),
                panel
                    .last_error
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        };
        let mut tokens: Vec<TokenLine> = self
            .seats
            .iter()
            .map(|(key, seat)| TokenLine {
                token: key.to_string(),
                slot: seat.present.slot,
                state: match (&seat.damage, seat.state) {
                    (Some(d), TokenState::Damaged) => format!(
                        "damaged ({})",
                        match (&d.function, &d.return_code) {
                            (Some(f), Some(c)) => format!("{f}: {c}"),
                            _ => d.message.clone(),
                        }
                    ),
                    (_, state) => match self.stuck_calls.get(key) {
                        Some(call) => format!(
                            "{} (a call has not returned for {} s)",
                            state.as_str(),
                            call.running_for(std::time::Instant::now()).as_secs()
                        ),
                        None => state.as_str().to_owned(),
                    },
                },
                job_id: seat.job.as_ref().map(ToString::to_string),
            })
            .collect();
        for (_, problem) in self.usb_problems.values() {
            tokens.push(TokenLine {
                token: problem.clone(),
                slot: u64::MAX,
                state: "not-accessible".into(),
                job_id: None,
            });
        }
        Snapshot {
            at_unix: crate::status::unix_now(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            station_id: self.station.to_string(),
            broker,
            outbox_depth: self.link.outbox_depth(),
            outbox_oldest_secs: self.link.outbox_oldest_age().map(|d| d.as_secs()),
            queued_jobs: self.queue.iter().map(|w| w.job.to_string()).collect(),
            running_jobs: self
                .jobs
                .iter()
                .filter(|(_, e)| e.machine.holds_token() || e.machine.unconfirmed().is_some())
                .map(|(id, e)| RunningJob {
                    job_id: id.to_string(),
                    kind: e.doc.kind.to_string(),
                    token: e.machine.serial().map(ToString::to_string),
                    doing: match e.machine.state() {
                        JobState::AwaitingCertificates { .. } => "waiting for certificates".into(),
                        JobState::Parked { .. } => "parked: token pulled out".into(),
                        JobState::AwaitingFinalAck { overdue: false, .. } => {
                            "token finished; waiting for the platform's acknowledgement".into()
                        }
                        JobState::AwaitingFinalAck { overdue: true, .. } => {
                            "token finished; the platform's acknowledgement is overdue".into()
                        }
                        _ => {
                            let step = e
                                .machine
                                .current_step()
                                .map(|s| s.as_str().to_owned())
                                .unwrap_or_default();
                            match e.token.as_ref().and_then(|k| self.stuck_calls.get(k)) {
                                Some(call) => format!(
                                    "{step}: STUCK, a token call has not returned for {} s",
                                    call.running_for(std::time::Instant::now()).as_secs()
                                ),
                                None => step,
                            }
                        }
                    },
                })
                .collect(),
            tokens,
            panel,
            cpu_us: micros(crate::token::meter::process_cpu()),
            module_cpu_us: micros(crate::token::meter::module_cpu()),
            module_calls: crate::token::meter::module_calls(),
            rejected_jobs: self.rejections.rejected(),
            rejections_suppressed: self.rejections.suppressed(),
            refused_platform_messages: self.refusals.total(),
            running: true,
            operator: self.audit.operator(),
            claims_paused: self.claims_paused(),
            audit: {
                let health = self.audit.health();
                match (health.lost, health.last_error) {
                    (0, _) => format!("ok, {} entries written", health.written),
                    (lost, error) => format!(
                        "FAILED: {lost} entries not written (last error: {}), {} written",
                        error.unwrap_or_default(),
                        health.written
                    ),
                }
            },
            receipts_made: self.receipts.made(),
        }
    }

    /// Writes the status snapshot off the runtime's threads.
    pub(super) fn write_status(&self) {
        let snapshot = self.snapshot();
        let dir = self.config.state_dir.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::status::write(&dir, &snapshot) {
                tracing::warn!(error = %e, "status snapshot not written");
            }
        });
    }

    /// Looks at the call each token's worker is running: a call past
    /// `timeouts.wedged_call_secs` raises a `token-call-stuck` alert (see [`crate::stuck`]),
    /// which goes when the call returns. The job is left alone.
    pub(super) fn check_token_calls(&mut self) {
        let running: Vec<RunningCall> = self
            .seats
            .iter()
            .filter_map(|(key, seat)| {
                let started = seat.sessions.worker()?.call_started()?;
                // Steps are the only calls on a worker: the job running one on this token.
                let job = self
                    .jobs
                    .iter()
                    .find(|(_, e)| e.running && e.token.as_ref() == Some(key));
                Some(RunningCall {
                    key: key.clone(),
                    started,
                    slot: self.rack_view().slot(key, seat),
                    job: job.map(|(id, _)| id.clone()).or_else(|| seat.job.clone()),
                    step: job.and_then(|(_, e)| e.step_started.map(|(step, _)| step)),
                })
            })
            .collect();
        if running.is_empty() && self.stuck_calls.is_empty() {
            return;
        }
        if self
            .stuck_calls
            .update(std::time::Instant::now(), now_utc(), running)
        {
            self.write_status();
        }
    }
}
