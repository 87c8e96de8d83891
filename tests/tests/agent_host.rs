//! The agent as a process on its host: the state folder is the agent's alone whatever the
//! umask.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ukey_protocol::keys::KeyAlgorithm;
use ukey_tests::station::Station;

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
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
    for file in ["journal.log", "presence.seq", "status.json", "outbox.log"] {
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
