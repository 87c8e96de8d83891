//! The module's per-process PKCS#11 semantics, in safe Rust: slots, sessions and their
//! states, login state, active operations, session objects, hot-plug detection, faults and
//! latency — everything `C_…` functions do, with Rust types in and `Result<_, Rv>` out.
//!
//! As the specification has it, sessions and login state belong to the application (this
//! process); token state (PINs, counters, objects) is shared through the rack's state
//! directory, and every call sees its latest committed version. The C ABI shells in
//! `crate::pkcs11` only marshal pointers to and from these functions.
//!
//! A token pulled out of its slot is noticed at the next call on one of its sessions: that
//! call returns `CKR_DEVICE_REMOVED` and the session is gone (later calls:
//! `CKR_SESSION_HANDLE_INVALID`). Slow operations watch the rack while they wait and commit
//! nothing when their token went away.

mod cipher;
pub mod keys;
mod mechanisms;
mod objects;
mod ops;
mod wrap;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use cryptoki_sys::*;

use crate::rack::fault::FaultAction;
use crate::rack::latency::{self, LatencySettings, Op, Profile};
use crate::rack::object::Object;
use crate::rack::token::{Token, Who};
use crate::rack::{Rack, Rv};

pub use cipher::Output;
pub use mechanisms::MECHANISMS;
pub use ops::SignOutcome;
pub use wrap::{SecretKeyGen, WrapMechanism};

/// Session object handles start here; token object handles are below.
pub const SESSION_OBJECT_BASE: CK_OBJECT_HANDLE = 1 << 32;

/// How often waits look at the rack (for removals and slot events).
const POLL: Duration = Duration::from_millis(5);

/// `CK_SLOT_INFO`, in Rust.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// Description (blank padded by the caller).
    pub description: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// `CKF_…` flags.
    pub flags: CK_FLAGS,
}

/// `CK_TOKEN_INFO`, in Rust.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// Label.
    pub label: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// Serial (16 characters).
    pub serial: String,
    /// `CKF_…` flags.
    pub flags: CK_FLAGS,
    /// Sessions this process has open on the token.
    pub sessions: CK_ULONG,
    /// Read/write sessions this process has open on the token.
    pub rw_sessions: CK_ULONG,
    /// PIN length bounds.
    pub pin_min: CK_ULONG,
    /// PIN length bounds.
    pub pin_max: CK_ULONG,
    /// Storage size in bytes.
    pub total_memory: CK_ULONG,
    /// Free storage in bytes.
    pub free_memory: CK_ULONG,
}

/// `CK_SESSION_INFO`, in Rust.
#[derive(Debug, Clone, Copy)]
pub struct SessionInfo {
    /// Slot id.
    pub slot: CK_SLOT_ID,
    /// `CKS_…` state.
    pub state: CK_STATE,
    /// `CKF_SERIAL_SESSION` and maybe `CKF_RW_SESSION`.
    pub flags: CK_FLAGS,
}

#[derive(Debug, Clone)]
pub(crate) enum ActiveOp {
    Sign {
        mech: crate::rack::crypto::SignMechanism,
        key: CK_OBJECT_HANDLE,
    },
    Decrypt {
        mech: crate::rack::crypto::CipherMechanism,
        key: CK_OBJECT_HANDLE,
        /// Input gathered by `C_DecryptUpdate`, decrypted whole by `C_DecryptFinal`.
        parts: zeroize::Zeroizing<Vec<u8>>,
    },
    Encrypt {
        mech: crate::rack::crypto::CipherMechanism,
        key: CK_OBJECT_HANDLE,
        /// Input gathered by `C_EncryptUpdate`, encrypted whole by `C_EncryptFinal`.
        parts: zeroize::Zeroizing<Vec<u8>>,
    },
    Digest {
        alg: crate::rack::symmetric::DigestAlg,
        /// Input gathered by `C_DigestUpdate`/`C_DigestKey`.
        parts: zeroize::Zeroizing<Vec<u8>>,
    },
}

