//! A sweep of malformed calls over the SKF functions of `libhsm_sim_skf.so`: NULL, stale and
//! wrong-kind handles, NULL pointers, strings without an end in reach, lengths no buffer has,
//! output buffers smaller than they say. Each call runs in a forked child (a crash fails the
//! case, not the sweep); each must return its error code, never `SAR_OK`, never crash, and
//! never write past an output buffer's stated size.
#![allow(clippy::unwrap_used, clippy::expect_used, unsafe_code)]

use std::ffi::c_char;
use std::ptr::null_mut;

use hsm_sim::rack::token::TokenSettings;
use hsm_sim::rack::{InsertOptions, Rack, RackConfig};
use hsm_sim::skf::consts::*;
use hsm_sim::skf::engine::dev_name;
use hsm_sim_skf::types::*;
use hsm_sim_skf::{access::*, application::*, crypto::*, device::*, symmetric::*};

/// Handles of a prepared token: a device with an application, the user PIN verified, a
/// container with a signing key pair and a certificate, a hash in progress.
#[derive(Clone, Copy)]
struct Fx {
    dev: HANDLE,
    app: HANDLE,
    con: HANDLE,
    hash: HANDLE,
    key: HANDLE,
    public: ECCPUBLICKEYBLOB,
}

type Call = Box<dyn Fn(&Fx) -> ULONG>;

/// A string of `n` 'a's whose NUL lies beyond any limit of the library.
fn long(n: usize) -> Vec<c_char> {
    let mut v = vec![b'a' as c_char; n];
    v.push(0);
    v
}

fn s(text: &str) -> Vec<c_char> {
    text.bytes().map(|b| b as c_char).chain([0]).collect()
}

