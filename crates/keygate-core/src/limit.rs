//! Rate limits (GCRA) and monthly quotas: the pure math and the per-key state the hot path
//! updates under a short per-key lock.
//!
//! GCRA keeps one number per limit, the theoretical arrival time (TAT). With emission
//! interval `T = period / limit` and burst `b`, a request at `now` is allowed when
//! `TAT - now <= T * (b - 1)`; it then moves the TAT to `max(TAT, now) + T`.

use crate::record::UnixMillis;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The name of a limit in the `RateLimit` fields. `Copy`, so reporting a limit's state
/// allocates nothing on the decision path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyName {
    Second,
    #[default]
    Minute,
    Hour,
    Day,
    Month,
    Seconds(u64),
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyName::Second => f.write_str("second"),
            PolicyName::Minute => f.write_str("minute"),
            PolicyName::Hour => f.write_str("hour"),
            PolicyName::Day => f.write_str("day"),
            PolicyName::Month => f.write_str("month"),
            PolicyName::Seconds(s) => write!(f, "{s}s"),
        }
    }
}

/// Limit states, kept inline for the usual few limits so a decision needs no allocation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LimitStatuses {
    len: usize,
    inline: [LimitStatus; INLINE_STATUSES],
    /// Used instead of `inline` once there are more states than fit there.
    spill: Vec<LimitStatus>,
}

const INLINE_STATUSES: usize = 3;

impl LimitStatuses {
    pub fn push(&mut self, status: LimitStatus) {
        if self.spill.is_empty() && self.len < INLINE_STATUSES {
            self.inline[self.len] = status;
            self.len += 1;
            return;
        }
        if self.spill.is_empty() {
            self.spill.extend_from_slice(&self.inline[..self.len]);
        }
        self.spill.push(status);
    }

    pub fn as_slice(&self) -> &[LimitStatus] {
        if self.spill.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spill
        }
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

impl FromIterator<LimitStatus> for LimitStatuses {
    fn from_iter<I: IntoIterator<Item = LimitStatus>>(statuses: I) -> Self {
        let mut all = LimitStatuses::default();
        for status in statuses {
            all.push(status);
        }
        all
    }
}

/// At most this many rate limits on one plan, key or route: each is checked on every
/// request, under the key's lock.
pub const MAX_RATE_LIMITS: usize = 10;

/// One rate limit: `limit` requests per `period_seconds`, with up to `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub limit: u32,
    pub period_seconds: u64,
    /// Requests allowed back to back; defaults to `limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl RateLimit {
    pub fn validate(&self) -> Result<(), String> {
        if self.limit == 0 {
            return Err("`limit` must be at least 1".into());
        }
        if self.period_seconds == 0 || self.period_seconds > 366 * 24 * 3600 {
            return Err("`period_seconds` must be between 1 and 31622400 (a leap year)".into());
        }
        if self.burst == Some(0) {
            return Err("`burst` must be at least 1".into());
        }
        Ok(())
    }

    /// The emission interval in nanoseconds (integer, so TATs never drift).
    fn interval_ns(&self) -> i64 {
        let period_ns = i64::try_from(self.period_seconds)
            .unwrap_or(i64::MAX / NANOS_PER_SEC)
            .saturating_mul(NANOS_PER_SEC);
        (period_ns / i64::from(self.limit.max(1))).max(1)
    }

    fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.limit)
    }

    /// The name used in `RateLimit-Policy` (`"minute"`, `"hour"`, `"90s"`...).
    pub fn policy_name(&self) -> PolicyName {
        match self.period_seconds {
            1 => PolicyName::Second,
            60 => PolicyName::Minute,
            3600 => PolicyName::Hour,
            86_400 => PolicyName::Day,
            s => PolicyName::Seconds(s),
        }
    }
}

/// What to do when a monthly quota is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Overage {
    /// Refuse with `QUOTA_EXCEEDED` until the next month.
    #[default]
    Block,
    /// Keep serving; the overage is counted for billing.
    Allow,
}

