//! `ukey-demo` stopped by a signal, run as the built binary in a process group of its
//! own: SIGINT (Ctrl-C) and SIGTERM stop it cleanly — exit status 130 / 143, one line saying
//! how far it got, a partial summary, its temporary folder removed (a `--dir` kept, tokens in
//! progress left in their slots), no process of its group left behind — and a second Ctrl-C
//! quits at once, without waiting for the agent.
//!
//! Every wait is on a line of the demo's output or on the agent's step events (an MQTT
//! subscriber on the test's own Mosquitto), with a deadline; nothing sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use ukey_tests::{Mosquitto, workspace_binary};

/// Generous: a loaded 2-core machine, not a timer.
const WAIT: Duration = Duration::from_secs(90);

/// The demo, running.
struct Demo {
    pid: u32,
    stderr: Receiver<String>,
    /// Lines of stderr read so far.
    seen: Vec<String>,
    stdout: JoinHandle<String>,
    exited: Receiver<ExitStatus>,
}

impl Demo {
    /// Starts `ukey-demo ARGS` with its temporary files in `tmp`, in a new process group.
    fn start(args: &[&str], tmp: &Path) -> Demo {
        let mut child = Command::new(workspace_binary("ukey-demo"))
            .args(args)
            .env_remove("HSM_SIM_DIR")
            .env("TMPDIR", tmp)
            .env("NO_COLOR", "1")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ukey-demo runs");
        let pid = child.id();
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        let err = child.stderr.take().unwrap();
        let (line_tx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (exit_tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = exit_tx.send(child.wait().unwrap());
        });
        Demo {
            pid,
            stderr,
            seen: Vec::new(),
            stdout,
            exited,
        }
    }

    /// Reads stderr up to the first line that contains `text`.
    fn line_with(&mut self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self
                .stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no line with {text:?} on the demo's stderr ({e}); so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {}", self.pid);
    }

    /// Waits for the demo to exit and for its output to end (no process may hold its pipes
    /// open any more); returns the status, every line of stderr and stdout.
    fn finish(mut self) -> (ExitStatus, Vec<String>, String) {
        let status = match self.exited.recv_timeout(WAIT) {
            Ok(status) => status,
            Err(e) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &format!("-{}", self.pid)])
                    .status();
                panic!(
                    "the demo did not exit ({e}); stderr so far:\n{}",
                    self.seen.join("\n")
                );
            }
        };
        let deadline = Instant::now() + WAIT;
        loop {
            match self
                .stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the demo's stderr is still open after it exited")
                }
            }
        }
        let stdout = self.stdout.join().unwrap();
        (status, self.seen, stdout)
    }
}

/// Processes whose process group is `pgid` (the demo's: it leads its own), with their names.
fn process_group(pgid: u32) -> Vec<String> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // A process may end while it is read: then it is not a member.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) {
            members.push(format!("{pid} {}", &stat[open + 1..close]));
        }
    }
    members
}

/// Checks that the demo leads a group of its own now, so that [`process_group`] after its
/// exit means something.
fn assert_leads_its_group(demo: &Demo) {
    let members = process_group(demo.pid);
    assert!(
        members
            .iter()
            .any(|m| m.starts_with(&format!("{} ", demo.pid))),
        "the demo is not in its own process group: {members:?}"
    );
}

