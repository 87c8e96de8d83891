//! The agent's configuration: one TOML file, every key documented in
//! `agent/ukey-agent.example.toml` with its default.
//!
//! Loading ([`Config::load`]) parses and rejects unknown keys (a typo is an error that names
//! the key, not a silently ignored setting). Checking ([`Config::check`]) goes further and looks
//! at the world the configuration points to — files that must exist, modules that must be
//! loadable paths, values that must be in range — and reports every problem with the key it
//! belongs to. This module reads files but opens no devices and no network connections.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The default MQTT topic prefix.
pub const DEFAULT_TOPIC_PREFIX: &str = "ukey/v1";

/// Default of `[journal] compact_after_records`.
pub const DEFAULT_COMPACT_AFTER_RECORDS: usize = 256;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration (names line, column and key).
    #[error("{path}: {message}")]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// The parser's message, which names the key and the position.
        message: String,
    },
    /// The file parsed, but [`Config::check`] found problems.
    #[error("{path}: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<ConfigProblem>,
    },
}

/// One problem with one key of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The key's path, e.g. `trust.ca_certs[0]` or `models[1].module`.
    pub key: String,
    /// What is wrong, e.g. `/etc/ukey/ca.pem: no such file`.
    pub problem: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

/// The whole configuration of one desk's agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This desk's station id: the `{sid}` of every topic.
    pub station_id: String,
    /// Folder for the job journal and the event outbox. Must be writable and persistent.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// `human` (default) or `json` log lines on stderr.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Log filter directives (`info`, `ukey_agent=debug`, ...); absent: `RUST_LOG`, else
    /// `info`. SIGHUP applies a changed value without a restart.
    #[serde(default)]
    pub log_level: Option<String>,
    /// The MQTT broker.
    pub broker: BrokerConfig,
    /// PKCS#11 modules.
    pub pkcs11: Pkcs11Config,
    /// Supported Ukey models, matched by USB vendor and product id.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// How token arrivals are detected.
    #[serde(default)]
    pub usb: UsbConfig,
    /// Keys and certificates the agent trusts and uses.
    pub trust: TrustConfig,
    /// Step timeouts.
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    /// What the inventory reports.
    #[serde(default)]
    pub inventory: InventoryConfig,
    /// The job journal.
    #[serde(default)]
    pub journal: JournalConfig,
    /// The audit log (`audit/` in the state folder).
    #[serde(default)]
    pub audit: AuditConfig,
    /// The desk's indicator panel; absent means the desk has none.
    #[serde(default)]
    pub panel: Option<PanelConfig>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// The MQTT broker and how to reach it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Host name or address.
    pub host: String,
    /// TCP port (default 1883, or 8883 with TLS).
    #[serde(default)]
    pub port: Option<u16>,
    /// MQTT client id; default `ukey-agent-{station_id}`. Must be stable across restarts so
    /// the broker keeps the session.
    #[serde(default)]
    pub client_id: Option<String>,
    /// MQTT keep-alive in seconds (default 30).
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// Topic prefix (default `ukey/v1`).
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// TLS; absent means plain TCP (only sensible on loopback).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

impl BrokerConfig {
    /// The port to connect to: the configured one, else 8883 with TLS and 1883 without.
    pub fn port(&self) -> u16 {
        self.port
            .unwrap_or(if self.tls.is_some() { 8883 } else { 1883 })
    }

    /// The MQTT client id for `station_id`.
    pub fn client_id(&self, station_id: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("ukey-agent-{station_id}"))
    }
}

/// TLS to the broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) the broker's certificate must chain to.
    pub ca_file: PathBuf,
    /// PEM client certificate, for brokers that authenticate stations by certificate.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

/// PKCS#11 modules.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Human name, shown in the inventory and logs.
    pub name: String,
    /// USB vendor id (write it in hex: `0x096e`).
    pub vendor_id: u16,
    /// USB product id.
    pub product_id: u16,
    /// The PKCS#11 module for this model.
    pub module: PathBuf,
    /// Shortest user PIN the model accepts (default 6).
    #[serde(default = "default_pin_min")]
    pub pin_min: usize,
    /// Longest user PIN the model accepts (default 16).
    #[serde(default = "default_pin_max")]
    pub pin_max: usize,
}

