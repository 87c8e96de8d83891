//! The virtual indicator panel: the rack's controller board, emulated on a pseudo-terminal.
//!
//! [`EmulatedPanel::start`] creates a pty pair; the agent opens the pty's device path (or a
//! symlink to it, [`PanelOptions::link`], so a configuration can name a stable path) as if it
//! were the board's USB serial port. The emulator speaks the board's side of
//! `docs/PANEL.md`: it says `HELLO` at power-up and when asked, applies `LIGHT` and `STATE`,
//! answers `PING`, reports unusable lines with `ERR`, and every line it receives comes out as
//! a [`BoardEvent`] so tests can wait for exactly what they expect. Button presses, a board
//! reset, silence and raw (bad) lines are injected through the API, or through stdin of
//! `hsm-sim panel` ([`run`]), which prints the lights live.
//!
//! It is a simulator: it models the protocol, not the electronics (no blinking, no sound),
//! and it keeps its own end of the pty open so that an agent closing and reopening the
//! device sees the same board.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Args;
use serialport::{SerialPort, TTYPort};
use ukey_protocol::panel::{BeepPattern, Light};
use ukey_protocol::panel::{
    BoardInfo, BoardLine, ButtonAction, HostLine, LineReader, MAX_SLOTS, PROTOCOL_VERSION, is_word,
};

use crate::error::{Error, Result};

/// How the emulated board presents itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelOptions {
    /// Number of slots (1..=64).
    pub slots: u8,
    /// Model name sent in `HELLO`.
    pub model: String,
    /// Firmware version sent in `HELLO`.
    pub firmware: String,
    /// Also make a symlink here pointing at the pty (replaced atomically if it exists).
    pub link: Option<PathBuf>,
}

impl Default for PanelOptions {
    fn default() -> Self {
        PanelOptions {
            slots: 4,
            model: "SIM-PANEL".into(),
            firmware: env!("CARGO_PKG_VERSION").into(),
            link: None,
        }
    }
}

/// Something the board received from the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoardEvent {
    /// A valid line, already applied (lights updated, answer sent).
    Host(HostLine),
    /// A line the board could not use; it answered `ERR`.
    Bad {
        /// The line as received (lossy UTF-8).
        line: String,
        /// Why it was refused.
        error: String,
    },
}

/// What the reader thread and the API share.
struct BoardState {
    lights: Vec<Light>,
    /// Answer nothing (a hung board); lines are still applied and reported.
    silent: bool,
}

struct Inner {
    info: BoardInfo,
    state: Mutex<BoardState>,
    /// Notified whenever the lights may have changed (waiters re-check `state`).
    lights_changed: Condvar,
    /// The pty's master side, for writing (the reader thread reads a clone).
    writer: Mutex<TTYPort>,
    stop: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are single assignments or writes; a poisoned lock holds valid data.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn send(&self, line: &BoardLine) -> std::io::Result<()> {
        self.send_raw(line.to_line().as_bytes())
    }

    fn send_raw(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut writer = lock(&self.writer);
        writer.write_all(bytes)
    }

    fn hello(&self) -> std::io::Result<()> {
        self.send(&BoardLine::Hello(self.info.clone()))
    }

