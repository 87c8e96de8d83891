//! `ukey-agent audit verify|show|export`, run as shipped, on a log the library wrote and on
//! tampered copies of it: exit codes, and messages that name the file, line and kind of break.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use p256::pkcs8::EncodePrivateKey;
use time::macros::datetime;
use ukey_agent::audit::{
    AuditEvent, AuditLog, MIN_MAX_FILE_BYTES, ReceiptBuilder, audit_dir, file_name,
};
use ukey_protocol::{JobId, JobKind, ReceiptSigner, StationId, Step, TokenSerial, UnsealKey};
use ukey_tests::agent_binary;

const KEY_BYTES: [u8; 32] = [0x22; 32];

fn station_key() -> UnsealKey {
    UnsealKey::P256(p256::SecretKey::from_slice(&KEY_BYTES).unwrap())
}

/// A configuration whose state folder is `state` and station key is `key`.
fn write_config(dir: &Path, state: &Path, key: &Path) -> PathBuf {
    let text = format!(
        "station_id = \"desk-01\"\nstate_dir = {state:?}\n\
         [broker]\nhost = \"127.0.0.1\"\nport = 1883\n\
         [pkcs11]\ndefault_module = \"/nonexistent/module.so\"\n\
         [trust]\nca_certs = [\"/nonexistent/ca.pem\"]\n\
         platform_signing_key = \"/nonexistent/sign.pem\"\n\
         platform_sealing_key = \"/nonexistent/seal.pem\"\n\
         station_key = {key:?}\nplatform_signing_key_id = \"k1\"\n",
        state = state.display().to_string(),
        key = key.display().to_string(),
    );
    let path = dir.join(format!(
        "agent-{}.toml",
        state.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

fn receipt(serial: &str) -> AuditEvent {
    let t = datetime!(2026-12-07 02:00:00 UTC);
    let mut b = ReceiptBuilder::new(
        StationId::new("desk-01").unwrap(),
        JobId::new(format!("J-{serial}")).unwrap(),
        JobKind::New,
        TokenSerial::new(serial).unwrap(),
        "sim-ukey",
        Some(0),
        None,
    );
    b.step_started(Step::Initialize, t);
    let signer = ReceiptSigner::new(&station_key()).unwrap();
    AuditEvent::Receipt {
        receipt: b
            .finish_signed(None, t + time::Duration::seconds(3), &signer)
            .unwrap(),
    }
}

/// A log in `state` of two files: two receipts, then wipes to fill it.
fn make_log(state: &Path) {
    let mut log = AuditLog::open(&audit_dir(state), MIN_MAX_FILE_BYTES).unwrap();
    let at = datetime!(2026-12-01 00:00:00 UTC);
    log.record_at(receipt("UK0001"), at).unwrap();
    log.record_at(receipt("UK0002"), at).unwrap();
    let mut i = 0u32;
    while !audit_dir(state).join(file_name(2)).exists() {
        i += 1;
        log.record_at(
            AuditEvent::Wiped {
                token: TokenSerial::new(format!("T{i:05}")).unwrap(),
                job: None,
                reason: "blank token initialized".to_owned(),
            },
            datetime!(2026-12-05 00:00:00 UTC),
        )
        .unwrap();
    }
}

fn agent(args: &[&str]) -> Output {
    Command::new(agent_binary()).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct Desk {
    dir: tempfile::TempDir,
    key: PathBuf,
    state: PathBuf,
    config: PathBuf,
}

fn desk() -> Desk {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("station.pem");
    let pem = p256::SecretKey::from_slice(&KEY_BYTES)
        .unwrap()
        .to_pkcs8_pem(Default::default())
        .unwrap();
    std::fs::write(&key, pem.as_bytes()).unwrap();
    let state = dir.path().join("state");
    make_log(&state);
    let config = write_config(dir.path(), &state, &key);
    Desk {
        dir,
        key,
        state,
        config,
    }
}

/// A copy of the desk's state folder, changed by `tamper`, and a configuration naming it.
fn tampered(desk: &Desk, name: &str, tamper: impl FnOnce(&Path)) -> PathBuf {
    let state = desk.dir.path().join(name);
    let audit = audit_dir(&state);
    std::fs::create_dir_all(&audit).unwrap();
    for n in 1..=2 {
        std::fs::copy(
            audit_dir(&desk.state).join(file_name(n)),
            audit.join(file_name(n)),
        )
        .unwrap();
    }
    tamper(&audit);
    write_config(desk.dir.path(), &state, &desk.key)
}

fn edit_lines(path: &Path, change: impl FnOnce(&mut Vec<String>)) {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    change(&mut lines);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn verify_passes_on_an_intact_log_and_counts_receipts() {
    let desk = desk();
    let config = desk.config.to_str().unwrap();
    let out = agent(&["audit", "verify", "--config", config]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("audit log intact"), "{t}");
    assert!(t.contains("2 file(s), 2 receipt(s) for 2 token(s)"), "{t}");
    assert!(t.contains("UK0001: 1 receipt(s)"), "{t}");
}

/// A change to a copy of the audit folder.
type Tamper = Box<dyn FnOnce(&Path)>;

#[test]
fn verify_names_each_tampering() {
    let desk = desk();
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "edited",
            Box::new(|a: &Path| {
                edit_lines(&a.join(file_name(1)), |l| {
                    l[4] = l[4].replace("initialized", "initialised")
                })
            }),
            "audit-000001.jsonl:5: edited",
        ),
        (
            "deleted",
            Box::new(|a: &Path| edit_lines(&a.join(file_name(1)), |l| drop(l.remove(3)))),
            "audit-000001.jsonl:4: deleted: entry 3 missing before entry 4",
        ),
        (
            "reordered",
            Box::new(|a: &Path| edit_lines(&a.join(file_name(1)), |l| l.swap(5, 6))),
            "audit-000001.jsonl:6: reordered: entry 6 comes before entry 5",
        ),
        (
            "truncated",
            Box::new(|a: &Path| {
                let path = a.join(file_name(2));
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
            }),
            "audit-000002.jsonl:",
        ),
        (
            "removed",
            Box::new(|a: &Path| std::fs::remove_file(a.join(file_name(1))).unwrap()),
            "audit-000002.jsonl:0: missing file: audit-000001.jsonl missing",
        ),
        (
            "signature",
            Box::new(|a: &Path| {
                // Another key's signature (the chain itself is then also broken at line 1,
                // since the line no longer matches its hash).
                edit_lines(&a.join(file_name(1)), |l| {
                    let start = l[0].find("\"signature\":\"").unwrap() + 13;
                    let c = l[0].as_bytes()[start + 3];
                    let swap = if c == b'A' { "B" } else { "A" };
                    l[0].replace_range(start + 3..start + 4, swap);
                })
            }),
            "audit-000001.jsonl:1: bad receipt signature",
        ),
    ];
    for (name, tamper, expected) in cases {
        let config = tampered(&desk, name, tamper);
        let out = agent(&["audit", "verify", "-c", config.to_str().unwrap()]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {t}");
        assert!(t.contains("audit log BROKEN"), "{name}: {t}");
        assert!(
            t.contains(expected),
            "{name}: expected {expected:?} in\n{t}"
        );
        if name == "truncated" {
            assert!(
                t.contains(": truncated: the file ends in a partial line"),
                "{t}"
            );
        }
    }
}

#[test]
fn show_filters_by_time_and_token() {
    let desk = desk();
    let config = desk.config.to_str().unwrap();
    let out = agent(&["audit", "show", "-c", config, "--token", "UK0002"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(
        lines[0].contains("receipt") && lines[0].contains("token=UK0002"),
        "{stdout}"
    );

    let out = agent(&[
        "audit",
        "show",
        "-c",
        config,
        "--since",
        "2026-12-02T00:00:00Z",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !stdout.is_empty() && !stdout.contains("receipt "),
        "{stdout}"
    );
    assert!(
        stdout.lines().all(|l| l.starts_with("2026-12-05")),
        "{stdout}"
    );

    let out = agent(&["audit", "show", "-c", config, "--json", "--token", "UK0001"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let entry: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(entry["event"]["type"], "receipt");

    let out = agent(&["audit", "show", "-c", config, "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--since"), "{}", text(&out));
}

#[test]
fn export_writes_the_log_with_its_verification() {
    let desk = desk();
    let config = desk.config.to_str().unwrap();
    let file = desk.dir.path().join("export.json");
    let out = agent(&[
        "audit",
        "export",
        "-c",
        config,
        "--format",
        "json",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(doc["verification"]["ok"], true);
    assert_eq!(doc["verification"]["receipts"], 2);
    let entries = doc["entries"].as_array().unwrap();
    assert_eq!(
        doc["verification"]["entries"].as_u64().unwrap(),
        entries.len() as u64
    );
    assert_eq!(entries[0]["event"]["type"], "receipt");

    // JSON lines on stdout: the verification, then every entry byte for byte.
    let out = agent(&["audit", "export", "-c", config]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (first, rest) = stdout.split_once('\n').unwrap();
    let head: serde_json::Value = serde_json::from_str(first).unwrap();
    assert_eq!(head["verification"]["ok"], true);
    let audit = audit_dir(&desk.state);
    let stored = [
        std::fs::read_to_string(audit.join(file_name(1))).unwrap(),
        std::fs::read_to_string(audit.join(file_name(2))).unwrap(),
    ]
    .concat();
    assert_eq!(rest, stored);

    // A broken log is exported all the same, says so, and exits 1.
    let config = tampered(&desk, "export-broken", |a| {
        edit_lines(&a.join(file_name(1)), |l| drop(l.remove(2)))
    });
    let file = desk.dir.path().join("broken.json");
    let out = agent(&[
        "audit",
        "export",
        "-c",
        config.to_str().unwrap(),
        "--format",
        "json",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("BROKEN"), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(doc["verification"]["ok"], false);
    assert_eq!(doc["verification"]["breaks"][0]["kind"], "deleted");
}

#[test]
fn an_unreadable_station_key_or_configuration_is_exit_3() {
    let desk = desk();
    let config = write_config(
        desk.dir.path(),
        &desk.state,
        &desk.dir.path().join("nope.pem"),
    );
    let out = agent(&["audit", "verify", "-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("trust.station_key"), "{}", text(&out));
    let out = agent(&["audit", "verify", "-c", "/nonexistent/agent.toml"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
}
