//! Log output: human-readable lines by default, JSON lines on request, filtered by the
//! configuration's `log_level` or, without it, by `RUST_LOG` (default `info`).
//!
//! The filter can be replaced while the agent runs ([`LogControl::set_level`]): SIGHUP
//! re-reads the configuration and applies a changed `log_level` at once.
//!
//! What is logged is decided where events happen; secrets never reach a log call because
//! their types (`Zeroizing`, `SecretString`, the protocol's redacting newtypes) do not print.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::LogFormat;

/// The filter when neither `log_level` nor `RUST_LOG` says otherwise.
pub const DEFAULT_LEVEL: &str = "info";

/// Replaces the running log filter.
#[derive(Debug, Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
}

/// The filter for `log_level` (the configuration's key): its directives when set, else
/// `RUST_LOG`'s, else [`DEFAULT_LEVEL`]. Fails with the parser's words on bad directives.
pub fn filter_for(log_level: Option<&str>) -> Result<EnvFilter, String> {
    match log_level {
        Some(directives) => EnvFilter::try_new(directives).map_err(|e| e.to_string()),
        None => {
            Ok(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LEVEL)))
        }
    }
}

/// What the filter shows, for a log line: the directives of `log_level`, or where they came
/// from.
pub fn describe(log_level: Option<&str>) -> String {
    match (log_level, std::env::var("RUST_LOG")) {
        (Some(directives), _) => directives.to_owned(),
        (None, Ok(env)) => format!("{env} (RUST_LOG)"),
        (None, Err(_)) => format!("{DEFAULT_LEVEL} (default)"),
    }
}

impl LogControl {
    /// Applies `log_level` (see [`filter_for`]) from now on.
    pub fn set_level(&self, log_level: Option<&str>) -> Result<(), String> {
        let filter = filter_for(log_level)?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

/// Installs the global subscriber on stderr, filtered by `log_level` (see [`filter_for`];
/// `check-config` has refused bad directives, and they fall back to the default here).
/// Returns the control that changes the filter later, or `None` when a subscriber was
/// installed already (a second call leaves the first in place).
pub fn init(format: LogFormat, log_level: Option<&str>) -> Option<LogControl> {
    let filter = filter_for(log_level).unwrap_or_else(|_| EnvFilter::new(DEFAULT_LEVEL));
    let (filter, handle) = reload::Layer::new(filter);
    let output = match format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .ok()
        .map(|()| LogControl { handle })
}
