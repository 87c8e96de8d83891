//! One simulated Ukey: identity, PIN policy and retry counters, object storage, settings.
//!
//! This is the token's own logic, the part that would run on the hardware: PIN checks that
//! count down and lock, `C_InitToken`/`C_InitPIN`/`C_SetPIN` rules, storage limits, the
//! token-info flags. It knows nothing of processes, sessions or files; sessions and login
//! state live in the module's engine, persistence in the rack's store.

use std::collections::BTreeMap;

use cryptoki_sys::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Rv;
use super::fault::Fault;
use super::latency::LatencySettings;
use super::object::{Object, StoredObject, Template};
use super::profile::{FactoryState, ModelProfile};

/// The USB identity a token shows on the virtual bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsbIdentity {
    /// USB vendor id.
    pub vendor_id: u16,
    /// USB product id.
    pub product_id: u16,
}

/// Default USB vendor id of simulated Ukeys (not a registered vendor: a simulator's).
pub const DEFAULT_VENDOR_ID: u16 = 0x5553;
/// Default USB product id of simulated Ukeys.
pub const DEFAULT_PRODUCT_ID: u16 = 0x4b01;
/// Default USB product id of simulated SKF (国密) Ukeys: another model, so a desk's model
/// table can send them to the SKF library.
pub const DEFAULT_SKF_PRODUCT_ID: u16 = 0x4b0a;

/// What a new token is made with; a rack holds defaults, `insert` may override them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenSettings {
    /// Wrong user PINs before the user PIN locks.
    pub user_retries: u32,
    /// Wrong SO PINs before the SO PIN locks.
    pub so_retries: u32,
    /// Shortest PIN accepted.
    pub pin_min: usize,
    /// Longest PIN accepted.
    pub pin_max: usize,
    /// Most objects the token holds.
    pub max_objects: usize,
    /// Most bytes of object storage.
    pub max_bytes: usize,
    /// USB vendor id.
    pub vendor_id: u16,
    /// USB product id.
    pub product_id: u16,
    /// The interface the token's vendor library speaks (PKCS#11 or SKF).
    pub interface: Interface,
}

/// Which library reaches a token: one interface per token, as real tokens ship with their
/// vendor's library (a 国密 token with its SKF library, others with PKCS#11). The other
/// library does not see the token at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Interface {
    /// `libhsm_sim.so` (PKCS#11 v2.40).
    #[default]
    Pkcs11,
    /// `libhsm_sim_skf.so` (GM/T 0016-2012).
    Skf,
}

impl Interface {
    /// Parses `pkcs11` / `skf`.
    pub fn parse(name: &str) -> crate::Result<Interface> {
        match name.trim().to_ascii_lowercase().as_str() {
            "pkcs11" => Ok(Interface::Pkcs11),
            "skf" => Ok(Interface::Skf),
            _ => Err(crate::Error::InvalidSetting {
                name: "interface",
                reason: format!("{name:?}: expected pkcs11 or skf"),
            }),
        }
    }

    /// The interface's name.
    pub fn name(self) -> &'static str {
        match self {
            Interface::Pkcs11 => "pkcs11",
            Interface::Skf => "skf",
        }
    }
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings {
            user_retries: 6,
            so_retries: 10,
            pin_min: 4,
            pin_max: 32,
            max_objects: 48,
            max_bytes: 64 * 1024,
            vendor_id: DEFAULT_VENDOR_ID,
            product_id: DEFAULT_PRODUCT_ID,
            interface: Interface::Pkcs11,
        }
    }
}

impl TokenSettings {
    /// The defaults of an SKF token: interface `skf`, product id
    /// [`DEFAULT_SKF_PRODUCT_ID`].
    pub fn skf() -> TokenSettings {
        TokenSettings {
            interface: Interface::Skf,
            product_id: DEFAULT_SKF_PRODUCT_ID,
            ..TokenSettings::default()
        }
    }