fn cases() -> Vec<(&'static str, ULONG, Call)> {
    let stale = 0x5C00_FFFF as HANDLE;
    let bad = 1usize as HANDLE;
    let mut v: Vec<(&'static str, ULONG, Call)> = Vec::new();
    let mut add = |name, want, f: Call| v.push((name, want, f));
    // Devices.
    add(
        "EnumDev NULL size",
        SAR_INVALIDPARAMERR,
        Box::new(|_| unsafe { SKF_EnumDev(1, null_mut(), null_mut()) }),
    );
    add(
        "EnumDev small buffer",
        SAR_BUFFER_TOO_SMALL,
        Box::new(|_| {
            let mut buf = [0x55 as c_char; 16];
            let mut len: ULONG = 3;
            let rv = unsafe { SKF_EnumDev(1, buf.as_mut_ptr(), &mut len) };
            assert!(
                buf[3..].iter().all(|b| *b == 0x55),
                "wrote past the stated size"
            );
            rv
        }),
    );
    add(
        "ConnectDev NULL name",
        SAR_INVALIDPARAMERR,
        Box::new(|_| unsafe { SKF_ConnectDev(null_mut(), &mut null_mut()) }),
    );
    add(
        "ConnectDev endless name",
        SAR_INVALIDPARAMERR,
        Box::new(|_| unsafe { SKF_ConnectDev(long(4096).as_mut_ptr(), &mut null_mut()) }),
    );
    add(
        "ConnectDev NULL out",
        SAR_INVALIDPARAMERR,
        Box::new(|_| unsafe { SKF_ConnectDev(s(&dev_name(0)).as_mut_ptr(), null_mut()) }),
    );
    add(
        "DisConnectDev NULL",
        SAR_INVALIDHANDLEERR,
        Box::new(|_| SKF_DisConnectDev(null_mut())),
    );
    add(
        "DisConnectDev stale",
        SAR_INVALIDHANDLEERR,
        Box::new(move |_| SKF_DisConnectDev(stale)),
    );
    add(
        "DisConnectDev an application",
        SAR_INVALIDHANDLEERR,
        Box::new(|f| SKF_DisConnectDev(f.app)),
    );
    add(
        "GetDevState NULL out",
        SAR_INVALIDPARAMERR,
        Box::new(|_| unsafe { SKF_GetDevState(s(&dev_name(0)).as_mut_ptr(), null_mut()) }),
    );
    add(
        "GetDevInfo NULL",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe { SKF_GetDevInfo(f.dev, null_mut()) }),
    );
    add(
        "GetDevInfo a container",
        SAR_INVALIDHANDLEERR,
        Box::new(|f| {
            let mut info = std::mem::MaybeUninit::<DEVINFO>::uninit();
            unsafe { SKF_GetDevInfo(f.con, info.as_mut_ptr()) }
        }),
    );
    add(
        "SetLabel endless",
        SAR_INDATALENERR,
        Box::new(|f| unsafe { SKF_SetLabel(f.dev, long(4096).as_mut_ptr()) }),
    );
    add(
        "SetLabel NULL",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe { SKF_SetLabel(f.dev, null_mut()) }),
    );
    add(
        "WaitForDevEvent NULL",
        SAR_INVALIDPARAMERR,
        Box::new(|_| unsafe { SKF_WaitForDevEvent(null_mut(), null_mut(), null_mut()) }),
    );
    add(
        "LockDev bad",
        SAR_INVALIDHANDLEERR,
        Box::new(move |_| SKF_LockDev(bad, 0)),
    );
    add(
        "GenRandom huge",
        SAR_INDATALENERR,
        Box::new(|f| unsafe { SKF_GenRandom(f.dev, [0u8; 8].as_mut_ptr(), ULONG::MAX) }),
    );
    add(
        "GenRandom NULL",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe { SKF_GenRandom(f.dev, null_mut(), 8) }),
    );
    add(
        "DevAuth huge",
        SAR_INDATALENERR,
        Box::new(|f| unsafe { SKF_DevAuth(f.dev, [0u8; 16].as_mut_ptr(), ULONG::MAX) }),
    );
    add(
        "DevAuth NULL",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe { SKF_DevAuth(f.dev, null_mut(), 16) }),
    );
    add(
        "DevAuth short",
        SAR_INDATALENERR,
        Box::new(|f| unsafe { SKF_DevAuth(f.dev, [0u8; 16].as_mut_ptr(), 8) }),
    );
    add(
        "ChangeDevAuthKey huge",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe { SKF_ChangeDevAuthKey(f.dev, [0u8; 16].as_mut_ptr(), ULONG::MAX) }),
    );
    // Access control.
    add(
        "VerifyPIN NULL retry",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe {
            SKF_VerifyPIN(f.app, USER_TYPE, s("123456").as_mut_ptr(), null_mut())
        }),
    );
    add(
        "VerifyPIN endless",
        SAR_PIN_LEN_RANGE,
        Box::new(|f| unsafe { SKF_VerifyPIN(f.app, USER_TYPE, long(4096).as_mut_ptr(), &mut 0) }),
    );
    add(
        "VerifyPIN longer than the token's",
        SAR_PIN_LEN_RANGE,
        Box::new(|f| unsafe { SKF_VerifyPIN(f.app, USER_TYPE, long(100).as_mut_ptr(), &mut 0) }),
    );
    add(
        "VerifyPIN device handle",
        SAR_INVALIDHANDLEERR,
        Box::new(|f| unsafe { SKF_VerifyPIN(f.dev, USER_TYPE, s("123456").as_mut_ptr(), &mut 0) }),
    );
    add(
        "VerifyPIN bad type",
        SAR_USER_TYPE_INVALID,
        Box::new(|f| unsafe { SKF_VerifyPIN(f.app, 9, s("123456").as_mut_ptr(), &mut 0) }),
    );
    add(
        "ChangePIN NULL new",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe {
            SKF_ChangePIN(
                f.app,
                USER_TYPE,
                s("123456").as_mut_ptr(),
                null_mut(),
                &mut 0,
            )
        }),
    );
    add(
        "ChangePIN short new",
        SAR_PIN_LEN_RANGE,
        Box::new(|f| unsafe {
            SKF_ChangePIN(
                f.app,
                USER_TYPE,
                s("123456").as_mut_ptr(),
                s("1").as_mut_ptr(),
                &mut 0,
            )
        }),
    );
    add(
        "GetPINInfo NULL",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe { SKF_GetPINInfo(f.app, USER_TYPE, null_mut(), &mut 0, &mut 0) }),
    );
    add(
        "UnblockPIN NULL admin",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe {
            SKF_UnblockPIN(f.app, null_mut(), s("123456").as_mut_ptr(), &mut 0)
        }),
    );
    add(
        "ClearSecureState stale",
        SAR_INVALIDHANDLEERR,
        Box::new(move |_| SKF_ClearSecureState(stale)),
    );
    // Applications and containers.
    add(
        "CreateApplication endless name",
        SAR_NAMELENERR,
        Box::new(|f| unsafe {
            SKF_CreateApplication(
                f.dev,
                long(4096).as_mut_ptr(),
                s("12345678").as_mut_ptr(),
                3,
                s("123456").as_mut_ptr(),
                3,
                0,
                &mut null_mut(),
            )
        }),
    );
    add(
        "CreateApplication NULL out",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe {
            SKF_CreateApplication(
                f.dev,
                s("x").as_mut_ptr(),
                s("12345678").as_mut_ptr(),
                3,
                s("123456").as_mut_ptr(),
                3,
                0,
                null_mut(),
            )
        }),
    );
    add(
        "EnumApplication NULL size",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe { SKF_EnumApplication(f.dev, null_mut(), null_mut()) }),
    );
    add(
        "OpenApplication NULL name",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe { SKF_OpenApplication(f.dev, null_mut(), &mut null_mut()) }),
    );
    add(
        "DeleteApplication unauthenticated",
        SAR_USER_NOT_LOGGED_IN,
        Box::new(|f| unsafe { SKF_DeleteApplication(f.dev, s("APP").as_mut_ptr()) }),
    );
    add(
        "CloseApplication a device",
        SAR_INVALIDHANDLEERR,
        Box::new(|f| SKF_CloseApplication(f.dev)),
    );
    add(
        "CreateContainer endless",
        SAR_NAMELENERR,
        Box::new(|f| unsafe {
            SKF_CreateContainer(f.app, long(4096).as_mut_ptr(), &mut null_mut())
        }),
    );
    add(
        "CreateContainer NULL out",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe { SKF_CreateContainer(f.app, s("c2").as_mut_ptr(), null_mut()) }),
    );
    add(
        "OpenContainer missing",
        SAR_FILE_NOT_EXIST,
        Box::new(|f| unsafe { SKF_OpenContainer(f.app, s("nope").as_mut_ptr(), &mut null_mut()) }),
    );
    add(
        "DeleteContainer NULL",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe { SKF_DeleteContainer(f.app, null_mut()) }),
    );
    add(
        "EnumContainer small",
        SAR_BUFFER_TOO_SMALL,
        Box::new(|f| {
            let mut buf = [0x55 as c_char; 16];
            let mut len: ULONG = 2;
            let rv = unsafe { SKF_EnumContainer(f.app, buf.as_mut_ptr(), &mut len) };
            assert!(
                buf[2..].iter().all(|b| *b == 0x55),
                "wrote past the stated size"
            );
            rv
        }),
    );
    add(
        "GetContainerType NULL",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe { SKF_GetContainerType(f.con, null_mut()) }),
    );
    add(
        "CloseContainer an application",
        SAR_INVALIDHANDLEERR,
        Box::new(|f| SKF_CloseContainer(f.app)),
    );
    add(
        "ImportCertificate huge",
        SAR_INDATALENERR,
        Box::new(|f| unsafe {
            SKF_ImportCertificate(f.con, 1, [0x30u8; 16].as_mut_ptr(), ULONG::MAX)
        }),
    );
    add(
        "ImportCertificate NULL",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe { SKF_ImportCertificate(f.con, 1, null_mut(), 16) }),
    );
    add(
        "ImportCertificate empty",
        SAR_INDATALENERR,
        Box::new(|f| unsafe { SKF_ImportCertificate(f.con, 1, null_mut(), 0) }),
    );
    add(
        "ExportCertificate NULL len",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe { SKF_ExportCertificate(f.con, 1, null_mut(), null_mut()) }),
    );
    add(
        "ExportCertificate small",
        SAR_BUFFER_TOO_SMALL,
        Box::new(|f| {
            let mut buf = [0x55u8; 64];
            let mut len: ULONG = 8;
            let rv = unsafe { SKF_ExportCertificate(f.con, 1, buf.as_mut_ptr(), &mut len) };
            assert!(
                buf[8..].iter().all(|b| *b == 0x55),
                "wrote past the stated size"
            );
            rv
        }),
    );
    // Cryptographic services.
    add(
        "GenECCKeyPair NULL",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe { SKF_GenECCKeyPair(f.con, SGD_SM2_1, null_mut()) }),
    );
    add(
        "GenECCKeyPair RSA",
        SAR_NOTSUPPORTYETERR,
        Box::new(|f| {
            let mut b = f.public;
            unsafe { SKF_GenECCKeyPair(f.con, 0x0001_0000, &mut b) }
        }),
    );
    add(
        "GenECCKeyPair a device",
        SAR_INVALIDHANDLEERR,
        Box::new(|f| {
            let mut b = f.public;
            unsafe { SKF_GenECCKeyPair(f.dev, SGD_SM2_1, &mut b) }
        }),
    );
    add(
        "ECCSignData huge",
        SAR_INDATALENERR,
        Box::new(|f| {
            let mut sig = ECCSIGNATUREBLOB {
                r: [0; 64],
                s: [0; 64],
            };
            unsafe { SKF_ECCSignData(f.con, [0u8; 32].as_mut_ptr(), ULONG::MAX, &mut sig) }
        }),
    );
    add(
        "ECCSignData NULL sig",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe { SKF_ECCSignData(f.con, [0u8; 32].as_mut_ptr(), 32, null_mut()) }),
    );
    add(
        "ECCVerify NULL key",
        SAR_INVALIDPARAMERR,
        Box::new(|f| {
            let mut sig = ECCSIGNATUREBLOB {
                r: [0; 64],
                s: [0; 64],
            };
            unsafe { SKF_ECCVerify(f.dev, null_mut(), [0u8; 32].as_mut_ptr(), 32, &mut sig) }
        }),
    );
    add(
        "ECCVerify bad BitLen",
        SAR_INVALIDPARAMERR,
        Box::new(|f| {
            let mut key = f.public;
            key.BitLen = 512;
            let mut sig = ECCSIGNATUREBLOB {
                r: [0; 64],
                s: [0; 64],
            };
            unsafe { SKF_ECCVerify(f.dev, &mut key, [0u8; 32].as_mut_ptr(), 32, &mut sig) }
        }),
    );
    add(
        "ECCVerify point off the curve",
        SAR_INVALIDPARAMERR,
        Box::new(|f| {
            let mut key = f.public;
            key.YCoordinate[63] ^= 1;
            let mut sig = ECCSIGNATUREBLOB {
                r: [0; 64],
                s: [0; 64],
            };
            unsafe { SKF_ECCVerify(f.dev, &mut key, [0u8; 32].as_mut_ptr(), 32, &mut sig) }
        }),
    );
    add(
        "ECCVerify zero signature",
        SAR_FAIL,
        Box::new(|f| {
            let mut key = f.public;
            let mut sig = ECCSIGNATUREBLOB {
                r: [0; 64],
                s: [0; 64],
            };
            unsafe { SKF_ECCVerify(f.dev, &mut key, [0u8; 32].as_mut_ptr(), 32, &mut sig) }
        }),
    );
    add(
        "ExtECCEncrypt huge",
        SAR_INDATALENERR,
        Box::new(|f| {
            let mut key = f.public;
            let mut out = [0u8; 512];
            unsafe {
                SKF_ExtECCEncrypt(
                    f.dev,
                    &mut key,
                    [0u8; 16].as_mut_ptr(),
                    ULONG::MAX,
                    out.as_mut_ptr().cast(),
                )
            }
        }),
    );
    add(
        "ExtECCEncrypt NULL out",
        SAR_INVALIDPARAMERR,
        Box::new(|f| {
            let mut key = f.public;
            unsafe { SKF_ExtECCEncrypt(f.dev, &mut key, [0u8; 16].as_mut_ptr(), 16, null_mut()) }
        }),
    );
    add(
        "ImportECCKeyPair NULL",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe { SKF_ImportECCKeyPair(f.con, null_mut()) }),
    );
    add(
        "ImportECCKeyPair huge CipherLen",
        SAR_INDATALENERR,
        Box::new(|f| {
            let mut env = vec![0u8; 512];
            env[..4].copy_from_slice(&1u32.to_ne_bytes());
            env[4..8].copy_from_slice(&SGD_SM4_ECB.to_ne_bytes());
            env[8..12].copy_from_slice(&256u32.to_ne_bytes());
            env[208 + 160..208 + 164].copy_from_slice(&ULONG::MAX.to_ne_bytes());
            unsafe { SKF_ImportECCKeyPair(f.con, env.as_mut_ptr().cast()) }
        }),
    );
    add(
        "ExportPublicKey small",
        SAR_BUFFER_TOO_SMALL,
        Box::new(|f| {
            let mut buf = [0x55u8; 200];
            let mut len: ULONG = 100;
            let rv = unsafe { SKF_ExportPublicKey(f.con, 1, buf.as_mut_ptr(), &mut len) };
            assert!(
                buf[100..].iter().all(|b| *b == 0x55),
                "wrote past the stated size"
            );
            rv
        }),
    );
    add(
        "DigestInit huge ID",
        SAR_INDATALENERR,
        Box::new(|f| {
            let mut key = f.public;
            unsafe {
                SKF_DigestInit(
                    f.dev,
                    SGD_SM3,
                    &mut key,
                    [0u8; 16].as_mut_ptr(),
                    ULONG::MAX,
                    &mut null_mut(),
                )
            }
        }),
    );
    add(
        "DigestInit NULL out",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe {
            SKF_DigestInit(f.dev, SGD_SM3, null_mut(), null_mut(), 0, null_mut())
        }),
    );
    add(
        "Digest huge",
        SAR_INDATALENERR,
        Box::new(|f| unsafe {
            SKF_Digest(
                f.hash,
                [0u8; 16].as_mut_ptr(),
                ULONG::MAX,
                null_mut(),
                &mut 0,
            )
        }),
    );
    add(
        "Digest small",
        SAR_BUFFER_TOO_SMALL,
        Box::new(|f| {
            let mut buf = [0x55u8; 64];
            let mut len: ULONG = 16;
            let rv =
                unsafe { SKF_Digest(f.hash, [0u8; 4].as_mut_ptr(), 4, buf.as_mut_ptr(), &mut len) };
            assert!(buf[16..].iter().all(|b| *b == 0x55) && len == 32);
            rv
        }),
    );
    add(
        "DigestUpdate container",
        SAR_INVALIDHANDLEERR,
        Box::new(|f| unsafe { SKF_DigestUpdate(f.con, [0u8; 4].as_mut_ptr(), 4) }),
    );
    add(
        "DigestFinal NULL len",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe { SKF_DigestFinal(f.hash, [0u8; 32].as_mut_ptr(), null_mut()) }),
    );
    add(
        "CloseHandle a device",
        SAR_INVALIDHANDLEERR,
        Box::new(|f| SKF_CloseHandle(f.dev)),
    );
    // Session keys and SM4.
    let param = |padding: ULONG| BLOCKCIPHERPARAM {
        IV: [0; 32],
        IVLen: 0,
        PaddingType: padding,
        FeedBitLen: 0,
    };
    add(
        "ImportSessionKey huge",
        SAR_INDATALENERR,
        Box::new(|f| unsafe {
            SKF_ImportSessionKey(
                f.con,
                SGD_SM4_ECB,
                [0u8; 16].as_mut_ptr(),
                ULONG::MAX,
                &mut null_mut(),
            )
        }),
    );
    add(
        "ImportSessionKey NULL",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe {
            SKF_ImportSessionKey(f.con, SGD_SM4_ECB, null_mut(), 180, &mut null_mut())
        }),
    );
    add(
        "ImportSessionKey short",
        SAR_INDATALENERR,
        Box::new(|f| unsafe {
            SKF_ImportSessionKey(
                f.con,
                SGD_SM4_ECB,
                [0u8; 16].as_mut_ptr(),
                10,
                &mut null_mut(),
            )
        }),
    );
    add(
        "ImportSessionKey CipherLen past the data",
        SAR_INDATALENERR,
        Box::new(|f| {
            let mut blob = vec![0u8; 180];
            blob[160..164].copy_from_slice(&1000u32.to_ne_bytes());
            unsafe {
                SKF_ImportSessionKey(f.con, SGD_SM4_ECB, blob.as_mut_ptr(), 180, &mut null_mut())
            }
        }),
    );
    add(
        "SetSymmKey NULL",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe { SKF_SetSymmKey(f.dev, null_mut(), SGD_SM4_ECB, &mut null_mut()) }),
    );
    add(
        "SetSymmKey SM1",
        SAR_NOTSUPPORTYETERR,
        Box::new(|f| unsafe {
            SKF_SetSymmKey(f.dev, [0u8; 16].as_mut_ptr(), 0x101, &mut null_mut())
        }),
    );
    add(
        "EncryptInit stale",
        SAR_INVALIDHANDLEERR,
        Box::new(move |_| SKF_EncryptInit(stale, param(0))),
    );
    add(
        "EncryptInit bad padding",
        SAR_INVALIDPARAMERR,
        Box::new(move |f| SKF_EncryptInit(f.key, param(7))),
    );
    add(
        "Encrypt without init",
        SAR_NOTINITIALIZEERR,
        Box::new(|f| unsafe {
            SKF_Encrypt(
                f.key,
                [0u8; 16].as_mut_ptr(),
                16,
                [0u8; 16].as_mut_ptr(),
                &mut 16,
            )
        }),
    );
    add(
        "Encrypt huge",
        SAR_INDATALENERR,
        Box::new(|f| unsafe {
            SKF_Encrypt(
                f.key,
                [0u8; 16].as_mut_ptr(),
                ULONG::MAX,
                null_mut(),
                &mut 0,
            )
        }),
    );
    add(
        "Encrypt partial block unpadded",
        SAR_INDATALENERR,
        Box::new(move |f| unsafe {
            SKF_EncryptInit(f.key, param(0));
            SKF_Encrypt(
                f.key,
                [0u8; 16].as_mut_ptr(),
                5,
                [0u8; 16].as_mut_ptr(),
                &mut 16,
            )
        }),
    );
    add(
        "DecryptInit a hash",
        SAR_INVALIDHANDLEERR,
        Box::new(move |f| SKF_DecryptInit(f.hash, param(0))),
    );
    add(
        "Decrypt NULL len",
        SAR_INVALIDPARAMERR,
        Box::new(|f| unsafe {
            SKF_Decrypt(f.key, [0u8; 16].as_mut_ptr(), 16, null_mut(), null_mut())
        }),
    );
    add(
        "Decrypt small",
        SAR_BUFFER_TOO_SMALL,
        Box::new(move |f| {
            let mut buf = [0x55u8; 64];
            let mut len: ULONG = 8;
            let rv = unsafe {
                SKF_DecryptInit(f.key, param(0));
                SKF_Decrypt(
                    f.key,
                    [0u8; 32].as_mut_ptr(),
                    32,
                    buf.as_mut_ptr(),
                    &mut len,
                )
            };
            assert!(buf[8..].iter().all(|b| *b == 0x55) && len == 32);
            rv
        }),
    );
    v
}