/// The limits that apply to a key (its plan's, or its own overrides).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default)]
    pub rate_limits: Vec<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_quota: Option<u64>,
    #[serde(default)]
    pub overage: Overage,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.rate_limits.is_empty() && self.monthly_quota.is_none()
    }
}

/// A key's own limits, each replacing its plan's when present.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<Vec<RateLimit>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_quota: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overage: Option<Overage>,
}

impl LimitsOverride {
    pub fn is_empty(&self) -> bool {
        self.rate_limits.is_none() && self.monthly_quota.is_none() && self.overage.is_none()
    }

    /// The plan's limits with this override applied.
    pub fn apply(&self, plan: Option<&Limits>) -> Limits {
        let base = plan.cloned().unwrap_or_default();
        Limits {
            rate_limits: self.rate_limits.clone().unwrap_or(base.rate_limits),
            monthly_quota: self.monthly_quota.or(base.monthly_quota),
            overage: self.overage.unwrap_or(base.overage),
        }
    }
}

/// The calendar month (UTC) containing `at`, as months since year 0, and when it ends.
pub fn month_of(at: UnixMillis) -> (i32, UnixMillis) {
    let date = time::OffsetDateTime::from_unix_timestamp(at.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let index = date.year() * 12 + i32::from(u8::from(date.month())) - 1;
    (index, month_start(index + 1))
}

/// The first instant of month `index` (months since year 0), in Unix milliseconds.
pub fn month_start(index: i32) -> UnixMillis {
    let year = index.div_euclid(12);
    let month = u8::try_from(index.rem_euclid(12) + 1).unwrap_or(1);
    let month = time::Month::try_from(month).unwrap_or(time::Month::January);
    time::Date::from_calendar_date(year, month, 1)
        .map(|d| d.midnight().assume_utc().unix_timestamp() * 1000)
        .unwrap_or(0)
}

/// The state of one limit after a decision, for the `RateLimit` response fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitStatus {
    pub name: PolicyName,
    pub limit: u64,
    pub window_seconds: u64,
    pub remaining: u64,
    /// Seconds until the limit is fully available again (rate) or the month ends (quota).
    pub reset_seconds: u64,
}

/// Why a request was refused by a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitRefusal {
    RateLimited { retry_after_ms: i64 },
    QuotaExceeded { retry_after_ms: i64 },
}

const NANOS_PER_MS: i64 = 1_000_000;
const NANOS_PER_SEC: i64 = 1_000_000_000;

/// Rate limits a route puts in place of a key's own (a route policy's `rate_limits`):
/// counted per key and route, while the key's monthly quota still applies and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLimits<'a> {
    /// The route's place among the route policies: its limiter state is kept under it.
    pub route: u32,
    /// Empty: no rate limit on the route.
    pub rate_limits: &'a [RateLimit],
}

/// The GCRA state of one set of rate limits.
#[derive(Debug, Default, Clone, PartialEq)]
struct RateState {
    /// Theoretical arrival times in nanoseconds: whole milliseconds would lose a burst
    /// slot when the interval is not a whole millisecond, and floats drift.
    tats: Vec<i64>,
    /// The rate limits the TATs belong to; any change starts them afresh.
    seen: Vec<RateLimit>,
    /// Per limit: emission interval and burst tolerance in nanoseconds, computed once
    /// (64-bit divisions are the expensive part of the check).
    gcra: Vec<(i64, i64)>,
}

impl RateState {
    /// Makes the state track `rate_limits`, starting afresh when they changed.
    fn track(&mut self, rate_limits: &[RateLimit]) {
        if self.seen != rate_limits {
            // The limits changed (plan edit): start the new ones fresh.
            self.tats = vec![i64::MIN; rate_limits.len()];
            self.seen = rate_limits.to_vec();
            self.gcra = rate_limits
                .iter()
                .map(|l| {
                    let t = l.interval_ns();
                    (t, t.saturating_mul(i64::from(l.burst() - 1)))
                })
                .collect();
        }
    }
}

