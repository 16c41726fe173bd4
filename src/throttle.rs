//! Rate limits for log lines a caller can cause: a flood of refused connections or failed
//! attestations must not become a flood of log output (docs/threat-model.md).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets one log line through per window, counting the ones it held back.
#[derive(Debug)]
pub struct Throttle {
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// One line per `window`.
    pub fn new(window: Duration) -> Self {
        Throttle {
            window,
            state: Mutex::new(State::default()),
        }
    }

    /// `Some(n)` if a line may be logged now, `n` being how many were held back since the
    /// last one; `None` to stay quiet.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.last {
            Some(last) if now.saturating_duration_since(last) < self.window => {
                state.suppressed += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_with_the_count_held_back() {
        let throttle = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(throttle.allow_at(t0), Some(0));
        for _ in 0..1000 {
            assert_eq!(throttle.allow_at(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(throttle.allow_at(t0 + Duration::from_secs(11)), Some(1000));
        assert_eq!(throttle.allow_at(t0 + Duration::from_secs(12)), None);
    }
}
