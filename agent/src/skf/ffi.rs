//! The GM/T 0016-2012 (SKF) C interface of a vendor library, loaded by path: the only code of
//! the agent that calls into C for SKF, so the only module allowed `unsafe` for it.
//!
//! Why our own FFI: the published `skf-rs`/`skf-api` crates were looked at; they return
//! `anyhow` errors from a library API, document about half of it and tie the handle lifetimes
//! to their own loader, while the agent needs typed `SAR_*` codes per function for its
//! [`crate::device::TokenError`]s and handles it can move to a worker thread. The subset the
//! desk uses is small, so it is kept here, as rust-cryptoki keeps PKCS#11's.
//!
//! The ABI is the standard's for Linux: C calling convention, `ULONG` 32 bits, handles
//! `void *`, structures with 1-byte packing. Structures are passed as byte buffers of the
//! standard's sizes and read at the standard's offsets, so no packed Rust struct is ever
//! referenced. Every call goes through [`SkfLibrary::call`], which turns a non-zero return
//! into an [`SkfError`] naming the function.
//!
//! Handles ([`Dev`], [`App`], [`Container`]) close themselves on drop and keep the library
//! loaded while they live.
#![allow(unsafe_code)]

use std::ffi::{CString, c_void};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

/// The standard's `ULONG`.
type Ulong = u32;
/// Any SKF handle (`DEVHANDLE`, `HAPPLICATION`, `HCONTAINER`, `HANDLE`).
type Handle = *mut c_void;

/// `SAR_OK`.
pub const SAR_OK: u32 = 0;
/// `SAR_FAIL`.
pub const SAR_FAIL: u32 = 0x0A00_0001;
/// `SAR_CERTNOTFOUNTERR` (sic, the standard's spelling).
pub const SAR_CERTNOTFOUNTERR: u32 = 0x0A00_001C;
/// `SAR_BUFFER_TOO_SMALL`.
pub const SAR_BUFFER_TOO_SMALL: u32 = 0x0A00_0020;
/// `SAR_NOT_EVENTERR`: a device-event wait was cancelled.
pub const SAR_NOT_EVENTERR: u32 = 0x0A00_0022;
/// `SAR_DEVICE_REMOVED`.
pub const SAR_DEVICE_REMOVED: u32 = 0x0A00_0023;
/// `SAR_PIN_INCORRECT`.
pub const SAR_PIN_INCORRECT: u32 = 0x0A00_0024;
/// `SAR_PIN_LOCKED`.
pub const SAR_PIN_LOCKED: u32 = 0x0A00_0025;
/// `SAR_APPLICATION_NOT_EXISTS`.
pub const SAR_APPLICATION_NOT_EXISTS: u32 = 0x0A00_002E;
/// `SAR_FILE_NOT_EXIST` (also: no such container).
pub const SAR_FILE_NOT_EXIST: u32 = 0x0A00_0031;

/// `SGD_SM2_1`: SM2 signatures.
pub const SGD_SM2_1: u32 = 0x0002_0100;
/// `SGD_SM3`.
pub const SGD_SM3: u32 = 0x0000_0001;
/// `SGD_SM4_ECB`.
pub const SGD_SM4_ECB: u32 = 0x0000_0401;

/// Size of the packed `DEVINFO`.
const DEVINFO_LEN: usize = 294;
/// Size of `ECCPUBLICKEYBLOB`: `BitLen` and two 64-byte coordinates.
pub const ECC_PUBLIC_BLOB_LEN: usize = 132;
/// Size of `ECCSIGNATUREBLOB`: `r` and `s`, 64 bytes each.
const ECC_SIGNATURE_BLOB_LEN: usize = 128;
/// Size of `ECCCIPHERBLOB` up to `Cipher`: C1 (64 + 64), C3 (32), `CipherLen`.
const ECC_CIPHER_HEADER_LEN: usize = 164;
/// Buffer for names lists and certificates: grown on `SAR_BUFFER_TOO_SMALL`.
const FIRST_BUFFER: usize = 1024;

/// The two PINs of an SKF application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinKind {
    /// The administrator (SO) PIN, `ADMIN_TYPE`.
    Admin,
    /// The user PIN, `USER_TYPE`.
    User,
}

impl PinKind {
    fn code(self) -> Ulong {
        match self {
            PinKind::Admin => 0,
            PinKind::User => 1,
        }
    }
}

/// What went wrong in the SKF layer.
#[derive(Debug, thiserror::Error)]
pub enum SkfError {
    /// The library could not be loaded.
    #[error("cannot load the SKF library {path}: {source}")]
    Load {
        /// The library's path.
        path: PathBuf,
        /// What the dynamic loader said.
        source: libloading::Error,
    },
    /// The library lacks a function the desk needs.
    #[error("the SKF library {path} does not export {function}")]
    Missing {
        /// The library's path.
        path: PathBuf,
        /// The missing function.
        function: &'static str,
    },
    /// A call returned an error code.
    #[error("{function} failed: {}", sar_name(*code))]
    Call {
        /// The function.
        function: &'static str,
        /// Its `SAR_*` code.
        code: u32,
        /// For PIN functions, the tries left the library reported.
        retries: Option<u32>,
    },
    /// A name or PIN holds a NUL byte and cannot be passed.
    #[error("{what} holds a NUL byte and cannot be passed to {function}")]
    Nul {
        /// The function.
        function: &'static str,
        /// What was being passed (never its value).
        what: &'static str,
    },
    /// The library answered something the standard does not allow.
    #[error("{function} returned a malformed answer: {problem}")]
    Malformed {
        /// The function.
        function: &'static str,
        /// What is wrong.
        problem: String,
    },
}

