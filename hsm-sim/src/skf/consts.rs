//! Numbers of GM/T 0016-2012: the `SAR_*` return codes, algorithm identifiers (GM/T 0006),
//! PIN types, device states and events, and the names of the SKF functions this simulator
//! exports (for fault injection and messages).
//!
//! Pure lookup tables; no IO.

use crate::error::{Error, Result};

/// An SKF return code (`ULONG`, 32 bits in the standard's header on every platform).
pub type Sar = u32;

/// Success.
pub const SAR_OK: Sar = 0x0000_0000;
/// Failure (no more specific code).
pub const SAR_FAIL: Sar = 0x0A00_0001;
/// Unknown error.
pub const SAR_UNKNOWNERR: Sar = 0x0A00_0002;
/// Function not supported.
pub const SAR_NOTSUPPORTYETERR: Sar = 0x0A00_0003;
/// File error.
pub const SAR_FILEERR: Sar = 0x0A00_0004;
/// Invalid handle.
pub const SAR_INVALIDHANDLEERR: Sar = 0x0A00_0005;
/// Invalid parameter.
pub const SAR_INVALIDPARAMERR: Sar = 0x0A00_0006;
/// Reading a file failed.
pub const SAR_READFILEERR: Sar = 0x0A00_0007;
/// Writing a file failed.
pub const SAR_WRITEFILEERR: Sar = 0x0A00_0008;
/// Name length error.
pub const SAR_NAMELENERR: Sar = 0x0A00_0009;
/// Key usage error.
pub const SAR_KEYUSAGEERR: Sar = 0x0A00_000A;
/// Modulus length error.
pub const SAR_MODULUSLENERR: Sar = 0x0A00_000B;
/// Not initialized.
pub const SAR_NOTINITIALIZEERR: Sar = 0x0A00_000C;
/// Object error.
pub const SAR_OBJERR: Sar = 0x0A00_000D;
/// Memory error.
pub const SAR_MEMORYERR: Sar = 0x0A00_000E;
/// Time-out.
pub const SAR_TIMEOUTERR: Sar = 0x0A00_000F;
/// Input data length error.
pub const SAR_INDATALENERR: Sar = 0x0A00_0010;
/// Input data error.
pub const SAR_INDATAERR: Sar = 0x0A00_0011;
/// Random generation failed.
pub const SAR_GENRANDERR: Sar = 0x0A00_0012;
/// Hash object error.
pub const SAR_HASHOBJERR: Sar = 0x0A00_0013;
/// Hash error.
pub const SAR_HASHERR: Sar = 0x0A00_0014;
/// RSA key generation error.
pub const SAR_GENRSAKEYERR: Sar = 0x0A00_0015;
/// RSA modulus length error.
pub const SAR_RSAMODULUSLENERR: Sar = 0x0A00_0016;
/// Public key import error.
pub const SAR_CSPIMPRTPUBKEYERR: Sar = 0x0A00_0017;
/// RSA encryption error.
pub const SAR_RSAENCERR: Sar = 0x0A00_0018;
/// RSA decryption error.
pub const SAR_RSADECERR: Sar = 0x0A00_0019;
/// Hashes differ.
pub const SAR_HASHNOTEQUALERR: Sar = 0x0A00_001A;
/// Key not found (the standard's spelling).
pub const SAR_KEYNOTFOUNTERR: Sar = 0x0A00_001B;
/// Certificate not found (the standard's spelling).
pub const SAR_CERTNOTFOUNTERR: Sar = 0x0A00_001C;
/// Object not exportable.
pub const SAR_NOTEXPORTERR: Sar = 0x0A00_001D;
/// Padding error in decryption.
pub const SAR_DECRYPTPADERR: Sar = 0x0A00_001E;
/// MAC length error.
pub const SAR_MACLENERR: Sar = 0x0A00_001F;
/// Output buffer too small.
pub const SAR_BUFFER_TOO_SMALL: Sar = 0x0A00_0020;
/// Key type error.
pub const SAR_KEYINFOTYPEERR: Sar = 0x0A00_0021;
/// No event.
pub const SAR_NOT_EVENTERR: Sar = 0x0A00_0022;
/// The device was removed.
pub const SAR_DEVICE_REMOVED: Sar = 0x0A00_0023;
/// Wrong PIN.
pub const SAR_PIN_INCORRECT: Sar = 0x0A00_0024;
/// PIN locked.
pub const SAR_PIN_LOCKED: Sar = 0x0A00_0025;
/// Invalid PIN.
pub const SAR_PIN_INVALID: Sar = 0x0A00_0026;
/// PIN length out of range.
pub const SAR_PIN_LEN_RANGE: Sar = 0x0A00_0027;
/// User already logged in.
pub const SAR_USER_ALREADY_LOGGED_IN: Sar = 0x0A00_0028;
/// User PIN not initialized.
pub const SAR_USER_PIN_NOT_INITIALIZED: Sar = 0x0A00_0029;
/// Invalid PIN type.
pub const SAR_USER_TYPE_INVALID: Sar = 0x0A00_002A;
/// Invalid application name.
pub const SAR_APPLICATION_NAME_INVALID: Sar = 0x0A00_002B;
/// Application exists already.
pub const SAR_APPLICATION_EXISTS: Sar = 0x0A00_002C;
/// Not logged in.
pub const SAR_USER_NOT_LOGGED_IN: Sar = 0x0A00_002D;
/// No such application.
pub const SAR_APPLICATION_NOT_EXISTS: Sar = 0x0A00_002E;
/// File exists already.
pub const SAR_FILE_ALREADY_EXIST: Sar = 0x0A00_002F;
/// No room left on the device.
pub const SAR_NO_ROOM: Sar = 0x0A00_0030;
/// No such file.
pub const SAR_FILE_NOT_EXIST: Sar = 0x0A00_0031;
/// Most containers reached.
pub const SAR_REACH_MAX_CONTAINER_COUNT: Sar = 0x0A00_0032;