fn prepare() -> Fx {
    let mut dev = null_mut();
    let mut app = null_mut();
    let mut con = null_mut();
    let mut hash = null_mut();
    let mut key = null_mut();
    let mut public = ECCPUBLICKEYBLOB {
        BitLen: 0,
        XCoordinate: [0; 64],
        YCoordinate: [0; 64],
    };
    unsafe {
        assert_eq!(
            SKF_ConnectDev(s(&dev_name(0)).as_mut_ptr(), &mut dev),
            SAR_OK
        );
        let mut challenge = [0u8; 16];
        assert_eq!(SKF_GenRandom(dev, challenge.as_mut_ptr(), 8), SAR_OK);
        let mut auth = hsm_sim::skf::gm::sm4_ecb(b"1234567812345678", &challenge, true).unwrap();
        assert_eq!(SKF_DevAuth(dev, auth.as_mut_ptr(), 16), SAR_OK);
        assert_eq!(
            SKF_CreateApplication(
                dev,
                s("APP").as_mut_ptr(),
                s("12345678").as_mut_ptr(),
                10,
                s("123456").as_mut_ptr(),
                6,
                SECURE_USER_ACCOUNT,
                &mut app
            ),
            SAR_OK
        );
        // Back to an unauthenticated connection for the sweep.
        assert_eq!(SKF_DisConnectDev(dev), SAR_OK);
        assert_eq!(
            SKF_ConnectDev(s(&dev_name(0)).as_mut_ptr(), &mut dev),
            SAR_OK
        );
        assert_eq!(
            SKF_OpenApplication(dev, s("APP").as_mut_ptr(), &mut app),
            SAR_OK
        );
        assert_eq!(
            SKF_VerifyPIN(app, USER_TYPE, s("123456").as_mut_ptr(), &mut 0),
            SAR_OK
        );
        assert_eq!(
            SKF_CreateContainer(app, s("c").as_mut_ptr(), &mut con),
            SAR_OK
        );
        assert_eq!(SKF_GenECCKeyPair(con, SGD_SM2_1, &mut public), SAR_OK);
        let mut cert = [0x30u8; 100];
        assert_eq!(
            SKF_ImportCertificate(con, 1, cert.as_mut_ptr(), 100),
            SAR_OK
        );
        assert_eq!(
            SKF_DigestInit(dev, SGD_SM3, null_mut(), null_mut(), 0, &mut hash),
            SAR_OK
        );
        assert_eq!(
            SKF_SetSymmKey(dev, [9u8; 16].as_mut_ptr(), SGD_SM4_ECB, &mut key),
            SAR_OK
        );
    }
    Fx {
        dev,
        app,
        con,
        hash,
        key,
        public,
    }
}

