//! Presence: the station's retained birth and death messages on `{p}/stations/{sid}/presence`.
//!
//! On every connection the station increments `seq`, registers the `offline` message with
//! that `seq` as its MQTT will, and publishes the `online` message with the same `seq`,
//! retained. The platform keeps the highest `seq`; for equal `seq`, `offline` wins. So a late
//! will of an old connection never marks a newer connection offline.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::codec::{Message, V1, check_text, check_utc, rfc3339};
use crate::error::ProtocolError;
use crate::ids::StationId;

/// Birth or death.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// Birth: the station is connected.
    Online,
    /// Death: the station left (the will, or a clean goodbye).
    Offline,
}

/// Station → platform, retained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Protocol version.
    pub v: V1,
    /// The station.
    pub station_id: StationId,
    /// Online or offline.
    pub status: PresenceStatus,
    /// Connection sequence number; birth and will of one connection share it.
    pub seq: u64,
    /// The agent's version (1-64 characters).
    pub agent_version: String,
    /// When the connection started (UTC); for the will, too, since a will is fixed at connect.
    #[serde(with = "rfc3339")]
    pub at: OffsetDateTime,
}

impl Message for Presence {
    const NAME: &'static str = "presence";
    const MAX_BYTES: usize = 4 * 1024;

    fn validate(&self) -> Result<(), ProtocolError> {
        self.station_id.check("station_id")?;
        check_text("agent_version", &self.agent_version, 64)?;
        check_utc("at", &self.at)
    }
}

impl Presence {
    /// Whether this message supersedes `other` for the platform's view of the station.
    pub fn supersedes(&self, other: &Presence) -> bool {
        self.seq > other.seq
            || (self.seq == other.seq
                && self.status == PresenceStatus::Offline
                && other.status == PresenceStatus::Online)
    }
}
