//! A job's secrets die with the job: once it ends, its PINs and personal data cannot be read
//! from the journal even with the station's own key, though its records are still there
//! (no compaction has run); while it runs, they can, and a crash does not lose them.
//!
//! Real Mosquitto, the simulated platform, an hsm-sim rack and the real `ukey-agent` binary.
//! The journal and its key file are read as the agent wrote them (formats in the agent's
//! `journal` and `job_keys` modules), and opened the way the agent opens them: with the
//! journal key derived from the station key, and the job's key unwrapped with it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use hsm_sim::rack::LatencyChange;
use hsm_sim::rack::latency::Op;
use secrecy::ExposeSecret;
use ukey_agent::job_keys::JobKeys;
use ukey_agent::steps::Pins;
use ukey_agent::trust::{JournalKey, Sealed};
use ukey_protocol::ids::{JobId, TokenSerial};
use ukey_protocol::keys::KeyAlgorithm;
use ukey_protocol::seal::UnsealKey;
use ukey_tests::station::{ObjectCount, PRODUCTION_TIMEOUT, Station};

use crate::journal_compaction::{job_of, journal_records, kind};

/// The agent's log line for a redelivered job it knows.
const DUPLICATE: &str = "duplicate delivery of a known job ignored";

fn keys_file(station: &Station) -> PathBuf {
    station.state_dir().join("journal.keys")
}

/// The journal key, derived from the station key as the agent derives it.
fn journal_key(station: &Station) -> JournalKey {
    let path = &station.trust().expect("the agent was started").station_key;
    let pem = std::fs::read_to_string(path).unwrap();
    JournalKey::derive(&UnsealKey::from_pkcs8_pem(&pem).unwrap())
}

/// Every key that could open `job`'s records: its own (if the key file still holds it),
/// and the journal key.
fn candidate_keys(station: &Station, job: &JobId) -> Vec<JournalKey> {
    let journal = journal_key(station);
    let mut keys = Vec::new();
    if let Some(wrapped) = JobKeys::peek(&keys_file(station), job).unwrap() {
        keys.push(journal.unwrap_key(job.as_str(), &wrapped).unwrap());
    }
    keys.push(journal);
    keys
}

/// The PINs of `job`'s `pins` record, opened with any key the station has; `Err` says why
/// none opened (there is a record, but nothing opens it).
fn journaled_pins(station: &Station, job: &JobId) -> Result<Pins, String> {
    let records = journal_records(station);
    let record = records
        .iter()
        .find(|r| kind(r) == "pins" && job_of(r) == job.as_str())
        .ok_or("no pins record")?;
    let sealed: Sealed = serde_json::from_value(record["pins"].clone()).unwrap();
    let context = format!("{job}/pins");
    candidate_keys(station, job)
        .iter()
        .find_map(|k| k.open(&context, &sealed).ok())
        .map(|bytes| Pins::from_bytes(&bytes).unwrap())
        .ok_or_else(|| "the pins record does not open".to_owned())
}

