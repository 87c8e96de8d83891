//! The agent (`ukey-agent`) end to end as a process: production, faults, lifecycle jobs, the desk's
//! panel and models, its journal, its host (signals, status) and stuck calls.
//!
//! One module per group of tests; nextest runs each test in its own process.

mod admission;
mod canary;
mod damaged_token;
mod desk_panel_and_models;
mod faults;
mod forged_messages;
mod host_process;
mod job_secrets;
mod journal_compaction;
mod lifecycle;
mod production;
mod rack_positions;
mod redelivery;
mod stuck_call;
mod unconfirmed_binding;
