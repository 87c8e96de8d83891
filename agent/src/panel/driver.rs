//! The panel driver: one thread that owns the serial port, reconnects with backoff, writes
//! the desired lights and reads the board's lines.
//!
//! The thread blocks on short serial reads (a few tens of milliseconds) and handles the
//! handle's commands between them, so a light reaches the board within one read timeout.
//! It never touches the async runtime; the button channel is a tokio channel fed with
//! `try_send`, which needs none.

use std::cell::Cell;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use serialport::{SerialPort, TTYPort};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ButtonPress, Command, Light, MAX_SLOTS, PanelTimings, Shared, lock};
use crate::config::PanelConfig;
use ukey_protocol::panel::{BoardInfo, BoardLine, HostLine, LineReader, PROTOCOL_VERSION};

/// How long one serial read waits: the latency of a light change while the board is quiet.
const READ_TIMEOUT: Duration = Duration::from_millis(25);

/// How long a write may take before the board counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// How many bad lines per connection are logged one by one (the rest are only counted).
const BAD_LINES_LOGGED: u64 = 20;

/// Why a connection ended.
enum End {
    /// Shutdown was requested.
    Shutdown,
    /// The device failed or the board went silent.
    Lost {
        reason: String,
        /// The board had said `HELLO` on this connection (the backoff starts over).
        identified: bool,
    },
}

/// Exponential backoff: `min`, doubling, capped at `max`.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }
    fn next(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
    fn reset(&mut self) {
        self.next = self.min;
    }
}

pub(super) struct Driver {
    config: PanelConfig,
    timings: PanelTimings,
    shared: Arc<Shared>,
    commands: Receiver<Command>,
    buttons: mpsc::Sender<ButtonPress>,
    shutdown: CancellationToken,
    /// Every handle has been dropped: nobody can set a light any more, so the driver ends.
    orphaned: Cell<bool>,
}

/// One open connection.
struct Connection {
    port: TTYPort,
    reader: LineReader,
    board: Option<BoardInfo>,
    last_heard: Instant,
    next_keepalive: Instant,
    ping: u16,
    bad_lines: u64,
}

impl Connection {
    fn new(port: TTYPort, keepalive: Duration) -> Connection {
        let now = Instant::now();
        Connection {
            port,
            reader: LineReader::new(),
            board: None,
            last_heard: now,
            next_keepalive: now + keepalive,
            ping: 0,
            bad_lines: 0,
        }
    }
}

impl Driver {
    pub(super) fn new(
        config: PanelConfig,
        timings: PanelTimings,
        shared: Arc<Shared>,
        commands: Receiver<Command>,
        buttons: mpsc::Sender<ButtonPress>,
        shutdown: CancellationToken,
    ) -> Driver {
        Driver {
            config,
            timings,
            shared,
            commands,
            buttons,
            shutdown,
            orphaned: Cell::new(false),
        }
    }

    fn stopping(&self) -> bool {
        self.shutdown.is_cancelled() || self.orphaned.get()
    }

    pub(super) fn run(self) {
        let device = self.config.device.display().to_string();
        let mut backoff = Backoff::new(self.timings.backoff_min, self.timings.backoff_max);
        let mut last_logged: Option<String> = None;
        while !self.stopping() {
            let reason = match self.open() {
                Ok(port) => {
                    tracing::debug!(device = %device, "panel device opened");
                    match self.serve(port) {
                        End::Shutdown => break,
                        End::Lost { reason, identified } => {
                            if identified {
                                backoff.reset();
                                last_logged = None;
                            }
                            reason
                        }
                    }
                }
                Err(e) => format!("cannot open {device}: {e}"),
            };
            // The same failure every few seconds for hours is one log line, not thousands.
            if last_logged.as_deref() != Some(reason.as_str()) {
                tracing::warn!(device = %device, reason = %reason, "panel not connected; retrying with backoff");
                last_logged = Some(reason.clone());
            }
            self.shared.status.send_modify(|s| {
                s.connected = false;
                s.last_error = Some(reason);
            });
            self.wait(backoff.next());
        }
        self.shared.status.send_modify(|s| {
            s.connected = false;
            s.stopped = true;
        });
        tracing::debug!(device = %device, "panel driver stopped");
    }

