//! Production receipts and the audit log of a running agent: receipts made per token, signed
//! with the station key, verified by the simulated platform with its own code and
//! acknowledged; `ukey-agent audit verify` on the agent's state folder counting them and
//! failing after an edit; the demo's state folder likewise; operators signing in and out
//! through the running agent, and a desk that waits for one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use ukey_protocol::event::ExecutionState;
use ukey_protocol::keys::{KeyAlgorithm, KeyLabel};
use ukey_protocol::{KeyOrigin, Receipt, ReceiptOutcome, Step, TokenSerial};
use ukey_tests::agent_binary;
use ukey_tests::station::Station;

const WAIT: Duration = Duration::from_secs(60);

fn agent(args: &[&str], config: &Path) -> Output {
    Command::new(agent_binary())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits until the platform holds `n` verified receipts.
async fn receipts(station: &Station, n: usize) -> Vec<Receipt> {
    station
        .platform
        .wait_until(&format!("{n} receipts"), WAIT, |r| {
            (r.receipts().len() >= n).then(|| r.receipts().to_vec())
        })
        .await
        .unwrap_or_else(|e| station.fail_with_log(e))
}

/// The audit files of a state folder, concatenated.
fn audit_text(state: &Path) -> String {
    let mut files: Vec<_> = std::fs::read_dir(state.join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// Changes one byte inside the newest receipt entry of the state folder's first audit file.
fn edit_a_receipt(state: &Path) {
    let path = state.join("audit").join(ukey_agent::audit::file_name(1));
    let text = std::fs::read_to_string(&path).unwrap();
    let at = text.find("\"type\":\"receipt\"").expect("a receipt entry");
    let at = at + text[at..].find("\"payload\":\"").unwrap() + "\"payload\":\"".len() + 10;
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_leaves_a_signed_receipt_the_platform_keeps_and_audit_verify_counts() {
    let mut station = Station::sim(2).await;
    station.start_agent().await;
    let (job_a, serial_a, _) = station.produce_new(0, KeyAlgorithm::P256).await;
    let (job_b, serial_b, _) = station.produce_new(1, KeyAlgorithm::P256).await;
    let got = receipts(&station, 2).await;
    let snapshot = station.platform.snapshot();
    assert!(
        snapshot.refused_receipts().is_empty(),
        "{:?}",
        snapshot.refused_receipts()
    );
    for (job, serial) in [(&job_a, &serial_a), (&job_b, &serial_b)] {
        let receipt = got
            .iter()
            .find(|r| r.job_id == *job)
            .unwrap_or_else(|| panic!("no receipt for {job}: {got:?}"));
        assert_eq!(receipt.outcome, ReceiptOutcome::Succeeded);
        assert_eq!(receipt.token_serial.as_str(), serial.as_str());
        assert_eq!(receipt.station_id, station.station_id);
        assert_eq!(receipt.operator, None);
        assert!(receipt.position.is_some());
        assert!(!receipt.token_model.is_empty());
        // Every step that ran, in order, each ended after it started.
        let steps: Vec<Step> = receipt.steps.iter().map(|s| s.step).collect();
        for step in [
            Step::Initialize,
            Step::GenerateKeys,
            Step::RequestCertificates,
            Step::Install,
            Step::Activate,
            Step::Bind,
        ] {
            assert!(steps.contains(&step), "{step} missing from {steps:?}");
        }
        assert!(
            receipt
                .steps
                .iter()
                .all(|s| s.ok && s.ended_at >= s.started_at)
        );
        // Three keys made on the token, with the attributes the token showed.
        assert_eq!(receipt.keys.len(), 3, "{:?}", receipt.keys);
        for key in &receipt.keys {
            assert_eq!(key.origin, KeyOrigin::Generated);
            assert_eq!(key.algorithm, KeyAlgorithm::P256);
            let a = key.attributes;
            assert!(a.token && a.private && a.sensitive && !a.extractable);
            assert!(a.local && a.always_sensitive && a.never_extractable);
        }
        // The certificates are those the platform issued and bound.
        let bound = snapshot
            .token(&TokenSerial::new(serial.clone()).unwrap())
            .unwrap()
            .certificates()
            .to_vec();
        assert_eq!(receipt.certificates.len(), 3);
        for label in KeyLabel::ALL {
            let r = receipt
                .certificates
                .iter()
                .find(|c| c.label == label)
                .unwrap();
            let b = bound.iter().find(|c| c.label == label).unwrap();
            assert_eq!((&r.serial, &r.sha256), (&b.serial, &b.sha256), "{label}");
        }
        assert_eq!(receipt.self_test.as_ref().map(|t| t.passed), Some(true));
        assert_eq!(receipt.agent_version, env!("CARGO_PKG_VERSION"));
    }
    // Acknowledged by receipt id: the outbox empties.
    station.status_with("outbox:  0 event(s)").await;
    station.status_with("2 receipt(s) made").await;
    station.stop_agent();

    let config = station.dir().join("agent.toml");
    let state = station.state_dir();
    let out = agent(&["audit", "verify"], &config);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&format!("{serial_a}: 1 receipt(s)")),
        "{said}"
    );
    assert!(
        said.contains(&format!("{serial_b}: 1 receipt(s)")),
        "{said}"
    );
    // The log holds the start, the wipes, the receipts and the stop, and no PIN.
    let log = audit_text(&state);
    for kind in ["started", "wiped", "receipt", "stopped"] {
        assert!(
            log.contains(&format!("\"type\":\"{kind}\"")),
            "no {kind}: {log}"
        );
    }
    for serial in [&serial_a, &serial_b] {
        let pin = station
            .platform
            .user_pin(&TokenSerial::new(serial.clone()).unwrap())
            .unwrap();
        use secrecy::ExposeSecret;
        assert!(
            !log.contains(pin.expose_secret()),
            "a user PIN in the audit log"
        );
    }
    edit_a_receipt(&state);
    let out = agent(&["audit", "verify"], &config);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_with_a_forged_signature_is_refused_by_the_platform() {
    // The platform's own check, fed a receipt signed by another key.
    let mut station = Station::sim(1).await;
    // Writing the trust files registers the station's key with the platform.
    station.write_config();
    let other = ukey_protocol::UnsealKey::P256(p256::SecretKey::from_slice(&[7u8; 32]).unwrap());
    let signer = ukey_protocol::ReceiptSigner::new(&other).unwrap();
    let t = time::OffsetDateTime::now_utc();
    let mut b = ukey_agent::audit::ReceiptBuilder::new(
        station.station_id.clone(),
        ukey_protocol::JobId::new("J-forged").unwrap(),
        ukey_protocol::JobKind::New,
        TokenSerial::new("UK0001").unwrap(),
        "sim-ukey",
        Some(0),
        None,
    );
    b.step_started(Step::Initialize, t);
    let signed = b.finish_signed(None, t, &signer).unwrap();
    let key = station
        .platform
        .keys()
        .station_recipient(&station.station_id)
        .unwrap();
    let err =
        ukey_platform_sim::receipts::verify_receipt(&signed.encode().unwrap(), &key).unwrap_err();
    assert!(err.contains("kid"), "{err}");
    // Same key id, other key: the signature itself fails.
    let right = ukey_platform_sim::receipts::station_kid(&key).unwrap();
    let forged = String::from_utf8(signed.encode().unwrap()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&forged).unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = format!(r#"{{"alg":"ES256","kid":"{right}","typ":"ukey-receipt+jws"}}"#);
    let forged = serde_json::json!({
        "protected": b64.encode(header),
        "payload": v["payload"],
        "signature": v["signature"],
    });
    let err = ukey_platform_sim::receipts::verify_receipt(forged.to_string().as_bytes(), &key)
        .unwrap_err();
    assert!(err.contains("does not verify"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desk_that_requires_an_operator_waits_for_one_and_names_them() {
    let mut station = Station::sim(1).await;
    station.configure(|c| c.desk.require_operator = true);
    let (board, lights) = station.attach_emulated_panel(1);
    let config = station.dir().join("agent.toml");
    // No agent yet: the command says so.
    station.write_config();
    let out = agent(&["operator", "sign-in", "staff-7"], &config);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no agent is running"), "{}", text(&out));

    station.start_agent().await;
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    let serial = station.insert_blank(0);
    let status = station.status_with("claims:  PAUSED").await;
    // The panel shows the waiting blank token as needing someone.
    ukey_tests::station::light_until(&board, &lights, 0, ukey_agent::panel::Light::Attention);
    assert!(status.contains("operator: nobody signed in"), "{status}");
    // The inventory says why.
    station
        .platform
        .wait_until("operator-required alert", WAIT, |r| {
            r.inventory()
                .last()
                .filter(|i| {
                    i.alerts
                        .iter()
                        .any(|a| a.code.as_str() == "operator-required")
                })
                .map(|_| ())
        })
        .await
        .unwrap_or_else(|e| station.fail_with_log(e));
    let record = station.platform.job_record(&job).unwrap();
    assert!(
        !record.events().iter().any(|e| e.step == Step::Claim),
        "claimed while nobody was signed in"
    );
    // A personal number is refused as an operator id.
    let out = agent(&["operator", "sign-in", "13800138000"], &config);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    let out = agent(&["operator", "sign-in", "staff-7"], &config);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("staff-7 is signed in"),
        "{}",
        text(&out)
    );
    station
        .platform
        .wait_for_state(&job, ExecutionState::Succeeded, WAIT)
        .await
        .unwrap_or_else(|e| station.fail_with_log(e));
    let got = receipts(&station, 1).await;
    assert_eq!(got[0].operator.as_deref(), Some("staff-7"));
    assert_eq!(got[0].token_serial.as_str(), serial);
    let out = agent(&["operator", "show"], &config);
    assert!(
        text(&out).contains("staff-7 is signed in"),
        "{}",
        text(&out)
    );
    let out = agent(&["operator", "sign-out"], &config);
    assert!(out.status.success(), "{}", text(&out));
    station.status_with("claims:  PAUSED").await;
    station.stop_agent();

    let log = audit_text(&station.state_dir());
    let signed_in = log
        .lines()
        .find(|l| l.contains("\"type\":\"operator-signed-in\""))
        .expect("sign-in entry");
    assert!(
        signed_in.contains("\"operator\":\"staff-7\""),
        "{signed_in}"
    );
    let receipt = log
        .lines()
        .find(|l| l.contains("\"type\":\"receipt\""))
        .expect("receipt entry");
    assert!(receipt.contains("\"operator\":\"staff-7\""), "{receipt}");
    assert!(log.contains("\"type\":\"operator-signed-out\""), "{log}");
    let out = agent(&["audit", "verify"], &config);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_demo_leaves_an_audit_log_with_one_receipt_per_token() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("desk");
    let out = Command::new(ukey_tests::workspace_binary("ukey-demo"))
        .args(["--tokens", "3", "--slots", "2", "--json", "--dir"])
        .arg(&root)
        .env_remove("HSM_SIM_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let config = root.join("demo").join("agent.toml");
    let out = agent(&["audit", "verify"], &config);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    for token in summary["tokens"].as_array().unwrap() {
        let serial = token["serial"].as_str().unwrap();
        assert!(said.contains(&format!("{serial}: 1 receipt(s)")), "{said}");
    }
    let state = ukey_agent::config::Config::load(&config).unwrap().state_dir;
    edit_a_receipt(&state);
    let out = agent(&["audit", "verify"], &config);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}
