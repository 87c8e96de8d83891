//! The agent compacts its job journal while it runs, and what it keeps is enough: jobs in
//! flight survive a SIGKILL after a live compaction, finished jobs are not redone, and a
//! redelivered finished job is still recognised.
//!
//! Real Mosquitto, the simulated platform, an hsm-sim rack and the real `ukey-agent` binary,
//! configured with a low `[journal] compact_after_records` so that every finished job makes
//! the journal worth compacting. The journal file is read as the agent wrote it (its framing
//! is documented in the agent's `journal` module); its records' contents are encrypted, only
//! their kinds and ids are looked at.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use hsm_sim::rack::LatencyChange;
use hsm_sim::rack::latency::Op;
use ukey_platform_sim::{JobDraft, JobRecord};
use ukey_protocol::event::{ExecutionState, Step};
use ukey_protocol::ids::JobId;
use ukey_protocol::job::JobKind;
use ukey_protocol::keys::KeyAlgorithm;
use ukey_tests::station::{ObjectCount, PRODUCTION_TIMEOUT, Station};

/// The agent's log line for each live compaction.
const COMPACTED: &str = "journal compacted while running";
/// The agent's log line for a redelivered job it knows.
const DUPLICATE: &str = "duplicate delivery of a known job ignored";

/// A finished Ukey: three key pairs and three certificates, nothing more.
const FINISHED: ObjectCount = ObjectCount {
    private_keys: 3,
    public_keys: 3,
    certificates: 3,
    other: 0,
};

/// A desk whose agent compacts after every finished job (a job writes about ten records).
async fn desk(slots: usize) -> Station {
    let mut station = Station::sim(slots).await;
    station.configure(|c| c.journal.compact_after_records = 8);
    station
}

/// The journal's records as JSON values (kind and ids readable, content sealed), and the
/// length of the file's part that holds them (the commit marker `UKC1` and zeros, the room
/// for later appends, follow).
fn journal_content(station: &Station) -> (Vec<serde_json::Value>, u64) {
    let bytes = std::fs::read(station.state_dir().join("journal.log")).unwrap();
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() && bytes[pos..].iter().any(|b| *b != 0) {
        if &bytes[pos..pos + 4] == b"UKC1" {
            break;
        }
        assert_eq!(&bytes[pos..pos + 4], b"UKR2", "record magic at {pos}");
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let payload = &bytes[pos + 16..pos + 16 + len];
        records.push(serde_json::from_slice(payload).unwrap());
        pos += 16 + len;
    }
    (records, pos as u64)
}

pub(crate) fn journal_records(station: &Station) -> Vec<serde_json::Value> {
    journal_content(station).0
}

pub(crate) fn kind(record: &serde_json::Value) -> &str {
    record["record"].as_str().unwrap()
}

pub(crate) fn job_of(record: &serde_json::Value) -> &str {
    record["job_id"].as_str().unwrap_or("")
}