/// Token arrival detection.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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

/// Step timeouts, in seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutConfig {
    /// How long to wait for the platform's certificates after sending CSRs (default 600).
    #[serde(default = "default_certificates_timeout")]
    pub certificates_secs: u64,
    /// How long a job parks after its token was pulled before failing as retryable (default 300).
    #[serde(default = "default_removed_timeout")]
    pub token_removed_secs: u64,
    /// How long the platform may take to acknowledge a job's last event (the binding, or an
    /// unlock's new PIN) before the desk raises a `platform-unconfirmed` alert (default 600).
    /// The job never fails for it: it succeeds whenever the acknowledgement comes.
    #[serde(default = "default_bind_timeout")]
    pub bind_ack_secs: u64,
    /// How long a targeted job (renew, change, unlock) waits for its token (default 86400).
    #[serde(default = "default_target_wait")]
    pub target_token_secs: u64,
    /// How long shutdown waits for jobs to reach a safe step (default 30).
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
    /// How long the platform may stay silent before a step event it has not acknowledged, or
    /// the CSR bundle it has not answered, is published again (default 60). A broker's PUBACK
    /// proves nothing: a broker that lost the platform's session drops what it is sent.
    #[serde(default = "default_resend")]
    pub resend_secs: u64,
    /// How long one PKCS#11 call on a token may run before the desk raises a
    /// `token-call-stuck` alert: the module or the device has likely stopped answering
    /// (default 120; one RSA generation on real hardware takes up to a minute). Each call is
    /// timed on its own, so a long step of many calls raises nothing. The job is not failed
    /// for it; the alert goes when the call returns.
    #[serde(default = "default_wedged_call")]
    pub wedged_call_secs: u64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            certificates_secs: default_certificates_timeout(),
            token_removed_secs: default_removed_timeout(),
            bind_ack_secs: default_bind_timeout(),
            target_token_secs: default_target_wait(),
            shutdown_grace_secs: default_shutdown_grace(),
            resend_secs: default_resend(),
            wedged_call_secs: default_wedged_call(),
        }
    }
}

impl TimeoutConfig {
    /// [`TimeoutConfig::certificates_secs`] as a duration.
    pub fn certificates(&self) -> Duration {
        Duration::from_secs(self.certificates_secs)
    }
    /// [`TimeoutConfig::token_removed_secs`] as a duration.
    pub fn token_removed(&self) -> Duration {
        Duration::from_secs(self.token_removed_secs)
    }
    /// [`TimeoutConfig::bind_ack_secs`] as a duration.
    pub fn bind_ack(&self) -> Duration {
        Duration::from_secs(self.bind_ack_secs)
    }
    /// [`TimeoutConfig::target_token_secs`] as a duration.
    pub fn target_token(&self) -> Duration {
        Duration::from_secs(self.target_token_secs)
    }
    /// [`TimeoutConfig::resend_secs`] as a duration.
    pub fn resend(&self) -> Duration {
        Duration::from_secs(self.resend_secs)
    }
    /// [`TimeoutConfig::wedged_call_secs`] as a duration.
    pub fn wedged_call(&self) -> Duration {
        Duration::from_secs(self.wedged_call_secs)
    }
    /// [`TimeoutConfig::shutdown_grace_secs`] as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// What the inventory reports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryConfig {
    /// A certificate expiring within this many days makes its token `expiring` (default 30).
    #[serde(default = "default_expiry_warning_days")]
    pub expiry_warning_days: u32,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            expiry_warning_days: default_expiry_warning_days(),
        }
    }
}

/// The job journal (`journal.log` in the state folder).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// The running agent compacts its journal (finished jobs shrink to one small record)
    /// once the records of jobs finished since the last compaction number at least this
    /// many, and at least twice the records still needed (default 256). Start-up always
    /// compacts.
    #[serde(default = "default_compact_after_records")]
    pub compact_after_records: usize,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            compact_after_records: default_compact_after_records(),
        }
    }
}

