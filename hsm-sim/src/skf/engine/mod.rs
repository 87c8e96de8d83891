//! One process's view of the rack through SKF, in safe Rust: device names, connections and
//! their device authentication, application, container and hash handles, the secure state
//! after `SKF_VerifyPIN`, hot-plug events, faults and latency. Rust types in, `Result<_, Sar>`
//! out; the C shells of `libhsm_sim_skf.so` only marshal pointers and structures.
//!
//! As with the PKCS#11 module, token state (keys, PINs, counters, certificates, the device
//! key) is shared by every process through the state directory; handles, device
//! authentication and the secure state belong to the process. A device pulled from its slot
//! makes every call on its handles return `SAR_DEVICE_REMOVED` (re-plugging gives the same
//! token, but old handles stay dead). Slow operations watch the slot while they wait and
//! commit nothing when the token went away.

mod access;
mod container;
mod crypto;
mod device;
mod symmetric;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use cryptoki_sys::CKR_DEVICE_REMOVED;
use zeroize::Zeroizing;

use super::consts::*;
use super::device::{NewApplication, PinType, SkfDevice, StoredKey};
use super::gm;
use crate::rack::fault::FaultAction;
use crate::rack::latency::{self, LatencySettings, Op, Profile};
use crate::rack::token::Interface;
use crate::rack::{Rack, port_path};

/// How often waits look at the rack.
const POLL: Duration = Duration::from_millis(5);
/// Longest plaintext of `SKF_ExtECCEncrypt` (`DEVINFO.MaxECCBufferSize`).
pub const MAX_ECC_PLAIN: usize = 256;
/// Longest input of one `SKF_Digest`/`SKF_DigestUpdate` call (`DEVINFO.MaxBufferSize`).
pub const MAX_BUFFER: usize = 1024 * 1024;
/// Most bytes one `SKF_GenRandom` fills.
pub const MAX_RANDOM: usize = 1024;
/// Handles start here (so a small integer is never a valid handle).
const HANDLE_BASE: usize = 0x5C00_0000;

/// What `SKF_GetDevInfo` reports, in Rust.
#[derive(Debug, Clone)]
pub struct DevInfo {
    /// Label.
    pub label: String,
    /// Serial number (16 characters).
    pub serial: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Issuer.
    pub issuer: String,
    /// Storage in bytes.
    pub total_space: u32,
    /// Free storage in bytes.
    pub free_space: u32,
}

/// The enveloped key pair of `SKF_ImportECCKeyPair`, in Rust.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// `Version` (1).
    pub version: u32,
    /// `ulSymmAlgID` (`SGD_SM4_ECB`).
    pub sym_alg: u32,
    /// `ulBits` (256).
    pub bits: u32,
    /// `cbEncryptedPriKey`.
    pub encrypted_private: [u8; 64],
    /// `PubKey` (x‖y).
    pub public: [u8; 64],
    /// `ECCCipherBlob`: the symmetric key encrypted to the container's signing key.
    pub cipher: gm::Cipher,
}

#[derive(Debug, Clone)]
struct Dev {
    slot: usize,
    serial: String,
    insertion: u64,
    authed: bool,
    /// The last `SKF_GenRandom` (at most 16 bytes), zero-padded: what `SKF_DevAuth` expects
    /// encrypted. Used once.
    challenge: Option<Zeroizing<[u8; 16]>>,
}

enum Handle {
    Dev(Dev),
    /// A session key (`SKF_ImportSessionKey`, `SKF_SetSymmKey`) and its operation.
    Key {
        dev: usize,
        key: Zeroizing<[u8; 16]>,
        alg: u32,
        op: Option<SymOp>,
    },
    App {
        dev: usize,
        name: String,
    },
    Con {
        app: usize,
        name: String,
    },
    Hash {
        dev: usize,
        state: Option<gm::Sm3State>,
    },
}

