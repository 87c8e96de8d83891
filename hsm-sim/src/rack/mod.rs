//! The virtual Ukey rack: N slots (the desk's USB ports), tokens plugged into them, and the
//! state directory that keeps it all between processes.
//!
//! [`Rack`] is the Rust API the CLI, tests and the demo drive (`init`, `insert`, `remove`,
//! `list`, faults, latency); the PKCS#11 module reads and changes the same files through it.
//! Safe Rust only; no PKCS#11 sessions here (those are per process, in [`crate::engine`]).
//!
//! # State directory
//!
//! ```text
//! rack.json            slots, which token sits in each (serial + insertion number),
//!                      generation counter, rack-wide latency, defaults for new tokens
//! tokens/<SERIAL>.json one per token ever seen: PIN hashes, counters, objects, key
//!                      material (in plain hex: a simulator, not a place for secrets),
//!                      latency and armed faults
//! usb.json             the virtual USB bus (see crate::usb)
//! lock                 advisory lock file serializing writers
//! ```

pub mod crypto;
pub mod fault;
pub mod latency;
pub mod names;
pub mod object;
pub mod profile;
mod store;
pub mod symmetric;
pub mod token;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cryptoki_sys::{CK_RV, CKR_DEVICE_REMOVED};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::usb;
use fault::{Fault, FaultAction};
use latency::{LatencySettings, Op, Profile};
use store::{DirLock, FileCache};
use token::{Token, TokenSettings, Who};

pub(crate) fn write_usb(path: &Path, bus: &usb::UsbBus) -> Result<()> {
    store::write_json(path, bus)
}

/// A PKCS#11 return code, as the token model reports failures.
pub type Rv = CK_RV;

/// The environment variable naming the state directory.
pub const DIR_ENV: &str = "HSM_SIM_DIR";

/// The state directory to use when none is given: `$HSM_SIM_DIR`, else
/// `$XDG_STATE_HOME/hsm-sim`, else `$HOME/.local/state/hsm-sim`, else `./.hsm-sim`.
pub fn default_dir() -> PathBuf {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = non_empty(DIR_ENV) {
        return PathBuf::from(d);
    }
    if let Some(d) = non_empty("XDG_STATE_HOME") {
        return PathBuf::from(d).join("hsm-sim");
    }
    if let Some(h) = non_empty("HOME") {
        return PathBuf::from(h).join(".local/state/hsm-sim");
    }
    PathBuf::from(".hsm-sim")
}

/// A token in a slot: its serial and the insertion that put it there. Each insertion gets a
/// new number, so a session opened before a remove/re-insert is recognized as stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inserted {
    /// The token's serial.
    pub serial: String,
    /// Increasing number of the insertion.
    pub insertion: u64,
    /// The host may open the USB device (false simulates missing udev rules: the device is
    /// on the bus but "present, not accessible"). Set with [`Rack::set_usb_access`].
    #[serde(default = "accessible_by_default")]
    pub usb_accessible: bool,
    /// The PKCS#11 slot id the module gives this insertion (its profile's numbering); the
    /// slot's index when absent (racks written before profiles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_slot: Option<u64>,
}

impl Inserted {
    /// The PKCS#11 slot id of this insertion in rack slot `index`.
    pub fn slot_id(&self, index: usize) -> u64 {
        self.module_slot.unwrap_or(index as u64)
    }
}

fn accessible_by_default() -> bool {
    true
}

/// `rack.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RackFile {
    version: u32,
    /// Bumped by every change of the rack (insert, remove, settings).
    pub(crate) generation: u64,
    next_insertion: u64,
    pub(crate) slots: Vec<Option<Inserted>>,
    #[serde(default)]
    pub(crate) latency: LatencySettings,
    #[serde(default)]
    pub(crate) defaults: TokenSettings,
}

