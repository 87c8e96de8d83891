//! The operator's install files and the agent's configuration check, checked by outside tools.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use ukey_tests::{require_tool, workspace_binary, workspace_root};

#[test]
fn systemd_unit_verifies_cleanly() {
    require_tool("systemd-analyze");
    let agent = workspace_binary("ukey-agent");
    let unit = std::fs::read_to_string(workspace_root().join("udev/ukey-agent.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/ukey-agent run --config"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ukey-agent.service");
    // systemd-analyze checks that ExecStart's binary exists: point it at the one we built.
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/ukey-agent", &agent.display().to_string()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    // Unknown keys and bad values are only warnings there: demand none.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned: {stderr}"
    );
    for key in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/ukey-agent",
        "PrivateTmp=yes",
        "Restart=on-failure",
        "DevicePolicy=closed",
        "User=ukey-agent",
        "StateDirectoryMode=0700",
        "SystemCallFilter=@system-service",
        "ProtectProc=invisible",
        "ProcSubset=pid",
        "RemoveIPC=yes",
    ] {
        assert!(unit.lines().any(|l| l.trim() == key), "unit lacks {key}");
    }
}

/// `systemd-analyze security --offline=true UNIT`'s overall exposure (0.0 best, 10.0 worst).
fn exposure(unit: &Path) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in systemd-analyze's output: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    // "→ Overall exposure level for ukey-agent.service: 1.5 OK 🙂"
    let after = line.rsplit_once(": ").unwrap().1;
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn systemd_unit_sandbox_exposure_is_at_most_2() {
    require_tool("systemd-analyze");
    let source = workspace_root().join("udev/ukey-agent.service");
    let unit = std::fs::read_to_string(&source).unwrap();
    let score = exposure(&source);
    assert!(score <= 2.0, "exposure {score} > 2.0");

    // The documented option for vendors whose module talks hidraw: uncommented, the unit
    // still verifies cleanly and keeps its score.
    let option = "#DeviceAllow=char-hidraw rw";
    assert!(
        unit.lines().any(|l| l.trim() == option),
        "unit lacks {option}"
    );
    let dir = tempfile::tempdir().unwrap();
    let hidraw = dir.path().join("ukey-agent.service");
    let agent = workspace_binary("ukey-agent");
    std::fs::write(
        &hidraw,
        unit.replace(option, "DeviceAllow=char-hidraw rw")
            .replace("/usr/local/bin/ukey-agent", &agent.display().to_string()),
    )
    .unwrap();
    let with_hidraw = exposure(&hidraw);
    assert!(
        with_hidraw <= 2.0,
        "exposure with hidraw {with_hidraw} > 2.0"
    );
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&hidraw)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify with hidraw: {stderr}"
    );
}

#[test]
fn udev_rules_grant_the_group_only() {
    let rules =
        std::fs::read_to_string(workspace_root().join("udev/70-ukey-station.rules")).unwrap();
    let mut rule_lines = 0;
    // Join continuation lines, then check every rule that sets a mode.
    for rule in rules.replace("\\\n", " ").lines() {
        let rule = rule.trim();
        if rule.is_empty() || rule.starts_with('#') {
            continue;
        }
        if rule.contains("MODE=") {
            rule_lines += 1;
            assert!(rule.contains("MODE=\"0660\""), "no world access: {rule}");
            assert!(rule.contains("GROUP=\"ukey\""), "group access: {rule}");
            assert!(
                rule.contains("TAG+=\"systemd\""),
                "tagged for systemd: {rule}"
            );
        }
    }
    assert!(
        rule_lines >= 2,
        "rules for at least one Ukey model and the panel"
    );
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new(require_tool("openssl"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(workspace_binary("ukey-agent"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn check_config_accepts_a_good_file_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ca.key",
        ],
        d,
    );
    openssl(
        &[
            "req",
            "-new",
            "-x509",
            "-key",
            "ca.key",
            "-subj",
            "/CN=Test CA",
            "-days",
            "30",
            "-out",
            "ca.pem",
        ],
        d,
    );
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "station.pem",
        ],
        d,
    );
    openssl(
        &[
            "pkey",
            "-in",
            "ca.key",
            "-pubout",
            "-out",
            "platform.pub.pem",
        ],
        d,
    );
    let config = format!(
        r#"station_id = "desk-01"
state_dir = "state"
[broker]
host = "127.0.0.1"
[pkcs11]
default_module = "{module}"
[trust]
ca_certs = ["ca.pem"]
platform_signing_key = "platform.pub.pem"
platform_sealing_key = "platform.pub.pem"
station_key = "station.pem"
"#,
        module = ukey_tests::softhsm::SOFTHSM2_MODULE
    );
    std::fs::write(d.join("good.toml"), &config).unwrap();
    // The station key is the agent user's alone (check-config refuses it otherwise, below).
    std::fs::set_permissions(
        d.join("station.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let out = agent(&[
        "check-config",
        "--config",
        d.join("good.toml").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));

    // A station key that the group (the device group `ukey`, say) or others may read is
    // refused, naming the file, its mode and the fix.
    let key = d.join("station.pem");
    for open in [0o640, 0o644] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(open)).unwrap();
        let out = agent(&[
            "check-config",
            "--config",
            d.join("good.toml").to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(3));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("trust.station_key:")
                && stderr.contains(&format!("mode 0{open:o}"))
                && stderr.contains(&format!("chmod 600 {}", key.display())),
            "{stderr}"
        );
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let bad = config
        .replace(
            "platform.pub.pem\"\nplatform_sealing",
            "ca.pem\"\nplatform_sealing",
        )
        .replace("station_id = \"desk-01\"", "station_id = \"desk/01\"");
    std::fs::write(d.join("bad.toml"), bad).unwrap();
    let out = agent(&[
        "check-config",
        "--config",
        d.join("bad.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("station_id:"), "{stderr}");
    assert!(
        stderr.contains("trust.platform_signing_key:") && stderr.contains("expected PUBLIC KEY"),
        "{stderr}"
    );

    std::fs::write(
        d.join("typo.toml"),
        config.replace("[broker]\n", "[broker]\nhots = \"x\"\n"),
    )
    .unwrap();
    let out = agent(&[
        "check-config",
        "--config",
        d.join("typo.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hots"));
}
