//! The desk builder: one place that puts a simulated desk together for the agent — the
//! simulated platform on a given broker, an hsm-sim rack or another PKCS#11 store (SoftHSM2),
//! the trust files the platform writes for the station — and writes the agent's
//! configuration as a typed [`Config`] serialized to TOML.
//!
//! The demo and the integration tests' harness both build their desks here, so the file
//! they run is one that `Config::load_checked` (what `ukey-agent run` and `check-config` do)
//! reads back unchanged. It does not start a broker (the demo embeds one, the tests run
//! Mosquitto) nor the agent (the demo runs it in process, the tests as a child process).

use std::path::{Path, PathBuf};

use hsm_sim::rack::{Rack, RackConfig};
use ukey_agent::config::{
    BrokerConfig, Config, PanelConfig, Pkcs11Config, TimeoutConfig, TrustConfig, UsbConfig,
    UsbWatcherKind,
};
use ukey_platform_sim::{Platform, PlatformConfig, StationTrust};
use ukey_protocol::StationId;

use crate::DemoError;

/// The parts of one desk the agent is configured for; [`DeskBuilder::config`] makes the
/// agent's configuration of them.
#[derive(Debug, Clone)]
pub struct DeskBuilder {
    station_id: StationId,
    state_dir: PathBuf,
    broker_host: String,
    broker_port: u16,
    keep_alive_secs: u64,
    module: PathBuf,
    scan_interval_ms: u64,
    usb_sim_dir: Option<PathBuf>,
    timeouts: TimeoutConfig,
    panel: Option<PathBuf>,
}

impl DeskBuilder {
    /// The desk `station_id`, its agent keeping its state in `state_dir`, talking to the
    /// broker at `broker_host:broker_port` and loading the PKCS#11 module `module`. Slots
    /// are scanned every 50 ms (a simulated desk wants quick answers), no USB watcher, no
    /// panel, the agent's default timeouts.
    pub fn new(
        station_id: StationId,
        state_dir: impl Into<PathBuf>,
        broker_host: impl Into<String>,
        broker_port: u16,
        module: impl Into<PathBuf>,
    ) -> DeskBuilder {
        DeskBuilder {
            station_id,
            state_dir: state_dir.into(),
            broker_host: broker_host.into(),
            broker_port,
            keep_alive_secs: 10,
            module: module.into(),
            scan_interval_ms: 50,
            usb_sim_dir: None,
            timeouts: TimeoutConfig::default(),
            panel: None,
        }
    }

    /// The station id.
    pub fn station_id(&self) -> &StationId {
        &self.station_id
    }

    /// The MQTT keep-alive, in seconds.
    pub fn keep_alive_secs(mut self, secs: u64) -> DeskBuilder {
        self.keep_alive_secs = secs;
        self
    }

    /// How often the agent scans the slots, in milliseconds.
    pub fn scan_interval_ms(mut self, ms: u64) -> DeskBuilder {
        self.scan_interval_ms = ms;
        self
    }

    /// Watch hsm-sim's virtual USB bus of the rack in `rack_dir` (`None`: slot scans only).
    pub fn usb_sim(mut self, rack_dir: Option<&Path>) -> DeskBuilder {
        self.usb_sim_dir = rack_dir.map(Path::to_path_buf);
        self
    }

    /// The agent's step timeouts.
    pub fn timeouts(mut self, timeouts: TimeoutConfig) -> DeskBuilder {
        self.timeouts = timeouts;
        self
    }

    /// An indicator panel on the serial device `device` (an emulated panel's pty link).
    pub fn panel(mut self, device: Option<&Path>) -> DeskBuilder {
        self.panel = device.map(Path::to_path_buf);
        self
    }

    /// Starts the simulated platform on this desk's broker, its configuration adjusted by
    /// `tweak` (e.g. a TLS client certificate).
    pub async fn start_platform(
        &self,
        tweak: impl FnOnce(&mut PlatformConfig),
    ) -> Result<Platform, DemoError> {
        let mut config = PlatformConfig::new(
            self.broker_host.clone(),
            self.broker_port,
            self.station_id.clone(),
        );
        tweak(&mut config);
        Ok(Platform::start(config).await?)
    }