    fn open(&self) -> Result<TTYPort, serialport::Error> {
        let path = self.config.device.to_string_lossy();
        // Exclusive, so that nothing else (a modem manager probing ttyACM devices, a second
        // agent) talks to the board at the same time.
        let port = serialport::new(path, self.config.baud)
            .timeout(READ_TIMEOUT)
            .open_native()?;
        // Whatever the board said before we listened is stale (and may be half a line).
        let _ = port.clear(serialport::ClearBuffer::Input);
        Ok(port)
    }

    /// Waits out a backoff delay, dropping commands (the desired state is kept elsewhere),
    /// and returns early on shutdown.
    fn wait(&self, delay: Duration) {
        let until = Instant::now() + delay;
        loop {
            let now = Instant::now();
            if now >= until || self.stopping() {
                return;
            }
            // Shutdown is a token, not a message, so the wait is cut into short slices.
            match self
                .commands
                .recv_timeout((until - now).min(Duration::from_millis(50)))
            {
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.orphaned.set(true),
            }
        }
    }

    /// Serves one open connection until it ends; dropping the port closes it.
    ///
    /// serialport clears the tty's exclusive flag when it closes the port. That matters:
    /// the flag belongs to the tty, not to our descriptor, and someone else may hold the
    /// tty open (the emulator does), in which case a stale flag would make our reopen fail.
    fn serve(&self, port: TTYPort) -> End {
        let mut conn = Connection::new(port, self.timings.keepalive);
        self.serve_connection(&mut conn)
    }

