//! One time budget for a whole call. xl kills a hotplug script after 40 s
//! (libxl's hotplug timeout), whatever the script was doing; waits capped
//! one by one (login, device, settle, udev, locks, each command) add up
//! past that. With a budget every wait of the engine draws from one
//! deadline instead, the steps end early enough to leave the rollback its
//! share, and an error caused by the deadline says so.
use std::time::{Duration, Instant};

/// A deadline for one call, part of it kept for the rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    total: Duration,
    start: Instant,
    reserve: Duration,
}

impl Budget {
    /// `total` from now; the last `reserve` of it is for undoing what the
    /// steps did (their waits end `reserve` before the end).
    pub fn new(total: Duration, reserve: Duration) -> Budget {
        Budget::since(crate::clock::now(), total, reserve)
    }

    /// Like [`Budget::new`], counted from `start`.
    pub fn since(start: Instant, total: Duration, reserve: Duration) -> Budget {
        Budget {
            total,
            start,
            reserve: reserve.min(total),
        }
    }

    /// The whole budget, as configured.
    pub fn total(&self) -> Duration {
        self.total
    }

    /// When the steps must be done.
    pub fn steps_end(&self) -> Instant {
        self.start + (self.total - self.reserve)
    }

    /// When everything, the rollback included, must be done.
    pub fn end(&self) -> Instant {
        self.start + self.total
    }
}

/// How long one wait may last, and whether the budget (not the wait's own
/// timeout) is what limits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The wait.
    pub wait: Duration,
    /// The budget is shorter than the wait's own timeout.
    pub by_budget: bool,
}

impl Limit {
    /// `own`, capped by what is left until `deadline` (if any).
    pub fn of(own: Duration, deadline: Option<Instant>) -> Limit {
        match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(crate::clock::now());
                Limit {
                    wait: own.min(left),
                    by_budget: left < own,
                }
            }
            None => Limit {
                wait: own,
                by_budget: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steps_end_before_the_rollback_share() {
        let b = Budget::new(Duration::from_secs(30), Duration::from_secs(10));
        assert_eq!(b.end() - b.steps_end(), Duration::from_secs(10));
        assert_eq!(b.total(), Duration::from_secs(30));
        let all = Budget::new(Duration::from_secs(5), Duration::from_secs(9));
        assert_eq!(
            all.steps_end(),
            all.start,
            "a reserve larger than the budget takes it all"
        );
    }

    #[test]
    fn a_wait_takes_what_is_left_and_says_so() {
        let own = Duration::from_secs(15);
        assert_eq!(
            Limit::of(own, None),
            Limit {
                wait: own,
                by_budget: false
            }
        );
        let far = crate::clock::now() + Duration::from_secs(3600);
        assert!(!Limit::of(own, Some(far)).by_budget);
        let near = Limit::of(own, Some(crate::clock::now() + Duration::from_secs(2)));
        assert!(near.by_budget && near.wait <= Duration::from_secs(2));
        let gone = Limit::of(own, Some(crate::clock::now() - Duration::from_secs(1)));
        assert!(gone.by_budget && gone.wait.is_zero());
    }
}
