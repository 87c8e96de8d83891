//! Tests of the C ABI, calling the function list in-process: what cryptoki hides from the
//! integration tests (length queries, `CKR_BUFFER_TOO_SMALL`, `CK_UNAVAILABLE_INFORMATION`,
//! argument checks, the application's mutex callbacks).
//!
//! The module has one engine per process, so everything that needs it runs in one test
//! function; the shell and the length checks are tested on their own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::c_void;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicUsize, Ordering};

use cryptoki_sys::*;

use crate::rack::{InsertOptions, Rack, RackConfig};

static LOCKS: AtomicUsize = AtomicUsize::new(0);
static UNLOCKS: AtomicUsize = AtomicUsize::new(0);
static CREATED: AtomicUsize = AtomicUsize::new(0);
static DESTROYED: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn create_mutex(out: *mut *mut c_void) -> CK_RV {
    CREATED.fetch_add(1, Ordering::SeqCst);
    let m = Box::into_raw(Box::new(std::sync::Mutex::new(())));
    // SAFETY: the module passes a writable pointer.
    unsafe { *out = m as *mut c_void };
    CKR_OK
}

unsafe extern "C" fn destroy_mutex(m: *mut c_void) -> CK_RV {
    DESTROYED.fetch_add(1, Ordering::SeqCst);
    // SAFETY: `m` came from `create_mutex`.
    drop(unsafe { Box::from_raw(m as *mut std::sync::Mutex<()>) });
    CKR_OK
}

unsafe extern "C" fn lock_mutex(_: *mut c_void) -> CK_RV {
    LOCKS.fetch_add(1, Ordering::SeqCst);
    CKR_OK
}

unsafe extern "C" fn unlock_mutex(_: *mut c_void) -> CK_RV {
    UNLOCKS.fetch_add(1, Ordering::SeqCst);
    CKR_OK
}

fn list() -> &'static CK_FUNCTION_LIST {
    let mut p: *mut CK_FUNCTION_LIST = null_mut();
    // SAFETY: a valid out pointer.
    assert_eq!(unsafe { super::C_GetFunctionList(&mut p) }, CKR_OK);
    // SAFETY: the module hands out a pointer to its static list.
    unsafe { &*p }
}

fn attr(t: CK_ATTRIBUTE_TYPE, v: &mut [u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: t,
        pValue: v.as_mut_ptr() as *mut c_void,
        ulValueLen: v.len() as CK_ULONG,
    }
}

