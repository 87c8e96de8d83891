//! A sweep of malformed calls over every function of `libhsm_sim.so`'s PKCS#11 function list.
//!
//! Each case is one call with a NULL pointer, a huge or zero count or length, or lengths that
//! do not match their buffers, made in a forked child on a fresh copy of a prepared rack (a
//! blank token, and an initialized one with a user PIN, a P-256 and an RSA key pair and an
//! AES key). The child reports the `CK_RV` through a pipe; the parent asserts that the child
//! exited normally and that the call returned an error — never `CKR_OK`, a signal, an abort
//! or a hang. The functions come from the list `C_GetFunctionList` returns (every entry must have
//! a case) and from the library's export table (every exported `C_…` symbol must have one).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::ffi::{CString, c_void};
use std::mem::{offset_of, size_of};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::null_mut;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use hsm_sim::rack::{InsertOptions, Rack, RackConfig};

/// 2^61: more bytes than a process can map on 64-bit Linux, yet below `isize::MAX`, so only
/// the module's limits (not the "no buffer is that large" check) can refuse it as a byte
/// length.
const HUGE: CK_ULONG = 1 << 61;
/// `~0`: `CK_UNAVAILABLE_INFORMATION`, what a failed `C_GetAttributeValue` leaves behind.
const ALL_ONES: CK_ULONG = CK_UNAVAILABLE_INFORMATION;
/// How long one case may take before it counts as hung (a slow shared machine included).
const CASE_TIMEOUT: Duration = Duration::from_secs(60);

const SO_PIN: &[u8] = b"so-pin-12";
const USER_PIN: &[u8] = b"123456";
/// DER OID of prime256v1.
const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Every entry of the v2.40 function list, by name and offset in `CK_FUNCTION_LIST`.
macro_rules! entries {
    ($($f:ident),* $(,)?) => {
        &[$((stringify!($f), offset_of!(CK_FUNCTION_LIST, $f))),*]
    };
}

const ENTRIES: &[(&str, usize)] = entries!(
    C_Initialize,
    C_Finalize,
    C_GetInfo,
    C_GetFunctionList,
    C_GetSlotList,
    C_GetSlotInfo,
    C_GetTokenInfo,
    C_GetMechanismList,
    C_GetMechanismInfo,
    C_InitToken,
    C_InitPIN,
    C_SetPIN,
    C_OpenSession,
    C_CloseSession,
    C_CloseAllSessions,
    C_GetSessionInfo,
    C_GetOperationState,
    C_SetOperationState,
    C_Login,
    C_Logout,
    C_CreateObject,
    C_CopyObject,
    C_DestroyObject,
    C_GetObjectSize,
    C_GetAttributeValue,
    C_SetAttributeValue,
    C_FindObjectsInit,
    C_FindObjects,
    C_FindObjectsFinal,
    C_EncryptInit,
    C_Encrypt,
    C_EncryptUpdate,
    C_EncryptFinal,
    C_DecryptInit,
    C_Decrypt,
    C_DecryptUpdate,
    C_DecryptFinal,
    C_DigestInit,
    C_Digest,
    C_DigestUpdate,
    C_DigestKey,
    C_DigestFinal,
    C_SignInit,
    C_Sign,
    C_SignUpdate,
    C_SignFinal,
    C_SignRecoverInit,
    C_SignRecover,
    C_VerifyInit,
    C_Verify,
    C_VerifyUpdate,
    C_VerifyFinal,
    C_VerifyRecoverInit,
    C_VerifyRecover,
    C_DigestEncryptUpdate,
    C_DecryptDigestUpdate,
    C_SignEncryptUpdate,
    C_DecryptVerifyUpdate,
    C_GenerateKey,
    C_GenerateKeyPair,
    C_WrapKey,
    C_UnwrapKey,
    C_DeriveKey,
    C_SeedRandom,
    C_GenerateRandom,
    C_GetFunctionStatus,
    C_CancelFunction,
    C_WaitForSlotEvent,
);

/// The state a case's call is made in (reached in the child before the call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// The library loaded, `C_Initialize` not called.
    Loaded,
    /// `C_Initialize` done; no session.
    Initialized,
    /// A read/write session on the initialized token, nobody logged in.
    Public,
    /// The same session with the SO logged in.
    So,
    /// The same session with the user logged in.
    User,
    /// User session, `C_SignInit` with `CKM_ECDSA` on the P-256 key.
    SignEcdsa,
    /// User session, `C_SignInit` with `CKM_ECDSA_SHA256` (hashes its input) on the P-256 key.
    SignEcdsaSha256,
    /// User session, `C_DecryptInit` with `CKM_RSA_PKCS` on the RSA key.
    Decrypt,
    /// User session, `C_FindObjectsInit` for everything and one handle already fetched.
    Finding,
    /// User session, `C_EncryptInit` with `CKM_AES_CBC_PAD` on the AES key.
    Encrypt,
    /// User session, `C_DigestInit` with `CKM_SHA256`.
    Digest,
}

/// What the child knows when it makes the call.
struct Fx {
    list: &'static CK_FUNCTION_LIST,
    session: CK_SESSION_HANDLE,
    keys: Keys,
}

/// Handles of the prepared token's objects (token objects keep their handles across
/// processes).
#[derive(Debug, Clone, Copy)]
struct Keys {
    ec_public: CK_OBJECT_HANDLE,
    ec_private: CK_OBJECT_HANDLE,
    rsa_private: CK_OBJECT_HANDLE,
    aes: CK_OBJECT_HANDLE,
}

/// The blank token's slot and the initialized token's slot.
const BLANK_SLOT: CK_SLOT_ID = 0;
const TOKEN_SLOT: CK_SLOT_ID = 1;

type Call = Box<dyn Fn(&Fx) -> CK_RV>;

struct Case {
    function: &'static str,
    what: &'static str,
    setup: Setup,
    call: Call,
}

/// A case: `case!(C_Name, "what is wrong", Setup::…, |fx, f| call)`, where `f` is the list's
/// entry `C_Name` (so a case can only call the function it is filed under).
macro_rules! case {
    ($func:ident, $what:expr, $setup:expr, |$fx:ident, $f:ident| $body:expr) => {
        Case {
            function: stringify!($func),
            what: $what,
            setup: $setup,
            call: Box::new(move |$fx: &Fx| {
                let $f = $fx.list.$func.expect(stringify!($func));
                // SAFETY: the call's arguments are malformed on purpose; the child process is
                // disposable and the parent judges how it ended.
                #[allow(unused_unsafe)]
                unsafe {
                    $body
                }
            }),
        }
    };
}

fn attr(t: CK_ATTRIBUTE_TYPE, v: &mut [u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: t,
        pValue: v.as_mut_ptr() as *mut c_void,
        ulValueLen: v.len() as CK_ULONG,
    }
}

/// A one-attribute template whose value is a real 1-byte buffer claiming `len` bytes.
fn lying_template(buf: &mut [u8; 1], len: CK_ULONG) -> [CK_ATTRIBUTE; 1] {
    [CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: buf.as_mut_ptr() as *mut c_void,
        ulValueLen: len,
    }]
}

fn mech(m: CK_MECHANISM_TYPE, p: *mut c_void, len: CK_ULONG) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: m,
        pParameter: p,
        ulParameterLen: len,
    }
}

fn oaep(label: *mut c_void, len: CK_ULONG) -> CK_RSA_PKCS_OAEP_PARAMS {
    CK_RSA_PKCS_OAEP_PARAMS {
        hashAlg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        source: CKZ_DATA_SPECIFIED,
        pSourceData: label,
        ulSourceDataLen: len,
    }
}

fn ecdh(public: *mut u8, public_len: CK_ULONG, shared_len: CK_ULONG) -> CK_ECDH1_DERIVE_PARAMS {
    CK_ECDH1_DERIVE_PARAMS {
        kdf: CKD_NULL,
        ulSharedDataLen: shared_len,
        pSharedData: if shared_len == 0 { null_mut() } else { public },
        ulPublicDataLen: public_len,
        pPublicData: public,
    }
}