/// How to build a rack.
#[derive(Debug, Clone, Default)]
pub struct RackConfig {
    /// Number of slots.
    pub slots: usize,
    /// Rack-wide latency profile (tokens and `HSM_SIM_LATENCY` may override it).
    pub latency: Option<Profile>,
    /// Settings of new tokens.
    pub defaults: TokenSettings,
}

/// Options of [`Rack::insert`].
#[derive(Debug, Clone, Default)]
pub struct InsertOptions {
    /// The serial: a token the rack knows is re-inserted as it was; an unknown serial makes a
    /// blank token with that serial; `None` makes a blank token with a fresh serial.
    pub serial: Option<String>,
    /// Settings for a new token (the rack's defaults when `None`). Ignored on re-insertion.
    pub settings: Option<TokenSettings>,
    /// Latency profile of the token.
    pub latency: Option<Profile>,
    /// Vendor profile of a new token (`profile::by_name`); `default` when `None`. Its
    /// settings apply unless `settings` is given. Ignored on re-insertion.
    pub model: Option<String>,
}

/// A change to latency settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyChange {
    /// Use this profile.
    Profile(Profile),
    /// This operation takes this many milliseconds.
    Op(Op, u64),
    /// Forget the override of this operation.
    ClearOp(Op),
    /// Forget every setting (fall back to the rack, the environment, `instant`).
    Reset,
}

/// What `list` shows of one slot.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    /// Slot number (= PKCS#11 slot id).
    pub slot: usize,
    /// USB port path of the slot.
    pub port: String,
    /// The PKCS#11 slot id the module shows for it now (its token's numbering).
    pub slot_id: u64,
    /// The token in it, if any.
    pub token: Option<TokenSummary>,
}

/// A token at a glance.
#[derive(Debug, Clone, Serialize)]
pub struct TokenSummary {
    /// Serial.
    pub serial: String,
    /// Vendor profile (`hsm-sim models`).
    pub model: String,
    /// Label (empty on a blank token).
    pub label: String,
    /// `blank`, `initialized` (no user PIN), `ready`, `user-locked` or `so-locked`.
    pub state: String,
    /// Number of objects stored.
    pub objects: usize,
    /// Bytes of storage used and available.
    pub used_bytes: usize,
    /// Storage size.
    pub max_bytes: usize,
    /// User PIN tries left / maximum.
    pub user_retries: (u32, u32),
    /// SO PIN tries left / maximum.
    pub so_retries: (u32, u32),
    /// Armed faults, described.
    pub faults: Vec<String>,
    /// The token's library: `pkcs11` or `skf`. For an SKF token the state is its SKF
    /// state, objects count containers, the counters are the first application's.
    pub interface: &'static str,
}

impl TokenSummary {
    fn of(t: &Token) -> TokenSummary {
        let state = if !t.is_initialized() {
            "blank"
        } else if t.retries(Who::So).0 == 0 {
            "so-locked"
        } else if !t.user_pin_initialized() {
            "initialized"
        } else if t.retries(Who::User).0 == 0 {
            "user-locked"
        } else {
            "ready"
        };
        let mut summary = TokenSummary {
            serial: t.serial().to_string(),
            model: t.profile().name.to_string(),
            label: t.label().to_string(),
            state: state.to_string(),
            objects: t.objects().count(),
            used_bytes: t.used_bytes(),
            max_bytes: t.limits().1,
            user_retries: t.retries(Who::User),
            so_retries: t.retries(Who::So),
            faults: t.faults().iter().map(Fault::describe).collect(),
            interface: t.interface().name(),
        };
        if let Some(dev) = t.skf() {
            summary.label = dev.label().to_string();
            summary.state = dev.state().to_string();
            summary.objects = dev.apps().values().map(|a| a.containers().len()).sum();
            summary.used_bytes = dev.used_bytes();
            let first = dev.apps().keys().next();
            let counters = |kind| {
                first
                    .and_then(|name| dev.pin_info(name, kind).ok())
                    .map_or((0, 0), |(max, left, _)| (left, max))
            };
            summary.user_retries = counters(crate::skf::device::PinType::User);
            summary.so_retries = counters(crate::skf::device::PinType::Admin);
        }
        summary
    }
}