    fn serve_connection(&self, conn: &mut Connection) -> End {
        let lost = |conn: &Connection, reason: String| End::Lost {
            reason,
            identified: conn.board.is_some(),
        };
        if let Err(e) = write_line(
            conn,
            &HostLine::Hello {
                version: PROTOCOL_VERSION,
            },
        ) {
            return lost(conn, format!("write failed: {e}"));
        }
        let mut buf = [0u8; 256];
        loop {
            if self.stopping() {
                if let Some(slots) = conn.board.as_ref().map(|b| usize::from(b.slots)) {
                    let off = HostLine::State(vec![Light::Off; slots]);
                    if let Err(e) = write_line(conn, &off) {
                        tracing::debug!(error = %e, "panel: could not turn the lights off at shutdown");
                    }
                }
                return End::Shutdown;
            }
            if let Err(e) = self.handle_commands(conn) {
                return lost(conn, format!("write failed: {e}"));
            }
            match conn.port.read(&mut buf) {
                Ok(0) => return lost(conn, "the device closed".into()),
                Ok(n) => {
                    for line in conn.reader.push(&buf[..n]) {
                        let parsed = line.and_then(|l| BoardLine::parse(&l));
                        if let Err(e) = self.handle_line(conn, parsed) {
                            return lost(conn, format!("write failed: {e}"));
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return lost(conn, format!("read failed: {e}")),
            }
            let now = Instant::now();
            if now.duration_since(conn.last_heard) >= self.timings.dead_after {
                return lost(
                    conn,
                    format!(
                        "no answer from the board for {} ms",
                        self.timings.dead_after.as_millis()
                    ),
                );
            }
            if now >= conn.next_keepalive {
                conn.next_keepalive = now + self.timings.keepalive;
                let line = if conn.board.is_some() {
                    conn.ping = conn.ping.wrapping_add(1);
                    HostLine::Ping(conn.ping)
                } else {
                    HostLine::Hello {
                        version: PROTOCOL_VERSION,
                    }
                };
                if let Err(e) = write_line(conn, &line) {
                    return lost(conn, format!("write failed: {e}"));
                }
            }
        }
    }

    /// Writes what the handles asked for since the last turn.
    fn handle_commands(&self, conn: &mut Connection) -> std::io::Result<()> {
        loop {
            let command = match self.commands.try_recv() {
                Ok(c) => c,
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => {
                    self.orphaned.set(true);
                    return Ok(());
                }
            };
            // Before HELLO the slot count is unknown; the full state follows the HELLO.
            let Some(board) = &conn.board else { continue };
            let slots = board.slots;
            let line = match command {
                Command::Light(slot) if slot < slots => HostLine::Light {
                    slot,
                    light: lock(&self.shared.lights)[usize::from(slot)],
                },
                Command::Beep(slot, pattern) if slot < slots => HostLine::Beep { slot, pattern },
                Command::Light(slot) | Command::Beep(slot, _) => {
                    tracing::debug!(slot, slots, "panel: slot beyond the board, not shown");
                    continue;
                }
            };
            write_line(conn, &line)?;
        }
    }

    fn handle_line(
        &self,
        conn: &mut Connection,
        parsed: Result<BoardLine, ukey_protocol::panel::LineError>,
    ) -> std::io::Result<()> {
        let line = match parsed {
            Ok(line) => line,
            Err(e) => {
                conn.bad_lines += 1;
                if conn.bad_lines <= BAD_LINES_LOGGED {
                    tracing::warn!(error = %e, "panel: bad line from the board ignored");
                }
                self.shared.status.send_modify(|s| {
                    s.bad_lines += 1;
                    s.last_error = Some(format!("bad line from the board: {e}"));
                });
                return Ok(());
            }
        };
        conn.last_heard = Instant::now();
        match line {
            BoardLine::Hello(info) => {
                let first = conn.board.is_none();
                tracing::info!(model = %info.model, slots = info.slots, firmware = %info.firmware, "panel connected");
                if usize::from(info.slots) > MAX_SLOTS {
                    // Unreachable after parsing; kept so the slice below cannot panic.
                    return Ok(());
                }
                let lights = lock(&self.shared.lights)[..usize::from(info.slots)].to_vec();
                self.shared.status.send_modify(|s| {
                    s.connected = true;
                    s.board = Some(info.clone());
                    if first {
                        s.connects += 1;
                    }
                });
                conn.board = Some(info);
                // Lights set before this point were skipped or sent to a board that has
                // just reset: the full state puts everything right.
                write_line(conn, &HostLine::State(lights))?;
            }
            BoardLine::Press { slot, action } => match &conn.board {
                Some(board) if slot < board.slots => {
                    let press = ButtonPress { slot, action };
                    tracing::info!(slot, action = %action, "panel button pressed");
                    if self.buttons.try_send(press).is_err() {
                        tracing::warn!(slot, action = %action, "panel: button press dropped, nobody is reading them");
                    }
                }
                _ => {
                    tracing::warn!(slot, action = %action, "panel: press on a slot the board does not have (or before HELLO), ignored");
                }
            },
            BoardLine::Pong(_) => {}
            BoardLine::Error { code, detail } => {
                tracing::warn!(code = %code, detail = %detail, "panel board reports an error");
                self.shared.status.send_modify(|s| {
                    s.last_error = Some(format!("board error {code}: {detail}"));
                });
            }
        }
        Ok(())
    }
}

fn write_line(conn: &mut Connection, line: &HostLine) -> std::io::Result<()> {
    let text = line.to_line();
    let deadline = Instant::now() + WRITE_TIMEOUT;
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        match conn.port.write(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                ) && Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
    }
    // No flush: on a tty it is tcdrain, which has no timeout and would hang the driver on a
    // board that stopped reading. write(2) has no buffer of ours to flush anyway.
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_starts_over() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), Duration::from_secs(5));
        let delays: Vec<_> = (0..8).map(|_| b.next()).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000]
                .map(ms)
                .to_vec()
        );
        b.reset();
        assert_eq!(b.next(), ms(100));
    }
}
