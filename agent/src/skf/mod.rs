//! GM/T 0016-2012 (SKF) tokens: the vendor library's C interface ([`ffi`]), used by the SKF
//! implementation of the device seam ([`crate::device`]).
pub mod ffi;

pub use ffi::{
    App, Container, Dev, DevInfo, EccPublicKey, EccSignature, PinInfo, PinKind, SkfError,
    SkfLibrary,
};