    /// Checks the settings make sense.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |name, reason: &str| {
            Err(crate::Error::InvalidSetting {
                name,
                reason: reason.to_string(),
            })
        };
        if self.user_retries == 0 || self.so_retries == 0 {
            return bad("retries", "a retry counter starts at 1 or more");
        }
        if self.pin_min == 0 || self.pin_min > self.pin_max || self.pin_max > 255 {
            return bad("pin length", "need 1 <= min <= max <= 255");
        }
        if self.max_objects == 0 || self.max_bytes == 0 {
            return bad("storage", "a token holds at least one object and one byte");
        }
        Ok(())
    }
}

/// A salted hash of a PIN (the simulator does not keep PINs in clear).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PinHash {
    salt: String,
    hash: String,
}

impl PinHash {
    fn new(pin: &[u8]) -> PinHash {
        let mut salt = [0u8; 16];
        super::crypto::random_bytes(&mut salt);
        let salt = hex::encode(salt);
        PinHash {
            hash: Self::digest(&salt, pin),
            salt,
        }
    }

    fn digest(salt: &str, pin: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(salt.as_bytes());
        h.update(pin);
        hex::encode(h.finalize())
    }

    fn matches(&self, pin: &[u8]) -> bool {
        Self::digest(&self.salt, pin) == self.hash
    }
}

/// Which PIN a check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// The normal user (`CKU_USER`).
    User,
    /// The security officer (`CKU_SO`).
    So,
}

/// A simulated Ukey and everything stored on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Token {
    serial: String,
    label: String,
    manufacturer: String,
    model: String,
    usb: UsbIdentity,
    initialized: bool,
    so_pin: Option<PinHash>,
    user_pin: Option<PinHash>,
    pin_min: usize,
    pin_max: usize,
    user_retries_max: u32,
    so_retries_max: u32,
    user_retries_left: u32,
    so_retries_left: u32,
    max_objects: usize,
    max_bytes: usize,
    #[serde(with = "stored_objects")]
    objects: BTreeMap<u64, Object>,
    next_handle: u64,
    #[serde(default)]
    latency: LatencySettings,
    #[serde(default)]
    faults: Vec<Fault>,
    #[serde(default)]
    policy: KeyPolicy,
    /// The SKF side of an SKF token (`None`: a PKCS#11 token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    skf: Option<crate::skf::device::SkfDevice>,
    /// The vendor profile (`super::profile`) the token was made as.
    #[serde(default = "default_profile")]
    profile: String,
}

fn default_profile() -> String {
    super::profile::DEFAULT.to_string()
}

/// The token's rules about keys, beyond what the specification requires of every token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyPolicy {
    /// No key may both wrap and decrypt, nor both unwrap and encrypt: otherwise a key
    /// wrapped under it could be decrypted in clear by the same key, and a key of the
    /// caller's choosing encrypted and then unwrapped as if it came from elsewhere.
    /// Off by default (the specification allows such keys).
    pub separate_wrap_and_decrypt: bool,
}

impl KeyPolicy {
    /// Whether a key with these attributes may exist on the token:
    /// `CKR_TEMPLATE_INCONSISTENT` when it breaks a rule.
    pub fn check(&self, key: &Object) -> Result<(), Rv> {
        let both = |a, b| key.bool(a, false) && key.bool(b, false);
        if self.separate_wrap_and_decrypt
            && (both(CKA_WRAP, CKA_DECRYPT) || both(CKA_UNWRAP, CKA_ENCRYPT))
        {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
        Ok(())
    }
}

mod stored_objects {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &BTreeMap<u64, Object>, s: S) -> Result<S::Ok, S::Error> {
        let stored: BTreeMap<u64, StoredObject> =
            m.iter().map(|(k, v)| (*k, StoredObject::from(v))).collect();
        stored.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u64, Object>, D::Error> {
        let stored = BTreeMap::<u64, StoredObject>::deserialize(d)?;
        stored
            .into_iter()
            .map(|(k, v)| Object::try_from(v).map(|o| (k, o)))
            .collect::<Result<_, _>>()
            .map_err(serde::de::Error::custom)
    }
}

/// Pads or cuts `s` to exactly `n` bytes, blank padded, as PKCS#11 text fields are.
pub fn padded<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    let mut len = 0;
    for ch in s.chars() {
        let mut buf = [0u8; 4];
        let enc = ch.encode_utf8(&mut buf).as_bytes();
        if len + enc.len() > N {
            break;
        }
        out[len..len + enc.len()].copy_from_slice(enc);
        len += enc.len();
    }
    out
}

