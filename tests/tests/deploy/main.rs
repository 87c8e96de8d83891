//! What ships besides the binaries: install files, the broker's configuration and ACL, and the
//! crates' roles.
//!
//! One module per group of tests; nextest runs each test in its own process.

mod broker_acl;
mod crate_roles;
mod install_files;
