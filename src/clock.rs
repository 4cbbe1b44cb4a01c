//! Time as the engine sees it: `now` and `sleep`. On a host these are the
//! monotonic clock and a real sleep; under the simulator (`sim` feature) a
//! thread may install a virtual clock, so that a wait the model never
//! satisfies (a lock held by a paused call, a device that never appears)
//! passes its timeout instantly and deterministically.
use std::time::{Duration, Instant};

#[cfg(feature = "sim")]
mod virt {
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// A clock that moves only when someone sleeps on it.
    #[derive(Debug)]
    pub struct Virtual {
        base: Instant,
        nanos: AtomicU64,
    }

    impl Virtual {
        /// A clock at an arbitrary origin.
        pub fn new() -> Arc<Virtual> {
            Arc::new(Virtual {
                base: Instant::now(),
                nanos: AtomicU64::new(0),
            })
        }

        /// Now, on this clock.
        pub fn now(&self) -> Instant {
            self.base + Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
        }

        /// Move the clock on by `d`.
        pub fn advance(&self, d: Duration) {
            let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 4);
            self.nanos.fetch_add(n, Ordering::SeqCst);
        }
    }

    thread_local! {
        static CLOCK: RefCell<Option<Arc<Virtual>>> = const { RefCell::new(None) };
    }

    /// Use `clock` for this thread's `now` and `sleep` (None: real time).
    pub fn install(clock: Option<Arc<Virtual>>) {
        CLOCK.with(|c| *c.borrow_mut() = clock);
    }

    pub(super) fn get() -> Option<Arc<Virtual>> {
        CLOCK.with(|c| c.borrow().clone())
    }
}

#[cfg(feature = "sim")]
pub use virt::{install, Virtual};

/// The monotonic now.
pub fn now() -> Instant {
    #[cfg(feature = "sim")]
    if let Some(c) = virt::get() {
        return c.now();
    }
    Instant::now()
}

/// Time passed since `t`.
pub fn since(t: Instant) -> Duration {
    now().saturating_duration_since(t)
}

/// Sleep for `d`.
pub fn sleep(d: Duration) {
    #[cfg(feature = "sim")]
    if let Some(c) = virt::get() {
        c.advance(d);
        return;
    }
    std::thread::sleep(d);
}

/// Whether time is virtual on this thread (nothing from the real kernel,
/// such as a uevent, can arrive).
pub fn is_virtual() -> bool {
    #[cfg(feature = "sim")]
    if virt::get().is_some() {
        return true;
    }
    false
}
