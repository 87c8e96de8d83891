//! `hsm-sim`: a simulated production desk — a virtual Ukey rack behind a real PKCS#11 module.
//!
//! - [`rack`]: the rack of virtual Ukeys and its state directory (safe Rust, the Rust API
//!   that the CLI, tests and the demo drive).
//! - [`usb`]: the virtual USB bus the agent watches (`usb.json`).
//! - `engine`: the per-process PKCS#11 semantics (sessions, login state, operations).
//! - `pkcs11`: the C ABI (`C_GetFunctionList` and the functions behind it), the only
//!   place with `unsafe`.
//! - [`panel`]: the desk's indicator panel, emulated on a pseudo-terminal.
//! - [`cli`]: the `hsm-sim` command line.
//! - [`demo`]: `hsm-sim demo`, a whole production desk (broker, platform, rack, agent) in one
//!   process.
//! - [`platform`]: the simulated platform (test CA, signed jobs, acknowledgements) that tests
//!   and the demo run the agent against.
//!
//! It is a simulator: key material is stored in plain files. Never put real secrets in it.

pub mod cli;
pub mod demo;
pub mod engine;
mod error;
pub mod panel;
pub mod pkcs11;
pub mod platform;
pub mod rack;
pub mod usb;

pub use error::{Error, Result};