    /// Applies one line from the agent and answers it; returns the event to report.
    fn apply(&self, raw: &[u8]) -> BoardEvent {
        let parsed = HostLine::parse(raw);
        let (answer, event) = match parsed {
            Ok(line) => {
                let slots = usize::from(self.info.slots);
                let mut state = lock(&self.state);
                let answer = match &line {
                    HostLine::Hello { .. } => Some(BoardLine::Hello(self.info.clone())),
                    HostLine::Ping(n) => Some(BoardLine::Pong(*n)),
                    HostLine::Light { slot, light } if usize::from(*slot) < slots => {
                        state.lights[usize::from(*slot)] = *light;
                        None
                    }
                    HostLine::Beep { slot, .. } if usize::from(*slot) < slots => None,
                    HostLine::Light { slot, .. } | HostLine::Beep { slot, .. } => Some(
                        BoardLine::error("slot", &format!("{slot} is not below {slots}")),
                    ),
                    HostLine::State(lights) if lights.len() == slots => {
                        state.lights.clone_from(lights);
                        None
                    }
                    HostLine::State(lights) => Some(BoardLine::error(
                        "slots",
                        &format!("STATE has {} codes, the board {slots} slots", lights.len()),
                    )),
                };
                let answer = if state.silent { None } else { answer };
                drop(state);
                self.lights_changed.notify_all();
                (answer, BoardEvent::Host(line))
            }
            Err(e) => {
                let code = match e {
                    ukey_protocol::panel::LineError::UnsupportedVersion { .. } => "version",
                    _ => "syntax",
                };
                let answer = BoardLine::error(code, &e.to_string());
                let silent = lock(&self.state).silent;
                (
                    (!silent).then_some(answer),
                    BoardEvent::Bad {
                        line: String::from_utf8_lossy(raw).into_owned(),
                        error: e.to_string(),
                    },
                )
            }
        };
        if let Some(answer) = answer
            && let Err(e) = self.send(&answer)
        {
            tracing::debug!(error = %e, "emulated panel: answer not written");
        }
        event
    }
}

/// A running emulated board. Dropping it closes the pty (the agent sees the device vanish)
/// and removes its symlink if the symlink still points at this pty.
pub struct EmulatedPanel {
    inner: Arc<Inner>,
    /// Our own handle on the device side: while it is open, the master never reads EOF when
    /// the agent closes the device, so the board survives the agent's reconnects.
    _device_side: TTYPort,
    device: PathBuf,
    link: Option<PathBuf>,
    reader: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EmulatedPanel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedPanel")
            .field("device", &self.device)
            .field("link", &self.link)
            .field("info", &self.inner.info)
            .finish()
    }
}

impl EmulatedPanel {
    /// Creates the pty (and the symlink), starts the board and sends its power-up `HELLO`.
    /// Returns the board and the channel of what it receives.
    pub fn start(options: PanelOptions) -> Result<(EmulatedPanel, Receiver<BoardEvent>)> {
        if !(1..=MAX_SLOTS).contains(&usize::from(options.slots)) {
            return Err(Error::InvalidSetting {
                name: "panel slots",
                reason: format!("{} is not in 1..={MAX_SLOTS}", options.slots),
            });
        }
        for (name, value) in [
            ("panel model", &options.model),
            ("panel firmware", &options.firmware),
        ] {
            if !is_word(value) {
                return Err(Error::InvalidSetting {
                    name,
                    reason: format!("{value:?} must be 1 to 32 of A-Z a-z 0-9 . _ + -"),
                });
            }
        }
        let (master, device_side) =
            TTYPort::pair().map_err(|e| Error::io("create", "a pty pair", e.into()))?;
        let device = device_side
            .name()
            .map(PathBuf::from)
            .ok_or_else(|| Error::io("name", "the pty", std::io::ErrorKind::NotFound.into()))?;
        let mut reader_port = master
            .try_clone_native()
            .map_err(|e| Error::io("clone", &device, e.into()))?;
        reader_port
            .set_timeout(Duration::from_millis(50))
            .map_err(|e| Error::io("configure", &device, e.into()))?;
        let info = BoardInfo {
            model: options.model,
            slots: options.slots,
            firmware: options.firmware,
        };
        let inner = Arc::new(Inner {
            state: Mutex::new(BoardState {
                lights: vec![Light::Off; usize::from(info.slots)],
                silent: false,
            }),
            lights_changed: Condvar::new(),
            info,
            writer: Mutex::new(master),
            stop: AtomicBool::new(false),
        });
        if let Some(link) = &options.link {
            replace_symlink(&device, link)?;
        }
        let (events_tx, events_rx) = std::sync::mpsc::channel();
        let thread_inner = Arc::clone(&inner);
        let reader = std::thread::Builder::new()
            .name("panel-board".into())
            .spawn(move || read_loop(&thread_inner, reader_port, &events_tx))
            .map_err(|e| Error::io("start a thread for", &device, e))?;
        let panel = EmulatedPanel {
            inner,
            _device_side: device_side,
            device,
            link: options.link,
            reader: Some(reader),
        };
        panel.power_up()?;
        Ok((panel, events_rx))
    }