#[derive(Debug)]
pub(crate) struct Session {
    slot: usize,
    serial: String,
    insertion: u64,
    rw: bool,
    find: Option<(Vec<CK_OBJECT_HANDLE>, usize)>,
    sign: Option<ActiveOp>,
    decrypt: Option<ActiveOp>,
    encrypt: Option<ActiveOp>,
    digest: Option<ActiveOp>,
}

#[derive(Debug, Clone, Copy)]
struct Login {
    insertion: u64,
    who: Who,
}

struct SessionObject {
    slot: usize,
    insertion: u64,
    session: CK_SESSION_HANDLE,
    object: Object,
}

#[derive(Default)]
pub(crate) struct State {
    sessions: HashMap<CK_SESSION_HANDLE, Session>,
    next_session: CK_SESSION_HANDLE,
    logins: HashMap<usize, Login>,
    objects: HashMap<CK_OBJECT_HANDLE, SessionObject>,
    next_object: CK_OBJECT_HANDLE,
    /// The insertion number and slot id each rack slot had when `C_WaitForSlotEvent` last
    /// reported it.
    seen: Vec<Option<(u64, CK_SLOT_ID)>>,
}

/// What a call knows about its session: copied out so no lock is held during slow work.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    handle: CK_SESSION_HANDLE,
    slot: usize,
    serial: String,
    insertion: u64,
    rw: bool,
    who: Option<Who>,
}

impl Ctx {
    fn guard(&self) -> Option<(usize, u64)> {
        Some((self.slot, self.insertion))
    }

    fn user(&self) -> bool {
        self.who == Some(Who::User)
    }
}

/// A lock the application supplied (`C_Initialize` with mutex callbacks and without
/// `CKF_OS_LOCKING_OK`): the engine takes it around every access to its shared state.
pub trait ExternalLock: Send + Sync {
    /// Locks the application's mutex.
    fn lock(&self);
    /// Unlocks it.
    fn unlock(&self);
}

/// The engine's state, locked (and the application's mutex with it, when one was given).
pub(crate) struct StateGuard<'a> {
    guard: Option<MutexGuard<'a, State>>,
    external: Option<&'a dyn ExternalLock>,
}

impl std::ops::Deref for StateGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        // The guard is only taken out in `drop`.
        self.guard.as_deref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.guard.as_deref_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        if let Some(e) = self.external {
            e.unlock();
        }
    }
}

/// One process's view of the rack through PKCS#11.
pub struct Engine {
    rack: Rack,
    env_latency: Option<Profile>,
    state: Mutex<State>,
    finalized: AtomicBool,
    external: Option<Arc<dyn ExternalLock>>,
}

static GLOBAL: RwLock<Option<Arc<Engine>>> = RwLock::new(None);

/// Starts the process's engine (`C_Initialize`) on the state directory `HSM_SIM_DIR` (or the
/// default). `CKR_CRYPTOKI_ALREADY_INITIALIZED` when it runs already.
pub fn initialize(external: Option<Arc<dyn ExternalLock>>) -> Result<(), Rv> {
    let mut g = GLOBAL.write().map_err(|_| CKR_GENERAL_ERROR)?;
    if g.is_some() {
        return Err(CKR_CRYPTOKI_ALREADY_INITIALIZED);
    }
    let mut engine = Engine::new(Rack::attach(&crate::rack::default_dir()));
    engine.external = external;
    *g = Some(Arc::new(engine));
    Ok(())
}

/// Stops the process's engine (`C_Finalize`): sessions and login state end; a thread
/// blocked in `C_WaitForSlotEvent` returns.
pub fn finalize() -> Result<(), Rv> {
    let mut g = GLOBAL.write().map_err(|_| CKR_GENERAL_ERROR)?;
    match g.take() {
        Some(e) => {
            e.finalized.store(true, Ordering::SeqCst);
            Ok(())
        }
        None => Err(CKR_CRYPTOKI_NOT_INITIALIZED),
    }
}

