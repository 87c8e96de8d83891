//! A seat's life as two small state machines, pure (no IO, no clock read): the sessions this
//! agent holds on the token (observations, its worker) and whether the slot scan can read it
//! (with the back-off of failed readings). Each transition consumes the old state.
//!
//! The two sides are apart because they change apart: a token can stop reading while its
//! worker is open (a job's step then meets the failure), and a failed reading's back-off
//! outlives a spell of being unreadable.
//!
//! What this module does not do: start observations or open workers (`seats`), or decide
//! which job a token takes (`claims`).

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::worker::TokenWorker;

/// The sessions of this agent on a token. `C_InitToken` refuses to run while another session
/// of the process is open on the token, so a worker is opened only once observations end.
/// `W` is the worker (generic so that the transitions are tested without a token).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) enum Sessions<W = Arc<TokenWorker>> {
    /// No session is open on it.
    #[default]
    Idle,
    /// Observations (each with its own session) are running; `then_open`: a worker is wanted
    /// once they end.
    Observing {
        count: NonZeroUsize,
        then_open: bool,
    },
    /// A worker is being opened (one `Token` per physical token); `observing`: observations
    /// started meanwhile (after its job let the token go).
    Opening { observing: usize },
    /// A worker is open; `observing` as for `Opening`.
    Working { worker: W, observing: usize },
}

/// What the seat does when a worker is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WorkerStart {
    /// Open one now.
    Open,
    /// Observations run: opened when they end (see [`Sessions::observation_ended`]).
    Later,
    /// One is being opened already.
    AlreadyOpening,
}

impl<W> Sessions<W> {
    /// Observations running on the token.
    pub(super) fn observing(&self) -> usize {
        match self {
            Sessions::Idle => 0,
            Sessions::Observing { count, .. } => count.get(),
            Sessions::Opening { observing } | Sessions::Working { observing, .. } => *observing,
        }
    }

    /// The open worker, if any.
    pub(super) fn worker(&self) -> Option<&W> {
        match self {
            Sessions::Working { worker, .. } => Some(worker),
            _ => None,
        }
    }

    /// An observation starts.
    pub(super) fn observation_started(self) -> Sessions<W> {
        match self {
            Sessions::Idle => Sessions::Observing {
                count: NonZeroUsize::MIN,
                then_open: false,
            },
            Sessions::Observing { count, then_open } => Sessions::Observing {
                count: count.saturating_add(1),
                then_open,
            },
            Sessions::Opening { observing } => Sessions::Opening {
                observing: observing.saturating_add(1),
            },
            Sessions::Working { worker, observing } => Sessions::Working {
                worker,
                observing: observing.saturating_add(1),
            },
        }
    }

    /// An observation ended; the flag says a worker is to be opened now (it was wanted while
    /// the observations ran).
    pub(super) fn observation_ended(self) -> (Sessions<W>, bool) {
        match self {
            Sessions::Idle => (Sessions::Idle, false),
            Sessions::Observing { count, then_open } => match NonZeroUsize::new(count.get() - 1) {
                Some(count) => (Sessions::Observing { count, then_open }, false),
                None => (Sessions::Idle, then_open),
            },
            Sessions::Opening { observing } => (
                Sessions::Opening {
                    observing: observing.saturating_sub(1),
                },
                false,
            ),
            Sessions::Working { worker, observing } => (
                Sessions::Working {
                    worker,
                    observing: observing.saturating_sub(1),
                },
                false,
            ),
        }
    }

    /// A job wants the token's worker. A worker still open from a job that let the token go
    /// belongs to nobody: it is dropped and a new one opened for the new job.
    pub(super) fn want_worker(self) -> (Sessions<W>, WorkerStart) {
        match self {
            Sessions::Opening { observing } => {
                (Sessions::Opening { observing }, WorkerStart::AlreadyOpening)
            }
            Sessions::Idle | Sessions::Working { observing: 0, .. } => {
                (Sessions::Opening { observing: 0 }, WorkerStart::Open)
            }
            Sessions::Observing { count, .. } => (
                Sessions::Observing {
                    count,
                    then_open: true,
                },
                WorkerStart::Later,
            ),
            Sessions::Working { observing, .. } => match NonZeroUsize::new(observing) {
                Some(count) => (
                    Sessions::Observing {
                        count,
                        then_open: true,
                    },
                    WorkerStart::Later,
                ),
                None => (Sessions::Opening { observing: 0 }, WorkerStart::Open),
            },
        }
    }

