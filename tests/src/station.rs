//! A whole production desk for end-to-end tests: a real Mosquitto, the simulated platform,
//! a token store (hsm-sim rack or SoftHSM2) and the real `ukey-agent` binary as a child
//! process, which a test can kill with SIGKILL and start again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hsm_sim::platform::{Platform, PlatformConfig, StationTrust};
use hsm_sim::rack::{InsertOptions, Rack, RackConfig};
use tempfile::TempDir;
use ukey_protocol::ids::StationId;
use ukey_protocol::presence::PresenceStatus;

use crate::{Mosquitto, SoftHsm};

/// Where the agent finds tokens.
pub enum Tokens {
    /// An hsm-sim rack with this many slots (none plugged in yet).
    Sim {
        /// The rack.
        rack: Rack,
    },
    /// A SoftHSM2 store (one blank slot at a time).
    SoftHsm(SoftHsm),
}

/// Broker, platform, tokens and agent of one test.
pub struct Station {
    /// The broker.
    pub broker: Mosquitto,
    /// The simulated platform.
    pub platform: Platform,
    /// Where the tokens live.
    pub tokens: Tokens,
    /// The station id.
    pub station_id: StationId,
    dir: TempDir,
    agent: Option<Child>,
    starts: usize,
    /// Extra lines for the agent's configuration (e.g. shorter timeouts).
    pub extra_config: String,
}

impl Station {
    /// A desk on an hsm-sim rack of `slots` slots.
    pub async fn sim(slots: usize) -> Station {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let rack_dir = dir.path().join("rack");
        let rack = Rack::init(
            &rack_dir,
            RackConfig {
                slots,
                ..Default::default()
            },
            false,
        )
        .unwrap_or_else(|e| panic!("rack init: {e}"));
        Station::with(dir, Tokens::Sim { rack }).await
    }

    /// A desk on a fresh SoftHSM2 store.
    pub async fn softhsm() -> Station {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        Station::with(dir, Tokens::SoftHsm(SoftHsm::new())).await
    }

    async fn with(dir: TempDir, tokens: Tokens) -> Station {
        let broker = Mosquitto::start();
        let station_id = StationId::new("desk-test").unwrap_or_else(|e| panic!("{e}"));
        let platform = Platform::start(PlatformConfig::new(
            "127.0.0.1",
            broker.port(),
            station_id.clone(),
        ))
        .await
        .unwrap_or_else(|e| panic!("platform start: {e}"));
        Station {
            broker,
            platform,
            tokens,
            station_id,
            dir,
            agent: None,
            starts: 0,
            extra_config: String::new(),
        }
    }

    /// The hsm-sim rack (panics on a SoftHSM2 desk).
    pub fn rack(&self) -> &Rack {
        match &self.tokens {
            Tokens::Sim { rack } => rack,
            Tokens::SoftHsm(_) => panic!("this desk runs on SoftHSM2, not on a rack"),
        }
    }

    /// Plugs a blank token into `slot`; returns its serial.
    pub fn insert_blank(&self, slot: usize) -> String {
        self.rack()
            .insert(slot, InsertOptions::default())
            .unwrap_or_else(|e| panic!("insert: {e}"))
    }

    /// Plugs the known token `serial` into `slot` again.
    pub fn reinsert(&self, slot: usize, serial: &str) {
        self.rack()
            .insert(
                slot,
                InsertOptions {
                    serial: Some(serial.to_owned()),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("re-insert: {e}"));
    }

    /// The PKCS#11 module the agent loads.
    pub fn module(&self) -> PathBuf {
        match &self.tokens {
            Tokens::Sim { .. } => crate::hsm_sim_module(),
            Tokens::SoftHsm(s) => s.module(),
        }
    }

    /// The environment the module needs (`HSM_SIM_DIR` or `SOFTHSM2_CONF`).
    pub fn module_env(&self) -> (&'static str, PathBuf) {
        match &self.tokens {
            Tokens::Sim { rack } => ("HSM_SIM_DIR", rack.dir().to_path_buf()),
            Tokens::SoftHsm(s) => s.env(),
        }
    }

    /// The agent's state folder.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn write_config(&self) -> PathBuf {
        let trust_dir = self.dir.path().join("trust");
        let trust: StationTrust = self
            .platform
            .write_station_trust(&self.station_id, &trust_dir)
            .unwrap_or_else(|e| panic!("station trust: {e}"));
        let text = format!(
            "station_id = \"{sid}\"\nstate_dir = {state:?}\n\
             [broker]\nhost = \"127.0.0.1\"\nport = {port}\nkeep_alive_secs = 5\n\
             [pkcs11]\ndefault_module = {module:?}\nscan_interval_ms = 50\n\
             [usb]\nwatcher = \"none\"\n\
             {trust}platform_signing_key_id = {kid:?}\n\
             [timeouts]\ncertificates_secs = 60\ntoken_removed_secs = 60\nbind_ack_secs = 60\nshutdown_grace_secs = 10\n\
             {extra}",
            sid = self.station_id,
            state = self.state_dir().display().to_string(),
            port = self.broker.port(),
            module = self.module().display().to_string(),
            trust = trust.toml_section(),
            kid = trust.job_key_id,
            extra = self.extra_config,
        );
        let path = self.dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("agent.toml: {e}"));
        path
    }

    /// Starts the agent and waits until it is connected and subscribed (its birth message
    /// reached the platform).
    pub async fn start_agent(&mut self) {
        let before = self.presence_seq();
        self.spawn_agent();
        let station = self.station_id.clone();
        let result = self
            .platform
            .wait_until("the agent's birth message", Duration::from_secs(60), |r| {
                r.current_presence(&station)
                    .filter(|p| p.status == PresenceStatus::Online && Some(p.seq) > before)
                    .map(|_| ())
            })
            .await;
        if let Err(e) = result {
            panic!("{e}\n--- agent log ---\n{}", self.agent_log());
        }
    }

    fn presence_seq(&self) -> Option<u64> {
        self.platform
            .snapshot()
            .current_presence(&self.station_id)
            .map(|p| p.seq)
    }

    /// Starts the agent process without waiting for it.
    pub fn spawn_agent(&mut self) {
        assert!(self.agent.is_none(), "the agent runs already");
        let config = self.write_config();
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts))
            .unwrap_or_else(|e| panic!("agent log: {e}"));
        let (key, value) = self.module_env();
        let child = Command::new(crate::workspace_binary("ukey-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .env(key, value)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ukey-agent: {e}"));
        self.agent = Some(child);
    }

    fn log_path(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("agent-{n}.log"))
    }

    /// Everything the agent wrote to stderr, every run (for assertion messages and for
    /// checking that no secret was logged).
    pub fn agent_log(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// Kills the agent with SIGKILL, as a power cut would.
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the agent with SIGTERM and waits for it; returns its exit status.
    pub fn stop_agent(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.agent.take()?;
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        child.wait().ok()
    }

    /// The agent process's id while it runs (for reading its `/proc` figures).
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// Whether the agent process is still running.
    pub fn agent_running(&mut self) -> bool {
        self.agent
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The folder of this test's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Station {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

/// A generous bound for one token's whole production on a busy 2-core machine.
pub const PRODUCTION_TIMEOUT: Duration = Duration::from_secs(120);
