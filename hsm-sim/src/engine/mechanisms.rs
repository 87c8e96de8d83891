//! The mechanisms every simulated token offers, as `C_GetMechanismList` and
//! `C_GetMechanismInfo` report them.

use cryptoki_sys::*;

/// The mechanisms every simulated token offers, with their `CK_MECHANISM_INFO`.
pub const MECHANISMS: &[(CK_MECHANISM_TYPE, CK_ULONG, CK_ULONG, CK_FLAGS)] = &[
    (
        CKM_EC_KEY_PAIR_GEN,
        256,
        256,
        CKF_HW | CKF_GENERATE_KEY_PAIR | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS,
    ),
    (
        CKM_RSA_PKCS_KEY_PAIR_GEN,
        1024,
        4096,
        CKF_HW | CKF_GENERATE_KEY_PAIR,
    ),
    (
        CKM_ECDSA,
        256,
        256,
        CKF_HW | CKF_SIGN | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS,
    ),
    (
        CKM_ECDSA_SHA256,
        256,
        256,
        CKF_HW | CKF_SIGN | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS,
    ),
    (
        CKM_RSA_PKCS,
        1024,
        4096,
        CKF_HW | CKF_SIGN | CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP,
    ),
    (CKM_SHA256_RSA_PKCS, 1024, 4096, CKF_HW | CKF_SIGN),
    (CKM_RSA_PKCS_PSS, 1024, 4096, CKF_HW | CKF_SIGN),
    (CKM_SHA256_RSA_PKCS_PSS, 1024, 4096, CKF_HW | CKF_SIGN),
    (
        CKM_RSA_PKCS_OAEP,
        1024,
        4096,
        CKF_HW | CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP,
    ),
    (
        CKM_ECDH1_DERIVE,
        256,
        256,
        CKF_HW | CKF_DERIVE | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS,
    ),
    // Secret keys: sizes in bytes, as the specification counts them for these mechanisms.
    (CKM_AES_KEY_GEN, 16, 32, CKF_HW | CKF_GENERATE),
    (CKM_GENERIC_SECRET_KEY_GEN, 1, 512, CKF_HW | CKF_GENERATE),
    (CKM_AES_ECB, 16, 32, CKF_HW | CKF_ENCRYPT | CKF_DECRYPT),
    (CKM_AES_CBC, 16, 32, CKF_HW | CKF_ENCRYPT | CKF_DECRYPT),
    (CKM_AES_CBC_PAD, 16, 32, CKF_HW | CKF_ENCRYPT | CKF_DECRYPT),
    (CKM_AES_GCM, 16, 32, CKF_HW | CKF_ENCRYPT | CKF_DECRYPT),
    (CKM_AES_KEY_WRAP, 16, 32, CKF_HW | CKF_WRAP | CKF_UNWRAP),
    (CKM_AES_KEY_WRAP_PAD, 16, 32, CKF_HW | CKF_WRAP | CKF_UNWRAP),
    (CKM_SHA_1, 0, 0, CKF_HW | CKF_DIGEST),
    (CKM_SHA256, 0, 0, CKF_HW | CKF_DIGEST),
    (CKM_SHA384, 0, 0, CKF_HW | CKF_DIGEST),
    (CKM_SHA512, 0, 0, CKF_HW | CKF_DIGEST),
];
