//! `libhsm_sim_skf.so`: hsm-sim's rack served as a GM/T 0016-2012 (SKF) library, the
//! interface of most 国密 tokens. Any SKF application loads it by path, as it would a
//! vendor's library; it shares the rack (the `HSM_SIM_DIR` state folder) with the `hsm-sim`
//! command and `libhsm_sim.so`, and sees the tokens inserted with `--interface skf`.
//!
//! This crate is the C ABI only: each exported `SKF_…` function is a thin shell that checks
//! its pointers and lengths, calls [`hsm_sim::skf::engine::SkfEngine`] (safe Rust, where the
//! behaviour lives), and turns its `Result` into a `SAR_…` code. No panic crosses the C
//! boundary (`SAR_FAIL`). Files follow the standard's chapters: devices and device
//! authentication ([`device`]), access control ([`access`]), applications, containers and
//! certificates ([`application`]), cryptographic services ([`crypto`], and session keys
//! with SM4 in [`symmetric`]). The C types are in
//! [`types`].
//!
//! Every pointer is checked before memory is touched: NULL where the standard wants memory
//! → `SAR_INVALIDPARAMERR`; strings are read up to their NUL but never past a limit (names
//! [`hsm_sim::skf::device::MAX_NAME`] → `SAR_NAMELENERR`, PINs 255 → `SAR_PIN_LEN_RANGE`,
//! labels → `SAR_INDATALENERR`, IDs → `SAR_INDATALENERR`); input lengths above the limits
//! (`DEVINFO.MaxBufferSize`, `MaxECCBufferSize`, 8 KiB certificates, 1 KiB of random) are
//! refused before reading. A length within them that is not its buffer's true size cannot be
//! detected in C and stays the caller's contract.
#![allow(unsafe_code)]
#![allow(non_snake_case, clippy::missing_safety_doc)]

pub mod access;
pub mod application;
pub mod crypto;
pub mod device;
pub mod symmetric;
pub mod types;

use std::ffi::{c_char, c_void};

use hsm_sim::skf::consts::*;
use hsm_sim::skf::engine::{self, SkfEngine};

use types::*;

/// Longest PIN read (a token's PINs are at most 255 bytes).
const MAX_PIN: usize = 255;

/// The shell around every exported function: runs its inner function, maps its `Result` to
/// the code the application sees, and stops a panic at the C boundary as `SAR_FAIL`.
fn shell(f: impl FnOnce() -> Result<(), Sar>) -> ULONG {
    // AssertUnwindSafe: the engine's state sits behind a mutex that a panic poisons (later
    // calls then fail with SAR_FAIL); token state on disk is only ever replaced whole.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => SAR_OK,
        Ok(Err(sar)) => sar,
        Err(_) => SAR_FAIL,
    }
}

fn eng() -> &'static SkfEngine {
    engine::get()
}

/// A handle as the engine numbers it (NULL is never valid).
fn handle(h: HANDLE) -> Result<usize, Sar> {
    if h.is_null() {
        return Err(SAR_INVALIDHANDLEERR);
    }
    Ok(h as usize)
}

/// A handle for the caller.
fn to_handle(h: usize) -> HANDLE {
    h as *mut c_void
}

/// Reads a NUL-terminated string of at most `max` bytes; a longer one → `too_long`, and no
/// byte after the `max + 1`-th is read.
///
/// # Safety
/// `p` must be null or point to a NUL-terminated string, or to at least `max + 1` bytes.
unsafe fn cstr<'a>(p: *const c_char, max: usize, too_long: Sar) -> Result<&'a [u8], Sar> {
    if p.is_null() {
        return Err(SAR_INVALIDPARAMERR);
    }
    for i in 0..=max {
        // SAFETY: bytes up to the NUL (or `max + 1` bytes) are readable, by the contract.
        if unsafe { *p.add(i) } == 0 {
            // SAFETY: the `i` bytes before the NUL are readable.
            return Ok(unsafe { std::slice::from_raw_parts(p as *const u8, i) });
        }
    }
    Err(too_long)
}

/// Borrows `len` bytes at `p`, at most `max` (else `too_long`, nothing read); NULL only
/// with a zero length.
///
/// # Safety
/// `p` must be null or point to `len` readable bytes whenever `len <= max`.
unsafe fn bytes<'a>(p: *const u8, len: ULONG, max: usize, too_long: Sar) -> Result<&'a [u8], Sar> {
    let len = len as usize;
    if p.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(SAR_INVALIDPARAMERR)
        };
    }
    if len > max {
        return Err(too_long);
    }
    // SAFETY: non-null, `len <= max` (far below isize::MAX), readable by the contract.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Stores `v` at `p`.