impl SkfError {
    /// The `SAR_*` code of a failed call.
    pub fn code(&self) -> Option<u32> {
        match self {
            SkfError::Call { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The standard's name of a `SAR_*` code (hex for codes it does not name).
pub fn sar_name(code: u32) -> String {
    const NAMES: &[(u32, &str)] = &[
        (0x0000_0000, "SAR_OK"),
        (0x0A00_0001, "SAR_FAIL"),
        (0x0A00_0002, "SAR_UNKNOWNERR"),
        (0x0A00_0003, "SAR_NOTSUPPORTYETERR"),
        (0x0A00_0005, "SAR_INVALIDHANDLEERR"),
        (0x0A00_0006, "SAR_INVALIDPARAMERR"),
        (0x0A00_0009, "SAR_NAMELENERR"),
        (0x0A00_000C, "SAR_NOTINITIALIZEERR"),
        (0x0A00_000E, "SAR_MEMORYERR"),
        (0x0A00_000F, "SAR_TIMEOUTERR"),
        (0x0A00_0010, "SAR_INDATALENERR"),
        (0x0A00_0011, "SAR_INDATAERR"),
        (0x0A00_0012, "SAR_GENRANDERR"),
        (0x0A00_001B, "SAR_KEYNOTFOUNTERR"),
        (0x0A00_001C, "SAR_CERTNOTFOUNTERR"),
        (0x0A00_0020, "SAR_BUFFER_TOO_SMALL"),
        (0x0A00_0022, "SAR_NOT_EVENTERR"),
        (0x0A00_0023, "SAR_DEVICE_REMOVED"),
        (0x0A00_0024, "SAR_PIN_INCORRECT"),
        (0x0A00_0025, "SAR_PIN_LOCKED"),
        (0x0A00_0026, "SAR_PIN_INVALID"),
        (0x0A00_0027, "SAR_PIN_LEN_RANGE"),
        (0x0A00_002C, "SAR_APPLICATION_EXISTS"),
        (0x0A00_002D, "SAR_USER_NOT_LOGGED_IN"),
        (0x0A00_002E, "SAR_APPLICATION_NOT_EXISTS"),
        (0x0A00_002F, "SAR_FILE_ALREADY_EXIST"),
        (0x0A00_0030, "SAR_NO_ROOM"),
        (0x0A00_0031, "SAR_FILE_NOT_EXIST"),
        (0x0A00_0032, "SAR_REACH_MAX_CONTAINER_COUNT"),
    ];
    NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or_else(|| format!("SAR 0x{code:08X}"), |(_, n)| (*n).to_string())
}

type FnEnumDev = unsafe extern "C" fn(i32, *mut u8, *mut Ulong) -> Ulong;
type FnConnectDev = unsafe extern "C" fn(*const u8, *mut Handle) -> Ulong;
type FnHandle = unsafe extern "C" fn(Handle) -> Ulong;
type FnGetDevInfo = unsafe extern "C" fn(Handle, *mut u8) -> Ulong;
type FnBytesIn = unsafe extern "C" fn(Handle, *const u8, Ulong) -> Ulong;
type FnGenRandom = unsafe extern "C" fn(Handle, *mut u8, Ulong) -> Ulong;
type FnSetLabel = unsafe extern "C" fn(Handle, *const u8) -> Ulong;
type FnCreateApplication = unsafe extern "C" fn(
    Handle,
    *const u8,
    *const u8,
    Ulong,
    *const u8,
    Ulong,
    Ulong,
    *mut Handle,
) -> Ulong;
type FnEnumNames = unsafe extern "C" fn(Handle, *mut u8, *mut Ulong) -> Ulong;
type FnOpenNamed = unsafe extern "C" fn(Handle, *const u8, *mut Handle) -> Ulong;
type FnDeleteNamed = unsafe extern "C" fn(Handle, *const u8) -> Ulong;
type FnVerifyPin = unsafe extern "C" fn(Handle, Ulong, *const u8, *mut Ulong) -> Ulong;
type FnGetPinInfo = unsafe extern "C" fn(Handle, Ulong, *mut Ulong, *mut Ulong, *mut i32) -> Ulong;
type FnUnblockPin = unsafe extern "C" fn(Handle, *const u8, *const u8, *mut Ulong) -> Ulong;
type FnGetContainerType = unsafe extern "C" fn(Handle, *mut Ulong) -> Ulong;
type FnGenEccKeyPair = unsafe extern "C" fn(Handle, Ulong, *mut u8) -> Ulong;
type FnExportPublicKey = unsafe extern "C" fn(Handle, i32, *mut u8, *mut Ulong) -> Ulong;
type FnEccSignData = unsafe extern "C" fn(Handle, *const u8, Ulong, *mut u8) -> Ulong;
type FnEccVerify = unsafe extern "C" fn(Handle, *const u8, *const u8, Ulong, *const u8) -> Ulong;
type FnExtEccEncrypt = unsafe extern "C" fn(Handle, *const u8, *const u8, Ulong, *mut u8) -> Ulong;
type FnImportCertificate = unsafe extern "C" fn(Handle, i32, *const u8, Ulong) -> Ulong;
type FnExportCertificate = unsafe extern "C" fn(Handle, i32, *mut u8, *mut Ulong) -> Ulong;
type FnImportSessionKey =
    unsafe extern "C" fn(Handle, Ulong, *const u8, Ulong, *mut Handle) -> Ulong;
type FnWaitForDevEvent = unsafe extern "C" fn(*mut u8, *mut Ulong, *mut Ulong) -> Ulong;
type FnCancelWait = unsafe extern "C" fn() -> Ulong;

/// The functions the desk calls, resolved once at load.
struct Api {
    enum_dev: FnEnumDev,
    connect_dev: FnConnectDev,
    disconnect_dev: FnHandle,
    get_dev_info: FnGetDevInfo,
    set_label: FnSetLabel,
    gen_random: FnGenRandom,
    dev_auth: FnBytesIn,
    change_dev_auth_key: FnBytesIn,
    create_application: FnCreateApplication,
    enum_application: FnEnumNames,
    open_application: FnOpenNamed,
    delete_application: FnDeleteNamed,
    close_application: FnHandle,
    verify_pin: FnVerifyPin,
    get_pin_info: FnGetPinInfo,
    unblock_pin: FnUnblockPin,
    clear_secure_state: FnHandle,
    create_container: FnOpenNamed,
    open_container: FnOpenNamed,
    delete_container: FnDeleteNamed,
    enum_container: FnEnumNames,
    close_container: FnHandle,
    get_container_type: FnGetContainerType,
    gen_ecc_key_pair: FnGenEccKeyPair,
    export_public_key: FnExportPublicKey,
    ecc_sign_data: FnEccSignData,
    ecc_verify: FnEccVerify,
    ext_ecc_encrypt: FnExtEccEncrypt,
    import_certificate: FnImportCertificate,
    export_certificate: FnExportCertificate,
    import_session_key: FnImportSessionKey,
    close_handle: FnHandle,
    /// Optional: a library without it is watched by scanning.
    wait_for_dev_event: Option<FnWaitForDevEvent>,
    cancel_wait_for_dev_event: Option<FnCancelWait>,
}

struct Inner {
    path: PathBuf,
    api: Api,
    // Declared last: dropped after nothing can call through `api` any more.
    _library: libloading::Library,
}

/// A vendor's SKF library, loaded. Cheap to clone; every handle keeps it loaded.
#[derive(Clone)]
pub struct SkfLibrary {
    inner: Arc<Inner>,
}

impl fmt::Debug for SkfLibrary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SkfLibrary")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn symbol<T: Copy>(
    library: &libloading::Library,
    path: &Path,
    function: &'static str,
) -> Result<T, SkfError> {
    optional_symbol(library, function).ok_or_else(|| SkfError::Missing {
        path: path.to_path_buf(),
        function,
    })
}

fn optional_symbol<T: Copy>(library: &libloading::Library, function: &'static str) -> Option<T> {
    // SAFETY: `T` is the function-pointer type the standard gives `function`; the pointer is
    // copied out and used only while `Inner` keeps the library loaded.
    unsafe { library.get::<T>(function.as_bytes()).ok().map(|s| *s) }
}

impl SkfLibrary {
    /// Loads the SKF library at `path` and resolves the functions the desk uses.
    pub fn load(path: &Path) -> Result<SkfLibrary, SkfError> {
        // SAFETY: loading a vendor library runs its initializers; that is what configuring
        // it as the model's library asks for, as for a PKCS#11 module.
        let library =
            unsafe { libloading::Library::new(path) }.map_err(|source| SkfError::Load {
                path: path.to_path_buf(),
                source,
            })?;
        let l = &library;
        let api = Api {
            enum_dev: symbol(l, path, "SKF_EnumDev")?,
            connect_dev: symbol(l, path, "SKF_ConnectDev")?,
            disconnect_dev: symbol(l, path, "SKF_DisConnectDev")?,
            get_dev_info: symbol(l, path, "SKF_GetDevInfo")?,
            set_label: symbol(l, path, "SKF_SetLabel")?,
            gen_random: symbol(l, path, "SKF_GenRandom")?,
            dev_auth: symbol(l, path, "SKF_DevAuth")?,
            change_dev_auth_key: symbol(l, path, "SKF_ChangeDevAuthKey")?,
            create_application: symbol(l, path, "SKF_CreateApplication")?,
            enum_application: symbol(l, path, "SKF_EnumApplication")?,
            open_application: symbol(l, path, "SKF_OpenApplication")?,
            delete_application: symbol(l, path, "SKF_DeleteApplication")?,
            close_application: symbol(l, path, "SKF_CloseApplication")?,
            verify_pin: symbol(l, path, "SKF_VerifyPIN")?,
            get_pin_info: symbol(l, path, "SKF_GetPINInfo")?,
            unblock_pin: symbol(l, path, "SKF_UnblockPIN")?,
            clear_secure_state: symbol(l, path, "SKF_ClearSecureState")?,
            create_container: symbol(l, path, "SKF_CreateContainer")?,
            open_container: symbol(l, path, "SKF_OpenContainer")?,
            delete_container: symbol(l, path, "SKF_DeleteContainer")?,
            enum_container: symbol(l, path, "SKF_EnumContainer")?,
            close_container: symbol(l, path, "SKF_CloseContainer")?,
            get_container_type: symbol(l, path, "SKF_GetContainerType")?,
            gen_ecc_key_pair: symbol(l, path, "SKF_GenECCKeyPair")?,
            export_public_key: symbol(l, path, "SKF_ExportPublicKey")?,
            ecc_sign_data: symbol(l, path, "SKF_ECCSignData")?,
            ecc_verify: symbol(l, path, "SKF_ECCVerify")?,
            ext_ecc_encrypt: symbol(l, path, "SKF_ExtECCEncrypt")?,
            import_certificate: symbol(l, path, "SKF_ImportCertificate")?,
            export_certificate: symbol(l, path, "SKF_ExportCertificate")?,
            import_session_key: symbol(l, path, "SKF_ImportSessionKey")?,
            close_handle: symbol(l, path, "SKF_CloseHandle")?,
            wait_for_dev_event: optional_symbol(l, "SKF_WaitForDevEvent"),
            cancel_wait_for_dev_event: optional_symbol(l, "SKF_CancelWaitForDevEvent"),
        };
        Ok(SkfLibrary {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                api,
                _library: library,
            }),
        })
    }

    /// The path the library was loaded from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn api(&self) -> &Api {
        &self.inner.api
    }

