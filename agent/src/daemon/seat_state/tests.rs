//! Unit tests of a seat's state machines: every transition, with a stand-in worker and
//! made-up instants (no token, no clock).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use super::{Backoff, Reading, Sessions, WorkerStart};

/// A stand-in worker: the transitions never look inside it.
type S = Sessions<&'static str>;

fn observing(count: usize, then_open: bool) -> S {
    Sessions::Observing {
        count: NonZeroUsize::new(count).unwrap(),
        then_open,
    }
}

#[test]
fn a_worker_wanted_on_an_idle_token_opens_at_once() {
    let (s, start) = S::Idle.want_worker();
    assert_eq!(start, WorkerStart::Open);
    assert_eq!(s, Sessions::Opening { observing: 0 });
    let (s, start) = s.want_worker();
    assert_eq!(start, WorkerStart::AlreadyOpening);
    assert_eq!(
        s.worker_opened(Some("w")),
        Sessions::Working {
            worker: "w",
            observing: 0
        }
    );
}

#[test]
fn a_worker_wanted_during_observations_opens_when_the_last_ends() {
    let s = S::Idle.observation_started().observation_started();
    assert_eq!(s, observing(2, false));
    let (s, start) = s.want_worker();
    assert_eq!(start, WorkerStart::Later);
    let (s, open) = s.observation_ended();
    assert!(!open, "one observation still holds a session");
    assert_eq!(s, observing(1, true));
    let (s, open) = s.observation_ended();
    assert!(open);
    assert_eq!(s, Sessions::Idle);
    assert_eq!(s.want_worker().1, WorkerStart::Open);
}

#[test]
fn observations_without_a_wanted_worker_end_idle() {
    let (s, open) = S::Idle.observation_started().observation_ended();
    assert!(!open);
    assert_eq!(s, Sessions::Idle);
    // An end without a start (its seat was made anew meanwhile) stays idle.
    assert_eq!(S::Idle.observation_ended(), (Sessions::Idle, false));
}

#[test]
fn a_failed_opening_leaves_the_observations_started_meanwhile() {
    let s = S::Idle.want_worker().0.observation_started();
    assert_eq!(s.observing(), 1);
    assert_eq!(s.clone().worker_opened(None), observing(1, false));
    let working = s.worker_opened(Some("w"));
    assert_eq!(working.worker(), Some(&"w"));
    assert_eq!(working.observing(), 1);
    let (working, open) = working.observation_ended();
    assert!(!open);
    assert_eq!(
        working,
        Sessions::Working {
            worker: "w",
            observing: 0
        }
    );
}

#[test]
fn closing_the_worker_keeps_running_observations_and_spares_an_opening() {
    let working = Sessions::Working {
        worker: "w",
        observing: 0,
    };
    assert_eq!(working.worker_closed(), Sessions::Idle);
    let working = Sessions::Working {
        worker: "w",
        observing: 2,
    };
    assert_eq!(working.worker_closed(), observing(2, false));
    let opening = S::Opening { observing: 0 };
    assert_eq!(opening.clone().worker_closed(), opening);
}

#[test]
fn a_stale_worker_is_replaced_when_a_new_job_wants_one() {
    let (s, start) = Sessions::Working {
        worker: "old",
        observing: 0,
    }
    .want_worker();
    assert_eq!(start, WorkerStart::Open);
    assert_eq!(s.worker(), None);
    let (s, start) = Sessions::Working {
        worker: "old",
        observing: 1,
    }
    .want_worker();
    assert_eq!(start, WorkerStart::Later);
    assert_eq!(s, observing(1, true));
}

fn delay(failed: u32) -> Duration {
    Duration::from_secs(u64::from(failed) * 10)
}

#[test]
fn failed_readings_back_off_and_a_good_one_ends_it() {
    let now = Instant::now();
    let r = Reading::Good.read_failed(now, delay);
    assert!(!r.may_reread(now));
    assert!(r.may_reread(now + Duration::from_secs(10)));
    let r = r.read_failed(now, delay);
    let Reading::Failing(b) = r else {
        panic!("a failed reading is failing: {r:?}")
    };
    assert_eq!(b.failed, 2);
    assert!(!r.may_reread(now + Duration::from_secs(19)));
    assert!(r.may_reread(now + Duration::from_secs(20)));
    assert_eq!(r.read_well(), Reading::Good);
    assert!(Reading::Good.may_reread(now));
}

#[test]
fn an_unreadable_token_keeps_its_back_off_until_the_scan_reads_it() {
    let now = Instant::now();
    let failing = Reading::Good.read_failed(now, delay);
    let unreadable = failing.scan_failed();
    assert!(unreadable.is_unreadable());
    assert!(!unreadable.may_reread(now + Duration::from_secs(3600)));
    assert_eq!(unreadable.scan_failed(), unreadable, "still unreadable");
    assert_eq!(unreadable.scan_read(), (failing, true));
    assert_eq!(failing.scan_read(), (failing, false));
    assert_eq!(
        Reading::Good.scan_failed().scan_read(),
        (Reading::Good, true)
    );
    assert_eq!(Reading::Good.scan_read(), (Reading::Good, false));
}

#[test]
fn a_reading_counted_while_unreadable_leaves_it_unreadable() {
    let now = Instant::now();
    let r = Reading::Good.scan_failed().read_failed(now, delay);
    assert_eq!(
        r,
        Reading::Unreadable(Some(Backoff {
            failed: 1,
            reread_at: now + delay(1)
        }))
    );
    assert_eq!(r.read_well(), Reading::Unreadable(None));
}
