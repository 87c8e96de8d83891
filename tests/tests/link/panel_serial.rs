//! The agent's panel driver against hsm-sim's emulated board, over a real pseudo-terminal:
//! handshake, lights, beeps, buttons, bad lines, a board that goes away and comes back at the
//! same path, a board that resets or hangs, shutdown, and a desk without a panel.
//!
//! Every wait is on a channel or a status change, with a deadline; nothing sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use hsm_sim::panel::{BoardEvent, EmulatedPanel, PanelOptions};
use tokio::sync::mpsc;
use ukey_agent::config::PanelConfig;
use ukey_agent::link::CancellationToken;
use ukey_agent::panel::{
    BeepPattern, ButtonAction, ButtonPress, Light, Panel, PanelError, PanelHandle, PanelStatus,
    PanelTimings,
};
use ukey_protocol::panel::HostLine;

/// Generous: these wait for a thread on a loaded 2-core machine, not for a timer.
const WAIT: Duration = Duration::from_secs(10);

fn fast() -> PanelTimings {
    PanelTimings {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        keepalive: Duration::from_millis(200),
        // Long enough that a loaded machine never makes a live board look dead.
        dead_after: Duration::from_secs(5),
    }
}

fn board(link: &Path, slots: u8) -> (EmulatedPanel, Receiver<BoardEvent>) {
    EmulatedPanel::start(PanelOptions {
        slots,
        model: "TEST-PANEL".into(),
        firmware: "9.8.7".into(),
        link: Some(link.to_path_buf()),
    })
    .unwrap()
}

fn config(device: &Path) -> PanelConfig {
    PanelConfig {
        device: device.to_path_buf(),
        baud: 115_200,
    }
}

struct Agent {
    handle: PanelHandle,
    buttons: mpsc::Receiver<ButtonPress>,
    shutdown: CancellationToken,
}

fn agent(device: &Path, timings: PanelTimings) -> Agent {
    let shutdown = CancellationToken::new();
    let (handle, buttons) =
        Panel::start_with(Some(&config(device)), timings, shutdown.clone()).unwrap();
    Agent {
        handle,
        buttons,
        shutdown,
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
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

/// Waits until the board shows `expected`, reading its events as they come.
fn lights_until(board: &EmulatedPanel, events: &Receiver<BoardEvent>, expected: &[Light]) {
    let deadline = Instant::now() + WAIT;
    while board.lights() != expected {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            events.recv_timeout(left).is_ok(),
            "board never showed {expected:?}; it shows {:?}",
            board.lights()
        );
    }
}

/// Waits for a host line matching `pred`; returns the lines seen before it.
fn host_line_until(
    events: &Receiver<BoardEvent>,
    what: &str,
    mut pred: impl FnMut(&HostLine) -> bool,
) -> Vec<BoardEvent> {
    let deadline = Instant::now() + WAIT;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(BoardEvent::Host(line)) if pred(&line) => return before,
            Ok(other) => before.push(other),
            Err(_) => panic!("board never received {what}; it received {before:?}"),
        }
    }
}

async fn next_press(agent: &mut Agent) -> ButtonPress {
    tokio::time::timeout(WAIT, agent.buttons.recv())
        .await
        .expect("no button press reached the driver")
        .expect("button channel closed")
}

fn link_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("panel")
}

#[tokio::test]
async fn panel_handshake_lights_and_beeps_reach_the_board() {
    let dir = tempfile::tempdir().unwrap();
    let link = link_path(&dir);
    let (board, events) = board(&link, 4);
    let agent = agent(&link, fast());
    // A light set before the board answered must still be shown (via STATE after HELLO).
    agent.handle.set(3, Light::Attention).unwrap();

    let status = status_until(&agent.handle, "connected", |s| s.connected).await;
    let info = status.board.expect("board info after HELLO");
    assert_eq!(
        (info.model.as_str(), info.slots, info.firmware.as_str()),
        ("TEST-PANEL", 4, "9.8.7")
    );
    assert_eq!(status.connects, 1);
    assert_eq!(status.device.as_deref(), Some(link.as_path()));
    host_line_until(&events, "the agent's HELLO", |l| {
        *l == HostLine::Hello { version: 1 }
    });
    lights_until(
        &board,
        &events,
        &[Light::Off, Light::Off, Light::Off, Light::Attention],
    );

    agent.handle.set(1, Light::Working).unwrap();
    agent.handle.set(2, Light::Failed).unwrap();
    agent.handle.set(3, Light::Done).unwrap();
    lights_until(
        &board,
        &events,
        &[Light::Off, Light::Working, Light::Failed, Light::Done],
    );

    agent.handle.beep(2, BeepPattern::Double).unwrap();
    host_line_until(&events, "BEEP 2 double", |l| {
        *l == HostLine::Beep {
            slot: 2,
            pattern: BeepPattern::Double,
        }
    });
    // A slot the board does not have is kept by the handle but never sent to the board.
    agent.handle.set(10, Light::Done).unwrap();
    agent.handle.set(0, Light::Done).unwrap();
    let before = host_line_until(&events, "LIGHT 0 done", |l| {
        matches!(l, HostLine::Light { slot: 0, .. })
    });
    assert!(
        before.iter().all(|e| !matches!(e, BoardEvent::Bad { .. })),
        "the driver sent a line the board refused: {before:?}"
    );
    assert_eq!(agent.handle.light(10), Some(Light::Done));
    assert_eq!(agent.handle.status().bad_lines, 0);
}

