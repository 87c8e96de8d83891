//! What `ukey-agent status` shows an operator: the running agent writes a snapshot of its
//! state to `status.json` in its state folder every few seconds; the `status` command reads
//! it and renders it, and says plainly when the agent is not running (no file, or a snapshot
//! too old to be alive).
//!
//! The snapshot holds no secrets and no personal data: serials, job ids, steps, counts.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The file name inside the state folder.
pub const STATUS_FILE: &str = "status.json";

/// How often the agent refreshes the snapshot.
pub const REFRESH: Duration = Duration::from_secs(2);

/// A snapshot older than this means the agent is not running (or is wedged).
pub const STALE_AFTER: Duration = Duration::from_secs(15);

/// The agent's state at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When it was taken (seconds since the Unix epoch).
    pub at_unix: u64,
    /// The agent's process id.
    pub pid: u32,
    /// The agent's version.
    pub version: String,
    /// The station id.
    pub station_id: String,
    /// The broker connection: `connected`, `connecting`, `down: <reason>`, `stopped`.
    pub broker: String,
    /// Events waiting for the platform's acknowledgement.
    pub outbox_depth: usize,
    /// Age in seconds of the oldest of them.
    pub outbox_oldest_secs: Option<u64>,
    /// Jobs waiting for a token.
    pub queued_jobs: Vec<String>,
    /// Jobs working on a token, and jobs whose token is finished while they wait for the
    /// platform's acknowledgement.
    pub running_jobs: Vec<RunningJob>,
    /// Tokens at the desk.
    pub tokens: Vec<TokenLine>,
    /// The indicator panel: `none`, `connected <model>`, `disconnected: <reason>`.
    pub panel: String,
    /// CPU time (user and system) of the agent process since it started, in microseconds.
    #[serde(default)]
    pub cpu_us: u64,
    /// Of `cpu_us`, the time spent inside PKCS#11 module calls ([`crate::token::meter`]).
    #[serde(default)]
    pub module_cpu_us: u64,
    /// PKCS#11 module calls made since the agent started.
    #[serde(default)]
    pub module_calls: u64,
    /// Jobs rejected since start, and of those the ones above the rate limit on rejection
    /// events (`trust.rejections_per_minute`), which got no event.
    #[serde(default)]
    pub rejected_jobs: u64,
    /// See `rejected_jobs`.
    #[serde(default)]
    pub rejections_suppressed: u64,
    /// Acks, certificate responses and cancels refused since the agent started: unsigned,
    /// not signed by a trusted platform key, or meant for another station (never acted on).
    #[serde(default)]
    pub refused_platform_messages: u64,
    /// False in the last snapshot a stopping agent writes.
    #[serde(default = "yes")]
    pub running: bool,
    /// The operator signed in at the desk, if anyone.
    #[serde(default)]
    pub operator: Option<String>,
    /// Why the desk claims no jobs now, when it is for want of an operator.
    #[serde(default)]
    pub claims_paused: Option<String>,
    /// The audit log: entries written and lost since start, and the last error.
    #[serde(default)]
    pub audit: String,
    /// Production receipts made since start.
    #[serde(default)]
    pub receipts_made: u64,
}

fn yes() -> bool {
    true
}

/// One job in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningJob {
    /// The job.
    pub job_id: String,
    /// Its kind.
    pub kind: String,
    /// The token serial, once known.
    pub token: Option<String>,
    /// What it is doing: a step, or what it waits for.
    pub doing: String,
}

/// One token at the desk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenLine {
    /// Serial (or the slot of a serial-less blank token).
    pub token: String,
    /// PKCS#11 slot id now.
    pub slot: u64,
    /// Inventory state (`blank`, `active`, …).
    pub state: String,
    /// The job working on it.
    pub job_id: Option<String>,
}