/// The running engine, or `CKR_CRYPTOKI_NOT_INITIALIZED`.
pub fn get() -> Result<Arc<Engine>, Rv> {
    GLOBAL
        .read()
        .map_err(|_| CKR_GENERAL_ERROR)?
        .as_ref()
        .cloned()
        .ok_or(CKR_CRYPTOKI_NOT_INITIALIZED)
}

/// The token in a rack slot: its serial and insertion number.
type Occupant = (String, u64);

fn dev(e: crate::Error) -> Rv {
    e.rv()
}

impl Engine {
    /// An engine over a rack (tests build one directly; the module uses [`initialize`]).
    pub fn new(rack: Rack) -> Engine {
        let seen = rack
            .snapshot()
            .ok()
            .flatten()
            .map(|r| {
                r.slots
                    .iter()
                    .enumerate()
                    .map(|(n, s)| s.as_ref().map(|i| (i.insertion, i.slot_id(n))))
                    .collect()
            })
            .unwrap_or_default();
        Engine {
            rack,
            env_latency: latency::env_profile(),
            state: Mutex::new(State {
                next_session: 1,
                next_object: SESSION_OBJECT_BASE,
                seen,
                ..State::default()
            }),
            finalized: AtomicBool::new(false),
            external: None,
        }
    }

