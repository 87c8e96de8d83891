//! The rate limit on rejection events: a token bucket over the `rejected` events a station
//! journals and publishes for refused jobs.
//!
//! A forged job with a fresh job id costs its sender one publish, and the station an event
//! written, fsynced and published: without a limit, a flood of them fills the outbox and the
//! platform's ledger. Above the limit a rejection is only counted (the counts are in
//! `status`) and summed up in one log line per minute. Accepted jobs never pass through the
//! bucket, so a valid job is never delayed by a flood.
//!
//! What this module does not do: decide about jobs (`admission`), or read a clock (the caller
//! gives `now`).

use std::time::{Duration, Instant};

/// How often suppressed rejections are summed up in the log.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// What to do with one rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Within the limit: journal and publish the `rejected` event.
    Publish,
    /// Above the limit: no event. `log` carries the number of rejections suppressed since the
    /// last summary when a summary is due now (at most once per [`LOG_EVERY`]).
    Suppress {
        /// Rejections suppressed since the last summary, when one is due.
        log: Option<u64>,
    },
}

/// A token bucket of `per_minute` rejection events, refilled evenly over a minute, with
/// the counts `status` shows.
#[derive(Debug)]
pub(super) struct RejectionLimiter {
    /// Bucket size and refill per minute; 0 publishes no rejection at all.
    per_minute: u32,
    /// Tokens left, in thousandths (so that refills of less than one token add up).
    milli_tokens: u64,
    /// When the bucket was last refilled.
    refilled: Option<Instant>,
    /// Every rejection, published or not.
    rejected: u64,
    /// Rejections without an event.
    suppressed: u64,
    /// Suppressed since the last summary line.
    unlogged: u64,
    /// When the last summary line was due.
    logged: Option<Instant>,
}

impl RejectionLimiter {
    /// A full bucket of `per_minute` events.
    pub(super) fn new(per_minute: u32) -> RejectionLimiter {
        RejectionLimiter {
            per_minute,
            milli_tokens: u64::from(per_minute) * 1000,
            refilled: None,
            rejected: 0,
            suppressed: 0,
            unlogged: 0,
            logged: None,
        }
    }

    /// Counts one rejection at `now` and says whether its event may go out.
    pub(super) fn on_rejection(&mut self, now: Instant) -> Verdict {
        self.refill(now);
        self.rejected += 1;
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            return Verdict::Publish;
        }
        self.suppressed += 1;
        self.unlogged += 1;
        let due = self
            .logged
            .is_none_or(|at| now.saturating_duration_since(at) >= LOG_EVERY);
        if !due {
            return Verdict::Suppress { log: None };
        }
        self.logged = Some(now);
        let count = std::mem::take(&mut self.unlogged);
        Verdict::Suppress { log: Some(count) }
    }

    fn refill(&mut self, now: Instant) {
        let capacity = u64::from(self.per_minute) * 1000;
        if let Some(last) = self.refilled {
            let elapsed = now.saturating_duration_since(last);
            // per_minute tokens per 60 s = per_minute milli-tokens per 60 ms.
            let earned = elapsed.as_millis() * u128::from(self.per_minute) / 60;
            let earned = u64::try_from(earned).unwrap_or(u64::MAX);
            self.milli_tokens = self.milli_tokens.saturating_add(earned).min(capacity);
        }
        self.refilled = Some(now);
    }

    /// Every rejection counted since start.
    pub(super) fn rejected(&self) -> u64 {
        self.rejected
    }

    /// The rejections that got no event.
    pub(super) fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_publishes_its_size_then_suppresses_and_logs_once_a_minute() {
        let start = Instant::now();
        let mut limiter = RejectionLimiter::new(10);
        for _ in 0..10 {
            assert_eq!(limiter.on_rejection(start), Verdict::Publish);
        }
        // The first one over the limit is summed up at once, the next ones not for a minute.
        assert_eq!(
            limiter.on_rejection(start),
            Verdict::Suppress { log: Some(1) }
        );
        for _ in 0..189 {
            assert_eq!(limiter.on_rejection(start), Verdict::Suppress { log: None });
        }
        assert_eq!(limiter.rejected(), 200);
        assert_eq!(limiter.suppressed(), 190);
        // A minute later the bucket is full again, and the summary of what was held back
        // comes with the first rejection that is still suppressed after it.
        let later = start + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(limiter.on_rejection(later), Verdict::Publish);
        }
        assert_eq!(
            limiter.on_rejection(later),
            Verdict::Suppress { log: Some(190) }
        );
    }

    #[test]
    fn the_bucket_refills_evenly_and_never_beyond_its_size() {
        let start = Instant::now();
        let mut limiter = RejectionLimiter::new(10);
        for _ in 0..10 {
            limiter.on_rejection(start);
        }
        assert!(matches!(
            limiter.on_rejection(start),
            Verdict::Suppress { .. }
        ));
        // 10 a minute: one every 6 s.
        let t = start + Duration::from_secs(6);
        assert_eq!(limiter.on_rejection(t), Verdict::Publish);
        assert!(matches!(limiter.on_rejection(t), Verdict::Suppress { .. }));
        // An hour of quiet fills the bucket to its size, not more.
        let t = t + Duration::from_secs(3600);
        for _ in 0..10 {
            assert_eq!(limiter.on_rejection(t), Verdict::Publish);
        }
        assert!(matches!(limiter.on_rejection(t), Verdict::Suppress { .. }));
    }

    #[test]
    fn a_zero_limit_publishes_nothing_but_counts_everything() {
        let now = Instant::now();
        let mut limiter = RejectionLimiter::new(0);
        for _ in 0..5 {
            assert!(matches!(
                limiter.on_rejection(now),
                Verdict::Suppress { .. }
            ));
        }
        assert_eq!((limiter.rejected(), limiter.suppressed()), (5, 5));
    }
}
