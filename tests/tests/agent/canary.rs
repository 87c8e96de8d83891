//! The canary: a whole desk run at `RUST_LOG=trace`, then every place a secret could have
//! leaked to is searched for every PIN, ID-card number and mobile number of the run, in
//! clear, in hex and in base64 (`ukey_tests::leaks`), and none is found.
//!
//! The places: the agent's log (every run), every file in its state folder (journal, key
//! file, outbox, status, presence sequence, audit log), every file of the broker (its
//! persistence database, written with `autosave_interval 1`, its log) and every MQTT payload
//! a separate subscriber on `#` received. Real Mosquitto, the simulated platform, an hsm-sim
//! rack and the real `ukey-agent` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use secrecy::ExposeSecret;
use ukey_protocol::ids::TokenSerial;
use ukey_protocol::keys::KeyAlgorithm;
use ukey_tests::leaks;
use ukey_tests::station::Station;

/// A `mosquitto_sub` on `#` writing every message as `topic payload` lines to a file.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    /// Subscribes to everything on the broker at `port`; returns once a marker message
    /// published after the subscription came back (the subscriber is in place).
    async fn start(port: u16, dir: &Path) -> Capture {
        let file = dir.join("capture.txt");
        let out = std::fs::File::create(&file).unwrap();
        let child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-t", "#", "-v", "-q", "1", "-i", "canary-capture"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (mosquitto-clients) is needed for this test");
        let capture = Capture { child, file };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let status = Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["-t", "canary/marker", "-m", "subscribed", "-q", "1"])
                .status()
                .expect("mosquitto_pub (mosquitto-clients) is needed for this test");
            assert!(status.success(), "mosquitto_pub failed: {status}");
            if capture.text().contains("canary/marker subscribed") {
                return capture;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the capturing subscriber never received its marker"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.file).unwrap_or_default()).into_owned()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file under `dir`, with its bytes.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path.display().to_string(), bytes));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_pin_id_number_or_mobile_leaks_anywhere_at_trace_level() {
    let mut station = Station::sim(2).await;
    station.rust_log = "trace".to_owned();
    let capture = Capture::start(station.broker.port(), station.dir()).await;
    station.start_agent().await;

    // The platform's orders hold the people's ID-card numbers and mobiles; the jobs it
    // sends must not.
    let drafts = [
        station.new_draft(KeyAlgorithm::P256),
        station.new_draft(KeyAlgorithm::P256),
    ];
    let mut jobs = Vec::new();
    for draft in &drafts {
        jobs.push(station.platform.dispatch_draft(draft).await.unwrap());
    }
    station.insert_blank(0);
    station.insert_blank(1);
    let mut serials: Vec<TokenSerial> = Vec::new();
    for job in &jobs {
        let record = station.new_job_succeeded(job).await;
        serials.push(record.token_serial().expect("a bound token").clone());
    }
    // The status file is written every few seconds: one that names the station.
    station.status_with(station.station_id.as_str()).await;
    station.stop_agent();

    // The secrets of the run: both tokens' PINs, every person's numbers in both jobs.
    let snapshot = station.platform.snapshot();
    let mut secrets: Vec<(String, String)> = Vec::new();
    for serial in &serials {
        let token = snapshot.token(serial).expect("token record");
        let so = token.so_pin().expect("the bound SO PIN");
        let user = token.user_pin().expect("the bound user PIN");
        secrets.push((format!("{serial}'s SO PIN"), so.expose_secret().to_owned()));
        secrets.push((
            format!("{serial}'s user PIN"),
            user.expose_secret().to_owned(),
        ));
    }
    for (job, draft) in jobs.iter().zip(&drafts) {
        let rep = &draft.order.legal_representative;
        let handler = &draft.order.handler;
        for (what, value) in [
            (
                "legal representative's ID-card number",
                rep.id_number.as_str(),
            ),
            ("legal representative's mobile", rep.mobile.as_str()),
            ("handler's ID-card number", handler.id_number.as_str()),
            ("handler's mobile", handler.mobile.as_str()),
        ] {
            secrets.push((format!("{job}'s {what}"), value.to_owned()));
        }
    }
    assert_eq!(secrets.len(), 12);

    // The broker saves its database every second: wait until it holds the station's
    // retained presence, then stop the capture.
    let db = station.broker.dir().join("db").join("mosquitto.db");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let bytes = std::fs::read(&db).unwrap_or_default();
        if leaks::find(&bytes, station.station_id.as_str()).is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker's database {} never held the station's messages; the broker's files: {:?}\n{}",
            db.display(),
            files_under(station.broker.dir())
                .iter()
                .map(|(path, bytes)| (path.clone(), bytes.len()))
                .collect::<Vec<_>>(),
            station.broker.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let captured = capture.text();
    drop(capture);

    // What is searched, and that each place really holds the run (a search of nothing
    // proves nothing).
    let log = station.agent_log();
    // The agent itself writes no `trace!` lines: its debug lines show the filter let
    // everything through.
    assert!(log.contains("DEBUG"), "the agent logged below info level");
    for job in &jobs {
        assert!(log.contains(job.as_str()), "the log names {job}");
        assert!(
            captured.contains(&format!("/jobs/{job}/events ")),
            "the capture holds {job}'s events"
        );
    }
    let state = files_under(&station.state_dir());
    let broker = files_under(station.broker.dir());
    assert!(
        broker
            .iter()
            .any(|(path, _)| path.ends_with("mosquitto.db"))
    );
    let mut places: Vec<(String, Vec<u8>)> = vec![("the agent's log".into(), log.into_bytes())];
    places.extend(state);
    for (path, bytes) in broker {
        places.push((path, bytes));
    }
    for line in captured.lines() {
        let (topic, payload) = line.split_once(' ').unwrap_or((line, ""));
        places.push((
            format!("the MQTT payload on {topic}"),
            payload.as_bytes().to_vec(),
        ));
    }

    let mut leaked = Vec::new();
    for (place, bytes) in &places {
        for (what, value) in &secrets {
            if let Some((at, form)) = leaks::find(bytes, value) {
                leaked.push(format!("{what} in {place} at byte {at} ({form})"));
            }
        }
    }
    assert!(leaked.is_empty(), "secrets leaked:\n{}", leaked.join("\n"));
}