/// An SM4 operation set up by `SKF_EncryptInit` or `SKF_DecryptInit`.
#[derive(Debug, Clone, Copy)]
struct SymOp {
    encrypt: bool,
    iv: [u8; 16],
    /// PKCS#5 padding (`PaddingType` 1) or none (0).
    padding: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Rights {
    admin: bool,
    user: bool,
}

#[derive(Default)]
struct State {
    handles: HashMap<usize, Handle>,
    next: usize,
    /// Per (slot, insertion, application): who verified a PIN in this process.
    secure: HashMap<(usize, u64, String), Rights>,
    /// The insertion each slot's SKF device had when `SKF_WaitForDevEvent` last reported it.
    seen: Vec<Option<u64>>,
    /// Threads in `SKF_WaitForDevEvent` now.
    waiters: usize,
    /// A cancel that came while nobody waited: the next wait returns at once.
    cancel_pending: bool,
}

/// A connected device, copied out of the state so no lock is held during slow work.
#[derive(Debug, Clone)]
struct DevCtx {
    handle: usize,
    slot: usize,
    serial: String,
    insertion: u64,
    authed: bool,
}

#[derive(Debug, Clone)]
struct AppCtx {
    dev: DevCtx,
    name: String,
}

#[derive(Debug, Clone)]
struct ConCtx {
    app: AppCtx,
    name: String,
}

/// The token limits an operation checks against.
#[derive(Debug, Clone, Copy)]
struct Limits {
    pin_min: usize,
    pin_max: usize,
    capacity: usize,
}

/// One process's SKF library state.
pub struct SkfEngine {
    rack: Rack,
    env_latency: Option<Profile>,
    state: Mutex<State>,
    /// Bumped by `SKF_CancelWaitForDevEvent`: waits started before return.
    cancel: AtomicU64,
}

static GLOBAL: OnceLock<SkfEngine> = OnceLock::new();

/// The process's engine, started at the first call on the state directory `HSM_SIM_DIR`
/// (or the default): SKF has no initialization function.
pub fn get() -> &'static SkfEngine {
    GLOBAL.get_or_init(|| SkfEngine::new(Rack::attach(&crate::rack::default_dir())))
}

/// The device name of a slot: `hsm-sim 1-1.<slot+1>` (its USB port path).
pub fn dev_name(slot: usize) -> String {
    format!("hsm-sim {}", port_path(slot))
}

fn io(_: crate::Error) -> Sar {
    SAR_FAIL
}

fn check_pin_len(pin: &[u8], l: Limits) -> Result<(), Sar> {
    if pin.len() < l.pin_min || pin.len() > l.pin_max {
        return Err(SAR_PIN_LEN_RANGE);
    }
    Ok(())
}

