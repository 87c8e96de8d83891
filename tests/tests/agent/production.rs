//! The agent end to end: real Mosquitto, the simulated platform, hsm-sim or SoftHSM2, and the
//! real `ukey-agent` binary. Every produced token is checked again from outside (pkcs11-tool,
//! openssl).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Command;

use secrecy::ExposeSecret;
use ukey_platform_sim::{JobDraft, Misbehaviour, Times};
use ukey_protocol::event::{ExecutionState, Step};
use ukey_protocol::ids::{JobId, TokenSerial};
use ukey_protocol::inventory::TokenState;
use ukey_protocol::job::JobKind;
use ukey_protocol::keys::KeyAlgorithm;
use ukey_tests::require_tool;
use ukey_tests::station::{PRODUCTION_TIMEOUT, Station};

async fn succeeded(station: &Station, job: &JobId) -> TokenSerial {
    let record = station
        .platform
        .wait_for_state(job, ExecutionState::Succeeded, PRODUCTION_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", station.agent_log()));
    // Every step of the plan reported, in order, each event once.
    let steps: Vec<Step> = record.events().iter().map(|e| e.step).collect();
    for step in JobKind::New.plan(false) {
        assert!(steps.contains(step), "no {step} event in {steps:?}");
    }
    let seqs: Vec<u64> = record.events().iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "sequence without gaps"
    );
    assert!(record.bound_certificates().is_some_and(|c| c.len() == 3));
    record
        .token_serial()
        .cloned()
        .expect("the job names its token")
}

/// Checks a produced token from outside: three private keys with the required attributes
/// and three certificates (pkcs11-tool), and the chain (openssl verify).
fn check_from_outside(station: &Station, serial: &TokenSerial) {
    let pin = station
        .platform
        .user_pin(serial)
        .expect("the platform unsealed the user PIN");
    let run = |args: &[&str]| pkcs11_tool(station, args);
    let listing = run(&[
        "--token-label",
        &token_label(station, serial),
        "--login",
        "--pin",
        pin.expose_secret(),
        "--list-objects",
    ]);
    let private_keys = listing.matches("Private Key Object").count();
    let certificates = listing.matches("Certificate Object").count();
    assert_eq!(private_keys, 3, "{listing}");
    assert_eq!(certificates, 3, "{listing}");
    for block in listing.split("Private Key Object").skip(1) {
        let access = block
            .lines()
            .find(|l| l.trim_start().starts_with("Access:"))
            .unwrap_or("");
        for flag in [
            "sensitive",
            "always sensitive",
            "never extractable",
            "local",
        ] {
            assert!(access.contains(flag), "private key lacks {flag}: {access}");
        }
    }
    // The chain: each certificate verifies against the platform's CA.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, station.platform.ca().certificate_pem().unwrap()).unwrap();
    for label in ["seal-official", "seal-legal", "encryption"] {
        let der = dir.path().join(format!("{label}.der"));
        run(&[
            "--token-label",
            &token_label(station, serial),
            "--read-object",
            "--type",
            "cert",
            "--label",
            label,
            "--output-file",
            der.to_str().unwrap(),
        ]);
        let pem = dir.path().join(format!("{label}.pem"));
        let out = Command::new(require_tool("openssl"))
            .args(["x509", "-inform", "DER", "-in"])
            .arg(&der)
            .arg("-out")
            .arg(&pem)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl x509 {label}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&ca)
            .arg(&pem)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(": OK"),
            "openssl verify {label}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn token_label(station: &Station, serial: &TokenSerial) -> String {
    let job = station
        .platform
        .token(serial)
        .expect("token record")
        .job_id()
        .clone();
    job_label(station, &job)
}

/// The token label the agent writes for a job: `UKEY ` and the order number, 32 bytes at most.
fn job_label(station: &Station, job: &JobId) -> String {
    let order = station
        .platform
        .job_record(job)
        .and_then(|j| j.document().map(|d| d.order_number.clone()))
        .expect("job document");
    let mut label = String::from("UKEY ");
    for c in order.chars() {
        if label.len() + c.len_utf8() > 32 {
            break;
        }
        label.push(c);
    }
    label
}

fn pkcs11_tool(station: &Station, args: &[&str]) -> String {
    let (env_key, env_value) = station.module_env();
    let out = Command::new(require_tool("pkcs11-tool"))
        .arg("--module")
        .arg(station.module())
        .args(args)
        .env(env_key, &env_value)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pkcs11-tool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file in the agent's state folder (journal, outbox, status), as lossy text.
fn state_files(station: &Station) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![station.state_dir()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.is_file() {
                // Regular files only: the control socket has no content to read.
                let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
                out.push((path.display().to_string(), text));
            }
        }
    }
    assert!(!out.is_empty(), "the agent keeps state files");
    out
}

