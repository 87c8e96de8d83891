//! The desk's own sections: `[pkcs11]`, `[[models]]`, `[usb]`, `[trust]` and `[panel]` —
//! the modules, devices and key files of this workstation, with the checks that look at
//! them (files exist and hold the right PEM, values in range).

use crate::device::Interface;
use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{PRIVATE_KEY_LABELS, check_file, check_pem_file};

/// PKCS#11 modules.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The module used for tokens whose USB model is not listed in `models` (and for modules
    /// without USB, such as SoftHSM2).
    pub default_module: PathBuf,
    /// How often the slot list is scanned, in milliseconds (default 500). Modules without
    /// hot-plug events are served by this scan alone.
    #[serde(default = "default_scan_interval_ms")]
    pub scan_interval_ms: u64,
}

/// One supported Ukey model.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Human name, shown in the inventory and logs.
    pub name: String,
    /// USB vendor id (write it in hex: `0x096e`).
    pub vendor_id: u16,
    /// USB product id.
    pub product_id: u16,
    /// The vendor library for this model.
    pub module: PathBuf,
    /// The interface the library speaks (default `pkcs11`; `skf` is not supported yet).
    #[serde(default)]
    pub interface: Interface,
    /// Shortest user PIN the model accepts (default 6).
    #[serde(default = "default_pin_min")]
    pub pin_min: usize,
    /// Longest user PIN the model accepts (default 16).
    #[serde(default = "default_pin_max")]
    pub pin_max: usize,
}

/// Token arrival detection.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UsbConfig {
    /// `rusb` (real USB hot-plug), `sim` (hsm-sim's virtual bus) or `none` (slot scan only).
    #[serde(default)]
    pub watcher: UsbWatcherKind,
    /// hsm-sim's state folder, for `watcher = "sim"`.
    #[serde(default)]
    pub sim_dir: Option<PathBuf>,
    /// How long to wait, after a USB arrival, for its PKCS#11 slot to appear (default 10 s).
    #[serde(default = "default_arrival_timeout")]
    pub arrival_timeout_secs: u64,
}

impl Default for UsbConfig {
    fn default() -> Self {
        UsbConfig {
            watcher: UsbWatcherKind::default(),
            sim_dir: None,
            arrival_timeout_secs: default_arrival_timeout(),
        }
    }
}

/// The rack: the desk's USB ports and the position number each carries on the rack and
/// the panel. A token on a port not listed here still works; the inventory shows its port.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RackConfig {
    /// `[[rack.positions]]`: one per port. Empty (the default): positions are the modules'
    /// slot ids, as before racks were configured (right for hsm-sim's default tokens only).
    #[serde(default)]
    pub positions: Vec<RackPosition>,
}

/// One port of the rack.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RackPosition {
    /// USB port path as Linux names it (`1-1.2`: bus 1, hub port 1, its port 2); see
    /// `/sys/bus/usb/devices/` or the agent's log line "Ukey plugged in".
    pub port: String,
    /// The position number on the rack and the panel (0-based, below the panel's 64).
    pub position: u32,
}

impl RackConfig {
    /// The position of a USB port path, if it is on the configured rack.
    pub fn position_of(&self, port: &str) -> Option<u32> {
        self.positions
            .iter()
            .find(|p| p.port == port)
            .map(|p| p.position)
    }

    pub(super) fn check(&self, problem: &mut impl FnMut(&str, String)) {
        let mut ports = BTreeSet::new();
        let mut numbers = BTreeSet::new();
        for (i, p) in self.positions.iter().enumerate() {
            let key = |field: &str| format!("rack.positions[{i}].{field}");
            if !is_port_path(&p.port) {
                problem(
                    &key("port"),
                    format!(
                        "{:?} is not a USB port path (bus-port.port…, e.g. \"1-1.2\")",
                        p.port
                    ),
                );
            } else if !ports.insert(p.port.as_str()) {
                problem(&key("port"), format!("{:?} is listed twice", p.port));
            }
            if usize::try_from(p.position).map_or(true, |n| n >= crate::panel::MAX_SLOTS) {
                problem(
                    &key("position"),
                    format!(
                        "{} is beyond the panel's positions (0..={})",
                        p.position,
                        crate::panel::MAX_SLOTS - 1
                    ),
                );
            } else if !numbers.insert(p.position) {
                problem(
                    &key("position"),
                    format!("{} is given to two ports", p.position),
                );
            }
        }
    }
}

/// `bus-port[.port…]`: digits, one `-`, then digits separated by dots (what the kernel and
/// libusb name a physical port).
pub fn is_port_path(s: &str) -> bool {
    let Some((bus, ports)) = s.split_once('-') else {
        return false;
    };
    let number = |p: &str| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
    number(bus) && ports.split('.').all(number) && ports.split('.').count() <= 7
}

