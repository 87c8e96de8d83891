//! `ukey-demo`: a whole production desk in one process — an embedded MQTT broker
//! (rumqttd), the simulated platform with its test CA, a virtual rack, and the agent, run
//! with the same code and configuration path as `ukey-agent run` (a TOML file loaded with
//! `Config::load_checked`, then `daemon::run`). The demo plays the desk staff ([`desk`]),
//! shows live progress ([`progress`]), then stops the agent, reopens every produced token
//! through PKCS#11 to check it ([`verify`]) and prints a summary ([`report`]). With
//! `--scenario lifecycle` the same desk plays one token's life instead ([`lifecycle`]).
//!
//! The agent loads `libhsm_sim.so` by path, from the folder of the running `ukey-demo` binary
//! (cargo builds both into `target/<profile>/`; `cargo run -p ukey-demo` alone leaves the
//! module in `target/<profile>/deps/`, which is looked at too), or the module given with
//! `--module`. The module finds the rack through `HSM_SIM_DIR`, read at `C_Initialize`; a
//! process cannot set its own environment safely, so the demo executes itself once more
//! with the variable set ([`ensure_module_env`]) before anything else runs.
//!
//! Files: with `--dir D` the rack's state is `D` itself (inspect it afterwards with
//! `HSM_SIM_DIR=D pkcs11-tool …` or `hsm-sim --dir D list`) and the demo's own files (agent
//! configuration, state, trust files, log) are in `D/demo`; without it everything lives in a
//! temporary folder that is removed at the end (kept when the run fails, for its log).
//!
//! Ctrl-C and SIGTERM ([`interrupt`]): the first stops the run where it is — no more tokens
//! or jobs, the agent stopped as on SIGTERM (bounded by [`AGENT_STOP_TIMEOUT`]), no
//! verification pass, a partial summary, the temporary folder removed — and the process
//! exits with 130 or 143 ([`DemoError::Interrupted`]); a second one quits at once.
//!
//! It is a simulation end to end: never point it at a real platform or real tokens.

mod broker;
mod desk;
pub mod desk_builder;
mod error;
mod interrupt;
mod lifecycle;
mod progress;
mod report;
mod verify;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use ukey_agent::config::{Config, TimeoutConfig};
use ukey_agent::panel::Light;
use ukey_protocol::{KeyAlgorithm, KeyLabel, PresenceStatus, StationId};

pub use error::DemoError;

use desk::{Desk, DeskPlan, DeskRun, Outcome, TokenResult, Tokens};
use desk_builder::DeskBuilder;
use hsm_sim::rack::latency::Profile;
use hsm_sim::rack::{DIR_ENV, InsertOptions, Rack, RackConfig};
use interrupt::{Interrupt, Signal};
use progress::{Progress, ProgressKind};
use report::{CertSummary, FaultSummary, Summary, TokenSummary, ms};
use ukey_platform_sim::{Platform, Records};
use verify::{Check, Expectation};

/// The file name of hsm-sim's PKCS#11 module next to the binary.
pub const MODULE_FILE: &str = "libhsm_sim.so";

/// The station id of the demo's desk.
const STATION: &str = "demo-desk";

/// The folder inside the demo's folder that holds the demo's own files.
const FILES: &str = "demo";

/// How long the agent may take to connect and announce itself.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the agent may take to stop (its own `shutdown_grace_secs` is 10 s: jobs reach a
/// safe step, the outbox is flushed); after that it is abandoned.
pub(crate) const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the rack's lights may take to show the final slot table once the last token is
/// finished (the agent notices a change within its 50 ms scan and sends it at once).
const PANEL_SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Key algorithm of the demo's jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Alg {
    /// ECDSA/ECDH on P-256.
    P256,
    /// RSA-2048.
    Rsa2048,
    /// RSA-3072.
    Rsa3072,
}

impl Alg {
    fn algorithm(self) -> KeyAlgorithm {
        match self {
            Alg::P256 => KeyAlgorithm::P256,
            Alg::Rsa2048 => KeyAlgorithm::Rsa2048,
            Alg::Rsa3072 => KeyAlgorithm::Rsa3072,
        }
    }
}

/// Latency of the virtual tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Latency {
    /// No added latency: as fast as the computer.
    Instant,
    /// Timings of a real USB token (e.g. 3 s per RSA-2048 key pair; see `hsm-sim latency`).
    Realistic,
}

impl Latency {
    fn profile(self) -> Profile {
        match self {
            Latency::Instant => Profile::Instant,
            Latency::Realistic => Profile::Realistic,
        }
    }
}

/// What the demo plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Blank tokens become finished ones, one `new` job each.
    Production,
    /// One token's life: new, renew, change, a user PIN typed wrong until it locks, unlock,
    /// then loss and a replacement; on a rack of 2 slots (--tokens and --slots do not apply).
    Lifecycle,
}

/// An external broker's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

