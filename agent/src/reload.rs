//! SIGHUP (`systemctl reload ukey-agent`): re-read the configuration file while jobs run.
//!
//! Only the log filter (`log_level`) changes in a running agent. Every other key is read at
//! start-up into state that jobs in flight depend on (the broker session, the journal's key,
//! the token modules), so a changed value is named in one warning and waits for a restart;
//! an invalid file is refused as a whole and changes nothing. The files the configuration
//! names (keys, certificates) are read at start-up only.
//!
//! [`changed_keys`] is the pure part; [`Reloader::reload`] reads the file and logs.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};
use crate::logging::{self, LogControl};

/// Keys that a reload applies; every other change waits for a restart.
pub const RELOADABLE: &[&str] = &["log_level"];

/// The dotted keys whose values differ between two parsed configuration files (`broker.port`,
/// `models`, ...): tables are compared key by key, any other value (arrays included) as a
/// whole. A key present in one file only counts as changed.
pub fn changed_keys(old: &toml::Table, new: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    diff("", old, new, &mut out);
    out
}

fn diff(prefix: &str, old: &toml::Table, new: &toml::Table, out: &mut Vec<String>) {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let name = format!("{prefix}{key}");
        match (old.get(key), new.get(key)) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                diff(&format!("{name}."), a, b, out);
            }
            (a, b) if a == b => {}
            _ => out.push(name),
        }
    }
}

/// What a reload did, for tests and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The file was read; the log filter is now `level`; `refused` changed but wait for a
    /// restart.
    Applied {
        /// The log filter now in force, as [`logging::describe`] words it.
        level: String,
        /// Changed keys that a reload does not apply.
        refused: Vec<String>,
    },
    /// The file could not be read or is invalid: nothing changed.
    Rejected(String),
}

/// Re-reads the configuration on request; remembers what the agent runs with.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    /// The file as the agent started with it (parsed), to name what changed since.
    running: toml::Table,
    /// The log filter in force.
    log_level: Option<String>,
    log: Option<LogControl>,
    /// The keys the last reload applied (`log_level` when it changed), for the audit log.
    applied: Vec<String>,
}

fn read_table(path: &Path) -> Result<toml::Table, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.parse::<toml::Table>()
        .map_err(|e| format!("{}: {}", path.display(), e.to_string().trim_end()))
}

impl Reloader {
    /// A reloader for the agent started with `config`, read from `path`.
    pub fn new(path: &Path, config: &Config, log: Option<LogControl>) -> Reloader {
        Reloader {
            path: path.to_owned(),
            // Unreadable now means it was replaced since start-up: every key then counts
            // as changed at the next reload, which is the safe side.
            running: read_table(path).unwrap_or_default(),
            log_level: config.log_level.clone(),
            log,
            applied: Vec::new(),
        }
    }

    /// Re-reads the file: applies a changed `log_level`, names the other changed keys.
    /// Keys refused once stay refused (and named again) until a restart.
    pub fn reload(&mut self) -> Outcome {
        self.applied.clear();
        let config = match Config::load_checked(&self.path) {
            Ok(config) => config,
            Err(ConfigError::Invalid { problems, .. }) => {
                let text = problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                return Outcome::Rejected(format!("{}: {text}", self.path.display()));
            }
            Err(e) => return Outcome::Rejected(e.to_string()),
        };
        let table = match read_table(&self.path) {
            Ok(table) => table,
            Err(e) => return Outcome::Rejected(e),
        };
        if config.log_level != self.log_level {
            if let Some(log) = &self.log
                && let Err(e) = log.set_level(config.log_level.as_deref())
            {
                return Outcome::Rejected(format!("log_level: {e}"));
            }
            self.log_level = config.log_level.clone();
            self.applied.push("log_level".to_owned());
        }
        let refused = changed_keys(&self.running, &table)
            .into_iter()
            .filter(|k| !RELOADABLE.contains(&k.as_str()))
            .collect();
        Outcome::Applied {
            level: logging::describe(self.log_level.as_deref()),
            refused,
        }
    }

    /// The keys the last [`Reloader::reload`] applied (empty when it applied nothing).
    pub fn applied(&self) -> &[String] {
        &self.applied
    }

    /// [`Reloader::reload`], then one log line saying what happened.
    pub fn reload_and_log(&mut self) -> Outcome {
        let outcome = self.reload();
        match &outcome {
            Outcome::Applied { level, refused } if refused.is_empty() => {
                tracing::info!(log_level = %level, "SIGHUP: configuration re-read");
            }
            Outcome::Applied { level, refused } => tracing::warn!(
                log_level = %level,
                not_applied = %refused.join(", "),
                "SIGHUP: configuration re-read; only log_level applies while running, \
                 the other changed keys take effect at the next restart"
            ),
            Outcome::Rejected(why) => tracing::error!(
                problem = %why,
                "SIGHUP: configuration not re-read; the agent keeps running as it was"
            ),
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn changed_keys_are_named_by_their_dotted_path() {
        let old = table(
            "station_id = \"d1\"\nlog_level = \"info\"\n[broker]\nhost = \"a\"\nport = 1\n\
             [[models]]\nname = \"m\"\n",
        );
        let new = table(
            "station_id = \"d1\"\nlog_level = \"debug\"\n[broker]\nhost = \"a\"\nport = 2\n\
             [timeouts]\nresend_secs = 5\n[[models]]\nname = \"n\"\n",
        );
        assert_eq!(
            changed_keys(&old, &new),
            vec!["broker.port", "log_level", "models", "timeouts"]
        );
        assert!(changed_keys(&old, &old).is_empty());
    }

    #[test]
    fn a_missing_or_invalid_file_is_rejected_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "station_id = \"d1\"\n").unwrap();
        let config: Config = Config::parse(
            "station_id = \"d1\"\n[broker]\nhost = \"h\"\n[pkcs11]\ndefault_module = \"m\"\n\
             [trust]\nca_certs = []\nplatform_signing_key = \"a\"\n\
             platform_sealing_key = \"b\"\nstation_key = \"c\"\n",
        )
        .unwrap();
        let mut reloader = Reloader::new(&path, &config, None);
        assert!(matches!(reloader.reload(), Outcome::Rejected(_)));
        std::fs::remove_file(&path).unwrap();
        let Outcome::Rejected(why) = reloader.reload() else {
            panic!("a missing file is rejected");
        };
        assert!(why.contains("agent.toml"), "{why}");
        assert_eq!(reloader.log_level, None);
    }
}