/// Which USB watcher feeds the desk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UsbWatcherKind {
    /// Real USB hot-plug through libusb.
    #[default]
    Rusb,
    /// hsm-sim's virtual USB bus.
    Sim,
    /// No USB events: tokens are found by the periodic slot scan alone.
    None,
}

/// Keys and certificates.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// PEM files with the CA certificates that issued certificates must chain to.
    pub ca_certs: Vec<PathBuf>,
    /// PEM public key the platform signs jobs with (optional when `platform_signing_keys`
    /// lists keys).
    #[serde(default)]
    pub platform_signing_key: Option<PathBuf>,
    /// The key id the platform names in a job's signature for that key (default `platform`).
    #[serde(default = "default_signing_key_id")]
    pub platform_signing_key_id: String,
    /// More platform signing keys, each under its own key id: the platform rotates its key by
    /// signing with a new id while jobs signed with the old one are still valid.
    #[serde(default)]
    pub platform_signing_keys: Vec<SigningKeyConfig>,
    /// The longest a job may be valid (`expires_at - issued_at`), in days (default 7); a job
    /// valid for longer is refused (`lifetime-too-long`).
    #[serde(default = "default_max_job_lifetime_days")]
    pub max_job_lifetime_days: u32,
    /// At most this many `rejected` events a minute (a token bucket, default 10); rejections
    /// above it are counted in `status` and logged once a minute, with no event.
    #[serde(default = "default_rejections_per_minute")]
    pub rejections_per_minute: u32,
    /// PEM public key of the platform that PINs leaving the station are sealed to.
    pub platform_sealing_key: PathBuf,
    /// PEM (PKCS#8) private key of this station, for secrets sealed to it (SO PINs in jobs).
    pub station_key: PathBuf,
}

/// One platform signing key and the key id (the JWS `kid`) the platform names it by.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyConfig {
    /// The key id.
    pub kid: String,
    /// PEM public key file.
    pub file: PathBuf,
}

impl TrustConfig {
    /// The trust section with one platform signing key under `signing_key_id`, and every
    /// other key at its default.
    pub fn new(
        ca_certs: Vec<PathBuf>,
        signing_key: impl Into<PathBuf>,
        signing_key_id: impl Into<String>,
        sealing_key: impl Into<PathBuf>,
        station_key: impl Into<PathBuf>,
    ) -> TrustConfig {
        TrustConfig {
            ca_certs,
            platform_signing_key: Some(signing_key.into()),
            platform_signing_key_id: signing_key_id.into(),
            platform_signing_keys: Vec::new(),
            max_job_lifetime_days: default_max_job_lifetime_days(),
            rejections_per_minute: default_rejections_per_minute(),
            platform_sealing_key: sealing_key.into(),
            station_key: station_key.into(),
        }
    }

    /// Every signing key with its key id and configuration key (for messages): the single
    /// `platform_signing_key` first, then `platform_signing_keys`.
    pub fn signing_keys(&self) -> Vec<(String, &str, &PathBuf)> {
        let single = self.platform_signing_key.iter().map(|file| {
            (
                "trust.platform_signing_key".to_owned(),
                self.platform_signing_key_id.as_str(),
                file,
            )
        });
        let listed = self.platform_signing_keys.iter().enumerate().map(|(i, k)| {
            (
                format!("trust.platform_signing_keys[{i}]"),
                k.kid.as_str(),
                &k.file,
            )
        });
        single.chain(listed).collect()
    }

    /// The longest validity a job may have.
    pub fn max_job_lifetime(&self) -> time::Duration {
        time::Duration::days(i64::from(self.max_job_lifetime_days))
    }
}

/// The serial indicator panel.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PanelConfig {
    /// The serial device, e.g. `/dev/ttyACM0`.
    pub device: PathBuf,
    /// Baud rate (default 115200).
    #[serde(default = "default_baud")]
    pub baud: u32,
}

fn default_signing_key_id() -> String {
    "platform".to_owned()
}
fn default_scan_interval_ms() -> u64 {
    500
}
fn default_max_job_lifetime_days() -> u32 {
    7
}
fn default_rejections_per_minute() -> u32 {
    10
}
fn default_pin_min() -> usize {
    6
}
fn default_pin_max() -> usize {
    16
}
fn default_arrival_timeout() -> u64 {
    10
}
fn default_baud() -> u32 {
    115_200
}

impl Pkcs11Config {
    /// `default_module` with the default scan interval.
    pub fn new(default_module: impl Into<PathBuf>) -> Pkcs11Config {
        Pkcs11Config {
            default_module: default_module.into(),
            scan_interval_ms: default_scan_interval_ms(),
        }
    }

    pub(super) fn check(&self, problem: &mut impl FnMut(&str, String)) {
        check_file(problem, "pkcs11.default_module", &self.default_module);
        if !(10..=60_000).contains(&self.scan_interval_ms) {
            problem(
                "pkcs11.scan_interval_ms",
                format!("{} is outside 10..=60000", self.scan_interval_ms),
            );
        }
    }
}