fn parse_broker(s: &str) -> Result<BrokerAddr, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{s:?} has no host (expected HOST:PORT)"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a TCP port (1-65535)"))?;
    if port == 0 {
        return Err("port 0 is not a TCP port (1-65535)".to_owned());
    }
    Ok(BrokerAddr {
        host: host.to_owned(),
        port,
    })
}

/// `ukey-demo`: run a whole production desk and watch blank Ukeys become finished ones.
///
/// Starts an embedded MQTT broker, the simulated platform (test CA), a virtual rack and the
/// agent in this process; plugs in blank tokens as slots free up, one `new` job per token;
/// shows live progress; then checks every produced token again through PKCS#11 and prints a
/// summary. Exit status 0 only if every token was produced and verified. With --dir D the
/// tokens stay in D (HSM_SIM_DIR=D pkcs11-tool --module …/libhsm_sim.so -L). Ctrl-C (or
/// SIGTERM) stops the agent cleanly and prints a partial summary: exit status 130 (143); a
/// second Ctrl-C quits at once.
#[derive(Debug, Parser)]
#[command(name = "ukey-demo", version)]
pub struct DemoArgs {
    /// Keep the rack and the demo's files in this folder (the rack in DIR, the agent's
    /// configuration, state and log in DIR/demo) instead of a temporary folder.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// What to play.
    #[arg(long, value_enum, default_value_t = Scenario::Production)]
    pub scenario: Scenario,
    /// Tokens to make.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub tokens: u32,
    /// Slots of the virtual rack (tokens are plugged in as slots free up).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub slots: u32,
    /// Key algorithm of the three key pairs.
    #[arg(long, value_enum, default_value_t = Alg::P256)]
    pub alg: Alg,
    /// Latency of the virtual tokens.
    #[arg(long, value_enum, default_value_t = Latency::Instant)]
    pub latency: Latency,
    /// Another PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so): its blank tokens take
    /// the jobs and no rack is driven.
    #[arg(long, value_name = "PATH")]
    pub module: Option<PathBuf>,
    /// An external MQTT broker (e.g. Mosquitto) instead of the embedded one.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_broker)]
    pub broker: Option<BrokerAddr>,
    /// Print the summary as JSON on stdout (with each token's user PIN), no progress.
    #[arg(long)]
    pub json: bool,
    /// Scripted faults: one token is pulled out mid-job and plugged back in, and the platform
    /// once certifies a wrong key; both are caught and recovered.
    #[arg(long, conflicts_with = "module")]
    pub faults: bool,
}

/// hsm-sim's module built with the running binary: next to it, or in `deps/` beside it
/// (where cargo leaves a dependency's shared library when only `ukey-demo` was built); the
/// newer of the two when both exist, so a module rebuilt with the demo wins over a stale one.
fn module_next_to_binary() -> Result<PathBuf, DemoError> {
    let exe = std::env::current_exe().map_err(|e| DemoError::folder("the running binary", e))?;
    let dir = exe
        .parent()
        .ok_or_else(|| DemoError::folder(&exe, "has no folder"))?;
    let beside = dir.join(MODULE_FILE);
    let deps = dir.join("deps").join(MODULE_FILE);
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Ok(match (modified(&beside), modified(&deps)) {
        (Some(a), Some(b)) if b > a => deps,
        (None, Some(_)) => deps,
        _ => beside,
    })
}

/// The environment variable that marks a temporary folder this run made before it executed
/// itself again (see [`ensure_module_env`]): the folder is the run's to remove.
const TEMP_ENV: &str = "UKEY_DEMO_TEMP_DIR";

/// Makes sure hsm-sim's module, loaded by the agent in this process, finds the rack in
/// `root`: it reads `HSM_SIM_DIR` at `C_Initialize`. When the variable already names `root`
/// this returns at once; otherwise the demo executes itself again (same process id, same
/// arguments, so signals and the exit status stay the caller's) with the variable set, and
/// returns only if that fails. `temp` says that `root` is a temporary folder of this run.
fn ensure_module_env(root: &Path, temp: bool) -> Result<(), DemoError> {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(DIR_ENV).is_some_and(|d| Path::new(&d) == root) {
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| DemoError::folder("the running binary", e))?;
    let mut again = std::process::Command::new(&exe);
    again.args(std::env::args_os().skip(1)).env(DIR_ENV, root);
    if temp {
        again.env(TEMP_ENV, root);
    } else {
        again.env_remove(TEMP_ENV);
    }
    let e = again.exec();
    Err(DemoError::folder(
        &exe,
        format!("cannot execute it again with {DIR_ENV} set: {e}"),
    ))
}

/// A temporary folder of this run: removed when dropped, unless kept for its log.
#[derive(Debug)]
pub(crate) struct TempFolder {
    path: Option<PathBuf>,
}

impl TempFolder {
    /// A new folder `ukey-demo-XXXX` in the system's temporary folder (`$TMPDIR`).
    fn create() -> Result<TempFolder, DemoError> {
        let t = tempfile::Builder::new()
            .prefix("ukey-demo-")
            .tempdir()
            .map_err(|e| DemoError::folder(std::env::temp_dir(), e))?;
        Ok(TempFolder {
            path: Some(t.keep()),
        })
    }