/// The malformed calls, function by function.
fn cases() -> Vec<Case> {
    use Setup::*;
    let mut c = vec![
        // ----- general purpose (5.4) -----
        case!(C_Initialize, "pReserved set", Loaded, |_fx, f| {
            let mut a: CK_C_INITIALIZE_ARGS = std::mem::zeroed();
            a.pReserved = std::ptr::dangling_mut::<c_void>();
            f(&mut a as *mut _ as *mut c_void)
        }),
        case!(
            C_Initialize,
            "some mutex callbacks only",
            Loaded,
            |_fx, f| {
                unsafe extern "C" fn create(_: *mut *mut c_void) -> CK_RV {
                    CKR_OK
                }
                let mut a: CK_C_INITIALIZE_ARGS = std::mem::zeroed();
                a.CreateMutex = Some(create);
                f(&mut a as *mut _ as *mut c_void)
            }
        ),
        case!(C_Initialize, "twice", Initialized, |_fx, f| f(null_mut())),
        case!(C_Finalize, "pReserved set", Initialized, |_fx, f| f(
            std::ptr::dangling_mut::<c_void>()
        )),
        case!(
            C_Finalize,
            "not initialized",
            Loaded,
            |_fx, f| f(null_mut())
        ),
        case!(C_GetInfo, "NULL info", Initialized, |_fx, f| f(null_mut())),
        case!(C_GetFunctionList, "NULL out pointer", Loaded, |_fx, f| f(
            null_mut()
        )),
        // ----- slots and tokens (5.5) -----
        case!(C_GetSlotList, "NULL count", Initialized, |_fx, f| f(
            0,
            null_mut(),
            null_mut()
        )),
        case!(C_GetSlotList, "zero capacity", Initialized, |_fx, f| {
            let mut slots = [0 as CK_SLOT_ID; 1];
            let mut n: CK_ULONG = 0;
            f(0, slots.as_mut_ptr(), &mut n)
        }),
        case!(
            C_GetSlotList,
            "capacity ~0 for a 1-slot buffer",
            Initialized,
            |_fx, f| {
                let mut slots = [0 as CK_SLOT_ID; 1];
                let mut n: CK_ULONG = ALL_ONES;
                f(0, slots.as_mut_ptr(), &mut n)
            }
        ),
        case!(C_GetSlotInfo, "NULL info", Initialized, |_fx, f| f(
            TOKEN_SLOT,
            null_mut()
        )),
        case!(C_GetSlotInfo, "slot ~0", Initialized, |_fx, f| {
            let mut i: CK_SLOT_INFO = std::mem::zeroed();
            f(ALL_ONES, &mut i)
        }),
        case!(C_GetTokenInfo, "NULL info", Initialized, |_fx, f| f(
            TOKEN_SLOT,
            null_mut()
        )),
        case!(C_GetTokenInfo, "slot 2^61", Initialized, |_fx, f| {
            let mut i: CK_TOKEN_INFO = std::mem::zeroed();
            f(HUGE, &mut i)
        }),
        case!(C_GetMechanismList, "NULL count", Initialized, |_fx, f| f(
            TOKEN_SLOT,
            null_mut(),
            null_mut()
        )),
        case!(
            C_GetMechanismList,
            "capacity ~0 for a 1-entry buffer",
            Initialized,
            |_fx, f| {
                let mut m = [0 as CK_MECHANISM_TYPE; 1];
                let mut n: CK_ULONG = ALL_ONES;
                f(TOKEN_SLOT, m.as_mut_ptr(), &mut n)
            }
        ),
        case!(C_GetMechanismList, "slot ~0", Initialized, |_fx, f| {
            let mut n: CK_ULONG = 0;
            f(ALL_ONES, null_mut(), &mut n)
        }),
        case!(C_GetMechanismInfo, "NULL info", Initialized, |_fx, f| f(
            TOKEN_SLOT,
            CKM_ECDSA,
            null_mut()
        )),
        case!(C_GetMechanismInfo, "mechanism ~0", Initialized, |_fx, f| {
            let mut i: CK_MECHANISM_INFO = std::mem::zeroed();
            f(TOKEN_SLOT, ALL_ONES, &mut i)
        }),
        case!(C_InitToken, "NULL PIN", Initialized, |_fx, f| {
            let mut label = [b' '; 32];
            f(BLANK_SLOT, null_mut(), 8, label.as_mut_ptr())
        }),
        case!(C_InitToken, "NULL label", Initialized, |_fx, f| {
            let mut pin = *b"so-pin-1";
            f(BLANK_SLOT, pin.as_mut_ptr(), 8, null_mut())
        }),
        case!(C_InitToken, "zero PIN length", Initialized, |_fx, f| {
            let (mut pin, mut label) = (*b"so-pin-1", [b' '; 32]);
            f(BLANK_SLOT, pin.as_mut_ptr(), 0, label.as_mut_ptr())
        }),
        case!(
            C_InitToken,
            "PIN length 2^61, blank token",
            Initialized,
            |_fx, f| {
                let (mut pin, mut label) = (*b"so-pin-1", [b' '; 32]);
                f(BLANK_SLOT, pin.as_mut_ptr(), HUGE, label.as_mut_ptr())
            }
        ),
        case!(
            C_InitToken,
            "PIN length 2^61, initialized token",
            Initialized,
            |_fx, f| {
                let (mut pin, mut label) = (*b"so-pin-1", [b' '; 32]);
                f(TOKEN_SLOT, pin.as_mut_ptr(), HUGE, label.as_mut_ptr())
            }
        ),
        case!(
            C_InitToken,
            "PIN length ~0, initialized token",
            Initialized,
            |_fx, f| {
                let (mut pin, mut label) = (*b"so-pin-1", [b' '; 32]);
                f(TOKEN_SLOT, pin.as_mut_ptr(), ALL_ONES, label.as_mut_ptr())
            }
        ),
        case!(C_InitPIN, "NULL PIN", So, |fx, f| f(
            fx.session,
            null_mut(),
            6
        )),
        case!(C_InitPIN, "zero PIN length", So, |fx, f| {
            let mut pin = *b"654321";
            f(fx.session, pin.as_mut_ptr(), 0)
        }),
        case!(C_InitPIN, "PIN length 2^61", So, |fx, f| {
            let mut pin = *b"654321";
            f(fx.session, pin.as_mut_ptr(), HUGE)
        }),
        case!(C_InitPIN, "PIN length ~0", So, |fx, f| {
            let mut pin = *b"654321";
            f(fx.session, pin.as_mut_ptr(), ALL_ONES)
        }),
        case!(C_SetPIN, "NULL old PIN", User, |fx, f| {
            let mut new = *b"654321";
            f(fx.session, null_mut(), 6, new.as_mut_ptr(), 6)
        }),
        case!(C_SetPIN, "old PIN length 2^61", User, |fx, f| {
            let (mut old, mut new) = (*b"123456", *b"654321");
            f(fx.session, old.as_mut_ptr(), HUGE, new.as_mut_ptr(), 6)
        }),
        case!(C_SetPIN, "old PIN length ~0", User, |fx, f| {
            let (mut old, mut new) = (*b"123456", *b"654321");
            f(fx.session, old.as_mut_ptr(), ALL_ONES, new.as_mut_ptr(), 6)
        }),
        case!(C_SetPIN, "new PIN length 2^61", User, |fx, f| {
            let (mut old, mut new) = (*b"123456", *b"654321");
            f(fx.session, old.as_mut_ptr(), 6, new.as_mut_ptr(), HUGE)
        }),
        case!(C_SetPIN, "new PIN length ~0", User, |fx, f| {
            let (mut old, mut new) = (*b"123456", *b"654321");
            f(fx.session, old.as_mut_ptr(), 6, new.as_mut_ptr(), ALL_ONES)
        }),
        case!(C_SetPIN, "zero new PIN length", User, |fx, f| {
            let (mut old, mut new) = (*b"123456", *b"654321");
            f(fx.session, old.as_mut_ptr(), 6, new.as_mut_ptr(), 0)
        }),
        case!(C_WaitForSlotEvent, "NULL slot", Initialized, |_fx, f| f(
            CKF_DONT_BLOCK,
            null_mut(),
            null_mut()
        )),
        case!(
            C_WaitForSlotEvent,
            "pReserved set",
            Initialized,
            |_fx, f| {
                let mut slot: CK_SLOT_ID = 0;
                f(
                    CKF_DONT_BLOCK,
                    &mut slot,
                    std::ptr::dangling_mut::<c_void>(),
                )
            }
        ),
        // ----- sessions (5.6) -----
        case!(C_OpenSession, "NULL session out", Initialized, |_fx, f| f(
            TOKEN_SLOT,
            CKF_SERIAL_SESSION,
            null_mut(),
            None,
            null_mut()
        )),
        case!(C_OpenSession, "slot ~0", Initialized, |_fx, f| {
            let mut h: CK_SESSION_HANDLE = 0;
            f(ALL_ONES, CKF_SERIAL_SESSION, null_mut(), None, &mut h)
        }),
        case!(C_OpenSession, "zero flags", Initialized, |_fx, f| {
            let mut h: CK_SESSION_HANDLE = 0;
            f(TOKEN_SLOT, 0, null_mut(), None, &mut h)
        }),
        case!(C_CloseSession, "handle ~0", Public, |_fx, f| f(ALL_ONES)),
        case!(C_CloseSession, "handle 0", Public, |_fx, f| f(0)),
        case!(C_CloseAllSessions, "slot ~0", Public, |_fx, f| f(ALL_ONES)),
        case!(C_GetSessionInfo, "NULL info", Public, |fx, f| f(
            fx.session,
            null_mut()
        )),
        case!(C_GetSessionInfo, "handle ~0", Public, |_fx, f| {
            let mut i: CK_SESSION_INFO = std::mem::zeroed();
            f(ALL_ONES, &mut i)
        }),
        case!(C_Login, "NULL PIN", Public, |fx, f| f(
            fx.session,
            CKU_USER,
            null_mut(),
            6
        )),
        case!(C_Login, "zero PIN length", Public, |fx, f| {
            let mut pin = *b"123456";
            f(fx.session, CKU_USER, pin.as_mut_ptr(), 0)
        }),
        case!(C_Login, "PIN length 2^61", Public, |fx, f| {
            let mut pin = *b"123456";
            f(fx.session, CKU_USER, pin.as_mut_ptr(), HUGE)
        }),
        case!(C_Login, "PIN length ~0", Public, |fx, f| {
            let mut pin = *b"123456";
            f(fx.session, CKU_USER, pin.as_mut_ptr(), ALL_ONES)
        }),
        case!(C_Login, "SO PIN length 2^61", Public, |fx, f| {
            let mut pin = *b"123456";
            f(fx.session, CKU_SO, pin.as_mut_ptr(), HUGE)
        }),
        case!(C_Login, "user type ~0", Public, |fx, f| {
            let mut pin = *b"123456";
            f(fx.session, ALL_ONES, pin.as_mut_ptr(), 6)
        }),
        case!(C_Logout, "handle ~0", User, |_fx, f| f(ALL_ONES)),
        case!(C_Logout, "nobody logged in", Public, |fx, f| f(fx.session)),
        // ----- objects (5.7) -----
        case!(C_CreateObject, "NULL object out", User, |fx, f| {
            let mut v = [1u8];
            let mut t = [attr(CKA_TOKEN, &mut v)];
            f(fx.session, t.as_mut_ptr(), 1, null_mut())
        }),
        case!(C_CreateObject, "NULL template, count 3", User, |fx, f| {
            let mut h: CK_OBJECT_HANDLE = 0;
            f(fx.session, null_mut(), 3, &mut h)
        }),
        case!(C_CreateObject, "empty template", User, |fx, f| {
            let mut h: CK_OBJECT_HANDLE = 0;
            f(fx.session, null_mut(), 0, &mut h)
        }),
        case!(
            C_CreateObject,
            "count 2^61 for a 1-attribute template",
            User,
            |fx, f| {
                let mut v = [1u8];
                let mut t = [attr(CKA_TOKEN, &mut v)];
                let mut h: CK_OBJECT_HANDLE = 0;
                f(fx.session, t.as_mut_ptr(), HUGE, &mut h)
            }
        ),
        case!(
            C_CreateObject,
            "ulValueLen CK_UNAVAILABLE_INFORMATION",
            User,
            |fx, f| {
                let mut buf = [0u8; 1];
                let mut t = lying_template(&mut buf, ALL_ONES);
                let mut h: CK_OBJECT_HANDLE = 0;
                f(fx.session, t.as_mut_ptr(), 1, &mut h)
            }
        ),
        case!(C_CreateObject, "ulValueLen 2^61", User, |fx, f| {
            let mut buf = [0u8; 1];
            let mut t = lying_template(&mut buf, HUGE);
            let mut h: CK_OBJECT_HANDLE = 0;
            f(fx.session, t.as_mut_ptr(), 1, &mut h)
        }),
        case!(C_CreateObject, "NULL value, length 8", User, |fx, f| {
            let mut t = [CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: null_mut(),
                ulValueLen: 8,
            }];
            let mut h: CK_OBJECT_HANDLE = 0;
            f(fx.session, t.as_mut_ptr(), 1, &mut h)
        }),
        case!(C_DestroyObject, "object ~0", User, |fx, f| f(
            fx.session, ALL_ONES
        )),
        case!(C_DestroyObject, "session ~0", User, |fx, f| f(
            ALL_ONES,
            fx.keys.ec_public
        )),
        case!(
            C_GetAttributeValue,
            "NULL template, count 1",
            User,
            |fx, f| f(fx.session, fx.keys.ec_public, null_mut(), 1)
        ),
        case!(
            C_GetAttributeValue,
            "count 2^61 for a 1-attribute template",
            User,
            |fx, f| {
                let mut v = [0u8; 80];
                let mut t = [attr(CKA_EC_POINT, &mut v)];
                f(fx.session, fx.keys.ec_public, t.as_mut_ptr(), HUGE)
            }
        ),
        case!(
            C_GetAttributeValue,
            "count ~0 for a 1-attribute template",
            User,
            |fx, f| {
                let mut v = [0u8; 80];
                let mut t = [attr(CKA_EC_POINT, &mut v)];
                f(fx.session, fx.keys.ec_public, t.as_mut_ptr(), ALL_ONES)
            }
        ),
        case!(
            C_GetAttributeValue,
            "capacity CK_UNAVAILABLE_INFORMATION for a 1-byte buffer",
            User,
            |fx, f| {
                let mut buf = [0u8; 1];
                let mut t = [CK_ATTRIBUTE {
                    type_: CKA_EC_POINT,
                    pValue: buf.as_mut_ptr() as *mut c_void,
                    ulValueLen: ALL_ONES,
                }];
                f(fx.session, fx.keys.ec_public, t.as_mut_ptr(), 1)
            }
        ),
        case!(
            C_GetAttributeValue,
            "empty template, object ~0",
            User,
            |fx, f| f(fx.session, ALL_ONES, null_mut(), 0)
        ),
        case!(
            C_SetAttributeValue,
            "NULL template, count 2",
            User,
            |fx, f| f(fx.session, fx.keys.ec_public, null_mut(), 2)
        ),
        case!(
            C_SetAttributeValue,
            "count 2^61 for a 1-attribute template",
            User,
            |fx, f| {
                let mut buf = [b'x'];
                let mut t = lying_template(&mut buf, 1);
                f(fx.session, fx.keys.ec_public, t.as_mut_ptr(), HUGE)
            }
        ),
        case!(
            C_SetAttributeValue,
            "ulValueLen CK_UNAVAILABLE_INFORMATION",
            User,
            |fx, f| {
                let mut buf = [b'x'];
                let mut t = lying_template(&mut buf, ALL_ONES);
                f(fx.session, fx.keys.ec_public, t.as_mut_ptr(), 1)
            }
        ),
        case!(C_SetAttributeValue, "ulValueLen 2^61", User, |fx, f| {
            let mut buf = [b'x'];
            let mut t = lying_template(&mut buf, HUGE);
            f(fx.session, fx.keys.ec_public, t.as_mut_ptr(), 1)
        }),
        case!(
            C_FindObjectsInit,
            "NULL template, count 4",
            User,
            |fx, f| f(fx.session, null_mut(), 4)
        ),
        case!(
            C_FindObjectsInit,
            "count 2^61 for a 1-attribute template",
            User,
            |fx, f| {
                let mut buf = [b'x'];
                let mut t = lying_template(&mut buf, 1);
                f(fx.session, t.as_mut_ptr(), HUGE)
            }
        ),
        case!(
            C_FindObjectsInit,
            "ulValueLen CK_UNAVAILABLE_INFORMATION",
            User,
            |fx, f| {
                let mut buf = [b'x'];
                let mut t = lying_template(&mut buf, ALL_ONES);
                f(fx.session, t.as_mut_ptr(), 1)
            }
        ),
        case!(C_FindObjectsInit, "ulValueLen 2^61", User, |fx, f| {
            let mut buf = [b'x'];
            let mut t = lying_template(&mut buf, HUGE);
            f(fx.session, t.as_mut_ptr(), 1)
        }),
        case!(C_FindObjects, "NULL found count", Finding, |fx, f| {
            let mut hs = [0 as CK_OBJECT_HANDLE; 1];
            f(fx.session, hs.as_mut_ptr(), 1, null_mut())
        }),
        case!(C_FindObjects, "NULL handles, max 4", Finding, |fx, f| {
            let mut n: CK_ULONG = 0;
            f(fx.session, null_mut(), 4, &mut n)
        }),
        case!(
            C_FindObjects,
            "max ~0 for a 1-handle buffer",
            Finding,
            |fx, f| {
                let mut hs = [0 as CK_OBJECT_HANDLE; 1];
                let mut n: CK_ULONG = 0;
                f(fx.session, hs.as_mut_ptr(), ALL_ONES, &mut n)
            }
        ),
        case!(
            C_FindObjects,
            "max 2^61 for a 1-handle buffer",
            Finding,
            |fx, f| {
                let mut hs = [0 as CK_OBJECT_HANDLE; 1];
                let mut n: CK_ULONG = 0;
                f(fx.session, hs.as_mut_ptr(), HUGE, &mut n)
            }
        ),
        case!(C_FindObjects, "no search active", User, |fx, f| {
            let mut hs = [0 as CK_OBJECT_HANDLE; 1];
            let mut n: CK_ULONG = 0;
            f(fx.session, hs.as_mut_ptr(), 1, &mut n)
        }),
        case!(C_FindObjectsFinal, "no search active", User, |fx, f| f(
            fx.session
        )),
        case!(C_FindObjectsFinal, "handle ~0", Finding, |_fx, f| f(
            ALL_ONES
        )),
        // ----- signing (5.11) -----
        case!(C_SignInit, "NULL mechanism", User, |fx, f| f(
            fx.session,
            null_mut(),
            fx.keys.ec_private
        )),
        case!(C_SignInit, "PSS parameter length ~0", User, |fx, f| {
            let mut p: CK_RSA_PKCS_PSS_PARAMS = std::mem::zeroed();
            let mut m = mech(CKM_RSA_PKCS_PSS, &mut p as *mut _ as *mut c_void, ALL_ONES);
            f(fx.session, &mut m, fx.keys.rsa_private)
        }),
        case!(
            C_SignInit,
            "PSS parameter NULL with its length",
            User,
            |fx, f| {
                let mut m = mech(
                    CKM_RSA_PKCS_PSS,
                    null_mut(),
                    size_of::<CK_RSA_PKCS_PSS_PARAMS>() as CK_ULONG,
                );
                f(fx.session, &mut m, fx.keys.rsa_private)
            }
        ),
        case!(C_SignInit, "mechanism ~0", User, |fx, f| {
            let mut m = mech(ALL_ONES, null_mut(), 0);
            f(fx.session, &mut m, fx.keys.ec_private)
        }),
        case!(C_Sign, "NULL signature length", SignEcdsa, |fx, f| {
            let mut data = [7u8; 32];
            let mut sig = [0u8; 64];
            f(
                fx.session,
                data.as_mut_ptr(),
                32,
                sig.as_mut_ptr(),
                null_mut(),
            )
        }),
        case!(C_Sign, "NULL data, length 32", SignEcdsa, |fx, f| {
            let mut sig = [0u8; 64];
            let mut n: CK_ULONG = 64;
            f(fx.session, null_mut(), 32, sig.as_mut_ptr(), &mut n)
        }),
        case!(C_Sign, "zero data length (ECDSA)", SignEcdsa, |fx, f| {
            let mut data = [7u8; 32];
            let mut sig = [0u8; 64];
            let mut n: CK_ULONG = 64;
            f(fx.session, data.as_mut_ptr(), 0, sig.as_mut_ptr(), &mut n)
        }),
        case!(
            C_Sign,
            "data length 2^61 (hashing mechanism)",
            SignEcdsaSha256,
            |fx, f| {
                let mut data = [7u8; 32];
                let mut sig = [0u8; 64];
                let mut n: CK_ULONG = 64;
                f(
                    fx.session,
                    data.as_mut_ptr(),
                    HUGE,
                    sig.as_mut_ptr(),
                    &mut n,
                )
            }
        ),
        case!(
            C_Sign,
            "data length ~0 (hashing mechanism)",
            SignEcdsaSha256,
            |fx, f| {
                let mut data = [7u8; 32];
                let mut sig = [0u8; 64];
                let mut n: CK_ULONG = 64;
                f(
                    fx.session,
                    data.as_mut_ptr(),
                    ALL_ONES,
                    sig.as_mut_ptr(),
                    &mut n,
                )
            }
        ),
        case!(
            C_Sign,
            "signature capacity ~0 for an 8-byte buffer",
            SignEcdsa,
            |fx, f| {
                let mut data = [7u8; 32];
                let mut sig = [0u8; 8];
                let mut n: CK_ULONG = ALL_ONES;
                f(fx.session, data.as_mut_ptr(), 32, sig.as_mut_ptr(), &mut n)
            }
        ),
        // ----- decryption (5.9) -----
        case!(C_DecryptInit, "NULL mechanism", User, |fx, f| f(
            fx.session,
            null_mut(),
            fx.keys.rsa_private
        )),
        case!(C_DecryptInit, "OAEP label length ~0", User, |fx, f| {
            let mut label = *b"label";
            let mut p = oaep(label.as_mut_ptr() as *mut c_void, ALL_ONES);
            let mut m = mech(
                CKM_RSA_PKCS_OAEP,
                &mut p as *mut _ as *mut c_void,
                size_of::<CK_RSA_PKCS_OAEP_PARAMS>() as CK_ULONG,
            );
            f(fx.session, &mut m, fx.keys.rsa_private)
        }),
        case!(C_DecryptInit, "OAEP label length 2^61", User, |fx, f| {
            let mut label = *b"label";
            let mut p = oaep(label.as_mut_ptr() as *mut c_void, HUGE);
            let mut m = mech(
                CKM_RSA_PKCS_OAEP,
                &mut p as *mut _ as *mut c_void,
                size_of::<CK_RSA_PKCS_OAEP_PARAMS>() as CK_ULONG,
            );
            f(fx.session, &mut m, fx.keys.rsa_private)
        }),
        case!(C_DecryptInit, "OAEP NULL label, length 5", User, |fx, f| {
            let mut p = oaep(null_mut(), 5);
            let mut m = mech(
                CKM_RSA_PKCS_OAEP,
                &mut p as *mut _ as *mut c_void,
                size_of::<CK_RSA_PKCS_OAEP_PARAMS>() as CK_ULONG,
            );
            f(fx.session, &mut m, fx.keys.rsa_private)
        }),
        case!(C_DecryptInit, "OAEP parameter length 1", User, |fx, f| {
            let mut p = oaep(null_mut(), 0);
            let mut m = mech(CKM_RSA_PKCS_OAEP, &mut p as *mut _ as *mut c_void, 1);
            f(fx.session, &mut m, fx.keys.rsa_private)
        }),
        case!(C_Decrypt, "NULL output length", Decrypt, |fx, f| {
            let mut data = [1u8; 128];
            let mut out = [0u8; 128];
            f(
                fx.session,
                data.as_mut_ptr(),
                128,
                out.as_mut_ptr(),
                null_mut(),
            )
        }),
        case!(C_Decrypt, "NULL data, length 128", Decrypt, |fx, f| {
            let mut out = [0u8; 128];
            let mut n: CK_ULONG = 128;
            f(fx.session, null_mut(), 128, out.as_mut_ptr(), &mut n)
        }),
        case!(C_Decrypt, "zero data length", Decrypt, |fx, f| {
            let mut data = [1u8; 128];
            let mut out = [0u8; 128];
            let mut n: CK_ULONG = 128;
            f(fx.session, data.as_mut_ptr(), 0, out.as_mut_ptr(), &mut n)
        }),
        case!(C_Decrypt, "data length 2^61", Decrypt, |fx, f| {
            let mut data = [1u8; 128];
            let mut out = [0u8; 128];
            let mut n: CK_ULONG = 128;
            f(
                fx.session,
                data.as_mut_ptr(),
                HUGE,
                out.as_mut_ptr(),
                &mut n,
            )
        }),
        case!(C_Decrypt, "data length ~0", Decrypt, |fx, f| {
            let mut data = [1u8; 128];
            let mut out = [0u8; 128];
            let mut n: CK_ULONG = 128;
            f(
                fx.session,
                data.as_mut_ptr(),
                ALL_ONES,
                out.as_mut_ptr(),
                &mut n,
            )
        }),
        case!(
            C_Decrypt,
            "output capacity ~0 for an 8-byte buffer",
            Decrypt,
            |fx, f| {
                let mut data = [1u8; 128];
                let mut out = [0u8; 8];
                let mut n: CK_ULONG = ALL_ONES;
                f(fx.session, data.as_mut_ptr(), 128, out.as_mut_ptr(), &mut n)
            }
        ),
        // ----- key management (5.13) -----
        case!(C_GenerateKeyPair, "NULL mechanism", User, |fx, f| {
            let (mut a, mut b) = (0, 0);
            f(
                fx.session,
                null_mut(),
                null_mut(),
                0,
                null_mut(),
                0,
                &mut a,
                &mut b,
            )
        }),
        case!(C_GenerateKeyPair, "NULL key outputs", User, |fx, f| {
            let mut m = mech(CKM_EC_KEY_PAIR_GEN, null_mut(), 0);
            let mut params = P256;
            let mut t = [attr(CKA_EC_PARAMS, &mut params)];
            f(
                fx.session,
                &mut m,
                t.as_mut_ptr(),
                1,
                null_mut(),
                0,
                null_mut(),
                null_mut(),
            )
        }),
        case!(
            C_GenerateKeyPair,
            "public template count 2^61",
            User,
            |fx, f| {
                let mut m = mech(CKM_EC_KEY_PAIR_GEN, null_mut(), 0);
                let mut params = P256;
                let mut t = [attr(CKA_EC_PARAMS, &mut params)];
                let (mut a, mut b) = (0, 0);
                f(
                    fx.session,
                    &mut m,
                    t.as_mut_ptr(),
                    HUGE,
                    null_mut(),
                    0,
                    &mut a,
                    &mut b,
                )
            }
        ),
        case!(
            C_GenerateKeyPair,
            "private template ulValueLen CK_UNAVAILABLE_INFORMATION",
            User,
            |fx, f| {
                let mut m = mech(CKM_EC_KEY_PAIR_GEN, null_mut(), 0);
                let mut params = P256;
                let mut t = [attr(CKA_EC_PARAMS, &mut params)];
                let mut buf = [0u8; 1];
                let mut p = lying_template(&mut buf, ALL_ONES);
                let (mut a, mut b) = (0, 0);
                f(
                    fx.session,
                    &mut m,
                    t.as_mut_ptr(),
                    1,
                    p.as_mut_ptr(),
                    1,
                    &mut a,
                    &mut b,
                )
            }
        ),
        case!(
            C_GenerateKeyPair,
            "NULL private template, count 2",
            User,
            |fx, f| {
                let mut m = mech(CKM_EC_KEY_PAIR_GEN, null_mut(), 0);
                let mut params = P256;
                let mut t = [attr(CKA_EC_PARAMS, &mut params)];
                let (mut a, mut b) = (0, 0);
                f(
                    fx.session,
                    &mut m,
                    t.as_mut_ptr(),
                    1,
                    null_mut(),
                    2,
                    &mut a,
                    &mut b,
                )
            }
        ),
        case!(C_DeriveKey, "NULL key out", User, |fx, f| {
            let mut point = [4u8; 65];
            let mut p = ecdh(point.as_mut_ptr(), 65, 0);
            let mut m = mech(
                CKM_ECDH1_DERIVE,
                &mut p as *mut _ as *mut c_void,
                size_of::<CK_ECDH1_DERIVE_PARAMS>() as CK_ULONG,
            );
            f(
                fx.session,
                &mut m,
                fx.keys.ec_private,
                null_mut(),
                0,
                null_mut(),
            )
        }),
        case!(C_DeriveKey, "public data length ~0", User, |fx, f| {
            let mut point = [4u8; 65];
            let mut p = ecdh(point.as_mut_ptr(), ALL_ONES, 0);
            let mut m = mech(
                CKM_ECDH1_DERIVE,
                &mut p as *mut _ as *mut c_void,
                size_of::<CK_ECDH1_DERIVE_PARAMS>() as CK_ULONG,
            );
            let mut h = 0;
            f(
                fx.session,
                &mut m,
                fx.keys.ec_private,
                null_mut(),
                0,
                &mut h,
            )
        }),
        case!(C_DeriveKey, "public data length 2^61", User, |fx, f| {
            let mut point = [4u8; 65];
            let mut p = ecdh(point.as_mut_ptr(), HUGE, 0);
            let mut m = mech(
                CKM_ECDH1_DERIVE,
                &mut p as *mut _ as *mut c_void,
                size_of::<CK_ECDH1_DERIVE_PARAMS>() as CK_ULONG,
            );
            let mut h = 0;
            f(
                fx.session,
                &mut m,
                fx.keys.ec_private,
                null_mut(),
                0,
                &mut h,
            )
        }),
        case!(C_DeriveKey, "shared data length 2^61", User, |fx, f| {
            let mut point = [4u8; 65];
            let mut p = ecdh(point.as_mut_ptr(), 65, HUGE);
            let mut m = mech(
                CKM_ECDH1_DERIVE,
                &mut p as *mut _ as *mut c_void,
                size_of::<CK_ECDH1_DERIVE_PARAMS>() as CK_ULONG,
            );
            let mut h = 0;
            f(
                fx.session,
                &mut m,
                fx.keys.ec_private,
                null_mut(),
                0,
                &mut h,
            )
        }),
        case!(C_DeriveKey, "parameter length ~0", User, |fx, f| {
            let mut point = [4u8; 65];
            let mut p = ecdh(point.as_mut_ptr(), 65, 0);
            let mut m = mech(CKM_ECDH1_DERIVE, &mut p as *mut _ as *mut c_void, ALL_ONES);
            let mut h = 0;
            f(
                fx.session,
                &mut m,
                fx.keys.ec_private,
                null_mut(),
                0,
                &mut h,
            )
        }),
        case!(C_DeriveKey, "template count 2^61", User, |fx, f| {
            let mut point = [4u8; 65];
            let mut p = ecdh(point.as_mut_ptr(), 65, 0);
            let mut m = mech(
                CKM_ECDH1_DERIVE,
                &mut p as *mut _ as *mut c_void,
                size_of::<CK_ECDH1_DERIVE_PARAMS>() as CK_ULONG,
            );
            let mut buf = [b'x'];
            let mut t = lying_template(&mut buf, 1);
            let mut h = 0;
            f(
                fx.session,
                &mut m,
                fx.keys.ec_private,
                t.as_mut_ptr(),
                HUGE,
                &mut h,
            )
        }),
        // ----- random numbers (5.15) -----
        case!(C_SeedRandom, "NULL seed, length ~0", User, |fx, f| f(
            fx.session,
            null_mut(),
            ALL_ONES
        )),
        case!(C_SeedRandom, "session ~0", User, |_fx, f| {
            let mut seed = [0u8; 4];
            f(ALL_ONES, seed.as_mut_ptr(), 4)
        }),
        case!(C_GenerateRandom, "NULL buffer, length 16", User, |fx, f| f(
            fx.session,
            null_mut(),
            16
        )),
        case!(
            C_GenerateRandom,
            "length 2^61 for a 16-byte buffer",
            User,
            |fx, f| {
                let mut buf = [0u8; 16];
                f(fx.session, buf.as_mut_ptr(), HUGE)
            }
        ),
        case!(
            C_GenerateRandom,
            "length ~0 for a 16-byte buffer",
            User,
            |fx, f| {
                let mut buf = [0u8; 16];
                f(fx.session, buf.as_mut_ptr(), ALL_ONES)
            }
        ),
        case!(
            C_GenerateRandom,
            "zero length, session ~0",
            User,
            |_fx, f| {
                let mut buf = [0u8; 16];
                f(ALL_ONES, buf.as_mut_ptr(), 0)
            }
        ),
    ];
    c.extend(crypto_cases());
    c.extend(unsupported_cases());
    c
}

