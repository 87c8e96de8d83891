//! The SKF side of one simulated Ukey, as the token itself would keep it: the device
//! authentication key, the label, applications with an administrator and a user PIN whose
//! retry counters lock, containers with a signing and an encryption SM2 key pair and their
//! certificates.
//!
//! Pure state and rules, stored inside the token's file (`tokens/<SERIAL>.json`, field
//! `skf`). Handles, the secure state after `SKF_VerifyPIN` and device authentication belong
//! to the process and live in [`super::engine`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::consts::*;

/// The device authentication key of a fresh token: the 16 ASCII bytes `1234567812345678`
/// (the factory key several vendors ship; a production desk replaces it).
pub const FACTORY_DEV_AUTH_KEY: &[u8; 16] = b"1234567812345678";
/// Most applications on one device.
pub const MAX_APPS: usize = 8;
/// Most containers in one application.
pub const MAX_CONTAINERS: usize = 16;
/// Longest application or container name, in bytes (without the terminating NUL).
pub const MAX_NAME: usize = 48;
/// Longest certificate, in bytes.
pub const MAX_CERT: usize = 8 * 1024;
/// Most retries a PIN may be given.
pub const MAX_RETRIES: u32 = 15;
/// Longest label, in bytes (`DEVINFO.Label` holds 32 with the NUL).
pub const MAX_LABEL: usize = 31;

/// Which PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinType {
    /// The administrator (SO) PIN (`ADMIN_TYPE`).
    Admin,
    /// The user PIN (`USER_TYPE`).
    User,
}

impl PinType {
    /// From `ulPINType`: `SAR_USER_TYPE_INVALID` for anything but 0 and 1.
    pub fn from_ulong(t: u32) -> Result<PinType, Sar> {
        match t {
            ADMIN_TYPE => Ok(PinType::Admin),
            USER_TYPE => Ok(PinType::User),
            _ => Err(SAR_USER_TYPE_INVALID),
        }
    }
}

/// A PIN as the token keeps it: a salted hash and its counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pin {
    salt: String,
    hash: String,
    max: u32,
    left: u32,
    /// Still the PIN the application was created with (`bDefaultPin` of `SKF_GetPINInfo`).
    default: bool,
}

impl Pin {
    fn new(pin: &[u8], max: u32) -> Pin {
        let mut salt = [0u8; 16];
        crate::rack::crypto::random_bytes(&mut salt);
        let salt = hex::encode(salt);
        Pin {
            hash: Self::digest(&salt, pin),
            salt,
            max,
            left: max,
            default: true,
        }
    }

    fn digest(salt: &str, pin: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(salt.as_bytes());
        h.update(pin);
        hex::encode(h.finalize())
    }

    /// Checks a PIN: a right one resets the counter; a wrong one counts down, and the one
    /// that uses the last try locks the PIN (`SAR_PIN_LOCKED`, as the device then is).
    fn check(&mut self, pin: &[u8]) -> Result<(), Sar> {
        if self.left == 0 {
            return Err(SAR_PIN_LOCKED);
        }
        if Self::digest(&self.salt, pin) == self.hash {
            self.left = self.max;
            return Ok(());
        }
        self.left -= 1;
        Err(if self.left == 0 {
            SAR_PIN_LOCKED
        } else {
            SAR_PIN_INCORRECT
        })
    }

    fn set(&mut self, pin: &[u8]) {
        let fresh = Pin::new(pin, self.max);
        self.salt = fresh.salt;
        self.hash = fresh.hash;
        self.left = self.max;
        self.default = false;
    }
}

/// An SM2 key pair as stored (the simulator keeps `d` in plain hex: never a real secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    private: String,
    public: String,
}

impl StoredKey {
    /// Stores a key pair.
    pub fn new(d: &[u8; 32], public: &[u8; 64]) -> StoredKey {
        StoredKey {
            private: hex::encode(d),
            public: hex::encode(public),
        }
    }

    /// The private scalar.
    pub fn private(&self) -> Result<Zeroizing<[u8; 32]>, Sar> {
        let mut d = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(&self.private, &mut d[..]).map_err(|_| SAR_FAIL)?;
        Ok(d)
    }

    /// The public key `x‖y`.
    pub fn public(&self) -> Result<[u8; 64], Sar> {
        let mut p = [0u8; 64];
        hex::decode_to_slice(&self.public, &mut p).map_err(|_| SAR_FAIL)?;
        Ok(p)
    }
}