/// Neither PIN is in the agent's log or state files; nor is the legal representative's
/// name, nor the company's name, in its state files.
fn no_secrets_in(station: &Station, serial: &TokenSerial) {
    let log = station.agent_log();
    let files = state_files(station);
    let mut secrets = vec![(
        "the user PIN",
        station
            .platform
            .user_pin(serial)
            .unwrap()
            .expose_secret()
            .to_owned(),
    )];
    if let Some(so) = station
        .platform
        .token(serial)
        .and_then(|t| t.so_pin().cloned())
    {
        secrets.push(("the SO PIN", so.expose_secret().to_owned()));
    }
    for (what, secret) in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "{what} appears in the agent's log"
        );
    }
    let job = station.platform.token(serial).unwrap().job_id().clone();
    let doc = station
        .platform
        .job_record(&job)
        .and_then(|j| j.document().cloned())
        .expect("job document");
    let person = &doc.legal_representative;
    // (ID-card numbers and mobiles never reach the station: the canary looks for them.)
    secrets.extend([
        ("the legal representative's name", person.name.clone()),
        ("the company's name", doc.enterprise.name.clone()),
    ]);
    for (path, text) in &files {
        for (what, secret) in &secrets {
            assert!(!text.contains(secret.as_str()), "{what} appears in {path}");
            // Inside base64 (a CSR or certificate in clear), at any of the three alignments.
            for form in base64_forms(secret.as_bytes()) {
                assert!(
                    !text.contains(&form),
                    "{what} appears base64-encoded in {path}"
                );
            }
        }
    }
}

