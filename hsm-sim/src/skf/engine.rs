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
}

/// A connected device, copied out of the state so no lock is held during slow work.
#[derive(Debug, Clone)]
struct DevCtx {
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
                Handle::App { dev, .. } | Handle::Hash { dev, .. } => *dev == h,
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

    // ----- devices (GM/T 0016-2012 7.1) -----

    /// `SKF_EnumDev`: the names of slots holding an SKF device, or (`present` false) of
    /// every slot.
    pub fn enum_dev(&self, present: bool) -> Result<Vec<String>, Sar> {
        Ok(self
            .skf_slots()?
            .iter()
            .enumerate()
            .filter(|(_, s)| !present || s.is_some())
            .map(|(i, _)| dev_name(i))
            .collect())
    }

    /// `SKF_ConnectDev`.
    pub fn connect(&self, name: &[u8]) -> Result<usize, Sar> {
        let slots = self.skf_slots()?;
        let slot = self.slot_of(name, slots.len())?;
        let (serial, insertion) = slots[slot].clone().ok_or(SAR_DEVICE_REMOVED)?;
        let ctx = DevCtx {
            slot,
            serial: serial.clone(),
            insertion,
            authed: false,
        };
        self.enter(&ctx, "SKF_ConnectDev")?;
        self.add(Handle::Dev(Dev {
            slot,
            serial,
            insertion,
            authed: false,
            challenge: None,
        }))
    }

    /// `SKF_DisConnectDev`: also for a device that was pulled. The last connection to a
    /// device ends the secure state of its applications in this process.
    pub fn disconnect(&self, h: usize) -> Result<(), Sar> {
        let mut st = self.lock()?;
        let (slot, insertion) = match st.handles.get(&h) {
            Some(Handle::Dev(d)) => (d.slot, d.insertion),
            _ => return Err(SAR_INVALIDHANDLEERR),
        };
        Self::close_tree(&mut st, h);
        let others = st
            .handles
            .values()
            .any(|o| matches!(o, Handle::Dev(d) if d.slot == slot && d.insertion == insertion));
        if !others {
            st.secure.retain(|k, _| !(k.0 == slot && k.1 == insertion));
        }
        Ok(())
    }

    /// `SKF_GetDevState`: `DEV_PRESENT_STATE` or `DEV_ABSENT_STATE`; a name that is not
    /// one of the rack's is `SAR_INVALIDPARAMERR`.
    pub fn dev_state(&self, name: &[u8]) -> Result<u32, Sar> {
        let slots = self.skf_slots()?;
        let slot = self.slot_of(name, slots.len())?;
        Ok(if slots[slot].is_some() {
            DEV_PRESENT_STATE
        } else {
            DEV_ABSENT_STATE
        })
    }

    /// `SKF_WaitForDevEvent`: blocks until an SKF device arrives in or leaves a slot since
    /// last reported; (name, `DEV_EVENT_ARRIVAL` or `DEV_EVENT_REMOVAL`). A device swapped
    /// between two looks is reported as a removal, then an arrival. A name longer than
    /// `cap - 1` bytes → `SAR_BUFFER_TOO_SMALL` with `needed` set, the event kept.
    /// `SKF_CancelWaitForDevEvent` ends the wait with `SAR_NOT_EVENTERR`.
    pub fn wait_for_dev_event(&self, cap: usize, needed: &mut usize) -> Result<(String, u32), Sar> {
        let generation = self.cancel.load(Ordering::SeqCst);
        loop {
            if self.cancel.load(Ordering::SeqCst) != generation {
                return Err(SAR_NOT_EVENTERR);
            }
            let now: Vec<Option<u64>> = self
                .skf_slots()?
                .into_iter()
                .map(|s| s.map(|(_, i)| i))
                .collect();
            {
                let mut st = self.lock()?;
                if st.seen.len() < now.len() {
                    st.seen.resize(now.len(), None);
                }
                if let Some(i) = (0..now.len()).find(|i| st.seen[*i] != now[*i]) {
                    let name = dev_name(i);
                    if name.len() + 1 > cap {
                        *needed = name.len() + 1;
                        return Err(SAR_BUFFER_TOO_SMALL);
                    }
                    let event = if st.seen[i].is_some() {
                        st.seen[i] = None;
                        DEV_EVENT_REMOVAL
                    } else {
                        st.seen[i] = now[i];
                        DEV_EVENT_ARRIVAL
                    };
                    return Ok((name, event));
                }
            }
            std::thread::sleep(POLL * 2);
        }
    }