    /// Whether the library can report device arrivals and removals itself.
    pub fn has_device_events(&self) -> bool {
        self.api().wait_for_dev_event.is_some() && self.api().cancel_wait_for_dev_event.is_some()
    }

    /// The names of the devices present (`SKF_EnumDev(TRUE)`), in the library's order.
    pub fn devices(&self) -> Result<Vec<String>, SkfError> {
        let f = self.api().enum_dev;
        // SAFETY: `buf`/`len` describe a writable buffer of `len` bytes (or a length query).
        read_names("SKF_EnumDev", |buf, len| unsafe { f(1, buf, len) })
    }

    /// Connects to the device `name`.
    pub fn connect(&self, name: &str) -> Result<Dev, SkfError> {
        let name = c_string("SKF_ConnectDev", "the device name", name)?;
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: a NUL-terminated name and a place for the handle.
        check("SKF_ConnectDev", unsafe {
            (self.api().connect_dev)(name.as_ptr().cast(), &mut handle)
        })?;
        Ok(Dev {
            library: self.clone(),
            handle,
            name: name_of(&name),
        })
    }

    /// Blocks until a device arrives (`true`) or leaves (`false`); `Ok(None)` when the wait
    /// was cancelled ([`SkfLibrary::cancel_device_wait`]) or the library has no events.
    pub fn wait_for_device_event(&self) -> Result<Option<(String, bool)>, SkfError> {
        let Some(wait) = self.api().wait_for_dev_event else {
            return Ok(None);
        };
        let mut name = [0u8; 256];
        let mut len = name.len() as Ulong;
        let mut event: Ulong = 0;
        // SAFETY: a writable 256-byte buffer with its length and a place for the event.
        let rv = unsafe { wait(name.as_mut_ptr(), &mut len, &mut event) };
        if rv == SAR_NOT_EVENTERR {
            return Ok(None);
        }
        check("SKF_WaitForDevEvent", rv)?;
        let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        let name = String::from_utf8_lossy(&name[..end]).into_owned();
        Ok(Some((name, event == 1)))
    }