/// Per-key limiter state: one TAT per rate limit (the key's own, and those of routes
/// that replace them), and this month's quota use.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LimitState {
    /// The key's own rate limits.
    rate: RateState,
    /// Rate limits of routes that replace the key's, by route.
    routes: Vec<(u32, RateState)>,
    /// Bounds of `month`, cached so the calendar is consulted once a month.
    month_start: UnixMillis,
    month_end: UnixMillis,
    /// The month `used` counts, as from [`month_of`].
    pub month: i32,
    /// Requests counted against the quota this month (including overage).
    pub used: u64,
    /// Quota use not yet written to the store, per month (two entries across a month
    /// change until the next flush).
    unflushed: Vec<(i32, u64)>,
}

fn ceil_secs(ms: i64) -> u64 {
    u64::try_from((ms.max(0) + 999) / 1000).unwrap_or(0)
}

impl LimitState {
    /// Seeds this month's use from the store (at start-up).
    pub fn with_quota_use(month: i32, used: u64) -> Self {
        Self {
            month,
            used,
            ..Self::default()
        }
    }

    /// Checks every limit at `now`; if all allow, consumes one request from each and
    /// counts it against the quota. On refusal nothing is consumed. The states of the
    /// limits after the decision come back either way.
    pub fn admit(
        &mut self,
        limits: &Limits,
        now: UnixMillis,
    ) -> (Result<(), LimitRefusal>, LimitStatuses) {
        self.admit_with(
            &limits.rate_limits,
            None,
            limits.monthly_quota,
            limits.overage,
            now,
        )
    }

    /// [`LimitState::admit`] on a route whose rate limits replace the key's own; the
    /// key's monthly quota (from `limits`, if it has any) still applies and counts.
    pub fn admit_on_route(
        &mut self,
        limits: Option<&Limits>,
        route: RouteLimits<'_>,
        now: UnixMillis,
    ) -> (Result<(), LimitRefusal>, LimitStatuses) {
        self.admit_with(
            route.rate_limits,
            Some(route.route),
            limits.and_then(|l| l.monthly_quota),
            limits.map(|l| l.overage).unwrap_or_default(),
            now,
        )
    }

    fn admit_with(
        &mut self,
        rate_limits: &[RateLimit],
        route: Option<u32>,
        monthly_quota: Option<u64>,
        overage: Overage,
        now: UnixMillis,
    ) -> (Result<(), LimitRefusal>, LimitStatuses) {
        let rate = match route {
            None => &mut self.rate,
            Some(route) => {
                let at = match self.routes.iter().position(|(r, _)| *r == route) {
                    Some(at) => at,
                    None => {
                        self.routes.push((route, RateState::default()));
                        self.routes.len() - 1
                    }
                };
                &mut self.routes[at].1
            }
        };
        rate.track(rate_limits);
        if now < self.month_start || now >= self.month_end {
            let (month, month_end) = month_of(now);
            if month != self.month {
                self.month = month;
                self.used = 0;
            }
            self.month_start = month_start(month);
            self.month_end = month_end;
        }
        // Rate limits first: a request refused here does not spend quota. The first pass
        // only reads, so a refusal by any limit consumes none of them.
        let mut denied: Option<i64> = None;
        let now_ns = now.saturating_mul(NANOS_PER_MS);
        for (limit, tat) in rate_limits.iter().zip(&rate.tats) {
            let ahead = (*tat).max(now_ns) - now_ns;
            let tolerance = limit
                .interval_ns()
                .saturating_mul(i64::from(limit.burst() - 1));
            if ahead > tolerance {
                // Whole milliseconds, rounded up, so a retry at that time succeeds.
                let wait = (ahead - tolerance + NANOS_PER_MS - 1) / NANOS_PER_MS;
                denied = Some(denied.map_or(wait, |w| w.max(wait)));
            }
        }
        let quota_refused = denied.is_none()
            && monthly_quota.is_some_and(|quota| self.used >= quota)
            && overage == Overage::Block;
        let admitted = denied.is_none() && !quota_refused;
        let mut statuses = LimitStatuses::default();
        for ((limit, &(t, tolerance)), tat) in
            rate_limits.iter().zip(&rate.gcra).zip(rate.tats.iter_mut())
        {
            let start = (*tat).max(now_ns);
            let after = if admitted {
                start.saturating_add(t)
            } else {
                start
            };
            if admitted {
                *tat = after;
            }
            let ahead = after - now_ns;
            statuses.push(LimitStatus {
                name: limit.policy_name(),
                limit: u64::from(limit.limit),
                window_seconds: limit.period_seconds,
                remaining: u64::try_from((tolerance + t - ahead).max(0) / t).unwrap_or(0),
                reset_seconds: u64::try_from((ahead + NANOS_PER_SEC - 1) / NANOS_PER_SEC)
                    .unwrap_or(0),
            });
        }
        if let Some(quota) = monthly_quota {
            if admitted {
                self.used += 1;
                match self.unflushed.last_mut() {
                    Some((month, n)) if *month == self.month => *n += 1,
                    _ => self.unflushed.push((self.month, 1)),
                }
            }
            statuses.push(LimitStatus {
                name: PolicyName::Month,
                limit: quota,
                window_seconds: 2_592_000,
                remaining: quota.saturating_sub(self.used),
                reset_seconds: ceil_secs(self.month_end - now),
            });
        }
        let outcome = match denied {
            Some(wait) => Err(LimitRefusal::RateLimited {
                retry_after_ms: wait,
            }),
            None if quota_refused => Err(LimitRefusal::QuotaExceeded {
                retry_after_ms: self.month_end - now,
            }),
            None => Ok(()),
        };
        (outcome, statuses)
    }

