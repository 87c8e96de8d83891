//! Blocking stays off the runtime: one dedicated thread per token, reached by a channel.
//!
//! [`TokenWorker::spawn`] moves a [`Device`] onto its own OS thread; async code runs closures
//! on it with [`TokenWorker::call`] and awaits the result through a oneshot reply. Calls run
//! one at a time, in order. A device (a PKCS#11 session) is `Send` but not `Sync` and its
//! calls block, so no device is ever touched from a runtime thread or held across an
//! `.await`. The daemon's workers hold a `Box<dyn Device>` (the default type): they never
//! know which interface is behind it; a caller that holds a concrete [`crate::token::Token`]
//! gets a worker whose closures see it as such.
//!
//! - A closure that panics yields [`TokenError::WorkerPanicked`]; the worker keeps serving.
//! - Dropping the future of `call` does not cancel the closure: a token write that has
//!   started finishes (shutdown never cuts a token write in half).
//! - Dropping the [`TokenWorker`] ends the thread after queued calls; [`TokenWorker::close`]
//!   also waits for that.
//! - The worker records when the PKCS#11 call now running on its thread started
//!   ([`TokenWorker::running_for`], kept by [`crate::token::meter`]), so the daemon can tell
//!   a token whose module has stopped answering (a wedged call) from its periodic checks,
//!   with no thread or timer per call. A long step is many calls, each timed on its own. The
//!   worker does not interrupt a wedged call: nothing can, short of pulling the token.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::device::Device;
use crate::token::TokenError;
use crate::token::meter::{CallClock, announce_calls_to};

/// A call to run on the token's thread; what it returns delivers the result to the caller,
/// run only once the worker has noted the token's serial, so that a caller who awaited the
/// call never reads a serial older than the call's effect.
type Job<D> = Box<dyn FnOnce(&mut D) -> Deliver + Send>;
type Deliver = Box<dyn FnOnce() + Send>;

/// The async handle of a token's worker thread, which owns the token's `D`.
#[derive(Debug)]
pub struct TokenWorker<D = Box<dyn Device>> {
    jobs: mpsc::Sender<Job<D>>,
    serial: Arc<Mutex<Option<String>>>,
    /// When the PKCS#11 call now running on the thread started; `None` between calls.
    busy_since: CallClock,
    exited: oneshot::Receiver<()>,
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic without a message".into()
    }
}

impl<D: Device + 'static> TokenWorker<D> {
    /// Starts the worker thread that owns `token`.
    pub fn spawn(token: D) -> Result<TokenWorker<D>, TokenError> {
        let serial = Arc::new(Mutex::new(token.serial().map(str::to_string)));
        let (jobs, queue) = mpsc::channel::<Job<D>>();
        let (exit_tx, exited) = oneshot::channel::<()>();
        let name = format!("token-{}", token.serial().unwrap_or("blank"));
        let shared_serial = Arc::clone(&serial);
        let busy_since = CallClock::default();
        let announced = Arc::clone(&busy_since);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                announce_calls_to(announced);
                let mut token = token;
                // Ends when every sender is gone, i.e. the handle was dropped.
                while let Ok(job) = queue.recv() {
                    let deliver = job(&mut token);
                    if let Ok(mut s) = shared_serial.lock() {
                        *s = token.serial().map(str::to_string);
                    }
                    deliver();
                }
                drop(token);
                drop(exit_tx);
            })
            .map_err(|_| TokenError::WorkerGone {
                serial: serial.lock().ok().and_then(|s| s.clone()),
            })?;
        Ok(TokenWorker {
            jobs,
            serial,
            busy_since,
            exited,
        })
    }

    /// When the PKCS#11 call now running on the token's thread started; `None` between
    /// calls. Each call has its own start, so a later call is never taken for an earlier one.
    pub fn call_started(&self) -> Option<Instant> {
        self.busy_since.lock().ok().and_then(|since| *since)
    }

    /// How long the PKCS#11 call now running on the token's thread has been running; `None`
    /// between calls. A call that never returns keeps growing this.
    pub fn running_for(&self) -> Option<Duration> {
        self.call_started().map(|since| since.elapsed())
    }

    /// The token serial as of the last finished call.
    pub fn serial(&self) -> Option<String> {
        self.serial.lock().ok().and_then(|s| s.clone())
    }

    /// Runs `f` on the token's thread and returns its result.
    pub async fn call<F, T>(&self, f: F) -> Result<T, TokenError>
    where
        F: FnOnce(&mut D) -> Result<T, TokenError> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job<D> = Box::new(move |token: &mut D| {
            let serial = token.serial().map(str::to_string);
            let result = catch_unwind(AssertUnwindSafe(|| f(token))).unwrap_or_else(|payload| {
                let message = panic_message(payload.as_ref());
                tracing::error!(serial = ?serial, %message, "a token call panicked");
                Err(TokenError::WorkerPanicked { serial, message })
            });
            // The caller may have stopped waiting; the work is done either way.
            Box::new(move || {
                let _ = reply.send(result);
            }) as Deliver
        });
        let gone = || TokenError::WorkerGone {
            serial: self.serial(),
        };
        self.jobs.send(job).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Ends the worker: lets queued calls finish, drops the token (closing its session), and
    /// waits until the thread is gone.
    pub async fn close(self) {
        let TokenWorker { jobs, exited, .. } = self;
        drop(jobs);
        let _ = exited.await;
    }
}
