//! Bounded retry with exponential backoff and jitter, for followers
//! (mirrors, escrow) that must keep trying an upstream without hammering
//! it, on `backon`'s exponential schedule.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays between attempts: from `min`, doubling, never above `max`,
/// with jitter so that many followers do not retry in step.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// A schedule from `min` to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
            max,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // Jitter adds up to one delay on top; keep within twice the cap.
        self.delays.next().unwrap_or(self.max).min(self.max * 2)
    }

    /// Starts again from the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
        let mut last = first;
        for _ in 0..20 {
            last = b.next_delay();
            assert!(last <= Duration::from_secs(4), "{last:?}");
        }
        assert!(last >= Duration::from_secs(2), "{last:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(200));
    }
}