///
/// # Safety
/// `p` must be null or valid for writing one `T` (any alignment).
unsafe fn put<T>(p: *mut T, v: T) -> Result<(), Sar> {
    if p.is_null() {
        return Err(SAR_INVALIDPARAMERR);
    }
    // SAFETY: non-null and writable by the contract; unaligned writes are allowed.
    unsafe { p.write_unaligned(v) };
    Ok(())
}

/// Reads a `T` at `p`.
///
/// # Safety
/// `p` must be null or valid for reading one `T` (any alignment).
unsafe fn get<T: Copy>(p: *const T) -> Result<T, Sar> {
    if p.is_null() {
        return Err(SAR_INVALIDPARAMERR);
    }
    // SAFETY: non-null and readable by the contract.
    Ok(unsafe { p.read_unaligned() })
}

/// Hands bytes to the caller with the length-query convention of the standard: `len` must
/// not be NULL; a NULL `out` asks for the length; a buffer smaller than `data` gets
/// `SAR_BUFFER_TOO_SMALL` and the length.
///
/// # Safety
/// `len` must be null or valid for reading and writing; `out` null or valid for writing
/// `*len` bytes.
unsafe fn write_out(out: *mut u8, len: *mut ULONG, data: &[u8]) -> Result<(), Sar> {
    if len.is_null() {
        return Err(SAR_INVALIDPARAMERR);
    }
    let need = ULONG::try_from(data.len()).map_err(|_| SAR_FAIL)?;
    // SAFETY: checked non-null; readable by the contract.
    let cap = unsafe { len.read_unaligned() };
    // SAFETY: as above, writable.
    unsafe { len.write_unaligned(need) };
    if out.is_null() {
        return Ok(());
    }
    if (cap as usize) < data.len() {
        return Err(SAR_BUFFER_TOO_SMALL);
    }
    // SAFETY: `out` holds `cap >= data.len()` writable bytes by the contract.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), out, data.len()) };
    Ok(())
}

/// A list of names as the standard returns them: each NUL-terminated, then one more NUL
/// (an empty list is two NULs).
fn multi_string(names: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for n in names {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
    }
    if names.is_empty() {
        out.push(0);
    }
    out.push(0);
    out
}

/// [`write_out`] for a multi-string into a `LPSTR`.
///
/// # Safety
/// As [`write_out`].
unsafe fn write_names(out: LPSTR, len: *mut ULONG, names: &[String]) -> Result<(), Sar> {
    // SAFETY: forwarded with the same contract.
    unsafe { write_out(out as *mut u8, len, &multi_string(names)) }
}

/// A 64-byte field holding a 256-bit value right-aligned.
fn from_field(f: &[u8; ECC_MAX_LEN]) -> Result<[u8; 32], Sar> {
    if f[..32].iter().any(|b| *b != 0) {
        return Err(SAR_INVALIDPARAMERR);
    }
    let mut v = [0u8; 32];
    v.copy_from_slice(&f[32..]);
    Ok(v)
}

/// A 256-bit value into a 64-byte field, right-aligned.
fn to_field(v: &[u8; 32]) -> [u8; ECC_MAX_LEN] {
    let mut f = [0u8; ECC_MAX_LEN];
    f[32..].copy_from_slice(v);
    f
}

/// The public key x‖y of an `ECCPUBLICKEYBLOB` (`BitLen` 256, right-aligned coordinates).
fn blob_public(b: &ECCPUBLICKEYBLOB) -> Result<[u8; 64], Sar> {
    if b.BitLen != 256 {
        return Err(SAR_INVALIDPARAMERR);
    }
    let mut p = [0u8; 64];
    p[..32].copy_from_slice(&from_field(&b.XCoordinate)?);
    p[32..].copy_from_slice(&from_field(&b.YCoordinate)?);
    Ok(p)
}

/// An `ECCPUBLICKEYBLOB` of x‖y.
fn public_blob(p: &[u8; 64]) -> ECCPUBLICKEYBLOB {
    let mut x = [0u8; 32];
    let mut y = [0u8; 32];
    x.copy_from_slice(&p[..32]);
    y.copy_from_slice(&p[32..]);
    ECCPUBLICKEYBLOB {
        BitLen: 256,
        XCoordinate: to_field(&x),
        YCoordinate: to_field(&y),
    }
}

/// `TRUE` is any non-zero `BOOL`.
fn truth(b: BOOL) -> bool {
    b != 0
}