/// Encryption, decryption, digests, secret keys, wrapping, copies and seeds: the sweeps
/// these functions had while unimplemented (NULL pointers with huge lengths), and malformed
/// calls in the states where they do real work.
fn crypto_cases() -> Vec<Case> {
    use Setup::*;
    let n = null_mut::<CK_BYTE>;
    let nl = null_mut::<CK_ULONG>;
    let na = null_mut::<CK_ATTRIBUTE>;
    let nm = null_mut::<CK_MECHANISM>;
    let no = null_mut::<CK_OBJECT_HANDLE>;
    let h = HUGE;
    let a = ALL_ONES;
    let mut c = vec![
        case!(C_CopyObject, "NULL template, count 2^61", User, |fx, f| f(
            fx.session,
            fx.keys.ec_public,
            na(),
            h,
            no()
        )),
        case!(C_EncryptInit, "NULL mechanism", User, |fx, f| f(
            fx.session,
            nm(),
            fx.keys.rsa_private
        )),
        case!(C_Encrypt, "NULL data, length 2^61", User, |fx, f| f(
            fx.session,
            n(),
            h,
            n(),
            nl()
        )),
        case!(C_EncryptUpdate, "NULL data, length ~0", User, |fx, f| f(
            fx.session,
            n(),
            a,
            n(),
            nl()
        )),
        case!(C_EncryptFinal, "NULL, NULL", User, |fx, f| f(
            fx.session,
            n(),
            nl()
        )),
        case!(C_DecryptUpdate, "NULL data, length ~0", User, |fx, f| f(
            fx.session,
            n(),
            a,
            n(),
            nl()
        )),
        case!(C_DecryptFinal, "NULL, NULL", User, |fx, f| f(
            fx.session,
            n(),
            nl()
        )),
        case!(C_DigestInit, "NULL mechanism", User, |fx, f| f(
            fx.session,
            nm()
        )),
        case!(C_Digest, "NULL data, length 2^61", User, |fx, f| f(
            fx.session,
            n(),
            h,
            n(),
            nl()
        )),
        case!(C_DigestUpdate, "NULL data, length ~0", User, |fx, f| f(
            fx.session,
            n(),
            a
        )),
        case!(C_DigestKey, "key ~0", User, |fx, f| f(fx.session, a)),
        case!(C_DigestFinal, "NULL, NULL", User, |fx, f| f(
            fx.session,
            n(),
            nl()
        )),
        case!(
            C_GenerateKey,
            "NULL mechanism, template count 2^61",
            User,
            |fx, f| f(fx.session, nm(), na(), h, no())
        ),
        case!(C_WrapKey, "NULL mechanism and outputs", User, |fx, f| f(
            fx.session,
            nm(),
            a,
            a,
            n(),
            nl()
        )),
        case!(
            C_UnwrapKey,
            "NULL wrapped key, length ~0, template count 2^61",
            User,
            |fx, f| f(fx.session, nm(), a, n(), a, na(), h, no())
        ),
    ];
    c.extend(vec![
        // ----- encryption (5.8) -----
        case!(
            C_EncryptInit,
            "CBC IV length 2^61 at NULL",
            User,
            |fx, f| {
                let mut m = mech(CKM_AES_CBC, null_mut(), HUGE);
                f(fx.session, &mut m, fx.keys.aes)
            }
        ),
        case!(C_EncryptInit, "CBC IV of 15 bytes", User, |fx, f| {
            let mut iv = [0u8; 15];
            let mut m = mech(CKM_AES_CBC, iv.as_mut_ptr().cast(), 15);
            f(fx.session, &mut m, fx.keys.aes)
        }),
        case!(C_EncryptInit, "GCM IV length 2^61", User, |fx, f| {
            let mut iv = [0u8; 1];
            let mut g = CK_GCM_PARAMS {
                pIv: iv.as_mut_ptr(),
                ulIvLen: HUGE,
                ulIvBits: 96,
                pAAD: null_mut(),
                ulAADLen: 0,
                ulTagBits: 128,
            };
            let mut m = mech(
                CKM_AES_GCM,
                (&mut g as *mut CK_GCM_PARAMS).cast(),
                size_of::<CK_GCM_PARAMS>() as CK_ULONG,
            );
            f(fx.session, &mut m, fx.keys.aes)
        }),
        case!(C_EncryptInit, "GCM NULL AAD, length ~0", User, |fx, f| {
            let mut iv = [0u8; 12];
            let mut g = CK_GCM_PARAMS {
                pIv: iv.as_mut_ptr(),
                ulIvLen: 12,
                ulIvBits: 96,
                pAAD: null_mut(),
                ulAADLen: ALL_ONES,
                ulTagBits: 128,
            };
            let mut m = mech(
                CKM_AES_GCM,
                (&mut g as *mut CK_GCM_PARAMS).cast(),
                size_of::<CK_GCM_PARAMS>() as CK_ULONG,
            );
            f(fx.session, &mut m, fx.keys.aes)
        }),
        case!(C_Encrypt, "NULL output length", Encrypt, |fx, f| {
            let mut data = [1u8; 16];
            let mut out = [0u8; 32];
            f(
                fx.session,
                data.as_mut_ptr(),
                16,
                out.as_mut_ptr(),
                null_mut(),
            )
        }),
        case!(
            C_Encrypt,
            "capacity ~0 for a 32-byte buffer",
            Encrypt,
            |fx, f| {
                let mut data = [1u8; 16];
                let mut out = [0u8; 32];
                let mut len: CK_ULONG = ALL_ONES;
                f(
                    fx.session,
                    data.as_mut_ptr(),
                    16,
                    out.as_mut_ptr(),
                    &mut len,
                )
            }
        ),
        case!(C_Encrypt, "NULL data, length 16", Encrypt, |fx, f| {
            let mut out = [0u8; 32];
            let mut len: CK_ULONG = 32;
            f(fx.session, null_mut(), 16, out.as_mut_ptr(), &mut len)
        }),
        case!(C_EncryptUpdate, "NULL output length", Encrypt, |fx, f| {
            let mut data = [1u8; 16];
            let mut out = [0u8; 16];
            f(
                fx.session,
                data.as_mut_ptr(),
                16,
                out.as_mut_ptr(),
                null_mut(),
            )
        }),
        case!(C_EncryptUpdate, "data length 2^61", Encrypt, |fx, f| {
            let mut data = [1u8; 16];
            let mut out = [0u8; 16];
            let mut len: CK_ULONG = 16;
            f(
                fx.session,
                data.as_mut_ptr(),
                HUGE,
                out.as_mut_ptr(),
                &mut len,
            )
        }),
        case!(
            C_EncryptFinal,
            "capacity ~0 for a 16-byte buffer",
            Encrypt,
            |fx, f| {
                let mut out = [0u8; 16];
                let mut len: CK_ULONG = ALL_ONES;
                f(fx.session, out.as_mut_ptr(), &mut len)
            }
        ),
        // ----- decryption, multi-part (5.9) -----
        case!(C_DecryptUpdate, "NULL output length", Decrypt, |fx, f| {
            let mut data = [1u8; 16];
            let mut out = [0u8; 16];
            f(
                fx.session,
                data.as_mut_ptr(),
                16,
                out.as_mut_ptr(),
                null_mut(),
            )
        }),
        case!(C_DecryptUpdate, "NULL data, length ~0", Decrypt, |fx, f| {
            let mut out = [0u8; 16];
            let mut len: CK_ULONG = 16;
            f(fx.session, null_mut(), ALL_ONES, out.as_mut_ptr(), &mut len)
        }),
        case!(
            C_DecryptFinal,
            "capacity ~0 for a 16-byte buffer",
            Decrypt,
            |fx, f| {
                let mut out = [0u8; 16];
                let mut len: CK_ULONG = ALL_ONES;
                f(fx.session, out.as_mut_ptr(), &mut len)
            }
        ),
        // ----- digests (5.10) -----
        case!(
            C_DigestInit,
            "SHA-256 with a parameter of length ~0",
            User,
            |fx, f| {
                let mut m = mech(CKM_SHA256, null_mut(), ALL_ONES);
                f(fx.session, &mut m)
            }
        ),
        case!(C_Digest, "NULL output length", Digest, |fx, f| {
            let mut data = [1u8; 16];
            let mut out = [0u8; 32];
            f(
                fx.session,
                data.as_mut_ptr(),
                16,
                out.as_mut_ptr(),
                null_mut(),
            )
        }),
        case!(
            C_Digest,
            "capacity 2^61 for a 32-byte buffer",
            Digest,
            |fx, f| {
                // Within what a buffer could hold, so only the data length can be refused.
                let mut out = [0u8; 32];
                let mut len: CK_ULONG = HUGE;
                f(fx.session, null_mut(), HUGE, out.as_mut_ptr(), &mut len)
            }
        ),
        case!(C_DigestUpdate, "NULL data, length 16", Digest, |fx, f| f(
            fx.session,
            null_mut(),
            16
        )),
        case!(C_DigestKey, "a private key", Digest, |fx, f| f(
            fx.session,
            fx.keys.rsa_private
        )),
        case!(
            C_DigestFinal,
            "capacity ~0 for a 32-byte buffer",
            Digest,
            |fx, f| {
                let mut out = [0u8; 32];
                let mut len: CK_ULONG = ALL_ONES;
                f(fx.session, out.as_mut_ptr(), &mut len)
            }
        ),
        // ----- secret keys, wrapping (5.13) -----
        case!(C_GenerateKey, "NULL key out", User, |fx, f| {
            let mut len = (16 as CK_ULONG).to_ne_bytes();
            let mut t = [attr(CKA_VALUE_LEN, &mut len)];
            let mut m = mech(CKM_AES_KEY_GEN, null_mut(), 0);
            f(fx.session, &mut m, t.as_mut_ptr(), 1, null_mut())
        }),
        case!(
            C_GenerateKey,
            "value length 2^61 in the template",
            User,
            |fx, f| {
                let mut buf = [0u8; 1];
                let mut t = lying_template(&mut buf, HUGE);
                let mut m = mech(CKM_AES_KEY_GEN, null_mut(), 0);
                let mut k = 0;
                f(fx.session, &mut m, t.as_mut_ptr(), 1, &mut k)
            }
        ),
        case!(C_WrapKey, "NULL output length", User, |fx, f| {
            let mut m = mech(CKM_AES_KEY_WRAP, null_mut(), 0);
            let mut out = [0u8; 24];
            f(
                fx.session,
                &mut m,
                fx.keys.aes,
                fx.keys.aes,
                out.as_mut_ptr(),
                null_mut(),
            )
        }),
        case!(
            C_WrapKey,
            "capacity ~0 for a 24-byte buffer",
            User,
            |fx, f| {
                let mut m = mech(CKM_AES_KEY_WRAP, null_mut(), 0);
                let mut out = [0u8; 24];
                let mut len: CK_ULONG = ALL_ONES;
                f(
                    fx.session,
                    &mut m,
                    fx.keys.aes,
                    fx.keys.aes,
                    out.as_mut_ptr(),
                    &mut len,
                )
            }
        ),
        case!(C_UnwrapKey, "wrapped length 2^61", User, |fx, f| {
            let mut m = mech(CKM_AES_KEY_WRAP, null_mut(), 0);
            let mut w = [0u8; 24];
            let mut k = 0;
            f(
                fx.session,
                &mut m,
                fx.keys.aes,
                w.as_mut_ptr(),
                HUGE,
                null_mut(),
                0,
                &mut k,
            )
        }),
        case!(C_UnwrapKey, "NULL key out", User, |fx, f| {
            let mut m = mech(CKM_AES_KEY_WRAP, null_mut(), 0);
            let mut w = [0u8; 24];
            f(
                fx.session,
                &mut m,
                fx.keys.aes,
                w.as_mut_ptr(),
                24,
                null_mut(),
                0,
                null_mut(),
            )
        }),
        // ----- objects (5.7) -----
        case!(C_CopyObject, "NULL copy out", User, |fx, f| f(
            fx.session,
            fx.keys.ec_public,
            null_mut(),
            0,
            null_mut()
        )),
        case!(C_CopyObject, "ulValueLen 2^61", User, |fx, f| {
            let mut buf = [0u8; 1];
            let mut t = lying_template(&mut buf, HUGE);
            let mut k = 0;
            f(fx.session, fx.keys.ec_public, t.as_mut_ptr(), 1, &mut k)
        }),
        // ----- random numbers (5.15) -----
        case!(C_SeedRandom, "NULL seed, length 2^61", User, |fx, f| f(
            fx.session,
            null_mut(),
            HUGE
        )),
        case!(C_SeedRandom, "seed length ~0", User, |fx, f| {
            let mut seed = [0u8; 8];
            f(fx.session, seed.as_mut_ptr(), ALL_ONES)
        }),
    ]);
    c
}

