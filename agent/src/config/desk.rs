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
    /// PEM public key the platform signs jobs with.
    pub platform_signing_key: PathBuf,
    /// The key id the platform names in a job's signature for that key (default `platform`).
    #[serde(default = "default_signing_key_id")]
    pub platform_signing_key_id: String,
    /// PEM public key of the platform that PINs leaving the station are sealed to.
    pub platform_sealing_key: PathBuf,
    /// PEM (PKCS#8) private key of this station, for secrets sealed to it (SO PINs in jobs).
    pub station_key: PathBuf,
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
        check_pem_file(
            problem,
            "trust.platform_signing_key",
            &self.platform_signing_key,
            &["PUBLIC KEY"],
        );
        check_pem_file(
            problem,
            "trust.platform_sealing_key",
            &self.platform_sealing_key,
            &["PUBLIC KEY"],
        );
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
