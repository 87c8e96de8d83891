//! The token layer: PKCS#11 over cryptoki, blocking, one [`Token`] per Ukey — the PKCS#11
//! implementation of the device seam ([`crate::device`]: [`Module`] is a
//! [`crate::device::DeviceLibrary`], [`Token`] a [`crate::device::Device`], in `seam.rs`).
//!
//! - [`Module`]: a PKCS#11 module loaded by path, initialized once per process, its present
//!   tokens ([`PresentToken`]) found by serial (invariant 1).
//! - [`Token`]: one token: init (guarded by [`Authorization`], invariant 2), PINs, key
//!   generation with read-back checks, public keys, objects, certificates (only a
//!   [`crate::certs::VerifiedCertificate`] is written, invariant 3), CSRs signed on the token
//!   ([`TokenSigner`]), and the activation self-test.
//! - [`TokenError`]: the one error type of this layer (and of the seam).
//!
//! One file per facet of [`Token`]: `session.rs` (session, login, init, PINs), `objects.rs`
//! (finding, listing, destroying objects), `keys.rs` (key pairs and public keys),
//! `certificates.rs`, `signer.rs` (CSRs), `selftest.rs` (activation).
//!
//! Everything here blocks; async code reaches a token through [`crate::worker::TokenWorker`].
//! This layer knows nothing of jobs, MQTT or the journal.

mod certificates;
mod error;
mod handles;
mod keys;
pub mod meter;
mod module;
mod objects;
mod seam;
mod selftest;
mod session;
mod signer;

/// PINs are passed as `SecretString` (no printing `Debug`, zeroized on drop).
pub use secrecy::SecretString;

pub use error::{PinOwner, TokenError, TriesLeft, ckr_name, function_name};
pub use module::{Module, PresentToken, SlotSurvey, TokenFlags, UnreadableSlot};
pub use objects::{ObjectInfo, ObjectKind};
pub use selftest::KeySelfTest;
pub use session::{Authorization, MAX_TOKEN_LABEL, Token};
pub use signer::{
    SHA256_DIGEST_INFO_PREFIX, TokenPublicKey, TokenSignature, TokenSigner, signature_algorithm,
};
