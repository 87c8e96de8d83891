//! `hsm-sim`: the virtual hardware of a production desk — a virtual Ukey rack behind a real
//! PKCS#11 module, a virtual USB bus and an emulated indicator panel.
//!
//! - [`rack`]: the rack of virtual Ukeys and its state directory (safe Rust, the Rust API
//!   that the CLI, tests and the demo drive).
//! - [`usb`]: the virtual USB bus the agent watches (`usb.json`).
//! - `engine`: the per-process PKCS#11 semantics (sessions, login state, operations).
//! - `pkcs11`: the C ABI (`C_GetFunctionList` and the functions behind it), the only
//!   place with `unsafe`.
//! - [`panel`]: the desk's indicator panel, emulated on a pseudo-terminal.
//! - [`cli`]: the `hsm-sim` command line.
//!
//! It shares nothing with the agent beyond `ukey-protocol`'s contracts (the panel's line
//! codec): it is an independent oracle. The simulated platform is `ukey-platform-sim`, the
//! whole desk in one command `ukey-demo`.
//!
//! It is a simulator: key material is stored in plain files. Never put real secrets in it.

pub mod cli;
pub mod engine;
mod error;
pub mod panel;
pub mod pkcs11;
pub mod rack;
pub mod skf;
pub mod usb;

pub use error::{Error, Result};
