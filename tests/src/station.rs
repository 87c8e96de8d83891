//! A whole production desk for end-to-end tests: a real Mosquitto, the simulated platform,
//! a token store (hsm-sim rack or SoftHSM2) and the real `ukey-agent` binary as a child
//! process, which a test can kill with SIGKILL and start again. The desk is put together
//! and the agent's configuration written by the demo's desk builder
//! (`ukey_demo::desk_builder`); a test changes that configuration with
//! [`Station::configure`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hsm_sim::rack::object::class_name;
use hsm_sim::rack::token::Token;

use hsm_sim::rack::{InsertOptions, Rack};
use tempfile::TempDir;
use ukey_agent::config::{Config, PanelConfig, TimeoutConfig};
use ukey_demo::desk_builder::{self, DeskBuilder};
use ukey_platform_sim::{Platform, PlatformConfig, StationTrust};
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
    /// The trust files, written once: a restarted agent keeps its station key (its journal
    /// is encrypted with a key derived from it, and the platform seals SO PINs to it).
    trust: Option<StationTrust>,
    /// Changes to the agent's configuration, applied in order after the desk builder made it.
    config_edits: Vec<ConfigEdit>,
    /// Watch hsm-sim's virtual USB bus (`[usb] watcher = "sim"`) instead of slot scans only.
    pub usb_sim: bool,
    /// The agent's step timeouts.
    pub timeouts: Timeouts,
    /// `[pkcs11] scan_interval_ms`: how often the agent scans the slots (50 ms by default).
    pub scan_interval_ms: u64,
    /// The agent's `RUST_LOG` (`info` by default).
    pub rust_log: String,
}

/// One change to the agent's configuration ([`Station::configure`]).
type ConfigEdit = Box<dyn Fn(&mut Config) + Send + Sync>;

/// The `[timeouts]` the agent is started with, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `certificates_secs`.
    pub certificates_secs: u64,
    /// `token_removed_secs`.
    pub token_removed_secs: u64,
    /// `bind_ack_secs`.
    pub bind_ack_secs: u64,
    /// `shutdown_grace_secs`.
    pub shutdown_grace_secs: u64,
    /// `resend_secs`.
    pub resend_secs: u64,
}

impl Timeouts {
    /// These timeouts, the others at the agent's defaults.
    pub fn config(self) -> TimeoutConfig {
        TimeoutConfig {
            certificates_secs: self.certificates_secs,
            token_removed_secs: self.token_removed_secs,
            bind_ack_secs: self.bind_ack_secs,
            shutdown_grace_secs: self.shutdown_grace_secs,
            resend_secs: self.resend_secs,
            ..TimeoutConfig::default()
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            certificates_secs: 60,
            token_removed_secs: 60,
            bind_ack_secs: 60,
            shutdown_grace_secs: 10,
            resend_secs: 60,
        }
    }
}

/// How many objects of each class a token holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjectCount {
    /// `CKO_PRIVATE_KEY` objects.
    pub private_keys: usize,
    /// `CKO_PUBLIC_KEY` objects.
    pub public_keys: usize,
    /// `CKO_CERTIFICATE` objects.
    pub certificates: usize,
    /// Objects of any other class.
    pub other: usize,
}

impl ObjectCount {
    /// Counts the objects of an hsm-sim token.
    pub fn of(token: &Token) -> ObjectCount {
        let mut count = ObjectCount::default();
        for (_, object) in token.objects() {
            match class_name(object.class()) {
                "CKO_PRIVATE_KEY" => count.private_keys += 1,
                "CKO_PUBLIC_KEY" => count.public_keys += 1,
                "CKO_CERTIFICATE" => count.certificates += 1,
                _ => count.other += 1,
            }
        }
        count
    }
}

impl Station {
    /// A desk on an hsm-sim rack of `slots` slots.
    pub async fn sim(slots: usize) -> Station {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let rack = desk_builder::rack(&dir.path().join("rack"), slots)
            .unwrap_or_else(|e| panic!("rack init: {e}"));
        Station::with(dir, Tokens::Sim { rack }).await
    }

    /// A desk on a fresh SoftHSM2 store.
    pub async fn softhsm() -> Station {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        Station::with(dir, Tokens::SoftHsm(SoftHsm::new())).await
    }

