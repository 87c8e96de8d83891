//! Ctrl-C (SIGINT) and SIGTERM for `ukey-demo`.
//!
//! [`Interrupt::install`] takes both signals over for the rest of the process (tokio's
//! handlers replace the default actions) and listens on a thread of its own. The first
//! signal only cancels the interrupt: each stage of the demo watches it — the desk stops
//! dispatching, the agent is stopped as `ukey-agent run` stops on SIGTERM (with a bound),
//! the summary says how far the run got, the temporary folder is removed, and the process
//! exits with `128 + the signal number` ([`Signal::exit_status`]). A second signal quits at
//! once: the temporary folder is removed as far as it can be and the process exits without
//! waiting for the agent.
//!
//! What it does not do: stop anything itself on the first signal, or cover the few
//! milliseconds of start-up before the runtime exists (a signal then ends the process the
//! default way).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::error::DemoError;

/// A signal that stops the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl Signal {
    /// `SIGINT`, `SIGTERM`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }

    /// The note shown (with progress) while the demo stops after this signal.
    pub(crate) fn stopping(self) -> String {
        let again = match self {
            Signal::Interrupt => "press Ctrl-C again",
            Signal::Terminate => "a second signal",
        };
        format!(
            "{}: stopping the agent (jobs stop at a safe step); {again} to quit at once",
            self.name()
        )
    }

    /// `128 + the signal number`, as a shell reports a process the signal ended.
    pub(crate) fn exit_status(self) -> u8 {
        match self {
            Signal::Interrupt => 128 + 2,
            Signal::Terminate => 128 + 15,
        }
    }
}

/// The demo's view of the signals: cancelled on the first one.
#[derive(Debug, Clone)]
pub(crate) struct Interrupt {
    token: CancellationToken,
    /// The first signal; set before `token` is cancelled.
    first: Arc<OnceLock<Signal>>,
}

impl Interrupt {
    /// Installs the handlers and starts the listener, on a thread of its own (so that it
    /// outlives the demo's runtime, which stops before the verification pass); returns once
    /// both handlers are in place. `scratch` is the temporary folder a second signal removes
    /// before quitting (`None` with `--dir`).
    pub(crate) fn install(scratch: Option<PathBuf>) -> Result<Interrupt, DemoError> {
        let interrupt = Interrupt {
            token: CancellationToken::new(),
            first: Arc::default(),
        };
        let listener = interrupt.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        std::thread::Builder::new()
            .name("demo-signals".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("signal listener: {e}")));
                        return;
                    }
                };
                runtime.block_on(listener.listen(ready_tx, scratch));
            })
            .map_err(|e| DemoError::Runtime(format!("signal listener thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(interrupt),
            Ok(Err(e)) => Err(DemoError::Runtime(e)),
            Err(_) => Err(DemoError::Runtime(
                "the signal listener ended before it was ready".to_owned(),
            )),
        }
    }

    /// The listener's loop: the first signal cancels, the second quits.
    async fn listen(
        self,
        ready: std::sync::mpsc::Sender<Result<(), String>>,
        scratch: Option<PathBuf>,
    ) {
        let handlers = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        );
        let (mut int, mut term) = match handlers {
            (Ok(int), Ok(term)) => (int, term),
            (Err(e), _) | (_, Err(e)) => {
                let _ = ready.send(Err(format!("signal handler: {e}")));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        loop {
            let received = tokio::select! {
                Some(()) = int.recv() => Signal::Interrupt,
                Some(()) = term.recv() => Signal::Terminate,
                else => return,
            };
            if self.first.set(received).is_ok() {
                self.token.cancel();
            } else {
                quit_at_once(received, scratch.as_ref());
            }
        }
    }

    /// The first signal, once one came.
    pub(crate) fn signal(&self) -> Option<Signal> {
        self.first.get().copied()
    }

    /// Resolves on the first signal.
    pub(crate) async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// A token cancelled on the first signal.
    pub(crate) fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

/// The second signal: no more waiting for anyone.
fn quit_at_once(received: Signal, scratch: Option<&PathBuf>) -> ! {
    let files = match scratch {
        Some(dir) => match std::fs::remove_dir_all(dir) {
            Ok(()) => "temporary files removed".to_owned(),
            Err(e) => format!("temporary files left in {}: {e}", dir.display()),
        },
        None => "the demo's folder is left as it is".to_owned(),
    };
    eprintln!(
        "ukey-demo: {} again: quitting at once, without waiting for the agent; {files}",
        received.name()
    );
    std::process::exit(i32::from(received.exit_status()));
}
