//! Kill points for the lab's crash-convergence test.
//!
//! Built with the `crashpoints` feature (the lab's binary only), every step
//! that changes the host calls [`point`] first. `ISCSIMPLE_CRASH_LOG=FILE`
//! appends one line per point reached, so a test can enumerate them;
//! `ISCSIMPLE_CRASH_AT=N` SIGKILLs the process at the N-th point, as a crash
//! or power loss at that instant would. `ISCSIMPLE_PAUSE_AT=N` holds it at
//! the N-th point instead: it creates `LOG.paused` and goes on once
//! `LOG.go` exists (at most 120 s), so a test can run another call exactly
//! there. Without the feature [`point`] is empty.
use std::fmt::Debug;

#[cfg(feature = "crashpoints")]
mod imp {
    use std::fmt::Debug;
    use std::io::Write;
    use std::sync::atomic::{AtomicU32, Ordering};

    static COUNT: AtomicU32 = AtomicU32::new(0);

    pub(super) fn point(step: &str, detail: &dyn Debug) {
        let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
        let at = std::env::var("ISCSIMPLE_CRASH_AT")
            .ok()
            .and_then(|v| v.parse::<u32>().ok());
        let kill = at == Some(n);
        if let Ok(log) = std::env::var("ISCSIMPLE_CRASH_LOG") {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
            {
                let mark = if kill { " KILLED" } else { "" };
                let _ = writeln!(f, "{n} {step} {detail:?}{mark}");
                let _ = f.sync_all();
            }
        }
        if kill {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        let pause = std::env::var("ISCSIMPLE_PAUSE_AT")
            .ok()
            .and_then(|v| v.parse::<u32>().ok());
        if let (Some(p), Ok(log)) = (pause, std::env::var("ISCSIMPLE_CRASH_LOG")) {
            if p == n {
                let _ = std::fs::write(format!("{log}.paused"), b"");
                let go = std::path::PathBuf::from(format!("{log}.go"));
                let start = std::time::Instant::now();
                while !go.exists() && start.elapsed().as_secs() < 120 {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
    }
}

/// The simulator's hold on each point: a call on this thread stops there
/// (to let another call run) or dies there (a panic that unwinds as a
/// SIGKILL would end the process: no undo runs, locks are dropped).
#[cfg(feature = "sim")]
pub mod hook {
    use std::cell::RefCell;

    type Hook = Box<dyn FnMut(&str)>;

    thread_local! {
        static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    /// Call `hook` at every point this thread reaches (None: stop).
    pub fn install(hook: Option<Hook>) {
        HOOK.with(|h| *h.borrow_mut() = hook);
    }

    pub(super) fn call(step: &str) {
        let hook = HOOK.with(|h| h.borrow_mut().take());
        // Taken out while it runs: it may unwind (a simulated kill), and
        // the thread's call is over then.
        if let Some(mut f) = hook {
            f(step);
            HOOK.with(|h| *h.borrow_mut() = Some(f));
        }
    }
}

/// A step that changes the host is about to run (see the module docs).
#[inline]
pub fn point(step: &str, detail: impl Debug) {
    #[cfg(feature = "sim")]
    hook::call(step);
    #[cfg(feature = "crashpoints")]
    imp::point(step, &detail);
    #[cfg(not(feature = "crashpoints"))]
    let _ = (step, detail);
}
