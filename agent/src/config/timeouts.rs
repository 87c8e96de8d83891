//! The desk's clocks and bookkeeping: `[timeouts]`, `[inventory]` and `[journal]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::DEFAULT_COMPACT_AFTER_RECORDS;

/// Step timeouts, in seconds.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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

impl TimeoutConfig {
    pub(super) fn check(&self, problem: &mut impl FnMut(&str, String)) {
        for (key, value) in [
            ("timeouts.certificates_secs", self.certificates_secs),
            ("timeouts.token_removed_secs", self.token_removed_secs),
            ("timeouts.bind_ack_secs", self.bind_ack_secs),
            ("timeouts.target_token_secs", self.target_token_secs),
            ("timeouts.resend_secs", self.resend_secs),
            ("timeouts.wedged_call_secs", self.wedged_call_secs),
        ] {
            if value == 0 {
                problem(key, "must be at least 1".into());
            }
        }
    }
}

impl InventoryConfig {
    pub(super) fn check(&self, problem: &mut impl FnMut(&str, String)) {
        if self.expiry_warning_days > 3650 {
            problem(
                "inventory.expiry_warning_days",
                format!("{} is more than ten years", self.expiry_warning_days),
            );
        }
    }
}

impl JournalConfig {
    pub(super) fn check(&self, problem: &mut impl FnMut(&str, String)) {
        if self.compact_after_records == 0 {
            problem("journal.compact_after_records", "must be at least 1".into());
        }
    }
}
