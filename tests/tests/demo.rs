//! `hsm-sim demo`, run as the built binary: its JSON summary on the embedded broker and the
//! virtual rack, on SoftHSM2 through Mosquitto, with the scripted faults, and its refusal of
//! bad option values. Produced tokens are opened again from outside with pkcs11-tool, using
//! the user PIN the summary reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use ukey_tests::{Mosquitto, SoftHsm, require_tool, workspace_binary};

fn demo(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(workspace_binary("hsm-sim"));
    cmd.arg("demo").args(args).env_remove("HSM_SIM_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("hsm-sim runs")
}

/// The JSON summary of a run that must have succeeded.
fn summary(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "demo failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

/// Every token: produced, verified, three certificates, a user PIN; serials distinct.
fn check_tokens(s: &Value, count: usize) {
    assert_eq!(s["ok"], true, "{s:#}");
    assert_eq!(s["tokens_requested"], count);
    assert_eq!(s["tokens_produced"], count);
    assert_eq!(s["tokens_verified"], count);
    let tokens = s["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), count, "{s:#}");
    let mut serials = BTreeSet::new();
    for t in tokens {
        assert_eq!(t["state"], "succeeded", "{t:#}");
        assert_eq!(t["verified"], true, "{t:#}");
        assert!(t["verification_problems"].as_array().unwrap().is_empty());
        let pin = t["user_pin"].as_str().expect("a user PIN");
        assert!(
            pin.len() >= 6 && pin.chars().all(|c| c.is_ascii_digit()),
            "user PIN {pin:?}"
        );
        serials.insert(t["serial"].as_str().unwrap().to_owned());
        let certs = t["certificates"].as_array().unwrap();
        let labels: Vec<&str> = certs.iter().map(|c| c["label"].as_str().unwrap()).collect();
        assert_eq!(labels, ["seal-official", "seal-legal", "encryption"]);
        for c in certs {
            assert_eq!(c["sha256"].as_str().unwrap().len(), 64, "{c:#}");
            assert!(!c["serial"].as_str().unwrap().is_empty());
            assert!(c["not_after"].as_str().unwrap().starts_with("20"));
        }
        let company = t["company"].as_str().unwrap();
        assert_eq!(certs[0]["subject_cn"], company);
        assert_eq!(certs[2]["subject_cn"], company);
    }
    assert_eq!(serials.len(), count, "distinct tokens");
}

/// Logs in to the token made for `token` (found by its label) with the PIN from the summary
/// and counts its private keys and certificates with pkcs11-tool.
fn outside_listing(module: &Path, env: (&str, &Path), token: &Value) -> String {
    let label = format!("UKEY {}", token["order_number"].as_str().unwrap());
    let label: String = label.chars().take(32).collect();
    let out = Command::new(require_tool("pkcs11-tool"))
        .arg("--module")
        .arg(module)
        .args(["--token-label", &label, "--login", "--pin"])
        .arg(token["user_pin"].as_str().unwrap())
        .arg("--list-objects")
        .env(env.0, env.1)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pkcs11-tool: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("Private Key Object").count(), 3, "{text}");
    assert_eq!(text.matches("Certificate Object").count(), 3, "{text}");
    text
}

#[test]
fn demo_json_on_the_embedded_broker_and_the_rack() {
    let dir = tempfile::tempdir().unwrap();
    let out = demo(&["--tokens", "3", "--slots", "2", "--json"], &[]);
    let s = summary(&out);
    check_tokens(&s, 3);
    assert!(
        s["broker"]
            .as_str()
            .unwrap()
            .starts_with("embedded 127.0.0.1:")
    );
    assert_eq!(s["slots"], 2);
    assert_eq!(s["dir"], Value::Null, "a temporary folder is not reported");

    // With --dir the rack stays, and its tokens open from outside with the reported PIN.
    let rack = dir.path().join("rack");
    let out = demo(
        &[
            "--tokens",
            "2",
            "--slots",
            "2",
            "--json",
            "--dir",
            rack.to_str().unwrap(),
        ],
        &[],
    );
    let s = summary(&out);
    check_tokens(&s, 2);
    assert_eq!(s["dir"], rack.to_str().unwrap());
    let module = workspace_binary("libhsm_sim.so");
    for token in s["tokens"].as_array().unwrap() {
        outside_listing(&module, ("HSM_SIM_DIR", &rack), token);
    }
}

#[test]
fn demo_on_softhsm_through_mosquitto() {
    let softhsm = SoftHsm::new();
    let broker = Mosquitto::start();
    let (key, conf) = softhsm.env();
    let out = demo(
        &[
            "--tokens",
            "2",
            "--json",
            "--module",
            softhsm.module().to_str().unwrap(),
            "--broker",
            &format!("127.0.0.1:{}", broker.port()),
        ],
        &[(key, &conf)],
    );
    let s = summary(&out);
    check_tokens(&s, 2);
    assert_eq!(s["broker"], format!("127.0.0.1:{}", broker.port()));
    assert_eq!(s["slots"], Value::Null, "no rack with --module");
    for token in s["tokens"].as_array().unwrap() {
        outside_listing(&softhsm.module(), (key, &conf), token);
    }
    // The station's retained presence sits in Mosquitto: the agent talked through it.
    let out = Command::new(require_tool("mosquitto_sub"))
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args([
            "-t",
            "ukey/v1/stations/demo-desk/presence",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .output()
        .unwrap();
    let presence = String::from_utf8_lossy(&out.stdout);
    assert!(presence.contains("\"demo-desk\""), "presence: {presence:?}");
}

#[test]
fn demo_faults_are_caught_and_recovered() {
    let out = demo(
        &["--tokens", "3", "--slots", "2", "--json", "--faults"],
        &[],
    );
    let s = summary(&out);
    check_tokens(&s, 3);
    let faults = s["faults"].as_array().unwrap();
    let kinds: BTreeSet<&str> = faults
        .iter()
        .map(|f| f["fault"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["token-pulled", "certificate-for-another-key"]),
        "{s:#}"
    );
    for f in faults {
        assert_eq!(f["caught"], true, "{f:#}");
        assert_eq!(f["recovered"], true, "{f:#}");
    }
    let pulled = faults
        .iter()
        .find(|f| f["fault"] == "token-pulled")
        .unwrap();
    assert!(
        pulled["detail"]
            .as_str()
            .unwrap()
            .contains("parked the job at generate-keys"),
        "{pulled:#}"
    );
    let mismatch = faults
        .iter()
        .find(|f| f["fault"] == "certificate-for-another-key")
        .unwrap();
    assert!(
        mismatch["detail"]
            .as_str()
            .unwrap()
            .contains("certificate-key-mismatch"),
        "{mismatch:#}"
    );
    // The failed job is not any token's result: each token's job is another one.
    let failed_job = mismatch["job_id"].as_str().unwrap();
    assert!(
        s["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["job_id"] != failed_job)
    );
}

#[test]
fn bad_option_values_are_refused_clearly() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["--alg", "ed25519"],
            "possible values: p256, rsa2048, rsa3072",
        ),
        (
            &["--latency", "slow"],
            "possible values: instant, realistic",
        ),
        (&["--tokens", "0"], "--tokens"),
        (&["--broker", "localhost"], "HOST:PORT"),
        (
            &["--faults", "--module", "/nonexistent.so"],
            "cannot be used with",
        ),
    ];
    for (args, says) in cases {
        let out = demo(args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // A module that does not exist is named in the error.
    let out = demo(&["--module", "/nonexistent/libnothing.so", "--json"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/libnothing.so"), "{stderr}");
}
