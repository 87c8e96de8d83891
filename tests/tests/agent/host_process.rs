//! The agent as a process on its host: SIGHUP (`systemctl reload`) re-reads the configuration
//! without stopping a job, and the state folder is the agent's alone whatever the umask.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hsm_sim::rack::InsertOptions;
use hsm_sim::rack::latency::Profile;
use ukey_protocol::keys::KeyAlgorithm;
use ukey_tests::station::Station;

const WAIT: Duration = Duration::from_secs(60);

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// `text` without terminal colour sequences (`ESC [ ... m`), which the log may carry.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_mid_job_applies_the_log_level_names_the_rest_and_the_job_succeeds() {
    let mut station = Station::sim(1).await;
    station.start_agent().await;
    // Realistic timings: key generation takes seconds, so the signal lands mid-job.
    station
        .rack()
        .insert(
            0,
            InsertOptions {
                latency: Some(Profile::Realistic),
                ..Default::default()
            },
        )
        .unwrap();
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    station.wait_for_log("token claims job", 1, WAIT).await;
    assert!(
        !station.agent_log().contains("DEBUG"),
        "debug lines at the info level:\n{}",
        station.agent_log()
    );

    // The operator turns debug logging on and changes a key that needs a restart.
    let config = station.dir().join("agent.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("keep_alive_secs = 5\n"));
    std::fs::write(
        &config,
        format!(
            "log_level = \"ukey_agent=debug,info\"\n{}",
            text.replace("keep_alive_secs = 5\n", "keep_alive_secs = 7\n")
        ),
    )
    .unwrap();
    let pid = station.agent_pid().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    station
        .wait_for_log("SIGHUP: configuration re-read", 1, WAIT)
        .await;
    let log = plain(&station.agent_log());
    let line = log
        .lines()
        .find(|l| l.contains("SIGHUP: configuration re-read"))
        .unwrap();
    assert!(
        line.contains("broker.keep_alive_secs") && line.contains("next restart"),
        "{line}"
    );
    // Only the key that waits for a restart is named as not applied; the new level is in force.
    let not_applied = line.split("not_applied=").nth(1).unwrap_or_default();
    assert_eq!(not_applied.trim(), "broker.keep_alive_secs", "{line}");
    assert!(line.contains("log_level=ukey_agent=debug,info"), "{line}");
    // The job goes on, now with debug lines.
    station.wait_for_log("DEBUG", 1, WAIT).await;
    station.new_job_succeeded(&job).await;
    assert!(station.agent_running(), "{}", station.agent_log());

    // An invalid file is refused as a whole; the agent runs on.
    std::fs::write(&config, "station_id = \n").unwrap();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    station
        .wait_for_log("SIGHUP: configuration not re-read", 1, WAIT)
        .await;
    assert!(station.agent_running(), "{}", station.agent_log());
    let status = station.stop_agent().unwrap();
    assert!(status.success(), "{status:?}\n{}", station.agent_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_files_are_private_whatever_the_umask() {
    let mut station = Station::sim(1).await;
    // A folder left open by an older agent (or made by hand) is tightened at start.
    let state = station.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(state.join("presence.seq"), "0").unwrap();
    std::fs::set_permissions(
        state.join("presence.seq"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // The agent inherits the test's umask (the usual 022, under which files used to come
    // out 0644): the modes below must not depend on it.

    station.start_agent().await;
    station.insert_blank(0);
    let job = station.dispatch_new(KeyAlgorithm::P256).await;
    station.new_job_succeeded(&job).await;
    // The status snapshot comes every few seconds.
    station.status_with("desk-test").await;
    station.stop_agent();

    let mut seen = Vec::new();
    let mut folders = vec![state.clone()];
    while let Some(dir) = folders.pop() {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
                seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    // The audit log (its start and stop entries) and its lock are the agent's alone too.
    for file in [
        "journal.log",
        "journal.keys",
        "presence.seq",
        "status.json",
        "outbox.log",
        "audit-000001.jsonl",
        "lock",
    ] {
        assert!(seen.iter().any(|s| s == file), "no {file} in {seen:?}");
    }
    assert!(
        station
            .agent_log()
            .contains("state folder: made files 0600"),
        "{}",
        station.agent_log()
    );
}