    fn power_up(&self) -> Result<()> {
        self.inner
            .hello()
            .map_err(|e| Error::io("write", &self.device, e))
    }

    /// The pty's device path (what `/dev/ttyACM0` would be).
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// The symlink, if one was asked for.
    pub fn link(&self) -> Option<&Path> {
        self.link.as_deref()
    }

    /// What the board says in `HELLO`.
    pub fn info(&self) -> &BoardInfo {
        &self.inner.info
    }

    /// Every slot's light now.
    pub fn lights(&self) -> Vec<Light> {
        lock(&self.inner.state).lights.clone()
    }

    /// Waits until `until` accepts every slot's lights, or until `timeout` has passed; woken
    /// by each line the board applies, never by polling. Returns the lights it accepted, or
    /// the lights at the deadline as the error.
    pub fn wait_lights(
        &self,
        until: impl Fn(&[Light]) -> bool,
        timeout: Duration,
    ) -> std::result::Result<Vec<Light>, Vec<Light>> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.inner.state);
        loop {
            if until(&state.lights) {
                return Ok(state.lights.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(state.lights.clone());
            }
            state = self
                .inner
                .lights_changed
                .wait_timeout(state, left)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Presses a slot's button.
    pub fn press(&self, slot: usize, action: ButtonAction) -> Result<()> {
        let slots = usize::from(self.inner.info.slots);
        let slot = u8::try_from(slot)
            .ok()
            .filter(|s| usize::from(*s) < slots)
            .ok_or(Error::SlotOutOfRange { slot, slots })?;
        self.inner
            .send(&BoardLine::Press { slot, action })
            .map_err(|e| Error::io("write", &self.device, e))
    }

    /// Resets the board: every light goes dark and it says `HELLO` again, as after a
    /// power cycle that kept the USB link up.
    pub fn reset(&self) -> Result<()> {
        lock(&self.inner.state).lights.fill(Light::Off);
        self.inner.lights_changed.notify_all();
        self.power_up()
    }

    /// Writes bytes as they are (tests use it for bad lines).
    pub fn send_raw(&self, bytes: &[u8]) -> Result<()> {
        self.inner
            .send_raw(bytes)
            .map_err(|e| Error::io("write", &self.device, e))
    }

    /// A silent board still applies lines but answers nothing (a hung firmware).
    pub fn set_silent(&self, silent: bool) {
        lock(&self.inner.state).silent = silent;
    }

    /// One row of slots, e.g. `0:off 1:working 2:done 3:off`.
    pub fn row(&self) -> String {
        row(&self.lights())
    }
}

impl Drop for EmulatedPanel {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take()
            && reader.join().is_err()
        {
            tracing::warn!("emulated panel: reader thread panicked");
        }
        if let Some(link) = &self.link
            && std::fs::read_link(link).is_ok_and(|target| target == self.device)
        {
            let _ = std::fs::remove_file(link);
        }
    }
}

/// One row of slots, e.g. `0:off 1:working 2:done 3:off`.
pub fn row(lights: &[Light]) -> String {
    lights
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{i}:{l}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Points `link` at `device`, atomically replacing whatever `link` was.
fn replace_symlink(device: &Path, link: &Path) -> Result<()> {
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "panel".into());
    let tmp = link.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(device, &tmp).map_err(|e| Error::io("symlink", &tmp, e))?;
    std::fs::rename(&tmp, link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("rename a symlink to", link, e)
    })
}

