//! Logging what was refused without letting a flood of refusals fill a disk: at most
//! [`PER_SECOND`] lines a second, and one line saying how many were left out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Refusal lines logged per second at most.
pub const PER_SECOND: u64 = 20;

/// A per-second budget of log lines.
#[derive(Debug)]
pub struct LogLimiter {
    start: Instant,
    /// The current window (seconds since `start`) and the lines logged in it.
    window: Mutex<(u64, u64)>,
    suppressed: AtomicU64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter {
            start: Instant::now(),
            window: Mutex::new((0, 0)),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl LogLimiter {
    /// Whether a line may be logged now. When a new second begins after lines were left out,
    /// logs how many first.
    pub fn allow(&self) -> bool {
        let now = self.start.elapsed().as_secs();
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if window.0 != now {
            *window = (now, 0);
            let left_out = self.suppressed.swap(0, Ordering::Relaxed);
            if left_out > 0 {
                tracing::info!(
                    left_out,
                    "refusals not logged: more than {PER_SECOND} a second"
                );
            }
        }
        if window.1 < PER_SECOND {
            window.1 += 1;
            true
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_budget() {
        let limiter = LogLimiter::default();
        let allowed = (0..1000).filter(|_| limiter.allow()).count() as u64;
        // Within one second, or across a second boundary at most twice the budget.
        assert!(
            (PER_SECOND..=2 * PER_SECOND).contains(&allowed),
            "{allowed}"
        );
    }
}