    async fn with(dir: TempDir, tokens: Tokens) -> Station {
        Station::with_broker(dir, tokens, Mosquitto::start(), |_| {}).await
    }

    /// A desk on an hsm-sim rack of `slots` slots, with `broker` (started by the caller, e.g.
    /// from a configuration template) and the platform's configuration adjusted by `platform`
    /// (e.g. its TLS client certificate). The station id is [`STATION_ID`].
    pub async fn sim_with_broker(
        slots: usize,
        broker: Mosquitto,
        platform: impl FnOnce(&mut PlatformConfig),
    ) -> Station {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let rack = desk_builder::rack(&dir.path().join("rack"), slots)
            .unwrap_or_else(|e| panic!("rack init: {e}"));
        Station::with_broker(dir, Tokens::Sim { rack }, broker, platform).await
    }

    async fn with_broker(
        dir: TempDir,
        tokens: Tokens,
        broker: Mosquitto,
        tweak: impl FnOnce(&mut PlatformConfig),
    ) -> Station {
        let station_id = StationId::new(STATION_ID).unwrap_or_else(|e| panic!("{e}"));
        let platform = Station::builder_for(&dir, &tokens, &broker, &station_id)
            .start_platform(tweak)
            .await
            .unwrap_or_else(|e| {
                panic!("platform start: {e}\n--- broker log ---\n{}", broker.log())
            });
        Station {
            broker,
            platform,
            tokens,
            station_id,
            dir,
            agent: None,
            starts: 0,
            trust: None,
            config_edits: Vec::new(),
            usb_sim: false,
            timeouts: Timeouts::default(),
            scan_interval_ms: 50,
            rust_log: "info".to_owned(),
        }
    }

    /// The desk builder for these parts, before this test's settings.
    fn builder_for(
        dir: &TempDir,
        tokens: &Tokens,
        broker: &Mosquitto,
        station_id: &StationId,
    ) -> DeskBuilder {
        let module = match tokens {
            Tokens::Sim { .. } => crate::hsm_sim_module(),
            Tokens::SoftHsm(s) => s.module(),
        };
        DeskBuilder::new(
            station_id.clone(),
            dir.path().join("state"),
            "127.0.0.1",
            broker.port(),
            module,
        )
        .keep_alive_secs(5)
    }

    /// Changes the agent's configuration as `edit` says, on every later start (after the
    /// edits before it): e.g. a `[[models]]` entry, a shorter `[timeouts]` value, TLS.
    pub fn configure(&mut self, edit: impl Fn(&mut Config) + Send + Sync + 'static) {
        self.config_edits.push(Box::new(edit));
    }

    /// The platform dispatches a `new` job for a made-up company, keys of `alg`.
    pub async fn dispatch_new(
        &self,
        alg: ukey_protocol::keys::KeyAlgorithm,
    ) -> ukey_protocol::ids::JobId {
        self.platform
            .dispatch_draft(&self.new_draft(alg))
            .await
            .unwrap_or_else(|e| panic!("dispatch: {e}"))
    }