    /// `SKF_CancelWaitForDevEvent`: every wait in progress returns `SAR_NOT_EVENTERR`.
    pub fn cancel_wait(&self) {
        self.cancel.fetch_add(1, Ordering::SeqCst);
    }

    /// `SKF_SetLabel` (no authentication needed, as on most tokens).
    pub fn set_label(&self, h: usize, label: &[u8]) -> Result<(), Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_SetLabel")?;
        self.write_delay(&d, label.len())?;
        self.commit(&d, |dev, _| dev.set_label(label))
    }

    /// `SKF_GetDevInfo`.
    pub fn dev_info(&self, h: usize) -> Result<DevInfo, Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_GetDevInfo")?;
        let t = self.rack.token(&d.serial).map_err(io)?;
        let dev = t.skf().ok_or(SAR_DEVICE_REMOVED)?;
        let total = t.limits().1;
        Ok(DevInfo {
            label: dev.label().to_string(),
            serial: t.serial().to_string(),
            manufacturer: t.manufacturer().to_string(),
            issuer: t.manufacturer().to_string(),
            total_space: u32::try_from(total).unwrap_or(u32::MAX),
            free_space: u32::try_from(total.saturating_sub(dev.used_bytes())).unwrap_or(u32::MAX),
        })
    }

    /// `SKF_LockDev` / `SKF_UnlockDev`: the simulated device serves one call at a time
    /// anyway (the rack's lock); only the handle and the fault point are checked.
    pub fn lock_dev(&self, h: usize, function: &str) -> Result<(), Sar> {
        let d = self.dev(h)?;
        self.enter(&d, function)
    }

    // ----- device authentication (7.2) -----

    /// `SKF_GenRandom`: at most [`MAX_RANDOM`] bytes. A random of 16 bytes or fewer is
    /// also the challenge of the next `SKF_DevAuth` (zero-padded to 16 bytes).
    pub fn gen_random(&self, h: usize, out: &mut [u8]) -> Result<(), Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_GenRandom")?;
        self.delay(&d, Op::Random, Duration::ZERO)?;
        crate::rack::crypto::random_bytes(out);
        let challenge = (!out.is_empty() && out.len() <= 16).then(|| {
            let mut c = Zeroizing::new([0u8; 16]);
            c[..out.len()].copy_from_slice(out);
            c
        });
        if let Some(Handle::Dev(dev)) = self.lock()?.handles.get_mut(&h) {
            dev.challenge = challenge;
        }
        Ok(())
    }

    /// `SKF_DevAuth`: `data` must be the challenge (the last `SKF_GenRandom` on this
    /// connection) encrypted with the device key in SM4-ECB: 16 bytes. The challenge is used
    /// once, right or wrong. `SAR_FAIL` when the data is wrong or there is no challenge.
    pub fn dev_auth(&self, h: usize, data: &[u8]) -> Result<(), Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_DevAuth")?;
        let challenge = match self.lock()?.handles.get_mut(&h) {
            Some(Handle::Dev(dev)) => {
                dev.authed = false;
                dev.challenge.take()
            }
            _ => return Err(SAR_INVALIDHANDLEERR),
        };
        if data.len() != 16 {
            return Err(SAR_INDATALENERR);
        }
        let challenge = challenge.ok_or(SAR_FAIL)?;
        self.delay(&d, Op::Login, Duration::ZERO)?;
        let key = self.read(&d, |dev, _| dev.dev_auth_key())?;
        let expected = gm::sm4_ecb(&key, &challenge[..], true)?;
        if expected[..] != *data {
            return Err(SAR_FAIL);
        }
        if let Some(Handle::Dev(dev)) = self.lock()?.handles.get_mut(&h) {
            dev.authed = true;
        }
        Ok(())
    }

    /// `SKF_ChangeDevAuthKey`: after `SKF_DevAuth` on this connection
    /// (`SAR_USER_NOT_LOGGED_IN` otherwise); a 16-byte SM4 key.
    pub fn change_dev_auth_key(&self, h: usize, key: &[u8]) -> Result<(), Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_ChangeDevAuthKey")?;
        if !d.authed {
            return Err(SAR_USER_NOT_LOGGED_IN);
        }
        self.write_delay(&d, key.len())?;
        self.commit(&d, |dev, _| dev.set_dev_auth_key(key))
    }

    // ----- access control (7.3) -----

    /// `SKF_VerifyPIN`: `retry` gets the tries left when the PIN is wrong or locked.
    pub fn verify_pin(&self, h: usize, t: u32, pin: &[u8], retry: &mut u32) -> Result<(), Sar> {
        let a = self.app(h)?;
        let t = PinType::from_ulong(t)?;
        self.enter(&a.dev, "SKF_VerifyPIN")?;
        self.read(&a.dev, |_, l| {
            if pin.len() > l.pin_max {
                return Err(SAR_PIN_LEN_RANGE);
            }
            Ok(())
        })?;
        self.delay(&a.dev, Op::Login, Duration::ZERO)?;
        self.commit(&a.dev, |dev, _| Ok(dev.verify_pin(&a.name, t, pin)))?
            .map_err(|(sar, left)| {
                *retry = left;
                sar
            })?;
        let mut st = self.lock()?;
        let r = st
            .secure
            .entry((a.dev.slot, a.dev.insertion, a.name.clone()))
            .or_default();
        match t {
            PinType::Admin => r.admin = true,
            PinType::User => r.user = true,
        }
        Ok(())
    }

    /// `SKF_ChangePIN`: the old PIN (counting down when wrong) and a new one within the
    /// token's length bounds.
    pub fn change_pin(
        &self,
        h: usize,
        t: u32,
        old: &[u8],
        new: &[u8],
        retry: &mut u32,
    ) -> Result<(), Sar> {
        let a = self.app(h)?;
        let t = PinType::from_ulong(t)?;
        self.enter(&a.dev, "SKF_ChangePIN")?;
        self.read(&a.dev, |_, l| {
            if old.len() > l.pin_max {
                return Err(SAR_PIN_LEN_RANGE);
            }
            check_pin_len(new, l)
        })?;
        self.delay(&a.dev, Op::SetPin, Duration::ZERO)?;
        self.commit(&a.dev, |dev, _| Ok(dev.change_pin(&a.name, t, old, new)))?
            .map_err(|(sar, left)| {
                *retry = left;
                sar
            })
    }

    /// `SKF_GetPINInfo`: (maximum retries, retries left, still the initial PIN).
    pub fn pin_info(&self, h: usize, t: u32) -> Result<(u32, u32, bool), Sar> {
        let a = self.app(h)?;
        let t = PinType::from_ulong(t)?;
        self.enter(&a.dev, "SKF_GetPINInfo")?;
        self.read(&a.dev, |dev, _| dev.pin_info(&a.name, t))
    }

    /// `SKF_UnblockPIN`: the administrator PIN sets a new user PIN and resets its counter;
    /// `retry` gets the administrator's tries left when that PIN is wrong or locked.
    pub fn unblock_pin(
        &self,
        h: usize,
        admin: &[u8],
        new_user: &[u8],
        retry: &mut u32,
    ) -> Result<(), Sar> {
        let a = self.app(h)?;
        self.enter(&a.dev, "SKF_UnblockPIN")?;
        self.read(&a.dev, |_, l| {
            if admin.len() > l.pin_max {
                return Err(SAR_PIN_LEN_RANGE);
            }
            check_pin_len(new_user, l)
        })?;
        self.delay(&a.dev, Op::InitPin, Duration::ZERO)?;
        self.commit(&a.dev, |dev, _| Ok(dev.unblock(&a.name, admin, new_user)))?
            .map_err(|(sar, left)| {
                *retry = left;
                sar
            })
    }

    /// `SKF_ClearSecureState`: forgets the PINs verified for this application.
    pub fn clear_secure_state(&self, h: usize) -> Result<(), Sar> {
        let a = self.app(h)?;
        self.enter(&a.dev, "SKF_ClearSecureState")?;
        self.lock()?
            .secure
            .remove(&(a.dev.slot, a.dev.insertion, a.name));
        Ok(())
    }

    // ----- applications (7.4) -----

    /// `SKF_CreateApplication`: after `SKF_DevAuth` (`SAR_USER_NOT_LOGGED_IN` otherwise);
    /// returns the opened application.
    #[allow(clippy::too_many_arguments)]
    pub fn create_app(
        &self,
        h: usize,
        name: &[u8],
        admin_pin: &[u8],
        admin_retries: u32,
        user_pin: &[u8],
        user_retries: u32,
        create_file_rights: u32,
    ) -> Result<usize, Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_CreateApplication")?;
        if !d.authed {
            return Err(SAR_USER_NOT_LOGGED_IN);
        }
        self.read(&d, |_, l| {
            check_pin_len(admin_pin, l)?;
            check_pin_len(user_pin, l)
        })?;
        self.delay(&d, Op::InitToken, Duration::ZERO)?;
        let name = self.commit(&d, |dev, l| {
            dev.create_app(
                NewApplication {
                    name,
                    admin_pin,
                    admin_retries,
                    user_pin,
                    user_retries,
                    create_file_rights,
                },
                l.capacity,
            )
        })?;
        self.add(Handle::App { dev: h, name })
    }

    /// `SKF_EnumApplication`.
    pub fn enum_apps(&self, h: usize) -> Result<Vec<String>, Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_EnumApplication")?;
        self.read(&d, |dev, _| Ok(dev.apps().keys().cloned().collect()))
    }

    /// `SKF_DeleteApplication`: after `SKF_DevAuth`; its handles in this process close.
    pub fn delete_app(&self, h: usize, name: &[u8]) -> Result<(), Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_DeleteApplication")?;
        if !d.authed {
            return Err(SAR_USER_NOT_LOGGED_IN);
        }
        let name = String::from_utf8(name.to_vec()).map_err(|_| SAR_APPLICATION_NOT_EXISTS)?;
        self.delay(&d, Op::Destroy, Duration::ZERO)?;
        self.commit(&d, |dev, _| dev.delete_app(&name))?;
        let mut st = self.lock()?;
        let apps: Vec<usize> = st
            .handles
            .iter()
            .filter(|(_, x)| matches!(x, Handle::App { name: n, .. } if *n == name))
            .map(|(k, _)| *k)
            .collect();
        for a in apps {
            Self::close_tree(&mut st, a);
        }
        st.secure.remove(&(d.slot, d.insertion, name));
        Ok(())
    }

    /// `SKF_OpenApplication`.
    pub fn open_app(&self, h: usize, name: &[u8]) -> Result<usize, Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_OpenApplication")?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| SAR_APPLICATION_NOT_EXISTS)?;
        self.read(&d, |dev, _| dev.app(&name).map(|_| ()))?;
        self.add(Handle::App { dev: h, name })
    }

    /// `SKF_CloseApplication`: its container handles close too; the secure state stays
    /// (until `SKF_ClearSecureState` or the last `SKF_DisConnectDev`).
    pub fn close_app(&self, h: usize) -> Result<(), Sar> {
        let mut st = self.lock()?;
        if !matches!(st.handles.get(&h), Some(Handle::App { .. })) {
            return Err(SAR_INVALIDHANDLEERR);
        }
        Self::close_tree(&mut st, h);
        Ok(())
    }

    // ----- containers (7.5) -----

    /// `SKF_CreateContainer` (user PIN verified); returns the opened container.
    pub fn create_container(&self, h: usize, name: &[u8]) -> Result<usize, Sar> {
        let a = self.app(h)?;
        self.enter(&a.dev, "SKF_CreateContainer")?;
        self.require_user(&a)?;
        self.write_delay(&a.dev, 64)?;
        let name = self.commit(&a.dev, |dev, l| {
            dev.create_container(&a.name, name, l.capacity)
        })?;
        self.add(Handle::Con { app: h, name })
    }

    /// `SKF_DeleteContainer` (user PIN verified): keys and certificates go.
    pub fn delete_container(&self, h: usize, name: &[u8]) -> Result<(), Sar> {
        let a = self.app(h)?;
        self.enter(&a.dev, "SKF_DeleteContainer")?;
        self.require_user(&a)?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| SAR_FILE_NOT_EXIST)?;
        self.delay(&a.dev, Op::Destroy, Duration::ZERO)?;
        self.commit(&a.dev, |dev, _| dev.delete_container(&a.name, &name))?;
        let mut st = self.lock()?;
        st.handles
            .retain(|_, x| !matches!(x, Handle::Con { app, name: n } if *app == h && *n == name));
        Ok(())
    }

    /// `SKF_OpenContainer`.
    pub fn open_container(&self, h: usize, name: &[u8]) -> Result<usize, Sar> {
        let a = self.app(h)?;
        self.enter(&a.dev, "SKF_OpenContainer")?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| SAR_FILE_NOT_EXIST)?;
        self.read(&a.dev, |dev, _| dev.container(&a.name, &name).map(|_| ()))?;
        self.add(Handle::Con { app: h, name })
    }

    /// `SKF_CloseContainer`.
    pub fn close_container(&self, h: usize) -> Result<(), Sar> {
        let mut st = self.lock()?;
        if !matches!(st.handles.get(&h), Some(Handle::Con { .. })) {
            return Err(SAR_INVALIDHANDLEERR);
        }
        st.handles.remove(&h);
        Ok(())
    }

    /// `SKF_EnumContainer`.
    pub fn enum_containers(&self, h: usize) -> Result<Vec<String>, Sar> {
        let a = self.app(h)?;
        self.enter(&a.dev, "SKF_EnumContainer")?;
        self.read(&a.dev, |dev, _| {
            Ok(dev.app(&a.name)?.containers().keys().cloned().collect())
        })
    }

    /// `SKF_GetContainerType`: `CONTAINER_EMPTY` or `CONTAINER_ECC`.
    pub fn container_type(&self, h: usize) -> Result<u32, Sar> {
        let c = self.con(h)?;
        self.enter(&c.app.dev, "SKF_GetContainerType")?;
        self.read(&c.app.dev, |dev, _| {
            Ok(dev.container(&c.app.name, &c.name)?.kind())
        })
    }

    /// `SKF_ImportCertificate` (user PIN verified).
    pub fn import_cert(&self, h: usize, sign: bool, der: &[u8]) -> Result<(), Sar> {
        let c = self.con(h)?;
        self.enter(&c.app.dev, "SKF_ImportCertificate")?;
        self.require_user(&c.app)?;
        self.write_delay(&c.app.dev, der.len())?;
        self.commit(&c.app.dev, |dev, l| {
            dev.set_cert(&c.app.name, &c.name, sign, der, l.capacity)
        })
    }

    /// `SKF_ExportCertificate` (no PIN needed): `SAR_CERTNOTFOUNTERR` when there is none.
    pub fn export_cert(&self, h: usize, sign: bool) -> Result<Vec<u8>, Sar> {
        let c = self.con(h)?;
        self.enter(&c.app.dev, "SKF_ExportCertificate")?;
        self.read(&c.app.dev, |dev, _| {
            dev.container(&c.app.name, &c.name)?
                .cert(sign)
                .ok_or(SAR_CERTNOTFOUNTERR)
        })
    }

    // ----- cryptographic services (7.6) -----

    /// `SKF_GenECCKeyPair` (`SGD_SM2_1`, user PIN verified): a new signing key pair
    /// (replacing the container's, and its certificate); returns x‖y.
    pub fn gen_ecc_keypair(&self, h: usize, alg: u32) -> Result<[u8; 64], Sar> {
        let c = self.con(h)?;
        self.enter(&c.app.dev, "SKF_GenECCKeyPair")?;
        if alg != SGD_SM2_1 {
            return Err(SAR_NOTSUPPORTYETERR);
        }
        self.require_user(&c.app)?;
        self.read(&c.app.dev, |dev, _| {
            dev.container(&c.app.name, &c.name).map(|_| ())
        })?;
        let start = Instant::now();
        let (d, public) = gm::generate();
        self.delay(&c.app.dev, Op::KeygenSm2, start.elapsed())?;
        self.commit(&c.app.dev, |dev, l| {
            dev.set_key(
                &c.app.name,
                &c.name,
                true,
                StoredKey::new(&d, &public),
                l.capacity,
            )
        })?;
        Ok(public)
    }

    /// `SKF_ImportECCKeyPair` (user PIN verified): an encryption key pair enveloped to the
    /// container's signing key — SM4-ECB key encrypted with SM2 to the signing public key,
    /// the private key encrypted under it (the 64-byte field right-aligned: either the whole
    /// field encrypted, or zeros followed by the 32 encrypted bytes). The decrypted key must
    /// match the envelope's public key (`SAR_INDATAERR`).
    pub fn import_ecc_keypair(&self, h: usize, env: &Envelope) -> Result<(), Sar> {
        let c = self.con(h)?;
        self.enter(&c.app.dev, "SKF_ImportECCKeyPair")?;
        self.require_user(&c.app)?;
        if env.version != 1 || env.bits != 256 {
            return Err(SAR_INVALIDPARAMERR);
        }
        if env.sym_alg != SGD_SM4_ECB {
            return Err(SAR_NOTSUPPORTYETERR);
        }
        let start = Instant::now();
        let sign = self.read(&c.app.dev, |dev, _| {
            dev.container(&c.app.name, &c.name)?
                .key(true)
                .cloned()
                .ok_or(SAR_KEYNOTFOUNTERR)
        })?;
        let sign_d = sign.private()?;
        let sym = gm::decrypt(&sign_d, &env.cipher)?;
        let sym: [u8; 16] = sym[..].try_into().map_err(|_| SAR_INDATAERR)?;
        let whole = gm::sm4_ecb(&sym, &env.encrypted_private, false)?;
        let d: Zeroizing<[u8; 32]> = if whole[..32].iter().all(|b| *b == 0) {
            Zeroizing::new(whole[32..].try_into().map_err(|_| SAR_FAIL)?)
        } else if env.encrypted_private[..32].iter().all(|b| *b == 0) {
            let tail = gm::sm4_ecb(&sym, &env.encrypted_private[32..], false)?;
            Zeroizing::new(tail[..].try_into().map_err(|_| SAR_FAIL)?)
        } else {
            return Err(SAR_INDATAERR);
        };
        if gm::public_of(&d)? != env.public {
            return Err(SAR_INDATAERR);
        }
        self.delay(&c.app.dev, Op::Decrypt, start.elapsed())?;
        self.commit(&c.app.dev, |dev, l| {
            dev.set_key(
                &c.app.name,
                &c.name,
                false,
                StoredKey::new(&d, &env.public),
                l.capacity,
            )
        })
    }

    /// `SKF_ExportPublicKey` (no PIN needed): x‖y of the signing (`true`) or encryption key.
    pub fn export_public_key(&self, h: usize, sign: bool) -> Result<[u8; 64], Sar> {
        let c = self.con(h)?;
        self.enter(&c.app.dev, "SKF_ExportPublicKey")?;
        self.read(&c.app.dev, |dev, _| {
            dev.container(&c.app.name, &c.name)?
                .key(sign)
                .ok_or(SAR_KEYNOTFOUNTERR)?
                .public()
        })
    }

    /// `SKF_ECCSignData` (user PIN verified): signs a 32-byte hash (SM3 with Z, computed by
    /// the caller) with the signing key; (r, s).
    pub fn ecc_sign(&self, h: usize, hash: &[u8]) -> Result<([u8; 32], [u8; 32]), Sar> {
        let c = self.con(h)?;
        self.enter(&c.app.dev, "SKF_ECCSignData")?;
        if hash.len() != 32 {
            return Err(SAR_INDATALENERR);
        }
        self.require_user(&c.app)?;
        let key = self.read(&c.app.dev, |dev, _| {
            dev.container(&c.app.name, &c.name)?
                .key(true)
                .cloned()
                .ok_or(SAR_KEYNOTFOUNTERR)
        })?;
        let start = Instant::now();
        let d = key.private()?;
        let sig = gm::sign(&d, hash)?;
        self.delay(&c.app.dev, Op::SignSm2, start.elapsed())?;
        Ok(sig)
    }

    /// `SKF_ECCVerify`: `SAR_FAIL` when the signature does not verify.
    pub fn ecc_verify(
        &self,
        h: usize,
        public: &[u8; 64],
        hash: &[u8],
        r: &[u8; 32],
        s: &[u8; 32],
    ) -> Result<(), Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_ECCVerify")?;
        if hash.len() != 32 {
            return Err(SAR_INDATALENERR);
        }
        gm::verify(public, hash, r, s)
    }

    /// `SKF_ExtECCEncrypt`: SM2 encryption of 1 to [`MAX_ECC_PLAIN`] bytes to a public key.
    pub fn ext_ecc_encrypt(
        &self,
        h: usize,
        public: &[u8; 64],
        plain: &[u8],
    ) -> Result<gm::Cipher, Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_ExtECCEncrypt")?;
        if plain.is_empty() || plain.len() > MAX_ECC_PLAIN {
            return Err(SAR_INDATALENERR);
        }
        gm::encrypt(public, plain)
    }

    /// `SKF_DigestInit` (`SGD_SM3`): with a public key, the hash starts with Z of that key
    /// and `id` (the default ID of GM/T 0009 when `id` is empty).
    pub fn digest_init(
        &self,
        h: usize,
        alg: u32,
        public: Option<&[u8; 64]>,
        id: &[u8],
    ) -> Result<usize, Sar> {
        let d = self.dev(h)?;
        self.enter(&d, "SKF_DigestInit")?;
        if alg != SGD_SM3 {
            return Err(SAR_NOTSUPPORTYETERR);
        }
        let state = match public {
            Some(p) => {
                gm::check_public(p)?;
                let id = if id.is_empty() { gm::DEFAULT_ID } else { id };
                gm::Sm3State::new(Some((id, p)))?
            }
            None => gm::Sm3State::new(None)?,
        };
        self.add(Handle::Hash {
            dev: h,
            state: Some(state),
        })
    }

    fn hash_dev(&self, h: usize) -> Result<usize, Sar> {
        match self.lock()?.handles.get(&h) {
            Some(Handle::Hash {
                dev,
                state: Some(_),
            }) => Ok(*dev),
            Some(Handle::Hash { state: None, .. }) => Err(SAR_HASHOBJERR),
            _ => Err(SAR_INVALIDHANDLEERR),
        }
    }

    fn hash_step(
        &self,
        h: usize,
        function: &str,
        data: &[u8],
        finish: bool,
    ) -> Result<Option<[u8; 32]>, Sar> {
        let d = self.dev(self.hash_dev(h)?)?;
        self.enter(&d, function)?;
        let mut st = self.lock()?;
        let Some(Handle::Hash { state, .. }) = st.handles.get_mut(&h) else {
            return Err(SAR_INVALIDHANDLEERR);
        };
        let s = state.as_mut().ok_or(SAR_HASHOBJERR)?;
        s.update(data);
        if finish {
            Ok(state.take().map(gm::Sm3State::finish))
        } else {
            Ok(None)
        }
    }

    /// `SKF_Digest`: the data, then the hash; the hash handle is used up (close it with
    /// `SKF_CloseHandle`).
    pub fn digest(&self, h: usize, data: &[u8]) -> Result<[u8; 32], Sar> {
        self.hash_step(h, "SKF_Digest", data, true)?
            .ok_or(SAR_HASHOBJERR)
    }

    /// `SKF_DigestUpdate`.
    pub fn digest_update(&self, h: usize, data: &[u8]) -> Result<(), Sar> {
        self.hash_step(h, "SKF_DigestUpdate", data, false)
            .map(|_| ())
    }

    /// `SKF_DigestFinal`.
    pub fn digest_final(&self, h: usize) -> Result<[u8; 32], Sar> {
        self.hash_step(h, "SKF_DigestFinal", &[], true)?
            .ok_or(SAR_HASHOBJERR)
    }

    /// Whether `h` is a hash handle that can still produce its hash (a length query
    /// answers without using it up).
    pub fn hash_ready(&self, h: usize) -> Result<(), Sar> {
        self.hash_dev(h).map(|_| ())
    }

    /// `SKF_CloseHandle`: a hash handle.
    pub fn close_handle(&self, h: usize) -> Result<(), Sar> {
        let mut st = self.lock()?;
        if !matches!(st.handles.get(&h), Some(Handle::Hash { .. })) {
            return Err(SAR_INVALIDHANDLEERR);
        }
        st.handles.remove(&h);
        Ok(())
    }
}