/// How many of `job`'s sealed records open with any key the station has, out of how many.
fn openable_records(station: &Station, job: &JobId) -> (usize, usize) {
    let keys = candidate_keys(station, job);
    let mut total = 0;
    let mut opened = 0;
    for record in journal_records(station)
        .iter()
        .filter(|r| job_of(r) == job.as_str())
    {
        let (field, context) = match kind(record) {
            "job" => ("envelope", job.to_string()),
            "pins" => ("pins", format!("{job}/pins")),
            "input" => ("input", format!("{job}/input")),
            "csr" => ("bundle", format!("{job}/csr")),
            _ => continue,
        };
        total += 1;
        let sealed: Sealed = serde_json::from_value(record[field].clone()).unwrap();
        if keys.iter().any(|k| k.open(&context, &sealed).is_ok()) {
            opened += 1;
        }
    }
    (total, opened)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_jobs_pins_cannot_be_read_from_the_journal_and_a_running_ones_survive_a_crash() {
    let mut station = Station::sim(1).await;
    // No compaction while running: the finished job's records stay in the file.
    station.configure(|c| c.journal.compact_after_records = 100_000);
    station.start_agent().await;

    // The job runs on a slow token; it is killed during its key generation, after its PINs
    // were journaled.
    station
        .rack()
        .set_latency(None, LatencyChange::Op(Op::KeygenP256, 1500))
        .unwrap();
    let draft = station.new_draft(KeyAlgorithm::P256);
    let signed = station.platform.job(&draft).unwrap();
    let job = station.platform.dispatch(&signed).await.unwrap();
    let serial = station.insert_blank(0);
    station
        .wait_for_token(&serial, "a first key pair", PRODUCTION_TIMEOUT, |t| {
            ObjectCount::of(t).private_keys >= 1
        })
        .await;
    // Running: its own key opens its PINs; the journal key alone does not.
    let running = journaled_pins(&station, &job).unwrap_or_else(|e| station.fail_with_log(e));
    let wrapped = JobKeys::peek(&keys_file(&station), &job)
        .unwrap()
        .expect("a running job's key is in the key file");
    let own = journal_key(&station)
        .unwrap_key(job.as_str(), &wrapped)
        .unwrap();
    assert!(
        journal_records(&station)
            .iter()
            .filter(|r| job_of(r) == job.as_str() && kind(r) == "pins")
            .all(|r| {
                let sealed: Sealed = serde_json::from_value(r["pins"].clone()).unwrap();
                journal_key(&station)
                    .open(&format!("{job}/pins"), &sealed)
                    .is_err()
                    && own.open(&format!("{job}/pins"), &sealed).is_ok()
            }),
        "the pins record is sealed with the job's own key"
    );
    station.kill_agent();

    // After the crash the job resumes from its journal, with the same PINs.
    station
        .rack()
        .set_latency(None, LatencyChange::ClearOp(Op::KeygenP256))
        .unwrap();
    station.start_agent().await;
    let record = station.new_job_succeeded(&job).await;
    let token = TokenSerial::new(serial.clone()).unwrap();
    assert_eq!(record.token_serial(), Some(&token));
    let bound_user_pin = station
        .platform
        .user_pin(&token)
        .expect("the bound user PIN");
    assert_eq!(
        bound_user_pin.expose_secret(),
        running.user.expose_secret(),
        "the PINs journaled before the crash are the token's"
    );

    // Finished: a `Done` record, the key erased. The job's sealed records are still in the
    // file, and nothing the station holds opens any of them.
    let deadline = tokio::time::Instant::now() + PRODUCTION_TIMEOUT;
    loop {
        let done = journal_records(&station)
            .iter()
            .any(|r| kind(r) == "done" && job_of(r) == job.as_str());
        if done && JobKeys::peek(&keys_file(&station), &job).unwrap().is_none() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            station.fail_with_log("the finished job's key was never erased");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (total, opened) = openable_records(&station, &job);
    assert!(
        total >= 4,
        "the job's records are still in the journal ({total})"
    );
    assert_eq!(
        opened, 0,
        "{opened} of the finished job's {total} records open"
    );
    assert!(journaled_pins(&station, &job).is_err());
    // Nor is either PIN anywhere in the journal or the key file, in any encoding.
    let so = station
        .platform
        .token(&token)
        .and_then(|t| t.so_pin().cloned())
        .expect("the bound SO PIN");
    for file in [station.state_dir().join("journal.log"), keys_file(&station)] {
        let bytes = std::fs::read(&file).unwrap();
        for pin in [so.expose_secret(), bound_user_pin.expose_secret()] {
            assert_eq!(
                ukey_tests::leaks::find(&bytes, pin),
                None,
                "a PIN in {}",
                file.display()
            );
        }
    }

    // The finished job is still known after a restart: its redelivery is recognised.
    let events = station.platform.job_record(&job).unwrap().events().len();
    station.stop_agent();
    station.start_agent().await;
    station.platform.dispatch(&signed).await.unwrap();
    station.wait_for_log(DUPLICATE, 1, PRODUCTION_TIMEOUT).await;
    let record = station.platform.job_record(&job).unwrap();
    assert_eq!(record.envelopes_sent().len(), 2);
    assert_eq!(
        record.events().len(),
        events,
        "no new event for the finished job"
    );
    assert!(station.agent_running());
}
