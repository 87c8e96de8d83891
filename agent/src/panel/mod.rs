//! The desk's indicator panel: one light and a buzzer per slot, one button per slot, on a
//! controller board behind a serial line (USB CDC-ACM). The protocol is `docs/PANEL.md`.
//!
//! What it does:
//! - [`Panel::start`] runs the driver on a dedicated thread (serial IO blocks; it stays off
//!   the async runtime) and returns a cheap [`PanelHandle`] plus the channel of
//!   [`ButtonPress`]es.
//! - The handle keeps the *desired* state: [`PanelHandle::set`] records a slot's light and
//!   sends it when it changed; after every (re)connect and every `HELLO` from the board the
//!   whole state is sent again (`STATE`), so the board always ends up showing what the desk
//!   wants, whatever was lost while it was away. [`PanelHandle::beep`] is an event: a beep
//!   while the board is away is dropped.
//! - The device is opened by path; a panel that is absent at start or goes away is reopened
//!   with exponential backoff (100 ms doubling to 5 s by default), and a board that stays
//!   silent for [`PanelTimings::dead_after`] is treated as gone. Bad lines from the board are
//!   logged, counted and ignored.
//! - No panel configured: [`Panel::start`] returns a no-op handle (lights are still recorded,
//!   nothing is opened; the button channel stays open and silent).
//! - On shutdown (or when the last handle is dropped) the driver turns every light off (the lights no longer mean anything) and
//!   ends; [`PanelHandle::stopped`] resolves.
//!
//! What it does not do: decide which light a slot shows (the desk does, from its slot table)
//! or what a button press means for a job (the daemon does). Slot numbers are rack positions
//! from 0, the inventory's `slot`, never PKCS#11 slot ids.

mod driver;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::PanelConfig;
pub use ukey_protocol::panel::{BeepPattern, BoardInfo, ButtonAction, Light, MAX_SLOTS};

/// How many button presses wait for the daemon before new ones are dropped (and logged).
pub const BUTTON_CHANNEL: usize = 64;

/// A press of a slot's button.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ButtonPress {
    /// The slot (rack position, from 0).
    pub slot: u8,
    /// What the press asks for.
    pub action: ButtonAction,
}

/// Errors of the panel's API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PanelError {
    /// A slot beyond what any panel can have.
    #[error("slot {slot} is out of range: a panel has at most {MAX_SLOTS} slots (0..={})", MAX_SLOTS - 1)]
    SlotOutOfRange {
        /// The slot asked for.
        slot: usize,
    },
    /// The driver thread could not be started.
    #[error("cannot start the panel driver thread: {0}")]
    Thread(std::io::Error),
}

/// The panel as the driver last saw it (for `ukey-agent status` and logs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PanelStatus {
    /// The configured device; `None` when the desk has no panel.
    pub device: Option<PathBuf>,
    /// The device is open and the board has said `HELLO`.
    pub connected: bool,
    /// What the board said in its last `HELLO` (kept while disconnected).
    pub board: Option<BoardInfo>,
    /// The last problem: open failure, lost connection, bad line, board error.
    pub last_error: Option<String>,
    /// Connections that reached `HELLO` since start.
    pub connects: u64,
    /// Lines from the board that were ignored as malformed.
    pub bad_lines: u64,
    /// The driver has ended (shutdown).
    pub stopped: bool,
}

/// Timings of the driver; the defaults suit a real board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PanelTimings {
    /// First delay before reopening the device.
    pub backoff_min: Duration,
    /// Longest delay before reopening the device.
    pub backoff_max: Duration,
    /// How often the driver pings the board (or repeats `HELLO` until it answers).
    pub keepalive: Duration,
    /// A board silent this long is treated as gone: the device is closed and reopened.
    pub dead_after: Duration,
}

impl Default for PanelTimings {
    fn default() -> Self {
        PanelTimings {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            keepalive: Duration::from_secs(2),
            dead_after: Duration::from_secs(7),
        }
    }
}

/// What the handle asks of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// A slot's light changed (the value is in the desired state).
    Light(u8),
    /// Sound the buzzer.
    Beep(u8, BeepPattern),
}

/// State shared by the handles and the driver.
struct Shared {
    /// What every slot should show.
    lights: Mutex<[Light; MAX_SLOTS]>,
    status: watch::Sender<PanelStatus>,
    /// Cancelled when the driver has ended (at once for a no-op panel's shutdown-less life).
    done: CancellationToken,
    /// Keeps the button channel open for a no-op panel, so `recv` waits instead of ending.
    _idle_buttons: Option<mpsc::Sender<ButtonPress>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single array update, so a poisoned lock holds valid data.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts panel drivers; see the module docs.
#[derive(Debug)]
pub struct Panel;

impl Panel {
    /// Starts the driver for `config` (or a no-op handle for `None`) with default timings.
    ///
    /// The driver runs until `shutdown` is cancelled or every handle is dropped. The receiver yields button presses;
    /// it ends (`None`) only after the driver has stopped, never for a no-op panel while a
    /// handle lives. Needs no tokio runtime.
    pub fn start(
        config: Option<&PanelConfig>,
        shutdown: CancellationToken,
    ) -> Result<(PanelHandle, mpsc::Receiver<ButtonPress>), PanelError> {
        Panel::start_with(config, PanelTimings::default(), shutdown)
    }