/// A container: a signing and an encryption key pair, each with its certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sign: Option<StoredKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enc: Option<StoredKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sign_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enc_cert: Option<String>,
}

impl Container {
    /// The signing (`true`) or encryption key pair.
    pub fn key(&self, sign: bool) -> Option<&StoredKey> {
        if sign {
            self.sign.as_ref()
        } else {
            self.enc.as_ref()
        }
    }

    /// Sets a key pair; a new key makes the certificate of that slot go (it certified the
    /// old key).
    pub fn set_key(&mut self, sign: bool, key: StoredKey) {
        if sign {
            self.sign = Some(key);
            self.sign_cert = None;
        } else {
            self.enc = Some(key);
            self.enc_cert = None;
        }
    }

    /// The certificate of the signing (`true`) or encryption key pair, DER as imported.
    pub fn cert(&self, sign: bool) -> Option<Vec<u8>> {
        let c = if sign {
            &self.sign_cert
        } else {
            &self.enc_cert
        };
        c.as_deref().and_then(|h| hex::decode(h).ok())
    }

    fn set_cert(&mut self, sign: bool, der: &[u8]) {
        let c = Some(hex::encode(der));
        if sign {
            self.sign_cert = c;
        } else {
            self.enc_cert = c;
        }
    }

    /// `SKF_GetContainerType`.
    pub fn kind(&self) -> u32 {
        if self.sign.is_some() || self.enc.is_some() {
            CONTAINER_ECC
        } else {
            CONTAINER_EMPTY
        }
    }

    fn size(&self) -> usize {
        let key = |k: &Option<StoredKey>| if k.is_some() { 96 } else { 0 };
        let cert = |c: &Option<String>| c.as_ref().map_or(0, |h| h.len() / 2);
        64 + key(&self.sign) + key(&self.enc) + cert(&self.sign_cert) + cert(&self.enc_cert)
    }
}

/// An application: two PINs, file rights, containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    admin: Pin,
    user: Pin,
    create_file_rights: u32,
    containers: BTreeMap<String, Container>,
}

impl Application {
    fn pin(&mut self, t: PinType) -> &mut Pin {
        match t {
            PinType::Admin => &mut self.admin,
            PinType::User => &mut self.user,
        }
    }

    /// Retries left of a PIN.
    pub fn retries_left(&self, t: PinType) -> u32 {
        match t {
            PinType::Admin => self.admin.left,
            PinType::User => self.user.left,
        }
    }

    /// Containers by name.
    pub fn containers(&self) -> &BTreeMap<String, Container> {
        &self.containers
    }

    fn size(&self) -> usize {
        128 + self.containers.values().map(Container::size).sum::<usize>()
    }
}

/// The SKF state of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkfDevice {
    dev_auth_key: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    apps: BTreeMap<String, Application>,
}

impl Default for SkfDevice {
    fn default() -> Self {
        SkfDevice::factory()
    }
}

/// What `SKF_CreateApplication` is given.
#[derive(Debug, Clone, Copy)]
pub struct NewApplication<'a> {
    /// Application name.
    pub name: &'a [u8],
    /// Administrator PIN.
    pub admin_pin: &'a [u8],
    /// Its retries.
    pub admin_retries: u32,
    /// User PIN.
    pub user_pin: &'a [u8],
    /// Its retries.
    pub user_retries: u32,
    /// Who may create files (`SECURE_…_ACCOUNT`).
    pub create_file_rights: u32,
}

/// Checks an application or container name: 1 to [`MAX_NAME`] bytes of UTF-8.
pub fn check_name(name: &[u8], invalid: Sar) -> Result<String, Sar> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(SAR_NAMELENERR);
    }
    String::from_utf8(name.to_vec()).map_err(|_| invalid)
}

impl SkfDevice {
    /// A device as it leaves the factory: the factory authentication key, no application.
    pub fn factory() -> SkfDevice {
        SkfDevice {
            dev_auth_key: hex::encode(FACTORY_DEV_AUTH_KEY),
            label: String::new(),
            apps: BTreeMap::new(),
        }
    }

    /// The device authentication key (SM4, 16 bytes).
    pub fn dev_auth_key(&self) -> Result<Zeroizing<[u8; 16]>, Sar> {
        let mut k = Zeroizing::new([0u8; 16]);
        hex::decode_to_slice(&self.dev_auth_key, &mut k[..]).map_err(|_| SAR_FAIL)?;
        Ok(k)
    }