/// Functions the module does not implement: NULL pointers with huge lengths, or handles
/// that name nothing; each must be refused without touching its arguments.
fn unsupported_cases() -> Vec<Case> {
    use Setup::User;
    let n = null_mut::<CK_BYTE>;
    let nl = null_mut::<CK_ULONG>;
    let nm = null_mut::<CK_MECHANISM>;
    let h = HUGE;
    let a = ALL_ONES;
    vec![
        case!(C_GetOperationState, "NULL, NULL", User, |fx, f| f(
            fx.session,
            n(),
            nl()
        )),
        case!(C_SetOperationState, "NULL, length ~0", User, |fx, f| f(
            fx.session,
            n(),
            a,
            0,
            0
        )),
        case!(C_GetObjectSize, "NULL size", User, |fx, f| f(
            fx.session,
            fx.keys.ec_public,
            nl()
        )),
        case!(C_SignUpdate, "NULL data, length ~0", User, |fx, f| f(
            fx.session,
            n(),
            a
        )),
        case!(C_SignFinal, "NULL, NULL", User, |fx, f| f(
            fx.session,
            n(),
            nl()
        )),
        case!(C_SignRecoverInit, "NULL mechanism", User, |fx, f| f(
            fx.session,
            nm(),
            fx.keys.ec_private
        )),
        case!(C_SignRecover, "NULL data, length 2^61", User, |fx, f| f(
            fx.session,
            n(),
            h,
            n(),
            nl()
        )),
        case!(C_VerifyInit, "NULL mechanism", User, |fx, f| f(
            fx.session,
            nm(),
            fx.keys.ec_public
        )),
        case!(
            C_Verify,
            "NULL data and signature, lengths ~0",
            User,
            |fx, f| f(fx.session, n(), a, n(), a)
        ),
        case!(C_VerifyUpdate, "NULL data, length 2^61", User, |fx, f| f(
            fx.session,
            n(),
            h
        )),
        case!(C_VerifyFinal, "NULL signature, length ~0", User, |fx, f| f(
            fx.session,
            n(),
            a
        )),
        case!(C_VerifyRecoverInit, "NULL mechanism", User, |fx, f| f(
            fx.session,
            nm(),
            fx.keys.ec_public
        )),
        case!(
            C_VerifyRecover,
            "NULL signature, length ~0",
            User,
            |fx, f| f(fx.session, n(), a, n(), nl())
        ),
        case!(
            C_DigestEncryptUpdate,
            "NULL part, length 2^61",
            User,
            |fx, f| f(fx.session, n(), h, n(), nl())
        ),
        case!(
            C_DecryptDigestUpdate,
            "NULL part, length ~0",
            User,
            |fx, f| f(fx.session, n(), a, n(), nl())
        ),
        case!(
            C_SignEncryptUpdate,
            "NULL part, length 2^61",
            User,
            |fx, f| f(fx.session, n(), h, n(), nl())
        ),
        case!(
            C_DecryptVerifyUpdate,
            "NULL part, length ~0",
            User,
            |fx, f| f(fx.session, n(), a, n(), nl())
        ),
        case!(C_GetFunctionStatus, "session ~0", User, |_fx, f| f(a)),
        case!(C_CancelFunction, "session ~0", User, |_fx, f| f(a)),
    ]
}