/// Every return code of the standard, with its name.
pub const RETURN_CODES: &[(&str, Sar)] = &[
    ("SAR_OK", SAR_OK),
    ("SAR_FAIL", SAR_FAIL),
    ("SAR_UNKNOWNERR", SAR_UNKNOWNERR),
    ("SAR_NOTSUPPORTYETERR", SAR_NOTSUPPORTYETERR),
    ("SAR_FILEERR", SAR_FILEERR),
    ("SAR_INVALIDHANDLEERR", SAR_INVALIDHANDLEERR),
    ("SAR_INVALIDPARAMERR", SAR_INVALIDPARAMERR),
    ("SAR_READFILEERR", SAR_READFILEERR),
    ("SAR_WRITEFILEERR", SAR_WRITEFILEERR),
    ("SAR_NAMELENERR", SAR_NAMELENERR),
    ("SAR_KEYUSAGEERR", SAR_KEYUSAGEERR),
    ("SAR_MODULUSLENERR", SAR_MODULUSLENERR),
    ("SAR_NOTINITIALIZEERR", SAR_NOTINITIALIZEERR),
    ("SAR_OBJERR", SAR_OBJERR),
    ("SAR_MEMORYERR", SAR_MEMORYERR),
    ("SAR_TIMEOUTERR", SAR_TIMEOUTERR),
    ("SAR_INDATALENERR", SAR_INDATALENERR),
    ("SAR_INDATAERR", SAR_INDATAERR),
    ("SAR_GENRANDERR", SAR_GENRANDERR),
    ("SAR_HASHOBJERR", SAR_HASHOBJERR),
    ("SAR_HASHERR", SAR_HASHERR),
    ("SAR_GENRSAKEYERR", SAR_GENRSAKEYERR),
    ("SAR_RSAMODULUSLENERR", SAR_RSAMODULUSLENERR),
    ("SAR_CSPIMPRTPUBKEYERR", SAR_CSPIMPRTPUBKEYERR),
    ("SAR_RSAENCERR", SAR_RSAENCERR),
    ("SAR_RSADECERR", SAR_RSADECERR),
    ("SAR_HASHNOTEQUALERR", SAR_HASHNOTEQUALERR),
    ("SAR_KEYNOTFOUNTERR", SAR_KEYNOTFOUNTERR),
    ("SAR_CERTNOTFOUNTERR", SAR_CERTNOTFOUNTERR),
    ("SAR_NOTEXPORTERR", SAR_NOTEXPORTERR),
    ("SAR_DECRYPTPADERR", SAR_DECRYPTPADERR),
    ("SAR_MACLENERR", SAR_MACLENERR),
    ("SAR_BUFFER_TOO_SMALL", SAR_BUFFER_TOO_SMALL),
    ("SAR_KEYINFOTYPEERR", SAR_KEYINFOTYPEERR),
    ("SAR_NOT_EVENTERR", SAR_NOT_EVENTERR),
    ("SAR_DEVICE_REMOVED", SAR_DEVICE_REMOVED),
    ("SAR_PIN_INCORRECT", SAR_PIN_INCORRECT),
    ("SAR_PIN_LOCKED", SAR_PIN_LOCKED),
    ("SAR_PIN_INVALID", SAR_PIN_INVALID),
    ("SAR_PIN_LEN_RANGE", SAR_PIN_LEN_RANGE),
    ("SAR_USER_ALREADY_LOGGED_IN", SAR_USER_ALREADY_LOGGED_IN),
    ("SAR_USER_PIN_NOT_INITIALIZED", SAR_USER_PIN_NOT_INITIALIZED),
    ("SAR_USER_TYPE_INVALID", SAR_USER_TYPE_INVALID),
    ("SAR_APPLICATION_NAME_INVALID", SAR_APPLICATION_NAME_INVALID),
    ("SAR_APPLICATION_EXISTS", SAR_APPLICATION_EXISTS),
    ("SAR_USER_NOT_LOGGED_IN", SAR_USER_NOT_LOGGED_IN),
    ("SAR_APPLICATION_NOT_EXISTS", SAR_APPLICATION_NOT_EXISTS),
    ("SAR_FILE_ALREADY_EXIST", SAR_FILE_ALREADY_EXIST),
    ("SAR_NO_ROOM", SAR_NO_ROOM),
    ("SAR_FILE_NOT_EXIST", SAR_FILE_NOT_EXIST),
    (
        "SAR_REACH_MAX_CONTAINER_COUNT",
        SAR_REACH_MAX_CONTAINER_COUNT,
    ),
];

