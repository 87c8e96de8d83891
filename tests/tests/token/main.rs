//! The agent's token side against real PKCS#11 modules (hsm-sim and SoftHSM2): its token layer
//! and workers, the device seam, and the module behaviour it relies on on both.
//!
//! One module per group of tests; nextest runs each test in its own process.

#[path = "../sim_common/mod.rs"]
mod sim_common;

mod agent_token_layer;
mod device_seam;
mod module_parity;
mod skf_library;
