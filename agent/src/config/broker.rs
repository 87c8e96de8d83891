//! `[broker]`: where the platform's MQTT broker is, how the station proves who it is there,
//! and whether the link is encrypted.
//!
//! Jobs carry ID-card numbers and mobile numbers, so a broker that is not on this machine is
//! reached over TLS: without `[broker.tls]`, an address off loopback is a configuration error
//! unless `allow_plaintext = true` says clear text is wanted, and then [`BrokerConfig::warnings`]
//! says so at start, in `check-config` and in `status`. The password is read from a file named
//! here (never written in the configuration itself), so the configuration can be shown and
//! its text logged without giving the password away.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ConfigProblem, DEFAULT_TOPIC_PREFIX, PRIVATE_KEY_LABELS, check_pem_file, io_reason};

/// The MQTT broker and how to reach it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Host name or address of a single broker. Either this or [`BrokerConfig::hosts`].
    #[serde(default)]
    pub host: String,
    /// Several addresses of one broker service (a cluster behind several addresses, or a
    /// bridged pair), each `host` or `host:port` (`[v6]:port` for IPv6), tried in turn:
    /// the next one when an attempt fails or the connection in use dies. The station keeps
    /// one client id and one persistent session on all of them.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// TCP port (default 1883, or 8883 with TLS); also the port of `hosts` entries without one.
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
    /// MQTT user name, for brokers that authenticate stations by password.
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the MQTT password (its whole content, one trailing line break
    /// ignored). Readable by the agent only: a file other users may read is refused.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Accept a broker off loopback without TLS (default false): personal data then
    /// crosses the network in clear. Warned about at start and in `status`.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// TLS; absent means plain TCP, which only loopback brokers get without
    /// `allow_plaintext`.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// One address of the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// Host name or IP address (the name TLS checks the certificate against).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl std::fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl BrokerConfig {
    /// A single broker at `host` (and `port`, else the default port), every other key at
    /// its default.
    pub fn new(host: impl Into<String>, port: Option<u16>) -> BrokerConfig {
        BrokerConfig {
            host: host.into(),
            hosts: Vec::new(),
            port,
            client_id: None,
            keep_alive_secs: default_keep_alive(),
            topic_prefix: default_topic_prefix(),
            username: None,
            password_file: None,
            allow_plaintext: false,
            tls: None,
        }
    }

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

    /// The addresses to try, in order: `host`, or every entry of `hosts`. An entry that
    /// does not parse is left out here ([`BrokerConfig::check`] reports it).
    pub fn addresses(&self) -> Vec<BrokerAddress> {
        let port = self.port();
        if self.hosts.is_empty() {
            return vec![BrokerAddress {
                host: self.host.clone(),
                port,
            }];
        }
        self.hosts
            .iter()
            .filter_map(|entry| parse_address(entry, port).ok())
            .collect()
    }

    /// The addresses reached in clear text over the network: every one off loopback when
    /// there is no TLS, none otherwise.
    pub fn plaintext_addresses(&self) -> Vec<BrokerAddress> {
        if self.tls.is_some() {
            return Vec::new();
        }
        self.addresses()
            .into_iter()
            .filter(|a| !is_loopback(&a.host))
            .collect()
    }

    /// What is accepted but unsafe: a broker off loopback in clear text because
    /// `allow_plaintext = true`.
    pub fn warnings(&self) -> Vec<ConfigProblem> {
        let clear = self.plaintext_addresses();
        if clear.is_empty() || !self.allow_plaintext {
            return Vec::new();
        }
        vec![ConfigProblem {
            key: "broker.allow_plaintext".into(),
            problem: format!(
                "the broker link to {} is not encrypted: job data (ID-card and phone numbers) \
                 and the station's password cross the network in clear; add [broker.tls]",
                list(&clear)
            ),
        }]
    }

    /// Resolves relative file names against `fix`.
    pub(super) fn resolve_relative(&mut self, fix: impl Fn(&mut PathBuf)) {
        if let Some(p) = self.password_file.as_mut() {
            fix(p);
        }
        if let Some(tls) = self.tls.as_mut() {
            fix(&mut tls.ca_file);
            if let Some(p) = tls.client_cert.as_mut() {
                fix(p);
            }
            if let Some(p) = tls.client_key.as_mut() {
                fix(p);
            }
        }
    }

    /// Every problem of `[broker]`, each with its key.
    pub(super) fn check(&self, problem: &mut impl FnMut(&str, String)) {
        match (self.host.trim().is_empty(), self.hosts.is_empty()) {
            (true, true) => problem("broker.host", "is empty (set host or hosts)".into()),
            (false, false) => problem(
                "broker.hosts",
                "set either broker.host or broker.hosts, not both".into(),
            ),
            _ => {}
        }
        for (i, entry) in self.hosts.iter().enumerate() {
            if let Err(reason) = parse_address(entry, self.port()) {
                problem(
                    &format!("broker.hosts[{i}]"),
                    format!("{entry:?}: {reason}"),
                );
            }
        }
        if self.port == Some(0) {
            problem("broker.port", "0 is not a port".into());
        }
        if !(5..=3600).contains(&self.keep_alive_secs) {
            problem(
                "broker.keep_alive_secs",
                format!("{} is outside 5..=3600", self.keep_alive_secs),
            );
        }
        let prefix = &self.topic_prefix;
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
        let clear = self.plaintext_addresses();
        if !clear.is_empty() && !self.allow_plaintext {
            problem(
                "broker.tls",
                format!(
                    "missing: {} is not on this machine, and without TLS job data (ID-card and \
                     phone numbers) would cross the network in clear; add [broker.tls], or set \
                     broker.allow_plaintext = true to accept that",
                    list(&clear)
                ),
            );
        }
        self.check_credentials(problem);
        if let Some(tls) = &self.tls {
            tls.check(problem);
        }
    }

    fn check_credentials(&self, problem: &mut impl FnMut(&str, String)) {
        if let Some(name) = &self.username
            && (name.is_empty() || name.len() > 1024)
        {
            problem("broker.username", "must be 1-1024 bytes".into());
        }
        let Some(path) = &self.password_file else {
            return;
        };
        if self.username.is_none() {
            problem(
                "broker.username",
                "missing: password_file is set, so a user name is needed".into(),
            );
        }
        // The content is read to see that there is one, and never shown.
        match read_password(path) {
            Ok(_) => {}
            Err(PasswordFileProblem::Io(e)) => problem(
                "broker.password_file",
                format!("{}: {}", path.display(), io_reason(&e)),
            ),
            Err(PasswordFileProblem::Empty) => problem(
                "broker.password_file",
                format!("{}: is empty", path.display()),
            ),
        }
        if let Some(mode) = file_mode(path)
            && mode & 0o004 != 0
        {
            problem(
                "broker.password_file",
                format!(
                    "{}: every user may read it (mode {:o}); chmod o-r",
                    path.display(),
                    mode & 0o777
                ),
            );
        }
    }
}

