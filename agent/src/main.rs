//! The `ukey-agent` binary: a thin shell over the `ukey_agent` library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
///   /var/lib/ukey-agent/         state: job journal and event outbox (state_dir)
///
/// EXIT STATUS
///   0 success; 1 runtime failure; 2 bad command line; 3 invalid configuration.
///
/// ENVIRONMENT
///   RUST_LOG   log filter (default "info"), e.g. RUST_LOG=ukey_agent=debug
#[derive(Debug, Parser)]
#[command(name = "ukey-agent", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match Config::load_checked(path) {
        Ok(config) => {
            println!(
                "{}: valid (station {}, broker {}:{}, {} model(s))",
                path.display(),
                config.station_id,
                config.broker.host,
                config.broker.port(),
                config.models.len()
            );
            ExitCode::SUCCESS
        }
        Err(ukey_agent::config::ConfigError::Invalid { path, problems }) => {
            eprintln!("{}: {} problem(s):", path.display(), problems.len());
            for p in problems {
                eprintln!("  {p}");
            }
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(3)
        }
    }
}
