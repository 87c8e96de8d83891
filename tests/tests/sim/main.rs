//! hsm-sim, the virtual hardware: its CLI and several processes on one rack, what only it can do
//! (hot-plug, lockout, removal), and its emulated indicator panel as a process.
//!
//! One module per group of tests; nextest runs each test in its own process.

#[path = "../sim_common/mod.rs"]
mod sim_common;

mod cli_and_processes;
mod panel_cli;
mod virtual_token;