    /// The worker's opening ended: with the worker, or without one (it could not be opened).
    pub(super) fn worker_opened(self, worker: Option<W>) -> Sessions<W> {
        let observing = self.observing();
        match worker {
            Some(worker) => Sessions::Working { worker, observing },
            None => Sessions::without_worker(observing),
        }
    }

    /// The worker is closed (its job let the token go) or died with the token. One still
    /// being opened is not affected: its opening ends with [`Sessions::worker_opened`].
    pub(super) fn worker_closed(self) -> Sessions<W> {
        match self {
            Sessions::Working { observing, .. } => Sessions::without_worker(observing),
            other => other,
        }
    }

    fn without_worker(observing: usize) -> Sessions<W> {
        match NonZeroUsize::new(observing) {
            Some(count) => Sessions::Observing {
                count,
                then_open: false,
            },
            None => Sessions::Idle,
        }
    }
}

/// Readings of a token that failed in a row, and when the scan may read it again: failed
/// readings back off (see [`crate::desk::reread_delay`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Backoff {
    /// At least one.
    failed: u32,
    reread_at: Instant,
}

/// Whether the desk can read the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Reading {
    /// Its last reading succeeded, or none was made yet.
    #[default]
    Good,
    /// Its last readings failed (it is `damaged`): read again after the back-off.
    Failing(Backoff),
    /// The slot scan cannot read it (`C_GetTokenInfo` fails): what the seat knows of it is
    /// from before. The back-off of readings that failed before goes on once it reads again.
    Unreadable(Option<Backoff>),
}

impl Reading {
    /// The slot scan cannot read it.
    pub(super) fn is_unreadable(&self) -> bool {
        matches!(self, Reading::Unreadable(_))
    }

    /// Whether a failed reading's back-off lets the token be read again at `now`.
    pub(super) fn may_reread(&self, now: Instant) -> bool {
        match self {
            Reading::Good => true,
            Reading::Failing(b) => now >= b.reread_at,
            Reading::Unreadable(_) => false,
        }
    }

    /// The scan found the slot unreadable.
    pub(super) fn scan_failed(self) -> Reading {
        match self {
            Reading::Good => Reading::Unreadable(None),
            Reading::Failing(b) => Reading::Unreadable(Some(b)),
            unreadable @ Reading::Unreadable(_) => unreadable,
        }
    }

    /// The scan read the slot; the flag says it was unreadable until now.
    pub(super) fn scan_read(self) -> (Reading, bool) {
        match self {
            Reading::Unreadable(None) => (Reading::Good, true),
            Reading::Unreadable(Some(b)) => (Reading::Failing(b), true),
            other => (other, false),
        }
    }

    /// An observation read the token well. (One on a token the scan cannot read is dropped
    /// as stale before it gets here; were it not, the token would stay unreadable.)
    pub(super) fn read_well(self) -> Reading {
        match self {
            Reading::Unreadable(_) => Reading::Unreadable(None),
            _ => Reading::Good,
        }
    }

    /// An observation failed at `now`: the next reading waits `delay(failed in a row)`.
    pub(super) fn read_failed(self, now: Instant, delay: impl Fn(u32) -> Duration) -> Reading {
        let before = match self {
            Reading::Good => 0,
            Reading::Failing(b) | Reading::Unreadable(Some(b)) => b.failed,
            Reading::Unreadable(None) => 0,
        };
        let failed = before.saturating_add(1);
        let backoff = Backoff {
            failed,
            reread_at: now + delay(failed),
        };
        match self {
            Reading::Unreadable(_) => Reading::Unreadable(Some(backoff)),
            _ => Reading::Failing(backoff),
        }
    }
}

#[cfg(test)]
mod tests;
