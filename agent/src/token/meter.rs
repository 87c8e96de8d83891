//! The module meter: CPU time spent inside PKCS#11 calls, apart from the agent's own.
//!
//! Every call this layer makes into a module runs through [`metered`], which adds the
//! calling thread's CPU time during the call to a process-wide total. The status snapshot
//! shows the total next to the process's CPU time, so an operator can tell a busy module
//! from a busy agent, and the benchmark takes the agent's own CPU as the difference.
//!
//! Reading a thread's CPU clock costs one system call (a few hundred nanoseconds here), two
//! per PKCS#11 call. Time a module spends on other threads of its own (none of the modules
//! this project runs has any) is not counted.
//!
//! The meter also tells when the call now running started, for threads that ask for it
//! ([`announce_calls_to`]): a token worker's thread does, so that the daemon can tell one
//! PKCS#11 call that does not return (a wedged module or device) from a long step made of
//! many calls that do.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustix::time::{ClockId, clock_gettime};

static MODULE_CPU_NS: AtomicU64 = AtomicU64::new(0);
static MODULE_CALLS: AtomicU64 = AtomicU64::new(0);

/// When the PKCS#11 call now running on a thread started; `None` between calls.
pub(crate) type CallClock = Arc<Mutex<Option<Instant>>>;

thread_local! {
    /// Where this thread announces its calls, if anywhere.
    static CALL_CLOCK: RefCell<Option<CallClock>> = const { RefCell::new(None) };
}

/// From now on, every [`metered`] call on this thread sets `clock` to its start while it
/// runs and back to `None` when it returns.
pub(crate) fn announce_calls_to(clock: CallClock) {
    CALL_CLOCK.with(|c| *c.borrow_mut() = Some(clock));
}

fn announce(since: Option<Instant>) {
    CALL_CLOCK.with(|c| {
        if let Some(clock) = c.borrow().as_ref() {
            // A poisoned lock only means a reader panicked; the value is a plain `Option`.
            *clock.lock().unwrap_or_else(PoisonError::into_inner) = since;
        }
    });
}

fn clock_ns(clock: ClockId) -> u64 {
    let t = clock_gettime(clock);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
}

/// Runs `call` (one call into a PKCS#11 module, nothing else) and adds the CPU time this
/// thread spent in it to the module total.
pub(crate) fn metered<T>(call: impl FnOnce() -> T) -> T {
    /// Announces the end of the call however it ends (a panic unwinds through here too).
    struct Announced;
    impl Drop for Announced {
        fn drop(&mut self) {
            announce(None);
        }
    }
    announce(Some(Instant::now()));
    let _announced = Announced;
    let start = clock_ns(ClockId::ThreadCPUTime);
    let out = call();
    let spent = clock_ns(ClockId::ThreadCPUTime).saturating_sub(start);
    MODULE_CPU_NS.fetch_add(spent, Ordering::Relaxed);
    MODULE_CALLS.fetch_add(1, Ordering::Relaxed);
    out
}

/// CPU time spent inside PKCS#11 module calls by this process so far.
pub fn module_cpu() -> Duration {
    Duration::from_nanos(MODULE_CPU_NS.load(Ordering::Relaxed))
}

/// PKCS#11 module calls made by this process so far.
pub fn module_calls() -> u64 {
    MODULE_CALLS.load(Ordering::Relaxed)
}

/// CPU time (user and system) of the whole process so far.
pub fn process_cpu() -> Duration {
    Duration::from_nanos(clock_ns(ClockId::ProcessCPUTime))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn spin(d: Duration) -> u64 {
        let start = clock_ns(ClockId::ThreadCPUTime);
        let mut x = 0u64;
        while clock_ns(ClockId::ThreadCPUTime) - start < d.as_nanos() as u64 {
            x = x.wrapping_add(1);
        }
        x
    }

    #[test]
    fn a_thread_that_asks_sees_when_its_running_call_started() {
        let clock: CallClock = Arc::default();
        // Not announced before the thread asks.
        metered(|| ());
        assert_eq!(*clock.lock().unwrap(), None);
        announce_calls_to(Arc::clone(&clock));
        let before = Instant::now();
        let during = metered(|| *clock.lock().unwrap());
        let started = during.expect("set while the call runs");
        assert!(started >= before);
        assert_eq!(*clock.lock().unwrap(), None, "cleared when it returns");
        // Another call has its own start.
        let next = metered(|| *clock.lock().unwrap()).unwrap();
        assert!(next >= started);
        // Other threads announce nothing here.
        std::thread::spawn(|| metered(|| ())).join().unwrap();
        assert_eq!(*clock.lock().unwrap(), None);
        // A call that panics has ended too.
        let panicked = std::panic::catch_unwind(|| metered(|| panic!("module bug")));
        assert!(panicked.is_err());
        assert_eq!(*clock.lock().unwrap(), None, "cleared by the unwinding");
    }

    #[test]
    fn metered_calls_add_their_cpu_time_and_count() {
        let (cpu0, calls0) = (module_cpu(), module_calls());
        let process0 = process_cpu();
        metered(|| spin(Duration::from_millis(20)));
        // Work outside a metered call is the agent's own, not the module's.
        spin(Duration::from_millis(20));
        let metered_cpu = module_cpu() - cpu0;
        assert!(metered_cpu >= Duration::from_millis(20), "{metered_cpu:?}");
        assert!(metered_cpu < Duration::from_millis(39), "{metered_cpu:?}");
        assert!(module_calls() > calls0);
        assert!(process_cpu() - process0 >= Duration::from_millis(40));
    }
}