/// Every problem of the `[[models]]` list, each with its key (`models[1].module`).
pub(super) fn check_models(models: &[ModelConfig], problem: &mut impl FnMut(&str, String)) {
    let mut seen = BTreeSet::new();
    for (i, model) in models.iter().enumerate() {
        let key = |field: &str| format!("models[{i}].{field}");
        if model.name.trim().is_empty() {
            problem(&key("name"), "is empty".into());
        }
        if !seen.insert((model.vendor_id, model.product_id)) {
            problem(
                &key("product_id"),
                format!(
                    "{:04x}:{:04x} is listed twice",
                    model.vendor_id, model.product_id
                ),
            );
        }
        check_file(problem, &key("module"), &model.module);
        if model.interface != Interface::Pkcs11 {
            problem(
                &key("interface"),
                format!(
                    "\"{}\" is not yet supported by this agent: only \"pkcs11\" is",
                    model.interface
                ),
            );
        }
        if model.pin_min < 4 || model.pin_min > model.pin_max || model.pin_max > 255 {
            problem(
                &key("pin_min"),
                format!(
                    "PIN length bounds {}..={} are not sane (4 <= min <= max <= 255)",
                    model.pin_min, model.pin_max
                ),
            );
        }
    }
}

impl UsbConfig {
    pub(super) fn check(&self, problem: &mut impl FnMut(&str, String)) {
        if self.watcher == UsbWatcherKind::Sim {
            match &self.sim_dir {
                None => problem("usb.sim_dir", "required when usb.watcher = \"sim\"".into()),
                Some(dir) if !dir.is_dir() => {
                    problem("usb.sim_dir", format!("{}: not a folder", dir.display()))
                }
                Some(_) => {}
            }
        }
        if self.arrival_timeout_secs == 0 {
            problem("usb.arrival_timeout_secs", "must be at least 1".into());
        }
    }
}

impl TrustConfig {
    pub(super) fn check(&self, problem: &mut impl FnMut(&str, String)) {
        if self.ca_certs.is_empty() {
            problem(
                "trust.ca_certs",
                "is empty: issued certificates could never be verified".into(),
            );
        }
        for (i, ca) in self.ca_certs.iter().enumerate() {
            check_pem_file(
                problem,
                &format!("trust.ca_certs[{i}]"),
                ca,
                &["CERTIFICATE"],
            );
        }
        let keys = self.signing_keys();
        if keys.is_empty() {
            problem(
                "trust.platform_signing_key",
                "no platform signing key: set platform_signing_key or platform_signing_keys".into(),
            );
        }
        let mut kids = BTreeSet::new();
        for (key, kid, file) in keys {
            if kid.trim().is_empty() {
                problem(&key, "the key id (kid) is empty".into());
            } else if !kids.insert(kid) {
                problem(&key, format!("key id \"{kid}\" is listed twice"));
            }
            check_public_key(problem, &key, file, crate::trust::Use::Signing);
        }
        check_public_key(
            problem,
            "trust.platform_sealing_key",
            &self.platform_sealing_key,
            crate::trust::Use::Sealing,
        );
        if !(1..=365).contains(&self.max_job_lifetime_days) {
            problem(
                "trust.max_job_lifetime_days",
                format!("{} is outside 1..=365", self.max_job_lifetime_days),
            );
        }
        check_pem_file(
            problem,
            "trust.station_key",
            &self.station_key,
            PRIVATE_KEY_LABELS,
        );
        if let Some(text) = crate::private_files::key_mode_problem(&self.station_key) {
            problem("trust.station_key", text);
        }
    }
}

/// The PEM checks, then (only when they pass, so one fault is one problem) what loading
/// the key would refuse: a key that does not parse, an RSA key under 2048 bits.
fn check_public_key(
    problem: &mut impl FnMut(&str, String),
    key: &str,
    path: &std::path::Path,
    used: crate::trust::Use,
) {
    let mut found = false;
    check_pem_file(
        &mut |k: &str, text: String| {
            found = true;
            problem(k, text)
        },
        key,
        path,
        &["PUBLIC KEY"],
    );
    if found {
        return;
    }
    if let Err(e) = crate::trust::load_public_key(key, path, used) {
        problem(key, e.detail());
    }
}

impl PanelConfig {
    /// The panel on `device` at the default baud rate.
    pub fn new(device: impl Into<PathBuf>) -> PanelConfig {
        PanelConfig {
            device: device.into(),
            baud: default_baud(),
        }
    }

    pub(super) fn check(&self, problem: &mut impl FnMut(&str, String)) {
        if self.baud == 0 {
            problem("panel.baud", "must be positive".into());
        }
    }
}
