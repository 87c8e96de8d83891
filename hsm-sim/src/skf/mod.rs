//! The rack seen through SKF (GM/T 0016-2012), the interface of most 国密 tokens: the
//! token-side model ([`device`]), the algorithms ([`gm`]), the standard's numbers
//! ([`consts`]) and the per-process semantics of the library ([`engine`]: handles, device
//! authentication, the secure state after `SKF_VerifyPIN`, hot-plug events, faults, latency).
//!
//! The C functions themselves live in the crate `hsm-sim-skf` (`libhsm_sim_skf.so`), a thin
//! shell over [`engine::SkfEngine`], as `crate::pkcs11` is over `crate::engine`.
//!
//! A token is an SKF device when it was inserted with `interface = skf`
//! ([`crate::rack::token::Interface`]); `libhsm_sim.so` then does not see it, and
//! `libhsm_sim_skf.so` sees only such tokens.

pub mod consts;
pub mod device;
pub mod engine;
pub mod gm;