    /// Makes a [`SkfLibrary::wait_for_device_event`] in progress (or the next) return.
    pub fn cancel_device_wait(&self) -> Result<(), SkfError> {
        if let Some(cancel) = self.api().cancel_wait_for_dev_event {
            // SAFETY: no arguments.
            check("SKF_CancelWaitForDevEvent", unsafe { cancel() })?;
        }
        Ok(())
    }
}

fn check(function: &'static str, rv: Ulong) -> Result<(), SkfError> {
    if rv == SAR_OK {
        Ok(())
    } else {
        Err(SkfError::Call {
            function,
            code: rv,
            retries: None,
        })
    }
}

fn c_string(function: &'static str, what: &'static str, s: &str) -> Result<CString, SkfError> {
    CString::new(s).map_err(|_| SkfError::Nul { function, what })
}

fn name_of(c: &CString) -> String {
    c.to_string_lossy().into_owned()
}

/// A PIN as a NUL-terminated buffer that is wiped when dropped.
fn c_pin(function: &'static str, pin: &str) -> Result<Zeroizing<Vec<u8>>, SkfError> {
    if pin.as_bytes().contains(&0) {
        return Err(SkfError::Nul {
            function,
            what: "the PIN",
        });
    }
    let mut v = Zeroizing::new(Vec::with_capacity(pin.len() + 1));
    v.extend_from_slice(pin.as_bytes());
    v.push(0);
    Ok(v)
}

/// Runs a length-query call until the buffer is big enough.
fn read_bytes(
    function: &'static str,
    mut call: impl FnMut(*mut u8, *mut Ulong) -> Ulong,
) -> Result<Vec<u8>, SkfError> {
    let mut buf = vec![0u8; FIRST_BUFFER];
    for _ in 0..4 {
        let mut len = buf.len() as Ulong;
        let rv = call(buf.as_mut_ptr(), &mut len);
        if rv == SAR_BUFFER_TOO_SMALL && (len as usize) > buf.len() {
            buf.resize(len as usize, 0);
            continue;
        }
        check(function, rv)?;
        if len as usize > buf.len() {
            return Err(SkfError::Malformed {
                function,
                problem: format!("length {len} beyond the buffer of {}", buf.len()),
            });
        }
        buf.truncate(len as usize);
        return Ok(buf);
    }
    Err(SkfError::Malformed {
        function,
        problem: "the length it asks for keeps growing".into(),
    })
}

/// Reads a multi-string (names each NUL-terminated, then one more NUL).
fn read_names(
    function: &'static str,
    call: impl FnMut(*mut u8, *mut Ulong) -> Ulong,
) -> Result<Vec<String>, SkfError> {
    let bytes = read_bytes(function, call)?;
    Ok(bytes
        .split(|b| *b == 0)
        .take_while(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// What `SKF_GetDevInfo` says of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevInfo {
    /// `Manufacturer`.
    pub manufacturer: String,
    /// `Issuer`.
    pub issuer: String,
    /// `Label`.
    pub label: String,
    /// `SerialNumber`.
    pub serial: String,
    /// `TotalSpace` in bytes.
    pub total_space: u32,
    /// `FreeSpace` in bytes.
    pub free_space: u32,
}

fn text(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).trim().to_string()
}

fn ulong_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_ne_bytes(b)
}