/// Runs one call in a forked child; `Ok(rv)` or how the child died.
fn in_child(f: &Fx, call: &Call) -> Result<ULONG, String> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: a valid two-element array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: this binary runs one test; the harness's other thread only waits for it.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let rv = call(f).to_ne_bytes();
        // SAFETY: writes 4 bytes from a live array, then ends the child without unwinding
        // into the parent's state.
        unsafe {
            libc::write(fds[1], rv.as_ptr().cast(), 4);
            libc::_exit(0);
        }
    }
    // SAFETY: the parent's copy of the write end: EOF once the child is gone.
    unsafe { libc::close(fds[1]) };
    let mut pfd = libc::pollfd {
        fd: fds[0],
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; 20 s is far beyond any call of the sweep.
    let ready = unsafe { libc::poll(&mut pfd, 1, 20_000) };
    let mut buf = [0u8; 4];
    // SAFETY: reads at most 4 bytes into a live array.
    let n = if ready > 0 {
        unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), 4) }
    } else {
        0
    };
    if ready == 0 {
        // SAFETY: the child is ours.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: reaps our child.
    unsafe {
        libc::waitpid(pid, &mut status, 0);
        libc::close(fds[0]);
    }
    if ready == 0 {
        return Err("hung".into());
    }
    if libc::WIFSIGNALED(status) {
        return Err(format!("killed by signal {}", libc::WTERMSIG(status)));
    }
    if n != 4 || libc::WEXITSTATUS(status) != 0 {
        return Err(format!(
            "no answer (exit status {})",
            libc::WEXITSTATUS(status)
        ));
    }
    Ok(ULONG::from_ne_bytes(buf))
}