    /// `SKF_ChangeDevAuthKey` (after device authentication): a 16-byte SM4 key.
    pub fn set_dev_auth_key(&mut self, key: &[u8]) -> Result<(), Sar> {
        if key.len() != 16 {
            return Err(SAR_INVALIDPARAMERR);
        }
        self.dev_auth_key = hex::encode(key);
        Ok(())
    }

    /// The label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// `SKF_SetLabel`: at most [`MAX_LABEL`] bytes of UTF-8.
    pub fn set_label(&mut self, label: &[u8]) -> Result<(), Sar> {
        if label.len() > MAX_LABEL {
            return Err(SAR_INDATALENERR);
        }
        self.label = String::from_utf8(label.to_vec()).map_err(|_| SAR_INVALIDPARAMERR)?;
        Ok(())
    }

    /// Applications by name.
    pub fn apps(&self) -> &BTreeMap<String, Application> {
        &self.apps
    }

    /// Bytes of storage in use.
    pub fn used_bytes(&self) -> usize {
        self.apps.values().map(Application::size).sum()
    }

    fn room(&self, extra: usize, capacity: usize) -> Result<(), Sar> {
        if self.used_bytes() + extra > capacity {
            return Err(SAR_NO_ROOM);
        }
        Ok(())
    }

    fn app_mut(&mut self, name: &str) -> Result<&mut Application, Sar> {
        self.apps.get_mut(name).ok_or(SAR_APPLICATION_NOT_EXISTS)
    }

    /// An application.
    pub fn app(&self, name: &str) -> Result<&Application, Sar> {
        self.apps.get(name).ok_or(SAR_APPLICATION_NOT_EXISTS)
    }

    /// `SKF_CreateApplication` (after device authentication). PIN lengths are checked by
    /// the caller against the token's bounds.
    pub fn create_app(&mut self, new: NewApplication<'_>, capacity: usize) -> Result<String, Sar> {
        let name = check_name(new.name, SAR_APPLICATION_NAME_INVALID)?;
        if self.apps.contains_key(&name) {
            return Err(SAR_APPLICATION_EXISTS);
        }
        let retries = 1..=MAX_RETRIES;
        if !retries.contains(&new.admin_retries) || !retries.contains(&new.user_retries) {
            return Err(SAR_INVALIDPARAMERR);
        }
        if self.apps.len() >= MAX_APPS {
            return Err(SAR_NO_ROOM);
        }
        self.room(128, capacity)?;
        self.apps.insert(
            name.clone(),
            Application {
                admin: Pin::new(new.admin_pin, new.admin_retries),
                user: Pin::new(new.user_pin, new.user_retries),
                create_file_rights: new.create_file_rights,
                containers: BTreeMap::new(),
            },
        );
        Ok(name)
    }

    /// `SKF_DeleteApplication` (after device authentication).
    pub fn delete_app(&mut self, name: &str) -> Result<(), Sar> {
        self.apps
            .remove(name)
            .map(|_| ())
            .ok_or(SAR_APPLICATION_NOT_EXISTS)
    }

    /// `SKF_VerifyPIN`: `Err` carries the retries left.
    pub fn verify_pin(&mut self, app: &str, t: PinType, pin: &[u8]) -> Result<(), (Sar, u32)> {
        let a = self.app_mut(app).map_err(|e| (e, 0))?;
        let p = a.pin(t);
        p.check(pin).map_err(|e| (e, p.left))
    }

    /// `SKF_ChangePIN`: the old PIN counts down when wrong; `Err` carries the retries left.
    pub fn change_pin(
        &mut self,
        app: &str,
        t: PinType,
        old: &[u8],
        new: &[u8],
    ) -> Result<(), (Sar, u32)> {
        let a = self.app_mut(app).map_err(|e| (e, 0))?;
        let p = a.pin(t);
        p.check(old).map_err(|e| (e, p.left))?;
        p.set(new);
        Ok(())
    }

    /// `SKF_GetPINInfo`: (maximum, left, still the initial PIN).
    pub fn pin_info(&self, app: &str, t: PinType) -> Result<(u32, u32, bool), Sar> {
        let a = self.app(app)?;
        let p = match t {
            PinType::Admin => &a.admin,
            PinType::User => &a.user,
        };
        Ok((p.max, p.left, p.default))
    }