// ----- the module -----

type GetFunctionList = unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV;

/// `libhsm_sim.so`, loaded once in the parent (children inherit the mapping).
struct Module {
    list: &'static CK_FUNCTION_LIST,
    /// The `C_…` names of the v2.40 list the library exports as symbols.
    exported: BTreeSet<&'static str>,
}

/// The module cargo built with this test: `target/<profile>/deps/libhsm_sim.so`, next to the
/// test binary (cargo builds the library's cdylib there for the test, and copies it up to
/// `target/<profile>/` only for `cargo build`, so the copy up there may be stale).
fn module_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().join("libhsm_sim.so");
    assert!(
        path.exists(),
        "{} is missing: cargo builds it with this test (`cargo test -p hsm-sim --test abi_sweep`)",
        path.display()
    );
    path
}

fn load() -> Module {
    let path = CString::new(module_path().as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; the library stays loaded for the process's life.
    let lib = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!lib.is_null(), "dlopen of libhsm_sim.so failed");
    let mut exported = BTreeSet::new();
    for (name, _) in ENTRIES {
        let sym = CString::new(*name).unwrap();
        // SAFETY: a live handle and a NUL-terminated name.
        if !unsafe { libc::dlsym(lib, sym.as_ptr()) }.is_null() {
            exported.insert(*name);
        }
    }
    let sym = CString::new("C_GetFunctionList").unwrap();
    // SAFETY: as above.
    let get = unsafe { libc::dlsym(lib, sym.as_ptr()) };
    assert!(!get.is_null(), "libhsm_sim.so exports no C_GetFunctionList");
    // SAFETY: the symbol is PKCS#11's C_GetFunctionList, with this signature.
    let get: GetFunctionList = unsafe { std::mem::transmute(get) };
    let mut p: *mut CK_FUNCTION_LIST = null_mut();
    // SAFETY: a valid out pointer.
    assert_eq!(unsafe { get(&mut p) }, CKR_OK);
    assert!(!p.is_null());
    // SAFETY: the module hands out a pointer to its static list, valid while it is loaded.
    let list = unsafe { &*p };
    Module { list, exported }
}