    /// The temporary folder this process was executed again with, if any.
    fn adopted() -> Option<TempFolder> {
        let temp = std::env::var_os(TEMP_ENV)?;
        let dir = std::env::var_os(DIR_ENV)?;
        (temp == dir && Path::new(&temp).is_dir()).then(|| TempFolder {
            path: Some(PathBuf::from(temp)),
        })
    }

    /// The folder.
    pub(crate) fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Keeps the folder (a failed run's log stays readable); returns its path.
    pub(crate) fn keep(mut self) -> PathBuf {
        self.path.take().unwrap_or_default()
    }

    /// Removes the folder now, reporting a failure.
    pub(crate) fn close(mut self) -> std::io::Result<()> {
        match self.path.take() {
            Some(p) => std::fs::remove_dir_all(p),
            None => Ok(()),
        }
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Prepares the demo's folder: the rack in `root` (rack mode) and `root/demo` for the rest.
fn prepare(root: &Path, rack: Option<&RackConfig>) -> Result<Option<Rack>, DemoError> {
    let files = root.join(FILES);
    let had_rack = root.join("rack.json").exists();
    if had_rack && rack.is_some() && !files.exists() {
        return Err(DemoError::folder(
            root,
            "already holds a rack that the demo did not make (from --dir or $HSM_SIM_DIR); \
             give the demo another --dir",
        ));
    }
    if files.exists() {
        // A previous demo's files: its journal would bring back its jobs.
        std::fs::remove_dir_all(&files).map_err(|e| DemoError::folder(&files, e))?;
    }
    std::fs::create_dir_all(&files).map_err(|e| DemoError::folder(&files, e))?;
    match rack {
        None => Ok(None),
        Some(config) => Ok(Some(Rack::init(root, config.clone(), had_rack)?)),
    }
}

fn init_logging(path: &Path) -> Result<(), DemoError> {
    let file = std::fs::File::create(path).map_err(|e| DemoError::folder(path, e))?;
    let base = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    // rumqttd logs every connection at info: keep the broker quiet.
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{base},rumqttd=off"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off"));
    // Another subscriber may be installed already (the caller's): then logs go there.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}

/// What the async part hands back.
struct Produced {
    panel_row: Option<String>,
    /// The lights showed the final slot table when the row was taken.
    panel_settled: Option<bool>,
    run: DeskRun,
    records: Records,
    pins: Vec<(String, SecretString)>,
    broker: String,
    setup: Duration,
    agent_error: Option<String>,
}

/// Runs the demo. Prints the summary (text, or JSON with `--json`) on stdout and progress on
/// stderr; returns [`DemoError::Incomplete`] when not every token was produced and verified,
/// and [`DemoError::Interrupted`] after SIGINT or SIGTERM (with a partial summary printed).
///
/// Must be called before the process starts any thread, with the process's own command line
/// in `args`: in rack mode, when `HSM_SIM_DIR` does not name the rack's folder yet, it
/// executes the program again with it set (the binary's `main` calls it right after parsing
/// the command line). It takes SIGINT and SIGTERM over for the rest of the process.
pub fn run(args: DemoArgs) -> Result<(), DemoError> {
    let started = Instant::now();
    let lifecycle = args.scenario == Scenario::Lifecycle;
    if lifecycle && (args.module.is_some() || args.faults) {
        return Err(DemoError::Scenario(
            "--scenario lifecycle runs on the virtual rack (another module cannot lock a PIN) \
             and has no --faults"
                .to_owned(),
        ));
    }
    let rack_mode = args.module.is_none();
    let module = match &args.module {
        Some(path) => path.clone(),
        None => module_next_to_binary()?,
    };
    if !module.exists() {
        return Err(DemoError::ModuleMissing {
            path: module,
            hint: if rack_mode {
                "it is built with hsm-sim (`cargo build -p hsm-sim`, or \
                 `cargo run --release -p ukey-demo`); run the ukey-demo binary from \
                 its cargo target folder"
            } else {
                "give the path of an installed PKCS#11 module to --module"
            },
        });
    }
    let (root, temp) = match (&args.dir, TempFolder::adopted()) {
        (Some(d), _) => (d.clone(), None),
        (None, Some(t)) => (t.path().to_path_buf(), Some(t)),
        (None, None) => {
            let t = TempFolder::create()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    if rack_mode {
        ensure_module_env(&root, temp.is_some())?;
    }
    // The first thread of the process: from here on Ctrl-C and SIGTERM stop the demo
    // cleanly.
    let interrupt = Interrupt::install(temp.as_ref().map(|t| t.path().to_path_buf()))?;
    let rack_config = RackConfig {
        slots: if lifecycle {
            lifecycle::SLOTS
        } else {
            args.slots as usize
        },
        latency: Some(args.latency.profile()),
        ..Default::default()
    };
    let rack = prepare(&root, rack_mode.then_some(&rack_config))?;
    let files = root.join(FILES);
    let log = files.join("agent.log");
    init_logging(&log)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("demo")
        .build()
        .map_err(|e| DemoError::Runtime(e.to_string()))?;
    let progress = Progress::new(
        if args.json {
            ProgressKind::Off
        } else {
            ProgressKind::Auto
        },
        if lifecycle {
            0
        } else if rack_mode {
            args.slots as usize
        } else {
            args.tokens as usize
        },
    );
    if let (true, Some(rack)) = (lifecycle, rack.as_ref()) {
        let ended = run_lifecycle(
            &args, &root, temp, &module, rack, &runtime, &progress, &interrupt, started,
        );
        // Bounded: an agent abandoned while stopping may leave a blocking task behind.
        runtime.shutdown_timeout(Duration::from_secs(2));
        return ended;
    }
    let produced = runtime.block_on(produce(
        &args,
        &root,
        &files,
        &module,
        rack.as_ref(),
        &progress,
        &interrupt,
        started,
    ));
    runtime.shutdown_timeout(Duration::from_secs(2));
    let produced = match (produced, interrupt.signal()) {
        (Ok(Some(p)), _) => p,
        (Ok(None), Some(signal)) => {
            return Err(interrupted(
                signal,
                format!(
                    "0 of {} tokens finished, the agent was starting",
                    args.tokens
                ),
                temp,
                &root,
            ));
        }
        (Err(e), Some(signal)) => {
            return Err(interrupted(signal, e.to_string(), temp, &root));
        }
        (Ok(None), None) => {
            keep_for_log(temp, &log, args.json);
            return Err(DemoError::Agent("the desk did not start".to_owned()));
        }
        (Err(e), None) => {
            keep_for_log(temp, &log, args.json);
            return Err(e);
        }
    };

    // The verification pass, with the agent stopped (none after an interruption).
    let expectations: Vec<Expectation> = produced
        .run
        .results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Succeeded))
        .filter_map(|r| {
            let serial = r.serial.as_ref()?.to_string();
            let user_pin = produced
                .pins
                .iter()
                .find(|(s, _)| *s == serial)
                .map(|(_, p)| p.clone());
            let issued = r
                .job
                .as_ref()
                .and_then(|j| j.issued())
                .map(|certs| {
                    certs
                        .iter()
                        .map(|c| (c.label, c.certificate.as_bytes().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            Some(Expectation {
                serial,
                user_pin,
                issued,
            })
        })
        .collect();
    let checks = if interrupt.signal().is_some() {
        Vec::new()
    } else {
        if progress.is_on() && !expectations.is_empty() {
            progress.note(&format!(
                "verifying {} through PKCS#11 ...",
                plural(expectations.len(), "token")
            ));
        }
        verify_all(
            &module,
            rack.as_ref(),
            args.slots as usize,
            &expectations,
            &interrupt,
        )?
    };

    let summary = summarize(
        &args,
        &produced,
        &checks,
        &module,
        temp.is_none().then_some(&root),
        interrupt.signal(),
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
        if temp.is_none() && rack_mode && !args.json {
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
        let report = production_report(
            &produced.run.results,
            summary.tokens_requested,
            summary.tokens_verified,
            produced.agent_error.as_deref(),
        );
        return Err(interrupted(signal, report, temp, &root));
    }
    if summary.ok {
        Ok(())
    } else {
        if let Some(e) = &produced.agent_error {
            eprintln!("ukey-demo: the agent stopped with an error: {e}");
        }
        keep_for_log(temp, &log, args.json);
        Err(DemoError::Incomplete {
            requested: summary.tokens_requested,
            verified: summary.tokens_verified,
        })
    }
}

/// `3 of 40 tokens finished, 4 stopped mid-job, 33 not started, not verified, the agent
/// stopped`.
fn production_report(
    results: &[TokenResult],
    requested: usize,
    verified: usize,
    agent_error: Option<&str>,
) -> String {
    let count = |f: fn(&Outcome) -> bool| results.iter().filter(|r| f(&r.outcome)).count();
    let finished = count(|o| matches!(o, Outcome::Succeeded));
    let mut parts = vec![format!("{finished} of {requested} tokens finished")];
    let stopped = count(|o| matches!(o, Outcome::Interrupted(_)));
    if stopped > 0 {
        parts.push(format!("{stopped} stopped mid-job"));
    }
    let failed = count(|o| matches!(o, Outcome::Failed(_)));
    if failed > 0 {
        parts.push(format!("{failed} failed"));
    }
    let not_started = requested.saturating_sub(results.len());
    if not_started > 0 {
        parts.push(format!("{not_started} not started"));
    }
    if finished > 0 {
        parts.push(match verified {
            0 => "not verified".to_owned(),
            n if n == finished => "all verified".to_owned(),
            n => format!("{n} verified"),
        });
    }
    parts.push(agent_stop_text(agent_error));
    parts.join(", ")
}

/// How the agent ended, for the interruption line.
fn agent_stop_text(agent_error: Option<&str>) -> String {
    match agent_error {
        None => "the agent stopped".to_owned(),
        Some(e) => format!("the agent: {e}"),
    }
}

/// The end of an interrupted run: the temporary folder is removed (a kept `--dir` is
/// named), and the error carries the one line `main` prints.
fn interrupted(signal: Signal, what: String, temp: Option<TempFolder>, root: &Path) -> DemoError {
    let files = match temp {
        Some(t) => {
            let path = t.path().to_path_buf();
            match t.close() {
                Ok(()) => "temporary files removed".to_owned(),
                Err(e) => format!("temporary files left in {}: {e}", path.display()),
            }
        }
        None => format!("the rack and the agent's files stay in {}", root.display()),
    };
    DemoError::Interrupted {
        signal: signal.name(),
        status: signal.exit_status(),
        report: format!("{what}; {files}"),
    }
}

/// `--scenario lifecycle`: plays the story, verifies its tokens, prints the summary.
#[allow(clippy::too_many_arguments)]
fn run_lifecycle(
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
    let plan = lifecycle::Plan {
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
            lifecycle::SLOTS,
            plan.latency.name(),
            plan.algorithm.as_str(),
            station.broker,
            station.setup.as_secs_f64()
        ));
        let played = lifecycle::play(&mut station, rack, module, &plan, progress, interrupt).await;
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
        lifecycle::verify(module, &story)?
    };
    let kept = temp.is_none().then(|| root.to_path_buf());
    let summary = lifecycle::summarize(
        story,
        &checks,
        &lifecycle::Context {
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

/// The verification pass. On the rack the desk plugs the produced tokens back in, as many
/// at a time as there are slots (the last ones stay plugged in, for pkcs11-tool); an
/// interruption stops it between two batches.
fn verify_all(
    module: &Path,
    rack: Option<&Rack>,
    slots: usize,
    expectations: &[Expectation],
    interrupt: &Interrupt,
) -> Result<Vec<Check>, DemoError> {
    let verifier = verify::Verifier::open(module)?;
    let mut checks = Vec::new();
    match rack {
        None => checks = verifier.check(expectations)?,
        Some(rack) => {
            for batch in expectations.chunks(slots.max(1)) {
                if interrupt.signal().is_some() {
                    break;
                }
                for slot in 0..slots {
                    if rack.serial_in(slot)?.is_some() {
                        rack.remove(slot)?;
                    }
                }
                for (slot, t) in batch.iter().enumerate() {
                    rack.insert(
                        slot,
                        InsertOptions {
                            serial: Some(t.serial.clone()),
                            ..Default::default()
                        },
                    )?;
                }
                checks.extend(verifier.check(batch)?);
            }
        }
    }
    verifier.close();
    Ok(checks)
}

/// A failed run keeps its temporary folder, for the agent's log.
fn keep_for_log(temp: Option<TempFolder>, log: &Path, quiet: bool) {
    if let Some(t) = temp {
        let _ = t.keep();
        if !quiet {
            eprintln!("ukey-demo: the agent's log is kept in {}", log.display());
        }
    } else if !quiet {
        eprintln!("ukey-demo: the agent's log is {}", log.display());
    }
}

/// The running parts of the demo's desk: broker, platform and agent.
pub(crate) struct Station {
    /// The simulated platform.
    pub(crate) platform: Platform,
    /// The desk's station id.
    pub(crate) station: StationId,
    /// The agent's task.
    pub(crate) agent: tokio::task::JoinHandle<Result<(), ukey_agent::daemon::DaemonError>>,
    /// Stops the agent as SIGTERM does.
    pub(crate) shutdown: CancellationToken,
    /// `embedded 127.0.0.1:PORT` or the external broker.
    pub(crate) broker: String,
    /// From the start of the command until the agent was online.
    pub(crate) setup: Duration,
    /// The desk's indicator panel, emulated on a pseudo-terminal (with a rack only).
    pub(crate) panel: Option<hsm_sim::panel::EmulatedPanel>,
}

impl Station {
    /// Stops the agent (as `ukey-agent run` does on SIGTERM); returns its error, if any.
    pub(crate) async fn stop_agent(&mut self) -> Option<String> {
        stop_agent(&self.shutdown, &mut self.agent).await
    }
}

/// Stops the agent as `ukey-agent run` does on SIGTERM and waits for it, at most
/// [`AGENT_STOP_TIMEOUT`]; an agent that takes longer is abandoned (its task is aborted;
/// whatever it still runs ends with the process). Returns why it did not stop cleanly.
async fn stop_agent(
    shutdown: &CancellationToken,
    agent: &mut tokio::task::JoinHandle<Result<(), ukey_agent::daemon::DaemonError>>,
) -> Option<String> {
    shutdown.cancel();
    match tokio::time::timeout(AGENT_STOP_TIMEOUT, &mut *agent).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(e.to_string()),
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => {
            agent.abort();
            tracing::warn!("the agent did not stop within {AGENT_STOP_TIMEOUT:?}; abandoned");
            Some(format!(
                "it did not stop within {} s and was abandoned",
                AGENT_STOP_TIMEOUT.as_secs()
            ))
        }
    }
}

/// Starts the broker (unless external), the platform and the agent, with the agent's
/// configuration written to a file and loaded as `ukey-agent run` loads it; returns once
/// the agent is online, or `None` when interrupted before (the agent stopped again).
pub(crate) async fn start_station(
    broker_addr: Option<&BrokerAddr>,
    root: &Path,
    files: &Path,
    module: &Path,
    rack: Option<&Rack>,
    started: Instant,
    interrupt: &Interrupt,
) -> Result<Option<Station>, DemoError> {
    let (host, port, broker) = match broker_addr {
        Some(b) => (b.host.clone(), b.port, format!("{}:{}", b.host, b.port)),
        None => {
            let b = tokio::task::spawn_blocking(broker::EmbeddedBroker::start)
                .await
                .map_err(|e| DemoError::Broker(e.to_string()))??;
            let port = b.port();
            (
                "127.0.0.1".to_owned(),
                port,
                format!("embedded 127.0.0.1:{port}"),
            )
        }
    };
    let station = StationId::new(STATION).map_err(|e| DemoError::Agent(e.to_string()))?;
    let builder = DeskBuilder::new(
        station.clone(),
        files.join("agent-state"),
        host.clone(),
        port,
        module,
    )
    .usb_sim(rack.map(|_| root))
    .timeouts(TimeoutConfig {
        certificates_secs: 120,
        token_removed_secs: 120,
        bind_ack_secs: 120,
        shutdown_grace_secs: 10,
        ..TimeoutConfig::default()
    });
    let platform = builder.start_platform(|_| {}).await?;
    let trust = platform.write_station_trust(&station, &files.join("trust"))?;
    let config_path = files.join("agent.toml");
    // The rack's indicator panel, emulated on a pty: the agent drives its lights.
    let panel = match rack {
        Some(r) => {
            let slots = u8::try_from(r.slot_count().unwrap_or(4).clamp(1, 64)).unwrap_or(4);
            let (panel, _events) =
                hsm_sim::panel::EmulatedPanel::start(hsm_sim::panel::PanelOptions {
                    slots,
                    link: Some(files.join("panel")),
                    ..Default::default()
                })
                .map_err(|e| DemoError::Agent(format!("indicator panel: {e}")))?;
            Some(panel)
        }
        None => None,
    };
    let panel_link = panel.as_ref().map(|_| files.join("panel"));
    let config = builder.panel(panel_link.as_deref()).config(&trust);
    desk_builder::write_config(&config, "`ukey-demo`", &config_path)?;
    let config = Config::load_checked(&config_path).map_err(|e| DemoError::Agent(e.to_string()))?;

    // The agent's audit log in its state folder, as `ukey-agent run` keeps it: after the
    // run, `ukey-agent audit verify -c <dir>/demo/agent.toml` checks it.
    let audit =
        ukey_agent::audit::AuditWriter::open(&config.state_dir, config.audit.max_file_bytes)
            .map_err(|e| DemoError::Agent(e.to_string()))?;
    let shutdown = CancellationToken::new();
    let mut agent = tokio::spawn(ukey_agent::daemon::run(config, audit, shutdown.clone()));
    let online = platform.wait_until("the agent's birth message", AGENT_START_TIMEOUT, |r| {
        r.current_presence(&station)
            .filter(|p| p.status == PresenceStatus::Online)
            .map(|_| ())
    });
    let interrupted = tokio::select! {
        waited = online => {
            waited?;
            false
        }
        ended = &mut agent => {
            let why = match ended {
                Ok(Ok(())) => "it stopped before it was online".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            return Err(DemoError::Agent(why));
        }
        () = interrupt.cancelled() => true,
    };
    if interrupted {
        if let Some(why) = stop_agent(&shutdown, &mut agent).await {
            tracing::warn!("the agent, stopped while starting: {why}");
        }
        platform.shutdown().await;
        return Ok(None);
    }
    Ok(Some(Station {
        platform,
        station,
        agent,
        shutdown,
        broker,
        setup: started.elapsed(),
        panel,
    }))
}

/// Broker, platform, agent, desk; then the agent and the platform stop. `None` when
/// interrupted before the desk started.
#[allow(clippy::too_many_arguments)]
async fn produce(
    args: &DemoArgs,
    root: &Path,
    files: &Path,
    module: &Path,
    rack: Option<&Rack>,
    progress: &Progress,
    interrupt: &Interrupt,
    started: Instant,
) -> Result<Option<Produced>, DemoError> {
    let Some(mut station) = start_station(
        args.broker.as_ref(),
        root,
        files,
        module,
        rack,
        started,
        interrupt,
    )
    .await?
    else {
        return Ok(None);
    };

    let plan = DeskPlan {
        tokens: args.tokens as usize,
        slots: args.slots as usize,
        algorithm: args.alg.algorithm(),
        latency: args.latency.profile(),
        faults: args.faults,
        station: station.station.clone(),
    };
    progress.note(&header(
        args,
        &plan,
        module,
        &station.broker,
        rack.is_some(),
        station.setup,
    ));
    let tokens = match rack {
        Some(r) => Tokens::Rack(r),
        None => Tokens::Module,
    };
    let agent = &station.agent;
    let run = Desk::new(&station.platform, tokens, plan, progress)
        .run(|| !agent.is_finished(), interrupt.token())
        .await;
    progress.finish();
    if let Some(signal) = interrupt.signal() {
        progress.note(&progress.yellow(&signal.stopping()));
    }
    // What the desk staff see on the rack's lights at the end, taken once they show the
    // final slot table (before the agent stops and turns them off).
    let (panel_row, panel_settled) = match (&run, rack) {
        (Ok(run), Some(rack)) if interrupt.signal().is_none() && !station.agent.is_finished() => {
            let (row, settled) = settled_lights(&mut station, rack, &run.results).await;
            (row, Some(settled))
        }
        _ => (station.panel.as_ref().map(|p| p.row()), None),
    };

    // The agent stops as `ukey-agent run` does on SIGTERM.
    let agent_error = station.stop_agent().await;
    let mut run = match run {
        Ok(run) => run,
        Err(e) => {
            station.platform.shutdown().await;
            return Err(e);
        }
    };
    let records = station.platform.snapshot();
    if run.interrupted {
        desk::settle(&mut run, &records);
    }
    let pins = run
        .results
        .iter()
        .filter_map(|r| r.serial.as_ref())
        .filter_map(|s| station.platform.user_pin(s).map(|p| (s.to_string(), p)))
        .collect();
    station.platform.shutdown().await;
    Ok(Some(Produced {
        panel_row,
        panel_settled,
        run,
        records,
        pins,
        broker: station.broker.clone(),
        setup: station.setup,
        agent_error,
    }))
}

/// The rack's lights once they show the final slot table: each slot holding a token shows
/// how that token ended (`done`, `failed`), an empty slot is dark. Waits for the emulated
/// board to apply the agent's lines, at most [`PANEL_SETTLE_TIMEOUT`]; returns the row and
/// whether it settled.
async fn settled_lights(
    station: &mut Station,
    rack: &Rack,
    results: &[TokenResult],
) -> (Option<String>, bool) {
    let Some(panel) = station.panel.take() else {
        return (None, false);
    };
    let want: Vec<Option<Light>> = (0..panel.info().slots)
        .map(|slot| {
            let Ok(held) = rack.serial_in(usize::from(slot)) else {
                // The rack cannot say: any light will do.
                return None;
            };
            let Some(serial) = held else {
                return Some(Light::Off);
            };
            let last = results
                .iter()
                .rev()
                .find(|r| r.serial.as_ref().map(|s| s.as_str()) == Some(serial.as_str()))?;
            Some(match last.outcome {
                Outcome::Succeeded => Light::Done,
                Outcome::Failed(_) => Light::Failed,
                Outcome::Interrupted(_) => Light::Working,
            })
        })
        .collect();
    let waited = tokio::task::spawn_blocking(move || {
        let settled = panel.wait_lights(
            |lights| {
                want.iter()
                    .zip(lights)
                    .all(|(want, light)| want.is_none_or(|w| w == *light))
            },
            PANEL_SETTLE_TIMEOUT,
        );
        (panel, settled)
    })
    .await;
    match waited {
        Ok((panel, settled)) => {
            let (lights, ok) = match settled {
                Ok(lights) => (lights, true),
                Err(lights) => {
                    tracing::warn!(
                        "the panel's lights did not show the final slot table within {PANEL_SETTLE_TIMEOUT:?}"
                    );
                    (lights, false)
                }
            };
            station.panel = Some(panel);
            (Some(hsm_sim::panel::row(&lights)), ok)
        }
        Err(e) => {
            tracing::warn!("waiting for the panel's lights: {e}");
            (None, false)
        }
    }
}

fn header(
    args: &DemoArgs,
    plan: &DeskPlan,
    module: &Path,
    broker: &str,
    rack: bool,
    setup: Duration,
) -> String {
    let tokens = if rack {
        format!(
            "{}, rack of {}, latency {}",
            plural(plan.tokens, "blank token"),
            plural(plan.slots, "slot"),
            plan.latency.name()
        )
    } else {
        format!(
            "{} on the blank tokens of {}",
            plural(plan.tokens, "job"),
            module.display()
        )
    };
    format!(
        "ukey-station demo: {tokens}, {} keys{}\n  broker {broker}, simulated platform with a test CA, agent online after {:.2} s",
        plan.algorithm.as_str(),
        if args.faults { ", scripted faults" } else { "" },
        setup.as_secs_f64()
    )
}

/// `1 slot`, `4 slots`.
fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn summarize(
    args: &DemoArgs,
    produced: &Produced,
    checks: &[Check],
    module: &Path,
    kept: Option<&PathBuf>,
    interrupted: Option<Signal>,
) -> Summary {
    let rack_mode = args.module.is_none();
    let mut tokens = Vec::new();
    for r in &produced.run.results {
        let serial = r.serial.as_ref().map(ToString::to_string);
        let check = serial
            .as_ref()
            .and_then(|s| checks.iter().find(|c| c.serial == *s));
        let doc = r.job.as_ref().and_then(|j| j.document());
        let mut certificates: Vec<CertSummary> = Vec::new();
        for label in KeyLabel::ALL {
            let on_token = check.and_then(|c| {
                c.certificates
                    .iter()
                    .find(|(l, _)| l == label.as_str())
                    .map(|(_, der)| der.clone())
            });
            let issued = r.job.as_ref().and_then(|j| j.issued()).and_then(|certs| {
                certs
                    .iter()
                    .find(|c| c.label == label)
                    .map(|c| c.certificate.as_bytes().to_vec())
            });
            if let Some(der) = on_token.or(issued) {
                certificates.push(CertSummary::of(label.as_str(), &der));
            }
        }
        let (state, error) = match &r.outcome {
            Outcome::Succeeded => ("succeeded", None),
            Outcome::Failed(why) => ("failed", Some(why.clone())),
            Outcome::Interrupted(why) => ("interrupted", Some(why.clone())),
        };
        let verified = matches!(r.outcome, Outcome::Succeeded) && check.is_some_and(Check::ok);
        let mut problems = check.map(|c| c.problems.clone()).unwrap_or_default();
        if matches!(r.outcome, Outcome::Succeeded) && check.is_none() {
            problems.push(match interrupted {
                Some(_) => "not checked: the run was interrupted".to_owned(),
                None => "not checked".to_owned(),
            });
        }
        tokens.push(TokenSummary {
            slot: if rack_mode {
                Some(r.position as u64)
            } else {
                check.and_then(|c| c.slot)
            },
            serial: serial.clone(),
            job_id: r.job.as_ref().map(|j| j.job_id().to_string()),
            company: doc.map(|d| d.enterprise.name.clone()),
            credit_code: doc.map(|d| d.enterprise.credit_code.to_string()),
            order_number: doc.map(|d| d.order_number.clone()),
            state,
            error,
            duration_ms: r.duration.map(ms),
            user_pin: serial.as_ref().and_then(|s| {
                produced
                    .pins
                    .iter()
                    .find(|(p, _)| p == s)
                    .map(|(_, pin)| pin.expose_secret().to_owned())
            }),
            certificates,
            verified,
            verification_problems: problems,
        });
    }
    let faults: Vec<FaultSummary> = produced
        .run
        .faults
        .iter()
        .map(|f| FaultSummary {
            fault: f.kind.as_str(),
            serial: f.serial.clone(),
            job_id: f.job_id.as_ref().map(ToString::to_string),
            caught: f.caught,
            recovered: f.recovered,
            detail: f.detail.clone(),
        })
        .collect();
    let requested = args.tokens as usize;
    let produced_n = tokens.iter().filter(|t| t.state == "succeeded").count();
    let verified = tokens.iter().filter(|t| t.verified).count();
    let faults_ok =
        !args.faults || (faults.len() == 2 && faults.iter().all(|f| f.caught && f.recovered));
    let ok = produced.run.aborted.is_none()
        && produced_n == requested
        && verified == requested
        && faults_ok;
    // The platform's view must agree: no protocol problem in any job.
    let problems: usize = produced.records.jobs().map(|j| j.problems().len()).sum();
    let ok = ok && problems == 0;
    Summary {
        ok,
        tokens_requested: requested,
        tokens_produced: produced_n,
        tokens_verified: verified,
        algorithm: args.alg.algorithm().as_str(),
        latency: rack_mode.then(|| args.latency.profile().name()),
        slots: rack_mode.then_some(args.slots as usize),
        module: module.display().to_string(),
        broker: produced.broker.clone(),
        dir: kept.map(|d| d.display().to_string()),
        setup_ms: ms(produced.setup),
        makespan_ms: ms(produced.run.makespan),
        slowest_token_ms: tokens.iter().filter_map(|t| t.duration_ms).max(),
        aborted: match interrupted {
            Some(signal) => Some(format!("interrupted by {}", signal.name())),
            None => produced.run.aborted.clone(),
        }
        .or_else(|| {
            (problems > 0).then(|| format!("the platform saw {problems} protocol problem(s)"))
        }),
        interrupted: interrupted.map(Signal::name),
        tokens,
        faults,
        panel: produced.panel_row.clone(),
        panel_settled: produced.panel_settled,
    }
}
