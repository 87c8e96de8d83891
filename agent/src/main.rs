//! The `ukey-agent` binary: a thin shell over the `ukey_agent` library.
#![forbid(unsafe_code)]

fn main() {}