impl Token {
    /// A blank (uninitialized) token.
    pub fn blank(serial: &str, settings: &TokenSettings) -> Token {
        Token {
            serial: serial.to_string(),
            label: String::new(),
            manufacturer: "ukey-station hsm-sim".into(),
            model: match settings.interface {
                Interface::Pkcs11 => "Ukey-Sim".into(),
                Interface::Skf => "Ukey-Sim GM".into(),
            },
            usb: UsbIdentity {
                vendor_id: settings.vendor_id,
                product_id: settings.product_id,
            },
            initialized: false,
            so_pin: None,
            user_pin: None,
            pin_min: settings.pin_min,
            pin_max: settings.pin_max,
            user_retries_max: settings.user_retries,
            so_retries_max: settings.so_retries,
            user_retries_left: settings.user_retries,
            so_retries_left: settings.so_retries,
            max_objects: settings.max_objects,
            max_bytes: settings.max_bytes,
            objects: BTreeMap::new(),
            next_handle: 1,
            latency: LatencySettings::default(),
            faults: Vec::new(),
            policy: KeyPolicy::default(),
            skf: (settings.interface == Interface::Skf)
                .then(crate::skf::device::SkfDevice::factory),
            profile: default_profile(),
        }
    }

    /// A new token of the vendor profile `model`, in its factory state, with `settings`
    /// (the profile's own unless the caller overrides them).
    pub fn of_model(serial: &str, model: &ModelProfile, settings: &TokenSettings) -> Token {
        let mut t = Token::blank(serial, settings);
        t.profile = model.name.to_string();
        t.manufacturer = model.manufacturer.to_string();
        t.model = model.product.to_string();
        t.latency.profile = Some(model.latency);
        t.factory_reset();
        t
    }

    /// The vendor profile the token was made as.
    pub fn profile(&self) -> ModelProfile {
        super::profile::of_token(&self.profile)
    }

    /// Back to the state the token left the factory in: blank, or initialized with the
    /// profile's transport PINs, label and objects.
    pub fn factory_reset(&mut self) {
        self.wipe();
        let FactoryState::Initialized {
            so_pin,
            user_pin,
            label,
            objects,
        } = self.profile().factory
        else {
            return;
        };
        self.initialized = true;
        self.label = label.to_string();
        self.so_pin = Some(PinHash::new(so_pin.as_bytes()));
        self.user_pin = user_pin.map(|p| PinHash::new(p.as_bytes()));
        for o in objects {
            let mut attrs = BTreeMap::new();
            attrs.insert(CKA_CLASS, super::object::enc_ulong(CKO_DATA));
            attrs.insert(CKA_TOKEN, super::object::enc_bool(true));
            attrs.insert(CKA_PRIVATE, super::object::enc_bool(false));
            attrs.insert(CKA_MODIFIABLE, super::object::enc_bool(true));
            attrs.insert(CKA_DESTROYABLE, super::object::enc_bool(true));
            attrs.insert(CKA_LABEL, o.label.as_bytes().to_vec());
            attrs.insert(CKA_ID, hex::decode(o.id).unwrap_or_default());
            attrs.insert(CKA_APPLICATION, b"vendor demo".to_vec());
            attrs.insert(CKA_VALUE, b"factory sample".to_vec());
            // A factory object always fits: storage limits are the profile's own.
            let handle = self.next_handle;
            self.next_handle += 1;
            self.objects.insert(handle, Object::new(attrs, None));
        }
    }

    /// The interface of the token's library.
    pub fn interface(&self) -> Interface {
        if self.skf.is_some() {
            Interface::Skf
        } else {
            Interface::Pkcs11
        }
    }

    /// The SKF state of an SKF token.
    pub fn skf(&self) -> Option<&crate::skf::device::SkfDevice> {
        self.skf.as_ref()
    }

    /// The SKF state of an SKF token, to change.
    pub fn skf_mut(&mut self) -> Option<&mut crate::skf::device::SkfDevice> {
        self.skf.as_mut()
    }

    /// The token's rules about keys.
    pub fn policy(&self) -> KeyPolicy {
        self.policy
    }

