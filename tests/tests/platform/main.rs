//! The simulated platform over a real Mosquitto: its jobs, events and acks, and its test CA.
//!
//! One module per group of tests; nextest runs each test in its own process.

#[path = "../platform_station/mod.rs"]
mod platform_station;

mod certificates;
mod jobs;