    /// A `new` job for a made-up company, keys of `alg`.
    pub fn new_draft(&self, alg: ukey_protocol::keys::KeyAlgorithm) -> ukey_platform_sim::JobDraft {
        ukey_platform_sim::JobDraft::new(ukey_protocol::job::JobKind::New, &self.station_id)
            .unwrap_or_else(|e| panic!("job draft: {e}"))
            .with_algorithm(alg)
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

    /// The trust files the agent was configured with (after its first start).
    pub fn trust(&self) -> Option<&StationTrust> {
        self.trust.as_ref()
    }

    /// The agent's state folder.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Writes the agent's configuration (`agent.toml` in [`Station::dir`]) and returns its
    /// path; [`Station::spawn_agent`] does this itself.
    pub fn write_config(&mut self) -> PathBuf {
        let trust_dir = self.dir.path().join("trust");
        let trust: StationTrust = match &self.trust {
            Some(trust) => trust.clone(),
            None => self
                .platform
                .write_station_trust(&self.station_id, &trust_dir)
                .unwrap_or_else(|e| panic!("station trust: {e}")),
        };
        self.trust = Some(trust.clone());
        let rack_dir = match (&self.tokens, self.usb_sim) {
            (Tokens::Sim { rack }, true) => Some(rack.dir().to_path_buf()),
            _ => None,
        };
        let mut config =
            Station::builder_for(&self.dir, &self.tokens, &self.broker, &self.station_id)
                .scan_interval_ms(self.scan_interval_ms)
                .usb_sim(rack_dir.as_deref())
                .timeouts(self.timeouts.config())
                .config(&trust);
        if rack_dir.is_some() {
            config.usb.arrival_timeout_secs = 5;
        }
        for edit in &self.config_edits {
            edit(&mut config);
        }
        let path = self.dir.path().join("agent.toml");
        desk_builder::write_config(&config, "the ukey-tests harness", &path)
            .unwrap_or_else(|e| panic!("agent.toml: {e}"));
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
        let child = Command::new(crate::agent_binary())
            .args(["run", "--config"])
            .arg(&config)
            .env(key, value)
            .env("RUST_LOG", &self.rust_log)
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

    /// Plugs an emulated indicator panel with `slots` slots into the desk (its `[panel]`
    /// table in the agent's configuration) and returns the board and its events.
    pub fn attach_emulated_panel(
        &mut self,
        slots: u8,
    ) -> (
        hsm_sim::panel::EmulatedPanel,
        std::sync::mpsc::Receiver<hsm_sim::panel::BoardEvent>,
    ) {
        let link = self.dir().join("panel");
        let board = hsm_sim::panel::EmulatedPanel::start(hsm_sim::panel::PanelOptions {
            slots,
            link: Some(link.clone()),
            ..hsm_sim::panel::PanelOptions::default()
        })
        .unwrap_or_else(|e| panic!("emulated panel: {e}"));
        self.configure(move |c| c.panel = Some(PanelConfig::new(link.clone())));
        board
    }

    /// Waits until the `new` job `job` succeeded; checks that every step of its plan was
    /// reported and every event arrived once ([`assert_events_exactly_once`]).
    pub async fn new_job_succeeded(
        &self,
        job: &ukey_protocol::ids::JobId,
    ) -> ukey_platform_sim::JobRecord {
        use ukey_protocol::event::{ExecutionState, Step};
        let record = self
            .platform
            .wait_for_state(job, ExecutionState::Succeeded, PRODUCTION_TIMEOUT)
            .await
            .unwrap_or_else(|e| self.fail_with_log(e));
        let steps: Vec<Step> = record.events().iter().map(|e| e.step).collect();
        for step in ukey_protocol::job::JobKind::New.plan(false) {
            assert!(steps.contains(step), "no {step} event in {steps:?}");
        }
        assert_events_exactly_once(&record);
        record
    }

    /// The usual scenario, once the agent runs: the platform dispatches `draft`, a blank
    /// token goes into `slot`, and the job succeeds within [`PRODUCTION_TIMEOUT`] (else the
    /// test fails with the agent's log). Returns the job, the token's serial and the job's
    /// record.
    pub async fn produce(
        &self,
        slot: usize,
        draft: &ukey_platform_sim::JobDraft,
    ) -> (
        ukey_protocol::ids::JobId,
        String,
        ukey_platform_sim::JobRecord,
    ) {
        let job = self
            .platform
            .dispatch_draft(draft)
            .await
            .unwrap_or_else(|e| panic!("dispatch: {e}"));
        let serial = self.insert_blank(slot);
        let record = self
            .platform
            .wait_for_state(
                &job,
                ukey_protocol::event::ExecutionState::Succeeded,
                PRODUCTION_TIMEOUT,
            )
            .await
            .unwrap_or_else(|e| self.fail_with_log(e));
        (job, serial, record)
    }

    /// [`Station::produce`] with a `new` job for a made-up company, keys of `alg`.
    pub async fn produce_new(
        &self,
        slot: usize,
        alg: ukey_protocol::keys::KeyAlgorithm,
    ) -> (
        ukey_protocol::ids::JobId,
        String,
        ukey_platform_sim::JobRecord,
    ) {
        self.produce(slot, &self.new_draft(alg)).await
    }

    /// Panics with `e` and everything the agent logged (for a failed wait).
    pub fn fail_with_log(&self, e: impl std::fmt::Display) -> ! {
        panic!("{e}\n--- agent log ---\n{}", self.agent_log())
    }

    /// `ukey-agent status` for this station's configuration: its exit code and what it
    /// printed (standard output, then standard error).
    pub fn agent_status(&self) -> (Option<i32>, String) {
        let out = Command::new(crate::agent_binary())
            .args(["status", "--config"])
            .arg(self.dir().join("agent.toml"))
            .output()
            .unwrap_or_else(|e| panic!("ukey-agent status: {e}"));
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// `ukey-agent status` once it mentions `needle` (at most a minute). The agent rewrites
    /// its snapshot file every few seconds; there is nothing to wait on but the file.
    pub async fn status_with(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (_, text) = self.agent_status();
            if text.contains(needle) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "`ukey-agent status` never said {needle:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The folder of this test's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The objects on hsm-sim token `serial`, by class, as the rack last committed them.
    pub fn objects(&self, serial: &str) -> ObjectCount {
        let token = self
            .rack()
            .token(serial)
            .unwrap_or_else(|e| panic!("token {serial}: {e}"));
        ObjectCount::of(&token)
    }

    /// Waits until hsm-sim token `serial` satisfies `f`, at most `timeout`. The rack has no
    /// change notification, so its committed state is polled.
    pub async fn wait_for_token(
        &self,
        serial: &str,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Token) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(token) = self.rack().token(serial)
                && f(&token)
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "token {serial}: {what} did not happen within {timeout:?}\n--- agent log ---\n{}",
                self.agent_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the agent's log (every run) contains `needle` `times` times or more, at
    /// most `timeout`.
    pub async fn wait_for_log(&self, needle: &str, times: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let log = self.agent_log();
            if log.matches(needle).count() >= times {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{needle:?} did not appear {times} time(s) in the agent's log within {timeout:?}\n--- agent log ---\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs a second `ukey-agent` with the running agent's configuration (same state folder)
    /// and waits for it to exit, at most `timeout`. Returns its exit status and stderr, or
    /// `None` when it was still running at the deadline (it is then killed).
    pub async fn run_second_agent(
        &self,
        timeout: Duration,
    ) -> Option<(std::process::ExitStatus, String)> {
        let config = self.dir.path().join("agent.toml");
        assert!(config.exists(), "start the first agent before the second");
        let (key, value) = self.module_env();
        let child = tokio::process::Command::new(crate::agent_binary())
            .args(["run", "--config"])
            .arg(&config)
            .env(key, value)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start a second ukey-agent: {e}"));
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => Some((
                out.status,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )),
            Ok(Err(e)) => panic!("second ukey-agent: {e}"),
            Err(_) => None,
        }
    }
}

impl Drop for Station {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

/// The station id of every test desk.
pub const STATION_ID: &str = "desk-test";

/// A generous bound for one token's whole production on a busy 2-core machine.
pub const PRODUCTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits (at most a minute) until the emulated panel shows `light` in `slot`, reading the
/// board's events as they come.
pub fn light_until(
    board: &hsm_sim::panel::EmulatedPanel,
    events: &std::sync::mpsc::Receiver<hsm_sim::panel::BoardEvent>,
    slot: usize,
    light: ukey_agent::panel::Light,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while board.lights().get(slot) != Some(&light) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(
            events.recv_timeout(left).is_ok(),
            "slot {slot} never showed {light:?}; the board shows {:?}",
            board.lights()
        );
    }
}

/// Every event once after de-duplication by event id, sequence numbers 1..=n without gaps
/// or repeats, every transition allowed, whatever order the events arrived in (the
/// platform's ledger, [`ukey_platform_sim::JobLedger`]), and no protocol problem seen by the
/// platform.
pub fn assert_events_exactly_once(record: &ukey_platform_sim::JobRecord) {
    let ledger = record.ledger();
    assert!(
        ledger.is_clean(),
        "the platform's ledger: {ledger}\n{:#?}",
        record.events()
    );
    assert!(
        record.problems().is_empty(),
        "the platform saw problems: {:?}",
        record.problems()
    );
}