impl DevInfo {
    fn parse(buf: &[u8; DEVINFO_LEN]) -> DevInfo {
        DevInfo {
            manufacturer: text(&buf[2..66]),
            issuer: text(&buf[66..130]),
            label: text(&buf[130..162]),
            serial: text(&buf[162..194]),
            total_space: ulong_at(buf, 214),
            free_space: ulong_at(buf, 218),
        }
    }
}

/// What `SKF_GetPINInfo` says of one PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinInfo {
    /// The retry count the PIN was set with.
    pub max_retries: u32,
    /// Tries left (0: locked).
    pub remaining: u32,
    /// Whether the PIN is still the one the application was created with.
    pub is_default: bool,
}

/// An SM2 public key as the token gives it: 32-byte big-endian coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EccPublicKey {
    /// X.
    pub x: [u8; 32],
    /// Y.
    pub y: [u8; 32],
}

impl EccPublicKey {
    fn parse(function: &'static str, blob: &[u8]) -> Result<EccPublicKey, SkfError> {
        if blob.len() != ECC_PUBLIC_BLOB_LEN {
            return Err(SkfError::Malformed {
                function,
                problem: format!("a public key blob of {} bytes", blob.len()),
            });
        }
        let bits = ulong_at(blob, 0);
        if bits != 256
            || blob[4..36].iter().any(|b| *b != 0)
            || blob[68..100].iter().any(|b| *b != 0)
        {
            return Err(SkfError::Malformed {
                function,
                problem: format!("not a right-aligned 256-bit key (BitLen {bits})"),
            });
        }
        let mut x = [0u8; 32];
        let mut y = [0u8; 32];
        x.copy_from_slice(&blob[36..68]);
        y.copy_from_slice(&blob[100..132]);
        Ok(EccPublicKey { x, y })
    }

    /// The `ECCPUBLICKEYBLOB` of this key.
    pub fn blob(&self) -> [u8; ECC_PUBLIC_BLOB_LEN] {
        let mut b = [0u8; ECC_PUBLIC_BLOB_LEN];
        b[0..4].copy_from_slice(&256u32.to_ne_bytes());
        b[36..68].copy_from_slice(&self.x);
        b[100..132].copy_from_slice(&self.y);
        b
    }
}

/// An SM2 signature's `r` and `s` (32-byte big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EccSignature {
    /// r.
    pub r: [u8; 32],
    /// s.
    pub s: [u8; 32],
}

/// A connected device (`DEVHANDLE`); disconnected on drop.
pub struct Dev {
    library: SkfLibrary,
    handle: Handle,
    name: String,
}

// SAFETY: a `DEVHANDLE` is an opaque token the library hands out; the standard does not bind
// it to a thread, and the agent uses a device from one thread at a time (`Dev` is not `Sync`).
unsafe impl Send for Dev {}

impl fmt::Debug for Dev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dev").field("name", &self.name).finish()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        // SAFETY: the handle came from `SKF_ConnectDev` and is disconnected once.
        let _ = unsafe { (self.library.api().disconnect_dev)(self.handle) };
    }
}

