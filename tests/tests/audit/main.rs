//! The audit log's command line (`ukey-agent audit`).
//!
//! One module per group of tests; nextest runs each test in its own process.

mod cli;
mod receipts;
