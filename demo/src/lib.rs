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
//! with the variable set ([`folder::ensure_module_env`]) before anything else runs.
//!
//! Files: with `--dir D` the rack's state is `D` itself (inspect it afterwards with
//! `HSM_SIM_DIR=D pkcs11-tool …` or `hsm-sim --dir D list`) and the demo's own files (agent
//! configuration, state, trust files, log) are in `D/demo`; without it everything lives in a
//! temporary folder that is removed at the end (kept when the run fails, for its log).
//!
//! Ctrl-C and SIGTERM ([`interrupt`]): the first stops the run where it is — no more tokens
//! or jobs, the agent stopped as on SIGTERM (bounded by [`station::AGENT_STOP_TIMEOUT`]), no
//! verification pass, a partial summary, the temporary folder removed — and the process
//! exits with 130 or 143 ([`DemoError::Interrupted`]); a second one quits at once.
//!
//! Where things are: the command line in [`cli`], the demo's folder and module in
//! [`folder`], the running broker, platform and agent in [`station`], the production
//! scenario in [`production`] (with [`desk`] playing the staff), the lifecycle scenario in
//! [`lifecycle`]; [`run`] here ties them together and decides the exit.
//!
//! It is a simulation end to end: never point it at a real platform or real tokens.

mod broker;
mod cli;
mod desk;
pub mod desk_builder;
mod error;
mod folder;
mod interrupt;
mod lifecycle;
mod production;
mod progress;
mod report;
mod station;
mod verify;

use std::path::Path;
use std::time::{Duration, Instant};

pub use cli::{Alg, BrokerAddr, DemoArgs, Latency, Scenario};
pub use error::DemoError;

use desk::Outcome;
use folder::{
    TempFolder, ensure_module_env, init_logging, keep_for_log, module_next_to_binary, prepare,
};
use hsm_sim::rack::RackConfig;
use interrupt::{Interrupt, Signal};
use production::{produce, production_report, summarize, verify_all};
use progress::{Progress, ProgressKind};
use verify::Expectation;

/// The file name of hsm-sim's PKCS#11 module next to the binary.
pub const MODULE_FILE: &str = "libhsm_sim.so";

/// The folder inside the demo's folder that holds the demo's own files.
const FILES: &str = "demo";

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
        let ended = lifecycle::run_lifecycle(
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

/// How the agent ended, for the interruption line.
pub(crate) fn agent_stop_text(agent_error: Option<&str>) -> String {
    match agent_error {
        None => "the agent stopped".to_owned(),
        Some(e) => format!("the agent: {e}"),
    }
}

/// The end of an interrupted run: the temporary folder is removed (a kept `--dir` is
/// named), and the error carries the one line `main` prints.
pub(crate) fn interrupted(
    signal: Signal,
    what: String,
    temp: Option<TempFolder>,
    root: &Path,
) -> DemoError {
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

/// `1 slot`, `4 slots`.
pub(crate) fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}
