//! `ukey-demo`, run as the built binary: its JSON summary on the embedded broker and the
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
    let mut cmd = Command::new(workspace_binary("ukey-demo"));
    cmd.args(args).env_remove("HSM_SIM_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("ukey-demo runs")
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

/// `cargo run --release -p ukey-demo` on a clean clone builds hsm-sim only as a dependency,
/// so cargo leaves `libhsm_sim.so` in `deps/` beside the binary rather than next to it: the
/// demo finds it there, and prefers it over an older module next to the binary.
#[test]
fn demo_finds_the_module_cargo_left_in_deps() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("ukey-demo");
    std::fs::copy(workspace_binary("ukey-demo"), &bin).unwrap();
    std::fs::create_dir(dir.path().join("deps")).unwrap();
    let module = dir.path().join("deps").join("libhsm_sim.so");
    std::fs::copy(workspace_binary("libhsm_sim.so"), &module).unwrap();
    // A stale file next to the binary, an hour older: loading it would fail the run.
    let stale = dir.path().join("libhsm_sim.so");
    std::fs::write(&stale, b"not a module").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    let out = Command::new(&bin)
        .args(["--tokens", "1", "--slots", "1", "--json"])
        .env_remove("HSM_SIM_DIR")
        .output()
        .unwrap();
    let s = summary(&out);
    check_tokens(&s, 1);
    assert_eq!(s["module"], module.to_str().unwrap(), "{s:#}");

    // Only the module next to the binary (as after `cargo build --workspace`): that one.
    std::fs::remove_file(&module).unwrap();
    std::fs::copy(workspace_binary("libhsm_sim.so"), &stale).unwrap();
    let out = Command::new(&bin)
        .args(["--tokens", "1", "--slots", "1", "--json"])
        .env_remove("HSM_SIM_DIR")
        .output()
        .unwrap();
    let s = summary(&out);
    check_tokens(&s, 1);
    assert_eq!(s["module"], stale.to_str().unwrap(), "{s:#}");
}

