//! The one place the server reads the wall clock; the core takes `now` as an argument.

use keygate_core::UnixMillis;
use time::OffsetDateTime;

pub fn now_ms() -> UnixMillis {
    millis_of(OffsetDateTime::now_utc())
}

pub fn millis_of(at: OffsetDateTime) -> UnixMillis {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Converts stored milliseconds back to a timestamp; out-of-range values clamp.
pub fn time_of(ms: UnixMillis) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
