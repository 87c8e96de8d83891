//! Test harness for ukey-station's integration tests: the real parts the tests talk to.
//!
//! - [`Mosquitto`]: a real MQTT broker on a free loopback port, with its own persistence
//!   folder, that a test can kill (SIGKILL) and restart.
//! - [`SoftHsm`]: a fresh SoftHSM2 token folder and configuration per test.
//! - [`hsm_sim_module`] and [`workspace_binary`]: the artefacts this workspace builds.
//! - [`require_tool`]: outside checkers (openssl, pkcs11-tool).
//! - [`leaks`]: finding a secret in bytes, in clear, hex or base64.
//!
//! A missing component is a failed test, never a skipped one: every helper here panics with
//! a message that says what is missing and how to get it (`scripts/test` installs it all).

pub mod leaks;
pub mod mosquitto;
pub mod softhsm;
pub mod station;

pub use mosquitto::Mosquitto;
pub use softhsm::SoftHsm;

use std::path::PathBuf;
use std::process::Command;

/// The workspace's root folder (where `Cargo.toml` of the workspace lives).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo profile folder these tests were built with: `debug` for tests (the `test`
/// profile inherits `dev`), `release` for the benchmark (the `bench` profile inherits
/// `release`), so a release benchmark runs the release agent and module.
pub fn profile_dir_name() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// The cargo target folder of the profile these tests were built with.
pub fn target_dir() -> PathBuf {
    let root = match std::env::var("CARGO_TARGET_DIR") {
        Ok(dir) if PathBuf::from(&dir).is_absolute() => PathBuf::from(dir),
        Ok(dir) => workspace_root().join(dir),
        Err(_) => workspace_root().join("target"),
    };
    root.join(profile_dir_name())
}

/// A binary or library this workspace builds, by file name (`ukey-agent`, `libhsm_sim.so`).
///
/// Panics when it has not been built: `cargo build --workspace` (run by `scripts/test`) makes
/// the debug ones, `cargo build --release -p ukey-agent -p hsm-sim` (run by `scripts/bench`)
/// the release ones.
pub fn workspace_binary(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace{}` first (scripts/test and scripts/bench do)",
        path.display(),
        if cfg!(debug_assertions) {
            ""
        } else {
            " --release"
        }
    );
    path
}

/// The agent the harness starts: `$UKEY_AGENT_BIN` when set (`scripts/bench-ab` runs another
/// revision's agent through it), else this workspace's `ukey-agent`.
pub fn agent_binary() -> PathBuf {
    match std::env::var_os("UKEY_AGENT_BIN") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.exists(),
                "UKEY_AGENT_BIN={} does not exist",
                path.display()
            );
            path
        }
        None => workspace_binary("ukey-agent"),
    }
}

/// Path of hsm-sim's PKCS#11 module (`libhsm_sim.so`).
pub fn hsm_sim_module() -> PathBuf {
    workspace_binary("libhsm_sim.so")
}

/// Asserts that an outside tool is installed and returns its name for `Command::new`.
pub fn require_tool(name: &str) -> &str {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not installed; scripts/test installs it (apt-get install softhsm2 mosquitto mosquitto-clients opensc openssl)"
    );
    name
}

/// Reserves a free TCP port on 127.0.0.1 by binding port 0 and releasing it.
///
/// A port freed this way can in principle be taken by another process before the caller
/// binds it; callers that start a server retry with a fresh port when binding fails.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"))
}
