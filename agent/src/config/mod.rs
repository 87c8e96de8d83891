//! The agent's configuration: one TOML file, every key documented in
//! `agent/ukey-agent.example.toml` with its default.
//!
//! Loading ([`Config::load`]) parses and rejects unknown keys (a typo is an error that names
//! the key, not a silently ignored setting). Checking ([`Config::check`]) goes further and looks
//! at the world the configuration points to — files that must exist, modules that must be
//! loadable paths, values that must be in range — and reports every problem with the key it
//! belongs to. This module reads files but opens no devices and no network connections.
//!
//! Writing ([`Config::to_toml`]) is the inverse of parsing: the demo and the integration
//! tests build a typed [`Config`] and write it, so what they run is what `check-config` checks.
//!
//! One submodule per group of sections: `broker` (`[broker]`, its TLS, credentials and the
//! plaintext rule), `desk` (modules, models, USB, rack positions, trust files, panel) and `timeouts`
//! (timeouts, inventory, journal); their types are re-exported here.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod broker;
mod desk;
mod timeouts;

pub use broker::{BrokerAddress, BrokerConfig, TlsConfig, is_loopback};
pub(crate) use broker::{PasswordFileProblem, read_password};
pub use desk::{
    ModelConfig, PanelConfig, Pkcs11Config, RackConfig, RackPosition, TrustConfig, UsbConfig,
    UsbWatcherKind,
};
pub use timeouts::{InventoryConfig, JournalConfig, TimeoutConfig};

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
    /// The configuration cannot be written as TOML (a path that is not UTF-8).
    #[error("cannot write the configuration as TOML: {message}")]
    Serialize {
        /// The serializer's message.
        message: String,
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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    /// The rack: which USB port is which numbered position.
    #[serde(default)]
    pub rack: RackConfig,
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
    /// The desk's indicator panel; absent means the desk has none.
    #[serde(default)]
    pub panel: Option<PanelConfig>,
    /// The audit log (`audit/` in the state folder).
    #[serde(default)]
    pub audit: AuditConfig,
    /// How the desk is staffed.
    #[serde(default)]
    pub desk: DeskPolicy,
}

/// How the desk is staffed (`[desk]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeskPolicy {
    /// Claim jobs only while an operator is signed in (`ukey-agent operator sign-in ID`);
    /// default false. While nobody is, jobs wait in the queue and the inventory, the status
    /// and the panel say why.
    #[serde(default)]
    pub require_operator: bool,
}

/// The audit log (`audit/audit-NNNNNN.jsonl` in the state folder; see `crate::audit`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/ukey-agent")
}

impl Config {
    /// A configuration with these required parts and every other key at its default (as if
    /// the file held only them): what a program that writes configurations starts from.
    pub fn new(
        station_id: impl Into<String>,
        broker: BrokerConfig,
        pkcs11: Pkcs11Config,
        trust: TrustConfig,
    ) -> Config {
        Config {
            station_id: station_id.into(),
            state_dir: default_state_dir(),
            log_format: LogFormat::default(),
            log_level: None,
            broker,
            pkcs11,
            models: Vec::new(),
            usb: UsbConfig::default(),
            rack: RackConfig::default(),
            trust,
            timeouts: TimeoutConfig::default(),
            inventory: InventoryConfig::default(),
            journal: JournalConfig::default(),
            panel: None,
            audit: AuditConfig::default(),
            desk: DeskPolicy::default(),
        }
    }

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

    /// The configuration as TOML text that [`Config::parse`] reads back equal. Absent
    /// optional keys are left out, so their defaults apply on reading.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Serialize {
            message: e.to_string(),
        })
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
        if let Some(key) = self.trust.platform_signing_key.as_mut() {
            fix(key);
        }
        for key in &mut self.trust.platform_signing_keys {
            fix(&mut key.file);
        }
        fix(&mut self.trust.platform_sealing_key);
        fix(&mut self.trust.station_key);
        self.broker.resolve_relative(fix);
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
        self.broker.check(&mut problem);
        self.pkcs11.check(&mut problem);
        desk::check_models(&self.models, &mut problem);
        self.usb.check(&mut problem);
        self.rack.check(&mut problem);
        self.trust.check(&mut problem);
        self.timeouts.check(&mut problem);
        self.inventory.check(&mut problem);
        self.journal.check(&mut problem);
        if let Some(panel) = &self.panel {
            panel.check(&mut problem);
        }
        if self.audit.max_file_bytes < crate::audit::MIN_MAX_FILE_BYTES {
            problem(
                "audit.max_file_bytes",
                format!("must be at least {}", crate::audit::MIN_MAX_FILE_BYTES),
            );
        }
        out
    }

    /// What this configuration allows although it is unsafe (each with the key that allows
    /// it): shown by `check-config`, logged once at start and shown by `status`.
    pub fn warnings(&self) -> Vec<ConfigProblem> {
        self.broker.warnings()
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
mod tests;
