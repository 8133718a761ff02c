//! The one retry policy of the fleet: exponential backoff on [`backon`], from `min` doubling up to
//! `max`, optionally with jitter and a cap on attempts.
//!
//! Two shapes of retry use it. A closure retried in place (a publish, a connect) goes through
//! [`RetryPolicy::backoff`], backon's builder. A loop that counts its own failures (the worker's
//! reconnects, a backfill lane, the NAK delay of a redelivered message) asks for
//! [`RetryPolicy::delay`] of its n-th consecutive failure. Jitter puts a delay in the upper half
//! of its step (`d/2 .. d`), so a burst of failures does not come back in lockstep yet never
//! waits longer than the step.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first delay.
    pub min: Duration,
    /// No delay is longer.
    pub max: Duration,
    /// Retries after the first attempt; `None`: no limit (the caller decides when to stop).
    pub max_times: Option<usize>,
    pub jitter: bool,
}

impl RetryPolicy {
    pub const fn new(min: Duration, max: Duration) -> Self {
        RetryPolicy {
            min,
            max,
            max_times: None,
            jitter: false,
        }
    }

    pub const fn with_max_times(mut self, n: usize) -> Self {
        self.max_times = Some(n);
        self
    }

    pub const fn with_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// backon's builder for this policy, for `Retryable::retry`.
    pub fn backoff(&self) -> ExponentialBuilder {
        let b = ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_factor(2.0);
        let b = match self.max_times {
            Some(n) => b.with_max_times(n),
            None => b.without_max_times(),
        };
        if self.jitter {
            b.with_jitter()
        } else {
            b
        }
    }

    /// The delays of this policy in order, ending after `max_times` (for a loop that stops when
    /// they run out).
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        self.backoff().build()
    }

    /// The delay after the `failures`-th consecutive failure (1 for the first): `min`,
    /// doubling, at most `max`; with jitter, somewhere in the upper half of that.
    pub fn delay(&self, failures: u32) -> Duration {
        let step = ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .without_max_times()
            .build()
            .nth(failures.clamp(1, 30) as usize - 1)
            .unwrap_or(self.max)
            .min(self.max);
        if self.jitter {
            let half = step / 2;
            half + step.mul_f64(rand::rng().random::<f64>() * 0.5)
        } else {
            step
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let p = RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(5));
        let got: Vec<_> = (1..=7).map(|n| p.delay(n).as_millis()).collect();
        assert_eq!(got, [200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(p.delay(0), p.delay(1));
        assert_eq!(p.delay(1000), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_in_the_upper_half_of_the_step() {
        let p = RetryPolicy::new(Duration::from_millis(500), Duration::from_secs(60)).with_jitter();
        for n in 1..=12 {
            let step = RetryPolicy { jitter: false, ..p }.delay(n);
            let d = p.delay(n);
            assert!(d >= step / 2 && d <= step, "{n}: {d:?} of {step:?}");
        }
    }

    #[test]
    fn the_builder_stops_after_max_times() {
        let p =
            RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(4)).with_max_times(3);
        let delays: Vec<_> = p.delays().collect();
        assert_eq!(delays.len(), 3);
    }
}