    /// The agent's configuration for this desk, trusting the files `trust` names (written
    /// by [`Platform::write_station_trust`]).
    pub fn config(&self, trust: &StationTrust) -> Config {
        let mut broker = BrokerConfig::new(self.broker_host.clone(), Some(self.broker_port));
        broker.keep_alive_secs = self.keep_alive_secs;
        let mut pkcs11 = Pkcs11Config::new(self.module.clone());
        pkcs11.scan_interval_ms = self.scan_interval_ms;
        let trust = TrustConfig::new(
            trust.ca_certs.clone(),
            trust.platform_signing_key.clone(),
            trust.job_key_id.clone(),
            trust.platform_sealing_key.clone(),
            trust.station_key.clone(),
        );
        let mut config = Config::new(self.station_id.as_str(), broker, pkcs11, trust);
        config.state_dir = self.state_dir.clone();
        config.usb = UsbConfig {
            watcher: match self.usb_sim_dir {
                Some(_) => UsbWatcherKind::Sim,
                None => UsbWatcherKind::None,
            },
            sim_dir: self.usb_sim_dir.clone(),
            ..UsbConfig::default()
        };
        config.timeouts = self.timeouts.clone();
        config.panel = self.panel.clone().map(PanelConfig::new);
        config
    }
}

/// Writes `config` to `path` as TOML, under a comment naming `writer`.
pub fn write_config(config: &Config, writer: &str, path: &Path) -> Result<(), DemoError> {
    let text = config
        .to_toml()
        .map_err(|e| DemoError::Agent(e.to_string()))?;
    let text = format!("# Written by {writer}: the agent of a simulated desk.\n{text}");
    std::fs::write(path, text).map_err(|e| DemoError::folder(path, e))
}

/// A virtual rack of `slots` empty slots with its state in `dir` (created).
pub fn rack(dir: &Path, slots: usize) -> Result<Rack, DemoError> {
    Ok(Rack::init(
        dir,
        RackConfig {
            slots,
            ..RackConfig::default()
        },
        false,
    )?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn trust(dir: &Path) -> StationTrust {
        StationTrust {
            ca_certs: vec![dir.join("ca.pem")],
            platform_signing_key: dir.join("sign.pem"),
            platform_sealing_key: dir.join("seal.pem"),
            station_key: dir.join("station.key"),
            job_key_id: "platform-7".into(),
        }
    }

    #[test]
    fn the_written_file_loads_as_the_built_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let station = StationId::new("desk-9").unwrap();
        let builder = DeskBuilder::new(
            station,
            dir.path().join("state"),
            "127.0.0.1",
            1884,
            "/m.so",
        )
        .usb_sim(Some(dir.path()))
        .panel(Some(&dir.path().join("panel")))
        .scan_interval_ms(70)
        .keep_alive_secs(6);
        let config = builder.config(&trust(dir.path()));
        assert_eq!(config.usb.watcher, UsbWatcherKind::Sim);
        assert_eq!(config.trust.platform_signing_key_id, "platform-7");
        assert_eq!(config.broker.port(), 1884);
        let path = dir.path().join("agent.toml");
        write_config(&config, "a test", &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# Written by a test"), "{text}");
        assert_eq!(Config::load(&path).unwrap(), config);
    }

    #[test]
    fn without_a_sim_bus_the_agent_scans_slots_only() {
        let dir = tempfile::tempdir().unwrap();
        let station = StationId::new("desk-9").unwrap();
        let config = DeskBuilder::new(station, dir.path(), "127.0.0.1", 1884, "/m.so")
            .config(&trust(dir.path()));
        assert_eq!(config.usb.watcher, UsbWatcherKind::None);
        assert_eq!(config.usb.sim_dir, None);
        assert_eq!(config.panel, None);
    }
}
