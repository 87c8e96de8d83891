//! `ukey-agent`: the production-desk daemon that turns blank Ukeys into finished ones.
//!
//! See `docs/DESIGN.md` for the data flow: the desk (slot table), the link to the platform
//! (MQTT with a durable outbox), the job journal, and one PKCS#11 worker per token.
// `deny`, not `forbid`: the one module that calls a vendor's SKF library through C
// (`skf::ffi`) allows it for itself; nothing else may.
#![deny(unsafe_code)]

pub mod audit;
pub mod certs;
pub mod config;
pub mod control;
pub mod daemon;
pub mod desk;
pub mod device;
pub mod job;
pub mod job_keys;
pub mod journal;
pub mod link;
pub mod logging;
pub mod outbox;
pub mod panel;
pub mod private_files;
pub mod rack;
pub mod reload;
pub mod skf;
pub mod status;
pub mod steps;
pub mod stuck;
pub mod systemd;
pub mod token;
pub mod trust;
pub mod usb;
pub mod worker;