/// The audit log (`audit/audit-NNNNNN.jsonl` in the state folder; see `crate::audit`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The log moves on to a new file once the current one would pass this many bytes
    /// (default 16 MiB, at least 64 KiB). Files are never deleted by the agent.
    #[serde(default = "default_audit_max_file_bytes")]
    pub max_file_bytes: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_file_bytes: default_audit_max_file_bytes(),
        }
    }
}

fn default_audit_max_file_bytes() -> u64 {
    crate::audit::DEFAULT_MAX_FILE_BYTES
}

/// The serial indicator panel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanelConfig {
    /// The serial device, e.g. `/dev/ttyACM0`.
    pub device: PathBuf,
    /// Baud rate (default 115200).
    #[serde(default = "default_baud")]
    pub baud: u32,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/ukey-agent")
}
fn default_signing_key_id() -> String {
    "platform".to_owned()
}
fn default_keep_alive() -> u64 {
    30
}
fn default_topic_prefix() -> String {
    DEFAULT_TOPIC_PREFIX.to_owned()
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
fn default_certificates_timeout() -> u64 {
    600
}
fn default_removed_timeout() -> u64 {
    300
}
fn default_bind_timeout() -> u64 {
    600
}
fn default_target_wait() -> u64 {
    86_400
}
fn default_shutdown_grace() -> u64 {
    30
}
fn default_resend() -> u64 {
    60
}
fn default_wedged_call() -> u64 {
    120
}
fn default_expiry_warning_days() -> u32 {
    30
}
fn default_compact_after_records() -> usize {
    DEFAULT_COMPACT_AFTER_RECORDS
}
fn default_baud() -> u32 {
    115_200
}

impl Config {
    /// Reads and parses `path`. Unknown keys are errors. Relative paths inside the file are
    /// taken relative to the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        if let Some(base) = path.parent() {
            config.resolve_relative(base);
        }
        Ok(config)
    }

    /// Loads `path` and runs [`Config::check`]; any problem is an error.
    pub fn load_checked(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::load(path)?;
        let problems = config.check();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// Parses configuration text.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    fn resolve_relative(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.state_dir);
        fix(&mut self.pkcs11.default_module);
        for model in &mut self.models {
            fix(&mut model.module);
        }
        if let Some(dir) = self.usb.sim_dir.as_mut() {
            fix(dir);
        }
        for ca in &mut self.trust.ca_certs {
            fix(ca);
        }
        fix(&mut self.trust.platform_signing_key);
        fix(&mut self.trust.platform_sealing_key);
        fix(&mut self.trust.station_key);
        if let Some(tls) = self.broker.tls.as_mut() {
            fix(&mut tls.ca_file);
            if let Some(p) = tls.client_cert.as_mut() {
                fix(p);
            }
            if let Some(p) = tls.client_key.as_mut() {
                fix(p);
            }
        }
    }

    /// Every problem with this configuration, each naming its key. Reads the files it names
    /// (to see that they exist and hold what they should) but changes nothing.
    pub fn check(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut problem = |key: &str, text: String| {
            out.push(ConfigProblem {
                key: key.to_owned(),
                problem: text,
            })
        };

        if let Some(level) = &self.log_level
            && let Err(e) = crate::logging::filter_for(Some(level))
        {
            problem("log_level", format!("{level:?}: {e}"));
        }
        if !valid_id(&self.station_id) {
            problem(
                "station_id",
                format!(
                    "{:?} is not a valid id (1-64 characters of A-Z a-z 0-9 - _ .)",
                    self.station_id
                ),
            );
        }
        if self.broker.host.trim().is_empty() {
            problem("broker.host", "is empty".into());
        }
        if self.broker.port == Some(0) {
            problem("broker.port", "0 is not a port".into());
        }
        if !(5..=3600).contains(&self.broker.keep_alive_secs) {
            problem(
                "broker.keep_alive_secs",
                format!("{} is outside 5..=3600", self.broker.keep_alive_secs),
            );
        }
        let prefix = &self.broker.topic_prefix;
        if prefix.is_empty()
            || prefix.starts_with('/')
            || prefix.ends_with('/')
            || prefix.contains(['+', '#', '\0'])
            || prefix.split('/').any(str::is_empty)
        {
            problem(
                "broker.topic_prefix",
                format!("{prefix:?} must be non-empty topic levels without wildcards"),
            );
        }
        if let Some(tls) = &self.broker.tls {
            check_pem_file(
                &mut problem,
                "broker.tls.ca_file",
                &tls.ca_file,
                &["CERTIFICATE"],
            );
            match (&tls.client_cert, &tls.client_key) {
                (Some(cert), Some(key)) => {
                    check_pem_file(
                        &mut problem,
                        "broker.tls.client_cert",
                        cert,
                        &["CERTIFICATE"],
                    );
                    check_pem_file(
                        &mut problem,
                        "broker.tls.client_key",
                        key,
                        PRIVATE_KEY_LABELS,
                    );
                    if let Some(text) = crate::private_files::key_mode_problem(key) {
                        problem("broker.tls.client_key", text);
                    }
                }
                (Some(_), None) => problem(
                    "broker.tls.client_key",
                    "missing: client_cert is set, so its key is needed".into(),
                ),
                (None, Some(_)) => problem(
                    "broker.tls.client_cert",
                    "missing: client_key is set, so its certificate is needed".into(),
                ),
                (None, None) => {}
            }
        }

        check_file(
            &mut problem,
            "pkcs11.default_module",
            &self.pkcs11.default_module,
        );
        if !(10..=60_000).contains(&self.pkcs11.scan_interval_ms) {
            problem(
                "pkcs11.scan_interval_ms",
                format!("{} is outside 10..=60000", self.pkcs11.scan_interval_ms),
            );
        }

        let mut seen = BTreeSet::new();
        for (i, model) in self.models.iter().enumerate() {
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
            check_file(&mut problem, &key("module"), &model.module);
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

        if self.usb.watcher == UsbWatcherKind::Sim {
            match &self.usb.sim_dir {
                None => problem("usb.sim_dir", "required when usb.watcher = \"sim\"".into()),
                Some(dir) if !dir.is_dir() => {
                    problem("usb.sim_dir", format!("{}: not a folder", dir.display()))
                }
                Some(_) => {}
            }
        }
        if self.usb.arrival_timeout_secs == 0 {
            problem("usb.arrival_timeout_secs", "must be at least 1".into());
        }

        if self.trust.ca_certs.is_empty() {
            problem(
                "trust.ca_certs",
                "is empty: issued certificates could never be verified".into(),
            );
        }
        for (i, ca) in self.trust.ca_certs.iter().enumerate() {
            check_pem_file(
                &mut problem,
                &format!("trust.ca_certs[{i}]"),
                ca,
                &["CERTIFICATE"],
            );
        }
        check_pem_file(
            &mut problem,
            "trust.platform_signing_key",
            &self.trust.platform_signing_key,
            &["PUBLIC KEY"],
        );
        check_pem_file(
            &mut problem,
            "trust.platform_sealing_key",
            &self.trust.platform_sealing_key,
            &["PUBLIC KEY"],
        );
        check_pem_file(
            &mut problem,
            "trust.station_key",
            &self.trust.station_key,
            PRIVATE_KEY_LABELS,
        );
        if let Some(text) = crate::private_files::key_mode_problem(&self.trust.station_key) {
            problem("trust.station_key", text);
        }

        let t = &self.timeouts;
        for (key, value) in [
            ("timeouts.certificates_secs", t.certificates_secs),
            ("timeouts.token_removed_secs", t.token_removed_secs),
            ("timeouts.bind_ack_secs", t.bind_ack_secs),
            ("timeouts.target_token_secs", t.target_token_secs),
            ("timeouts.resend_secs", t.resend_secs),
            ("timeouts.wedged_call_secs", t.wedged_call_secs),
        ] {
            if value == 0 {
                problem(key, "must be at least 1".into());
            }
        }
        if self.inventory.expiry_warning_days > 3650 {
            problem(
                "inventory.expiry_warning_days",
                format!(
                    "{} is more than ten years",
                    self.inventory.expiry_warning_days
                ),
            );
        }
        if self.audit.max_file_bytes < crate::audit::MIN_MAX_FILE_BYTES {
            problem(
                "audit.max_file_bytes",
                format!("must be at least {}", crate::audit::MIN_MAX_FILE_BYTES),
            );
        }
        if self.journal.compact_after_records == 0 {
            problem("journal.compact_after_records", "must be at least 1".into());
        }
        if let Some(panel) = &self.panel
            && panel.baud == 0
        {
            problem("panel.baud", "must be positive".into());
        }
        out
    }
}

