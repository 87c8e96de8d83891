//! Object management (PKCS#11 v2.40 Base, section 5.7): create, copy, destroy, attributes,
//! find.

use cryptoki_sys::*;

use super::{MAX_TEMPLATE_ATTRIBUTES, capacity, eng, items_mut, put, shell, template};
use crate::rack::object::AttrRead;

/// `C_CreateObject` (5.7).
pub(super) unsafe extern "C" fn C_CreateObject(
    session: CK_SESSION_HANDLE,
    attrs: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    object: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        if object.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: the caller passes `count` attributes.
        let t = unsafe { template(attrs, count) }?;
        let h = e.create_object(session, t)?;
        // SAFETY: checked non-null above.
        unsafe { put(object, h) }
    })
}

/// `C_CopyObject` (5.7): the copy takes the template's changes (see the engine's rules);
/// `CKR_ACTION_PROHIBITED` for an object that is not `CKA_COPYABLE`.
pub(super) unsafe extern "C" fn C_CopyObject(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    attrs: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    copy: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        if copy.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: the caller passes `count` attributes.
        let t = unsafe { template(attrs, count) }?;
        let h = e.copy_object(session, object, t)?;
        // SAFETY: checked non-null above.
        unsafe { put(copy, h) }
    })
}

/// `C_DestroyObject` (5.7).
pub(super) unsafe extern "C" fn C_DestroyObject(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
) -> CK_RV {
    shell(|| eng()?.destroy_object(session, object))
}

/// `C_GetAttributeValue` (5.7): per attribute, the value, its length (NULL `pValue`), or
/// `CK_UNAVAILABLE_INFORMATION` with `CKR_ATTRIBUTE_SENSITIVE`, `CKR_ATTRIBUTE_TYPE_INVALID`
/// or `CKR_BUFFER_TOO_SMALL`; every attribute is processed either way.
pub(super) unsafe extern "C" fn C_GetAttributeValue(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    attrs: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes `count` writable attributes (the count checked first).
        let attrs = unsafe { items_mut(attrs, count, MAX_TEMPLATE_ATTRIBUTES, CKR_ARGUMENTS_BAD) }?;
        // Every capacity is checked before anything is written: a value buffer that claims
        // more bytes than memory holds (`CK_UNAVAILABLE_INFORMATION` left from an earlier
        // call, say) is refused whole. A NULL `pValue` is a length query: its length is
        // only written.
        let mut caps = Vec::with_capacity(attrs.len());
        for a in attrs.iter() {
            caps.push(if a.pValue.is_null() {
                0
            } else {
                capacity::<u8>(a.ulValueLen)?
            });
        }
        let types: Vec<CK_ATTRIBUTE_TYPE> = attrs.iter().map(|a| a.type_).collect();
        let reads = e.get_attributes(session, object, &types)?;
        let mut result = CKR_OK;
        for ((a, read), cap) in attrs.iter_mut().zip(reads).zip(caps) {
            match read {
                AttrRead::Sensitive => {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    result = CKR_ATTRIBUTE_SENSITIVE;
                }
                AttrRead::Invalid => {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    if result == CKR_OK || result == CKR_BUFFER_TOO_SMALL {
                        result = CKR_ATTRIBUTE_TYPE_INVALID;
                    }
                }
                AttrRead::Value(v) => {
                    if a.pValue.is_null() {
                        a.ulValueLen = v.len() as CK_ULONG;
                    } else if cap < v.len() {
                        a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                        if result == CKR_OK {
                            result = CKR_BUFFER_TOO_SMALL;
                        }
                    } else {
                        // SAFETY: `pValue` holds `ulValueLen >= v.len()` writable bytes.
                        unsafe {
                            std::ptr::copy_nonoverlapping(v.as_ptr(), a.pValue as *mut u8, v.len())
                        };
                        a.ulValueLen = v.len() as CK_ULONG;
                    }
                }
            }
        }
        if result == CKR_OK {
            Ok(())
        } else {
            Err(result)
        }
    })
}

/// `C_SetAttributeValue` (5.7).
pub(super) unsafe extern "C" fn C_SetAttributeValue(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    attrs: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes `count` attributes.
        let t = unsafe { template(attrs, count) }?;
        e.set_attributes(session, object, t)
    })
}

/// `C_FindObjectsInit` (5.7).
pub(super) unsafe extern "C" fn C_FindObjectsInit(
    session: CK_SESSION_HANDLE,
    attrs: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        // SAFETY: the caller passes `count` attributes.
        let t = unsafe { template(attrs, count) }?;
        e.find_init(session, t)
    })
}

/// `C_FindObjects` (5.7).
pub(super) unsafe extern "C" fn C_FindObjects(
    session: CK_SESSION_HANDLE,
    objects: *mut CK_OBJECT_HANDLE,
    max: CK_ULONG,
    found: *mut CK_ULONG,
) -> CK_RV {
    shell(|| {
        let e = eng()?;
        if found.is_null() || (objects.is_null() && max > 0) {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let max = capacity::<CK_OBJECT_HANDLE>(max)?;
        let hs = e.find_next(session, max)?;
        // SAFETY: `objects` holds `max >= hs.len()` handles; `found` is non-null.
        unsafe {
            std::ptr::copy_nonoverlapping(hs.as_ptr(), objects, hs.len());
            put(found, hs.len() as CK_ULONG)
        }
    })
}

/// `C_FindObjectsFinal` (5.7).
pub(super) unsafe extern "C" fn C_FindObjectsFinal(session: CK_SESSION_HANDLE) -> CK_RV {
    shell(|| eng()?.find_final(session))
}
