//! `ukey-protocol`: the messages a ukey-station desk and the platform exchange over MQTT.
//!
//! Pure: no IO, no async runtime. See `docs/PROTOCOL.md`.
#![forbid(unsafe_code)]

pub mod keys;

pub use keys::{KeyAlgorithm, KeyLabel};