/// Every slot of the function list is filled and named in [`ENTRIES`].
fn check_list_is_known(list: &CK_FUNCTION_LIST) {
    let first = offset_of!(CK_FUNCTION_LIST, C_Initialize);
    let slots = (size_of::<CK_FUNCTION_LIST>() - first) / size_of::<usize>();
    assert_eq!(
        slots,
        ENTRIES.len(),
        "CK_FUNCTION_LIST has {slots} entries; the sweep knows {}",
        ENTRIES.len()
    );
    let base = list as *const CK_FUNCTION_LIST as *const u8;
    for i in 0..slots {
        let off = first + i * size_of::<usize>();
        let name = ENTRIES
            .iter()
            .find(|(_, o)| *o == off)
            .map(|(n, _)| *n)
            .unwrap_or_else(|| panic!("entry at offset {off} has no name in the sweep"));
        // SAFETY: `off` is inside the list, at a pointer-sized, pointer-aligned field.
        let f = unsafe { base.add(off).cast::<usize>().read() };
        assert_ne!(f, 0, "{name} is NULL in the function list");
    }
}

// ----- the child -----

fn ck(what: &str, rv: CK_RV) -> Result<(), String> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(format!("{what} returned {rv:#x}"))
    }
}

/// Brings the freshly initialized module to `setup`.
fn reach(list: &'static CK_FUNCTION_LIST, setup: Setup, keys: Keys) -> Result<Fx, String> {
    let mut fx = Fx {
        list,
        session: 0,
        keys,
    };
    if setup == Setup::Loaded {
        return Ok(fx);
    }
    // SAFETY (the block): well-formed calls with live locals, as the specification says.
    unsafe {
        ck("C_Initialize", list.C_Initialize.unwrap()(null_mut()))?;
        if setup == Setup::Initialized {
            return Ok(fx);
        }
        let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
        let open = list.C_OpenSession.unwrap();
        ck(
            "C_OpenSession",
            open(TOKEN_SLOT, flags, null_mut(), None, &mut fx.session),
        )?;
        let login = list.C_Login.unwrap();
        match setup {
            Setup::Public => return Ok(fx),
            Setup::So => {
                let mut pin = SO_PIN.to_vec();
                let rv = login(fx.session, CKU_SO, pin.as_mut_ptr(), pin.len() as CK_ULONG);
                ck("C_Login(SO)", rv)?;
                return Ok(fx);
            }
            _ => {
                let mut pin = USER_PIN.to_vec();
                let rv = login(
                    fx.session,
                    CKU_USER,
                    pin.as_mut_ptr(),
                    pin.len() as CK_ULONG,
                );
                ck("C_Login(user)", rv)?;
            }
        }
        match setup {
            Setup::SignEcdsa | Setup::SignEcdsaSha256 => {
                let m = if setup == Setup::SignEcdsa {
                    CKM_ECDSA
                } else {
                    CKM_ECDSA_SHA256
                };
                let mut m = mech(m, null_mut(), 0);
                let rv = list.C_SignInit.unwrap()(fx.session, &mut m, keys.ec_private);
                ck("C_SignInit", rv)?;
            }
            Setup::Encrypt => {
                let mut iv = [0u8; 16];
                let mut m = mech(CKM_AES_CBC_PAD, iv.as_mut_ptr().cast(), 16);
                let rv = list.C_EncryptInit.unwrap()(fx.session, &mut m, keys.aes);
                ck("C_EncryptInit", rv)?;
            }
            Setup::Digest => {
                let mut m = mech(CKM_SHA256, null_mut(), 0);
                ck(
                    "C_DigestInit",
                    list.C_DigestInit.unwrap()(fx.session, &mut m),
                )?;
            }
            Setup::Decrypt => {
                let mut m = mech(CKM_RSA_PKCS, null_mut(), 0);
                let rv = list.C_DecryptInit.unwrap()(fx.session, &mut m, keys.rsa_private);
                ck("C_DecryptInit", rv)?;
            }
            Setup::Finding => {
                let rv = list.C_FindObjectsInit.unwrap()(fx.session, null_mut(), 0);
                ck("C_FindObjectsInit", rv)?;
                let (mut h, mut n) = (0, 0);
                let rv = list.C_FindObjects.unwrap()(fx.session, &mut h, 1, &mut n);
                ck("C_FindObjects", rv)?;
                if n != 1 {
                    return Err(format!("C_FindObjects found {n} objects, not 1"));
                }
            }
            _ => {}
        }
    }
    Ok(fx)
}

