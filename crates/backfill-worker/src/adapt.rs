//! Adaptive chunk size.
//!
//! Chunk size is counted in key values (chunks are key ranges). After each chunk the size moves
//! toward the one that would have taken `target_chunk` at the observed speed
//! (`keys × target / elapsed`), at most halving or doubling per step so one slow chunk (a
//! checkpoint, a lock wait) does not swing it, and stays within `[min, max]`. A timed-out chunk
//! halves it. Keeping chunks near a fixed duration bounds both lock hold times and the work lost
//! to a crash, whatever the row width or key density; GitLab's batched background migrations
//! tune batch size the same way.

use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug)]
pub struct Adapt {
    size: Mutex<f64>,
    target: Duration,
    min: f64,
    max: f64,
}

impl Adapt {
    pub fn new(initial: i64, target: Duration, min: i64, max: i64) -> Adapt {
        let (min, max) = (min.max(1) as f64, max.max(min.max(1)) as f64);
        Adapt {
            size: Mutex::new((initial as f64).clamp(min, max)),
            target,
            min,
            max,
        }
    }

    /// The size to carve the next chunk with.
    pub fn size(&self) -> i64 {
        *self.size.lock().unwrap_or_else(|e| e.into_inner()) as i64
    }

    /// Records a finished chunk of `keys` key values that took `elapsed`.
    pub fn observe(&self, keys: i64, elapsed: Duration) {
        let mut size = self.size.lock().unwrap_or_else(|e| e.into_inner());
        let secs = elapsed.as_secs_f64().max(0.000_5);
        let ideal = keys.max(1) as f64 * self.target.as_secs_f64() / secs;
        *size = ideal
            .clamp(*size / 2.0, *size * 2.0)
            .clamp(self.min, self.max);
    }

    /// A chunk timed out: halve.
    pub fn shrink(&self) {
        let mut size = self.size.lock().unwrap_or_else(|e| e.into_inner());
        *size = (*size / 2.0).clamp(self.min, self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_converges_toward_the_target_in_bounded_steps() {
        let a = Adapt::new(100, Duration::from_millis(500), 1, 1_000_000);
        // 1 ms per key: the ideal is 500 keys.
        for _ in 0..10 {
            let s = a.size();
            a.observe(s, Duration::from_millis(s as u64));
        }
        assert!((450..=550).contains(&a.size()), "{}", a.size());
        a.observe(500, Duration::from_secs(100));
        assert_eq!(a.size(), 250, "at most halves per step");
        a.shrink();
        assert_eq!(a.size(), 125);
    }
}
