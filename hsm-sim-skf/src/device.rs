//! Device management and device authentication (GM/T 0016-2012, 7.1 and 7.2), and random
//! numbers.

use std::ffi::c_char;

use hsm_sim::skf::consts::*;
use hsm_sim::skf::engine::{MAX_BUFFER, MAX_ECC_PLAIN, MAX_RANDOM};

use super::*;

/// Longest device name read (ours are `hsm-sim 1-1.N`).
const MAX_DEV_NAME: usize = 64;

/// `SKF_WaitForDevEvent`: blocks until an SKF device arrives (`*pulEvent` = 1) or leaves (2);
/// its name goes to `szDevName` (capacity `*pulDevNameLen`, set to the length with the NUL).
/// `SKF_CancelWaitForDevEvent` ends it with `SAR_NOT_EVENTERR`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_WaitForDevEvent(
    szDevName: LPSTR,
    pulDevNameLen: *mut ULONG,
    pulEvent: *mut ULONG,
) -> ULONG {
    shell(|| {
        if szDevName.is_null() || pulDevNameLen.is_null() || pulEvent.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        // SAFETY: checked non-null; the caller passes a readable length.
        let cap = unsafe { get(pulDevNameLen) }? as usize;
        let mut needed = 0;
        match eng().wait_for_dev_event(cap, &mut needed) {
            Ok((name, event)) => {
                let mut z = name.into_bytes();
                z.push(0);
                // SAFETY: `szDevName` holds `cap >= z.len()` bytes (checked by the engine).
                unsafe { write_out(szDevName as *mut u8, pulDevNameLen, &z) }?;
                // SAFETY: checked non-null.
                unsafe { put(pulEvent, event) }
            }
            Err(SAR_BUFFER_TOO_SMALL) => {
                // SAFETY: checked non-null.
                unsafe { put(pulDevNameLen, needed as ULONG) }?;
                Err(SAR_BUFFER_TOO_SMALL)
            }
            Err(e) => Err(e),
        }
    })
}

/// `SKF_CancelWaitForDevEvent`: ends the waits in progress, or else the next one.
#[unsafe(no_mangle)]
pub extern "C" fn SKF_CancelWaitForDevEvent() -> ULONG {
    shell(|| eng().cancel_wait())
}

/// `SKF_EnumDev`: names of the devices present (`bPresent` TRUE) or of every slot, as a
/// multi-string; `szNameList` NULL asks for the size.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_EnumDev(
    bPresent: BOOL,
    szNameList: LPSTR,
    pulSize: *mut ULONG,
) -> ULONG {
    shell(|| {
        let names = eng().enum_dev(truth(bPresent))?;
        // SAFETY: the caller passes `*pulSize` writable bytes at `szNameList`.
        unsafe { write_names(szNameList, pulSize, &names) }
    })
}

/// `SKF_ConnectDev`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_ConnectDev(szName: LPSTR, phDev: *mut DEVHANDLE) -> ULONG {
    shell(|| {
        // SAFETY: a NUL-terminated name, read up to the limit.
        let name = unsafe { cstr(szName, MAX_DEV_NAME, SAR_INVALIDPARAMERR) }?;
        if phDev.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let h = eng().connect(name)?;
        // SAFETY: checked non-null.
        unsafe { put(phDev, to_handle(h)) }
    })
}

/// `SKF_DisConnectDev`.
#[unsafe(no_mangle)]
pub extern "C" fn SKF_DisConnectDev(hDev: DEVHANDLE) -> ULONG {
    shell(|| eng().disconnect(handle(hDev)?))
}

/// `SKF_GetDevState`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_GetDevState(szDevName: LPSTR, pulDevState: *mut ULONG) -> ULONG {
    shell(|| {
        // SAFETY: a NUL-terminated name, read up to the limit.
        let name = unsafe { cstr(szDevName, MAX_DEV_NAME, SAR_INVALIDPARAMERR) }?;
        if pulDevState.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let state = eng().dev_state(name)?;
        // SAFETY: checked non-null.
        unsafe { put(pulDevState, state) }
    })
}

/// `SKF_SetLabel`: at most 31 bytes (`SAR_INDATALENERR`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_SetLabel(hDev: DEVHANDLE, szLabel: LPSTR) -> ULONG {
    shell(|| {
        let h = handle(hDev)?;
        // SAFETY: a NUL-terminated label, read up to the limit.
        let label = unsafe { cstr(szLabel, hsm_sim::skf::device::MAX_LABEL, SAR_INDATALENERR) }?;
        eng().set_label(h, label)
    })
}

