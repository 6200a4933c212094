//! A unit's recent request rate and answer time, for the status page: cheap enough to update on
//! every response (relaxed atomics, no lock), exact enough to read at a glance.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Whole seconds the rate is averaged over.
pub const RATE_WINDOW_SECS: u64 = 10;
/// One bucket per second of the window, and one for the second being counted.
const BUCKETS: usize = RATE_WINDOW_SECS as usize + 1;

/// Requests per second over the last [`RATE_WINDOW_SECS`] whole seconds.
#[derive(Default)]
pub struct RateMeter {
    counts: [AtomicU64; BUCKETS],
    /// The second (Unix) each bucket counts.
    seconds: [AtomicU64; BUCKETS],
}

impl RateMeter {
    /// Counts one request at `now_ms` (Unix ms).
    pub fn record(&self, now_ms: u64) {
        let second = now_ms / 1000;
        let i = (second % BUCKETS as u64) as usize;
        if self.seconds[i].load(Ordering::Relaxed) != second {
            // The bucket last counted an older second: it starts over. Two responses racing
            // here may lose a count at a second's boundary; the page shows a rate, not an
            // account (the request counters are exact).
            self.seconds[i].store(second, Ordering::Relaxed);
            self.counts[i].store(0, Ordering::Relaxed);
        }
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The average rate over the whole seconds before `now_ms`.
    pub fn per_second(&self, now_ms: u64) -> f64 {
        let now = now_ms / 1000;
        let total: u64 = (1..=RATE_WINDOW_SECS)
            .filter_map(|back| now.checked_sub(back))
            .map(|second| {
                let i = (second % BUCKETS as u64) as usize;
                if self.seconds[i].load(Ordering::Relaxed) == second {
                    self.counts[i].load(Ordering::Relaxed)
                } else {
                    0
                }
            })
            .sum();
        total as f64 / RATE_WINDOW_SECS as f64
    }
}

/// A moving average of answer times (each new one weighs 1/8), in microseconds.
#[derive(Default)]
pub struct AnswerTime(AtomicU64);

impl AnswerTime {
    /// Adds one answer's time.
    pub fn record(&self, took: Duration) {
        let sample = took.as_micros().min(u64::MAX as u128) as u64;
        let old = self.0.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample.max(1)
        } else {
            // Racing updates may drop a sample; the average hardly moves for it.
            (old - old / 8 + sample / 8).max(1)
        };
        self.0.store(new, Ordering::Relaxed);
    }

    /// The average, if any answer was timed.
    pub fn average(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_counts_whole_seconds_of_the_window_only() {
        let m = RateMeter::default();
        let t0 = 1_000_000_000;
        // 50 requests in each of 10 seconds, then 7 in the second still running.
        for s in 0..10 {
            for _ in 0..50 {
                m.record(t0 + s * 1000 + 500);
            }
        }
        for _ in 0..7 {
            m.record(t0 + 10_000 + 200);
        }
        assert_eq!(m.per_second(t0 + 10_500), 50.0);
        // Five seconds later, half the counted seconds have left the window; the 7 count now.
        assert_eq!(m.per_second(t0 + 15_500), (5.0 * 50.0 + 7.0) / 10.0);
        // Quiet for longer than the window: nothing, even though buckets still hold counts.
        assert_eq!(m.per_second(t0 + 60_000), 0.0);
        // A bucket reused for a later second starts over.
        m.record(t0 + 22_000);
        assert_eq!(m.per_second(t0 + 23_000), 0.1);
    }

    #[test]
    fn the_answer_time_follows_recent_answers() {
        let a = AnswerTime::default();
        assert_eq!(a.average(), None);
        a.record(Duration::from_millis(8));
        assert_eq!(a.average(), Some(Duration::from_millis(8)));
        for _ in 0..100 {
            a.record(Duration::from_millis(1));
        }
        let avg = a.average().unwrap();
        assert!(avg < Duration::from_micros(1100), "{avg:?}");
    }
}
