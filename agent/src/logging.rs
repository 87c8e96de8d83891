//! Log output: human-readable lines by default, JSON lines on request, filtered by `RUST_LOG`.
//!
//! What is logged is decided where events happen; secrets never reach a log call because
//! their types (`Zeroizing`, `SecretString`, the protocol's redacting newtypes) do not print.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber on stderr. Calling it twice is harmless (the second call
/// leaves the first subscriber in place).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