const PRIVATE_KEY_LABELS: &[&str] = &["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"];

/// Station, job and token ids: short, printable, safe as a topic level.
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_file(problem: &mut impl FnMut(&str, String), key: &str, path: &Path) {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => problem(key, format!("{}: not a file", path.display())),
        Err(e) => problem(key, format!("{}: {}", path.display(), io_reason(&e))),
    }
}

/// Checks that `path` is a readable PEM file whose first block has one of `labels`.
fn check_pem_file(problem: &mut impl FnMut(&str, String), key: &str, path: &Path, labels: &[&str]) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return problem(key, format!("{}: {}", path.display(), io_reason(&e))),
    };
    let found = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("-----BEGIN ")?.strip_suffix("-----"));
    match found {
        Some(label) if labels.contains(&label) => {}
        Some(label) => problem(
            key,
            format!(
                "{}: holds a PEM \"{label}\", expected {}",
                path.display(),
                labels.join(" or ")
            ),
        ),
        None => problem(key, format!("{}: not a PEM file", path.display())),
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const EXAMPLE: &str = include_str!("../ukey-agent.example.toml");

    #[test]
    fn example_config_parses_with_documented_defaults() {
        let config = Config::parse(EXAMPLE).expect("example parses");
        assert_eq!(config.station_id, "desk-01");
        assert_eq!(config.broker.topic_prefix, DEFAULT_TOPIC_PREFIX);
        assert_eq!(config.broker.keep_alive_secs, 30);
        assert_eq!(config.broker.port(), 8883, "TLS is on in the example");
        assert_eq!(config.pkcs11.scan_interval_ms, 500);
        assert_eq!(config.timeouts.certificates_secs, 600);
        assert_eq!(config.timeouts.resend_secs, 60);
        assert_eq!(config.timeouts.wedged_call_secs, 120);
        assert_eq!(config.inventory.expiry_warning_days, 30);
        assert_eq!(config.journal.compact_after_records, 256);
        assert_eq!(config.models.len(), 1);
        assert_eq!(config.models[0].vendor_id, 0x096e);
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.broker.port(), 1883);
        assert_eq!(config.broker.client_id("d1"), "ukey-agent-d1");
        assert_eq!(config.usb.watcher, UsbWatcherKind::Rusb);
        assert_eq!(config.log_format, LogFormat::Human);
        assert!(config.panel.is_none());
        assert_eq!(config.timeouts.token_removed_secs, 300);
        assert_eq!(config.timeouts.wedged_call_secs, 120);
        assert_eq!(
            config.journal.compact_after_records,
            DEFAULT_COMPACT_AFTER_RECORDS
        );
    }

    const MINIMAL: &str = r#"
