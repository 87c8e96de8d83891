//! The platform's acknowledgement of step events, by event id, on `{p}/stations/{sid}/acks`.
//!
//! Signed by the platform ([`crate::signed::verify_platform_message`]): the payload names the
//! station, and each event id is bound to its job (`SHA-256(job_id/seq)`), so an ack can be
//! neither forged nor replayed to another station.
//!
//! An event leaves the station's outbox only when an `Ack` names it: a broker's PUBACK says
//! nothing about the platform. Acks are idempotent: acknowledging an unknown or already
//! removed event id is not an error.

use serde::{Deserialize, Serialize};

use crate::codec::{Message, V1, check_len};
use crate::error::{Problem, ProtocolError};
use crate::ids::{EventId, StationId};

/// Most event ids in one ack.
pub const MAX_ACK_IDS: usize = 256;

/// Platform → station: these events are stored (and de-duplicated) on the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Protocol version.
    pub v: V1,
    /// The station whose events these are.
    pub station_id: StationId,
    /// 1-256 distinct event ids.
    pub event_ids: Vec<EventId>,
}

impl Message for Ack {
    const NAME: &'static str = "ack";
    const MAX_BYTES: usize = 32 * 1024;

    fn validate(&self) -> Result<(), ProtocolError> {
        self.station_id.check("station_id")?;
        if self.event_ids.is_empty() {
            return Err(ProtocolError::invalid("event_ids", Problem::NoEntries));
        }
        check_len("event_ids", &self.event_ids, MAX_ACK_IDS)?;
        for (i, id) in self.event_ids.iter().enumerate() {
            id.check(&format!("event_ids[{i}]"))?;
            if self.event_ids[..i].contains(id) {
                return Err(ProtocolError::invalid(
                    format!("event_ids[{i}]"),
                    Problem::Duplicate,
                ));
            }
        }
        Ok(())
    }
}