/// The agent's step events, as the station publishes them on `broker`; returns once the
/// subscription is acknowledged.
fn step_events(broker: &Mosquitto) -> Receiver<Value> {
    let mut options = MqttOptions::new(
        format!("test-watch-{}", std::process::id()),
        "127.0.0.1",
        broker.port(),
    );
    options.set_keep_alive(Duration::from_secs(5));
    options.set_max_packet_size(512 * 1024, 512 * 1024);
    let (client, mut connection) = Client::new(options, 64);
    client
        .subscribe("ukey/v1/stations/demo-desk/jobs/+/events", QoS::AtLeastOnce)
        .unwrap();
    let (events_tx, events) = mpsc::channel();
    let (ready_tx, ready) = mpsc::channel();
    std::thread::spawn(move || {
        let _client = client;
        for notification in connection.iter() {
            match notification {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(event) = serde_json::from_slice::<Value>(&p.payload) else {
                        continue;
                    };
                    if events_tx.send(event).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    ready.recv_timeout(WAIT).expect("subscribed to the events");
    events
}

/// Waits for the first event that `want` accepts.
fn event_where(events: &Receiver<Value>, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(event) if want(&event) => return event,
            Ok(_) => {}
            Err(e) => panic!("no event: {what} ({e})"),
        }
    }
}

/// `N` from `… (SIGX): N of 40 tokens finished, …`.
fn finished_count(line: &str, of: usize) -> usize {
    let tail = format!(" of {of} tokens finished");
    let end = line
        .find(&tail)
        .unwrap_or_else(|| panic!("no {tail:?} in {line:?}"));
    let start = line[..end].rfind(' ').unwrap() + 1;
    line[start..end].parse().unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn ctrl_c_stops_the_demo_cleanly_with_a_partial_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = Demo::start(
        &["--tokens", "40", "--slots", "4", "--latency", "realistic"],
        tmp.path(),
    );
    // Work has started and one token is done when the first one is reported finished.
    demo.line_with("finished in");
    assert_leads_its_group(&demo);
    let pid = demo.pid;
    demo.signal("INT");
    let (status, stderr, stdout) = demo.finish();
    let all = stderr.join("\n");
    assert_eq!(status.code(), Some(130), "{all}\n{stdout}");
    assert!(
        all.contains("SIGINT: stopping the agent"),
        "the stopping note: {all}"
    );
    // One line at the end says how far it got and what was cleaned up.
    let last = stderr.last().unwrap();
    assert!(
        last.starts_with("ukey-demo: interrupted (SIGINT): "),
        "{last}"
    );
    assert!(last.ends_with("; temporary files removed"), "{last}");
    assert!(last.contains("the agent stopped"), "{last}");
    let finished = finished_count(last, 40);
    assert!((1..40).contains(&finished), "{last}");
    assert!(last.contains("not started"), "{last}");
    // The partial summary agrees; nothing was verified.
    assert!(
        stdout.contains("The run stopped early: interrupted by SIGINT."),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{finished} of 40 tokens produced, 0 verified")),
        "{stdout}"
    );
    assert!(
        stdout.contains("Verification: cut short by SIGINT"),
        "{stdout}"
    );
    // Nothing is left: no temporary folder, no process of the demo's group.
    assert_eq!(entries(tmp.path()), Vec::<String>::new());
    assert_eq!(process_group(pid), Vec::<String>::new());
}

#[test]
fn sigterm_stops_the_demo_and_keeps_its_dir_with_tokens_in_their_slots() {
    let broker = Mosquitto::start();
    let events = step_events(&broker);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("desk");
    let scratch = tmp.path().join("tmp");
    std::fs::create_dir(&scratch).unwrap();
    let demo = Demo::start(
        &[
            "--tokens",
            "40",
            "--slots",
            "2",
            "--latency",
            "realistic",
            "--json",
            "--broker",
            &broker.addr(),
            "--dir",
            dir.to_str().unwrap(),
        ],
        &scratch,
    );
    // A token finished, then one of the next round is initialized: it is generating its
    // keys when the signal comes.
    let done = event_where(&events, "a job succeeded", |e| e["state"] == "succeeded");
    let first_job = done["job_id"].clone();
    event_where(&events, "another token initialized", |e| {
        e["step"] == "initialize" && e["job_id"] != first_job && e["state"] == "in-progress"
    });
    assert_leads_its_group(&demo);
    let pid = demo.pid;
    demo.signal("TERM");
    let (status, stderr, stdout) = demo.finish();
    let all = stderr.join("\n");
    assert_eq!(status.code(), Some(143), "{all}\n{stdout}");

    let s: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"));
    assert_eq!(s["ok"], false);
    assert_eq!(s["interrupted"], "SIGTERM", "{s:#}");
    assert_eq!(s["aborted"], "interrupted by SIGTERM");
    assert_eq!(s["tokens_requested"], 40);
    assert_eq!(s["tokens_verified"], 0);
    let produced = s["tokens_produced"].as_u64().unwrap() as usize;
    assert!((1..40).contains(&produced), "{s:#}");
    let tokens = s["tokens"].as_array().unwrap();
    let mut stopped = Vec::new();
    for t in tokens {
        match t["state"].as_str().unwrap() {
            "succeeded" => assert_eq!(
                t["verification_problems"],
                serde_json::json!(["not checked: the run was interrupted"]),
                "{t:#}"
            ),
            "interrupted" => {
                assert!(
                    t["error"].as_str().unwrap().starts_with("interrupted"),
                    "{t:#}"
                );
                stopped.push(t);
            }
            other => panic!("state {other}: {t:#}"),
        }
    }
    assert!(!stopped.is_empty(), "a token was in progress: {s:#}");

    // The line on stderr says the same, and that the folder stays.
    let last = stderr.last().unwrap();
    assert!(
        last.starts_with("ukey-demo: interrupted (SIGTERM): "),
        "{last}"
    );
    assert_eq!(finished_count(last, 40), produced, "{last}");
    assert!(
        last.ends_with(&format!(
            "; the rack and the agent's files stay in {}",
            dir.display()
        )),
        "{last}"
    );
    assert!(dir.join("demo/agent.log").exists());
    // The tokens in progress were not pulled: each is still in its slot.
    let rack = hsm_sim::rack::Rack::open(&dir).unwrap();
    for t in &stopped {
        let slot = t["slot"].as_u64().unwrap() as usize;
        assert_eq!(
            rack.serial_in(slot).unwrap().as_deref(),
            t["serial"].as_str(),
            "{t:#}"
        );
    }
    // No temporary folder (there is --dir), no process of the demo's group.
    assert_eq!(entries(&scratch), Vec::<String>::new());
    assert_eq!(process_group(pid), Vec::<String>::new());
}

#[test]
fn a_second_ctrl_c_quits_at_once() {
    let broker = Mosquitto::start();
    let events = step_events(&broker);
    let tmp = tempfile::tempdir().unwrap();
    // RSA-2048 at realistic latency: 3 s per key pair, so a graceful stop waits for the
    // rest of the 9 s key generation.
    let mut demo = Demo::start(
        &[
            "--tokens",
            "2",
            "--slots",
            "1",
            "--alg",
            "rsa2048",
            "--latency",
            "realistic",
            "--broker",
            &broker.addr(),
        ],
        tmp.path(),
    );
    event_where(&events, "the token initialized", |e| {
        e["step"] == "initialize" && e["state"] == "in-progress"
    });
    assert_leads_its_group(&demo);
    let pid = demo.pid;
    demo.signal("INT");
    demo.line_with("press Ctrl-C again to quit at once");
    let again = Instant::now();
    demo.signal("INT");
    let (status, stderr, stdout) = demo.finish();
    let took = again.elapsed();
    let all = stderr.join("\n");
    assert_eq!(status.code(), Some(130), "{all}\n{stdout}");
    let last = stderr.last().unwrap();
    assert_eq!(
        last,
        "ukey-demo: SIGINT again: quitting at once, without waiting for the agent; \
         temporary files removed",
        "{all}"
    );
    assert!(
        took < Duration::from_secs(4),
        "the second Ctrl-C took {took:?}, as long as a graceful stop"
    );
    assert_eq!(entries(tmp.path()), Vec::<String>::new());
    assert_eq!(process_group(pid), Vec::<String>::new());
}

#[test]
fn ctrl_c_stops_the_lifecycle_scenario_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = Demo::start(
        &["--scenario", "lifecycle", "--latency", "realistic"],
        tmp.path(),
    );
    // The first phase's line: the renewal is under way when the signal comes.
    let new = demo.line_with("succeeded");
    assert!(new.starts_with("new "), "{new}");
    assert_leads_its_group(&demo);
    let pid = demo.pid;
    demo.signal("INT");
    let (status, stderr, stdout) = demo.finish();
    let all = stderr.join("\n");
    assert_eq!(status.code(), Some(130), "{all}\n{stdout}");
    assert_eq!(
        stderr.last().unwrap(),
        "ukey-demo: interrupted (SIGINT): 1 of 6 phases finished, stopped during renew, \
         the agent stopped; temporary files removed",
        "{all}"
    );
    assert!(
        stdout.contains("The story stopped early: interrupted by SIGINT during renew."),
        "{stdout}"
    );
    assert!(
        stdout.contains("Verification: cut short by SIGINT"),
        "{stdout}"
    );
    assert_eq!(entries(tmp.path()), Vec::<String>::new());
    assert_eq!(process_group(pid), Vec::<String>::new());
}
