//! The phases of the lifecycle story, one method of [`Life`] each: `new`, `renew` and
//! `change` (one method for both), `lock`, `unlock` and `replace`. Each fills the phase's
//! report and returns [`Stop`] when the phase cannot be played to its end.
//!
//! What it does not do: print, or decide the order of the phases (see `Life::play`).

use secrecy::ExposeSecret;
use ukey_protocol::{ExecutionState, JobKind, KeyLabel, TokenSerial, TokenState};

use super::super::keypad::blocking;
use super::super::summary::{CertState, PhaseReport, StoryToken, short};
use super::{Life, Stop};
use hsm_sim::rack::InsertOptions;
use ukey_platform_sim::{JobDraft, JobRecord, Order};

impl Life<'_> {
    /// `new`: a blank token in slot 0 becomes a finished Ukey.
    pub(super) async fn new_token(
        &mut self,
        report: &mut PhaseReport,
    ) -> Result<(JobDraft, TokenSerial), Stop> {
        let draft = JobDraft::new(JobKind::New, self.station)?.with_algorithm(self.plan.algorithm);
        let inserted = self.rack.insert(
            0,
            InsertOptions {
                latency: Some(self.plan.latency),
                ..Default::default()
            },
        )?;
        let serial = TokenSerial::new(inserted).map_err(|e| Stop(e.to_string()))?;
        report.token_serial = Some(serial.to_string());
        let job = self.run_job(&draft).await?;
        report.job_id = Some(job.job_id().to_string());
        report.outcome = outcome_of(&job);
        report.company = Some(draft.order.enterprise.name.clone());
        if job.state() != Some(ExecutionState::Succeeded) {
            return Err(Stop(format!("the new job {}", report.outcome)));
        }
        self.tokens
            .push(StoryToken::new(serial.clone(), "original"));
        let (_, after) = self.snapshot(&serial, "new", Some(&job)).await?;
        report.keys = Some("new");
        report.certificates = Some("new");
        report.user_pin = Some("set");
        if after.len() != 3 {
            report.problems.push(format!(
                "{} certificates on the token, expected 3",
                after.len()
            ));
        }
        report.details.push(format!(
            "in slot 0 for {}: serials {}; key fingerprints {}",
            draft.order.enterprise.name,
            join(after.iter().map(|c| short(&c.cert.serial))),
            join(after.iter().map(|c| short(&c.public_key_sha256)))
        ));
        Ok((draft, serial))
    }

    /// `renew` and `change` without re-keying: same keys, new certificate serials.
    pub(super) async fn reissue(
        &mut self,
        report: &mut PhaseReport,
        draft: &JobDraft,
        serial: &TokenSerial,
        phase: &'static str,
    ) -> Result<(), Stop> {
        let pin_before = self.pin_of(serial);
        report.token_serial = Some(serial.to_string());
        report.company = Some(draft.order.enterprise.name.clone());
        let job = self.run_job(draft).await?;
        report.job_id = Some(job.job_id().to_string());
        report.outcome = outcome_of(&job);
        if job.state() != Some(ExecutionState::Succeeded) {
            return Err(Stop(format!("the {phase} job {}", report.outcome)));
        }
        let (before, after) = self.snapshot(serial, phase, Some(&job)).await?;
        let d = diff(&before, &after);
        report.keys = Some(if d.keys_kept == 3 { "kept" } else { "changed" });
        report.certificates = Some("renewed");
        let pin_after = self.pin_of(serial);
        report.user_pin = Some(if pin_after == pin_before {
            "kept"
        } else {
            "changed"
        });
        if d.labels != 3 || after.len() != 3 {
            report.problems.push(format!(
                "{} certificates on the token, expected 3",
                after.len()
            ));
        }
        if d.keys_kept != 3 {
            report
                .problems
                .push(format!("keys kept on {} of 3 certificates", d.keys_kept));
        }
        if d.serials_new != 3 {
            report.problems.push(format!(
                "new serials on {} of 3 certificates",
                d.serials_new
            ));
        }
        if pin_after != pin_before {
            report.problems.push("the user PIN changed".to_owned());
        }
        let name = &draft.order.enterprise.name;
        for c in &after {
            if c.cert.label != KeyLabel::SealLegal.as_str() && &c.cert.subject_cn != name {
                report.problems.push(format!(
                    "{}: subject CN {} is not {name}",
                    c.cert.label, c.cert.subject_cn
                ));
            }
        }
        report.details.push(format!("serials {}", d.text));
        report.details.push(format!(
            "keys kept ({}/3: fingerprints {}); user PIN unchanged",
            d.keys_kept,
            join(after.iter().map(|c| short(&c.public_key_sha256)))
        ));
        Ok(())
    }

    /// The customer types wrong PINs until the token locks; the desk sees it locked.
    pub(super) async fn lock(
        &mut self,
        report: &mut PhaseReport,
        serial: &TokenSerial,
    ) -> Result<(), Stop> {
        report.token_serial = Some(serial.to_string());
        let right = self
            .platform
            .user_pin(serial)
            .ok_or_else(|| Stop("the platform has no user PIN for the token".to_owned()))?;
        let keypad = self.keypad.clone();
        let (s, pin) = (serial.clone(), right.clone());
        let attempts = blocking(move || keypad.type_wrong_pins(&s, &pin)).await?;
        let wrong = attempts.len().saturating_sub(1);
        report.wrong_pins = Some(wrong);
        let low = attempts.iter().position(|a| a.count_low).map(|i| i + 1);
        let last = attempts.iter().position(|a| a.final_try).map(|i| i + 1);
        let locked_at = attempts.iter().position(|a| a.locked).map(|i| i + 1);
        report.details.push(format!(
            "{} wrong user PINs through C_Login: CKR_PIN_INCORRECT ×{}{}{}{}, then {}",
            wrong,
            attempts
                .iter()
                .filter(|a| a.rv == "CKR_PIN_INCORRECT")
                .count(),
            low.map(|n| format!(", COUNT_LOW from try {n}"))
                .unwrap_or_default(),
            last.map(|n| format!(", FINAL_TRY after try {n}"))
                .unwrap_or_default(),
            locked_at
                .map(|n| format!(", USER_PIN_LOCKED after try {n}"))
                .unwrap_or_default(),
            attempts.last().map(|a| a.rv.as_str()).unwrap_or("-"),
        ));
        // The right PIN no longer helps.
        let keypad = self.keypad.clone();
        let (s, pin) = (serial.clone(), right.clone());
        let refused = match blocking(move || keypad.login(&s, &pin)).await {
            Ok(()) => {
                report
                    .problems
                    .push("the right user PIN still logs in".to_owned());
                "accepted".to_owned()
            }
            Err(rv) => rv,
        };
        report
            .details
            .push(format!("the right PIN is refused too: {refused}"));
        if refused != "CKR_PIN_LOCKED" {
            report.problems.push(format!(
                "the right PIN got {refused}, expected CKR_PIN_LOCKED"
            ));
        }
        // The customer brings it back: the desk sees it locked.
        self.pull(0, serial).await?;
        self.rack.insert(
            0,
            InsertOptions {
                serial: Some(serial.to_string()),
                ..Default::default()
            },
        )?;
        let info = self
            .inventory(serial, "the inventory to show the token locked", |s| {
                s == Some(TokenState::LockedUser)
            })
            .await?;
        let state = info.map(|i| i.state);
        report.outcome = state.map(|s| s.to_string()).unwrap_or_default();
        report.user_pin = Some("locked");
        report
            .details
            .push("plugged in again: the desk's inventory says locked-user".to_owned());
        self.snapshot(serial, "lock", None).await?;
        if let Some(t) = self.token_mut(serial) {
            t.inventory_state = state;
        }
        Ok(())
    }

    /// `unlock`: the SO resets the user PIN; the new one logs in, nothing else changes.
    pub(super) async fn unlock(
        &mut self,
        report: &mut PhaseReport,
        draft: &JobDraft,
        serial: &TokenSerial,
    ) -> Result<(), Stop> {
        report.token_serial = Some(serial.to_string());
        let pin_before = self.pin_of(serial);
        let job = self.run_job(draft).await?;
        report.job_id = Some(job.job_id().to_string());
        report.outcome = outcome_of(&job);
        if job.state() != Some(ExecutionState::Succeeded) {
            return Err(Stop(format!("the unlock job {}", report.outcome)));
        }
        let (before, after) = self.snapshot(serial, "unlock", Some(&job)).await?;
        let pin = self
            .platform
            .user_pin(serial)
            .ok_or_else(|| Stop("the platform has no user PIN after the unlock".to_owned()))?;
        report.user_pin = Some("reset");
        if pin_before.as_deref() == Some(pin.expose_secret()) {
            report
                .problems
                .push("the user PIN did not change".to_owned());
        }
        let keypad = self.keypad.clone();
        let s = serial.clone();
        let flags = blocking(move || keypad.user_pin_flags(&s)).await?;
        if flags != (false, false, false) {
            report.problems.push(format!(
                "the user PIN's retry counter is not full (count low, final try, locked: {flags:?})"
            ));
        }
        let keypad = self.keypad.clone();
        let s = serial.clone();
        match blocking(move || keypad.login(&s, &pin)).await {
            Ok(()) => report.details.push(
                "the SO reset the user PIN: retry counter full, the new PIN logs in".to_owned(),
            ),
            Err(e) => report
                .problems
                .push(format!("the new user PIN does not log in: {e}")),
        }
        let d = diff(&before, &after);
        report.keys = Some(if d.keys_kept == 3 { "kept" } else { "changed" });
        report.certificates = Some(if d.serials_new == 0 {
            "kept"
        } else {
            "renewed"
        });
        if d.keys_kept != 3 || d.serials_new != 0 || after.len() != 3 {
            report
                .problems
                .push("the certificates or keys changed".to_owned());
        }
        report
            .details
            .push("keys and certificates untouched".to_owned());
        Ok(())
    }

    /// Loss and replacement: the token goes away, a `replace` job makes a fresh blank token
    /// in slot 1; the lost token, plugged in again, shows `revoked` and gets no job.
    pub(super) async fn replace(
        &mut self,
        report: &mut PhaseReport,
        order: &Order,
        lost: &TokenSerial,
    ) -> Result<(), Stop> {
        self.pull(0, lost).await?;
        let draft = JobDraft::new(JobKind::Replace, self.station)?
            .with_algorithm(self.plan.algorithm)
            .with_order(order.clone())
            .with_old_token(lost.clone());
        report.company = Some(order.enterprise.name.clone());
        let inserted = self.rack.insert(
            1,
            InsertOptions {
                latency: Some(self.plan.latency),
                ..Default::default()
            },
        )?;
        let serial = TokenSerial::new(inserted).map_err(|e| Stop(e.to_string()))?;
        report.token_serial = Some(serial.to_string());
        let job = self.run_job(&draft).await?;
        report.job_id = Some(job.job_id().to_string());
        report.outcome = outcome_of(&job);
        if job.state() != Some(ExecutionState::Succeeded) {
            return Err(Stop(format!("the replace job {}", report.outcome)));
        }
        if job.token_serial() != Some(&serial) {
            report.problems.push(format!(
                "the job ran on {:?}, not on the blank token {serial}",
                job.token_serial().map(TokenSerial::as_str)
            ));
        }
        self.tokens
            .push(StoryToken::new(serial.clone(), "replacement"));
        let (_, after) = self.snapshot(&serial, "replace", Some(&job)).await?;
        let old = self
            .tokens
            .iter()
            .find(|t| &t.serial == lost)
            .map(|t| t.certificates().to_vec())
            .unwrap_or_default();
        let d = diff(&old, &after);
        report.keys = Some(if d.keys_kept == 0 { "new" } else { "changed" });
        report.certificates = Some("new");
        report.user_pin = Some("set");
        if d.keys_kept != 0 || after.len() != 3 {
            report
                .problems
                .push("the replacement does not have three new key pairs".to_owned());
        }
        report.details.push(format!(
            "lost token {lost} pulled; fresh blank token in slot 1: serials {}; new key fingerprints {}",
            join(after.iter().map(|c| short(&c.cert.serial))),
            join(after.iter().map(|c| short(&c.public_key_sha256)))
        ));
        if let Some(t) = self.token_mut(&serial) {
            t.inventory_state = Some(TokenState::Active);
        }

        // The lost token turns up and is plugged in again.
        self.rack.insert(
            0,
            InsertOptions {
                serial: Some(lost.to_string()),
                ..Default::default()
            },
        )?;
        let info = self
            .inventory(lost, "the inventory to show the lost token revoked", |s| {
                s == Some(TokenState::Revoked)
            })
            .await?;
        let jobs_on_lost: Vec<String> = self
            .platform
            .snapshot()
            .jobs()
            .filter(|j| j.token_serial() == Some(lost))
            .filter(|j| {
                !self
                    .phases
                    .iter()
                    .any(|p| p.job_id.as_deref() == Some(j.job_id().as_str()))
            })
            .map(|j| j.job_id().to_string())
            .collect();
        let job_in_inventory = info.as_ref().and_then(|i| i.job_id.clone());
        if let Some(j) = &job_in_inventory {
            report
                .problems
                .push(format!("the revoked token has job {j} in the inventory"));
        }
        if !jobs_on_lost.is_empty() {
            report.problems.push(format!(
                "jobs ran on the revoked token: {}",
                jobs_on_lost.join(", ")
            ));
        }
        report.details.push(format!(
            "lost token {lost} plugged into slot 0 again: inventory says {}, no job",
            info.map(|i| i.state.to_string()).unwrap_or_default()
        ));
        if let Some(t) = self.token_mut(lost) {
            t.inventory_state = Some(TokenState::Revoked);
        }
        Ok(())
    }
}