#[tokio::test]
async fn panel_button_presses_reach_the_driver() {
    let dir = tempfile::tempdir().unwrap();
    let link = link_path(&dir);
    let (board, _events) = board(&link, 4);
    let mut agent = agent(&link, fast());
    status_until(&agent.handle, "connected", |s| s.connected).await;

    board.press(2, ButtonAction::Retry).unwrap();
    assert_eq!(
        next_press(&mut agent).await,
        ButtonPress {
            slot: 2,
            action: ButtonAction::Retry
        }
    );
    // A press on a slot the board does not have is dropped; the next good one comes through.
    board.send_raw(b"PRESS 9 ack\n").unwrap();
    board.press(0, ButtonAction::Ack).unwrap();
    assert_eq!(
        next_press(&mut agent).await,
        ButtonPress {
            slot: 0,
            action: ButtonAction::Ack
        }
    );
}

#[tokio::test]
async fn panel_bad_lines_are_ignored_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let link = link_path(&dir);
    let (board, events) = board(&link, 4);
    let mut agent = agent(&link, fast());
    status_until(&agent.handle, "connected", |s| s.connected).await;

    let mut junk = b"\x00\xff\x1b[2J PRESS 1 ack \xc3\xa9\n".to_vec();
    junk.extend_from_slice(b"BLINK 1\n");
    junk.extend_from_slice(b"PRESS 1 explode\n");
    junk.extend_from_slice(b"HELLO 2 FUTURE-BOARD 8 1.0\n");
    junk.extend_from_slice(&vec![b'z'; 5000]);
    junk.extend_from_slice(b"\n");
    board.send_raw(&junk).unwrap();
    board.press(3, ButtonAction::Retry).unwrap();
    // The only press that arrives is the good one, sent after all the junk.
    assert_eq!(
        next_press(&mut agent).await,
        ButtonPress {
            slot: 3,
            action: ButtonAction::Retry
        }
    );
    let status = status_until(&agent.handle, "5 bad lines counted", |s| s.bad_lines >= 5).await;
    assert_eq!(status.bad_lines, 5, "{status:?}");
    assert!(status.connected, "bad lines must not drop the connection");
    assert_eq!(status.connects, 1, "bad lines must not cause a reconnect");
    // A future-version HELLO did not replace what the board said.
    assert_eq!(status.board.unwrap().model, "TEST-PANEL");

    // The driver keeps working.
    agent.handle.set(1, Light::Working).unwrap();
    lights_until(
        &board,
        &events,
        &[Light::Off, Light::Working, Light::Off, Light::Off],
    );
}

#[tokio::test]
async fn panel_reconnects_to_a_new_board_at_the_same_path_and_resends_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let link = link_path(&dir);
    let (first, first_events) = board(&link, 3);
    let agent = agent(&link, fast());
    status_until(&agent.handle, "connected", |s| s.connected).await;
    agent.handle.set(0, Light::Done).unwrap();
    agent.handle.set(2, Light::Failed).unwrap();
    lights_until(
        &first,
        &first_events,
        &[Light::Done, Light::Off, Light::Failed],
    );

    // The board goes away (USB unplugged): the pty closes and the symlink goes.
    drop(first);
    let down = status_until(&agent.handle, "disconnected", |s| !s.connected).await;
    assert!(down.last_error.is_some(), "{down:?}");
    // While it is away, the device cannot be opened, and the driver says so.
    status_until(&agent.handle, "reporting the open failure", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("cannot open"))
    })
    .await;
    // The desk changes a light while the panel is away.
    agent.handle.set(1, Light::Working).unwrap();

    // A new board (a new pty, which may well reuse the old number) at the same path.
    let (second, second_events) = board(&link, 3);
    let status = status_until(&agent.handle, "reconnected", |s| s.connected).await;
    assert_eq!(status.connects, 2);
    // Slots 0 and 2 were set before the board went away and never since: only the full
    // state after the reconnect can have lit them.
    lights_until(
        &second,
        &second_events,
        &[Light::Done, Light::Working, Light::Failed],
    );
}

