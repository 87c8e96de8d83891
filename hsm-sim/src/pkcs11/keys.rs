//! Key management (PKCS#11 v2.40 Base, section 5.13): `C_GenerateKeyPair`
//! (`CKM_EC_KEY_PAIR_GEN` on P-256, `CKM_RSA_PKCS_KEY_PAIR_GEN`) and `C_DeriveKey`
//! (`CKM_ECDH1_DERIVE`).

use cryptoki_sys::*;

use super::{eng, mechanism, param, param_bytes, put, shell, template};
use crate::engine::keys::{EcdhParams, KeyGen};

/// `C_GenerateKeyPair` (5.13).
pub(super) unsafe extern "C" fn C_GenerateKeyPair(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    pub_attrs: *mut CK_ATTRIBUTE,
    pub_count: CK_ULONG,
    priv_attrs: *mut CK_ATTRIBUTE,
    priv_count: CK_ULONG,
    pub_key: *mut CK_OBJECT_HANDLE,
    priv_key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    shell(|| {
        if pub_key.is_null() || priv_key.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let e = eng()?;
        // SAFETY: the caller passes a valid mechanism and templates of the stated sizes.
        let (m, public, private) = unsafe {
            (
                mechanism(mech)?,
                template(pub_attrs, pub_count)?,
                template(priv_attrs, priv_count)?,
            )
        };
        let kind = match m.mechanism {
            CKM_EC_KEY_PAIR_GEN => KeyGen::Ec,
            CKM_RSA_PKCS_KEY_PAIR_GEN => KeyGen::Rsa,
            _ => return Err(CKR_MECHANISM_INVALID),
        };
        let (p, s) = e.generate_key_pair(session, kind, public, private)?;
        // SAFETY: both checked non-null above.
        unsafe {
            put(pub_key, p)?;
            put(priv_key, s)
        }
    })
}

/// `C_DeriveKey` (5.13): ECDH with `CKD_NULL`.
pub(super) unsafe extern "C" fn C_DeriveKey(
    session: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    base: CK_OBJECT_HANDLE,
    attrs: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    shell(|| {
        if key.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let e = eng()?;
        // SAFETY: the caller passes a valid mechanism and a template of `count` attributes.
        let (m, t) = unsafe { (mechanism(mech)?, template(attrs, count)?) };
        if m.mechanism != CKM_ECDH1_DERIVE {
            return Err(CKR_MECHANISM_INVALID);
        }
        // SAFETY: the parameter of CKM_ECDH1_DERIVE is a CK_ECDH1_DERIVE_PARAMS (size checked).
        let p: CK_ECDH1_DERIVE_PARAMS = unsafe { param(m) }?;
        // SAFETY: the parameter's pointers hold the stated lengths (checked first).
        let (shared, public) = unsafe {
            (
                param_bytes(p.pSharedData, p.ulSharedDataLen)?,
                param_bytes(p.pPublicData, p.ulPublicDataLen)?,
            )
        };
        let params = EcdhParams {
            kdf: p.kdf,
            shared_data: shared.to_vec(),
            public_data: public.to_vec(),
        };
        let h = e.derive_ecdh(session, params, base, t)?;
        // SAFETY: checked non-null above.
        unsafe { put(key, h) }
    })
}