/// USB port path of a slot on the virtual hub (`1-1.<slot+1>`).
pub fn port_path(slot: usize) -> String {
    format!("1-1.{}", slot + 1)
}

/// Checks a serial: exactly 16 ASCII letters or digits.
pub fn check_serial(serial: &str) -> Result<()> {
    if serial.len() == 16 && serial.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(Error::BadSerial {
            serial: serial.to_string(),
        })
    }
}

/// A handle on a state directory holding a rack. Cheap to query: reads are cached and
/// refreshed whenever another process commits a change.
pub struct Rack {
    dir: PathBuf,
    rack_cache: FileCache<RackFile>,
    token_cache: FileCache<Token>,
}

impl std::fmt::Debug for Rack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rack").field("dir", &self.dir).finish()
    }
}

impl Rack {
    fn handle(dir: &Path) -> Rack {
        Rack {
            dir: dir.to_path_buf(),
            rack_cache: FileCache::new(),
            token_cache: FileCache::new(),
        }
    }

    /// Creates a rack of empty slots in `dir` (created if missing). An existing rack is an
    /// error unless `force`, which forgets its tokens.
    pub fn init(dir: &Path, config: RackConfig, force: bool) -> Result<Rack> {
        if config.slots == 0 || config.slots > 64 {
            return Err(Error::InvalidSetting {
                name: "slots",
                reason: format!("{} slots: a rack has 1 to 64", config.slots),
            });
        }
        config.defaults.validate()?;
        std::fs::create_dir_all(dir.join("tokens"))
            .map_err(|e| Error::io("create", dir.join("tokens"), e))?;
        let rack = Rack::handle(dir);
        let _lock = DirLock::acquire(dir)?;
        let old = rack.rack_cache.read(&rack.rack_path())?;
        if old.is_some() && !force {
            return Err(Error::RackExists {
                dir: dir.to_path_buf(),
            });
        }
        if force {
            let tokens = dir.join("tokens");
            if let Ok(entries) = std::fs::read_dir(&tokens) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let file = RackFile {
            version: 1,
            generation: old.map(|o| o.generation + 1).unwrap_or(1),
            next_insertion: 1,
            slots: vec![None; config.slots],
            latency: LatencySettings {
                profile: config.latency,
                overrides: Default::default(),
            },
            defaults: config.defaults,
        };
        rack.commit_rack(&file)?;
        Ok(rack)
    }

    /// Opens the rack in `dir`; [`Error::NoRack`] when there is none.
    pub fn open(dir: &Path) -> Result<Rack> {
        let rack = Rack::handle(dir);
        if rack.rack_cache.read(&rack.rack_path())?.is_none() {
            return Err(Error::NoRack {
                dir: dir.to_path_buf(),
            });
        }
        Ok(rack)
    }

    /// A handle on `dir` whether or not it holds a rack yet (the module uses this: a rack
    /// created later shows up at the next call).
    pub fn attach(dir: &Path) -> Rack {
        Rack::handle(dir)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn rack_path(&self) -> PathBuf {
        self.dir.join("rack.json")
    }

    fn token_path(&self, serial: &str) -> PathBuf {
        self.dir.join("tokens").join(format!("{serial}.json"))
    }

    /// The latest committed rack file, `None` when there is no rack.
    pub(crate) fn snapshot(&self) -> Result<Option<Arc<RackFile>>> {
        self.rack_cache.read(&self.rack_path())
    }

    fn require(&self) -> Result<Arc<RackFile>> {
        self.snapshot()?.ok_or_else(|| Error::NoRack {
            dir: self.dir.clone(),
        })
    }

    /// The latest committed state of a token.
    pub fn token(&self, serial: &str) -> Result<Arc<Token>> {
        check_serial(serial)?;
        self.token_cache
            .read(&self.token_path(serial))?
            .ok_or_else(|| Error::UnknownToken {
                serial: serial.to_string(),
            })
    }

    /// Settings new tokens get unless `insert` says otherwise.
    pub fn defaults(&self) -> Result<TokenSettings> {
        Ok(self.require()?.defaults.clone())
    }

    /// Number of slots (0 when there is no rack yet).
    pub fn slot_count(&self) -> Result<usize> {
        Ok(self.snapshot()?.map(|r| r.slots.len()).unwrap_or(0))
    }

    /// What each slot holds.
    pub fn list(&self) -> Result<Vec<SlotStatus>> {
        let rack = self.require()?;
        rack.slots
            .iter()
            .enumerate()
            .map(|(slot, s)| {
                let token = match s {
                    Some(ins) => Some(TokenSummary::of(&*self.token(&ins.serial)?)),
                    None => None,
                };
                Ok(SlotStatus {
                    slot,
                    port: port_path(slot),
                    slot_id: s.as_ref().map_or(slot as u64, |i| i.slot_id(slot)),
                    token,
                })
            })
            .collect()
    }

    /// The serial of the token in `slot`, if any.
    pub fn serial_in(&self, slot: usize) -> Result<Option<String>> {
        let rack = self.require()?;
        let entry = rack.slots.get(slot).ok_or(Error::SlotOutOfRange {
            slot,
            slots: rack.slots.len(),
        })?;
        Ok(entry.as_ref().map(|i| i.serial.clone()))
    }

    fn commit_rack(&self, file: &RackFile) -> Result<()> {
        store::write_json(&self.rack_path(), file)?;
        // The USB bus follows the rack: rewrite it with the same generation.
        let mut devices = Vec::new();
        for (slot, s) in file.slots.iter().enumerate() {
            if let Some(ins) = s {
                let t = self.token(&ins.serial)?;
                let model = t.profile();
                devices.push(usb::UsbDevice {
                    bus: 1,
                    port_path: port_path(slot),
                    slot,
                    vendor_id: t.usb().vendor_id,
                    product_id: t.usb().product_id,
                    serial: model.usb_serial_of(t.serial()),
                    manufacturer: t.manufacturer().to_string(),
                    product: t.model().to_string(),
                    accessible: ins.usb_accessible,
                });
            }
        }
        usb::write(
            &self.dir,
            &usb::UsbBus {
                version: 1,
                generation: file.generation,
                devices,
            },
        )
    }

    fn fresh_serial(&self) -> Result<String> {
        loop {
            let mut b = [0u8; 8];
            crypto::random_bytes(&mut b);
            let serial = hex::encode_upper(b);
            if !self.token_path(&serial).exists() {
                return Ok(serial);
            }
        }
    }

    /// Plugs a token into `slot` (see [`InsertOptions`]); returns its serial.
    pub fn insert(&self, slot: usize, options: InsertOptions) -> Result<String> {
        if let Some(s) = &options.serial {
            check_serial(s)?;
        }
        if let Some(s) = &options.settings {
            s.validate()?;
        }
        let model = match &options.model {
            None => None,
            Some(name) => Some(profile::by_name(name).ok_or_else(|| {
                Error::UnknownModel {
                    name: name.clone(),
                    known: profile::all()
                        .iter()
                        .map(|p| p.name)
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            })?),
        };
        let _lock = DirLock::acquire(&self.dir)?;
        let mut rack = (*self.require()?).clone();
        let entry = rack.slots.get(slot).ok_or(Error::SlotOutOfRange {
            slot,
            slots: rack.slots.len(),
        })?;
        if let Some(ins) = entry {
            return Err(Error::SlotOccupied {
                slot,
                serial: ins.serial.clone(),
            });
        }
        let serial = match options.serial {
            Some(s) => s,
            None => self.fresh_serial()?,
        };
        if let Some(other) = rack
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|i| i.serial == serial))
        {
            return Err(Error::TokenInUse {
                serial,
                slot: other,
            });
        }
        let existing = self.token_cache.read(&self.token_path(&serial))?;
        let mut token = match existing {
            Some(t) => (*t).clone(),
            None => match &model {
                Some(m) => {
                    Token::of_model(&serial, m, options.settings.as_ref().unwrap_or(&m.settings))
                }
                None => Token::blank(&serial, options.settings.as_ref().unwrap_or(&rack.defaults)),
            },
        };
        let taken: Vec<u64> = rack
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| s.slot_id(i)))
            .collect();
        let module_slot =
            profile::assign_slot_id(token.profile().slots, slot, rack.next_insertion, &taken);
        if let Some(p) = options.latency {
            token.latency_mut().profile = Some(p);
        }
        store::write_json(&self.token_path(&serial), &token)?;
        rack.slots[slot] = Some(Inserted {
            serial: serial.clone(),
            insertion: rack.next_insertion,
            usb_accessible: true,
            module_slot: Some(module_slot),
        });
        rack.next_insertion += 1;
        rack.generation += 1;
        self.commit_rack(&rack)?;
        Ok(serial)
    }

    /// Pulls the token out of `slot`; returns its serial. Sessions on it die at their next call.
    pub fn remove(&self, slot: usize) -> Result<String> {
        let _lock = DirLock::acquire(&self.dir)?;
        self.remove_locked(slot)
    }

    fn remove_locked(&self, slot: usize) -> Result<String> {
        let mut rack = (*self.require()?).clone();
        let slots = rack.slots.len();
        let entry = rack
            .slots
            .get_mut(slot)
            .ok_or(Error::SlotOutOfRange { slot, slots })?;
        let ins = entry.take().ok_or(Error::SlotEmpty { slot })?;
        rack.generation += 1;
        self.commit_rack(&rack)?;
        Ok(ins.serial)
    }

    /// Simulates USB permissions of the device in `slot`: `false` makes it appear on the
    /// virtual bus as present but not accessible (what missing udev rules do to a real Ukey).
    pub fn set_usb_access(&self, slot: usize, accessible: bool) -> Result<()> {
        let _lock = DirLock::acquire(&self.dir)?;
        let mut rack = (*self.require()?).clone();
        let slots = rack.slots.len();
        let entry = rack
            .slots
            .get_mut(slot)
            .ok_or(Error::SlotOutOfRange { slot, slots })?
            .as_mut()
            .ok_or(Error::SlotEmpty { slot })?;
        entry.usb_accessible = accessible;
        rack.generation += 1;
        self.commit_rack(&rack)
    }

    fn token_in(&self, slot: usize) -> Result<String> {
        self.serial_in(slot)?.ok_or(Error::SlotEmpty { slot })
    }

    /// Changes a stored token under the writer lock (the closure sees the latest state).
    pub fn modify_token<T>(&self, serial: &str, f: impl FnOnce(&mut Token) -> T) -> Result<T> {
        let _lock = DirLock::acquire(&self.dir)?;
        let mut token = (*self.token(serial)?).clone();
        let out = f(&mut token);
        store::write_json(&self.token_path(serial), &token)?;
        Ok(out)
    }

    /// Wipes a token back to its factory state (what the platform does with a token whose SO
    /// PIN locked): blank, or for a profile that leaves the factory initialized, its
    /// transport PINs, label and objects.
    pub fn wipe(&self, serial: &str) -> Result<()> {
        self.modify_token(serial, Token::factory_reset)?;
        self.touch()
    }

    /// Arms a fault on the token in `slot`.
    pub fn set_fault(&self, slot: usize, fault: Fault) -> Result<()> {
        let serial = self.token_in(slot)?;
        self.modify_token(&serial, |t| t.faults_mut().push(fault))
    }

    /// Sets the key policy of the token in `slot` (`token::KeyPolicy`).
    pub fn set_key_policy(&self, slot: usize, policy: token::KeyPolicy) -> Result<()> {
        let serial = self.token_in(slot)?;
        self.modify_token(&serial, |t| t.set_policy(policy))
    }

    /// Disarms every fault of the token in `slot`.
    pub fn clear_faults(&self, slot: usize) -> Result<()> {
        let serial = self.token_in(slot)?;
        self.modify_token(&serial, |t| t.faults_mut().clear())
    }

    /// Changes latency settings: of the token in `slot`, or rack-wide when `slot` is `None`.
    pub fn set_latency(&self, slot: Option<usize>, change: LatencyChange) -> Result<()> {
        let apply = |l: &mut LatencySettings| match change {
            LatencyChange::Profile(p) => l.profile = Some(p),
            LatencyChange::Op(op, ms) => {
                l.overrides.insert(op, ms);
            }
            LatencyChange::ClearOp(op) => {
                l.overrides.remove(&op);
            }
            LatencyChange::Reset => *l = LatencySettings::default(),
        };
        match slot {
            Some(slot) => {
                let serial = self.token_in(slot)?;
                self.modify_token(&serial, |t| apply(t.latency_mut()))
            }
            None => {
                let _lock = DirLock::acquire(&self.dir)?;
                let mut rack = (*self.require()?).clone();
                apply(&mut rack.latency);
                rack.generation += 1;
                self.commit_rack(&rack)
            }
        }
    }

    /// Bumps the rack's generation (wakes watchers) without changing slots.
    fn touch(&self) -> Result<()> {
        let _lock = DirLock::acquire(&self.dir)?;
        let mut rack = (*self.require()?).clone();
        rack.generation += 1;
        self.commit_rack(&rack)
    }

    /// Rack-wide latency settings.
    pub(crate) fn rack_latency(&self) -> Result<LatencySettings> {
        Ok(self
            .snapshot()?
            .map(|r| r.latency.clone())
            .unwrap_or_default())
    }

    /// Whether `slot` still holds the insertion `insertion`.
    pub(crate) fn still_inserted(&self, slot: usize, insertion: u64) -> Result<bool> {
        Ok(self
            .snapshot()?
            .and_then(|r| r.slots.get(slot).cloned().flatten())
            .is_some_and(|i| i.insertion == insertion))
    }

    /// The module's write path: under the lock, checks the token is still in `slot` with
    /// `insertion` (else `CKR_DEVICE_REMOVED`: nothing is committed), applies `f` to its latest
    /// state and commits whatever `f` changed — also when `f` fails (a wrong PIN still counts).
    pub(crate) fn update_token<T>(
        &self,
        serial: &str,
        guard: Option<(usize, u64)>,
        f: impl FnOnce(&mut Token) -> Result<T, Rv>,
    ) -> Result<Result<T, Rv>> {
        let _lock = DirLock::acquire(&self.dir)?;
        if let Some((slot, insertion)) = guard
            && !self.still_inserted(slot, insertion)?
        {
            return Ok(Err(CKR_DEVICE_REMOVED));
        }
        let current = self.token(serial)?;
        let mut token = (*current).clone();
        let out = f(&mut token);
        let before = serde_json::to_vec(&*current).unwrap_or_default();
        let after = serde_json::to_vec(&token).unwrap_or_default();
        if before != after {
            store::write_json(&self.token_path(serial), &token)?;
        }
        Ok(out)
    }

    /// Counts a call of `function` against the token's armed faults; returns the action of a
    /// fault that fires on this call. A `Pull` has already pulled the token when this returns.
    /// A sticky fault that fired stays armed (and stops counting).
    pub(crate) fn fault_point(
        &self,
        serial: &str,
        slot: usize,
        function: &str,
    ) -> Result<Option<FaultAction>> {
        // Fast paths without the lock: most calls have no fault armed, and a sticky fault that
        // fired already needs no bookkeeping (a pull still has to pull: below).
        let current = self.token(serial)?;
        let mut mine = current.faults().iter().filter(|f| f.function() == function);
        let Some(first) = mine.next() else {
            return Ok(None);
        };
        if let Some(f) = std::iter::once(first)
            .chain(mine)
            .find(|f| f.fires_always())
            && f.action() != FaultAction::Pull
        {
            return Ok(Some(f.action()));
        }
        let _lock = DirLock::acquire(&self.dir)?;
        let mut token = (*self.token(serial)?).clone();
        let mut fired = None;
        token.faults_mut().retain_mut(|f| {
            if f.function() != function {
                return true;
            }
            let hit = f.count();
            if hit && fired.is_none() {
                fired = Some(f.action());
                return f.is_sticky();
            }
            true
        });
        store::write_json(&self.token_path(serial), &token)?;
        if fired == Some(FaultAction::Pull) {
            let in_slot = self
                .snapshot()?
                .and_then(|r| r.slots.get(slot).cloned().flatten())
                .is_some_and(|i| i.serial == serial);
            if in_slot {
                self.remove_locked(slot)?;
            }
        }
        Ok(fired)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn rack(slots: usize) -> (tempfile::TempDir, Rack) {
        let dir = tempfile::tempdir().unwrap();
        let rack = Rack::init(
            dir.path(),
            RackConfig {
                slots,
                ..Default::default()
            },
            false,
        )
        .unwrap();
        (dir, rack)
    }

    #[test]
    fn insert_list_remove_reinsert() {
        let (dir, rack) = rack(2);
        let serial = rack.insert(1, InsertOptions::default()).unwrap();
        assert_eq!(serial.len(), 16);
        let list = rack.list().unwrap();
        assert!(list[0].token.is_none());
        assert_eq!(list[1].token.as_ref().unwrap().serial, serial);
        assert_eq!(list[1].token.as_ref().unwrap().state, "blank");
        let bus = usb::attached(dir.path()).unwrap();
        assert_eq!(bus.devices.len(), 1);
        assert_eq!(bus.devices[0].serial, serial);
        assert_eq!(bus.devices[0].port_path, "1-1.2");
        assert!(matches!(
            rack.insert(1, InsertOptions::default()),
            Err(Error::SlotOccupied { slot: 1, .. })
        ));
        assert!(matches!(
            rack.insert(
                0,
                InsertOptions {
                    serial: Some(serial.clone()),
                    ..Default::default()
                }
            ),
            Err(Error::TokenInUse { slot: 1, .. })
        ));
        assert_eq!(rack.remove(1).unwrap(), serial);
        assert!(matches!(rack.remove(1), Err(Error::SlotEmpty { slot: 1 })));
        assert!(usb::attached(dir.path()).unwrap().devices.is_empty());
        rack.insert(
            0,
            InsertOptions {
                serial: Some(serial.clone()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(rack.serial_in(0).unwrap(), Some(serial));
        assert!(matches!(
            rack.insert(5, InsertOptions::default()),
            Err(Error::SlotOutOfRange { slot: 5, slots: 2 })
        ));
    }

    #[test]
    fn rack_init_refuses_to_overwrite() {
        let (dir, _rack) = rack(1);
        assert!(matches!(
            Rack::init(
                dir.path(),
                RackConfig {
                    slots: 1,
                    ..Default::default()
                },
                false
            ),
            Err(Error::RackExists { .. })
        ));
        assert!(matches!(
            Rack::open(&dir.path().join("nothing")),
            Err(Error::NoRack { .. })
        ));
    }

    #[test]
    fn faults_fire_once_on_the_nth_call() {
        let (_dir, rack) = rack(1);
        let serial = rack.insert(0, InsertOptions::default()).unwrap();
        rack.set_fault(
            0,
            Fault::new("C_Sign", 2, FaultAction::Fail { rv: 0x30 }).unwrap(),
        )
        .unwrap();
        assert_eq!(rack.fault_point(&serial, 0, "C_Login").unwrap(), None);
        assert_eq!(rack.fault_point(&serial, 0, "C_Sign").unwrap(), None);
        assert_eq!(
            rack.fault_point(&serial, 0, "C_Sign").unwrap(),
            Some(FaultAction::Fail { rv: 0x30 })
        );
        assert_eq!(rack.fault_point(&serial, 0, "C_Sign").unwrap(), None);
        rack.set_fault(0, Fault::new("C_Login", 1, FaultAction::Pull).unwrap())
            .unwrap();
        assert_eq!(
            rack.fault_point(&serial, 0, "C_Login").unwrap(),
            Some(FaultAction::Pull)
        );
        assert_eq!(rack.serial_in(0).unwrap(), None);
    }

    #[test]
    fn delay_faults_stall_one_call_or_every_call() {
        // What a hung module or device looks like to a caller: a call that takes (far) too
        // long. The engine waits the delay out, or stops at once when the token is pulled.
        let (_dir, rack) = rack(1);
        let serial = rack.insert(0, InsertOptions::default()).unwrap();
        let once = Fault::new("C_GenerateKeyPair", 2, FaultAction::Delay { ms: 3000 }).unwrap();
        assert!(
            once.describe().contains("delay 3000 ms"),
            "{}",
            once.describe()
        );
        rack.set_fault(0, once).unwrap();
        let point = |f: &str| rack.fault_point(&serial, 0, f).unwrap();
        assert_eq!(point("C_GenerateKeyPair"), None);
        assert_eq!(
            point("C_GenerateKeyPair"),
            Some(FaultAction::Delay { ms: 3000 })
        );
        assert_eq!(point("C_GenerateKeyPair"), None);
        // A wedged token: every C_Sign stalls until the faults are cleared.
        rack.set_fault(
            0,
            Fault::new("C_Sign", 1, FaultAction::Delay { ms: 60_000 })
                .unwrap()
                .sticky(),
        )
        .unwrap();
        for _ in 0..2 {
            assert_eq!(point("C_Sign"), Some(FaultAction::Delay { ms: 60_000 }));
        }
        assert_eq!(point("C_GenerateKeyPair"), None);
        rack.clear_faults(0).unwrap();
        assert_eq!(point("C_Sign"), None);
        // The token itself stays in its slot: a stall is not a removal.
        assert_eq!(rack.serial_in(0).unwrap().as_deref(), Some(serial.as_str()));
    }

    #[test]
    fn sticky_faults_fire_until_cleared() {
        let (_dir, rack) = rack(2);
        let serial = rack.insert(1, InsertOptions::default()).unwrap();
        let fault = Fault::new("C_GetTokenInfo", 2, FaultAction::Fail { rv: 0x30 })
            .unwrap()
            .sticky();
        assert!(fault.describe().contains("#2 on"), "{}", fault.describe());
        rack.set_fault(1, fault).unwrap();
        assert_eq!(
            rack.fault_point(&serial, 1, "C_GetTokenInfo").unwrap(),
            None
        );
        for _ in 0..3 {
            assert_eq!(
                rack.fault_point(&serial, 1, "C_GetTokenInfo").unwrap(),
                Some(FaultAction::Fail { rv: 0x30 })
            );
        }
        // Still armed (and listed), other functions unaffected.
        assert_eq!(
            rack.list().unwrap()[1].token.as_ref().unwrap().faults.len(),
            1
        );
        assert_eq!(rack.fault_point(&serial, 1, "C_Login").unwrap(), None);
        rack.clear_faults(1).unwrap();
        assert_eq!(
            rack.fault_point(&serial, 1, "C_GetTokenInfo").unwrap(),
            None
        );
    }

    #[test]
    fn update_after_removal_commits_nothing() {
        let (_dir, rack) = rack(1);
        let serial = rack.insert(0, InsertOptions::default()).unwrap();
        let insertion = rack.snapshot().unwrap().unwrap().slots[0]
            .as_ref()
            .unwrap()
            .insertion;
        rack.remove(0).unwrap();
        let r = rack
            .update_token(&serial, Some((0, insertion)), |t| {
                t.init_token(b"1234", "x")
            })
            .unwrap();
        assert_eq!(r, Err(CKR_DEVICE_REMOVED));
        assert!(!rack.token(&serial).unwrap().is_initialized());
    }
}
