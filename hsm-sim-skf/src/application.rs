//! Applications, containers and certificates (GM/T 0016-2012, 7.4 and 7.5).

use hsm_sim::skf::consts::*;
use hsm_sim::skf::device::{MAX_CERT, MAX_NAME};

use super::*;

/// `SKF_CreateApplication`: after `SKF_DevAuth`; the new application comes back open.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_CreateApplication(
    hDev: DEVHANDLE,
    szAppName: LPSTR,
    szAdminPin: LPSTR,
    dwAdminPinRetryCount: DWORD,
    szUserPin: LPSTR,
    dwUserPinRetryCount: DWORD,
    dwCreateFileRights: DWORD,
    phApplication: *mut HAPPLICATION,
) -> ULONG {
    shell(|| {
        let h = handle(hDev)?;
        // SAFETY: NUL-terminated strings, each read up to its limit.
        let (name, admin, user) = unsafe {
            (
                cstr(szAppName, MAX_NAME, SAR_NAMELENERR)?,
                cstr(szAdminPin, MAX_PIN, SAR_PIN_LEN_RANGE)?,
                cstr(szUserPin, MAX_PIN, SAR_PIN_LEN_RANGE)?,
            )
        };
        if phApplication.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let app = eng().create_app(
            h,
            name,
            admin,
            dwAdminPinRetryCount,
            user,
            dwUserPinRetryCount,
            dwCreateFileRights,
        )?;
        // SAFETY: checked non-null.
        unsafe { put(phApplication, to_handle(app)) }
    })
}

/// `SKF_EnumApplication`: a multi-string; `szAppName` NULL asks for the size.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_EnumApplication(
    hDev: DEVHANDLE,
    szAppName: LPSTR,
    pulSize: *mut ULONG,
) -> ULONG {
    shell(|| {
        let names = eng().enum_apps(handle(hDev)?)?;
        // SAFETY: the caller passes `*pulSize` writable bytes at `szAppName`.
        unsafe { write_names(szAppName, pulSize, &names) }
    })
}

/// `SKF_DeleteApplication`: after `SKF_DevAuth`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_DeleteApplication(hDev: DEVHANDLE, szAppName: LPSTR) -> ULONG {
    shell(|| {
        let h = handle(hDev)?;
        // SAFETY: a NUL-terminated name, read up to the limit.
        let name = unsafe { cstr(szAppName, MAX_NAME, SAR_NAMELENERR) }?;
        eng().delete_app(h, name)
    })
}

/// `SKF_OpenApplication`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_OpenApplication(
    hDev: DEVHANDLE,
    szAppName: LPSTR,
    phApplication: *mut HAPPLICATION,
) -> ULONG {
    shell(|| {
        let h = handle(hDev)?;
        // SAFETY: a NUL-terminated name, read up to the limit.
        let name = unsafe { cstr(szAppName, MAX_NAME, SAR_NAMELENERR) }?;
        if phApplication.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let app = eng().open_app(h, name)?;
        // SAFETY: checked non-null.
        unsafe { put(phApplication, to_handle(app)) }
    })
}

/// `SKF_CloseApplication`.
#[unsafe(no_mangle)]
pub extern "C" fn SKF_CloseApplication(hApplication: HAPPLICATION) -> ULONG {
    shell(|| eng().close_app(handle(hApplication)?))
}

/// `SKF_CreateContainer` (user PIN verified); the container comes back open.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_CreateContainer(
    hApplication: HAPPLICATION,
    szContainerName: LPSTR,
    phContainer: *mut HCONTAINER,
) -> ULONG {
    shell(|| {
        let h = handle(hApplication)?;
        // SAFETY: a NUL-terminated name, read up to the limit.
        let name = unsafe { cstr(szContainerName, MAX_NAME, SAR_NAMELENERR) }?;
        if phContainer.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let c = eng().create_container(h, name)?;
        // SAFETY: checked non-null.
        unsafe { put(phContainer, to_handle(c)) }
    })
}

/// `SKF_DeleteContainer` (user PIN verified).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_DeleteContainer(
    hApplication: HAPPLICATION,
    szContainerName: LPSTR,
) -> ULONG {
    shell(|| {
        let h = handle(hApplication)?;
        // SAFETY: a NUL-terminated name, read up to the limit.
        let name = unsafe { cstr(szContainerName, MAX_NAME, SAR_NAMELENERR) }?;
        eng().delete_container(h, name)
    })
}

/// `SKF_OpenContainer`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_OpenContainer(
    hApplication: HAPPLICATION,
    szContainerName: LPSTR,
    phContainer: *mut HCONTAINER,
) -> ULONG {
    shell(|| {
        let h = handle(hApplication)?;
        // SAFETY: a NUL-terminated name, read up to the limit.
        let name = unsafe { cstr(szContainerName, MAX_NAME, SAR_NAMELENERR) }?;
        if phContainer.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let c = eng().open_container(h, name)?;
        // SAFETY: checked non-null.
        unsafe { put(phContainer, to_handle(c)) }
    })
}

/// `SKF_CloseContainer`.
#[unsafe(no_mangle)]
pub extern "C" fn SKF_CloseContainer(hContainer: HCONTAINER) -> ULONG {
    shell(|| eng().close_container(handle(hContainer)?))
}

/// `SKF_EnumContainer`: a multi-string; `szContainerName` NULL asks for the size.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_EnumContainer(
    hApplication: HAPPLICATION,
    szContainerName: LPSTR,
    pulSize: *mut ULONG,
) -> ULONG {
    shell(|| {
        let names = eng().enum_containers(handle(hApplication)?)?;
        // SAFETY: the caller passes `*pulSize` writable bytes at `szContainerName`.
        unsafe { write_names(szContainerName, pulSize, &names) }
    })
}

/// `SKF_GetContainerType`: 0 empty, 2 SM2.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_GetContainerType(
    hContainer: HCONTAINER,
    pulContainerType: *mut ULONG,
) -> ULONG {
    shell(|| {
        let h = handle(hContainer)?;
        if pulContainerType.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let t = eng().container_type(h)?;
        // SAFETY: checked non-null.
        unsafe { put(pulContainerType, t) }
    })
}

/// `SKF_ImportCertificate` (user PIN verified): 1 byte to 8 KiB, stored as given.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_ImportCertificate(
    hContainer: HCONTAINER,
    bSignFlag: BOOL,
    pbCert: *mut BYTE,
    ulCertLen: ULONG,
) -> ULONG {
    shell(|| {
        let h = handle(hContainer)?;
        // SAFETY: `ulCertLen` readable bytes, checked against the limit first.
        let cert = unsafe { bytes(pbCert, ulCertLen, MAX_CERT, SAR_INDATALENERR) }?;
        eng().import_cert(h, truth(bSignFlag), cert)
    })
}

/// `SKF_ExportCertificate`: `pbCert` NULL asks for the length.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SKF_ExportCertificate(
    hContainer: HCONTAINER,
    bSignFlag: BOOL,
    pbCert: *mut BYTE,
    pulCertLen: *mut ULONG,
) -> ULONG {
    shell(|| {
        let h = handle(hContainer)?;
        if pulCertLen.is_null() {
            return Err(SAR_INVALIDPARAMERR);
        }
        let cert = eng().export_cert(h, truth(bSignFlag))?;
        // SAFETY: the caller passes `*pulCertLen` writable bytes at `pbCert`.
        unsafe { write_out(pbCert, pulCertLen, &cert) }
    })
}