station_id = "d1"
[broker]
host = "127.0.0.1"
[pkcs11]
default_module = "/usr/lib/softhsm/libsofthsm2.so"
[trust]
ca_certs = ["ca.pem"]
platform_signing_key = "sign.pem"
platform_sealing_key = "seal.pem"
station_key = "station.pem"
"#;

    #[test]
    fn unknown_key_is_named() {
        let text = MINIMAL.replace("[broker]", "[broker]\nhots = \"x\"");
        let err = Config::parse(&text).unwrap_err();
        assert!(err.contains("hots"), "{err}");
    }

    #[test]
    fn check_names_each_bad_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let text = MINIMAL.replace("station_id = \"d1\"", "station_id = \"d 1/+\"");
        std::fs::write(&path, text).unwrap();
        std::fs::write(dir.path().join("sign.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
        let err = Config::load_checked(&path).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"station_id"), "{keys:?}");
        assert!(keys.contains(&"trust.ca_certs[0]"), "{keys:?}");
        assert!(keys.contains(&"trust.station_key"), "{keys:?}");
        let sign = problems
            .iter()
            .find(|p| p.key == "trust.platform_signing_key")
            .unwrap();
        assert!(sign.problem.contains("expected PUBLIC KEY"), "{sign}");
        let ca = problems
            .iter()
            .find(|p| p.key == "trust.ca_certs[0]")
            .unwrap();
        assert!(ca.problem.contains("no such file"), "{ca}");
        // Relative paths were resolved against the file's folder.
        assert!(
            ca.problem.contains(&dir.path().display().to_string()),
            "{ca}"
        );
    }

    #[test]
    fn a_zero_wedged_call_limit_is_reported() {
        let text = format!("{MINIMAL}[timeouts]\nwedged_call_secs = 0\n");
        let config = Config::parse(&text).unwrap();
        assert_eq!(config.timeouts.wedged_call(), Duration::ZERO);
        let problems = config.check();
        let p = problems
            .iter()
            .find(|p| p.key == "timeouts.wedged_call_secs")
            .unwrap_or_else(|| panic!("{problems:?}"));
        assert!(p.problem.contains("at least 1"), "{p}");
        let ok = Config::parse(&format!("{MINIMAL}[timeouts]\nwedged_call_secs = 45\n")).unwrap();
        assert_eq!(ok.timeouts.wedged_call(), Duration::from_secs(45));
        assert!(
            !ok.check()
                .iter()
                .any(|p| p.key == "timeouts.wedged_call_secs"),
            "{:?}",
            ok.check()
        );
    }

    #[test]
    fn a_journal_threshold_of_zero_is_reported() {
        let config =
            Config::parse(&format!("{MINIMAL}[journal]\ncompact_after_records = 0\n")).unwrap();
        let problems = config.check();
        assert!(
            problems
                .iter()
                .any(|p| p.key == "journal.compact_after_records"),
            "{problems:?}"
        );
        let config =
            Config::parse(&format!("{MINIMAL}[journal]\ncompact_after_records = 8\n")).unwrap();
        assert_eq!(config.journal.compact_after_records, 8);
        assert!(
            !config
                .check()
                .iter()
                .any(|p| p.key == "journal.compact_after_records")
        );
    }

    #[test]
    fn an_audit_file_size_below_the_minimum_is_reported() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(
            config.audit.max_file_bytes,
            crate::audit::DEFAULT_MAX_FILE_BYTES
        );
        let config = Config::parse(&format!("{MINIMAL}[audit]\nmax_file_bytes = 1000\n")).unwrap();
        let problems = config.check();
        assert!(
            problems.iter().any(|p| p.key == "audit.max_file_bytes"),
            "{problems:?}"
        );
        let config =
            Config::parse(&format!("{MINIMAL}[audit]\nmax_file_bytes = 1048576\n")).unwrap();
        assert_eq!(config.audit.max_file_bytes, 1_048_576);
        assert!(
            !config
                .check()
                .iter()
                .any(|p| p.key == "audit.max_file_bytes")
        );
    }

    #[test]
    fn partial_client_tls_is_reported() {
        let text = MINIMAL.replace(
            "host = \"127.0.0.1\"",
            "host = \"127.0.0.1\"\n[broker.tls]\nca_file = \"ca.pem\"\nclient_cert = \"c.pem\"",
        );
        let config = Config::parse(&text).unwrap();
        let problems = config.check();
        assert!(
            problems.iter().any(|p| p.key == "broker.tls.client_key"),
            "{problems:?}"
        );
    }
}