/// What `secret` looks like inside any base64 text, whatever bytes precede it: for each of
/// the three alignments, the characters that depend on `secret` alone (none when it is
/// too short for the check to mean anything).
fn base64_forms(secret: &[u8]) -> Vec<String> {
    use base64::Engine as _;
    if secret.len() < 12 {
        return Vec::new();
    }
    (0..3usize)
        .map(|pad| {
            let mut bytes = vec![0u8; pad];
            bytes.extend_from_slice(secret);
            let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
            // Drop the characters mixed with the padding in front and the partial group at
            // the end.
            let skip = (pad * 8).div_ceil(6);
            let keep = (bytes.len() / 3) * 4;
            text[skip..keep].to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_job_on_hsm_sim_p256() {
    let mut station = Station::sim(2).await;
    station.start_agent().await;
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    let inserted = station.insert_blank(0);
    let serial = succeeded(&station, &job).await;
    assert_eq!(
        serial.as_str(),
        inserted,
        "the job ran on the token that was plugged in"
    );
    check_from_outside(&station, &serial);
    no_secrets_in(&station, &serial);
    assert_eq!(
        station.stop_agent().and_then(|s| s.code()),
        Some(0),
        "graceful stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_job_on_softhsm_rsa2048() {
    let mut station = Station::softhsm().await;
    station.start_agent().await;
    let job = station.dispatch_new(KeyAlgorithm::Rsa2048).await;
    let serial = succeeded(&station, &job).await;
    check_from_outside(&station, &serial);
    no_secrets_in(&station, &serial);
}

/// SoftHSM2 gives a blank slot its serial only at initialization, so the last scan saw the
/// token serial-less and blank. A job that ends before the next scan must not leave it
/// looking blank: the next queued job waits for SoftHSM2's new blank slot instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_finished_between_two_scans_is_not_taken_for_blank() {
    let mut station = Station::softhsm().await;
    // One scan at start, the next long after the first job is done.
    station.scan_interval_ms = 6_000;
    station.start_agent().await;
    let first = station.dispatch_new(KeyAlgorithm::P256).await;
    let second = station.dispatch_new(KeyAlgorithm::P256).await;
    let first_serial = succeeded(&station, &first).await;
    let second_serial = succeeded(&station, &second).await;
    assert_ne!(first_serial, second_serial, "one token per job");
    assert!(
        !station.agent_log().contains("token-not-blank"),
        "a finished token was taken for blank:\n{}",
        station.agent_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_tokens_in_parallel_on_hsm_sim() {
    let mut station = Station::sim(8).await;
    station.start_agent().await;
    let mut jobs = Vec::new();
    for _ in 0..8 {
        jobs.push(station.dispatch_new(KeyAlgorithm::P256).await);
    }
    for slot in 0..8 {
        station.insert_blank(slot);
    }
    let mut serials = BTreeSet::new();
    for job in &jobs {
        serials.insert(succeeded(&station, job).await);
    }
    assert_eq!(serials.len(), 8, "eight distinct tokens");
    for serial in &serials {
        check_from_outside(&station, serial);
    }
    // The retained inventory ends showing all eight finished, and a busy desk's changes went
    // out in bursts: two publishes at least 100 ms apart (a few ms of timer slack).
    let station_id = station.station_id.clone();
    station
        .platform
        .wait_until(
            "eight active tokens in the inventory",
            PRODUCTION_TIMEOUT,
            |r| {
                let inventory = r.current_inventory(&station_id)?;
                (inventory
                    .slots
                    .iter()
                    .filter(|s| {
                        s.token
                            .as_ref()
                            .is_some_and(|t| t.state == TokenState::Active)
                    })
                    .count()
                    == 8)
                    .then_some(())
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", station.agent_log()));
    let snapshot = station.platform.snapshot();
    let mut published: Vec<_> = snapshot
        .inventory()
        .iter()
        .filter(|i| i.station_id == station_id)
        .collect();
    published.sort_by_key(|i| i.seq);
    assert!(published.len() > 2, "{} inventories", published.len());
    for pair in published.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= time::Duration::milliseconds(95),
            "inventories {} and {} only {gap} apart",
            pair[0].seq,
            pair[1].seq
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_for_another_key_is_refused_and_nothing_is_written() {
    let mut station = Station::sim(2).await;
    station.start_agent().await;
    station
        .platform
        .misbehave(Misbehaviour::CertificateForAnotherKey, Times::Once);
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    let serial = station.insert_blank(0);
    let record = station
        .platform
        .wait_for(
            &job,
            |r| r.state().is_some_and(|s| s.is_terminal()),
            PRODUCTION_TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", station.agent_log()));
    let last = record.last_event().unwrap();
    assert_eq!(last.state, ExecutionState::Failed);
    assert_eq!(last.step, Step::VerifyCertificates);
    assert_eq!(
        last.error.as_ref().unwrap().code.as_str(),
        "certificate-key-mismatch"
    );
    assert_eq!(
        record.token_serial().map(|s| s.as_str()),
        Some(serial.as_str())
    );
    let label = job_label(&station, &job);
    let listing = pkcs11_tool(
        &station,
        &["--token-label", &label, "--list-objects", "--type", "cert"],
    );
    assert!(
        !listing.contains("Certificate Object"),
        "no certificate was written: {listing}"
    );
    // The desk goes on: the next job on the next token succeeds.
    let job2 = station.dispatch_new(KeyAlgorithm::P256).await;
    station.insert_blank(1);
    succeeded(&station, &job2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_duplicate_jobs_are_handled() {
    let mut station = Station::sim(1).await;
    station.start_agent().await;
    station
        .platform
        .misbehave(Misbehaviour::ForgedSignature, Times::Once);
    let forged = station.dispatch_new(KeyAlgorithm::P256).await;
    let record = station
        .platform
        .wait_for_state(&forged, ExecutionState::Rejected, PRODUCTION_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", station.agent_log()));
    assert_eq!(
        record
            .last_event()
            .unwrap()
            .error
            .as_ref()
            .unwrap()
            .code
            .as_str(),
        "bad-signature"
    );

    station
        .platform
        .misbehave(Misbehaviour::DuplicateJob, Times::Once);
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    station.insert_blank(0);
    let serial = succeeded(&station, &job).await;
    let record = station.platform.job_record(&job).unwrap();
    let claims = record
        .events()
        .iter()
        .filter(|e| e.step == Step::Claim)
        .count();
    assert_eq!(
        claims, 1,
        "the duplicate delivery did not start a second run"
    );
    check_from_outside(&station, &serial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_message_reusing_a_live_job_id_never_speaks_for_that_job() {
    let mut station = Station::sim(1).await;
    station.start_agent().await;
    let draft = JobDraft::new(JobKind::New, &station.station_id).unwrap();
    let job = station.platform.dispatch_draft(&draft).await.unwrap();
    station
        .platform
        .wait_for_state(&job, ExecutionState::Queued, PRODUCTION_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", station.agent_log()));
    // Someone without the platform's key sends a job under the same id.
    station
        .platform
        .misbehave(Misbehaviour::ForgedSignature, Times::Once);
    // (The same order, so the simulated platform's own record of the job stays right.)
    let forged = draft.clone().with_job_id(job.clone());
    station.platform.dispatch_draft(&forged).await.unwrap();
    station
        .wait_for_log(
            "unverifiable message reusing a known job id ignored",
            1,
            PRODUCTION_TIMEOUT,
        )
        .await;
    station.insert_blank(0);
    succeeded(&station, &job).await;
    let record = station.platform.job_record(&job).unwrap();
    assert!(
        record
            .events()
            .iter()
            .all(|e| e.state != ExecutionState::Rejected),
        "no rejection was reported on the real job: {:?}",
        record
            .events()
            .iter()
            .map(|e| (e.seq, e.state))
            .collect::<Vec<_>>()
    );
}
