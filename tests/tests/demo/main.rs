//! `ukey-demo` run as the built binary: its runs and summaries, and how it stops on a signal.
//!
//! One module per group of tests; nextest runs each test in its own process.

mod runs;
mod signals;