#[test]
fn c_abi_conventions() {
    let f = list();
    assert_eq!((f.version.major, f.version.minor), (2, 40));
    // SAFETY (for the whole test): every call passes pointers to live locals of the sizes
    // stated, as the PKCS#11 contract requires.
    unsafe {
        assert_eq!(
            f.C_GetSlotList.unwrap()(0, null_mut(), &mut 0),
            CKR_CRYPTOKI_NOT_INITIALIZED
        );

        let dir = tempfile::tempdir().unwrap();
        let rack = Rack::init(
            dir.path(),
            RackConfig {
                slots: 3,
                ..Default::default()
            },
            false,
        )
        .unwrap();
        rack.insert(1, InsertOptions::default()).unwrap();
        std::env::set_var("HSM_SIM_DIR", dir.path());

        // C_Initialize: bad arguments, then the application's mutex callbacks.
        let mut args = CK_C_INITIALIZE_ARGS {
            CreateMutex: Some(create_mutex),
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: 0,
            pReserved: null_mut(),
        };
        let init = f.C_Initialize.unwrap();
        assert_eq!(init(&mut args as *mut _ as *mut c_void), CKR_ARGUMENTS_BAD);
        args.DestroyMutex = Some(destroy_mutex);
        args.LockMutex = Some(lock_mutex);
        args.UnlockMutex = Some(unlock_mutex);
        assert_eq!(init(&mut args as *mut _ as *mut c_void), CKR_OK);
        assert_eq!(init(null_mut()), CKR_CRYPTOKI_ALREADY_INITIALIZED);
        assert_eq!(CREATED.load(Ordering::SeqCst), 1);

        // Slot list: length query, too small, right size.
        let mut n: CK_ULONG = 0;
        assert_eq!(f.C_GetSlotList.unwrap()(0, null_mut(), &mut n), CKR_OK);
        assert_eq!(n, 3);
        let mut slots = [0 as CK_SLOT_ID; 3];
        let mut small: CK_ULONG = 1;
        assert_eq!(
            f.C_GetSlotList.unwrap()(0, slots.as_mut_ptr(), &mut small),
            CKR_BUFFER_TOO_SMALL
        );
        assert_eq!(small, 3);
        let mut n: CK_ULONG = 3;
        assert_eq!(
            f.C_GetSlotList.unwrap()(1, slots.as_mut_ptr(), &mut n),
            CKR_OK
        );
        assert_eq!((n, slots[0]), (1, 1));

        let mut ti: CK_TOKEN_INFO = std::mem::zeroed();
        assert_eq!(f.C_GetTokenInfo.unwrap()(0, &mut ti), CKR_TOKEN_NOT_PRESENT);
        assert_eq!(f.C_GetTokenInfo.unwrap()(9, &mut ti), CKR_SLOT_ID_INVALID);
        assert_eq!(f.C_GetTokenInfo.unwrap()(1, &mut ti), CKR_OK);
        assert_eq!(ti.flags & CKF_TOKEN_INITIALIZED, 0);
        assert_eq!(ti.serialNumber.len(), 16);

        let mut h: CK_SESSION_HANDLE = 0;
        let open = f.C_OpenSession.unwrap();
        let rw = CKF_SERIAL_SESSION | CKF_RW_SESSION;
        assert_eq!(
            open(1, rw, null_mut(), None, &mut h),
            CKR_TOKEN_NOT_RECOGNIZED
        );
        assert_eq!(
            open(1, CKF_RW_SESSION, null_mut(), None, &mut h),
            CKR_SESSION_PARALLEL_NOT_SUPPORTED
        );
        let mut label = [b' '; 32];
        label[..3].copy_from_slice(b"abi");
        let mut so = *b"so-pin-1";
        assert_eq!(
            f.C_InitToken.unwrap()(1, so.as_mut_ptr(), so.len() as CK_ULONG, label.as_mut_ptr()),
            CKR_OK
        );
        assert_eq!(open(1, rw, null_mut(), None, &mut h), CKR_OK);
        assert_eq!(
            f.C_Login.unwrap()(h, CKU_SO, so.as_mut_ptr(), so.len() as CK_ULONG),
            CKR_OK
        );
        let mut user = *b"1234";
        assert_eq!(f.C_InitPIN.unwrap()(h, user.as_mut_ptr(), 4), CKR_OK);
        assert_eq!(f.C_Logout.unwrap()(h), CKR_OK);
        assert_eq!(
            f.C_Login.unwrap()(h, 77, user.as_mut_ptr(), 4),
            CKR_USER_TYPE_INVALID
        );
        assert_eq!(
            f.C_Login.unwrap()(h, CKU_USER, user.as_mut_ptr(), 4),
            CKR_OK
        );

        // A P-256 key pair.
        let mut ec_params = crate::rack::crypto::P256_PARAMS.to_vec();
        let mut yes = [1u8];
        let mut mech = CK_MECHANISM {
            mechanism: CKM_EC_KEY_PAIR_GEN,
            pParameter: null_mut(),
            ulParameterLen: 0,
        };
        let mut public = [
            attr(CKA_EC_PARAMS, &mut ec_params),
            attr(CKA_TOKEN, &mut yes),
        ];
        let mut yes2 = [1u8];
        let mut private = [attr(CKA_TOKEN, &mut yes2)];
        let (mut hpub, mut hpriv) = (0, 0);
        assert_eq!(
            f.C_GenerateKeyPair.unwrap()(
                h,
                &mut mech,
                public.as_mut_ptr(),
                2,
                private.as_mut_ptr(),
                1,
                &mut hpub,
                &mut hpriv
            ),
            CKR_OK
        );

        // C_GetAttributeValue: length query, too small, sensitive, invalid; all processed.
        let mut q = [
            CK_ATTRIBUTE {
                type_: CKA_EC_POINT,
                pValue: null_mut(),
                ulValueLen: 0,
            },
            CK_ATTRIBUTE {
                type_: CKA_MODULUS,
                pValue: null_mut(),
                ulValueLen: 0,
            },
        ];
        assert_eq!(
            f.C_GetAttributeValue.unwrap()(h, hpub, q.as_mut_ptr(), 2),
            CKR_ATTRIBUTE_TYPE_INVALID
        );
        assert_eq!(q[0].ulValueLen, 67);
        assert_eq!(q[1].ulValueLen, CK_UNAVAILABLE_INFORMATION);
        let mut tiny = [0u8; 10];
        let mut q = [attr(CKA_EC_POINT, &mut tiny)];
        assert_eq!(
            f.C_GetAttributeValue.unwrap()(h, hpub, q.as_mut_ptr(), 1),
            CKR_BUFFER_TOO_SMALL
        );
        assert_eq!(q[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
        let mut secret = [0u8; 64];
        let mut local = [0u8; 1];
        let mut q = [attr(CKA_VALUE, &mut secret), attr(CKA_LOCAL, &mut local)];
        assert_eq!(
            f.C_GetAttributeValue.unwrap()(h, hpriv, q.as_mut_ptr(), 2),
            CKR_ATTRIBUTE_SENSITIVE
        );
        assert_eq!(q[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
        assert_eq!((q[1].ulValueLen, local[0]), (1, 1));
        assert!(secret.iter().all(|b| *b == 0));

        // C_Sign: length query keeps the operation; too small keeps it; then the signature.
        let mut mech = CK_MECHANISM {
            mechanism: CKM_ECDSA,
            pParameter: null_mut(),
            ulParameterLen: 0,
        };
        assert_eq!(f.C_SignInit.unwrap()(h, &mut mech, hpriv), CKR_OK);
        assert_eq!(
            f.C_SignInit.unwrap()(h, &mut mech, hpriv),
            CKR_OPERATION_ACTIVE
        );
        let mut hash = [7u8; 32];
        let mut len: CK_ULONG = 0;
        assert_eq!(
            f.C_Sign.unwrap()(h, hash.as_mut_ptr(), 32, null_mut(), &mut len),
            CKR_OK
        );
        assert_eq!(len, 64);
        let mut sig = [0u8; 64];
        let mut len: CK_ULONG = 10;
        assert_eq!(
            f.C_Sign.unwrap()(h, hash.as_mut_ptr(), 32, sig.as_mut_ptr(), &mut len),
            CKR_BUFFER_TOO_SMALL
        );
        assert_eq!(len, 64);
        let mut len: CK_ULONG = 64;
        assert_eq!(
            f.C_Sign.unwrap()(h, hash.as_mut_ptr(), 32, sig.as_mut_ptr(), &mut len),
            CKR_OK
        );
        assert_eq!(
            f.C_Sign.unwrap()(h, hash.as_mut_ptr(), 32, sig.as_mut_ptr(), &mut len),
            CKR_OPERATION_NOT_INITIALIZED
        );
        // Multi-part signing is outside the simulator's scope; a signing mechanism is no
        // digest; a seed is accepted (and set aside).
        assert_eq!(
            f.C_SignUpdate.unwrap()(h, hash.as_mut_ptr(), 32),
            CKR_FUNCTION_NOT_SUPPORTED
        );
        assert_eq!(f.C_DigestInit.unwrap()(h, &mut mech), CKR_MECHANISM_INVALID);
        assert_eq!(f.C_SeedRandom.unwrap()(h, hash.as_mut_ptr(), 32), CKR_OK);
        assert_eq!(
            f.C_SeedRandom.unwrap()(h, null_mut(), 32),
            CKR_ARGUMENTS_BAD
        );
        // A wrong mechanism for the key.
        let mut rsa = CK_MECHANISM {
            mechanism: CKM_RSA_PKCS,
            pParameter: null_mut(),
            ulParameterLen: 0,
        };
        assert_eq!(
            f.C_SignInit.unwrap()(h, &mut rsa, hpriv),
            CKR_KEY_TYPE_INCONSISTENT
        );
        let mut pss = CK_MECHANISM {
            mechanism: CKM_RSA_PKCS_PSS,
            pParameter: null_mut(),
            ulParameterLen: 0,
        };
        assert_eq!(
            f.C_SignInit.unwrap()(h, &mut pss, hpriv),
            CKR_MECHANISM_PARAM_INVALID
        );

        // Finding objects in slices.
        assert_eq!(f.C_FindObjectsInit.unwrap()(h, null_mut(), 0), CKR_OK);
        assert_eq!(
            f.C_FindObjectsInit.unwrap()(h, null_mut(), 0),
            CKR_OPERATION_ACTIVE
        );
        let mut found = [0 as CK_OBJECT_HANDLE; 1];
        let mut count: CK_ULONG = 0;
        let mut total = 0;
        loop {
            assert_eq!(
                f.C_FindObjects.unwrap()(h, found.as_mut_ptr(), 1, &mut count),
                CKR_OK
            );
            if count == 0 {
                break;
            }
            total += 1;
        }
        assert_eq!(total, 2);
        assert_eq!(f.C_FindObjectsFinal.unwrap()(h), CKR_OK);

        // Bad pointers are refused, not dereferenced.
        assert_eq!(
            f.C_GetSessionInfo.unwrap()(h, null_mut()),
            CKR_ARGUMENTS_BAD
        );
        assert_eq!(
            f.C_GetAttributeValue.unwrap()(h, hpub, null_mut(), 1),
            CKR_ARGUMENTS_BAD
        );
        let mut slot: CK_SLOT_ID = 0;
        assert_eq!(
            f.C_WaitForSlotEvent.unwrap()(CKF_DONT_BLOCK, &mut slot, null_mut()),
            CKR_NO_EVENT
        );
        assert_eq!(
            f.C_WaitForSlotEvent.unwrap()(CKF_DONT_BLOCK, null_mut(), null_mut()),
            CKR_ARGUMENTS_BAD
        );

        let mut info: CK_INFO = std::mem::zeroed();
        assert_eq!(f.C_GetInfo.unwrap()(&mut info), CKR_OK);
        assert_eq!(
            (info.cryptokiVersion.major, info.cryptokiVersion.minor),
            (2, 40)
        );

        // The application's mutex guarded the engine's state, balanced.
        assert!(LOCKS.load(Ordering::SeqCst) > 10);
        assert_eq!(LOCKS.load(Ordering::SeqCst), UNLOCKS.load(Ordering::SeqCst));
        assert_eq!(f.C_CloseSession.unwrap()(h), CKR_OK);
        assert_eq!(f.C_CloseSession.unwrap()(h), CKR_SESSION_HANDLE_INVALID);
        assert_eq!(f.C_Finalize.unwrap()(null_mut()), CKR_OK);
        assert_eq!(DESTROYED.load(Ordering::SeqCst), 1);
        assert_eq!(
            f.C_Finalize.unwrap()(null_mut()),
            CKR_CRYPTOKI_NOT_INITIALIZED
        );
    }
}

#[test]
fn a_panic_stops_at_the_c_boundary() {
    assert_eq!(
        super::shell(|| panic!("a bug in the engine")),
        CKR_GENERAL_ERROR
    );
    assert_eq!(super::shell(|| Err(CKR_PIN_INCORRECT)), CKR_PIN_INCORRECT);
    assert_eq!(super::shell(|| Ok(())), CKR_OK);
}

#[test]
fn lengths_are_refused_before_memory_is_touched() {
    use super::*;
    // Non-null pointers to nothing: a check that came after a read would crash here.
    let p = std::ptr::NonNull::<u8>::dangling().as_ptr();
    let a = std::ptr::NonNull::<CK_ATTRIBUTE>::dangling().as_ptr();
    let big = MAX_DATA_LEN as CK_ULONG + 1;
    // SAFETY: every call is refused before its pointer is dereferenced (what is tested).
    unsafe {
        let range = CKR_DATA_LEN_RANGE;
        assert_eq!(
            bytes(p, CK_UNAVAILABLE_INFORMATION, MAX_DATA_LEN, range),
            Err(CKR_ARGUMENTS_BAD)
        );
        assert_eq!(bytes(p, big, MAX_DATA_LEN, range), Err(range));
        assert_eq!(
            bytes(null_mut(), 1, MAX_DATA_LEN, range),
            Err(CKR_ARGUMENTS_BAD)
        );
        assert_eq!(bytes(null_mut(), 0, MAX_DATA_LEN, range), Ok(&[][..]));
        assert_eq!(
            pin_bytes(p, 33, 32, CKR_PIN_INCORRECT),
            Err(CKR_PIN_INCORRECT)
        );
        assert_eq!(
            pin_bytes(null_mut(), 0, 32, CKR_PIN_INCORRECT),
            Err(CKR_ARGUMENTS_BAD)
        );
        assert_eq!(param_bytes(p, 1 << 61), Err(CKR_MECHANISM_PARAM_INVALID));
        let too_many = MAX_TEMPLATE_ATTRIBUTES as CK_ULONG + 1;
        assert_eq!(template(a, too_many).err(), Some(CKR_ARGUMENTS_BAD));
        assert_eq!(template(a, 1 << 61).err(), Some(CKR_ARGUMENTS_BAD));
        let mut lying = CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: p as *mut c_void,
            ulValueLen: MAX_ATTRIBUTE_LEN as CK_ULONG + 1,
        };
        assert_eq!(template(&lying, 1).err(), Some(CKR_ATTRIBUTE_VALUE_INVALID));
        lying.ulValueLen = CK_UNAVAILABLE_INFORMATION;
        assert_eq!(template(&lying, 1).err(), Some(CKR_ARGUMENTS_BAD));
        let r = items_mut(
            p,
            MAX_RANDOM_LEN as CK_ULONG + 1,
            MAX_RANDOM_LEN,
            CKR_ARGUMENTS_BAD,
        );
        assert_eq!(r.err(), Some(CKR_ARGUMENTS_BAD));
    }
    // An output buffer may claim any size memory can hold, and no more.
    assert_eq!(capacity::<u8>(1 << 40), Ok(1 << 40));
    let handles = (isize::MAX as usize / std::mem::size_of::<CK_OBJECT_HANDLE>()) as CK_ULONG;
    assert_eq!(
        capacity::<CK_OBJECT_HANDLE>(handles + 1),
        Err(CKR_ARGUMENTS_BAD)
    );
    assert_eq!(
        capacity::<u8>(CK_UNAVAILABLE_INFORMATION),
        Err(CKR_ARGUMENTS_BAD)
    );
}