    /// Changes the token's rules about keys (keys already stored stay; a key that breaks a
    /// new rule is refused when it is used).
    pub fn set_policy(&mut self, policy: KeyPolicy) {
        self.policy = policy;
    }

    /// The 16-character serial number.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The label set by `C_InitToken` (empty on a blank token).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Manufacturer string of the token info.
    pub fn manufacturer(&self) -> &str {
        &self.manufacturer
    }

    /// Model string of the token info.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// USB identity.
    pub fn usb(&self) -> UsbIdentity {
        self.usb
    }

    /// Whether `C_InitToken` has run.
    pub fn is_initialized(&self) -> bool {
        self.initialized
    }

    /// Whether the user PIN is set.
    pub fn user_pin_initialized(&self) -> bool {
        self.user_pin.is_some()
    }

    /// PIN length bounds.
    pub fn pin_bounds(&self) -> (usize, usize) {
        (self.pin_min, self.pin_max)
    }

    /// Retries left and maximum, for the user or the SO.
    pub fn retries(&self, who: Who) -> (u32, u32) {
        match who {
            Who::User => (self.user_retries_left, self.user_retries_max),
            Who::So => (self.so_retries_left, self.so_retries_max),
        }
    }

    /// Storage limits: (objects, bytes).
    pub fn limits(&self) -> (usize, usize) {
        (self.max_objects, self.max_bytes)
    }

    /// Bytes used by stored objects.
    pub fn used_bytes(&self) -> usize {
        self.objects.values().map(Object::size).sum()
    }

    /// The token's latency settings.
    pub fn latency(&self) -> &LatencySettings {
        &self.latency
    }

    /// Mutable latency settings.
    pub fn latency_mut(&mut self) -> &mut LatencySettings {
        &mut self.latency
    }

    /// Armed faults.
    pub fn faults(&self) -> &[Fault] {
        &self.faults
    }

    /// Mutable armed faults.
    pub fn faults_mut(&mut self) -> &mut Vec<Fault> {
        &mut self.faults
    }

    /// `CKF_…` flags of `CK_TOKEN_INFO`.
    pub fn flags(&self) -> CK_FLAGS {
        let mut f = CKF_RNG | CKF_LOGIN_REQUIRED;
        if self.initialized {
            f |= CKF_TOKEN_INITIALIZED;
        }
        if self.user_pin.is_some() {
            f |= CKF_USER_PIN_INITIALIZED;
        }
        f |= counter_flags(
            self.user_retries_left,
            self.user_retries_max,
            [
                CKF_USER_PIN_COUNT_LOW,
                CKF_USER_PIN_FINAL_TRY,
                CKF_USER_PIN_LOCKED,
            ],
        );
        f |= counter_flags(
            self.so_retries_left,
            self.so_retries_max,
            [
                CKF_SO_PIN_COUNT_LOW,
                CKF_SO_PIN_FINAL_TRY,
                CKF_SO_PIN_LOCKED,
            ],
        );
        f
    }

    fn check_len(&self, pin: &[u8]) -> Result<(), Rv> {
        if pin.len() < self.pin_min || pin.len() > self.pin_max {
            return Err(CKR_PIN_LEN_RANGE);
        }
        Ok(())
    }

    /// Checks a PIN, counting down on a wrong one. The wrong attempt that uses the last try
    /// returns `CKR_PIN_INCORRECT`; every attempt after that `CKR_PIN_LOCKED`.
    pub fn verify_pin(&mut self, who: Who, pin: &[u8]) -> Result<(), Rv> {
        let (hash, left, max) = match who {
            Who::User => (
                &self.user_pin,
                &mut self.user_retries_left,
                self.user_retries_max,
            ),
            Who::So => (&self.so_pin, &mut self.so_retries_left, self.so_retries_max),
        };
        let Some(hash) = hash else {
            return Err(match who {
                Who::User => CKR_USER_PIN_NOT_INITIALIZED,
                Who::So => CKR_TOKEN_NOT_RECOGNIZED,
            });
        };
        if *left == 0 {
            return Err(CKR_PIN_LOCKED);
        }
        if hash.matches(pin) {
            *left = max;
            Ok(())
        } else {
            *left -= 1;
            Err(CKR_PIN_INCORRECT)
        }
    }