/// Polls the journal file until `pred` holds, at most `PRODUCTION_TIMEOUT` (the agent writes
/// it after the platform's last acknowledgement, which the platform records first).
async fn wait_journal(
    station: &Station,
    what: &str,
    mut pred: impl FnMut(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + PRODUCTION_TIMEOUT;
    loop {
        let records = journal_records(station);
        if pred(&records) {
            return records;
        }
        if tokio::time::Instant::now() >= deadline {
            station.fail_with_log(format!("journal never held {what}: {records:#?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The agent's log without terminal colour codes.
fn plain_log(station: &Station) -> String {
    let log = station.agent_log();
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `field=value` numbers of every compaction line: (records before, after, bytes before, after).
fn compactions(station: &Station) -> Vec<(u64, u64, u64, u64)> {
    plain_log(station)
        .lines()
        .filter(|l| l.contains(COMPACTED))
        .map(|line| {
            let field = |name: &str| -> u64 {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{name}=")))
                    .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                    .parse()
                    .unwrap()
            };
            (
                field("records_before"),
                field("records_after"),
                field("bytes_before"),
                field("bytes_after"),
            )
        })
        .collect()
}

/// Waits until `job` succeeded; checks every event arrived once after de-duplication by
/// event id (sequence numbers 1..=n, one id each) and the platform saw no problem.
async fn succeeded(station: &Station, job: &JobId) -> JobRecord {
    let record = station.new_job_succeeded(job).await;
    let serial = record.token_serial().expect("the job names its token");
    assert_eq!(station.objects(serial.as_str()), FINISHED, "{serial}");
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_shrink_to_one_record_while_the_agent_runs() {
    let mut station = desk(2).await;
    station.start_agent().await;
    let jobs = [
        station.dispatch_new(KeyAlgorithm::P256).await,
        station.dispatch_new(KeyAlgorithm::P256).await,
    ];
    station.insert_blank(0);
    station.insert_blank(1);
    for job in &jobs {
        succeeded(&station, job).await;
    }
    station.wait_for_log(COMPACTED, 1, PRODUCTION_TIMEOUT).await;

    // Both jobs finished: the journal is their two summaries and nothing else.
    let records = wait_journal(&station, "two `done` records only", |r| {
        r.len() == 2 && r.iter().all(|r| kind(r) == "done")
    })
    .await;
    let ids: BTreeSet<&str> = records.iter().map(job_of).collect();
    let expected: BTreeSet<&str> = jobs.iter().map(|j| j.as_str()).collect();
    assert_eq!(ids, expected);

    // The records shrank, as the log line says, and the line holds counts only.
    let size = journal_content(&station).1;
    let lines = compactions(&station);
    assert!(!lines.is_empty());
    for (before, after, bytes_before, bytes_after) in &lines {
        assert!(after < before, "{lines:?}");
        assert!(bytes_after < bytes_before, "{lines:?}");
    }
    let (_, after, _, bytes_after) = *lines.last().unwrap();
    assert_eq!(after, 2, "{lines:?}");
    assert_eq!(bytes_after, size, "{lines:?}");
    let largest = lines.iter().map(|l| l.2).max().unwrap();
    assert!(size * 5 < largest, "{size} bytes after, {largest} before");
    let log = plain_log(&station);
    for line in log.lines().filter(|l| l.contains(COMPACTED)) {
        for job in &jobs {
            assert!(!line.contains(job.as_str()), "{line}");
        }
    }
    assert!(station.agent_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_a_live_compaction_resumes_and_still_knows_finished_jobs() {
    let mut station = desk(3).await;
    station.start_agent().await;

    // Job A runs to its end on slot 0, while job C waits for a token: the compaction after
    // A keeps C's record and shrinks A's.
    let draft = JobDraft::new(JobKind::New, &station.station_id)
        .unwrap()
        .with_algorithm(KeyAlgorithm::P256);
    let signed_a = station.platform.job(&draft).unwrap();
    let a = station.platform.dispatch(&signed_a).await.unwrap();
    station.insert_blank(0);
    station
        .platform
        .wait_for(&a, |r| r.has_step(Step::Claim), PRODUCTION_TIMEOUT)
        .await
        .unwrap_or_else(|e| station.fail_with_log(e));
    let c = station.dispatch_new(KeyAlgorithm::P256).await;
    let record_a = succeeded(&station, &a).await;
    let events_a = record_a.events().len();
    station.wait_for_log(COMPACTED, 1, PRODUCTION_TIMEOUT).await;
    let records = wait_journal(&station, "A's summary and C's job", |r| {
        r.iter()
            .any(|r| kind(r) == "done" && job_of(r) == a.as_str())
            && r.iter()
                .all(|r| job_of(r) != a.as_str() || kind(r) == "done")
    })
    .await;
    assert!(
        records
            .iter()
            .any(|r| kind(r) == "job" && job_of(r) == c.as_str()),
        "the waiting job's record survived the compaction: {records:#?}"
    );

    // Job C claims a slow token and is killed in the middle of its key generation; job B
    // is accepted meanwhile and waits for a token.
    station
        .rack()
        .set_latency(None, LatencyChange::Op(Op::KeygenP256, 1500))
        .unwrap();
    let serial_c = station.insert_blank(1);
    station
        .wait_for_token(&serial_c, "a first key pair", PRODUCTION_TIMEOUT, |t| {
            ObjectCount::of(t).private_keys >= 1
        })
        .await;
    let b = station.dispatch_new(KeyAlgorithm::P256).await;
    station
        .platform
        .wait_for(&b, |r| r.has_step(Step::Receive), PRODUCTION_TIMEOUT)
        .await
        .unwrap_or_else(|e| station.fail_with_log(e));
    station.kill_agent();
    assert!(
        station.objects(&serial_c).private_keys < 3,
        "killed mid-job"
    );

    // After the restart C resumes, B runs on a fresh token, A is not run again.
    station
        .rack()
        .set_latency(None, LatencyChange::ClearOp(Op::KeygenP256))
        .unwrap();
    station.start_agent().await;
    let serial_b = station.insert_blank(2);
    let record_c = succeeded(&station, &c).await;
    assert_eq!(
        record_c.token_serial().map(|s| s.as_str().to_owned()),
        Some(serial_c.clone())
    );
    let record_b = succeeded(&station, &b).await;
    assert_eq!(
        record_b.token_serial().map(|s| s.as_str().to_owned()),
        Some(serial_b)
    );

    // A redelivery of A is recognised from its `Done` record, across the restart.
    station.platform.dispatch(&signed_a).await.unwrap();
    station.wait_for_log(DUPLICATE, 1, PRODUCTION_TIMEOUT).await;
    let record_a = station.platform.job_record(&a).unwrap();
    assert_eq!(record_a.envelopes_sent().len(), 2);
    assert_eq!(record_a.events().len(), events_a, "no new event for A");
    assert_eq!(record_a.state(), Some(ExecutionState::Succeeded));
    assert!(station.agent_running());
}
