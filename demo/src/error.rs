//! The demo's error type: what can stop `ukey-demo` before or while it runs a desk.
//!
//! A token that fails is not an error here: it is a result, reported in the summary (and
//! the run ends with [`DemoError::Incomplete`]).

use std::path::PathBuf;

use ukey_platform_sim::PlatformError;

/// Why the demo could not run, or did not produce every token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// The PKCS#11 module is not where the demo looks for it.
    #[error("the PKCS#11 module {path} does not exist: {hint}")]
    ModuleMissing {
        /// Where it was looked for.
        path: PathBuf,
        /// How to get it.
        hint: &'static str,
    },
    /// The demo's folder cannot be used.
    #[error("{path}: {reason}")]
    Folder {
        /// The folder or file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The embedded MQTT broker did not start.
    #[error("embedded MQTT broker: {0}")]
    Broker(String),
    /// The simulated platform failed.
    #[error("simulated platform: {0}")]
    Platform(#[from] PlatformError),
    /// The virtual rack failed.
    #[error("virtual rack: {0}")]
    Rack(#[from] hsm_sim::Error),
    /// The agent could not start or stopped with an error.
    #[error("agent: {0}")]
    Agent(String),
    /// The verification pass could not reach the module at all.
    #[error("verification through {module}: {reason}")]
    Verify {
        /// The module.
        module: PathBuf,
        /// Why.
        reason: String,
    },
    /// The async runtime did not start.
    #[error("async runtime: {0}")]
    Runtime(String),
    /// The demo's own PKCS#11 context (the lifecycle's keypad) could not reach the module.
    #[error("the demo's own PKCS#11 context on {module}: {reason}")]
    Keypad {
        /// The module.
        module: PathBuf,
        /// Why.
        reason: String,
    },
    /// Options that do not go with the chosen scenario.
    #[error("{0}")]
    Scenario(String),
    /// Not every phase of `--scenario lifecycle` ended as expected (the summary says which).
    #[error("{phases_ok} of 6 lifecycle phases ended as expected")]
    Lifecycle {
        /// Phases that ended as expected.
        phases_ok: usize,
    },
    /// Not every token was produced and verified (the summary says which and why).
    #[error("{verified} of {requested} tokens produced and verified")]
    Incomplete {
        /// Tokens asked for.
        requested: usize,
        /// Tokens produced and verified.
        verified: usize,
    },
    /// Stopped by SIGINT (Ctrl-C) or SIGTERM: the demo stopped the agent, printed what it
    /// had and exits with `128 + the signal number`.
    #[error("interrupted ({signal}): {report}")]
    Interrupted {
        /// `SIGINT` or `SIGTERM`.
        signal: &'static str,
        /// The process's exit status: 130 for SIGINT, 143 for SIGTERM.
        status: u8,
        /// How far the run got and what was cleaned up, in one line.
        report: String,
    },
}

impl DemoError {
    /// The exit status the `ukey-demo` process ends with: `128 + the signal number` when
    /// interrupted, else 1.
    pub fn exit_status(&self) -> u8 {
        match self {
            DemoError::Interrupted { status, .. } => *status,
            _ => 1,
        }
    }

    pub(crate) fn folder(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> DemoError {
        DemoError::Folder {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}
