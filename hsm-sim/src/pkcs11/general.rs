//! General-purpose functions (PKCS#11 v2.40 Base, section 5.4): `C_Initialize`,
//! `C_Finalize`, `C_GetInfo`, `C_GetFunctionList`.

use std::ffi::c_void;
use std::sync::Arc;

use cryptoki_sys::*;

use super::{FUNCTION_LIST, pad, put, shell};
use crate::engine::{self, ExternalLock};
use crate::rack::Rv;

/// The application's mutex, used when it supplied callbacks without `CKF_OS_LOCKING_OK`.
struct AppMutex {
    mutex: *mut c_void,
    destroy: unsafe extern "C" fn(*mut c_void) -> CK_RV,
    lock: unsafe extern "C" fn(*mut c_void) -> CK_RV,
    unlock: unsafe extern "C" fn(*mut c_void) -> CK_RV,
}

// SAFETY: the application promises (by supplying these callbacks) that its mutex may be
// locked and unlocked from any thread; the pointer is only ever passed back to it.
unsafe impl Send for AppMutex {}
// SAFETY: as above: every use goes through the application's own thread-safe callbacks.
unsafe impl Sync for AppMutex {}

impl ExternalLock for AppMutex {
    fn lock(&self) {
        // SAFETY: `mutex` came from the application's CreateMutex and is not destroyed
        // before this value is dropped.
        unsafe { (self.lock)(self.mutex) };
    }
    fn unlock(&self) {
        // SAFETY: as in `lock`; only called after a matching `lock`.
        unsafe { (self.unlock)(self.mutex) };
    }
}

impl Drop for AppMutex {
    fn drop(&mut self) {
        // SAFETY: created by the application's CreateMutex, destroyed exactly once here.
        unsafe { (self.destroy)(self.mutex) };
    }
}

unsafe fn initialize(args: *mut c_void) -> Result<(), Rv> {
    if args.is_null() {
        return engine::initialize(None);
    }
    // SAFETY: a non-null argument is a CK_C_INITIALIZE_ARGS by the specification.
    let a = unsafe { &*(args as *const CK_C_INITIALIZE_ARGS) };
    if !a.pReserved.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    let fns = (a.CreateMutex, a.DestroyMutex, a.LockMutex, a.UnlockMutex);
    let external: Option<Arc<dyn ExternalLock>> = match fns {
        (None, None, None, None) => None,
        (Some(create), Some(destroy), Some(lock), Some(unlock)) => {
            if a.flags & CKF_OS_LOCKING_OK != 0 {
                // The application allows OS locking: we use our own (std) locks.
                None
            } else {
                let mut mutex: *mut c_void = std::ptr::null_mut();
                // SAFETY: the application's CreateMutex writes a mutex pointer.
                let r = unsafe { create(&mut mutex) };
                if r != CKR_OK {
                    return Err(r);
                }
                Some(Arc::new(AppMutex {
                    mutex,
                    destroy,
                    lock,
                    unlock,
                }))
            }
        }
        _ => return Err(CKR_ARGUMENTS_BAD),
    };
    engine::initialize(external)
}

/// `C_Initialize` (5.4): starts the module for this process. Honours `CKF_OS_LOCKING_OK`
/// and, without it, the application's mutex callbacks.
pub(super) unsafe extern "C" fn C_Initialize(args: *mut c_void) -> CK_RV {
    // SAFETY: `args` is null or a CK_C_INITIALIZE_ARGS, as the specification requires.
    shell(|| unsafe { initialize(args) })
}

/// `C_Finalize` (5.4).
pub(super) unsafe extern "C" fn C_Finalize(reserved: *mut c_void) -> CK_RV {
    shell(|| {
        engine::get()?;
        if !reserved.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        engine::finalize()
    })
}

/// `C_GetInfo` (5.4).
pub(super) unsafe extern "C" fn C_GetInfo(info: *mut CK_INFO) -> CK_RV {
    shell(|| {
        engine::get()?;
        let i = CK_INFO {
            cryptokiVersion: CK_VERSION {
                major: 2,
                minor: 40,
            },
            manufacturerID: pad("ukey-station"),
            flags: 0,
            libraryDescription: pad("hsm-sim virtual Ukey rack"),
            libraryVersion: CK_VERSION { major: 0, minor: 1 },
        };
        // SAFETY: `info` is null (rejected) or writable, as the caller promises.
        unsafe { put(info, i) }
    })
}

/// `C_GetFunctionList` (5.4): the one exported symbol.
///
/// # Safety
/// `list` must be null or valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    // SAFETY: forwarded with the same contract.
    unsafe { get_function_list(list) }
}

/// The list's own `C_GetFunctionList` entry (not exported, so never interposed).
pub(super) unsafe extern "C" fn get_function_list(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    // The list is immutable; PKCS#11 hands it out as a mutable pointer for historic reasons
    // and applications must not write through it.
    let p = &FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST;
    // SAFETY: `list` is null (rejected) or writable, as the caller promises.
    shell(|| unsafe { put(list, p) })
}
