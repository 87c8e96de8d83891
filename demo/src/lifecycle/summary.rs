//! What the lifecycle story records and reports: the state of each phase and token
//! ([`PhaseReport`], [`StoryToken`]), and the summary built from the played story and the
//! verification pass ([`summarize`]), printed as text or JSON.
//!
//! What it does not do: play phases or talk to tokens.

use std::path::{Path, PathBuf};
use std::time::Duration;

use der::{Decode, Encode};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};
use ukey_protocol::{KeyLabel, TokenSerial, TokenState};
use x509_cert::Certificate;

use super::super::plural;
use super::super::progress::pad;
use super::super::report::{CertSummary, ms};
use super::super::verify::Check;
use super::{PHASES, Plan};

/// One certificate on a token after a phase.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CertState {
    /// Label, subject CN, serial, notAfter, SHA-256 of the DER.
    #[serde(flatten)]
    pub(crate) cert: CertSummary,
    /// SHA-256 of the certified public key (DER SubjectPublicKeyInfo), lower-case hex.
    pub(crate) public_key_sha256: String,
}

impl CertState {
    pub(super) fn of(label: &str, der: &[u8]) -> CertState {
        let public_key_sha256 = Certificate::from_der(der)
            .ok()
            .and_then(|c| c.tbs_certificate().subject_public_key_info().to_der().ok())
            .map(|spki| hex::encode(Sha256::digest(spki)))
            .unwrap_or_default();
        CertState {
            cert: CertSummary::of(label, der),
            public_key_sha256,
        }
    }
}

/// A token as it stood after one phase.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TokenPhase {
    /// The phase.
    pub(crate) phase: &'static str,
    /// The phase's job, if it had one.
    pub(crate) job_id: Option<String>,
    /// The user PIN as the platform unsealed it, at the end of the phase.
    pub(crate) user_pin: Option<String>,
    /// The certificates read back from the token, in label order.
    pub(crate) certificates: Vec<CertState>,
}

/// One phase of the story.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PhaseReport {
    /// `new`, `renew`, `change`, `lock`, `unlock`, `replace`.
    pub(crate) phase: &'static str,
    /// Its job (none for `lock`).
    pub(crate) job_id: Option<String>,
    /// The token it worked on.
    pub(crate) token_serial: Option<String>,
    /// `succeeded`, `failed at <step>: …`, `locked-user`, ….
    pub(crate) outcome: String,
    /// Whether it ended as expected.
    pub(crate) ok: bool,
    /// The company on the certificates.
    pub(crate) company: Option<String>,
    /// The key pairs: `new`, `kept` or `changed`.
    pub(crate) keys: Option<&'static str>,
    /// The certificates: `new`, `renewed` or `kept`.
    pub(crate) certificates: Option<&'static str>,
    /// The user PIN: `set`, `kept`, `locked` or `reset`.
    pub(crate) user_pin: Option<&'static str>,
    /// Wrong user PINs typed before the token locked (`lock` only).
    pub(crate) wrong_pins: Option<usize>,
    /// What happened, in words.
    pub(crate) details: Vec<String>,
    /// What did not end as expected.
    pub(crate) problems: Vec<String>,
    /// Wall time of the phase, in milliseconds.
    pub(crate) duration_ms: u64,
}

/// One token of the story.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TokenReport {
    /// The token serial.
    pub(crate) serial: String,
    /// `original` (made, renewed, changed, unlocked, lost) or `replacement`.
    pub(crate) role: &'static str,
    /// Its state in the desk's last inventory (`revoked`, `active`, …).
    pub(crate) inventory_state: Option<String>,
    /// Its current user PIN as the platform unsealed it.
    pub(crate) user_pin: Option<String>,
    /// Its certificates now.
    pub(crate) certificates: Vec<CertState>,
    /// Whether the verification pass accepted it.
    pub(crate) verified: bool,
    /// What the verification pass found wrong.
    pub(crate) verification_problems: Vec<String>,
    /// The token after each phase that involved it.
    pub(crate) phases: Vec<TokenPhase>,
}

