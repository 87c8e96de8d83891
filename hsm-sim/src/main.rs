//! The `hsm-sim` command-line tool.
#![forbid(unsafe_code)]

fn main() {}