/// `hsm-sim demo` (the demo's former home) says where the demo went, whatever follows it.
#[test]
fn hsm_sim_demo_points_to_ukey_demo() {
    let out = Command::new(workspace_binary("hsm-sim"))
        .args(["demo", "--tokens", "2", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cargo run --release -p ukey-demo"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
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

/// The certificates of one phase in a lifecycle token's history: (serial, key fingerprint)
/// by label.
fn phase_certs(token: &Value, phase: &str) -> Vec<(String, String, String)> {
    let entry = token["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == phase)
        .unwrap_or_else(|| panic!("no {phase} in {token:#}"));
    let certs: Vec<(String, String, String)> = entry["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let fp = c["public_key_sha256"].as_str().unwrap().to_owned();
            assert_eq!(fp.len(), 64, "{c:#}");
            (
                c["label"].as_str().unwrap().to_owned(),
                c["serial"].as_str().unwrap().to_owned(),
                fp,
            )
        })
        .collect();
    let labels: Vec<&str> = certs.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        labels,
        ["seal-official", "seal-legal", "encryption"],
        "{phase}"
    );
    certs
}

/// Runs pkcs11-tool on the lifecycle's kept rack, on the token with `serial`.
fn pkcs11_tool_on(rack: &Path, serial: &str, args: &[&str]) -> (bool, String) {
    let label = hsm_sim::rack::Rack::open(rack)
        .unwrap()
        .token(serial)
        .unwrap()
        .label()
        .trim_end()
        .to_owned();
    let out = Command::new(require_tool("pkcs11-tool"))
        .arg("--module")
        .arg(workspace_binary("libhsm_sim.so"))
        .args(["--token-label", &label])
        .args(args)
        .env("HSM_SIM_DIR", rack)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new(require_tool("openssl"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn demo_lifecycle_scenario() {
    // Options it does not take are refused before anything starts.
    let out = demo(&["--scenario", "birthday"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("possible values: production, lifecycle")
    );
    let out = demo(&["--scenario", "lifecycle", "--faults", "--json"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--scenario lifecycle runs on the virtual rack")
    );
    assert!(out.stdout.is_empty());

    let dir = tempfile::tempdir().unwrap();
    let rack = dir.path().join("rack");
    let out = demo(
        &[
            "--scenario",
            "lifecycle",
            "--json",
            "--dir",
            rack.to_str().unwrap(),
        ],
        &[],
    );
    let s = summary(&out);
    assert_eq!(s["ok"], true, "{s:#}");
    assert_eq!(s["scenario"], "lifecycle");
    assert_eq!(s["dir"], rack.to_str().unwrap());

    // The phases, in order, each as expected; every one but the lock has a job.
    let phases = s["phases"].as_array().unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["new", "renew", "change", "lock", "unlock", "replace"],
        "{s:#}"
    );
    let mut jobs = BTreeSet::new();
    for p in phases {
        assert_eq!(p["ok"], true, "{p:#}");
        assert!(p["problems"].as_array().unwrap().is_empty(), "{p:#}");
        if p["phase"] == "lock" {
            assert_eq!(p["job_id"], Value::Null);
            assert_eq!(p["outcome"], "locked-user", "{p:#}");
            assert!(p["wrong_pins"].as_u64().unwrap() >= 1, "{p:#}");
        } else {
            assert_eq!(p["outcome"], "succeeded", "{p:#}");
            jobs.insert(p["job_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(jobs.len(), 5, "one job per phase but the lock");
    let phase = |name: &str| phases.iter().find(|p| p["phase"] == name).unwrap();

    let tokens = s["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2, "{s:#}");
    let (old, replacement) = (&tokens[0], &tokens[1]);
    assert_eq!(old["role"], "original");
    assert_eq!(replacement["role"], "replacement");
    let old_serial = old["serial"].as_str().unwrap();
    for p in ["new", "renew", "change", "lock", "unlock"] {
        assert_eq!(phase(p)["token_serial"], old_serial, "{p}");
    }

    // Renew keeps the keys and gets new certificate serials; so does the change, whose
    // certificates carry the new company name.
    let made = phase_certs(old, "new");
    let renewed = phase_certs(old, "renew");
    let changed = phase_certs(old, "change");
    for (before, after) in [(&made, &renewed), (&renewed, &changed)] {
        for (b, a) in before.iter().zip(after.iter()) {
            assert_eq!(a.2, b.2, "{}: the same key", a.0);
            assert_ne!(a.1, b.1, "{}: a new certificate", a.0);
        }
    }
    let new_name = phase("change")["company"].as_str().unwrap();
    assert_ne!(phase("new")["company"], new_name);
    let change_entry = old["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "change")
        .unwrap();
    assert_eq!(change_entry["certificates"][0]["subject_cn"], new_name);
    // Nothing but the PIN changes from the change to the unlock.
    assert_eq!(phase_certs(old, "unlock"), changed);

    // The PIN: kept by renew and change, reset by unlock.
    let pin_after = |p: &str| {
        old["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["phase"] == p)
            .unwrap()["user_pin"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first_pin = pin_after("new");
    assert_eq!(pin_after("renew"), first_pin);
    assert_eq!(pin_after("change"), first_pin);
    assert_eq!(pin_after("lock"), first_pin);
    let final_pin = pin_after("unlock");
    assert_ne!(final_pin, first_pin, "unlock set a new user PIN");
    assert_eq!(old["user_pin"], final_pin.as_str());

    // The lost token is revoked; its replacement is another token with keys of its own.
    assert_eq!(old["inventory_state"], "revoked", "{old:#}");
    assert_eq!(replacement["inventory_state"], "active", "{replacement:#}");
    assert_eq!(phase("replace")["token_serial"], replacement["serial"]);
    assert_ne!(replacement["serial"], old["serial"]);
    let fresh = phase_certs(replacement, "replace");
    for (f, c) in fresh.iter().zip(changed.iter()) {
        assert_ne!(f.2, c.2, "{}: new key on the replacement", f.0);
    }
    for t in tokens {
        assert_eq!(t["verified"], true, "{t:#}");
        assert!(t["verification_problems"].as_array().unwrap().is_empty());
    }

    // From outside, on the kept rack: the PIN from before the lock is refused, the PIN the
    // unlock set logs in (pkcs11-tool), and the fingerprint in the summary is the one
    // openssl computes from the certificate on the token.
    let (ok, text) = pkcs11_tool_on(
        &rack,
        old_serial,
        &["--login", "--pin", &first_pin, "--list-objects"],
    );
    assert!(
        !ok || !text.contains("Private Key Object"),
        "the old PIN logs in: {text}"
    );
    let (ok, text) = pkcs11_tool_on(
        &rack,
        old_serial,
        &[
            "--login",
            "--pin",
            &final_pin,
            "--list-objects",
            "--type",
            "privkey",
        ],
    );
    assert!(ok, "the final PIN: {text}");
    assert_eq!(text.matches("Private Key Object").count(), 3, "{text}");
    let der = dir.path().join("encryption.der");
    let (ok, text) = pkcs11_tool_on(
        &rack,
        old_serial,
        &[
            "--read-object",
            "--type",
            "cert",
            "--label",
            "encryption",
            "--output-file",
            der.to_str().unwrap(),
        ],
    );
    assert!(ok && der.exists(), "{text}");
    let pem = openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        der.to_str().unwrap(),
        "-pubkey",
        "-noout",
    ]);
    let key_pem = dir.path().join("key.pem");
    std::fs::write(&key_pem, pem).unwrap();
    let key_der = dir.path().join("key.der");
    openssl(&[
        "pkey",
        "-pubin",
        "-in",
        key_pem.to_str().unwrap(),
        "-outform",
        "DER",
        "-out",
        key_der.to_str().unwrap(),
    ]);
    let digest = openssl(&["dgst", "-sha256", "-r", key_der.to_str().unwrap()]);
    let digest = String::from_utf8_lossy(&digest);
    assert_eq!(
        digest.split_whitespace().next().unwrap(),
        changed[2].2,
        "the summary's fingerprint of the encryption key"
    );
}

/// The panel row the summary should show: per slot, the light of the last token that
/// finished there (the desk leaves the last tokens plugged in), or `off` for a slot never
/// used.
fn final_row(s: &Value, slots: u64) -> String {
    let tokens = s["tokens"].as_array().unwrap();
    (0..slots)
        .map(|slot| {
            let light = match tokens.iter().rev().find(|t| t["slot"] == slot) {
                None => "off",
                Some(t) if t["state"] == "succeeded" => "done",
                Some(_) => "failed",
            };
            format!("{slot}:{light}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn demo_panel_lights_in_the_summary_are_the_final_ones() {
    // More tokens than slots (tokens taken out to make room, the last ones left in), and
    // fewer (a slot never used stays dark).
    for (tokens, slots, expected) in [(3, 2, "0:done 1:done"), (2, 3, "0:done 1:done 2:off")] {
        let out = demo(
            &[
                "--tokens",
                &tokens.to_string(),
                "--slots",
                &slots.to_string(),
                "--json",
            ],
            &[],
        );
        let s = summary(&out);
        check_tokens(&s, tokens);
        assert_eq!(s["panel"], final_row(&s, slots as u64), "{s:#}");
        assert_eq!(s["panel"], expected, "{s:#}");
        assert_eq!(s["panel_settled"], true, "{s:#}");
    }
}
