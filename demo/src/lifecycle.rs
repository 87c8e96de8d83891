//! `ukey-demo --scenario lifecycle`: one Ukey's life at the desk, phase by phase — `new`,
//! `renew` (same keys, new certificates), `change` (a new company name on the same keys), a
//! user PIN typed wrong until it locks, `unlock` (the SO resets the user PIN), and loss and
//! replacement (a `replace` job on a fresh blank token naming the lost one, which shows
//! `revoked` when it turns up at the desk again and gets no job).
//!
//! The agent and platform are the plain demo's ([`super::start_station`]); this module plays
//! the customer and the desk staff, prints one line per phase as it ends, and checks each
//! phase's outcome. The wrong PINs are typed through PKCS#11: `C_Login` with a wrong user PIN
//! through cryptoki on the rack's module (this process's own context on it), until the module
//! answers `CKR_PIN_LOCKED` — the simulated token's own retry counter does the locking. After
//! every phase the token's certificates are read back through PKCS#11 (public objects, no
//! login) so the summary shows, per phase, each certificate's serial and the SHA-256 of its
//! public key (DER SubjectPublicKeyInfo): renew and change keep the fingerprints and change
//! the serials; a new token has fingerprints of its own.
//!
//! What it does not do: touch token objects itself, or run on another module (SoftHSM2 never
//! locks a PIN). The verification pass afterwards is the plain demo's ([`super::verify`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use der::{Decode, Encode};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};
use ukey_protocol::{ExecutionState, JobKind, KeyLabel, StationId, TokenSerial, TokenState};
use x509_cert::Certificate;

use super::error::DemoError;
use super::interrupt::Interrupt;
use super::progress::{Progress, pad};
use super::report::{CertSummary, ms};
use super::verify::{Check, Expectation, Verifier};
use super::{Station, plural};
use hsm_sim::rack::latency::Profile;
use hsm_sim::rack::{InsertOptions, Rack};
use ukey_platform_sim::{JobDraft, JobRecord, Order, Platform};

/// The slots of the lifecycle's rack: the customer's token, then its replacement.
pub(crate) const SLOTS: usize = 2;

/// How long one phase may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Most wrong PINs typed before giving up on a lock (the sim's default locks after 6).
const MAX_WRONG_PINS: usize = 32;

/// The phases, in the order they are played.
const PHASES: [&str; 6] = ["new", "renew", "change", "lock", "unlock", "replace"];

