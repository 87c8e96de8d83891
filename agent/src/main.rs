//! The `ukey-agent` binary: a thin shell over the `ukey_agent` library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod audit_cli;
use ukey_agent::audit::{AuditEvent, AuditWriter};
use ukey_agent::config::Config;

/// ukey-agent — the production desk daemon of ukey-station.
///
/// The agent watches the desk's USB ports for Ukeys, claims production jobs that the platform
/// sends over MQTT, personalizes each token over PKCS#11 (initialize, generate key pairs on
/// the token, request and verify certificates, install, activate, bind) and reports every step
/// to the platform. Step events wait in an on-disk outbox until the platform acknowledges
/// them; jobs are journaled before work starts, so a crash or a power cut loses nothing.
///
/// FILES
///   /etc/ukey-agent/agent.toml   configuration (see ukey-agent.example.toml for every key)
///   /var/lib/ukey-agent/         state: job journal, event outbox, audit log (state_dir)
///
/// EXIT STATUS
///   0 success; 1 runtime failure; 2 bad command line; 3 invalid configuration.
///
/// ENVIRONMENT
///   RUST_LOG   log filter when the configuration has no log_level (default "info"),
///              e.g. RUST_LOG=ukey_agent=debug
///
/// SIGNALS
///   SIGTERM, SIGINT   stop gracefully (see `run`)
///   SIGHUP            re-read the configuration: a changed log_level applies at once;
///                     other changed keys are named in the log and wait for a restart
#[derive(Debug, Parser)]
#[command(name = "ukey-agent", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum JournalCommand {
    /// Accepts the loss of a damaged file's records from the first bad one on: keeps an exact
    /// copy next to it (`<FILE>.damaged-<unix seconds>`), then cuts the file there. Only with
    /// the agent stopped; restoring the state folder from a backup loses less.
    AcceptLoss {
        /// The damaged file, as named in the agent's error.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the desk: watches tokens, takes jobs from the platform, personalizes Ukeys.
    ///
    /// Stops gracefully on SIGTERM or SIGINT: no new claims, running steps reach a safe
    /// point (never cut off in the middle of a token write), events stay in the outbox.
    Run {
        /// The configuration file.
        #[arg(
            long,
            short,
            value_name = "FILE",
            default_value = "/etc/ukey-agent/agent.toml"
        )]
        config: PathBuf,
    },
    /// Shows the running agent at a glance: broker connection, outbox depth, queued and
    /// running jobs, tokens and their states, panel.
    ///
    /// Reads the snapshot the agent refreshes in its state folder every few seconds. Exit
    /// status 0 when the agent is running, 1 when it is not (or the snapshot is stale).
    Status {
        /// The configuration file (for the state folder).
        #[arg(
            long,
            short,
            value_name = "FILE",
            default_value = "/etc/ukey-agent/agent.toml"
        )]
        config: PathBuf,
        /// Print the snapshot as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reads, checks and exports the audit log (state folder, `audit/`).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Who is at the desk: signs an operator in or out of the running agent, which names
    /// them in every receipt and audit entry (through its control socket in the state
    /// folder; refused when no agent runs).
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Repairs the job journal or the outbox log (`journal.log`, `outbox/outbox.log` in the
    /// state folder) after the agent refused to start on damage.
    #[command(subcommand)]
    Journal(JournalCommand),
    /// Reads the configuration and reports every problem, each with its key; changes nothing.
    ///
    /// Exit status 0 when the configuration is valid, 3 when it is not.
    CheckConfig {
        /// The configuration file.
        #[arg(
            long,
            short,
            value_name = "FILE",
            default_value = "/etc/ukey-agent/agent.toml"
        )]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum OperatorCommand {
    /// Signs `ID` in (a staff id: letters, digits, `.`, `_`, `-`, `@`; never an ID-card or
    /// phone number), replacing whoever was signed in. Exit status 0 when signed in, 1 when
    /// refused or no agent runs, 3 when the configuration cannot be read.
    SignIn {
        /// The configuration file (for the state folder).
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The operator's staff id.
        id: String,
    },
    /// Signs the operator out; with `[desk] require_operator = true` the desk then claims
    /// no jobs until someone signs in.
    SignOut {
        /// The configuration file (for the state folder).
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Says who is signed in.
    Show {
        /// The configuration file (for the state folder).
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Checks the hash chain across every file and every receipt's signature (with the
    /// station key of `trust.station_key`), and says where a break is: file, line, what.
    ///
    /// Exit status 0 when the log is intact, 1 when it is not, 3 when the configuration or
    /// the station key cannot be read.
    Verify {
        /// The configuration file (for the state folder and the station key).
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Lists the entries, oldest first, one a line (time, seq, type, token, details).
    Show {
        /// The configuration file (for the state folder).
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Only entries at or after this time (RFC 3339, e.g. 2026-12-01T00:00:00Z).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only entries about this token serial.
        #[arg(long, value_name = "SERIAL")]
        token: Option<String>,
        /// Print the entries as stored (JSON lines).
        #[arg(long)]
        json: bool,
    },
    /// Writes the whole log for an auditor, with the result of `verify`.
    ///
    /// `jsonl` (default): first line `{"verification":…}`, then every entry exactly as
    /// stored (so its hash can be checked again); `json`: one document with `verification`
    /// and `entries`. Exit status 0 when the log is intact, 1 when it is not (the export is
    /// written either way), 3 when the configuration cannot be read.
    Export {
        /// The configuration file (for the state folder and the station key).
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Where to write (default: standard output).
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// `jsonl` or `json`.
        #[arg(long, value_name = "FORMAT", default_value = "jsonl", value_parser = ["jsonl", "json"])]
        format: String,
    },
}

const DEFAULT_CONFIG: &str = "/etc/ukey-agent/agent.toml";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let done = match cli.command {
        Command::Run { config } => run(&config),
        Command::CheckConfig { config } => check_config(&config),
        Command::Status { config, json } => status(&config, json),
        Command::Audit(command) => return audit_cli::run(command),
        Command::Operator(command) => return operator(command),
        Command::Journal(JournalCommand::AcceptLoss { file }) => return accept_loss(&file),
    };
    match done {
        Ok(code) => code,
        Err(failure) => {
            eprint!("{}", failure.report());
            ExitCode::from(failure.exit_status())
        }
    }
}

fn accept_loss(file: &std::path::Path) -> ExitCode {
    match ukey_agent::journal::accept_loss(file) {
        Ok(done) => {
            match &done.copy {
                Some(copy) => println!(
                    "{}: kept {} records, cut {} bytes from the first damaged record on; \
                     the damaged file is kept as {}",
                    file.display(),
                    done.kept_records,
                    done.dropped_bytes,
                    copy.display()
                ),
                None => println!(
                    "{}: no damage found ({} records); nothing changed",
                    file.display(),
                    done.kept_records
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ukey-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn operator(command: OperatorCommand) -> ExitCode {
    use ukey_agent::control::{self, Command as Control};
    let (path, request) = match command {
        OperatorCommand::SignIn { config, id } => (config, Control::SignIn { operator: id }),
        OperatorCommand::SignOut { config } => (config, Control::SignOut),
        OperatorCommand::Show { config } => (config, Control::Show),
    };
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ukey-agent: {e}");
            return ExitCode::from(3);
        }
    };
    // Checked here too, so that a typo is named without a round trip.
    if let Control::SignIn { operator } = &request
        && let Err(why) = control::check_operator(operator)
    {
        eprintln!("ukey-agent: {why}");
        return ExitCode::from(1);
    }
    match control::send(&config.state_dir, &request) {
        Ok(reply) if reply.ok => {
            println!("{}", reply.message);
            ExitCode::SUCCESS
        }
        Ok(reply) => {
            eprintln!("ukey-agent: {}", reply.message);
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("ukey-agent: {e}");
            ExitCode::from(1)
        }
    }
}

/// Why a command failed. Each message names what failed and where (the file, the folder, the
/// part of the agent); [`Failure::exit_status`] is the status `--help` documents.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The configuration file cannot be read, does not parse or is invalid: exit status 3.
    #[error(transparent)]
    Config(#[from] ukey_agent::config::ConfigError),
    /// The async runtime could not start: exit status 1.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The daemon could not start or stopped with an error: exit status 1.
    #[error("the agent stopped: {0}")]
    Daemon(#[from] ukey_agent::daemon::DaemonError),
    /// The audit log cannot be opened (or another agent holds it): exit status 1.
    #[error("cannot open the audit log: {0}")]
    Audit(#[source] ukey_agent::audit::AuditError),
    /// No readable status snapshot in the state folder: exit status 1 (not running).
    #[error(transparent)]
    Status(#[from] ukey_agent::status::StatusError),
}

impl Failure {
    /// 3 for the configuration, 1 for everything else (2 is clap's, for the command line).
    fn exit_status(&self) -> u8 {
        match self {
            Failure::Config(_) => 3,
            Failure::Runtime(_) | Failure::Daemon(_) | Failure::Audit(_) | Failure::Status(_) => 1,
        }
    }

    /// What standard error shows: one line, or for an invalid configuration its file and then
    /// one problem a line (each with its key).
    fn report(&self) -> String {
        match self {
            Failure::Config(ukey_agent::config::ConfigError::Invalid { path, problems }) => {
                let mut text = format!(
                    "ukey-agent: {}: {} problem(s):\n",
                    path.display(),
                    problems.len()
                );
                for p in problems {
                    text += &format!("  {p}\n");
                }
                text
            }
            other => format!("ukey-agent: {other}\n"),
        }
    }
}

fn status(path: &std::path::Path, json: bool) -> Result<ExitCode, Failure> {
    use ukey_agent::status;
    let config = Config::load(path)?;
    let warnings = config.warnings();
    match status::read(&config.state_dir) {
        Ok(snapshot) => {
            let now = status::unix_now();
            if json {
                // The configuration's warnings ride along under a key of their own.
                let mut value = serde_json::to_value(&snapshot).unwrap_or_default();
                if let Some(object) = value.as_object_mut() {
                    object.insert(
                        "config_warnings".into(),
                        warnings
                            .iter()
                            .map(|w| serde_json::json!({"key": w.key, "warning": w.problem}))
                            .collect(),
                    );
                }
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                print!("{}", status::render(&snapshot, now));
                for warning in &warnings {
                    println!("warning: {warning}");
                }
            }
            if status::is_fresh(&snapshot, now) {
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::from(1))
            }
        }
        Err(e) => {
            for warning in &warnings {
                eprintln!("warning: {warning}");
            }
            Err(e.into())
        }
    }
}

fn run(path: &std::path::Path) -> Result<ExitCode, Failure> {
    let config = Config::load_checked(path)?;
    let log = ukey_agent::logging::init(config.log_format, config.log_level.as_deref());
    let reloader = ukey_agent::reload::Reloader::new(path, &config, log);
    // Accepted but unsafe settings are said once, at start (and by `status` for as long as
    // they stay).
    for warning in config.warnings() {
        tracing::warn!(key = %warning.key, "{}", warning.problem);
    }
    // One thread for all async work: the daemon is one task that owns the desk's state, and
    // the link's driver is the only other busy task; every blocking call (PKCS#11, USB,
    // compaction) has its own thread. A single runtime thread spares the cross-thread
    // wake-ups a work-stealing pool costs on every step and every MQTT packet (measured in
    // docs/BENCHMARKS.md).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return Err(Failure::Runtime(e));
        }
    };
    // The audit log is opened before anything runs: a desk that cannot keep it makes no
    // tokens. Its lock refuses a second agent on the same state folder. The daemon records
    // the start, the stop and everything between; appends run on the log's own thread.
    let audit = match AuditWriter::open(&config.state_dir, config.audit.max_file_bytes) {
        Ok(audit) => audit,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the audit log; not starting");
            return Err(Failure::Audit(e));
        }
    };
    let reload_audit = audit.clone();
    let result = runtime.block_on(async {
        // SIGHUP's default action ends the process (systemd's reload would kill the agent
        // mid-job): take it over before anything else runs.
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hangups) => {
                tokio::spawn(reload_on_hangup(hangups, reloader, reload_audit));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGHUP; a reload would stop the agent")
            }
        }
        let shutdown = tokio_util::sync::CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signals.cancel();
        });
        ukey_agent::daemon::run(config, audit, shutdown).await
    });
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            tracing::error!(error = %e, "agent stopped with an error");
            Err(e.into())
        }
    }
}