/// `succeeded`, or `failed at <step>: <code>: <message>`.
fn outcome_of(job: &JobRecord) -> String {
    let Some(last) = job.last_event() else {
        return "no event".to_owned();
    };
    if last.state == ExecutionState::Succeeded {
        return "succeeded".to_owned();
    }
    let mut text = format!("{} at {}", last.state, last.step);
    if let Some(e) = &last.error {
        text += &format!(": {}: {}", e.code, e.message);
    }
    text
}

/// Compares the certificates before and after a phase, label by label.
struct Diff {
    keys_kept: usize,
    serials_new: usize,
    labels: usize,
    text: String,
}

fn diff(before: &[CertState], after: &[CertState]) -> Diff {
    let mut d = Diff {
        keys_kept: 0,
        serials_new: 0,
        labels: 0,
        text: String::new(),
    };
    let mut parts = Vec::new();
    for a in after {
        let Some(b) = before.iter().find(|b| b.cert.label == a.cert.label) else {
            continue;
        };
        d.labels += 1;
        if a.public_key_sha256 == b.public_key_sha256 {
            d.keys_kept += 1;
        }
        if a.cert.serial != b.cert.serial {
            d.serials_new += 1;
        }
        parts.push(format!(
            "{} {}→{}",
            a.cert.label,
            short(&b.cert.serial),
            short(&a.cert.serial)
        ));
    }
    d.text = parts.join(", ");
    d
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(" ")
}