fn text<const N: usize>(s: &str) -> [c_char; N] {
    let mut out = [0 as c_char; N];
    for (o, b) in out.iter_mut().zip(s.bytes().take(N - 1)) {
        *o = b as c_char;
    }
    out
}

/// `SKF_GetDevInfo`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_GetDevInfo(hDev: DEVHANDLE, pDevInfo: *mut DEVINFO) -> ULONG {
    shell(|| {
        let h = handle(hDev)?;
        if pDevInfo.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let i = eng().dev_info(h)?;
        let info = DEVINFO {
            Version: VERSION { major: 1, minor: 0 },
            Manufacturer: text(&i.manufacturer),
            Issuer: text(&i.issuer),
            Label: text(&i.label),
            SerialNumber: text(&i.serial),
            HWVersion: VERSION { major: 1, minor: 0 },
            FirmwareVersion: VERSION { major: 1, minor: 0 },
            AlgSymCap: SGD_SM4_ECB | SGD_SM4_CBC,
            AlgAsymCap: SGD_SM2_1 | SGD_SM2_3,
            AlgHashCap: SGD_SM3,
            DevAuthAlgId: SGD_SM4_ECB,
            TotalSpace: i.total_space,
            FreeSpace: i.free_space,
            MaxECCBufferSize: MAX_ECC_PLAIN as ULONG,
            MaxBufferSize: MAX_BUFFER as ULONG,
            Reserved: [0; 64],
        };
        // SAFETY: checked non-null; the caller passes a writable DEVINFO.
        unsafe { put(pDevInfo, info) }
    })
}

/// `SKF_LockDev`: accepted (the simulated device serves one call at a time anyway).
#[unsafe(no_mangle)]
pub extern "C" fn SKF_LockDev(hDev: DEVHANDLE, _ulTimeOut: ULONG) -> ULONG {
    shell(|| eng().lock_dev(handle(hDev)?, "SKF_LockDev"))
}

/// `SKF_UnlockDev`.
#[unsafe(no_mangle)]
pub extern "C" fn SKF_UnlockDev(hDev: DEVHANDLE) -> ULONG {
    shell(|| eng().lock_dev(handle(hDev)?, "SKF_UnlockDev"))
}

/// `SKF_ChangeDevAuthKey`: after `SKF_DevAuth` on this connection; a 16-byte SM4 key.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_ChangeDevAuthKey(
    hDev: DEVHANDLE,
    pbKeyValue: *mut BYTE,
    ulKeyLen: ULONG,
) -> ULONG {
    shell(|| {
        let h = handle(hDev)?;
        // SAFETY: `ulKeyLen` readable bytes (at most 64 read).
        let key = unsafe { bytes(pbKeyValue, ulKeyLen, 64, SAR_INVALIDPARAMERR) }?;
        eng().change_dev_auth_key(h, key)
    })
}

/// `SKF_DevAuth`: the last `SKF_GenRandom` (zero-padded to 16 bytes) encrypted with the
/// device key in SM4-ECB.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_DevAuth(
    hDev: DEVHANDLE,
    pbAuthData: *mut BYTE,
    ulLen: ULONG,
) -> ULONG {
    shell(|| {
        let h = handle(hDev)?;
        // SAFETY: `ulLen` readable bytes (at most 64 read).
        let data = unsafe { bytes(pbAuthData, ulLen, 64, SAR_INDATALENERR) }?;
        eng().dev_auth(h, data)
    })
}

/// `SKF_GenRandom`: at most 1 KiB a call (`SAR_INDATALENERR`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_GenRandom(
    hDev: DEVHANDLE,
    pbRandom: *mut BYTE,
    ulRandomLen: ULONG,
) -> ULONG {
    shell(|| {
        let h = handle(hDev)?;
        let len = ulRandomLen as usize;
        if pbRandom.is_null() || len == 0 {
            return Err(SAR_INVALIDPARAMERR);
        }
        if len > MAX_RANDOM {
            return Err(SAR_INDATALENERR);
        }
        // SAFETY: non-null, `len` (at most 1 KiB) writable bytes by the contract.
        let out = unsafe { std::slice::from_raw_parts_mut(pbRandom, len) };
        eng().gen_random(h, out)
    })
}
