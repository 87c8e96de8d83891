//! The simulated platform's error type.
//!
//! One enum for everything the platform can fail at: keys and files, certificate building,
//! the protocol crate, MQTT, and waiting. A *refusal to issue* is not an error: it is a
//! [`ukey_protocol::CertRejection`] sent to the station.

use std::path::PathBuf;
use std::time::Duration;

use ukey_protocol::{JobId, ProtocolError, StationId, TokenSerial};

/// Why the simulated platform could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    /// Reading or writing a key, certificate or trust file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key or certificate could not be generated, encoded or parsed.
    #[error("{what}: {detail}")]
    Key {
        /// Which key or certificate.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// The protocol crate refused a message, a key or a value.
    #[error("{what}: {source}")]
    Protocol {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: ProtocolError,
    },
    /// The MQTT client failed.
    #[error("MQTT: {detail}")]
    Mqtt {
        /// Why.
        detail: String,
    },
    /// A wait ran out of time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it waited.
        after: Duration,
    },
    /// A job needs the SO PIN of a token the platform never saw bound.
    #[error("no SO PIN known for token {serial}: it was never bound through this platform")]
    UnknownToken {
        /// The token.
        serial: TokenSerial,
    },
    /// A job needs to seal to a station whose key the platform does not know.
    #[error("no key known for station {station}: write its trust files first")]
    UnknownStation {
        /// The station.
        station: StationId,
    },
    /// The job is not one this platform made.
    #[error("job {job_id} is unknown to the platform")]
    UnknownJob {
        /// The job.
        job_id: JobId,
    },
    /// A job ended in another state than the one awaited.
    #[error("job {job_id} ended {state} at step {step}{}", error.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    JobEnded {
        /// The job.
        job_id: JobId,
        /// Its terminal state.
        state: ukey_protocol::ExecutionState,
        /// The step of its last event.
        step: ukey_protocol::Step,
        /// The event's error code and message, if any.
        error: Option<String>,
    },
    /// The platform has been shut down.
    #[error("the platform has been shut down")]
    Stopped,
}

impl PlatformError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> PlatformError {
        PlatformError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn key(what: &'static str, detail: impl std::fmt::Display) -> PlatformError {
        PlatformError::Key {
            what,
            detail: detail.to_string(),
        }
    }

    pub(crate) fn protocol(what: &'static str, source: ProtocolError) -> PlatformError {
        PlatformError::Protocol { what, source }
    }
}