    fn lock(&self) -> Result<StateGuard<'_>, Rv> {
        let external = self.external.as_deref();
        if let Some(e) = external {
            e.lock();
        }
        match self.state.lock() {
            Ok(guard) => Ok(StateGuard {
                guard: Some(guard),
                external,
            }),
            Err(_) => {
                if let Some(e) = external {
                    e.unlock();
                }
                Err(CKR_GENERAL_ERROR)
            }
        }
    }

    /// The slots as the rack file has them now: per rack slot (port), the module's slot id
    /// and the token serial and insertion. An empty port's id is its index; a token's id is
    /// what its profile's numbering gave it at insertion (`rack::profile`). An SKF token is
    /// not this library's: its slot looks empty (as a token of another vendor does to a
    /// PKCS#11 module).
    fn slots(&self) -> Result<Vec<(CK_SLOT_ID, Option<Occupant>)>, Rv> {
        Ok(self
            .rack
            .snapshot()
            .map_err(dev)?
            .map(|r| {
                r.slots
                    .iter()
                    .enumerate()
                    .map(|(n, s)| {
                        let pkcs11 = s.as_ref().filter(|i| {
                            !self.rack.token(&i.serial).is_ok_and(|t| t.skf().is_some())
                        });
                        match pkcs11 {
                            Some(i) => (i.slot_id(n), Some((i.serial.clone(), i.insertion))),
                            None => (n as CK_SLOT_ID, None),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The rack slot behind the module's slot id, and what it holds.
    fn slot_entry(&self, slot: CK_SLOT_ID) -> Result<(usize, Option<Occupant>), Rv> {
        self.slots()?
            .into_iter()
            .enumerate()
            .find(|(_, (id, _))| *id == slot)
            .map(|(n, (_, entry))| (n, entry))
            .ok_or(CKR_SLOT_ID_INVALID)
    }

    /// The module's slot id of rack slot `index` now.
    fn slot_id(&self, index: usize) -> Result<CK_SLOT_ID, Rv> {
        Ok(self
            .slots()?
            .get(index)
            .map(|(id, _)| *id)
            .unwrap_or(index as CK_SLOT_ID))
    }

    fn present(&self, slot: CK_SLOT_ID) -> Result<(usize, String, u64), Rv> {
        let (idx, entry) = self.slot_entry(slot)?;
        let (serial, insertion) = entry.ok_or(CKR_TOKEN_NOT_PRESENT)?;
        Ok((idx, serial, insertion))
    }

    /// `CKR_MECHANISM_INVALID` unless the token of session `h` offers `mech` (its vendor
    /// profile may offer fewer mechanisms than the simulator has).
    pub fn offers(&self, h: CK_SESSION_HANDLE, mech: CK_MECHANISM_TYPE) -> Result<(), Rv> {
        let ctx = self.ctx(h)?;
        if self.token(&ctx.serial)?.profile().mechanisms.offers(mech) {
            Ok(())
        } else {
            Err(CKR_MECHANISM_INVALID)
        }
    }

    fn token(&self, serial: &str) -> Result<Arc<Token>, Rv> {
        self.rack.token(serial).map_err(dev)
    }

    /// Forgets sessions, session objects and login state of insertions no longer in the rack.
    fn is_current(&self, slot: usize, insertion: u64) -> Result<bool, Rv> {
        self.rack.still_inserted(slot, insertion).map_err(dev)
    }

    fn drop_session(st: &mut State, h: CK_SESSION_HANDLE) {
        if let Some(s) = st.sessions.remove(&h) {
            st.objects.retain(|_, o| o.session != h);
            let others = st
                .sessions
                .values()
                .any(|o| o.slot == s.slot && o.insertion == s.insertion);
            if !others {
                // The last session on a token closed: the application is logged out.
                st.logins.remove(&s.slot);
            }
        }
    }

    fn who(st: &State, slot: usize, insertion: u64) -> Option<Who> {
        st.logins
            .get(&slot)
            .filter(|l| l.insertion == insertion)
            .map(|l| l.who)
    }

    /// Validates a session handle: a session whose token was pulled is closed here and the
    /// call gets `CKR_DEVICE_REMOVED`.
    pub(crate) fn ctx(&self, h: CK_SESSION_HANDLE) -> Result<Ctx, Rv> {
        let mut st = self.lock()?;
        let s = st.sessions.get(&h).ok_or(CKR_SESSION_HANDLE_INVALID)?;
        let (slot, insertion) = (s.slot, s.insertion);
        if !self.is_current(slot, insertion)? {
            Self::drop_session(&mut st, h);
            if st
                .logins
                .get(&slot)
                .is_some_and(|l| l.insertion == insertion)
            {
                st.logins.remove(&slot);
            }
            return Err(CKR_DEVICE_REMOVED);
        }
        let s = st.sessions.get(&h).ok_or(CKR_SESSION_HANDLE_INVALID)?;
        Ok(Ctx {
            handle: h,
            slot,
            serial: s.serial.clone(),
            insertion,
            rw: s.rw,
            who: Self::who(&st, slot, insertion),
        })
    }

    /// Runs the fault point of `function` for the token of `ctx`.
    fn fault(&self, slot: usize, serial: &str, insertion: u64, function: &str) -> Result<(), Rv> {
        match self.rack.fault_point(serial, slot, function).map_err(dev)? {
            None => Ok(()),
            Some(FaultAction::Fail { rv }) => Err(rv),
            Some(FaultAction::Pull) => Err(CKR_DEVICE_REMOVED),
            Some(FaultAction::Delay { ms }) => {
                self.wait(slot, insertion, Duration::from_millis(ms))
            }
        }
    }

    /// A session call's prologue: validate the handle, then the fault point.
    pub(crate) fn enter(&self, h: CK_SESSION_HANDLE, function: &str) -> Result<Ctx, Rv> {
        let ctx = self.ctx(h)?;
        self.fault(ctx.slot, &ctx.serial, ctx.insertion, function)
            .map_err(|rv| self.on_removed(&ctx, rv))?;
        Ok(ctx)
    }

    /// Waits `d`, watching the slot: `CKR_DEVICE_REMOVED` as soon as the token is pulled.
    fn wait(&self, slot: usize, insertion: u64, d: Duration) -> Result<(), Rv> {
        let deadline = Instant::now() + d;
        loop {
            if !self.is_current(slot, insertion)? {
                return Err(CKR_DEVICE_REMOVED);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            std::thread::sleep(POLL.min(deadline - now));
        }
    }

    fn latencies(&self, serial: &str) -> Result<(LatencySettings, LatencySettings), Rv> {
        let token = self.token(serial)?.latency().clone();
        let rack = self.rack.rack_latency().map_err(dev)?;
        Ok((token, rack))
    }

    /// Waits as long as `op` takes on this token, minus `already` spent computing.
    fn delay(&self, ctx: &Ctx, op: Op, already: Duration) -> Result<(), Rv> {
        let (t, r) = self.latencies(&ctx.serial)?;
        let d = latency::duration(op, &t, &r, self.env_latency);
        self.wait(ctx.slot, ctx.insertion, d.saturating_sub(already))
            .map_err(|rv| self.on_removed(ctx, rv))
    }

    fn write_delay(&self, ctx: &Ctx, bytes: usize) -> Result<(), Rv> {
        let (t, r) = self.latencies(&ctx.serial)?;
        let d = latency::write_duration(bytes, &t, &r, self.env_latency);
        self.wait(ctx.slot, ctx.insertion, d)
            .map_err(|rv| self.on_removed(ctx, rv))
    }

    /// A call that found its token pulled closes its session (the next call on it gets
    /// `CKR_SESSION_HANDLE_INVALID`) and ends the login on that insertion.
    fn on_removed(&self, ctx: &Ctx, rv: Rv) -> Rv {
        if rv == CKR_DEVICE_REMOVED
            && let Ok(mut st) = self.lock()
        {
            Self::drop_session(&mut st, ctx.handle);
            if st
                .logins
                .get(&ctx.slot)
                .is_some_and(|l| l.insertion == ctx.insertion)
            {
                st.logins.remove(&ctx.slot);
            }
        }
        rv
    }

    /// Commits a change to the session's token, unless it was pulled meanwhile.
    fn commit<T>(&self, ctx: &Ctx, f: impl FnOnce(&mut Token) -> Result<T, Rv>) -> Result<T, Rv> {
        self.rack
            .update_token(&ctx.serial, ctx.guard(), f)
            .map_err(dev)?
            .map_err(|rv| self.on_removed(ctx, rv))
    }

    // ----- slots and tokens -----

    /// `C_GetSlotList`.
    pub fn slot_list(&self, token_present: bool) -> Result<Vec<CK_SLOT_ID>, Rv> {
        Ok(self
            .slots()?
            .iter()
            .filter(|(_, s)| !token_present || s.is_some())
            .map(|(id, _)| *id)
            .collect())
    }

    /// `C_GetSlotInfo`.
    pub fn slot_info(&self, slot: CK_SLOT_ID) -> Result<SlotInfo, Rv> {
        let (idx, entry) = self.slot_entry(slot)?;
        let mut flags = CKF_REMOVABLE_DEVICE | CKF_HW_SLOT;
        // The vendor's slot description: its pattern may or may not name the port.
        let model = match &entry {
            Some((serial, _)) => {
                flags |= CKF_TOKEN_PRESENT;
                self.token(serial)?.profile()
            }
            None => crate::rack::profile::of_token(crate::rack::profile::DEFAULT),
        };
        Ok(SlotInfo {
            description: model.describe_slot(slot, &crate::rack::port_path(idx)),
            manufacturer: model.manufacturer.into(),
            flags,
        })
    }

    /// `C_GetTokenInfo`.
    pub fn token_info(&self, slot: CK_SLOT_ID) -> Result<TokenInfo, Rv> {
        let (idx, serial, insertion) = self.present(slot)?;
        self.fault(idx, &serial, insertion, "C_GetTokenInfo")?;
        let t = self.token(&serial)?;
        let (sessions, rw) = {
            let st = self.lock()?;
            let mine = st
                .sessions
                .values()
                .filter(|s| s.slot == idx && s.insertion == insertion);
            mine.fold((0, 0), |(n, rw), s| (n + 1, rw + CK_ULONG::from(s.rw)))
        };
        let (pin_min, pin_max) = t.pin_bounds();
        let (_, max_bytes) = t.limits();
        Ok(TokenInfo {
            label: t.label().to_string(),
            manufacturer: t.manufacturer().to_string(),
            model: t.model().to_string(),
            serial: t.serial().to_string(),
            flags: t.flags(),
            sessions,
            rw_sessions: rw,
            pin_min: pin_min as CK_ULONG,
            pin_max: pin_max as CK_ULONG,
            total_memory: max_bytes as CK_ULONG,
            free_memory: max_bytes.saturating_sub(t.used_bytes()) as CK_ULONG,
        })
    }

    /// `C_GetMechanismList`.
    pub fn mechanism_list(&self, slot: CK_SLOT_ID) -> Result<Vec<CK_MECHANISM_TYPE>, Rv> {
        let (_, serial, _) = self.present(slot)?;
        let offered = self.token(&serial)?.profile().mechanisms;
        Ok(MECHANISMS
            .iter()
            .map(|m| m.0)
            .filter(|m| offered.offers(*m))
            .collect())
    }

    /// `C_GetMechanismInfo`: (min key size, max key size, flags).
    pub fn mechanism_info(
        &self,
        slot: CK_SLOT_ID,
        mech: CK_MECHANISM_TYPE,
    ) -> Result<(CK_ULONG, CK_ULONG, CK_FLAGS), Rv> {
        let (_, serial, _) = self.present(slot)?;
        let offered = self.token(&serial)?.profile().mechanisms;
        MECHANISMS
            .iter()
            .filter(|m| offered.offers(m.0))
            .find(|m| m.0 == mech)
            .map(|m| (m.1, m.2, m.3))
            .ok_or(CKR_MECHANISM_INVALID)
    }

    /// The longest PIN the token in `slot` accepts (`C_InitToken`): the C ABI reads no more.
    pub fn slot_pin_max(&self, slot: CK_SLOT_ID) -> Result<usize, Rv> {
        let (_, serial, _) = self.present(slot)?;
        Ok(self.token(&serial)?.pin_bounds().1)
    }

    /// The longest PIN the token of session `h` accepts (`C_Login`, `C_InitPIN`,
    /// `C_SetPIN`): the C ABI reads no more, since a longer one cannot be the token's PIN.
    pub fn session_pin_max(&self, h: CK_SESSION_HANDLE) -> Result<usize, Rv> {
        let ctx = self.ctx(h)?;
        Ok(self.token(&ctx.serial)?.pin_bounds().1)
    }

    /// `C_InitToken`.
    pub fn init_token(&self, slot: CK_SLOT_ID, so_pin: &[u8], label: &str) -> Result<(), Rv> {
        let (idx, serial, insertion) = self.present(slot)?;
        if !self.token(&serial)?.profile().init_token {
            // Vendor modules that personalize only through their own tools.
            return Err(CKR_FUNCTION_NOT_SUPPORTED);
        }
        {
            let st = self.lock()?;
            if st
                .sessions
                .values()
                .any(|s| s.slot == idx && s.insertion == insertion)
            {
                return Err(CKR_SESSION_EXISTS);
            }
        }
        self.fault(idx, &serial, insertion, "C_InitToken")?;
        let ctx = Ctx {
            handle: 0,
            slot: idx,
            serial,
            insertion,
            rw: true,
            who: None,
        };
        self.delay(&ctx, Op::InitToken, Duration::ZERO)?;
        self.commit(&ctx, |t| t.init_token(so_pin, label))?;
        self.lock()?.logins.remove(&idx);
        Ok(())
    }

    /// `C_WaitForSlotEvent`: the next slot whose token was inserted or removed since last
    /// reported. With `dont_block`, `CKR_NO_EVENT` when there is none.
    pub fn wait_for_slot_event(&self, dont_block: bool) -> Result<CK_SLOT_ID, Rv> {
        loop {
            if self.finalized.load(Ordering::SeqCst) {
                return Err(CKR_CRYPTOKI_NOT_INITIALIZED);
            }
            let now: Vec<Option<(u64, CK_SLOT_ID)>> = self
                .slots()?
                .into_iter()
                .map(|(id, s)| s.map(|(_, i)| (i, id)))
                .collect();
            {
                let mut st = self.lock()?;
                if st.seen.len() < now.len() {
                    st.seen.resize(now.len(), None);
                }
                if let Some(i) = now.iter().enumerate().position(|(i, s)| st.seen[i] != *s) {
                    // An arrival reports the new slot id, a removal the id that went away.
                    let id = match (now[i], st.seen[i]) {
                        (Some((_, id)), _) | (None, Some((_, id))) => id,
                        (None, None) => i as CK_SLOT_ID,
                    };
                    st.seen[i] = now[i];
                    return Ok(id);
                }
            }
            if dont_block {
                return Err(CKR_NO_EVENT);
            }
            std::thread::sleep(POLL * 2);
        }
    }

    // ----- sessions -----

    /// `C_OpenSession`.
    pub fn open_session(&self, slot: CK_SLOT_ID, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE, Rv> {
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(CKR_SESSION_PARALLEL_NOT_SUPPORTED);
        }
        let (idx, serial, insertion) = self.present(slot)?;
        self.fault(idx, &serial, insertion, "C_OpenSession")?;
        if !self.token(&serial)?.is_initialized() {
            return Err(CKR_TOKEN_NOT_RECOGNIZED);
        }
        let rw = flags & CKF_RW_SESSION != 0;
        let mut st = self.lock()?;
        if !rw && Self::who(&st, idx, insertion) == Some(Who::So) {
            return Err(CKR_SESSION_READ_WRITE_SO_EXISTS);
        }
        let h = st.next_session;
        st.next_session += 1;
        st.sessions.insert(
            h,
            Session {
                slot: idx,
                serial,
                insertion,
                rw,
                find: None,
                sign: None,
                decrypt: None,
                encrypt: None,
                digest: None,
            },
        );
        Ok(h)
    }

    /// `C_CloseSession`. A session whose token was pulled closes quietly.
    pub fn close_session(&self, h: CK_SESSION_HANDLE) -> Result<(), Rv> {
        let mut st = self.lock()?;
        if !st.sessions.contains_key(&h) {
            return Err(CKR_SESSION_HANDLE_INVALID);
        }
        Self::drop_session(&mut st, h);
        Ok(())
    }

    /// `C_CloseAllSessions`.
    pub fn close_all_sessions(&self, slot: CK_SLOT_ID) -> Result<(), Rv> {
        let (idx, _) = self.slot_entry(slot)?;
        let mut st = self.lock()?;
        let mine: Vec<_> = st
            .sessions
            .iter()
            .filter(|(_, s)| s.slot == idx)
            .map(|(h, _)| *h)
            .collect();
        for h in mine {
            Self::drop_session(&mut st, h);
        }
        st.logins.remove(&idx);
        Ok(())
    }

    /// `C_GetSessionInfo`.
    pub fn session_info(&self, h: CK_SESSION_HANDLE) -> Result<SessionInfo, Rv> {
        let ctx = self.enter(h, "C_GetSessionInfo")?;
        let state = match (ctx.who, ctx.rw) {
            (Some(Who::So), _) => CKS_RW_SO_FUNCTIONS,
            (Some(Who::User), true) => CKS_RW_USER_FUNCTIONS,
            (Some(Who::User), false) => CKS_RO_USER_FUNCTIONS,
            (None, true) => CKS_RW_PUBLIC_SESSION,
            (None, false) => CKS_RO_PUBLIC_SESSION,
        };
        let mut flags = CKF_SERIAL_SESSION;
        if ctx.rw {
            flags |= CKF_RW_SESSION;
        }
        Ok(SessionInfo {
            slot: self.slot_id(ctx.slot)?,
            state,
            flags,
        })
    }

    /// `C_Login`.
    pub fn login(&self, h: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: &[u8]) -> Result<(), Rv> {
        let ctx = self.enter(h, "C_Login")?;
        let who = match user {
            CKU_USER => Who::User,
            CKU_SO => Who::So,
            CKU_CONTEXT_SPECIFIC => {
                return Err(if ctx.who.is_none() {
                    CKR_USER_NOT_LOGGED_IN
                } else {
                    CKR_OPERATION_NOT_INITIALIZED
                });
            }
            _ => return Err(CKR_USER_TYPE_INVALID),
        };
        match ctx.who {
            Some(w) if w == who => return Err(CKR_USER_ALREADY_LOGGED_IN),
            Some(_) => return Err(CKR_USER_ANOTHER_ALREADY_LOGGED_IN),
            None => {}
        }
        if who == Who::So {
            let st = self.lock()?;
            let ro = st
                .sessions
                .values()
                .any(|s| s.slot == ctx.slot && s.insertion == ctx.insertion && !s.rw);
            if ro {
                return Err(CKR_SESSION_READ_ONLY_EXISTS);
            }
        }
        self.delay(&ctx, Op::Login, Duration::ZERO)?;
        self.commit(&ctx, |t| t.verify_pin(who, pin))?;
        self.lock()?.logins.insert(
            ctx.slot,
            Login {
                insertion: ctx.insertion,
                who,
            },
        );
        Ok(())
    }

    /// `C_Logout`.
    pub fn logout(&self, h: CK_SESSION_HANDLE) -> Result<(), Rv> {
        let ctx = self.enter(h, "C_Logout")?;
        if ctx.who.is_none() {
            return Err(CKR_USER_NOT_LOGGED_IN);
        }
        let mut st = self.lock()?;
        st.logins.remove(&ctx.slot);
        Ok(())
    }

    /// `C_InitPIN` (R/W SO session).
    pub fn init_pin(&self, h: CK_SESSION_HANDLE, pin: &[u8]) -> Result<(), Rv> {
        let ctx = self.enter(h, "C_InitPIN")?;
        if ctx.who != Some(Who::So) {
            return Err(CKR_USER_NOT_LOGGED_IN);
        }
        if !ctx.rw {
            return Err(CKR_SESSION_READ_ONLY);
        }
        self.delay(&ctx, Op::InitPin, Duration::ZERO)?;
        self.commit(&ctx, |t| t.init_pin(pin))
    }

    /// `C_SetPIN`: the SO's PIN in an SO session, else the user's.
    pub fn set_pin(&self, h: CK_SESSION_HANDLE, old: &[u8], new: &[u8]) -> Result<(), Rv> {
        let ctx = self.enter(h, "C_SetPIN")?;
        if !ctx.rw {
            return Err(CKR_SESSION_READ_ONLY);
        }
        let who = if ctx.who == Some(Who::So) {
            Who::So
        } else {
            Who::User
        };
        self.delay(&ctx, Op::SetPin, Duration::ZERO)?;
        self.commit(&ctx, |t| t.set_pin(who, old, new))
    }

    /// `C_SeedRandom`: the seed is set aside; the operating system's generator seeds itself.
    pub fn seed_random(&self, h: CK_SESSION_HANDLE, _seed: &[u8]) -> Result<(), Rv> {
        self.enter(h, "C_SeedRandom")?;
        Ok(())
    }

    /// `C_GenerateRandom`.
    pub fn generate_random(&self, h: CK_SESSION_HANDLE, out: &mut [u8]) -> Result<(), Rv> {
        let ctx = self.enter(h, "C_GenerateRandom")?;
        self.delay(&ctx, Op::Random, Duration::ZERO)?;
        crate::rack::crypto::random_bytes(out);
        Ok(())
    }
}