/// The lifecycle summary (`--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LifecycleSummary {
    /// Every phase ended as expected and every token verified.
    pub(crate) ok: bool,
    /// `lifecycle`.
    pub(crate) scenario: &'static str,
    /// Key algorithm.
    pub(crate) algorithm: &'static str,
    /// Latency profile.
    pub(crate) latency: &'static str,
    /// The PKCS#11 module.
    pub(crate) module: String,
    /// `embedded 127.0.0.1:PORT` or the external broker.
    pub(crate) broker: String,
    /// The demo's folder, when kept.
    pub(crate) dir: Option<String>,
    /// Start-up (broker, platform, agent) in milliseconds.
    pub(crate) setup_ms: u64,
    /// All phases, in milliseconds.
    pub(crate) phases_ms: u64,
    /// Why the story stopped early, if it did.
    pub(crate) aborted: Option<String>,
    /// `SIGINT` or `SIGTERM` when the run was interrupted: then the summary is partial (no
    /// verification pass).
    pub(crate) interrupted: Option<&'static str>,
    /// The phases, in order.
    pub(crate) phases: Vec<PhaseReport>,
    /// The tokens: the original, then its replacement.
    pub(crate) tokens: Vec<TokenReport>,
}

/// What the played story hands to the verification pass and the summary.
pub(crate) struct Story {
    pub(crate) phases: Vec<PhaseReport>,
    pub(crate) tokens: Vec<StoryToken>,
    pub(crate) aborted: Option<String>,
    pub(crate) took: Duration,
}

/// A token of the story, before verification.
pub(crate) struct StoryToken {
    pub(crate) serial: TokenSerial,
    pub(crate) role: &'static str,
    pub(crate) inventory_state: Option<TokenState>,
    pub(crate) user_pin: Option<SecretString>,
    /// The certificates the platform issued last for it (what must be on it).
    pub(crate) issued: Vec<(KeyLabel, Vec<u8>)>,
    pub(crate) phases: Vec<TokenPhase>,
}

impl StoryToken {
    pub(super) fn new(serial: TokenSerial, role: &'static str) -> StoryToken {
        StoryToken {
            serial,
            role,
            inventory_state: None,
            user_pin: None,
            issued: Vec::new(),
            phases: Vec::new(),
        }
    }

    /// The certificates after the last phase.
    pub(super) fn certificates(&self) -> &[CertState] {
        self.phases
            .last()
            .map(|p| p.certificates.as_slice())
            .unwrap_or_default()
    }
}

/// What the summary needs besides the story.
pub(crate) struct Context<'a> {
    pub(crate) plan: &'a Plan,
    pub(crate) module: &'a Path,
    pub(crate) broker: String,
    pub(crate) dir: Option<&'a PathBuf>,
    pub(crate) setup: Duration,
    /// `SIGINT` or `SIGTERM` when the run was interrupted.
    pub(crate) interrupted: Option<&'static str>,
}

/// The summary of a played and verified story.
pub(crate) fn summarize(story: Story, checks: &[Check], ctx: &Context<'_>) -> LifecycleSummary {
    let tokens: Vec<TokenReport> = story
        .tokens
        .into_iter()
        .map(|t| {
            let check = checks.iter().find(|c| c.serial == t.serial.as_str());
            let mut problems = check.map(|c| c.problems.clone()).unwrap_or_default();
            if check.is_none() {
                problems.push(match ctx.interrupted {
                    Some(_) => "not checked: the run was interrupted".to_owned(),
                    None => "not checked".to_owned(),
                });
            }
            TokenReport {
                serial: t.serial.to_string(),
                role: t.role,
                inventory_state: t.inventory_state.map(|s| s.to_string()),
                user_pin: t.user_pin.as_ref().map(|p| p.expose_secret().to_owned()),
                certificates: t.certificates().to_vec(),
                verified: check.is_some_and(Check::ok),
                verification_problems: problems,
                phases: t.phases,
            }
        })
        .collect();
    let ok = story.aborted.is_none()
        && ctx.interrupted.is_none()
        && story.phases.len() == PHASES.len()
        && story.phases.iter().all(|p| p.ok)
        && tokens.len() == 2
        && tokens.iter().all(|t| t.verified);
    LifecycleSummary {
        ok,
        scenario: "lifecycle",
        algorithm: ctx.plan.algorithm.as_str(),
        latency: ctx.plan.latency.name(),
        module: ctx.module.display().to_string(),
        broker: ctx.broker.clone(),
        dir: ctx.dir.map(|d| d.display().to_string()),
        setup_ms: ms(ctx.setup),
        phases_ms: ms(story.took),
        aborted: story.aborted,
        interrupted: ctx.interrupted,
        phases: story.phases,
        tokens,
    }
}

