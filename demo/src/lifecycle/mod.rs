//! `ukey-demo --scenario lifecycle`: one Ukey's life at the desk, phase by phase — `new`,
//! `renew` (same keys, new certificates), `change` (a new company name on the same keys), a
//! user PIN typed wrong until it locks, `unlock` (the SO resets the user PIN), and loss and
//! replacement (a `replace` job on a fresh blank token naming the lost one, which shows
//! `revoked` when it turns up at the desk again and gets no job).
//!
//! The agent and platform are the plain demo's ([`super::station::start_station`]); this module plays
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

mod keypad;
mod life;
mod summary;

use std::path::Path;
use std::time::{Duration, Instant};

use super::cli::DemoArgs;
use super::error::DemoError;
use super::folder::{TempFolder, keep_for_log};
use super::interrupt::{Interrupt, Signal};
use super::progress::Progress;
use super::station::start_station;
use super::verify::{Check, Expectation, Verifier};
use super::{FILES, agent_stop_text, interrupted, plural};
use hsm_sim::rack::Rack;
use hsm_sim::rack::latency::Profile;

use life::play;
use summary::{Context, Story, summarize};

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

/// `--scenario lifecycle`: plays the story, verifies its tokens, prints the summary.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_lifecycle(
    args: &DemoArgs,
    root: &Path,
    temp: Option<TempFolder>,
    module: &Path,
    rack: &Rack,
    runtime: &tokio::runtime::Runtime,
    progress: &Progress,
    interrupt: &Interrupt,
    started: Instant,
) -> Result<(), DemoError> {
    let files = root.join(FILES);
    let log = files.join("agent.log");
    let plan = Plan {
        algorithm: args.alg.algorithm(),
        latency: args.latency.profile(),
    };
    let played = runtime.block_on(async {
        let Some(mut station) = start_station(
            args.broker.as_ref(),
            root,
            &files,
            module,
            Some(rack),
            started,
            interrupt,
        )
        .await?
        else {
            return Ok(None);
        };
        progress.note(&format!(
            "ukey-station demo, lifecycle scenario: one token's life on a rack of {} slots, \
             latency {}, {} keys\n  broker {}, simulated platform with a test CA, agent online \
             after {:.2} s",
            SLOTS,
            plan.latency.name(),
            plan.algorithm.as_str(),
            station.broker,
            station.setup.as_secs_f64()
        ));
        let played = play(&mut station, rack, module, &plan, progress, interrupt).await;
        let broker = station.broker.clone();
        let setup = station.setup;
        station.platform.shutdown().await;
        played.map(|(story, agent_error)| Some((story, agent_error, broker, setup)))
    });
    let (story, agent_error, broker, setup) = match (played, interrupt.signal()) {
        (Ok(Some(p)), _) => p,
        (Ok(None), Some(signal)) => {
            return Err(interrupted(
                signal,
                "0 of 6 phases finished, the agent was starting".to_owned(),
                temp,
                root,
            ));
        }
        (Err(e), Some(signal)) => return Err(interrupted(signal, e.to_string(), temp, root)),
        (Ok(None), None) => {
            keep_for_log(temp, &log, args.json);
            return Err(DemoError::Agent("the desk did not start".to_owned()));
        }
        (Err(e), None) => {
            keep_for_log(temp, &log, args.json);
            return Err(e);
        }
    };
    let checks = if interrupt.signal().is_some() {
        Vec::new()
    } else {
        if progress.is_on() && !story.tokens.is_empty() {
            progress.note(&format!(
                "verifying {} through PKCS#11 ...",
                plural(story.tokens.len(), "token")
            ));
        }
        verify(module, &story)?
    };
    let kept = temp.is_none().then(|| root.to_path_buf());
    let summary = summarize(
        story,
        &checks,
        &Context {
            plan: &plan,
            module,
            broker,
            dir: kept.as_ref(),
            setup,
            interrupted: interrupt.signal().map(Signal::name),
        },
    );
    if args.json {
        print!("{}", summary.to_json());
    } else {
        let paint = |ok: bool, text: &str| {
            if ok {
                progress.green(text)
            } else {
                progress.red(text)
            }
        };
        print!("{}", summary.to_text(&paint));
        if temp.is_none() {
            println!(
                "\nThe tokens stay in {dir}:\n  HSM_SIM_DIR={dir} pkcs11-tool --module {module} -L\n  \
                 hsm-sim --dir {dir} list\nThe agent's configuration, state and log are in {files}.",
                dir = root.display(),
                module = module.display(),
                files = files.display()
            );
        }
    }
    if let Some(signal) = interrupt.signal() {
        let done = summary.phases.iter().filter(|p| p.ok).count();
        let mut what = format!("{done} of 6 phases finished");
        if let Some(phase) = summary.phases.last().filter(|p| !p.ok) {
            what += &format!(", stopped during {}", phase.phase);
        }
        what += &format!(", {}", agent_stop_text(agent_error.as_deref()));
        return Err(interrupted(signal, what, temp, root));
    }
    if summary.ok {
        Ok(())
    } else {
        if let Some(e) = &agent_error {
            eprintln!("ukey-demo: the agent stopped with an error: {e}");
        }
        keep_for_log(temp, &log, args.json);
        Err(DemoError::Lifecycle {
            phases_ok: summary.phases.iter().filter(|p| p.ok).count(),
        })
    }
}
