//! Helpers shared by the hsm-sim tests: a rack in a temporary directory, the module loaded
//! through cryptoki (in a child process of the test binary that has the rack in its
//! environment, see [`SimRack::in_child`]), and the usual templates.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use hsm_sim::rack::{DIR_ENV, InsertOptions, Rack, RackConfig};
use tempfile::TempDir;

/// Marks a child process started by [`SimRack::in_child`]: the rack folder its parent made
/// (and `HSM_SIM_DIR` names).
const CHILD_RACK_ENV: &str = "UKEY_TEST_CHILD_RACK";

/// DER OID of prime256v1.
pub const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
pub const SO_PIN: &str = "so-secret-1";
pub const USER_PIN: &str = "123456";

/// A rack of `slots` slots in a fresh temporary directory.
pub struct SimRack {
    pub dir: RackDir,
    pub rack: Rack,
}

/// The rack's folder: a temporary folder of this process, or (in a child started by
/// [`SimRack::in_child`]) the parent's, which the parent removes.
pub enum RackDir {
    /// Made by this process, removed when dropped.
    Own(TempDir),
    /// Made by the parent process.
    Parent(PathBuf),
}

impl RackDir {
    pub fn path(&self) -> &Path {
        match self {
            RackDir::Own(t) => t.path(),
            RackDir::Parent(p) => p,
        }
    }
}

fn rack_config(slots: usize) -> RackConfig {
    RackConfig {
        slots,
        ..Default::default()
    }
}

impl SimRack {
    /// A rack in a temporary folder of this process, for tests that drive it without loading
    /// the module here (the CLI, child processes with `HSM_SIM_DIR` set).
    pub fn new(slots: usize) -> SimRack {
        let dir = tempfile::tempdir().unwrap();
        let rack = Rack::init(dir.path(), rack_config(slots), false).unwrap();
        SimRack {
            dir: RackDir::Own(dir),
            rack,
        }
    }

    /// A rack for a test that loads hsm-sim's module in its own process ([`SimRack::load`]).
    ///
    /// The module finds its rack through `HSM_SIM_DIR`, read at `C_Initialize`, and a test
    /// cannot set its own environment safely (`set_var` races with any thread that reads it).
    /// So the test runs twice: this process makes a temporary folder and runs the same test
    /// again in a child process of the test binary with `HSM_SIM_DIR` naming the folder (and
    /// `env` added), then returns `None` once the child passed — the test is done — and fails
    /// with the child's output if it did not. In the child it returns the rack, made in that
    /// folder. Use it as `let Some(sim) = SimRack::in_child(1) else { return };`.
    pub fn in_child(slots: usize) -> Option<SimRack> {
        SimRack::in_child_with(slots, &[])
    }

    /// For a test that cannot hand a rack through its own code (a shared setup function):
    /// in the test's first process, runs the test again in a child as [`SimRack::in_child`]
    /// does and returns `true` (the test is done); in the child returns `false`, and the
    /// setup then takes its rack with `SimRack::in_child(slots)`.
    pub fn ran_in_child(slots: usize) -> bool {
        if std::env::var_os(CHILD_RACK_ENV).is_some() {
            return false;
        }
        SimRack::in_child(slots).is_none()
    }

    /// [`SimRack::in_child`] with more variables in the child's environment.
    pub fn in_child_with(slots: usize, env: &[(&str, &str)]) -> Option<SimRack> {
        let marked = std::env::var_os(CHILD_RACK_ENV);
        if let Some(dir) = marked.filter(|d| std::env::var_os(DIR_ENV).as_ref() == Some(d)) {
            let dir = PathBuf::from(dir);
            for (key, value) in env {
                assert_eq!(
                    std::env::var_os(key).as_deref(),
                    Some(OsStr::new(value)),
                    "the child's {key}"
                );
            }
            let rack = Rack::init(&dir, rack_config(slots), false).unwrap();
            return Some(SimRack {
                dir: RackDir::Parent(dir),
                rack,
            });
        }
        let dir = tempfile::tempdir().unwrap();
        run_again_in_child(dir.path(), env);
        None
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

/// Loads the module, which opens the rack in `dir`: `HSM_SIM_DIR` must name it already (the
/// test runs in a child made by [`SimRack::in_child`]).
pub fn load_sim(dir: &Path) -> Pkcs11 {
    assert_eq!(
        std::env::var_os(DIR_ENV).as_deref(),
        Some(dir.as_os_str()),
        "{DIR_ENV} does not name the rack: make it with SimRack::in_child"
    );
    let p = Pkcs11::new(ukey_tests::hsm_sim_module()).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    p
}

/// Runs the running test again, alone, in a child process of this test binary with
/// `HSM_SIM_DIR` = `dir` and `env`; fails with the child's output unless it ran that one test
/// and it passed.
fn run_again_in_child(dir: &Path, env: &[(&str, &str)]) {
    // libtest runs each test on a thread named after the test's path.
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .expect("the test's thread is named after the test")
        .to_owned();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(&exe)
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(DIR_ENV, dir)
        .env(CHILD_RACK_ENV, dir)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in a child process with {DIR_ENV}={}: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        dir.display(),
        out.status
    );
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