    /// [`Panel::start`] with explicit timings (tests use short ones).
    pub fn start_with(
        config: Option<&PanelConfig>,
        timings: PanelTimings,
        shutdown: CancellationToken,
    ) -> Result<(PanelHandle, mpsc::Receiver<ButtonPress>), PanelError> {
        let (buttons_tx, buttons_rx) = mpsc::channel(BUTTON_CHANNEL);
        let Some(config) = config else {
            let (status, _) = watch::channel(PanelStatus::default());
            let shared = Arc::new(Shared {
                lights: Mutex::new([Light::Off; MAX_SLOTS]),
                status,
                done: CancellationToken::new(),
                _idle_buttons: Some(buttons_tx),
            });
            return Ok((
                PanelHandle {
                    shared,
                    commands: None,
                },
                buttons_rx,
            ));
        };
        let (status, _) = watch::channel(PanelStatus {
            device: Some(config.device.clone()),
            ..PanelStatus::default()
        });
        let shared = Arc::new(Shared {
            lights: Mutex::new([Light::Off; MAX_SLOTS]),
            status,
            done: CancellationToken::new(),
            _idle_buttons: None,
        });
        let (commands_tx, commands_rx) = std::sync::mpsc::channel();
        let driver = driver::Driver::new(
            config.clone(),
            timings,
            Arc::clone(&shared),
            commands_rx,
            buttons_tx,
            shutdown,
        );
        let done = shared.done.clone();
        std::thread::Builder::new()
            .name("panel".into())
            .spawn(move || {
                driver.run();
                done.cancel();
            })
            .map_err(PanelError::Thread)?;
        Ok((
            PanelHandle {
                shared,
                commands: Some(commands_tx),
            },
            buttons_rx,
        ))
    }
}

/// A cheap, cloneable handle to the panel (or to nothing, when the desk has none).
#[derive(Clone)]
pub struct PanelHandle {
    shared: Arc<Shared>,
    /// `None` for a no-op panel.
    commands: Option<std::sync::mpsc::Sender<Command>>,
}

impl std::fmt::Debug for PanelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PanelHandle")
            .field("status", &*self.shared.status.borrow())
            .finish()
    }
}

fn check_slot(slot: usize) -> Result<u8, PanelError> {
    u8::try_from(slot)
        .ok()
        .filter(|s| usize::from(*s) < MAX_SLOTS)
        .ok_or(PanelError::SlotOutOfRange { slot })
}

impl PanelHandle {
    /// Sets a slot's light. It is sent at once if it changed and the board is connected,
    /// and again after every reconnect. A slot the board does not have is kept but not shown.
    pub fn set(&self, slot: usize, light: Light) -> Result<(), PanelError> {
        let slot = check_slot(slot)?;
        let changed = {
            let mut lights = lock(&self.shared.lights);
            let old = std::mem::replace(&mut lights[usize::from(slot)], light);
            old != light
        };
        if changed {
            self.send(Command::Light(slot));
        }
        Ok(())
    }

    /// Sounds a slot's buzzer once, if the board is connected now (a beep is not state).
    pub fn beep(&self, slot: usize, pattern: BeepPattern) -> Result<(), PanelError> {
        let slot = check_slot(slot)?;
        self.send(Command::Beep(slot, pattern));
        Ok(())
    }

    /// The light the desk wants a slot to show.
    pub fn light(&self, slot: usize) -> Option<Light> {
        lock(&self.shared.lights).get(slot).copied()
    }

    /// The panel's status now.
    pub fn status(&self) -> PanelStatus {
        self.shared.status.borrow().clone()
    }

    /// A receiver that sees every status change (to wait for "connected" without polling).
    pub fn watch_status(&self) -> watch::Receiver<PanelStatus> {
        self.shared.status.subscribe()
    }

    /// Resolves when the driver has ended after shutdown (lights turned off if it could).
    /// A no-op panel has no driver: this resolves at once.
    pub async fn stopped(&self) {
        if self.commands.is_some() {
            self.shared.done.cancelled().await;
        }
    }

    fn send(&self, command: Command) {
        if let Some(commands) = &self.commands {
            // A send fails only when the driver has stopped; nothing is shown any more then.
            let _ = commands.send(command);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_example_panel_section_parses_with_its_default_baud() {
        let config: PanelConfig =
            toml::from_str("device = \"/dev/serial/by-id/usb-Vendor_UKP-8_0001-if00\"\n").unwrap();
        assert_eq!(config.baud, 115_200);
        assert!(toml::from_str::<PanelConfig>("device = \"/dev/x\"\nbuad = 9600\n").is_err());
    }

    #[test]
    fn slots_are_checked_and_lights_remembered() {
        let (handle, _buttons) = Panel::start(None, CancellationToken::new()).unwrap();
        assert!(matches!(
            handle.beep(MAX_SLOTS, BeepPattern::Short),
            Err(PanelError::SlotOutOfRange { slot: MAX_SLOTS })
        ));
        assert_eq!(handle.light(5), Some(Light::Off));
        handle.set(5, Light::Failed).unwrap();
        assert_eq!(handle.light(5), Some(Light::Failed));
        assert_eq!(handle.light(MAX_SLOTS), None);
    }
}
