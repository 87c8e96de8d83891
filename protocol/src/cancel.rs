//! The platform's cancellation of a job, on `{p}/stations/{sid}/jobs/{jid}/cancel`.
//!
//! Signed by the platform ([`crate::signed::verify_platform_message`]); the payload names the
//! station and the job.
//!
//! A queued job is dropped; a running job stops at its next safe step (never in the middle of
//! a token write) and reports `canceled`. A job already finished ignores it.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::codec::{Message, V1, check_text, check_utc, rfc3339};
use crate::error::ProtocolError;
use crate::ids::{JobId, StationId};

/// Platform → station: stop this job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// Protocol version.
    pub v: V1,
    /// The station the job runs on.
    pub station_id: StationId,
    /// The job; must equal the job id in the topic.
    pub job_id: JobId,
    /// Why (1-512 characters), reported back in the `canceled` event.
    pub reason: String,
    /// When the platform canceled (UTC).
    #[serde(with = "rfc3339")]
    pub at: OffsetDateTime,
}

impl Message for Cancel {
    const NAME: &'static str = "cancel";
    const MAX_BYTES: usize = 4 * 1024;

    fn validate(&self) -> Result<(), ProtocolError> {
        self.station_id.check("station_id")?;
        self.job_id.check("job_id")?;
        check_text("reason", &self.reason, 512)?;
        check_utc("at", &self.at)
    }
}
