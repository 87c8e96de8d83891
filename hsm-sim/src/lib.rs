//! `hsm-sim`: a simulated production desk — a virtual Ukey rack behind a real PKCS#11 module.

pub mod platform;
