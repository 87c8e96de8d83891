//! Helpers shared by the hsm-sim tests: a rack in a temporary directory, the module loaded
//! through cryptoki, and the usual templates.
#![allow(dead_code, unsafe_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use hsm_sim::rack::{InsertOptions, Rack, RackConfig};
use tempfile::TempDir;

/// DER OID of prime256v1.
pub const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
pub const SO_PIN: &str = "so-secret-1";
pub const USER_PIN: &str = "123456";

/// A rack of `slots` slots in a fresh temporary directory.
pub struct SimRack {
    pub dir: TempDir,
    pub rack: Rack,
}

impl SimRack {
    pub fn new(slots: usize) -> SimRack {
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
        SimRack { dir, rack }
    }

    /// Plugs a blank token into `slot`; returns its serial.
    pub fn insert(&self, slot: usize) -> String {
        self.rack.insert(slot, InsertOptions::default()).unwrap()
    }

    /// Re-plugs a known token.
    pub fn reinsert(&self, slot: usize, serial: &str) {
        self.rack
            .insert(
                slot,
                InsertOptions {
                    serial: Some(serial.to_string()),
                    ..Default::default()
                },
            )
            .unwrap();
    }

    /// Loads libhsm_sim.so in this process, pointed at this rack.
    pub fn load(&self) -> Pkcs11 {
        load_sim(self.dir.path())
    }
}

/// Loads the module with `HSM_SIM_DIR` = `dir`. Call before starting threads (nextest runs
/// each test in its own process).
pub fn load_sim(dir: &Path) -> Pkcs11 {
    // SAFETY: tests call this first, before they start threads; nextest runs one test per
    // process, so no other thread reads the environment meanwhile.
    unsafe { std::env::set_var("HSM_SIM_DIR", dir) };
    let p = Pkcs11::new(ukey_tests::hsm_sim_module()).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    p
}

/// The return code inside a cryptoki error (panics on other errors).
pub fn rv_of(e: Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("expected a PKCS#11 error, got {other:?}"),
    }
}

/// Asserts that `r` failed with `want`.
#[track_caller]
pub fn expect_rv<T: std::fmt::Debug>(r: cryptoki::error::Result<T>, want: RvError) {
    match r {
        Err(e) => assert_eq!(rv_of(e), want),
        Ok(v) => panic!("expected {want:?}, got Ok({v:?})"),
    }
}

pub fn pin(s: &str) -> AuthPin {
    AuthPin::from(s)
}

/// Initializes the token in `slot` and sets its user PIN.
pub fn init_token(p: &Pkcs11, slot: Slot, label: &str) {
    p.init_token(slot, &pin(SO_PIN), label).unwrap();
    let s = p.open_rw_session(slot).unwrap();
    s.login(UserType::So, Some(&pin(SO_PIN))).unwrap();
    s.init_pin(&pin(USER_PIN)).unwrap();
    s.logout().unwrap();
}

/// A logged-in read/write user session.
pub fn user_session(p: &Pkcs11, slot: Slot) -> Session {
    let s = p.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&pin(USER_PIN))).unwrap();
    s
}

/// Generates a P-256 key pair the way the agent does (token, private, sensitive,
/// non-extractable private key).
pub fn ec_keypair(s: &Session, label: &str, id: &[u8]) -> (ObjectHandle, ObjectHandle) {
    let public = [
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::EcParams(P256.to_vec()),
        Attribute::Verify(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    let private = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Derive(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
        .unwrap()
}

/// The uncompressed point of an EC public key object (accepting DER-wrapped or raw).
pub fn ec_point(s: &Session, public: ObjectHandle) -> Vec<u8> {
    let attrs = s.get_attributes(public, &[AttributeType::EcPoint]).unwrap();
    match attrs.first() {
        Some(Attribute::EcPoint(p)) if p.len() == 67 && p[0] == 0x04 && p[1] == 0x41 => {
            p[2..].to_vec()
        }
        Some(Attribute::EcPoint(p)) => p.clone(),
        other => panic!("no EC point: {other:?}"),
    }
}

/// Objects with `label` on the token.
pub fn find_label(s: &Session, label: &str) -> Vec<ObjectHandle> {
    s.find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .unwrap()
}

/// Private keys visible in this session.
pub fn private_keys(s: &Session) -> Vec<ObjectHandle> {
    s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
        .unwrap()
}

/// The hsm-sim CLI binary.
pub fn cli(dir: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(ukey_tests::workspace_binary("hsm-sim"));
    c.arg("--dir").arg(dir).env_remove("HSM_SIM_DIR");
    c
}
