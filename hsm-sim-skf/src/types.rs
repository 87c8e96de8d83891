//! The C types of GM/T 0016-2012's header, for Linux: no `__stdcall`, `ULONG` 32 bits (as the
//! standard's `typedef UINT32 ULONG`, also on LP64), handles `void *`, and the structures
//! with the standard's field sizes. `DEVINFO` has the packed layout of the standard's
//! header (`#pragma pack(1)`: its `ULONG`s start at byte 198); the blobs have the same
//! layout packed or not (every `ULONG` falls on a multiple of 4), except that the size of
//! `ECCCIPHERBLOB` with its one-byte `Cipher[1]` is 165 packed, 168 padded: this library reads
//! and writes `Cipher` at byte 164 and never relies on the size.
#![allow(non_camel_case_types, non_snake_case)]

use std::ffi::{c_char, c_void};

/// `ULONG` (32 bits).
pub type ULONG = u32;
/// `DWORD` (32 bits).
pub type DWORD = u32;
/// `BOOL` (`int`).
pub type BOOL = i32;
/// `BYTE`.
pub type BYTE = u8;
/// `LPSTR`.
pub type LPSTR = *mut c_char;
/// `HANDLE`.
pub type HANDLE = *mut c_void;
/// `DEVHANDLE`.
pub type DEVHANDLE = HANDLE;
/// `HAPPLICATION`.
pub type HAPPLICATION = HANDLE;
/// `HCONTAINER`.
pub type HCONTAINER = HANDLE;

/// `ECC_MAX_XCOORDINATE_BITS_LEN / 8`: coordinates and scalars take 64 bytes, values of
/// 256-bit curves right-aligned (the first 32 bytes zero).
pub const ECC_MAX_LEN: usize = 64;

/// `VERSION`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct VERSION {
    /// Major.
    pub major: BYTE,
    /// Minor.
    pub minor: BYTE,
}

/// `DEVINFO`, packed: 294 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct DEVINFO {
    /// Version of the standard the device follows (1.0).
    pub Version: VERSION,
    /// Manufacturer, NUL-terminated.
    pub Manufacturer: [c_char; 64],
    /// Issuer, NUL-terminated.
    pub Issuer: [c_char; 64],
    /// Label, NUL-terminated.
    pub Label: [c_char; 32],
    /// Serial number, NUL-terminated.
    pub SerialNumber: [c_char; 32],
    /// Hardware version.
    pub HWVersion: VERSION,
    /// Firmware version.
    pub FirmwareVersion: VERSION,
    /// Symmetric algorithms (`SGD_…` bits).
    pub AlgSymCap: ULONG,
    /// Asymmetric algorithms.
    pub AlgAsymCap: ULONG,
    /// Hash algorithms.
    pub AlgHashCap: ULONG,
    /// Algorithm of device authentication.
    pub DevAuthAlgId: ULONG,
    /// Storage in bytes.
    pub TotalSpace: ULONG,
    /// Free storage in bytes.
    pub FreeSpace: ULONG,
    /// Longest data of one ECC operation.
    pub MaxECCBufferSize: ULONG,
    /// Longest data of one other operation.
    pub MaxBufferSize: ULONG,
    /// Reserved.
    pub Reserved: [BYTE; 64],
}

/// `ECCPUBLICKEYBLOB`: 132 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ECCPUBLICKEYBLOB {
    /// Key size in bits (256).
    pub BitLen: ULONG,
    /// x, right-aligned.
    pub XCoordinate: [BYTE; ECC_MAX_LEN],
    /// y, right-aligned.
    pub YCoordinate: [BYTE; ECC_MAX_LEN],
}

/// `ECCSIGNATUREBLOB`: 128 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ECCSIGNATUREBLOB {
    /// r, right-aligned.
    pub r: [BYTE; ECC_MAX_LEN],
    /// s, right-aligned.
    pub s: [BYTE; ECC_MAX_LEN],
}

/// `ECCCIPHERBLOB` up to its `CipherLen`; `Cipher` (C2, `CipherLen` bytes) follows at byte
/// [`CIPHER_OFFSET`]. The parts are C1 = (x, y), C3 = `HASH`, C2 = `Cipher`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ECCCIPHERBLOB_HEAD {
    /// C1's x, right-aligned.
    pub XCoordinate: [BYTE; ECC_MAX_LEN],
    /// C1's y, right-aligned.
    pub YCoordinate: [BYTE; ECC_MAX_LEN],
    /// C3.
    pub HASH: [BYTE; 32],
    /// Length of C2.
    pub CipherLen: ULONG,
}

/// Where `ECCCIPHERBLOB.Cipher` starts.
pub const CIPHER_OFFSET: usize = 164;

/// `ENVELOPEDKEYBLOB` up to its `ECCCipherBlob`, which starts at byte [`ENVELOPE_CIPHER_OFFSET`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ENVELOPEDKEYBLOB_HEAD {
    /// Version (1).
    pub Version: ULONG,
    /// Symmetric algorithm (`SGD_SM4_ECB`).
    pub ulSymmAlgID: ULONG,
    /// Key size in bits (256).
    pub ulBits: ULONG,
    /// The private key encrypted under the symmetric key.
    pub cbEncryptedPriKey: [BYTE; 64],
    /// The key pair's public key.
    pub PubKey: ECCPUBLICKEYBLOB,
}

/// Where `ENVELOPEDKEYBLOB.ECCCipherBlob` starts.
pub const ENVELOPE_CIPHER_OFFSET: usize = 208;

/// `BLOCKCIPHERPARAM` (passed by value to `SKF_EncryptInit`/`SKF_DecryptInit`): 44 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BLOCKCIPHERPARAM {
    /// The IV (16 bytes used for SM4-CBC).
    pub IV: [BYTE; 32],
    /// Length of the IV.
    pub IVLen: ULONG,
    /// 0: no padding; 1: PKCS#5.
    pub PaddingType: ULONG,
    /// Feedback bits (OFB/CFB; not used).
    pub FeedBitLen: ULONG,
}

const _: () = {
    assert!(std::mem::size_of::<BLOCKCIPHERPARAM>() == 44);
    assert!(std::mem::size_of::<DEVINFO>() == 294);
    assert!(std::mem::offset_of!(DEVINFO, AlgSymCap) == 198);
    assert!(std::mem::size_of::<ECCPUBLICKEYBLOB>() == 132);
    assert!(std::mem::size_of::<ECCSIGNATUREBLOB>() == 128);
    assert!(std::mem::offset_of!(ECCCIPHERBLOB_HEAD, CipherLen) == 160);
    assert!(std::mem::size_of::<ECCCIPHERBLOB_HEAD>() == CIPHER_OFFSET);
    assert!(std::mem::size_of::<ENVELOPEDKEYBLOB_HEAD>() == ENVELOPE_CIPHER_OFFSET);
};