impl LifecycleSummary {
    /// The summary as pretty JSON, with a final newline.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .map(|s| s + "\n")
            .unwrap_or_else(|e| format!("{{\"ok\": false, \"error\": \"{e}\"}}\n"))
    }

    /// The summary as text (no PINs); `paint` colours a verdict.
    pub(crate) fn to_text(&self, paint: &dyn Fn(bool, &str) -> String) -> String {
        let mut out = format!(
            "\n{}  {}  {}  {}  {}  {}  {}\n",
            pad("PHASE", 7),
            pad("JOB", 18),
            pad("TOKEN", 16),
            pad("KEYS", 7),
            pad("CERTS", 7),
            pad("PIN", 7),
            "OUTCOME"
        );
        for p in &self.phases {
            out += &format!(
                "{}  {}  {}  {}  {}  {}  {}\n",
                pad(p.phase, 7),
                pad(p.job_id.as_deref().unwrap_or("-"), 18),
                pad(p.token_serial.as_deref().unwrap_or("-"), 16),
                pad(p.keys.unwrap_or("-"), 7),
                pad(p.certificates.unwrap_or("-"), 7),
                pad(p.user_pin.unwrap_or("-"), 7),
                paint(p.ok, &p.outcome)
            );
            for problem in &p.problems {
                out += &format!("         {}\n", paint(false, problem));
            }
        }
        for t in &self.tokens {
            out += &format!(
                "\n{} token {}  inventory {}  verified {}\n",
                t.role,
                t.serial,
                t.inventory_state.as_deref().unwrap_or("-"),
                if t.verified {
                    paint(true, "yes")
                } else {
                    paint(false, "NO")
                }
            );
            for c in &t.certificates {
                out += &format!(
                    "      {}  {}  serial {}  key SHA-256 {}\n",
                    pad(&c.cert.label, 13),
                    pad(&format!("CN={}", c.cert.subject_cn), 29),
                    c.cert.serial,
                    short(&c.public_key_sha256),
                );
            }
            for p in &t.verification_problems {
                out += &format!("      {}\n", paint(false, &format!("verification: {p}")));
            }
        }
        if let Some(signal) = self.interrupted {
            out += &format!(
                "\nVerification: cut short by {signal}; a token not reopened through PKCS#11\n  \
                 counts as not verified.\n"
            );
        } else {
            out += &format!(
                "\nVerification through PKCS#11 ({}):\n  {} reopened with the user PIN the platform \
                 unsealed last: 3 private keys\n  with the required attributes and the 3 certificates \
                 the platform issued last, each\n  certifying the token's own key.\n",
                self.module,
                plural(self.tokens.len(), "token"),
            );
        }
        out += &format!(
            "\n{} of 6 phases as expected in {:.2} s; start-up {:.2} s.\n",
            self.phases.iter().filter(|p| p.ok).count(),
            self.phases_ms as f64 / 1000.0,
            self.setup_ms as f64 / 1000.0
        );
        if let Some(why) = &self.aborted {
            out += &paint(false, &format!("The story stopped early: {why}.\n"));
        }
        out += &paint(
            self.ok,
            if self.ok {
                "Every phase ended as expected and both tokens verified.\n"
            } else {
                "Not every phase ended as expected.\n"
            },
        );
        out
    }
}

/// Short form of a hex string for the text lines.
pub(super) fn short(hex: &str) -> &str {
    hex.get(..8).unwrap_or(hex)
}