impl SkfEngine {
    /// An engine over a rack (tests build one directly; the library uses [`get`]).
    pub fn new(rack: Rack) -> SkfEngine {
        let engine = SkfEngine {
            rack,
            env_latency: latency::env_profile(),
            state: Mutex::new(State {
                next: HANDLE_BASE,
                ..State::default()
            }),
            cancel: AtomicU64::new(0),
        };
        // Devices present at the start are not events.
        if let (Ok(now), Ok(mut st)) = (engine.skf_slots(), engine.lock()) {
            st.seen = now.into_iter().map(|s| s.map(|(_, i)| i)).collect();
        }
        engine
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, Sar> {
        self.state.lock().map_err(|_| SAR_FAIL)
    }

    /// Per slot: the serial and insertion of the SKF device in it.
    fn skf_slots(&self) -> Result<Vec<Option<(String, u64)>>, Sar> {
        let Some(rack) = self.rack.snapshot().map_err(io)? else {
            return Ok(Vec::new());
        };
        Ok(rack
            .slots
            .iter()
            .map(|s| {
                s.as_ref()
                    .filter(|i| {
                        self.rack
                            .token(&i.serial)
                            .is_ok_and(|t| t.interface() == Interface::Skf)
                    })
                    .map(|i| (i.serial.clone(), i.insertion))
            })
            .collect())
    }

    fn slot_of(&self, name: &[u8], slots: usize) -> Result<usize, Sar> {
        (0..slots)
            .find(|s| dev_name(*s).as_bytes() == name)
            .ok_or(SAR_INVALIDPARAMERR)
    }

    fn add(&self, h: Handle) -> Result<usize, Sar> {
        let mut st = self.lock()?;
        let id = st.next;
        st.next += 1;
        st.handles.insert(id, h);
        Ok(id)
    }

    fn dev(&self, h: usize) -> Result<DevCtx, Sar> {
        let d = match self.lock()?.handles.get(&h) {
            Some(Handle::Dev(d)) => d.clone(),
            _ => return Err(SAR_INVALIDHANDLEERR),
        };
        if !self.rack.still_inserted(d.slot, d.insertion).map_err(io)? {
            return Err(SAR_DEVICE_REMOVED);
        }
        Ok(DevCtx {
            handle: h,
            slot: d.slot,
            serial: d.serial,
            insertion: d.insertion,
            authed: d.authed,
        })
    }

    fn app(&self, h: usize) -> Result<AppCtx, Sar> {
        let (dev, name) = match self.lock()?.handles.get(&h) {
            Some(Handle::App { dev, name }) => (*dev, name.clone()),
            _ => return Err(SAR_INVALIDHANDLEERR),
        };
        Ok(AppCtx {
            dev: self.dev(dev)?,
            name,
        })
    }

    fn con(&self, h: usize) -> Result<ConCtx, Sar> {
        let (app, name) = match self.lock()?.handles.get(&h) {
            Some(Handle::Con { app, name }) => (*app, name.clone()),
            _ => return Err(SAR_INVALIDHANDLEERR),
        };
        Ok(ConCtx {
            app: self.app(app)?,
            name,
        })
    }

    /// The fault point of `function` on the device.
    fn enter(&self, d: &DevCtx, function: &str) -> Result<(), Sar> {
        match self
            .rack
            .fault_point(&d.serial, d.slot, function)
            .map_err(io)?
        {
            None => Ok(()),
            Some(FaultAction::Fail { rv }) => Err(Sar::try_from(rv).unwrap_or(SAR_FAIL)),
            Some(FaultAction::Pull) => Err(SAR_DEVICE_REMOVED),
            Some(FaultAction::Delay { ms }) => {
                self.wait(d.slot, d.insertion, Duration::from_millis(ms))
            }
        }
    }

    fn wait(&self, slot: usize, insertion: u64, d: Duration) -> Result<(), Sar> {
        let deadline = Instant::now() + d;
        loop {
            if !self.rack.still_inserted(slot, insertion).map_err(io)? {
                return Err(SAR_DEVICE_REMOVED);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            std::thread::sleep(POLL.min(deadline - now));
        }
    }

    fn latencies(&self, serial: &str) -> Result<(LatencySettings, LatencySettings), Sar> {
        let token = self.rack.token(serial).map_err(io)?.latency().clone();
        Ok((token, self.rack.rack_latency().map_err(io)?))
    }

    /// Waits as long as `op` takes on this token, minus `already` spent computing.
    fn delay(&self, d: &DevCtx, op: Op, already: Duration) -> Result<(), Sar> {
        let (t, r) = self.latencies(&d.serial)?;
        let total = latency::duration(op, &t, &r, self.env_latency);
        self.wait(d.slot, d.insertion, total.saturating_sub(already))
    }

    fn write_delay(&self, d: &DevCtx, bytes: usize) -> Result<(), Sar> {
        let (t, r) = self.latencies(&d.serial)?;
        let total = latency::write_duration(bytes, &t, &r, self.env_latency);
        self.wait(d.slot, d.insertion, total)
    }

    /// Reads the device's latest state.
    fn read<T>(
        &self,
        d: &DevCtx,
        f: impl FnOnce(&SkfDevice, Limits) -> Result<T, Sar>,
    ) -> Result<T, Sar> {
        let t = self.rack.token(&d.serial).map_err(io)?;
        let (pin_min, pin_max) = t.pin_bounds();
        let limits = Limits {
            pin_min,
            pin_max,
            capacity: t.limits().1,
        };
        f(t.skf().ok_or(SAR_DEVICE_REMOVED)?, limits)
    }

    /// Changes the device's state under the rack's lock, unless it was pulled meanwhile;
    /// whatever `f` changed is committed even when it fails (a wrong PIN still counts).
    fn commit<T>(
        &self,
        d: &DevCtx,
        f: impl FnOnce(&mut SkfDevice, Limits) -> Result<T, Sar>,
    ) -> Result<T, Sar> {
        let out = self
            .rack
            .update_token(&d.serial, Some((d.slot, d.insertion)), |t| {
                let (pin_min, pin_max) = t.pin_bounds();
                let limits = Limits {
                    pin_min,
                    pin_max,
                    capacity: t.limits().1,
                };
                Ok(t.skf_mut().map(|dev| f(dev, limits)))
            })
            .map_err(io)?;
        match out {
            Ok(Some(r)) => r,
            Ok(None) => Err(SAR_DEVICE_REMOVED),
            Err(rv) if rv == CKR_DEVICE_REMOVED => Err(SAR_DEVICE_REMOVED),
            Err(_) => Err(SAR_FAIL),
        }
    }

    fn rights(&self, a: &AppCtx) -> Result<Rights, Sar> {
        let key = (a.dev.slot, a.dev.insertion, a.name.clone());
        Ok(self.lock()?.secure.get(&key).copied().unwrap_or_default())
    }

    fn require_user(&self, a: &AppCtx) -> Result<(), Sar> {
        if self.rights(a)?.user {
            Ok(())
        } else {
            Err(SAR_USER_NOT_LOGGED_IN)
        }
    }

    /// Closes the handles that hang off `h` (an application's containers, a device's
    /// applications, containers and hashes), and `h` itself.
    fn close_tree(st: &mut State, h: usize) {
        let children: Vec<usize> = st
            .handles
            .iter()
            .filter(|(_, c)| match c {
                Handle::App { dev, .. } | Handle::Hash { dev, .. } | Handle::Key { dev, .. } => {
                    *dev == h
                }
                Handle::Con { app, .. } => *app == h,
                Handle::Dev(_) => false,
            })
            .map(|(k, _)| *k)
            .collect();
        for c in children {
            Self::close_tree(st, c);
        }
        st.handles.remove(&h);
    }
}

#[cfg(test)]
mod tests;