/// SM4 in ECB mode (GM/T 0006).
pub const SGD_SM4_ECB: u32 = 0x0000_0401;
/// SM4 in CBC mode.
pub const SGD_SM4_CBC: u32 = 0x0000_0402;
/// SM2 signatures.
pub const SGD_SM2_1: u32 = 0x0002_0100;
/// SM2 key exchange.
pub const SGD_SM2_2: u32 = 0x0002_0200;
/// SM2 encryption.
pub const SGD_SM2_3: u32 = 0x0002_0400;
/// SM3.
pub const SGD_SM3: u32 = 0x0000_0001;

/// `ulPINType` of the administrator (SO) PIN.
pub const ADMIN_TYPE: u32 = 0;
/// `ulPINType` of the user PIN.
pub const USER_TYPE: u32 = 1;

/// `SKF_GetDevState`: no device.
pub const DEV_ABSENT_STATE: u32 = 0;
/// `SKF_GetDevState`: a device is present.
pub const DEV_PRESENT_STATE: u32 = 1;

/// `SKF_WaitForDevEvent`: a device arrived.
pub const DEV_EVENT_ARRIVAL: u32 = 1;
/// `SKF_WaitForDevEvent`: a device left.
pub const DEV_EVENT_REMOVAL: u32 = 2;

/// `SKF_GetContainerType`: no key pair yet.
pub const CONTAINER_EMPTY: u32 = 0;
/// `SKF_GetContainerType`: an SM2 container.
pub const CONTAINER_ECC: u32 = 2;

/// Access right: nobody.
pub const SECURE_NEVER_ACCOUNT: u32 = 0x0000_0000;
/// Access right: the administrator.
pub const SECURE_ADM_ACCOUNT: u32 = 0x0000_0001;
/// Access right: the user.
pub const SECURE_USER_ACCOUNT: u32 = 0x0000_0010;
/// Access right: anyone.
pub const SECURE_ANYONE_ACCOUNT: u32 = 0x0000_00FF;