impl Dev {
    /// The device's name (its position in `SKF_EnumDev`'s list; changes on re-plug).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn api(&self) -> &Api {
        self.library.api()
    }

    /// `SKF_GetDevInfo`.
    pub fn info(&self) -> Result<DevInfo, SkfError> {
        let mut buf = [0u8; DEVINFO_LEN];
        // SAFETY: a writable buffer of the packed DEVINFO's size.
        check("SKF_GetDevInfo", unsafe {
            (self.api().get_dev_info)(self.handle, buf.as_mut_ptr())
        })?;
        Ok(DevInfo::parse(&buf))
    }

    /// `SKF_SetLabel` (at most 31 bytes on most devices).
    pub fn set_label(&self, label: &str) -> Result<(), SkfError> {
        let label = c_string("SKF_SetLabel", "the label", label)?;
        // SAFETY: a NUL-terminated string.
        check("SKF_SetLabel", unsafe {
            (self.api().set_label)(self.handle, label.as_ptr().cast())
        })
    }

    /// `len` random bytes from the device.
    pub fn random(&self, len: usize) -> Result<Vec<u8>, SkfError> {
        let mut out = vec![0u8; len];
        // SAFETY: a writable buffer of `len` bytes.
        check("SKF_GenRandom", unsafe {
            (self.api().gen_random)(self.handle, out.as_mut_ptr(), len as Ulong)
        })?;
        Ok(out)
    }

    /// Device authentication: `SKF_GenRandom` for an 8-byte challenge, zero-padded to 16
    /// bytes and encrypted with the 16-byte device key in SM4-ECB, given to `SKF_DevAuth`.
    pub fn authenticate(&self, device_key: &[u8; 16]) -> Result<(), SkfError> {
        use sm4::cipher::{BlockCipherEncrypt, KeyInit};
        let challenge = self.random(8)?;
        let mut block = sm4::cipher::Block::<sm4::Sm4>::default();
        block[..8].copy_from_slice(&challenge);
        sm4::Sm4::new(device_key.into()).encrypt_block(&mut block);
        // SAFETY: 16 readable bytes.
        check("SKF_DevAuth", unsafe {
            (self.api().dev_auth)(self.handle, block.as_ptr(), 16)
        })
    }

    /// `SKF_ChangeDevAuthKey` (after [`Dev::authenticate`]).
    pub fn change_device_key(&self, new_key: &[u8; 16]) -> Result<(), SkfError> {
        // SAFETY: 16 readable bytes.
        check("SKF_ChangeDevAuthKey", unsafe {
            (self.api().change_dev_auth_key)(self.handle, new_key.as_ptr(), 16)
        })
    }

    /// The applications on the device.
    pub fn applications(&self) -> Result<Vec<String>, SkfError> {
        let f = self.api().enum_application;
        let h = self.handle;
        // SAFETY: `buf`/`len` describe a writable buffer (or a length query).
        read_names("SKF_EnumApplication", |buf, len| unsafe { f(h, buf, len) })
    }

    /// `SKF_CreateApplication` (after [`Dev::authenticate`]) with both PINs and their retry
    /// counts; everyone may create containers in it once the user PIN is verified.
    pub fn create_application(
        &self,
        name: &str,
        admin_pin: &str,
        admin_retries: u32,
        user_pin: &str,
        user_retries: u32,
    ) -> Result<App, SkfError> {
        const F: &str = "SKF_CreateApplication";
        const SECURE_USER_ACCOUNT: Ulong = 0x10;
        let c_name = c_string(F, "the application name", name)?;
        let admin = c_pin(F, admin_pin)?;
        let user = c_pin(F, user_pin)?;
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: NUL-terminated strings and a place for the handle.
        check(F, unsafe {
            (self.api().create_application)(
                self.handle,
                c_name.as_ptr().cast(),
                admin.as_ptr(),
                admin_retries,
                user.as_ptr(),
                user_retries,
                SECURE_USER_ACCOUNT,
                &mut handle,
            )
        })?;
        Ok(App {
            library: self.library.clone(),
            handle,
        })
    }

    /// `SKF_OpenApplication`.
    pub fn open_application(&self, name: &str) -> Result<App, SkfError> {
        let c_name = c_string("SKF_OpenApplication", "the application name", name)?;
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: a NUL-terminated string and a place for the handle.
        check("SKF_OpenApplication", unsafe {
            (self.api().open_application)(self.handle, c_name.as_ptr().cast(), &mut handle)
        })?;
        Ok(App {
            library: self.library.clone(),
            handle,
        })
    }

    /// `SKF_DeleteApplication` (after [`Dev::authenticate`]).
    pub fn delete_application(&self, name: &str) -> Result<(), SkfError> {
        let c_name = c_string("SKF_DeleteApplication", "the application name", name)?;
        // SAFETY: a NUL-terminated string.
        check("SKF_DeleteApplication", unsafe {
            (self.api().delete_application)(self.handle, c_name.as_ptr().cast())
        })
    }

    /// `SKF_ECCVerify` of a 32-byte hash on the device.
    pub fn verify(
        &self,
        key: &EccPublicKey,
        hash: &[u8; 32],
        signature: &EccSignature,
    ) -> Result<bool, SkfError> {
        let blob = key.blob();
        let mut sig = [0u8; ECC_SIGNATURE_BLOB_LEN];
        sig[32..64].copy_from_slice(&signature.r);
        sig[96..128].copy_from_slice(&signature.s);
        // SAFETY: readable blobs of the standard's sizes and 32 bytes of hash.
        let rv = unsafe {
            (self.api().ecc_verify)(self.handle, blob.as_ptr(), hash.as_ptr(), 32, sig.as_ptr())
        };
        if rv == SAR_FAIL {
            return Ok(false);
        }
        check("SKF_ECCVerify", rv)?;
        Ok(true)
    }

    /// `SKF_ExtECCEncrypt`: `plain` (1 to 256 bytes) encrypted to `key`, as the
    /// `ECCCIPHERBLOB` bytes (`Cipher` as long as `plain`).
    pub fn encrypt_to(&self, key: &EccPublicKey, plain: &[u8]) -> Result<Vec<u8>, SkfError> {
        let blob = key.blob();
        let mut out = vec![0u8; ECC_CIPHER_HEADER_LEN + plain.len().max(1)];
        // SAFETY: the public key blob, `plain`, and an output with room for `plain.len()`
        // bytes of `Cipher` (the standard has no capacity argument).
        check("SKF_ExtECCEncrypt", unsafe {
            (self.api().ext_ecc_encrypt)(
                self.handle,
                blob.as_ptr(),
                plain.as_ptr(),
                plain.len() as Ulong,
                out.as_mut_ptr(),
            )
        })?;
        Ok(out)
    }
}

/// An open application (`HAPPLICATION`); closed on drop (its secure state stays).
pub struct App {
    library: SkfLibrary,
    handle: Handle,
}

// SAFETY: as for `Dev`.
unsafe impl Send for App {}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("App")
    }
}

impl Drop for App {
    fn drop(&mut self) {
        // SAFETY: the handle came from the library and is closed once.
        let _ = unsafe { (self.library.api().close_application)(self.handle) };
    }
}

impl App {
    fn api(&self) -> &Api {
        self.library.api()
    }

    /// `SKF_VerifyPIN`. A wrong PIN is a [`SkfError::Call`] with `SAR_PIN_INCORRECT` and the
    /// tries left, a locked one `SAR_PIN_LOCKED`.
    pub fn verify_pin(&self, kind: PinKind, pin: &str) -> Result<(), SkfError> {
        let pin = c_pin("SKF_VerifyPIN", pin)?;
        let mut retries: Ulong = 0;
        // SAFETY: a NUL-terminated PIN and a place for the tries left.
        let rv = unsafe {
            (self.api().verify_pin)(self.handle, kind.code(), pin.as_ptr(), &mut retries)
        };
        pin_result("SKF_VerifyPIN", rv, retries)
    }

    /// `SKF_GetPINInfo`.
    pub fn pin_info(&self, kind: PinKind) -> Result<PinInfo, SkfError> {
        let (mut max, mut remaining, mut default) = (0, 0, 0);
        // SAFETY: places for the three answers.
        check("SKF_GetPINInfo", unsafe {
            (self.api().get_pin_info)(
                self.handle,
                kind.code(),
                &mut max,
                &mut remaining,
                &mut default,
            )
        })?;
        Ok(PinInfo {
            max_retries: max,
            remaining,
            is_default: default != 0,
        })
    }