    /// What a rotation hands to the replacement key: the rate-limit state and the
    /// month's use (not the unflushed part, which belongs to the old key's rows).
    pub fn carried(&self) -> LimitState {
        LimitState {
            unflushed: Vec::new(),
            ..self.clone()
        }
    }

    /// Takes over a rotated key's state, keeping this key's own unflushed count.
    pub fn inherit(&mut self, carried: LimitState) {
        let unflushed = std::mem::take(&mut self.unflushed);
        let used = self.used;
        *self = carried;
        self.used += used;
        self.unflushed = unflushed;
    }

    /// Takes the quota use not yet written, per month.
    pub fn take_unflushed(&mut self) -> Vec<(i32, u64)> {
        std::mem::take(&mut self.unflushed)
    }

    /// Puts back quota use that could not be written.
    pub fn restore_unflushed(&mut self, month: i32, n: u64) {
        match self.unflushed.iter_mut().find(|(m, _)| *m == month) {
            Some((_, count)) => *count += n,
            None => self.unflushed.insert(0, (month, n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_minute(limit: u32) -> Limits {
        Limits {
            rate_limits: vec![RateLimit {
                limit,
                period_seconds: 60,
                burst: None,
            }],
            ..Limits::default()
        }
    }

    #[test]
    fn limit_statuses_collect_past_the_inline_room() {
        let statuses: Vec<LimitStatus> = (0..5)
            .map(|remaining| LimitStatus {
                remaining,
                ..LimitStatus::default()
            })
            .collect();
        for n in [0, 2, 3, 4, 5] {
            let all: LimitStatuses = statuses[..n].iter().copied().collect();
            assert_eq!(all.as_slice(), &statuses[..n]);
        }
    }

    #[test]
    fn a_routes_rate_limits_replace_the_keys_and_are_counted_apart() {
        let mut state = LimitState::default();
        let key = Limits {
            monthly_quota: Some(5),
            ..per_minute(3)
        };
        let strict = [RateLimit {
            limit: 1,
            period_seconds: 60,
            burst: None,
        }];
        let convert = RouteLimits {
            route: 2,
            rate_limits: &strict,
        };
        let unlimited = RouteLimits {
            route: 4,
            rate_limits: &[],
        };
        let now = 1_800_000_000_000;
        // The route's one a minute, whatever the key's three.
        let (outcome, statuses) = state.admit_on_route(Some(&key), convert, now);
        assert!(outcome.is_ok());
        // Its statuses are the route's limit and the key's quota.
        assert_eq!(statuses.as_slice()[0].limit, 1);
        assert_eq!(statuses.as_slice()[1].name, PolicyName::Month);
        assert_eq!(statuses.as_slice()[1].remaining, 4);
        assert!(matches!(
            state.admit_on_route(Some(&key), convert, now).0,
            Err(LimitRefusal::RateLimited { .. })
        ));
        // The key's own limits elsewhere are untouched by the route's use...
        for _ in 0..3 {
            assert!(state.admit(&key, now).0.is_ok());
        }
        assert!(state.admit(&key, now).0.is_err());
        // ...and a route without rate limits is limited by the quota alone, which every
        // admitted request has counted: one on the route, three elsewhere.
        assert!(state.admit_on_route(Some(&key), unlimited, now).0.is_ok());
        assert!(matches!(
            state.admit_on_route(Some(&key), unlimited, now).0,
            Err(LimitRefusal::QuotaExceeded { .. })
        ));
        assert_eq!(state.used, 5);
        // A key without limits of its own still gets the route's.
        let mut bare = LimitState::default();
        assert!(bare.admit_on_route(None, convert, now).0.is_ok());
        assert!(bare.admit_on_route(None, convert, now).0.is_err());
        assert!(bare.admit_on_route(None, unlimited, now).0.is_ok());
    }

    #[test]
    fn ten_per_minute_refuses_the_eleventh_with_the_right_wait() {
        let mut state = LimitState::default();
        let limits = per_minute(10);
        let now = 1_800_000_000_000;
        for i in 0..10 {
            let (outcome, statuses) = state.admit(&limits, now);
            assert!(outcome.is_ok());
            assert_eq!(statuses.as_slice()[0].remaining, 9 - i);
        }
        let (outcome, statuses) = state.admit(&limits, now);
        let refusal = outcome.expect_err("11th refused");
        assert_eq!(
            refusal,
            LimitRefusal::RateLimited {
                retry_after_ms: 6000
            }
        );
        assert_eq!(statuses.as_slice()[0].remaining, 0);
        // After the emission interval one more fits.
        assert!(state.admit(&limits, now + 6000).0.is_ok());
        assert!(state.admit(&limits, now + 6000).0.is_err());
        // After a full period the whole burst is back.
        for _ in 0..10 {
            assert!(state.admit(&limits, now + 6000 + 60_000).0.is_ok());
        }
    }

    #[test]
    fn burst_and_several_limits() {
        let limits = Limits {
            rate_limits: vec![
                RateLimit {
                    limit: 60,
                    period_seconds: 60,
                    burst: Some(2),
                },
                RateLimit {
                    limit: 3,
                    period_seconds: 3600,
                    burst: None,
                },
            ],
            ..Limits::default()
        };
        let mut state = LimitState::default();
        let now = 1_800_000_000_000;
        assert!(state.admit(&limits, now).0.is_ok());
        assert!(state.admit(&limits, now).0.is_ok());
        // Burst of 2 used: the per-second pacing refuses; the hourly limit was not spent.
        assert_eq!(
            state.admit(&limits, now).0.expect_err("burst"),
            LimitRefusal::RateLimited {
                retry_after_ms: 1000
            }
        );
        assert!(state.admit(&limits, now + 1000).0.is_ok());
        // The hourly limit (3) is the one that refuses now, for about 20 minutes.
        let refusal = state.admit(&limits, now + 5000).0.expect_err("hourly");
        assert!(
            matches!(refusal, LimitRefusal::RateLimited { retry_after_ms } if retry_after_ms > 1_190_000)
        );
    }

    #[test]
    fn quota_blocks_or_counts_overage_and_resets_monthly() {
        let jan = month_start(2030 * 12);
        let feb = month_start(2030 * 12 + 1);
        assert_eq!(month_of(jan), (2030 * 12, feb));
        assert_eq!(month_of(feb - 1).0, 2030 * 12);
        let mut limits = Limits {
            monthly_quota: Some(2),
            ..Limits::default()
        };
        let mut state = LimitState::default();
        assert!(state.admit(&limits, jan).0.is_ok());
        assert!(state.admit(&limits, jan).0.is_ok());
        let (outcome, statuses) = state.admit(&limits, jan + 1000);
        let refusal = outcome.expect_err("quota");
        assert_eq!(
            refusal,
            LimitRefusal::QuotaExceeded {
                retry_after_ms: feb - jan - 1000
            }
        );
        assert_eq!(statuses.as_slice()[0].remaining, 0);
        limits.overage = Overage::Allow;
        assert!(state.admit(&limits, jan + 2000).0.is_ok());
        assert_eq!(state.used, 3);
        assert_eq!(state.take_unflushed(), vec![(2030 * 12, 3)]);
        // A new month starts from zero.
        limits.overage = Overage::Block;
        assert!(state.admit(&limits, feb).0.is_ok());
        assert_eq!(state.used, 1);
    }

    #[test]
    fn a_rate_limited_request_does_not_spend_quota() {
        let limits = Limits {
            monthly_quota: Some(100),
            ..per_minute(1)
        };
        let mut state = LimitState::default();
        let now = 1_800_000_000_000;
        assert!(state.admit(&limits, now).0.is_ok());
        assert!(state.admit(&limits, now).0.is_err());
        assert_eq!(state.used, 1);
    }

    #[test]
    fn statuses_spill_past_the_inline_ones_in_order() {
        let mut statuses = LimitStatuses::default();
        for limit in 0..5 {
            statuses.push(LimitStatus {
                limit,
                ..LimitStatus::default()
            });
            assert_eq!(statuses.as_slice().len() as u64, limit + 1);
        }
        let limits: Vec<u64> = statuses.as_slice().iter().map(|s| s.limit).collect();
        assert_eq!(limits, vec![0, 1, 2, 3, 4]);
        assert_eq!(PolicyName::Seconds(90).to_string(), "90s");
    }

    #[test]
    fn fractional_intervals_keep_their_burst_and_fast_limits_their_rate() {
        let now = 1_800_000_000_000;
        // 7 per minute: an interval of 8571.4 ms; all 7 fit at once.
        let limits = per_minute(7);
        let mut state = LimitState::default();
        assert_eq!(
            (0..8)
                .filter(|_| state.admit(&limits, now).0.is_ok())
                .count(),
            7
        );
        // 100,000 per minute (0.6 ms apart): a full burst, not one per millisecond.
        let limits = per_minute(100_000);
        let mut state = LimitState::default();
        assert_eq!(
            (0..100_001)
                .filter(|_| state.admit(&limits, now).0.is_ok())
                .count(),
            100_000
        );
    }

    #[test]
    fn a_changed_limit_starts_fresh_and_month_changes_keep_their_counts_apart() {
        let now = month_start(2030 * 12 + 1) - 1000;
        let mut state = LimitState::default();
        let daily = Limits {
            rate_limits: vec![RateLimit {
                limit: 1,
                period_seconds: 86_400,
                burst: None,
            }],
            monthly_quota: Some(100),
            ..Limits::default()
        };
        assert!(state.admit(&daily, now).0.is_ok());
        assert!(state.admit(&daily, now).0.is_err());
        let generous = per_minute(1000);
        assert!(
            state
                .admit(
                    &Limits {
                        monthly_quota: Some(100),
                        ..generous
                    },
                    now
                )
                .0
                .is_ok(),
            "new values, same count of limits"
        );
        // Across the month boundary the unflushed counts stay with their months.
        assert!(state.admit(&daily, now + 2000).0.is_ok());
        assert_eq!(
            state.take_unflushed(),
            vec![(2030 * 12, 2), (2030 * 12 + 1, 1)]
        );
        state.restore_unflushed(2030 * 12, 2);
        assert_eq!(state.take_unflushed(), vec![(2030 * 12, 2)]);
    }

    #[test]
    fn validation() {
        assert!(
            RateLimit {
                limit: 0,
                period_seconds: 60,
                burst: None
            }
            .validate()
            .is_err()
        );
        assert!(
            RateLimit {
                limit: 1,
                period_seconds: 0,
                burst: None
            }
            .validate()
            .is_err()
        );
        assert!(
            RateLimit {
                limit: 1,
                period_seconds: 60,
                burst: Some(0)
            }
            .validate()
            .is_err()
        );
        assert!(
            RateLimit {
                limit: 1,
                period_seconds: 60,
                burst: Some(5)
            }
            .validate()
            .is_ok()
        );
    }
}