#[test]
fn every_function_survives_malformed_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let rack = Rack::init(
        tmp.path(),
        RackConfig {
            slots: 1,
            ..Default::default()
        },
        false,
    )
    .unwrap();
    rack.insert(
        0,
        InsertOptions {
            settings: Some(TokenSettings::skf()),
            ..Default::default()
        },
    )
    .unwrap();
    // SAFETY: set before the library's first call, while this test is the only one running.
    unsafe { std::env::set_var("HSM_SIM_DIR", tmp.path()) };
    let fx = prepare();
    let cases = cases();
    let mut failures = Vec::new();
    let mut functions = std::collections::BTreeSet::new();
    for (name, want, call) in &cases {
        functions.insert(name.split(' ').next().unwrap());
        match in_child(&fx, call) {
            Ok(rv) if rv == *want => {}
            Ok(rv) => failures.push(format!(
                "{name}: {} (expected {})",
                sar_name(rv),
                sar_name(*want)
            )),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // The sweep reaches every exported function but the two without arguments to spoil.
    let exported: std::collections::BTreeSet<&str> = FUNCTIONS.iter().map(|f| &f[4..]).collect();
    let missing: Vec<_> = exported
        .difference(&functions)
        .filter(|f| !["CancelWaitForDevEvent", "UnlockDev"].contains(f))
        .collect();
    assert!(
        missing.is_empty(),
        "functions the sweep does not reach: {missing:?}"
    );
}