/// What the scenario is given.
pub(crate) struct Plan {
    /// Key algorithm of every job.
    pub(crate) algorithm: ukey_protocol::KeyAlgorithm,
    /// Latency of the tokens plugged in.
    pub(crate) latency: Profile,
}

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
    fn of(label: &str, der: &[u8]) -> CertState {
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
    fn new(serial: TokenSerial, role: &'static str) -> StoryToken {
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
    fn certificates(&self) -> &[CertState] {
        self.phases
            .last()
            .map(|p| p.certificates.as_slice())
            .unwrap_or_default()
    }
}

/// This process's own PKCS#11 context on the rack's module, next to the agent's (the module
/// is initialized once per process; this context never finalizes it).
#[derive(Clone)]
struct Keypad {
    pkcs11: Pkcs11,
}

/// One wrong PIN and what the token said.
struct Attempt {
    rv: String,
    count_low: bool,
    final_try: bool,
    locked: bool,
}

impl Keypad {
    fn open(module: &Path) -> Result<Keypad, DemoError> {
        let fail = |reason: String| DemoError::Keypad {
            module: module.to_path_buf(),
            reason,
        };
        let pkcs11 = Pkcs11::new(module).map_err(|e| fail(format!("load: {e}")))?;
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(fail(format!("C_Initialize: {e}"))),
        }
        Ok(Keypad { pkcs11 })
    }

    fn slot_of(&self, serial: &TokenSerial) -> Result<Slot, String> {
        for slot in self
            .pkcs11
            .get_slots_with_token()
            .map_err(|e| format!("C_GetSlotList: {e}"))?
        {
            if let Ok(info) = self.pkcs11.get_token_info(slot)
                && info.serial_number().trim() == serial.as_str()
            {
                return Ok(slot);
            }
        }
        Err(format!("token {serial} is in no slot"))
    }

    /// The certificates on the token, in label order (public objects: no login).
    fn certificates(&self, serial: &TokenSerial) -> Result<Vec<CertState>, String> {
        let slot = self.slot_of(serial)?;
        let session = self
            .pkcs11
            .open_ro_session(slot)
            .map_err(|e| format!("C_OpenSession: {e}"))?;
        let handles = session
            .find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE)])
            .map_err(|e| format!("C_FindObjects: {e}"))?;
        let mut found = Vec::new();
        for h in handles {
            let attrs = session
                .get_attributes(h, &[AttributeType::Label, AttributeType::Value])
                .map_err(|e| format!("C_GetAttributeValue: {e}"))?;
            let mut label = None;
            let mut value = None;
            for a in attrs {
                match a {
                    Attribute::Label(l) => label = Some(String::from_utf8_lossy(&l).into_owned()),
                    Attribute::Value(v) => value = Some(v),
                    _ => {}
                }
            }
            if let (Some(l), Some(v)) = (label, value) {
                found.push((l, v));
            }
        }
        let mut out = Vec::new();
        for label in KeyLabel::ALL {
            for (l, der) in &found {
                if l == label.as_str() {
                    out.push(CertState::of(l, der));
                }
            }
        }
        Ok(out)
    }

    /// The user PIN's counter flags: count low, final try, locked.
    fn user_pin_flags(&self, serial: &TokenSerial) -> Result<(bool, bool, bool), String> {
        let slot = self.slot_of(serial)?;
        let info = self
            .pkcs11
            .get_token_info(slot)
            .map_err(|e| format!("C_GetTokenInfo: {e}"))?;
        Ok((
            info.user_pin_count_low(),
            info.user_pin_final_try(),
            info.user_pin_locked(),
        ))
    }

    /// `C_Login` as the user with `pin`; logs out again when it worked.
    fn login(&self, serial: &TokenSerial, pin: &SecretString) -> Result<(), String> {
        let slot = self.slot_of(serial)?;
        let session = self
            .pkcs11
            .open_ro_session(slot)
            .map_err(|e| format!("C_OpenSession: {e}"))?;
        let pin = SecretString::from(pin.expose_secret().to_owned());
        session
            .login(UserType::User, Some(&pin))
            .map_err(|e| rv_name(&e))?;
        session.logout().map_err(|e| format!("C_Logout: {e}"))
    }

    /// Types wrong user PINs until the token answers `CKR_PIN_LOCKED`.
    fn type_wrong_pins(
        &self,
        serial: &TokenSerial,
        right: &SecretString,
    ) -> Result<Vec<Attempt>, String> {
        let slot = self.slot_of(serial)?;
        // As long as the right one, so the length is accepted and the try is counted.
        let wrong: String = right
            .expose_secret()
            .chars()
            .map(|c| match c.to_digit(10) {
                Some(d) => char::from(b'0' + ((d as u8 + 1) % 10)),
                None => {
                    if c == 'x' {
                        'y'
                    } else {
                        'x'
                    }
                }
            })
            .collect();
        let wrong = SecretString::from(wrong);
        let mut attempts = Vec::new();
        for _ in 0..MAX_WRONG_PINS {
            let session = self
                .pkcs11
                .open_ro_session(slot)
                .map_err(|e| format!("C_OpenSession: {e}"))?;
            let rv = match session.login(UserType::User, Some(&wrong)) {
                Ok(()) => {
                    let _ = session.logout();
                    return Err("the token accepted a wrong user PIN".to_owned());
                }
                Err(e) => rv_name(&e),
            };
            drop(session);
            let info = self
                .pkcs11
                .get_token_info(slot)
                .map_err(|e| format!("C_GetTokenInfo: {e}"))?;
            let done = rv == "CKR_PIN_LOCKED";
            attempts.push(Attempt {
                rv,
                count_low: info.user_pin_count_low(),
                final_try: info.user_pin_final_try(),
                locked: info.user_pin_locked(),
            });
            if done {
                return Ok(attempts);
            }
        }
        Err(format!(
            "still not locked after {MAX_WRONG_PINS} wrong user PINs"
        ))
    }
}

/// `CKR_PIN_INCORRECT` for a PKCS#11 error, else the error in words.
fn rv_name(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(RvError::PinIncorrect, _) => "CKR_PIN_INCORRECT".to_owned(),
        CkError::Pkcs11(RvError::PinLocked, _) => "CKR_PIN_LOCKED".to_owned(),
        CkError::Pkcs11(RvError::PinLenRange, _) => "CKR_PIN_LEN_RANGE".to_owned(),
        other => other.to_string(),
    }
}

/// Runs `f` on a blocking thread (PKCS#11 calls block; the runtime's threads must not).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("PKCS#11 worker: {e}"))?
}

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

/// Short form of a hex string for the text lines.
fn short(hex: &str) -> &str {
    hex.get(..8).unwrap_or(hex)
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

    /// `new`: a blank token in slot 0 becomes a finished Ukey.
    async fn new_token(
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
    async fn reissue(
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
    async fn lock(&mut self, report: &mut PhaseReport, serial: &TokenSerial) -> Result<(), Stop> {
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
    async fn unlock(
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
    async fn replace(
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

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(" ")
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

/// The verification pass on the story's tokens (both are plugged in: the lost one in
/// slot 0, its replacement in slot 1), with the agent stopped: each must hold three good
/// key pairs and the certificates the platform issued last, and open with its current user
/// PIN — the revoked one with the PIN its unlock set.
pub(crate) fn verify(module: &Path, story: &Story) -> Result<Vec<Check>, DemoError> {
    let expectations: Vec<Expectation> = story
        .tokens
        .iter()
        .map(|t| Expectation {
            serial: t.serial.to_string(),
            user_pin: t.user_pin.clone(),
            issued: t.issued.clone(),
        })
        .collect();
    let verifier = Verifier::open(module)?;
    let checks = verifier.check(&expectations)?;
    verifier.close();
    Ok(checks)
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
