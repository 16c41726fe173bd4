//! Jittered exponential backoff for every reconnect and retry loop.
//!
//! The delay ceiling starts at `base` and doubles per failure up to `cap`; the delay itself
//! is "equal jitter": half the ceiling plus a random part of the other half. The fixed half
//! keeps a failing loop from spinning; the random half keeps a thousand agents that lost the
//! same server from coming back in step. A success resets the ceiling to `base`.
//!
//! Must never: sleep by itself (callers choose how to wait, so they can also watch for
//! shutdown), or grow without bound.

use std::time::Duration;

/// The delays of one retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff whose first delay is at most `base` and whose delays never exceed `cap`.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            failures: 0,
        }
    }

    /// The delay to wait after a failure, growing the ceiling for the next one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = equal_jitter(self.ceiling(), rand::random::<f64>());
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Starts again from `base`: call after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The upper bound of the next delay: `base · 2^failures`, at most `cap`.
    pub fn ceiling(&self) -> Duration {
        // 2^31 times any base in use here is beyond any cap; the shift cannot overflow.
        let factor = 1u32 << self.failures.min(31);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// Half of `ceiling`, plus `unit` (in [0, 1]) of the other half.
fn equal_jitter(ceiling: Duration, unit: f64) -> Duration {
    let half = ceiling / 2;
    let span = (ceiling - half).as_nanos() as f64;
    // `as` saturates (and maps NaN to 0), so no input makes this panic.
    half + Duration::from_nanos((span * unit.clamp(0.0, 1.0)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(200);
    const CAP: Duration = Duration::from_secs(10);

    #[test]
    fn the_ceiling_doubles_per_failure_up_to_the_cap() {
        let mut backoff = Backoff::new(BASE, CAP);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(backoff.ceiling().as_millis());
            backoff.next_delay();
        }
        assert_eq!(
            ceilings,
            [
                200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000, 10_000
            ]
        );
    }

    #[test]
    fn the_ceiling_stays_at_the_cap_however_long_it_fails() {
        let mut backoff = Backoff::new(BASE, CAP);
        for _ in 0..1000 {
            assert!(backoff.next_delay() <= CAP);
        }
        assert_eq!(backoff.ceiling(), CAP);
        let mut huge = Backoff::new(Duration::from_secs(u64::MAX / 2), CAP);
        for _ in 0..40 {
            assert!(huge.next_delay() <= CAP);
        }
    }

    #[test]
    fn every_delay_is_between_half_the_ceiling_and_the_ceiling() {
        let mut backoff = Backoff::new(BASE, CAP);
        for _ in 0..200 {
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay();
            assert!(delay >= ceiling / 2, "{delay:?} below half of {ceiling:?}");
            assert!(delay <= ceiling, "{delay:?} above {ceiling:?}");
        }
    }

    #[test]
    fn jitter_spans_the_upper_half_and_no_more() {
        let ceiling = Duration::from_secs(4);
        assert_eq!(equal_jitter(ceiling, 0.0), Duration::from_secs(2));
        assert_eq!(equal_jitter(ceiling, 0.5), Duration::from_secs(3));
        assert_eq!(equal_jitter(ceiling, 1.0), ceiling);
        assert_eq!(equal_jitter(ceiling, -3.0), Duration::from_secs(2));
        assert_eq!(equal_jitter(ceiling, 7.0), ceiling);
        assert_eq!(equal_jitter(ceiling, f64::NAN), Duration::from_secs(2));
        assert_eq!(equal_jitter(Duration::ZERO, 0.5), Duration::ZERO);
    }

    #[test]
    fn delays_are_spread_not_in_step() {
        let delays: std::collections::BTreeSet<Duration> = (0..50)
            .map(|_| Backoff::new(CAP, CAP).next_delay())
            .collect();
        assert!(
            delays.len() > 10,
            "50 agents would retry in step: {delays:?}"
        );
    }

    #[test]
    fn a_success_starts_again_from_base() {
        let mut backoff = Backoff::new(BASE, CAP);
        for _ in 0..8 {
            backoff.next_delay();
        }
        assert_eq!(backoff.ceiling(), CAP);
        backoff.reset();
        assert_eq!(backoff.ceiling(), BASE);
        assert!(backoff.next_delay() <= BASE);
    }
}