    /// `C_InitToken`: on a blank token sets the SO PIN; on an initialized one needs the SO
    /// PIN. Either way all objects go, the user PIN is unset, the label is set.
    pub fn init_token(&mut self, so_pin: &[u8], label: &str) -> Result<(), Rv> {
        if self.initialized {
            self.verify_pin(Who::So, so_pin)?;
        } else {
            self.check_len(so_pin)?;
            self.so_pin = Some(PinHash::new(so_pin));
        }
        self.initialized = true;
        self.label = label.trim_end_matches([' ', '\0']).to_string();
        self.user_pin = None;
        self.user_retries_left = self.user_retries_max;
        self.so_retries_left = self.so_retries_max;
        self.objects.clear();
        Ok(())
    }

    /// `C_InitPIN` (by the SO): sets the user PIN and resets its retry counter (unlocks it).
    pub fn init_pin(&mut self, pin: &[u8]) -> Result<(), Rv> {
        self.check_len(pin)?;
        self.user_pin = Some(PinHash::new(pin));
        self.user_retries_left = self.user_retries_max;
        Ok(())
    }

    /// `C_SetPIN`: changes `who`'s PIN after checking the old one (which counts down).
    pub fn set_pin(&mut self, who: Who, old: &[u8], new: &[u8]) -> Result<(), Rv> {
        self.verify_pin(who, old)?;
        self.check_len(new)?;
        match who {
            Who::User => self.user_pin = Some(PinHash::new(new)),
            Who::So => self.so_pin = Some(PinHash::new(new)),
        }
        Ok(())
    }

    /// Wipes the token back to blank (the platform's last resort for a locked SO PIN).
    pub fn wipe(&mut self) {
        self.initialized = false;
        self.label.clear();
        self.so_pin = None;
        self.user_pin = None;
        self.user_retries_left = self.user_retries_max;
        self.so_retries_left = self.so_retries_max;
        self.objects.clear();
        if self.skf.is_some() {
            self.skf = Some(crate::skf::device::SkfDevice::factory());
        }
    }

    /// Stores a new token object; `CKR_DEVICE_MEMORY` when it does not fit.
    pub fn add_object(&mut self, object: Object) -> Result<u64, Rv> {
        self.check_room(&[&object], 0)?;
        let handle = self.next_handle;
        self.next_handle += 1;
        self.objects.insert(handle, object);
        Ok(handle)
    }

    /// `CKR_DEVICE_MEMORY` unless `new` fit beside what is stored (minus `freed` bytes).
    pub fn check_room(&self, new: &[&Object], freed: usize) -> Result<(), Rv> {
        let count = self.objects.len() + new.len();
        let bytes = self.used_bytes() + new.iter().map(|o| o.size()).sum::<usize>();
        if count > self.max_objects || bytes.saturating_sub(freed) > self.max_bytes {
            return Err(CKR_DEVICE_MEMORY);
        }
        Ok(())
    }

    /// A stored object.
    pub fn object(&self, handle: u64) -> Option<&Object> {
        self.objects.get(&handle)
    }

    /// A stored object, to change.
    pub fn object_mut(&mut self, handle: u64) -> Option<&mut Object> {
        self.objects.get_mut(&handle)
    }

    /// Replaces a stored object, checking storage.
    pub fn replace_object(&mut self, handle: u64, object: Object) -> Result<(), Rv> {
        let old = self.objects.get(&handle).ok_or(CKR_OBJECT_HANDLE_INVALID)?;
        let freed = old.size();
        let count_ok = self.objects.len() <= self.max_objects;
        if !count_ok || self.used_bytes() - freed + object.size() > self.max_bytes {
            return Err(CKR_DEVICE_MEMORY);
        }
        self.objects.insert(handle, object);
        Ok(())
    }

    /// Removes a stored object.
    pub fn destroy_object(&mut self, handle: u64) -> Result<(), Rv> {
        self.objects
            .remove(&handle)
            .map(|_| ())
            .ok_or(CKR_OBJECT_HANDLE_INVALID)
    }