fn read_loop(inner: &Inner, mut port: TTYPort, events: &Sender<BoardEvent>) {
    let mut reader = LineReader::new();
    let mut buf = [0u8; 256];
    while !inner.stop.load(Ordering::Relaxed) {
        match port.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => {
                for line in reader.push(&buf[..n]) {
                    let event = match line {
                        Ok(line) => inner.apply(&line),
                        Err(e) => {
                            let answer = BoardLine::error("syntax", &e.to_string());
                            if !lock(&inner.state).silent {
                                let _ = inner.send(&answer);
                            }
                            BoardEvent::Bad {
                                line: String::new(),
                                error: e.to_string(),
                            }
                        }
                    };
                    // Nobody listening is fine: the CLI or test may only look at the lights.
                    let _ = events.send(event);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                tracing::warn!(error = %e, "emulated panel: read failed; board stops");
                return;
            }
        }
    }
}

/// `hsm-sim panel`: emulate the desk's indicator panel on a pty.
#[derive(Debug, Args)]
pub struct PanelArgs {
    /// Number of slots (1..=64).
    #[arg(long, default_value_t = 4)]
    pub slots: u8,
    /// Also symlink the pty here (a stable path for the agent's `panel.device`).
    #[arg(long)]
    pub link: Option<PathBuf>,
    /// Model name the board reports.
    #[arg(long, default_value = "SIM-PANEL")]
    pub model: String,
    /// Firmware version the board reports [default: hsm-sim's version].
    #[arg(long)]
    pub firmware: Option<String>,
}

/// What the CLI's main loop waits for.
enum Input {
    Event(BoardEvent),
    Line(String),
    Eof,
}

/// The commands `hsm-sim panel` reads on stdin.
const HELP: &str =
    "commands: retry N | ack N | reset | raw TEXT | garbage | silent on|off | lights | quit";

/// Runs `hsm-sim panel` until `quit` (or until killed): prints the device path, then one
/// line per thing the board receives and the row of lights after every change; reads
/// commands ([`HELP`]) on stdin. Stdin at its end leaves the board running.
pub fn run(args: PanelArgs) -> Result<String> {
    let options = PanelOptions {
        slots: args.slots,
        model: args.model,
        firmware: args
            .firmware
            .unwrap_or_else(|| PanelOptions::default().firmware),
        link: args.link,
    };
    let (panel, events) = EmulatedPanel::start(options)?;
    let mut out = std::io::stdout().lock();
    let say = |out: &mut std::io::StdoutLock<'_>, text: &str| {
        // stdout gone (closed pipe) is no reason to stop the board.
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    };
    say(
        &mut out,
        &format!(
            "panel {} with {} slots, protocol {PROTOCOL_VERSION}, device {}",
            panel.info().model,
            panel.info().slots,
            panel.device().display()
        ),
    );
    if let Some(link) = panel.link() {
        say(
            &mut out,
            &format!("link {} -> {}", link.display(), panel.device().display()),
        );
    }
    say(&mut out, HELP);
    say(&mut out, &format!("lights {}", panel.row()));

    let (tx, rx) = std::sync::mpsc::channel();
    let events_tx = tx.clone();
    std::thread::spawn(move || {
        for event in events {
            if events_tx.send(Input::Event(event)).is_err() {
                return;
            }
        }
    });
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(Input::Line(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(Input::Eof);
    });

    for input in rx {
        match input {
            Input::Event(BoardEvent::Host(line)) => match line {
                HostLine::Light { .. } | HostLine::State(_) => {
                    say(&mut out, &format!("host {line}"));
                    say(&mut out, &format!("lights {}", panel.row()));
                }
                HostLine::Beep { slot, pattern } => {
                    say(
                        &mut out,
                        &format!("beep slot {slot} {}", beep_text(pattern)),
                    );
                }
                HostLine::Hello { .. } | HostLine::Ping(_) => {
                    say(&mut out, &format!("host {line}"));
                }
            },
            Input::Event(BoardEvent::Bad { line, error }) => {
                say(&mut out, &format!("bad line {line:?}: {error}"));
            }
            Input::Line(line) => match command(&panel, &line) {
                Ok(Some(text)) => say(&mut out, &text),
                Ok(None) => break,
                Err(e) => say(&mut out, &format!("error: {e}")),
            },
            Input::Eof => say(
                &mut out,
                "stdin closed; the board keeps running until killed",
            ),
        }
    }
    Ok(String::new())
}

