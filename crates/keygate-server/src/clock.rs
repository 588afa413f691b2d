//! The one place the server reads the wall clock; the core takes `now` as an argument.

use keygate_core::UnixMillis;
use time::OffsetDateTime;

pub fn now_ms() -> UnixMillis {
    // Straight from the system clock: every request reads it, and a calendar date made
    // and taken apart again (`OffsetDateTime`) cost more than the read.
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        // A clock set before 1970: as far back as it says.
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

pub fn millis_of(at: OffsetDateTime) -> UnixMillis {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Converts stored milliseconds back to a timestamp; out-of-range values clamp.
pub fn time_of(ms: UnixMillis) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_the_calendar_clock_in_milliseconds() {
        let calendar = millis_of(OffsetDateTime::now_utc());
        let now = now_ms();
        // Within a second: a unit or epoch mistake is off by far more, and a clock
        // stepped between the two reads does not fail the test.
        assert!((now - calendar).abs() < 1_000, "{calendar} {now}");
    }
}