#[tokio::test]
async fn panel_absent_at_start_is_opened_when_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let link = link_path(&dir);
    let agent = agent(&link, fast());
    agent.handle.set(1, Light::Attention).unwrap();
    let status = status_until(&agent.handle, "reporting the open failure", |s| {
        s.last_error.is_some()
    })
    .await;
    assert!(!status.connected);
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("cannot open"),
        "{status:?}"
    );

    let (board, events) = board(&link, 2);
    status_until(&agent.handle, "connected", |s| s.connected).await;
    lights_until(&board, &events, &[Light::Off, Light::Attention]);
}

#[tokio::test]
async fn panel_board_reset_gets_the_full_state_again() {
    let dir = tempfile::tempdir().unwrap();
    let link = link_path(&dir);
    let (board, events) = board(&link, 2);
    let agent = agent(&link, fast());
    status_until(&agent.handle, "connected", |s| s.connected).await;
    agent.handle.set(0, Light::Working).unwrap();
    agent.handle.set(1, Light::Done).unwrap();
    lights_until(&board, &events, &[Light::Working, Light::Done]);

    // The board reboots behind a USB link that stays up: dark, then HELLO.
    board.reset().unwrap();
    assert_eq!(board.lights(), vec![Light::Off, Light::Off]);
    host_line_until(&events, "STATE after the board's HELLO", |l| {
        matches!(l, HostLine::State(_))
    });
    assert_eq!(board.lights(), vec![Light::Working, Light::Done]);
    assert_eq!(agent.handle.status().connects, 1, "same connection");
}

#[tokio::test]
async fn panel_silent_board_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let link = link_path(&dir);
    let (board, events) = board(&link, 2);
    let timings = PanelTimings {
        dead_after: Duration::from_millis(800),
        keepalive: Duration::from_millis(100),
        ..fast()
    };
    let agent = agent(&link, timings);
    status_until(&agent.handle, "connected", |s| s.connected).await;
    host_line_until(&events, "a PING", |l| matches!(l, HostLine::Ping(_)));

    board.set_silent(true);
    let down = status_until(&agent.handle, "disconnected", |s| !s.connected).await;
    assert!(
        down.last_error.as_deref().unwrap().contains("no answer"),
        "{down:?}"
    );
    board.set_silent(false);
    agent.handle.set(1, Light::Failed).unwrap();
    let up = status_until(&agent.handle, "reconnected", |s| s.connected).await;
    assert!(up.connects >= 2, "{up:?}");
    lights_until(&board, &events, &[Light::Off, Light::Failed]);
}

#[tokio::test]
async fn panel_shutdown_turns_the_lights_off() {
    let dir = tempfile::tempdir().unwrap();
    let link = link_path(&dir);
    let (board, events) = board(&link, 2);
    let agent = agent(&link, fast());
    status_until(&agent.handle, "connected", |s| s.connected).await;
    agent.handle.set(0, Light::Working).unwrap();
    lights_until(&board, &events, &[Light::Working, Light::Off]);

    agent.shutdown.cancel();
    tokio::time::timeout(WAIT, agent.handle.stopped())
        .await
        .expect("driver did not stop");
    assert!(agent.handle.status().stopped);
    assert!(!agent.handle.status().connected);
    lights_until(&board, &events, &[Light::Off, Light::Off]);
}

#[tokio::test]
async fn panel_not_configured_is_a_no_op() {
    let (handle, mut buttons) = Panel::start(None, CancellationToken::new()).unwrap();
    handle.set(0, Light::Working).unwrap();
    handle.beep(0, BeepPattern::Short).unwrap();
    assert_eq!(handle.light(0), Some(Light::Working));
    let status = handle.status();
    assert_eq!(status.device, None);
    assert!(!status.connected);
    assert!(status.board.is_none());
    // The button channel stays open and quiet (a daemon's select! must not spin on it).
    assert_eq!(buttons.try_recv(), Err(mpsc::error::TryRecvError::Empty));
    assert!(matches!(
        handle.set(64, Light::Done),
        Err(PanelError::SlotOutOfRange { slot: 64 })
    ));
    handle.stopped().await;
}