    /// `SKF_UnblockPIN`: the administrator PIN (counting down when wrong) sets a new user
    /// PIN and resets its counter. `Err` carries the administrator's retries left.
    pub fn unblock(&mut self, app: &str, admin: &[u8], new_user: &[u8]) -> Result<(), (Sar, u32)> {
        let a = self.app_mut(app).map_err(|e| (e, 0))?;
        a.admin.check(admin).map_err(|e| (e, a.admin.left))?;
        a.user.set(new_user);
        Ok(())
    }

    /// `SKF_CreateContainer`.
    pub fn create_container(
        &mut self,
        app: &str,
        name: &[u8],
        capacity: usize,
    ) -> Result<String, Sar> {
        let name = check_name(name, SAR_INVALIDPARAMERR)?;
        self.room(64, capacity)?;
        let a = self.app_mut(app)?;
        if a.containers.contains_key(&name) {
            return Err(SAR_FILE_ALREADY_EXIST);
        }
        if a.containers.len() >= MAX_CONTAINERS {
            return Err(SAR_REACH_MAX_CONTAINER_COUNT);
        }
        a.containers.insert(name.clone(), Container::default());
        Ok(name)
    }

    /// `SKF_DeleteContainer`: keys and certificates go with it.
    pub fn delete_container(&mut self, app: &str, name: &str) -> Result<(), Sar> {
        self.app_mut(app)?
            .containers
            .remove(name)
            .map(|_| ())
            .ok_or(SAR_FILE_NOT_EXIST)
    }

    /// A container.
    pub fn container(&self, app: &str, name: &str) -> Result<&Container, Sar> {
        self.app(app)?
            .containers
            .get(name)
            .ok_or(SAR_FILE_NOT_EXIST)
    }

    fn container_mut(&mut self, app: &str, name: &str) -> Result<&mut Container, Sar> {
        self.app_mut(app)?
            .containers
            .get_mut(name)
            .ok_or(SAR_FILE_NOT_EXIST)
    }

    /// Stores a key pair in a container (generated or imported).
    pub fn set_key(
        &mut self,
        app: &str,
        name: &str,
        sign: bool,
        key: StoredKey,
        capacity: usize,
    ) -> Result<(), Sar> {
        self.room(96, capacity)?;
        self.container_mut(app, name)?.set_key(sign, key);
        Ok(())
    }

    /// `SKF_ImportCertificate`: 1 to [`MAX_CERT`] bytes, stored as given (as a token does:
    /// it does not parse certificates); replaces the slot's certificate.
    pub fn set_cert(
        &mut self,
        app: &str,
        name: &str,
        sign: bool,
        der: &[u8],
        capacity: usize,
    ) -> Result<(), Sar> {
        if der.is_empty() || der.len() > MAX_CERT {
            return Err(SAR_INDATALENERR);
        }
        let old = self.container(app, name)?.cert(sign).map_or(0, |c| c.len());
        self.room(der.len().saturating_sub(old), capacity)?;
        self.container_mut(app, name)?.set_cert(sign, der);
        Ok(())
    }
}

impl SkfDevice {
    /// Whether the device key is still the factory key.
    pub fn has_factory_key(&self) -> bool {
        self.dev_auth_key == hex::encode(FACTORY_DEV_AUTH_KEY)
    }