/// The SKF functions `libhsm_sim_skf.so` exports, in the order of GM/T 0016-2012's
/// chapters (device, access control, applications, containers, cryptographic services).
pub const FUNCTIONS: &[&str] = &[
    "SKF_WaitForDevEvent",
    "SKF_CancelWaitForDevEvent",
    "SKF_EnumDev",
    "SKF_ConnectDev",
    "SKF_DisConnectDev",
    "SKF_GetDevState",
    "SKF_SetLabel",
    "SKF_GetDevInfo",
    "SKF_LockDev",
    "SKF_UnlockDev",
    "SKF_ChangeDevAuthKey",
    "SKF_DevAuth",
    "SKF_ChangePIN",
    "SKF_GetPINInfo",
    "SKF_VerifyPIN",
    "SKF_UnblockPIN",
    "SKF_ClearSecureState",
    "SKF_CreateApplication",
    "SKF_EnumApplication",
    "SKF_DeleteApplication",
    "SKF_OpenApplication",
    "SKF_CloseApplication",
    "SKF_CreateContainer",
    "SKF_DeleteContainer",
    "SKF_OpenContainer",
    "SKF_CloseContainer",
    "SKF_EnumContainer",
    "SKF_GetContainerType",
    "SKF_ImportCertificate",
    "SKF_ExportCertificate",
    "SKF_GenRandom",
    "SKF_GenECCKeyPair",
    "SKF_ImportECCKeyPair",
    "SKF_ECCSignData",
    "SKF_ECCVerify",
    "SKF_ExtECCEncrypt",
    "SKF_ExportPublicKey",
    "SKF_DigestInit",
    "SKF_Digest",
    "SKF_DigestUpdate",
    "SKF_DigestFinal",
    "SKF_CloseHandle",
    "SKF_ImportSessionKey",
    "SKF_SetSymmKey",
    "SKF_EncryptInit",
    "SKF_Encrypt",
    "SKF_DecryptInit",
    "SKF_Decrypt",
];

/// The name of an SKF return code, or its number in hex when it has none.
pub fn sar_name(sar: Sar) -> String {
    RETURN_CODES
        .iter()
        .find(|(_, v)| *v == sar)
        .map(|(n, _)| (*n).to_string())
        .unwrap_or_else(|| format!("0x{sar:08X}"))
}

/// Parses an SKF return code by name (`SAR_PIN_LOCKED`, case-insensitive, the `SAR_` prefix
/// optional) or number (`0x0A000025`). `SAR_OK` is no failure: refused.
pub fn parse_sar(name: &str) -> Result<Sar> {
    let trimmed = name.trim();
    let upper = trimmed.to_ascii_uppercase();
    let full = if upper.starts_with("SAR_") {
        upper
    } else {
        format!("SAR_{upper}")
    };
    let number = match RETURN_CODES.iter().find(|(n, _)| *n == full) {
        Some((_, v)) => Some(*v),
        None => match trimmed
            .strip_prefix("0x")
            .or_else(|| trimmed.strip_prefix("0X"))
        {
            Some(hex) => Sar::from_str_radix(hex, 16).ok(),
            None => trimmed.parse::<Sar>().ok(),
        },
    };
    match number {
        Some(0) | None => Err(Error::UnknownRv {
            name: name.to_string(),
        }),
        Some(v) => Ok(v),
    }
}

/// Checks an SKF function name (`SKF_GenECCKeyPair`; the `SKF_` prefix optional,
/// case-insensitive) and returns it as [`FUNCTIONS`] spells it.
pub fn parse_function(name: &str) -> Option<&'static str> {
    let trimmed = name.trim();
    let wanted = if trimmed.len() > 4 && trimmed[..4].eq_ignore_ascii_case("skf_") {
        &trimmed[4..]
    } else {
        trimmed
    };
    FUNCTIONS
        .iter()
        .find(|f| f[4..].eq_ignore_ascii_case(wanted))
        .copied()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn codes_and_functions_parse() {
        assert_eq!(parse_sar("SAR_PIN_LOCKED").unwrap(), 0x0A00_0025);
        assert_eq!(parse_sar("device_removed").unwrap(), SAR_DEVICE_REMOVED);
        assert_eq!(parse_sar("0x0A000001").unwrap(), SAR_FAIL);
        assert!(parse_sar("SAR_OK").is_err());
        assert!(parse_sar("SAR_NOPE").is_err());
        assert_eq!(
            sar_name(SAR_REACH_MAX_CONTAINER_COUNT),
            "SAR_REACH_MAX_CONTAINER_COUNT"
        );
        assert_eq!(
            parse_function("skf_genecckeypair"),
            Some("SKF_GenECCKeyPair")
        );
        assert_eq!(parse_function("ECCSignData"), Some("SKF_ECCSignData"));
        assert_eq!(parse_function("SKF_Frobnicate"), None);
        // The codes are consecutive from SAR_FAIL to the last one of the standard.
        for (i, (_, v)) in RETURN_CODES.iter().enumerate().skip(1) {
            assert_eq!(*v, 0x0A00_0000 + i as u32);
        }
    }
}
