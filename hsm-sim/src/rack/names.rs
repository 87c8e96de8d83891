//! Names of PKCS#11 return codes and functions, for the CLI, fault records and messages.
//!
//! Pure lookup tables; no IO. Return codes are those of PKCS#11 v2.40 (plus the v3.0 codes
//! an application may meet); functions are the 68 entries of `CK_FUNCTION_LIST` v2.40.

use cryptoki_sys::*;

use crate::error::{Error, Result};

/// Every return code this simulator can name, with its name.
pub const RETURN_CODES: &[(&str, CK_RV)] = &[
    ("CKR_OK", CKR_OK),
    ("CKR_CANCEL", CKR_CANCEL),
    ("CKR_HOST_MEMORY", CKR_HOST_MEMORY),
    ("CKR_SLOT_ID_INVALID", CKR_SLOT_ID_INVALID),
    ("CKR_GENERAL_ERROR", CKR_GENERAL_ERROR),
    ("CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED),
    ("CKR_ARGUMENTS_BAD", CKR_ARGUMENTS_BAD),
    ("CKR_NO_EVENT", CKR_NO_EVENT),
    ("CKR_NEED_TO_CREATE_THREADS", CKR_NEED_TO_CREATE_THREADS),
    ("CKR_CANT_LOCK", CKR_CANT_LOCK),
    ("CKR_ATTRIBUTE_READ_ONLY", CKR_ATTRIBUTE_READ_ONLY),
    ("CKR_ATTRIBUTE_SENSITIVE", CKR_ATTRIBUTE_SENSITIVE),
    ("CKR_ATTRIBUTE_TYPE_INVALID", CKR_ATTRIBUTE_TYPE_INVALID),
    ("CKR_ATTRIBUTE_VALUE_INVALID", CKR_ATTRIBUTE_VALUE_INVALID),
    ("CKR_ACTION_PROHIBITED", CKR_ACTION_PROHIBITED),
    ("CKR_DATA_INVALID", CKR_DATA_INVALID),
    ("CKR_DATA_LEN_RANGE", CKR_DATA_LEN_RANGE),
    ("CKR_DEVICE_ERROR", CKR_DEVICE_ERROR),
    ("CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY),
    ("CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED),
    ("CKR_ENCRYPTED_DATA_INVALID", CKR_ENCRYPTED_DATA_INVALID),
    ("CKR_ENCRYPTED_DATA_LEN_RANGE", CKR_ENCRYPTED_DATA_LEN_RANGE),
    ("CKR_FUNCTION_CANCELED", CKR_FUNCTION_CANCELED),
    ("CKR_FUNCTION_NOT_PARALLEL", CKR_FUNCTION_NOT_PARALLEL),
    ("CKR_FUNCTION_NOT_SUPPORTED", CKR_FUNCTION_NOT_SUPPORTED),
    ("CKR_KEY_HANDLE_INVALID", CKR_KEY_HANDLE_INVALID),
    ("CKR_KEY_SIZE_RANGE", CKR_KEY_SIZE_RANGE),
    ("CKR_KEY_TYPE_INCONSISTENT", CKR_KEY_TYPE_INCONSISTENT),
    ("CKR_KEY_NOT_NEEDED", CKR_KEY_NOT_NEEDED),
    ("CKR_KEY_CHANGED", CKR_KEY_CHANGED),
    ("CKR_KEY_NEEDED", CKR_KEY_NEEDED),
    ("CKR_KEY_INDIGESTIBLE", CKR_KEY_INDIGESTIBLE),
    (
        "CKR_KEY_FUNCTION_NOT_PERMITTED",
        CKR_KEY_FUNCTION_NOT_PERMITTED,
    ),
    ("CKR_KEY_NOT_WRAPPABLE", CKR_KEY_NOT_WRAPPABLE),
    ("CKR_KEY_UNEXTRACTABLE", CKR_KEY_UNEXTRACTABLE),
    ("CKR_MECHANISM_INVALID", CKR_MECHANISM_INVALID),
    ("CKR_MECHANISM_PARAM_INVALID", CKR_MECHANISM_PARAM_INVALID),
    ("CKR_OBJECT_HANDLE_INVALID", CKR_OBJECT_HANDLE_INVALID),
    ("CKR_OPERATION_ACTIVE", CKR_OPERATION_ACTIVE),
    (
        "CKR_OPERATION_NOT_INITIALIZED",
        CKR_OPERATION_NOT_INITIALIZED,
    ),
    ("CKR_PIN_INCORRECT", CKR_PIN_INCORRECT),
    ("CKR_PIN_INVALID", CKR_PIN_INVALID),
    ("CKR_PIN_LEN_RANGE", CKR_PIN_LEN_RANGE),
    ("CKR_PIN_EXPIRED", CKR_PIN_EXPIRED),
    ("CKR_PIN_LOCKED", CKR_PIN_LOCKED),
    ("CKR_SESSION_CLOSED", CKR_SESSION_CLOSED),
    ("CKR_SESSION_COUNT", CKR_SESSION_COUNT),
    ("CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID),
    (
        "CKR_SESSION_PARALLEL_NOT_SUPPORTED",
        CKR_SESSION_PARALLEL_NOT_SUPPORTED,
    ),
    ("CKR_SESSION_READ_ONLY", CKR_SESSION_READ_ONLY),
    ("CKR_SESSION_EXISTS", CKR_SESSION_EXISTS),
    ("CKR_SESSION_READ_ONLY_EXISTS", CKR_SESSION_READ_ONLY_EXISTS),
    (
        "CKR_SESSION_READ_WRITE_SO_EXISTS",
        CKR_SESSION_READ_WRITE_SO_EXISTS,
    ),
    ("CKR_SIGNATURE_INVALID", CKR_SIGNATURE_INVALID),
    ("CKR_SIGNATURE_LEN_RANGE", CKR_SIGNATURE_LEN_RANGE),
    ("CKR_TEMPLATE_INCOMPLETE", CKR_TEMPLATE_INCOMPLETE),
    ("CKR_TEMPLATE_INCONSISTENT", CKR_TEMPLATE_INCONSISTENT),
    ("CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT),
    ("CKR_TOKEN_NOT_RECOGNIZED", CKR_TOKEN_NOT_RECOGNIZED),
    ("CKR_TOKEN_WRITE_PROTECTED", CKR_TOKEN_WRITE_PROTECTED),
    (
        "CKR_UNWRAPPING_KEY_HANDLE_INVALID",
        CKR_UNWRAPPING_KEY_HANDLE_INVALID,
    ),
    (
        "CKR_UNWRAPPING_KEY_SIZE_RANGE",
        CKR_UNWRAPPING_KEY_SIZE_RANGE,
    ),
    (
        "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT",
        CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
    ),
    ("CKR_USER_ALREADY_LOGGED_IN", CKR_USER_ALREADY_LOGGED_IN),
    ("CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN),
    ("CKR_USER_PIN_NOT_INITIALIZED", CKR_USER_PIN_NOT_INITIALIZED),
    ("CKR_USER_TYPE_INVALID", CKR_USER_TYPE_INVALID),
    (
        "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
        CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
    ),
    ("CKR_USER_TOO_MANY_TYPES", CKR_USER_TOO_MANY_TYPES),
    ("CKR_WRAPPED_KEY_INVALID", CKR_WRAPPED_KEY_INVALID),
    ("CKR_WRAPPED_KEY_LEN_RANGE", CKR_WRAPPED_KEY_LEN_RANGE),
    (
        "CKR_WRAPPING_KEY_HANDLE_INVALID",
        CKR_WRAPPING_KEY_HANDLE_INVALID,
    ),
    ("CKR_WRAPPING_KEY_SIZE_RANGE", CKR_WRAPPING_KEY_SIZE_RANGE),
    (
        "CKR_WRAPPING_KEY_TYPE_INCONSISTENT",
        CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
    ),
    (
        "CKR_RANDOM_SEED_NOT_SUPPORTED",
        CKR_RANDOM_SEED_NOT_SUPPORTED,
    ),
    ("CKR_RANDOM_NO_RNG", CKR_RANDOM_NO_RNG),
    ("CKR_DOMAIN_PARAMS_INVALID", CKR_DOMAIN_PARAMS_INVALID),
    ("CKR_CURVE_NOT_SUPPORTED", CKR_CURVE_NOT_SUPPORTED),
    ("CKR_BUFFER_TOO_SMALL", CKR_BUFFER_TOO_SMALL),
    ("CKR_SAVED_STATE_INVALID", CKR_SAVED_STATE_INVALID),
    ("CKR_INFORMATION_SENSITIVE", CKR_INFORMATION_SENSITIVE),
    ("CKR_STATE_UNSAVEABLE", CKR_STATE_UNSAVEABLE),
    ("CKR_CRYPTOKI_NOT_INITIALIZED", CKR_CRYPTOKI_NOT_INITIALIZED),
    (
        "CKR_CRYPTOKI_ALREADY_INITIALIZED",
        CKR_CRYPTOKI_ALREADY_INITIALIZED,
    ),
    ("CKR_MUTEX_BAD", CKR_MUTEX_BAD),
    ("CKR_MUTEX_NOT_LOCKED", CKR_MUTEX_NOT_LOCKED),
    ("CKR_NEW_PIN_MODE", CKR_NEW_PIN_MODE),
    ("CKR_NEXT_OTP", CKR_NEXT_OTP),
    ("CKR_EXCEEDED_MAX_ITERATIONS", CKR_EXCEEDED_MAX_ITERATIONS),
    ("CKR_FIPS_SELF_TEST_FAILED", CKR_FIPS_SELF_TEST_FAILED),
    ("CKR_LIBRARY_LOAD_FAILED", CKR_LIBRARY_LOAD_FAILED),
    ("CKR_PIN_TOO_WEAK", CKR_PIN_TOO_WEAK),
    ("CKR_PUBLIC_KEY_INVALID", CKR_PUBLIC_KEY_INVALID),
    ("CKR_FUNCTION_REJECTED", CKR_FUNCTION_REJECTED),
    ("CKR_TOKEN_RESOURCE_EXCEEDED", CKR_TOKEN_RESOURCE_EXCEEDED),
];

/// The functions of a PKCS#11 v2.40 function list, in `CK_FUNCTION_LIST` order.
pub const FUNCTIONS: &[&str] = &[
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
    "C_GetFunctionList",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_InitToken",
    "C_InitPIN",
    "C_SetPIN",
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_GetSessionInfo",
    "C_GetOperationState",
    "C_SetOperationState",
    "C_Login",
    "C_Logout",
    "C_CreateObject",
    "C_CopyObject",
    "C_DestroyObject",
    "C_GetObjectSize",
    "C_GetAttributeValue",
    "C_SetAttributeValue",
    "C_FindObjectsInit",
    "C_FindObjects",
    "C_FindObjectsFinal",
    "C_EncryptInit",
    "C_Encrypt",
    "C_EncryptUpdate",
    "C_EncryptFinal",
    "C_DecryptInit",
    "C_Decrypt",
    "C_DecryptUpdate",
    "C_DecryptFinal",
    "C_DigestInit",
    "C_Digest",
    "C_DigestUpdate",
    "C_DigestKey",
    "C_DigestFinal",
    "C_SignInit",
    "C_Sign",
    "C_SignUpdate",
    "C_SignFinal",
    "C_SignRecoverInit",
    "C_SignRecover",
    "C_VerifyInit",
    "C_Verify",
    "C_VerifyUpdate",
    "C_VerifyFinal",
    "C_VerifyRecoverInit",
    "C_VerifyRecover",
    "C_DigestEncryptUpdate",
    "C_DecryptDigestUpdate",
    "C_SignEncryptUpdate",
    "C_DecryptVerifyUpdate",
    "C_GenerateKey",
    "C_GenerateKeyPair",
    "C_WrapKey",
    "C_UnwrapKey",
    "C_DeriveKey",
    "C_SeedRandom",
    "C_GenerateRandom",
    "C_GetFunctionStatus",
    "C_CancelFunction",
    "C_WaitForSlotEvent",
];

/// The name of a return code (`CKR_…`), or its number in hex when it has none.
pub fn rv_name(rv: CK_RV) -> String {
    RETURN_CODES
        .iter()
        .find(|(_, v)| *v == rv)
        .map(|(n, _)| (*n).to_string())
        .unwrap_or_else(|| format!("0x{rv:08X}"))
}

/// Parses a return code given by name (`CKR_DEVICE_ERROR`, case-insensitive, the `CKR_`
/// prefix optional) or by number (`0x30`, `48`).
pub fn parse_rv(name: &str) -> Result<CK_RV> {
    let trimmed = name.trim();
    let upper = trimmed.to_ascii_uppercase();
    let full = if upper.starts_with("CKR_") {
        upper
    } else {
        format!("CKR_{upper}")
    };
    if let Some((_, v)) = RETURN_CODES.iter().find(|(n, _)| *n == full) {
        return Ok(*v);
    }
    let number = if let Some(hex) = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
    {
        CK_RV::from_str_radix(hex, 16).ok()
    } else {
        trimmed.parse::<CK_RV>().ok()
    };
    match number {
        Some(0) | None => Err(Error::UnknownRv {
            name: name.to_string(),
        }),
        Some(v) => Ok(v),
    }
}

/// Checks a PKCS#11 function name (`C_Sign`; the `C_` prefix optional, case-insensitive) and
/// returns it as the list spells it.
pub fn parse_function(name: &str) -> Result<&'static str> {
    let trimmed = name.trim();
    // SKF functions (`SKF_…`, the prefix required here) for tokens served by the SKF library.
    if trimmed.len() > 4 && trimmed[..4].eq_ignore_ascii_case("skf_") {
        return crate::skf::consts::parse_function(trimmed).ok_or_else(|| Error::UnknownFunction {
            name: name.to_string(),
        });
    }
    let wanted = if trimmed.len() > 2 && trimmed[..2].eq_ignore_ascii_case("c_") {
        trimmed[2..].to_ascii_lowercase()
    } else {
        trimmed.to_ascii_lowercase()
    };
    FUNCTIONS
        .iter()
        .find(|f| f[2..].to_ascii_lowercase() == wanted)
        .copied()
        .ok_or_else(|| Error::UnknownFunction {
            name: name.to_string(),
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn return_codes_parse_by_name_and_number() {
        assert_eq!(parse_rv("CKR_DEVICE_ERROR").unwrap(), CKR_DEVICE_ERROR);
        assert_eq!(parse_rv("device_removed").unwrap(), CKR_DEVICE_REMOVED);
        assert_eq!(parse_rv("0x30").unwrap(), 0x30);
        assert_eq!(parse_rv("48").unwrap(), 48);
        assert!(parse_rv("CKR_NOPE").is_err());
        assert_eq!(parse_rv("CKR_OK").unwrap(), CKR_OK);
        assert_eq!(rv_name(CKR_PIN_LOCKED), "CKR_PIN_LOCKED");
    }

    #[test]
    fn functions_parse_with_or_without_prefix() {
        assert_eq!(FUNCTIONS.len(), 68);
        assert_eq!(parse_function("C_Sign").unwrap(), "C_Sign");
        assert_eq!(
            parse_function("generatekeypair").unwrap(),
            "C_GenerateKeyPair"
        );
        assert!(parse_function("C_Frobnicate").is_err());
        assert_eq!(
            parse_function("skf_eccsigndata").unwrap(),
            "SKF_ECCSignData"
        );
        assert!(parse_function("SKF_Frobnicate").is_err());
    }
}