/// The child's whole life: point the module at its rack, reach the case's state, make the
/// call, send the `CK_RV` up the pipe. Returns the exit code (3: the setup failed).
fn child(m: &Module, dir: &Path, case: &Case, fd: libc::c_int, keys: Keys) -> libc::c_int {
    // SAFETY: the forked child has a single thread.
    unsafe { std::env::set_var("HSM_SIM_DIR", dir) };
    let fx = match reach(m.list, case.setup, keys) {
        Ok(fx) => fx,
        Err(e) => {
            eprintln!("setup for {} ({}) failed: {e}", case.function, case.what);
            return 3;
        }
    };
    let rv = (case.call)(&fx);
    let bytes = rv.to_ne_bytes();
    // SAFETY: `fd` is the pipe's write end; `bytes` is a live buffer of its length.
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    if n != bytes.len() as isize {
        return 4;
    }
    0
}

// ----- the parent -----

/// How a case ended.
enum Outcome {
    /// The call returned this code and the child exited normally.
    Returned(CK_RV),
    /// Anything else: a signal, an abnormal exit, a hang.
    Crashed(String),
}

fn signal_name(sig: libc::c_int) -> String {
    let name = match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTRAP => "SIGTRAP",
        _ => "",
    };
    format!("signal {sig} {name}")
}

