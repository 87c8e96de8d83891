//! The `hsm-sim` command-line tool: parses arguments and hands them to `hsm_sim::cli`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match run(hsm_sim::cli::Cli::parse()) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hsm-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: hsm_sim::cli::Cli) -> anyhow::Result<String> {
    Ok(hsm_sim::cli::run(cli)?)
}
