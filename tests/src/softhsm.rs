//! A fresh SoftHSM2 installation per test: its own token folder and configuration file.
//!
//! SoftHSM2 reads its configuration from the `SOFTHSM2_CONF` environment variable when the
//! module is initialized. Child processes get it through [`SoftHsm::env`]; a test that loads
//! the module in its own process calls [`SoftHsm::activate`] first. Tests run under
//! cargo-nextest, one process per test, so one process never sees two configurations.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// Where Debian installs SoftHSM2's PKCS#11 module.
pub const SOFTHSM2_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A private SoftHSM2 token store.
pub struct SoftHsm {
    dir: TempDir,
}

impl SoftHsm {
    /// Creates an empty token store (one blank slot, as SoftHSM2 always offers).
    pub fn new() -> SoftHsm {
        crate::require_tool("softhsm2-util");
        assert!(
            Path::new(SOFTHSM2_MODULE).exists(),
            "{SOFTHSM2_MODULE} is missing: apt-get install softhsm2"
        );
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).unwrap_or_else(|e| panic!("token dir: {e}"));
        let conf = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        );
        std::fs::write(dir.path().join("softhsm2.conf"), conf)
            .unwrap_or_else(|e| panic!("softhsm2.conf: {e}"));
        SoftHsm { dir }
    }

    /// The module to load.
    pub fn module(&self) -> PathBuf {
        PathBuf::from(SOFTHSM2_MODULE)
    }

    /// The configuration file to pass as `SOFTHSM2_CONF`.
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    /// The environment a child process needs to see this token store.
    pub fn env(&self) -> (&'static str, PathBuf) {
        ("SOFTHSM2_CONF", self.conf())
    }

    /// Points this process's SoftHSM2 at this store. Call before loading the module.
    #[allow(unsafe_code)]
    pub fn activate(&self) {
        // SAFETY: `set_var` is unsound only when another thread reads or writes the
        // environment at the same time. nextest runs each test in its own process, and tests
        // call this first, before they start threads or load the module.
        unsafe { std::env::set_var("SOFTHSM2_CONF", self.conf()) };
    }

    /// Initializes a token in the first free slot with `softhsm2-util` (for tests that need
    /// an already initialized token, e.g. a "foreign" one).
    pub fn init_token(&self, label: &str, so_pin: &str, user_pin: &str) {
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", self.conf())
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                so_pin,
                "--pin",
                user_pin,
            ])
            .output()
            .unwrap_or_else(|e| panic!("softhsm2-util: {e}"));
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Default for SoftHsm {
    fn default() -> Self {
        SoftHsm::new()
    }
}
