//! The crate's one error type, for the Rust API (rack, USB bus, CLI).
//!
//! The PKCS#11 layer does not use it for its own answers: those are `CK_RV` codes
//! ([`crate::rack::Rv`]). Where a rack operation fails inside a PKCS#11 call, [`Error::rv`]
//! says which code the application sees.

use std::path::PathBuf;

use cryptoki_sys::{CK_RV, CKR_DEVICE_ERROR, CKR_DEVICE_MEMORY};

/// Everything that can go wrong when driving the simulated rack.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file of the state directory could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", "lock", …).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A file of the state directory does not parse.
    #[error("{path} is damaged: {reason}")]
    Corrupt {
        /// The file concerned.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The state directory holds no rack yet.
    #[error("no rack in {dir} (create one with `hsm-sim rack init --slots N`)")]
    NoRack {
        /// The state directory.
        dir: PathBuf,
    },
    /// `rack init` on a directory that already holds a rack.
    #[error("{dir} already holds a rack (pass --force to replace it and forget its tokens)")]
    RackExists {
        /// The state directory.
        dir: PathBuf,
    },
    /// A slot number outside the rack.
    #[error("slot {slot} is out of range: the rack has {slots} slots (0..={last})", last = slots.saturating_sub(1))]
    SlotOutOfRange {
        /// The slot asked for.
        slot: usize,
        /// How many slots the rack has.
        slots: usize,
    },
    /// Insertion into a slot that already holds a token.
    #[error("slot {slot} is occupied by token {serial}")]
    SlotOccupied {
        /// The slot.
        slot: usize,
        /// The token in it.
        serial: String,
    },
    /// Removal from (or a fault on) an empty slot.
    #[error("slot {slot} is empty")]
    SlotEmpty {
        /// The slot.
        slot: usize,
    },
    /// A token serial the rack has never seen.
    #[error("no token with serial {serial} in this rack")]
    UnknownToken {
        /// The serial asked for.
        serial: String,
    },
    /// Insertion of a token that is already plugged into another slot.
    #[error("token {serial} is already inserted in slot {slot}")]
    TokenInUse {
        /// The token.
        serial: String,
        /// Where it is.
        slot: usize,
    },
    /// A serial that is not 16 letters or digits.
    #[error("bad token serial {serial:?}: a serial is exactly 16 ASCII letters or digits")]
    BadSerial {
        /// The serial given.
        serial: String,
    },
    /// A function name that is not a PKCS#11 v2.40 function.
    #[error(
        "unknown function {name:?} (expected a PKCS#11 name such as C_Sign or C_GenerateKeyPair, \
         or an SKF name such as SKF_ECCSignData)"
    )]
    UnknownFunction {
        /// The name given.
        name: String,
    },
    /// A return-code name that is not a known `CKR_` code.
    #[error(
        "unknown return code {name:?} (expected a name such as CKR_DEVICE_ERROR, SAR_FAIL for \
         an SKF function, or a number)"
    )]
    UnknownRv {
        /// The name given.
        name: String,
    },
    /// A latency operation name that is not known.
    #[error("unknown latency operation {name:?} (known: {known})")]
    UnknownLatencyOp {
        /// The name given.
        name: String,
        /// The known names, comma separated.
        known: String,
    },
    /// A latency profile name that is not known.
    #[error("unknown latency profile {name:?} (known: instant, realistic)")]
    UnknownProfile {
        /// The name given.
        name: String,
    },
    /// A vendor profile (`--model`) that is not built in.
    #[error("unknown model {name:?} (known: {known}; `hsm-sim models` describes them)")]
    UnknownModel {
        /// The name given.
        name: String,
        /// The built-in names, comma separated.
        known: String,
    },
    /// A setting with a value that makes no sense (e.g. a PIN minimum above its maximum).
    #[error("invalid setting {name}: {reason}")]
    InvalidSetting {
        /// The setting.
        name: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// A cryptographic operation failed inside the simulator.
    #[error("crypto: {0}")]
    Crypto(String),
    /// Output could not be encoded.
    #[error("cannot encode output: {0}")]
    Encode(String),
    /// The token's object storage is full.
    #[error("token {serial} is full: {reason}")]
    DeviceMemory {
        /// The token.
        serial: String,
        /// Which limit was hit.
        reason: String,
    },
    /// `hsm-sim demo` was asked for: the demo is its own program now.
    #[error(
        "the demo is its own program now: run `cargo run --release -p ukey-demo` (same options), \
         or target/release/ukey-demo"
    )]
    DemoMoved,
}

impl Error {
    /// The PKCS#11 return code an application sees when this happens inside a module call.
    pub fn rv(&self) -> CK_RV {
        match self {
            Error::DeviceMemory { .. } => CKR_DEVICE_MEMORY,
            _ => CKR_DEVICE_ERROR,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for results of the rack API.
pub type Result<T, E = Error> = std::result::Result<T, E>;