/// Why a password file gives no password.
#[derive(Debug)]
pub(crate) enum PasswordFileProblem {
    /// It cannot be read.
    Io(std::io::Error),
    /// It holds nothing (or only a line break).
    Empty,
}

/// The password in `path`: the file's content without one trailing line break. Shared with
/// the link, which reads it when it starts, so that both agree on what the file means.
pub(crate) fn read_password(
    path: &Path,
) -> Result<zeroize::Zeroizing<String>, PasswordFileProblem> {
    let mut text =
        zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(PasswordFileProblem::Io)?);
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(PasswordFileProblem::Empty);
    }
    Ok(text)
}

#[cfg(unix)]
fn file_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).ok().map(|m| m.permissions().mode())
}

#[cfg(not(unix))]
fn file_mode(_: &Path) -> Option<u32> {
    None
}

fn list(addresses: &[BrokerAddress]) -> String {
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `host` names this machine: `localhost` (RFC 6761) or a loopback address.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; a bare IPv6 address has no port.
fn parse_address(entry: &str, default_port: u16) -> Result<BrokerAddress, String> {
    let entry = entry.trim();
    let port_of = |text: &str| match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{text:?} is not a port")),
        Ok(port) => Ok(port),
    };
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "an IPv6 address opened with [ is not closed".to_string())?;
        match after.strip_prefix(':') {
            Some(port) => (host, port_of(port)?),
            None if after.is_empty() => (host, default_port),
            None => return Err(format!("unexpected {after:?} after the address")),
        }
    } else if entry.matches(':').count() > 1 {
        (entry, default_port)
    } else {
        match entry.split_once(':') {
            Some((host, port)) => (host, port_of(port)?),
            None => (entry, default_port),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err("no host name".into());
    }
    Ok(BrokerAddress {
        host: host.to_owned(),
        port,
    })
}

/// TLS to the broker.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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

impl TlsConfig {
    fn check(&self, problem: &mut impl FnMut(&str, String)) {
        check_pem_file(
            problem,
            "broker.tls.ca_file",
            &self.ca_file,
            &["CERTIFICATE"],
        );
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                check_pem_file(problem, "broker.tls.client_cert", cert, &["CERTIFICATE"]);
                check_pem_file(problem, "broker.tls.client_key", key, PRIVATE_KEY_LABELS);
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
}

fn default_keep_alive() -> u64 {
    30
}
fn default_topic_prefix() -> String {
    DEFAULT_TOPIC_PREFIX.to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses_parse_with_and_without_ports() {
        assert_eq!(
            parse_address("mqtt-a.example:8884", 8883).unwrap(),
            BrokerAddress {
                host: "mqtt-a.example".into(),
                port: 8884
            }
        );
        assert_eq!(parse_address("10.0.0.5", 1883).unwrap().port, 1883);
        assert_eq!(parse_address("[::1]:1884", 1883).unwrap().host, "::1");
        assert_eq!(parse_address("fd00::7", 1883).unwrap().host, "fd00::7");
        assert!(parse_address("host:0", 1883).is_err());
        assert!(parse_address("host:x", 1883).is_err());
        assert!(parse_address("[::1", 1883).is_err());
        assert!(parse_address(":1883", 1883).is_err());
    }

    #[test]
    fn loopback_is_told_from_the_network() {
        for host in [
            "127.0.0.1",
            "127.3.2.1",
            "::1",
            "[::1]",
            "localhost",
            "LocalHost.",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "10.0.0.1",
            "192.0.2.7",
            "mqtt.example",
            "::",
            "localhost.example",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
        assert!(is_loopback("::ffff:127.0.0.1"));
    }
}