/// Reading the snapshot failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// No snapshot: the agent has not run with this state folder, or cannot write there.
    #[error("no status at {path}: the agent is not running with this state folder ({source})")]
    Missing {
        /// The file looked for.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not a snapshot.
    #[error("{path}: not a status snapshot: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Writes `snapshot` atomically (temporary file, then rename) into `dir`.
pub fn write(dir: &Path, snapshot: &Snapshot) -> Result<(), StatusError> {
    let path = dir.join(STATUS_FILE);
    // One temporary file per write: two writes in flight never share (and tear) one.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("{STATUS_FILE}.{}.{n}.tmp", std::process::id()));
    let text = serde_json::to_vec_pretty(snapshot).map_err(|e| StatusError::Invalid {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    crate::private_files::write(&tmp, &text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| StatusError::Write { path, source })
}

/// Reads the snapshot in `dir`.
pub fn read(dir: &Path) -> Result<Snapshot, StatusError> {
    let path = dir.join(STATUS_FILE);
    let text = std::fs::read(&path).map_err(|source| StatusError::Missing {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| StatusError::Invalid {
        path,
        reason: e.to_string(),
    })
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether the snapshot is recent enough to describe a running agent.
pub fn is_fresh(snapshot: &Snapshot, now_unix: u64) -> bool {
    snapshot.running && now_unix.saturating_sub(snapshot.at_unix) <= STALE_AFTER.as_secs()
}

/// The operator's view, as plain text.
pub fn render(s: &Snapshot, now_unix: u64) -> String {
    let mut out = String::new();
    let age = now_unix.saturating_sub(s.at_unix);
    if is_fresh(s, now_unix) {
        out.push_str(&format!(
            "ukey-agent {} (pid {}), station {}\n",
            s.version, s.pid, s.station_id
        ));
    } else if !s.running {
        out.push_str(&format!(
            "ukey-agent NOT RUNNING: stopped {age} s ago (pid {}, station {})\n",
            s.pid, s.station_id
        ));
    } else {
        out.push_str(&format!(
            "ukey-agent NOT RUNNING: last status {age} s ago (pid {}, station {})\n",
            s.pid, s.station_id
        ));
    }
    out.push_str(&format!("broker:  {}\n", s.broker));
    let oldest = s
        .outbox_oldest_secs
        .map(|a| format!(", oldest {a} s"))
        .unwrap_or_default();
    out.push_str(&format!(
        "outbox:  {} event(s) awaiting the platform's acknowledgement{oldest}\n",
        s.outbox_depth
    ));
    out.push_str(&format!("panel:   {}\n", s.panel));
    out.push_str(&format!(
        "cpu:     {:.1} s since start, of which {:.1} s inside PKCS#11 modules ({} calls)\n",
        s.cpu_us as f64 / 1e6,
        s.module_cpu_us as f64 / 1e6,
        s.module_calls
    ));
    out.push_str(&format!(
        "rejected: {} job(s), {} without an event (above the rate limit)\n",
        s.rejected_jobs, s.rejections_suppressed
    ));
    out.push_str(&format!(
        "refused: {} platform message(s) not signed by a trusted key for this station\n",
        s.refused_platform_messages
    ));
    out.push_str(&format!(
        "operator: {}\n",
        s.operator.as_deref().unwrap_or("nobody signed in")
    ));
    if let Some(why) = &s.claims_paused {
        out.push_str(&format!("claims:  PAUSED: {why}\n"));
    }
    if !s.audit.is_empty() {
        out.push_str(&format!(
            "audit:   {}; {} receipt(s) made\n",
            s.audit, s.receipts_made
        ));
    }
    out.push_str(&format!("jobs:    {} queued", s.queued_jobs.len()));
    if !s.queued_jobs.is_empty() {
        out.push_str(&format!(" ({})", s.queued_jobs.join(", ")));
    }
    out.push_str(&format!(", {} running\n", s.running_jobs.len()));
    for j in &s.running_jobs {
        out.push_str(&format!(
            "  {} {:<8} token {:<16} {}\n",
            j.job_id,
            j.kind,
            j.token.as_deref().unwrap_or("-"),
            j.doing
        ));
    }
    out.push_str(&format!("tokens:  {}\n", s.tokens.len()));
    for t in &s.tokens {
        out.push_str(&format!(
            "  slot {:<4} {:<20} {:<14} {}\n",
            t.slot,
            t.token,
            t.state,
            t.job_id.as_deref().unwrap_or("")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn sample(at: u64) -> Snapshot {
        Snapshot {
            at_unix: at,
            pid: 42,
            version: "0.1.0".into(),
            station_id: "desk-01".into(),
            broker: "connected".into(),
            outbox_depth: 2,
            outbox_oldest_secs: Some(5),
            queued_jobs: vec!["J-2".into()],
            running_jobs: vec![RunningJob {
                job_id: "J-1".into(),
                kind: "new".into(),
                token: Some("SIM0000000000001".into()),
                doing: "generate-keys".into(),
            }],
            tokens: vec![TokenLine {
                token: "SIM0000000000001".into(),
                slot: 0,
                state: "in-production".into(),
                job_id: Some("J-1".into()),
            }],
            panel: "none".into(),
            cpu_us: 12_500_000,
            module_cpu_us: 8_000_000,
            module_calls: 4321,
            rejected_jobs: 200,
            rejections_suppressed: 190,
            refused_platform_messages: 3,
            running: true,
            operator: None,
            claims_paused: None,
            audit: String::new(),
            receipts_made: 0,
        }
    }

    #[test]
    fn round_trip_and_render() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &sample(1000)).unwrap();
        let back = read(dir.path()).unwrap();
        assert_eq!(back, sample(1000));
        let text = render(&back, 1001);
        assert!(text.contains("station desk-01"), "{text}");
        assert!(text.contains("2 event(s)"), "{text}");
        assert!(text.contains("generate-keys"), "{text}");
        assert!(text.contains("in-production"), "{text}");
        assert!(
            text.contains("12.5 s since start, of which 8.0 s inside PKCS#11 modules (4321 calls)"),
            "{text}"
        );
        assert!(
            text.contains("rejected: 200 job(s), 190 without an event"),
            "{text}"
        );
        assert!(
            text.contains("refused: 3 platform message(s) not signed"),
            "{text}"
        );
        assert!(!text.contains("NOT RUNNING"));
        assert!(render(&back, 1000 + 60).contains("NOT RUNNING"));
        let stopped = Snapshot {
            running: false,
            ..back
        };
        assert!(!is_fresh(&stopped, 1001));
        assert!(render(&stopped, 1001).contains("NOT RUNNING: stopped"));
    }

    #[test]
    fn missing_file_says_the_agent_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not running"), "{err}");
    }
}
