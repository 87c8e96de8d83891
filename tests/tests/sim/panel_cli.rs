//! `hsm-sim panel` as an operator or a demo uses it: a separate process that prints its
//! device and the lights live, takes button presses on stdin, and talks to the agent's
//! panel driver over its pty (through the `--link` symlink).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use ukey_agent::config::PanelConfig;
use ukey_agent::link::CancellationToken;
use ukey_agent::panel::{
    BeepPattern, ButtonAction, ButtonPress, Light, Panel, PanelHandle, PanelStatus, PanelTimings,
};

const WAIT: Duration = Duration::from_secs(10);

struct Sim {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Sim {
    /// Waits for a stdout line for which `pred` holds; returns it.
    fn line_until(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "hsm-sim panel never printed {what}; it printed {:#?}",
                    self.seen
                ),
            }
        }
    }

    fn say(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn status_until(
    handle: &PanelHandle,
    what: &str,
    pred: impl FnMut(&PanelStatus) -> bool,
) -> PanelStatus {
    let mut rx = handle.watch_status();
    match tokio::time::timeout(WAIT, rx.wait_for(pred)).await {
        Ok(Ok(s)) => s.clone(),
        _ => panic!("panel status never became {what}: {:?}", handle.status()),
    }
}

#[tokio::test]
async fn panel_cli_shows_lights_and_sends_presses() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("panel");
    let mut child = Command::new(ukey_tests::workspace_binary("hsm-sim"))
        .args(["panel", "--slots", "3", "--model", "CLI-PANEL", "--link"])
        .arg(&link)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut sim = Sim {
        child,
        stdin,
        lines,
        seen: Vec::new(),
    };
    let header = sim.line_until("its device", |l| l.starts_with("panel "));
    assert!(header.contains("/dev/pts/"), "{header}");
    sim.line_until("its link", |l| l.starts_with("link "));
    assert!(std::fs::read_link(&link).unwrap().starts_with("/dev/pts/"));

    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let config = PanelConfig {
        device: link.clone(),
        baud: 115_200,
    };
    let (handle, mut buttons) =
        Panel::start_with(Some(&config), PanelTimings::default(), shutdown.clone()).unwrap();
    let status = status_until(&handle, "connected", |s| s.connected).await;
    let board = status.board.unwrap();
    assert_eq!((board.model.as_str(), board.slots), ("CLI-PANEL", 3));

    handle.set(1, Light::Working).unwrap();
    sim.line_until("slot 1 working", |l| l == "lights 0:off 1:working 2:off");
    handle.set(2, Light::Failed).unwrap();
    sim.line_until("slot 2 failed", |l| l == "lights 0:off 1:working 2:failed");
    handle.beep(2, BeepPattern::Long).unwrap();
    sim.line_until("the beep", |l| l.starts_with("beep slot 2 long"));

    sim.say("retry 2");
    let press = tokio::time::timeout(WAIT, buttons.recv()).await.unwrap();
    assert_eq!(
        press,
        Some(ButtonPress {
            slot: 2,
            action: ButtonAction::Retry
        })
    );

    // Bad lines on request: ignored by the driver, which keeps its connection.
    sim.say("raw PRESS 7 ack");
    sim.say("garbage");
    sim.say("ack 0");
    let press = tokio::time::timeout(WAIT, buttons.recv()).await.unwrap();
    assert_eq!(
        press,
        Some(ButtonPress {
            slot: 0,
            action: ButtonAction::Ack
        })
    );
    let status = status_until(&handle, "a bad line counted", |s| s.bad_lines >= 1).await;
    assert_eq!(status.bad_lines, 1, "{status:?}");
    assert_eq!(status.connects, 1);

    sim.say("retry 9");
    sim.line_until("an error for slot 9", |l| {
        l.starts_with("error:") && l.contains("slot 9")
    });

    sim.say("quit");
    // The process closes stdout when it ends: wait for that, then reap it.
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match sim.lines.recv_timeout(left) {
            Ok(line) => sim.seen.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("hsm-sim panel did not quit: {:#?}", sim.seen)
            }
        }
    }
    let exit = sim.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "the link must be removed on quit"
    );
    status_until(&handle, "disconnected", |s| !s.connected).await;
}