fn beep_text(pattern: BeepPattern) -> &'static str {
    match pattern {
        BeepPattern::Short => "short (beep)",
        BeepPattern::Double => "double (beep beep)",
        BeepPattern::Long => "long (beeeep)",
    }
}

/// Runs one stdin command; `Ok(None)` means quit.
fn command(panel: &EmulatedPanel, line: &str) -> Result<Option<String>> {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or("");
    let slot = |arg: Option<&str>| -> Result<usize> {
        arg.and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::InvalidSetting {
                name: "slot",
                reason: format!("{line:?}: give a slot number, e.g. `retry 2`"),
            })
    };
    let text = match verb {
        "" => return Ok(Some(HELP.into())),
        "retry" | "ack" => {
            let action = if verb == "retry" {
                ButtonAction::Retry
            } else {
                ButtonAction::Ack
            };
            let slot = slot(words.next())?;
            panel.press(slot, action)?;
            format!("press slot {slot} {action}")
        }
        "reset" => {
            panel.reset()?;
            format!("board reset; lights {}", panel.row())
        }
        "raw" => {
            let text = line
                .trim_start()
                .strip_prefix("raw")
                .unwrap_or("")
                .trim_start();
            panel.send_raw(format!("{text}\n").as_bytes())?;
            format!("sent {text:?}")
        }
        "garbage" => {
            panel.send_raw(b"\x00\xff\x1b[2J PRESS 1 ack \xc3\xa9\n")?;
            "sent a garbage line".into()
        }
        "silent" => {
            let on = match words.next() {
                Some("on") => true,
                Some("off") => false,
                _ => {
                    return Err(Error::InvalidSetting {
                        name: "silent",
                        reason: "give `silent on` or `silent off`".into(),
                    });
                }
            };
            panel.set_silent(on);
            format!("silent {}", if on { "on" } else { "off" })
        }
        "lights" => format!("lights {}", panel.row()),
        "quit" | "exit" => return Ok(None),
        _ => {
            return Err(Error::InvalidSetting {
                name: "command",
                reason: format!("{verb:?} is unknown; {HELP}"),
            });
        }
    };
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Generous: the reader thread of a loaded machine, not a timer.
    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn wait_lights_wakes_on_a_line_and_reports_the_lights_at_its_deadline() {
        let (panel, _events) = EmulatedPanel::start(PanelOptions {
            slots: 2,
            ..Default::default()
        })
        .unwrap();
        // Nothing lit yet: the deadline passes and the lights come back as the error.
        let done = |l: &[Light]| l.get(1) == Some(&Light::Done);
        assert_eq!(
            panel.wait_lights(done, Duration::from_millis(20)),
            Err(vec![Light::Off, Light::Off])
        );
        // The agent's side of the pty writes a line; the waiter wakes on it.
        let mut device = std::fs::OpenOptions::new()
            .write(true)
            .open(panel.device())
            .unwrap();
        let line = HostLine::Light {
            slot: 1,
            light: Light::Done,
        };
        device.write_all(line.to_line().as_bytes()).unwrap();
        assert_eq!(
            panel.wait_lights(done, WAIT),
            Ok(vec![Light::Off, Light::Done])
        );
        assert_eq!(panel.row(), "0:off 1:done");
    }
}