    /// The state `hsm-sim list` shows: `blank` (no application), `so-locked` or
    /// `user-locked` (some application's PIN locked), else `ready`.
    pub fn state(&self) -> &'static str {
        let locked = |t| self.apps.values().any(|a| a.retries_left(t) == 0);
        if self.apps.is_empty() {
            "blank"
        } else if locked(PinType::Admin) {
            "so-locked"
        } else if locked(PinType::User) {
            "user-locked"
        } else {
            "ready"
        }
    }

    /// Human description for `hsm-sim show`: applications, PIN counters, containers, public
    /// keys and certificate sizes (never private keys, PINs or the device key).
    pub fn describe(&self) -> String {
        let mut out = format!(
            "SKF device label {:?}, device key {}\n",
            self.label,
            if self.has_factory_key() {
                "factory"
            } else {
                "changed"
            }
        );
        for (name, a) in &self.apps {
            out += &format!(
                "application {name:?}: admin PIN {}/{} user PIN {}/{}\n",
                a.admin.left, a.admin.max, a.user.left, a.user.max
            );
            for (cname, c) in &a.containers {
                out += &format!("  container {cname:?}\n");
                for (sign, what) in [(true, "signing"), (false, "encryption")] {
                    if let Some(k) = c.key(sign) {
                        out += &format!("    {what} key SM2 x||y {}\n", k.public);
                    }
                    if let Some(cert) = c.cert(sign) {
                        out += &format!("    {what} certificate {} bytes\n", cert.len());
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn device() -> SkfDevice {
        let mut d = SkfDevice::factory();
        d.create_app(
            NewApplication {
                name: b"ukey",
                admin_pin: b"admin-pin",
                admin_retries: 3,
                user_pin: b"123456",
                user_retries: 3,
                create_file_rights: SECURE_USER_ACCOUNT,
            },
            64 * 1024,
        )
        .unwrap();
        d
    }

    #[test]
    fn factory_device_has_the_documented_key_and_no_application() {
        let d = SkfDevice::factory();
        assert_eq!(&*d.dev_auth_key().unwrap(), FACTORY_DEV_AUTH_KEY);
        assert!(d.apps().is_empty());
    }

    #[test]
    fn user_pin_counts_down_locks_and_unblocks() {
        let mut d = device();
        assert_eq!(
            d.verify_pin("ukey", PinType::User, b"000000"),
            Err((SAR_PIN_INCORRECT, 2))
        );
        assert_eq!(
            d.verify_pin("ukey", PinType::User, b"000000"),
            Err((SAR_PIN_INCORRECT, 1))
        );
        assert_eq!(
            d.verify_pin("ukey", PinType::User, b"000000"),
            Err((SAR_PIN_LOCKED, 0))
        );
        assert_eq!(
            d.verify_pin("ukey", PinType::User, b"123456"),
            Err((SAR_PIN_LOCKED, 0))
        );
        assert_eq!(d.pin_info("ukey", PinType::User).unwrap(), (3, 0, true));
        assert_eq!(
            d.unblock("ukey", b"wrong", b"654321"),
            Err((SAR_PIN_INCORRECT, 2))
        );
        d.unblock("ukey", b"admin-pin", b"654321").unwrap();
        assert_eq!(d.pin_info("ukey", PinType::User).unwrap(), (3, 3, false));
        assert_eq!(d.pin_info("ukey", PinType::Admin).unwrap(), (3, 3, true));
        d.verify_pin("ukey", PinType::User, b"654321").unwrap();
    }

    #[test]
    fn admin_pin_locks_for_good() {
        let mut d = device();
        for left in [2, 1] {
            assert_eq!(
                d.change_pin("ukey", PinType::Admin, b"x", b"y"),
                Err((SAR_PIN_INCORRECT, left))
            );
        }
        assert_eq!(d.unblock("ukey", b"x", b"111111"), Err((SAR_PIN_LOCKED, 0)));
        assert_eq!(
            d.unblock("ukey", b"admin-pin", b"111111"),
            Err((SAR_PIN_LOCKED, 0))
        );
    }

    #[test]
    fn containers_names_and_limits() {
        let mut d = device();
        assert_eq!(
            d.create_app(
                NewApplication {
                    name: b"ukey",
                    admin_pin: b"a",
                    admin_retries: 3,
                    user_pin: b"b",
                    user_retries: 3,
                    create_file_rights: 0
                },
                1 << 20
            ),
            Err(SAR_APPLICATION_EXISTS)
        );
        assert_eq!(
            d.create_container("ukey", &[b'c'; 49], 1 << 20),
            Err(SAR_NAMELENERR)
        );
        assert_eq!(
            d.create_container("nope", b"c", 1 << 20),
            Err(SAR_APPLICATION_NOT_EXISTS)
        );
        for i in 0..MAX_CONTAINERS {
            d.create_container("ukey", format!("c{i}").as_bytes(), 1 << 20)
                .unwrap();
        }
        assert_eq!(
            d.create_container("ukey", b"c0", 1 << 20),
            Err(SAR_FILE_ALREADY_EXIST)
        );
        assert_eq!(
            d.create_container("ukey", b"more", 1 << 20),
            Err(SAR_REACH_MAX_CONTAINER_COUNT)
        );
        assert_eq!(
            d.set_cert("ukey", "c0", true, &[0x30; 100], 10),
            Err(SAR_NO_ROOM)
        );
        d.set_cert("ukey", "c0", true, &[0x30; 100], 1 << 20)
            .unwrap();
        assert_eq!(
            d.container("ukey", "c0").unwrap().cert(true).unwrap().len(),
            100
        );
        assert_eq!(d.container("ukey", "c0").unwrap().cert(false), None);
        d.delete_container("ukey", "c0").unwrap();
        assert_eq!(d.container("ukey", "c0"), Err(SAR_FILE_NOT_EXIST));
    }
}