    /// `SKF_UnblockPIN`: with the admin PIN, a new user PIN and its counter reset.
    pub fn unblock_user_pin(&self, admin_pin: &str, new_user_pin: &str) -> Result<(), SkfError> {
        let admin = c_pin("SKF_UnblockPIN", admin_pin)?;
        let user = c_pin("SKF_UnblockPIN", new_user_pin)?;
        let mut retries: Ulong = 0;
        // SAFETY: NUL-terminated PINs and a place for the tries left.
        let rv = unsafe {
            (self.api().unblock_pin)(self.handle, admin.as_ptr(), user.as_ptr(), &mut retries)
        };
        pin_result("SKF_UnblockPIN", rv, retries)
    }

    /// `SKF_ClearSecureState`: forgets the verified PINs.
    pub fn clear_secure_state(&self) -> Result<(), SkfError> {
        // SAFETY: the application handle.
        check("SKF_ClearSecureState", unsafe {
            (self.api().clear_secure_state)(self.handle)
        })
    }

    /// The containers of the application.
    pub fn containers(&self) -> Result<Vec<String>, SkfError> {
        let f = self.api().enum_container;
        let h = self.handle;
        // SAFETY: `buf`/`len` describe a writable buffer (or a length query).
        read_names("SKF_EnumContainer", |buf, len| unsafe { f(h, buf, len) })
    }

    fn named(
        &self,
        function: &'static str,
        f: FnOpenNamed,
        name: &str,
    ) -> Result<Container, SkfError> {
        let c_name = c_string(function, "the container name", name)?;
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: a NUL-terminated name and a place for the handle.
        check(function, unsafe {
            f(self.handle, c_name.as_ptr().cast(), &mut handle)
        })?;
        Ok(Container {
            library: self.library.clone(),
            handle,
        })
    }

    /// `SKF_CreateContainer` (user PIN verified).
    pub fn create_container(&self, name: &str) -> Result<Container, SkfError> {
        self.named("SKF_CreateContainer", self.api().create_container, name)
    }

    /// `SKF_OpenContainer`.
    pub fn open_container(&self, name: &str) -> Result<Container, SkfError> {
        self.named("SKF_OpenContainer", self.api().open_container, name)
    }

    /// `SKF_DeleteContainer` (user PIN verified): its key pairs and certificates go too.
    pub fn delete_container(&self, name: &str) -> Result<(), SkfError> {
        let c_name = c_string("SKF_DeleteContainer", "the container name", name)?;
        // SAFETY: a NUL-terminated name.
        check("SKF_DeleteContainer", unsafe {
            (self.api().delete_container)(self.handle, c_name.as_ptr().cast())
        })
    }
}

fn pin_result(function: &'static str, rv: Ulong, retries: Ulong) -> Result<(), SkfError> {
    match rv {
        SAR_OK => Ok(()),
        SAR_PIN_INCORRECT | SAR_PIN_LOCKED => Err(SkfError::Call {
            function,
            code: rv,
            retries: Some(retries),
        }),
        _ => check(function, rv),
    }
}

/// An open container (`HCONTAINER`); closed on drop.
pub struct Container {
    library: SkfLibrary,
    handle: Handle,
}

// SAFETY: as for `Dev`.
unsafe impl Send for Container {}

impl fmt::Debug for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Container")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SAFETY: the handle came from the library and is closed once.
        let _ = unsafe { (self.library.api().close_container)(self.handle) };
    }
}

/// A session key imported into a container (`HANDLE`); closed on drop.
pub struct SessionKey {
    library: SkfLibrary,
    handle: Handle,
}

impl Drop for SessionKey {
    fn drop(&mut self) {
        // SAFETY: the handle came from `SKF_ImportSessionKey` and is closed once.
        let _ = unsafe { (self.library.api().close_handle)(self.handle) };
    }
}

impl Container {
    fn api(&self) -> &Api {
        self.library.api()
    }

    /// `SKF_GetContainerType`: 0 empty, 1 RSA, 2 SM2.
    pub fn kind(&self) -> Result<u32, SkfError> {
        let mut kind: Ulong = 0;
        // SAFETY: a place for the answer.
        check("SKF_GetContainerType", unsafe {
            (self.api().get_container_type)(self.handle, &mut kind)
        })?;
        Ok(kind)
    }

    /// `SKF_GenECCKeyPair(SGD_SM2_1)`: a new signing key pair on the token (user PIN
    /// verified).
    pub fn generate_signing_key(&self) -> Result<EccPublicKey, SkfError> {
        let mut blob = [0u8; ECC_PUBLIC_BLOB_LEN];
        // SAFETY: a writable ECCPUBLICKEYBLOB.
        check("SKF_GenECCKeyPair", unsafe {
            (self.api().gen_ecc_key_pair)(self.handle, SGD_SM2_1, blob.as_mut_ptr())
        })?;
        EccPublicKey::parse("SKF_GenECCKeyPair", &blob)
    }

    /// `SKF_ExportPublicKey` of the signing (`true`) or encryption key pair.
    pub fn public_key(&self, signing: bool) -> Result<EccPublicKey, SkfError> {
        let mut blob = [0u8; ECC_PUBLIC_BLOB_LEN];
        let mut len = blob.len() as Ulong;
        // SAFETY: a writable buffer of `len` bytes.
        check("SKF_ExportPublicKey", unsafe {
            (self.api().export_public_key)(
                self.handle,
                i32::from(signing),
                blob.as_mut_ptr(),
                &mut len,
            )
        })?;
        let len = (len as usize).min(blob.len());
        EccPublicKey::parse("SKF_ExportPublicKey", &blob[..len])
    }