/// Runs one case in a forked child on a copy of the prepared rack.
fn run(m: &Module, template: &Path, case: &Case, keys: Keys) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(template, dir.path());
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: a valid two-element array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read_end, write_end) = (fds[0], fds[1]);
    // SAFETY: the test binary holds this one test; the other thread (the harness's) only
    // waits for it, so the child starts with consistent locks (glibc's fork also resets
    // malloc's).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: the child's copy of the read end.
        unsafe { libc::close(read_end) };
        let code = child(m, dir.path(), case, write_end, keys);
        // SAFETY: ends the child at once, without running the parent's exit handlers or
        // the TempDir destructor (the parent removes the folder).
        unsafe { libc::_exit(code) };
    }
    // SAFETY: the parent's copy of the write end; the pipe reaches EOF when the child ends.
    unsafe { libc::close(write_end) };

    let deadline = Instant::now() + CASE_TIMEOUT;
    let mut got = Vec::new();
    let mut hung = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: read_end,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as libc::c_int) };
        if r == 0 {
            hung = true;
            break;
        }
        if r < 0 {
            continue; // EINTR
        }
        let mut buf = [0u8; 16];
        // SAFETY: reads into a live buffer of its length.
        let n = unsafe { libc::read(read_end, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break; // EOF: the child is gone
        }
        got.extend_from_slice(&buf[..n as usize]);
    }
    if hung {
        // SAFETY: our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe {
        libc::waitpid(pid, &mut status, 0);
        libc::close(read_end);
    }
    if hung {
        return Outcome::Crashed(format!("hung for {CASE_TIMEOUT:?}"));
    }
    if libc::WIFSIGNALED(status) {
        return Outcome::Crashed(signal_name(libc::WTERMSIG(status)));
    }
    let code = libc::WEXITSTATUS(status);
    if code != 0 {
        return Outcome::Crashed(format!("exited with code {code}"));
    }
    match <[u8; 8]>::try_from(got.as_slice()) {
        Ok(b) => Outcome::Returned(CK_RV::from_ne_bytes(b)),
        Err(_) => Outcome::Crashed(format!("sent {} bytes, not a CK_RV", got.len())),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The prepared rack: slot 0 a blank token, slot 1 an initialized token with a user PIN, a
/// P-256 key pair, an RSA-1024 key pair and an AES-128 key (encrypt, wrap, unwrap), all made
/// through the module in this process.
fn prepare(m: &Module, dir: &Path) -> Keys {
    let rack = Rack::init(
        dir,
        RackConfig {
            slots: 2,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    rack.insert(BLANK_SLOT as usize, InsertOptions::default())
        .unwrap();
    rack.insert(TOKEN_SLOT as usize, InsertOptions::default())
        .unwrap();
    // SAFETY: the test binary holds this one test and sets the variable before any other
    // thread of its own reads the environment.
    unsafe { std::env::set_var("HSM_SIM_DIR", dir) };
    let f = m.list;
    // SAFETY (the block): well-formed calls with live locals.
    unsafe {
        assert_eq!(f.C_Initialize.unwrap()(null_mut()), CKR_OK);
        let mut so = SO_PIN.to_vec();
        let mut label = [b' '; 32];
        label[..5].copy_from_slice(b"sweep");
        let so_len = so.len() as CK_ULONG;
        assert_eq!(
            f.C_InitToken.unwrap()(TOKEN_SLOT, so.as_mut_ptr(), so_len, label.as_mut_ptr()),
            CKR_OK
        );
        let mut h = 0;
        let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
        assert_eq!(
            f.C_OpenSession.unwrap()(TOKEN_SLOT, flags, null_mut(), None, &mut h),
            CKR_OK
        );
        assert_eq!(
            f.C_Login.unwrap()(h, CKU_SO, so.as_mut_ptr(), so_len),
            CKR_OK
        );
        let mut user = USER_PIN.to_vec();
        let user_len = user.len() as CK_ULONG;
        assert_eq!(f.C_InitPIN.unwrap()(h, user.as_mut_ptr(), user_len), CKR_OK);
        assert_eq!(f.C_Logout.unwrap()(h), CKR_OK);
        assert_eq!(
            f.C_Login.unwrap()(h, CKU_USER, user.as_mut_ptr(), user_len),
            CKR_OK
        );

        let (mut yes, mut yes2, mut params) = ([1u8], [1u8], P256);
        let mut public = [attr(CKA_TOKEN, &mut yes), attr(CKA_EC_PARAMS, &mut params)];
        let mut private = [attr(CKA_TOKEN, &mut yes2)];
        let mut m_ec = mech(CKM_EC_KEY_PAIR_GEN, null_mut(), 0);
        let (mut ec_public, mut ec_private) = (0, 0);
        assert_eq!(
            f.C_GenerateKeyPair.unwrap()(
                h,
                &mut m_ec,
                public.as_mut_ptr(),
                2,
                private.as_mut_ptr(),
                1,
                &mut ec_public,
                &mut ec_private
            ),
            CKR_OK
        );

        let (mut yes, mut yes2) = ([1u8], [1u8]);
        let mut bits = (1024 as CK_ULONG).to_ne_bytes();
        let mut exponent = [1u8, 0, 1];
        let mut public = [
            attr(CKA_TOKEN, &mut yes),
            attr(CKA_MODULUS_BITS, &mut bits),
            attr(CKA_PUBLIC_EXPONENT, &mut exponent),
        ];
        let mut private = [attr(CKA_TOKEN, &mut yes2)];
        let mut m_rsa = mech(CKM_RSA_PKCS_KEY_PAIR_GEN, null_mut(), 0);
        let (mut rsa_public, mut rsa_private) = (0, 0);
        assert_eq!(
            f.C_GenerateKeyPair.unwrap()(
                h,
                &mut m_rsa,
                public.as_mut_ptr(),
                3,
                private.as_mut_ptr(),
                1,
                &mut rsa_public,
                &mut rsa_private
            ),
            CKR_OK
        );
        let (mut yes, mut yes2, mut yes3, mut yes4) = ([1u8], [1u8], [1u8], [1u8]);
        let mut len = (16 as CK_ULONG).to_ne_bytes();
        let mut no = [0u8];
        let mut secret = [
            attr(CKA_TOKEN, &mut yes),
            attr(CKA_VALUE_LEN, &mut len),
            attr(CKA_ENCRYPT, &mut yes2),
            attr(CKA_WRAP, &mut yes3),
            attr(CKA_UNWRAP, &mut yes4),
            attr(CKA_SENSITIVE, &mut no),
        ];
        let mut m_aes = mech(CKM_AES_KEY_GEN, null_mut(), 0);
        let mut aes = 0;
        assert_eq!(
            f.C_GenerateKey.unwrap()(h, &mut m_aes, secret.as_mut_ptr(), 6, &mut aes),
            CKR_OK
        );
        assert_eq!(f.C_CloseSession.unwrap()(h), CKR_OK);
        assert_eq!(f.C_Finalize.unwrap()(null_mut()), CKR_OK);
        Keys {
            ec_public,
            ec_private,
            rsa_private,
            aes,
        }
    }
}

#[test]
fn every_function_survives_malformed_calls() {
    let m = load();
    check_list_is_known(m.list);
    let cases = cases();

    // Coverage: every entry of the list, and every exported symbol, has a case.
    let covered: BTreeSet<&str> = cases.iter().map(|c| c.function).collect();
    let missing: Vec<&str> = ENTRIES
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !covered.contains(n))
        .collect();
    assert!(missing.is_empty(), "functions without a case: {missing:?}");
    let unswept: Vec<&&str> = m
        .exported
        .iter()
        .filter(|n| !covered.contains(**n))
        .collect();
    assert!(unswept.is_empty(), "exported without a case: {unswept:?}");
    assert!(m.exported.contains("C_GetFunctionList"));

    let template = tempfile::tempdir().unwrap();
    let keys = prepare(&m, template.path());

    let mut failures = Vec::new();
    for case in &cases {
        match run(&m, template.path(), case, keys) {
            Outcome::Returned(rv) if rv != CKR_OK => {
                println!("{} ({}): {rv:#x}", case.function, case.what)
            }
            Outcome::Returned(_) => failures.push(format!(
                "{} ({}): returned CKR_OK",
                case.function, case.what
            )),
            Outcome::Crashed(how) => {
                failures.push(format!("{} ({}): {how}", case.function, case.what))
            }
        }
    }
    println!(
        "swept {} malformed calls over {} functions ({} exported by name); {} failed",
        cases.len(),
        covered.len(),
        m.exported.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} malformed calls did not return an error:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
}