    /// All stored objects with their handles.
    pub fn objects(&self) -> impl Iterator<Item = (u64, &Object)> {
        self.objects.iter().map(|(h, o)| (*h, o))
    }

    /// Handles of stored objects matching `template`, private ones only if `see_private`.
    pub fn find(&self, template: &Template, see_private: bool) -> Vec<u64> {
        self.objects
            .iter()
            .filter(|(_, o)| see_private || !o.is_private())
            .filter(|(_, o)| o.matches(template))
            .map(|(h, _)| *h)
            .collect()
    }
}

fn counter_flags(left: u32, max: u32, [low, last, locked]: [CK_FLAGS; 3]) -> CK_FLAGS {
    match left {
        0 => locked,
        1 => last | if max > 1 { low } else { 0 },
        l if l < max => low,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn token() -> Token {
        let mut t = Token::blank("0123456789ABCDEF", &TokenSettings::default());
        t.init_token(b"so-pin-1", "label").unwrap();
        t.init_pin(b"1234").unwrap();
        t
    }

    #[test]
    fn blank_token_has_no_initialized_flags() {
        let t = Token::blank("0123456789ABCDEF", &TokenSettings::default());
        assert_eq!(t.flags() & CKF_TOKEN_INITIALIZED, 0);
        assert_eq!(t.flags() & CKF_USER_PIN_INITIALIZED, 0);
        assert_ne!(t.flags() & CKF_RNG, 0);
    }

    #[test]
    fn user_pin_counts_down_and_locks() {
        let mut t = token();
        assert_eq!(t.verify_pin(Who::User, b"0000"), Err(CKR_PIN_INCORRECT));
        assert_ne!(t.flags() & CKF_USER_PIN_COUNT_LOW, 0);
        for _ in 0..4 {
            assert_eq!(t.verify_pin(Who::User, b"0000"), Err(CKR_PIN_INCORRECT));
        }
        assert_ne!(t.flags() & CKF_USER_PIN_FINAL_TRY, 0);
        assert_eq!(t.verify_pin(Who::User, b"0000"), Err(CKR_PIN_INCORRECT));
        assert_ne!(t.flags() & CKF_USER_PIN_LOCKED, 0);
        assert_eq!(t.verify_pin(Who::User, b"1234"), Err(CKR_PIN_LOCKED));
        t.init_pin(b"5678").unwrap();
        assert_eq!(t.flags() & CKF_USER_PIN_LOCKED, 0);
        assert_eq!(t.verify_pin(Who::User, b"5678"), Ok(()));
    }

    #[test]
    fn right_pin_resets_counter() {
        let mut t = token();
        assert!(t.verify_pin(Who::User, b"0000").is_err());
        t.verify_pin(Who::User, b"1234").unwrap();
        assert_eq!(t.retries(Who::User), (6, 6));
        assert_eq!(t.flags() & CKF_USER_PIN_COUNT_LOW, 0);
    }

    #[test]
    fn init_token_needs_so_pin_and_wipes() {
        let mut t = token();
        let o = Object::default();
        t.add_object(o).unwrap();
        assert_eq!(t.init_token(b"wrong-pin", "x"), Err(CKR_PIN_INCORRECT));
        assert_eq!(t.objects().count(), 1);
        t.init_token(b"so-pin-1", "new").unwrap();
        assert_eq!(t.objects().count(), 0);
        assert!(!t.user_pin_initialized());
        assert_eq!(t.label(), "new");
    }

    #[test]
    fn pin_length_policy() {
        let mut t = token();
        assert_eq!(t.init_pin(b"12"), Err(CKR_PIN_LEN_RANGE));
        assert_eq!(
            t.set_pin(Who::User, b"1234", &[b'1'; 40]),
            Err(CKR_PIN_LEN_RANGE)
        );
    }

    #[test]
    fn storage_is_finite() {
        let settings = TokenSettings {
            max_objects: 2,
            ..TokenSettings::default()
        };
        let mut t = Token::blank("0123456789ABCDEF", &settings);
        t.add_object(Object::default()).unwrap();
        t.add_object(Object::default()).unwrap();
        assert_eq!(t.add_object(Object::default()), Err(CKR_DEVICE_MEMORY));
    }
}