    /// `SKF_ECCSignData` of a 32-byte hash (SM3 with Z, computed by the caller) with the
    /// signing key (user PIN verified).
    pub fn sign_hash(&self, hash: &[u8; 32]) -> Result<EccSignature, SkfError> {
        let mut blob = [0u8; ECC_SIGNATURE_BLOB_LEN];
        // SAFETY: 32 readable bytes and a writable ECCSIGNATUREBLOB.
        check("SKF_ECCSignData", unsafe {
            (self.api().ecc_sign_data)(self.handle, hash.as_ptr(), 32, blob.as_mut_ptr())
        })?;
        if blob[..32].iter().chain(&blob[64..96]).any(|b| *b != 0) {
            return Err(SkfError::Malformed {
                function: "SKF_ECCSignData",
                problem: "r or s beyond 256 bits".into(),
            });
        }
        let mut r = [0u8; 32];
        let mut s = [0u8; 32];
        r.copy_from_slice(&blob[32..64]);
        s.copy_from_slice(&blob[96..128]);
        Ok(EccSignature { r, s })
    }

    /// `SKF_ImportCertificate` for the signing (`true`) or encryption key pair (user PIN
    /// verified); replaces the one there.
    pub fn import_certificate(&self, signing: bool, der: &[u8]) -> Result<(), SkfError> {
        // SAFETY: `der.len()` readable bytes.
        check("SKF_ImportCertificate", unsafe {
            (self.api().import_certificate)(
                self.handle,
                i32::from(signing),
                der.as_ptr(),
                der.len() as Ulong,
            )
        })
    }

    /// `SKF_ExportCertificate` of the signing (`true`) or encryption key pair; `None` when
    /// there is none.
    pub fn certificate(&self, signing: bool) -> Result<Option<Vec<u8>>, SkfError> {
        let f = self.api().export_certificate;
        let h = self.handle;
        // SAFETY: `buf`/`len` describe a writable buffer (or a length query).
        match read_bytes("SKF_ExportCertificate", |buf, len| unsafe {
            f(h, i32::from(signing), buf, len)
        }) {
            Ok(der) => Ok(Some(der)),
            Err(e) if e.code() == Some(SAR_CERTNOTFOUNTERR) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `SKF_ImportSessionKey`: an `ECCCIPHERBLOB` of an SM4 key encrypted to this
    /// container's encryption key, decrypted on the token (user PIN verified). Success proves
    /// that the encryption private key is there and works.
    pub fn import_session_key(&self, blob: &[u8]) -> Result<SessionKey, SkfError> {
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: `blob.len()` readable bytes and a place for the handle.
        check("SKF_ImportSessionKey", unsafe {
            (self.api().import_session_key)(
                self.handle,
                SGD_SM4_ECB,
                blob.as_ptr(),
                blob.len() as Ulong,
                &mut handle,
            )
        })?;
        Ok(SessionKey {
            library: self.library.clone(),
            handle,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn sar_codes_have_their_standard_names() {
        assert_eq!(sar_name(SAR_PIN_INCORRECT), "SAR_PIN_INCORRECT");
        assert_eq!(sar_name(0x0A00_0031), "SAR_FILE_NOT_EXIST");
        assert_eq!(sar_name(0x0A00_00FF), "SAR 0x0A0000FF");
    }

    #[test]
    fn names_lists_are_multi_strings() {
        let names = read_names("SKF_EnumDev", |buf, len| {
            let data = b"dev 1\0dev 2\0\0";
            // SAFETY: the buffer has FIRST_BUFFER bytes, more than `data`.
            unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), buf, data.len());
                *len = data.len() as Ulong;
            }
            SAR_OK
        })
        .unwrap();
        assert_eq!(names, ["dev 1", "dev 2"]);
        let empty = read_names("SKF_EnumDev", |buf, len| {
            // SAFETY: as above.
            unsafe {
                *buf = 0;
                *buf.add(1) = 0;
                *len = 2;
            }
            SAR_OK
        })
        .unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn a_growing_buffer_is_asked_for_again() {
        let mut calls = 0;
        let out = read_bytes("SKF_ExportCertificate", |buf, len| {
            calls += 1;
            // SAFETY: `len` is valid; `buf` has `*len` bytes.
            unsafe {
                if (*len as usize) < 2000 {
                    *len = 2000;
                    return SAR_BUFFER_TOO_SMALL;
                }
                *buf = 7;
                *len = 1;
            }
            SAR_OK
        })
        .unwrap();
        assert_eq!((calls, out), (2, vec![7]));
    }

    #[test]
    fn public_key_blobs_must_be_right_aligned_256_bit() {
        let key = EccPublicKey {
            x: [1; 32],
            y: [2; 32],
        };
        assert_eq!(EccPublicKey::parse("f", &key.blob()).unwrap(), key);
        let mut bad = key.blob();
        bad[4] = 1;
        assert!(EccPublicKey::parse("f", &bad).is_err());
        let mut bad = key.blob();
        bad[0..4].copy_from_slice(&128u32.to_ne_bytes());
        assert!(EccPublicKey::parse("f", &bad).is_err());
    }

    #[test]
    fn loading_a_missing_library_names_it() {
        let err = SkfLibrary::load(Path::new("/nonexistent/libskf.so")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/libskf.so"), "{err}");
    }

    #[test]
    fn pins_with_nul_are_refused_without_echoing_them() {
        let err = c_pin("SKF_VerifyPIN", "12\u{0}34").unwrap_err();
        assert!(!err.to_string().contains("12"), "{err}");
    }
}
