//! The latest reading of the clock, per thread.
//!
//! A request reads the clock when it starts and once more when its answer is ready
//! ([`pipeline::handle`](crate::pipeline::handle)). What else on the same thread needs "now" to
//! within that request's duration takes the latest of those readings instead of reading the
//! clock again:
//! - the access line's timestamp, logged as the answer is ready;
//! - the upstream pool's idle check, made while the request is being forwarded;
//! - the response's `date` field and the next head timeout, right after the answer.
//!
//! A clock read costs 20–30 ns under virtualization, and a request used to make eleven. Any
//! other use should read the clock: on an idle thread, the latest reading may be old.

use std::cell::Cell;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A monotonic reading and the wall clock at the same moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub instant: Instant,
    pub wall: SystemTime,
}

impl Reading {
    /// Whole seconds since the Unix epoch (0 before it).
    pub fn unix_seconds(&self) -> u64 {
        self.wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// `self` moved on to `later`, a monotonic reading taken after it: the wall clock follows by
    /// the same amount, without being read.
    pub fn at(&self, later: Instant) -> Reading {
        Reading {
            instant: later,
            wall: self.wall + later.saturating_duration_since(self.instant),
        }
    }
}

thread_local! {
    static LATEST: Cell<Option<Reading>> = const { Cell::new(None) };
}

/// Reads the clock, and keeps the reading as this thread's latest.
pub fn read() -> Reading {
    let reading = Reading {
        instant: Instant::now(),
        wall: SystemTime::now(),
    };
    LATEST.set(Some(reading));
    reading
}

/// Keeps `reading` as this thread's latest.
pub fn keep(reading: Reading) {
    LATEST.set(Some(reading));
}

/// This thread's latest reading; a fresh one if it has none yet.
pub fn latest() -> Reading {
    LATEST.get().unwrap_or_else(read)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_wall_clock_follows_a_later_reading() {
        let start = read();
        let later = start.instant + Duration::from_millis(1500);
        let moved = start.at(later);
        assert_eq!(moved.instant, later);
        assert_eq!(
            moved.wall.duration_since(start.wall).unwrap(),
            Duration::from_millis(1500)
        );
        // An earlier reading does not move the wall clock back.
        let earlier = start
            .instant
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(start.instant);
        assert_eq!(start.at(earlier).wall, start.wall);
    }

    #[test]
    fn the_latest_reading_is_the_one_kept_on_this_thread() {
        let kept = read().at(Instant::now() + Duration::from_secs(60));
        keep(kept);
        assert_eq!(latest(), kept);
        // Another thread has its own (here: none yet, so a fresh reading).
        let other = std::thread::spawn(latest).join().unwrap();
        assert_ne!(other, kept);
        assert!(other.instant < kept.instant);
    }

    #[test]
    fn unix_seconds_are_whole_seconds() {
        let reading = Reading {
            instant: Instant::now(),
            wall: UNIX_EPOCH + Duration::from_millis(90_999),
        };
        assert_eq!(reading.unix_seconds(), 90);
    }
}