/// Re-reads the configuration on every SIGHUP (see `ukey_agent::reload`), off the runtime's
/// thread since the check reads the files the configuration names.
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    mut reloader: ukey_agent::reload::Reloader,
    audit: AuditWriter,
) {
    use ukey_agent::reload::Outcome;
    while hangups.recv().await.is_some() {
        let task = tokio::task::spawn_blocking(move || {
            let outcome = reloader.reload_and_log();
            (reloader, outcome)
        });
        match task.await {
            Ok((back, outcome)) => {
                reloader = back;
                // What changed goes into the audit log: names only, never values.
                if !reloader.applied().is_empty() {
                    audit.record(AuditEvent::ConfigChanged {
                        keys: reloader.applied().to_vec(),
                        applied: true,
                    });
                }
                if let Outcome::Applied { refused, .. } = outcome
                    && !refused.is_empty()
                {
                    audit.record(AuditEvent::ConfigChanged {
                        keys: refused,
                        applied: false,
                    });
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: the reload failed; later reloads are ignored");
                // Keep the handler installed: an unhandled SIGHUP would end the agent.
                while hangups.recv().await.is_some() {
                    tracing::warn!("SIGHUP ignored");
                }
                return;
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            // Without signal handlers, Ctrl-C still works through the default handler.
            std::future::pending::<()>().await;
        }
    }
}

fn check_config(path: &std::path::Path) -> Result<ExitCode, Failure> {
    let config = Config::load_checked(path)?;
    let brokers = config
        .broker
        .addresses()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "{}: valid (station {}, broker {brokers}, {} model(s))",
        path.display(),
        config.station_id,
        config.models.len()
    );
    for warning in config.warnings() {
        println!("warning: {warning}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use ukey_agent::config::{ConfigError, ConfigProblem};

    fn invalid() -> Failure {
        Failure::Config(ConfigError::Invalid {
            path: PathBuf::from("/etc/ukey-agent/agent.toml"),
            problems: vec![
                ConfigProblem {
                    key: "trust.ca_certs[0]".to_owned(),
                    problem: "/etc/ukey/ca.pem: no such file".to_owned(),
                },
                ConfigProblem {
                    key: "broker.port".to_owned(),
                    problem: "0 is not a TCP port".to_owned(),
                },
            ],
        })
    }

    #[test]
    fn exit_statuses_say_what_failed() {
        assert_eq!(invalid().exit_status(), 3);
        let unreadable = Failure::Config(ConfigError::Read {
            path: PathBuf::from("/nowhere/agent.toml"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(unreadable.exit_status(), 3);
        let runtime = Failure::Runtime(std::io::Error::other("no threads"));
        assert_eq!(runtime.exit_status(), 1);
        let daemon = Failure::Daemon(ukey_agent::daemon::DaemonError::Journal(
            "record 7: bad seal".to_owned(),
        ));
        assert_eq!(daemon.exit_status(), 1);
    }

    #[test]
    fn reports_name_the_file_and_each_problem() {
        assert_eq!(
            invalid().report(),
            "ukey-agent: /etc/ukey-agent/agent.toml: 2 problem(s):\n  \
             trust.ca_certs[0]: /etc/ukey/ca.pem: no such file\n  \
             broker.port: 0 is not a TCP port\n"
        );
        let unreadable = Failure::Config(ConfigError::Read {
            path: PathBuf::from("/nowhere/agent.toml"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert!(
            unreadable
                .report()
                .starts_with("ukey-agent: cannot read /nowhere/agent.toml: "),
            "{}",
            unreadable.report()
        );
        let daemon = Failure::Daemon(ukey_agent::daemon::DaemonError::Journal(
            "record 7: bad seal".to_owned(),
        ));
        assert_eq!(
            daemon.report(),
            "ukey-agent: the agent stopped: journal: record 7: bad seal\n"
        );
    }
}
