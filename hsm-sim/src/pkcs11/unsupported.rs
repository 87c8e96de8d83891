//! Functions of the v2.40 list the simulator does not implement: each returns
//! `CKR_FUNCTION_NOT_SUPPORTED` (`C_GetFunctionStatus`/`C_CancelFunction`:
//! `CKR_FUNCTION_NOT_PARALLEL`, as the specification says for legacy functions), or
//! `CKR_CRYPTOKI_NOT_INITIALIZED` before `C_Initialize`.

use cryptoki_sys::*;

use super::{eng, shell};

macro_rules! unsupported {
    ($($name:ident ( $($ty:ty),* ) => $rv:expr;)*) => {
        $(
            #[doc = concat!("`", stringify!($name), "`: not supported.")]
            pub(super) unsafe extern "C" fn $name($(_: $ty),*) -> CK_RV {
                shell(|| {
                    // Before C_Initialize every function says so (PKCS#11 v2.40, 5.4).
                    eng()?;
                    Err($rv)
                })
            }
        )*
    };
}

type S = CK_SESSION_HANDLE;
type M = *mut CK_MECHANISM;
type O = CK_OBJECT_HANDLE;
type B = *mut CK_BYTE;
type L = CK_ULONG;
type Lp = *mut CK_ULONG;

unsupported! {
    C_GetOperationState(S, B, Lp) => CKR_FUNCTION_NOT_SUPPORTED;
    C_SetOperationState(S, B, L, O, O) => CKR_FUNCTION_NOT_SUPPORTED;
    C_GetObjectSize(S, O, Lp) => CKR_FUNCTION_NOT_SUPPORTED;
    C_SignUpdate(S, B, L) => CKR_FUNCTION_NOT_SUPPORTED;
    C_SignFinal(S, B, Lp) => CKR_FUNCTION_NOT_SUPPORTED;
    C_SignRecoverInit(S, M, O) => CKR_FUNCTION_NOT_SUPPORTED;
    C_SignRecover(S, B, L, B, Lp) => CKR_FUNCTION_NOT_SUPPORTED;
    C_VerifyInit(S, M, O) => CKR_FUNCTION_NOT_SUPPORTED;
    C_Verify(S, B, L, B, L) => CKR_FUNCTION_NOT_SUPPORTED;
    C_VerifyUpdate(S, B, L) => CKR_FUNCTION_NOT_SUPPORTED;
    C_VerifyFinal(S, B, L) => CKR_FUNCTION_NOT_SUPPORTED;
    C_VerifyRecoverInit(S, M, O) => CKR_FUNCTION_NOT_SUPPORTED;
    C_VerifyRecover(S, B, L, B, Lp) => CKR_FUNCTION_NOT_SUPPORTED;
    C_DigestEncryptUpdate(S, B, L, B, Lp) => CKR_FUNCTION_NOT_SUPPORTED;
    C_DecryptDigestUpdate(S, B, L, B, Lp) => CKR_FUNCTION_NOT_SUPPORTED;
    C_SignEncryptUpdate(S, B, L, B, Lp) => CKR_FUNCTION_NOT_SUPPORTED;
    C_DecryptVerifyUpdate(S, B, L, B, Lp) => CKR_FUNCTION_NOT_SUPPORTED;
    C_GetFunctionStatus(S) => CKR_FUNCTION_NOT_PARALLEL;
    C_CancelFunction(S) => CKR_FUNCTION_NOT_PARALLEL;
}
