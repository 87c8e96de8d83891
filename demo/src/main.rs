//! The `ukey-demo` command: parses the command line and hands it to [`ukey_demo::run`].
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use ukey_demo::{DemoArgs, DemoError};

fn main() -> ExitCode {
    match run(DemoArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ukey-demo: {e}");
            // 128 + the signal number when interrupted, else 1.
            ExitCode::from(
                e.downcast_ref::<DemoError>()
                    .map_or(1, DemoError::exit_status),
            )
        }
    }
}

fn run(args: DemoArgs) -> anyhow::Result<()> {
    ukey_demo::run(args)?;
    Ok(())
}
