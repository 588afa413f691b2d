//! In-memory usage counting for the hot path, drained in batches by a flusher.
//!
//! Counting a request is two atomic operations; the first use of a key since the last
//! flush also pushes it onto the ledger's queue, so a flush touches only keys that were
//! used, never the whole index.

use crate::limit::LimitState;
use crate::record::UnixMillis;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use uuid::Uuid;

/// Per-key live state: usage not yet written to the store, and the limiter.
#[derive(Debug, Default)]
pub struct UsageCounter {
    pending: AtomicU64,
    last_used_at: AtomicI64,
    queued: AtomicBool,
    /// Rate-limit and quota state, under a per-key lock so concurrent requests with one
    /// key are admitted exactly (no lost updates, no double counting).
    pub limiter: Mutex<LimitState>,
    /// Decisions by outcome per minute, not yet flushed (usually one or two minutes).
    minutes: Mutex<Vec<MinuteCounts>>,
}

/// How a decision about a known key ended, for usage metering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Valid,
    RateLimited,
    QuotaExceeded,
    /// Any other refusal of a known key (revoked, expired, disabled, scope, IP, ...).
    Denied,
}

/// Decision counts of one key in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteCounts {
    /// Unix milliseconds of the minute's start.
    pub minute: UnixMillis,
    pub valid: u64,
    pub rate_limited: u64,
    pub quota_exceeded: u64,
    pub denied: u64,
}

impl MinuteCounts {
    pub fn total(&self) -> u64 {
        self.valid + self.rate_limited + self.quota_exceeded + self.denied
    }

    pub fn add(&mut self, other: &MinuteCounts) {
        self.valid += other.valid;
        self.rate_limited += other.rate_limited;
        self.quota_exceeded += other.quota_exceeded;
        self.denied += other.denied;
    }
}

impl UsageCounter {
    pub fn new(last_used_at: Option<UnixMillis>) -> Self {
        Self {
            pending: AtomicU64::new(0),
            last_used_at: AtomicI64::new(last_used_at.unwrap_or(0)),
            queued: AtomicBool::new(false),
            limiter: Mutex::new(LimitState::default()),
            minutes: Mutex::new(Vec::new()),
        }
    }

    /// Counts not yet flushed, per minute.
    pub fn unflushed_minutes(&self) -> Vec<MinuteCounts> {
        self.minutes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn count(&self, outcome: Outcome, now: UnixMillis) {
        let minute = now - now.rem_euclid(60_000);
        let mut minutes = self.minutes.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = match minutes.iter_mut().rev().find(|m| m.minute == minute) {
            Some(slot) => slot,
            None => {
                minutes.push(MinuteCounts {
                    minute,
                    ..MinuteCounts::default()
                });
                minutes
                    .last_mut()
                    .unwrap_or_else(|| unreachable!("just pushed"))
            }
        };
        match outcome {
            Outcome::Valid => slot.valid += 1,
            Outcome::RateLimited => slot.rate_limited += 1,
            Outcome::QuotaExceeded => slot.quota_exceeded += 1,
            Outcome::Denied => slot.denied += 1,
        }
    }

    pub fn limiter(&self) -> std::sync::MutexGuard<'_, LimitState> {
        // The state is plain numbers; a panic while holding it leaves nothing half-done
        // that matters more than refusing every request would.
        self.limiter.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Uses counted since the last flush.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// The latest use known to this node, flushed or not.
    pub fn last_used_at(&self) -> Option<UnixMillis> {
        Some(self.last_used_at.load(Ordering::Relaxed)).filter(|at| *at > 0)
    }
}

/// One key's usage to add to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    pub key_id: Uuid,
    pub uses: u64,
    pub last_used_at: UnixMillis,
    /// Quota use to add: (month as from `limit::month_of`, count).
    pub quota: Vec<(i32, u64)>,
    /// Decisions per minute and outcome.
    pub minutes: Vec<MinuteCounts>,
}

/// The queue of keys with unflushed usage.
#[derive(Debug, Default)]
pub struct UsageLedger {
    queue: Mutex<Vec<(Uuid, Arc<UsageCounter>)>>,
}

impl UsageLedger {
    /// Counts one valid use of a key at `now`.
    pub fn record(&self, key_id: Uuid, counter: &Arc<UsageCounter>, now: UnixMillis) {
        self.record_outcome(key_id, counter, Outcome::Valid, now);
    }

    /// Counts a decision about a known key; a valid one is also a use (`last_used_at`).
    pub fn record_outcome(
        &self,
        key_id: Uuid,
        counter: &Arc<UsageCounter>,
        outcome: Outcome,
        now: UnixMillis,
    ) {
        if outcome == Outcome::Valid {
            counter.pending.fetch_add(1, Ordering::Relaxed);
            counter.last_used_at.fetch_max(now, Ordering::Relaxed);
        }
        counter.count(outcome, now);
        if !counter.queued.swap(true, Ordering::AcqRel) {
            self.lock().push((key_id, Arc::clone(counter)));
        }
    }

    /// Number of keys waiting to be flushed.
    pub fn queued(&self) -> usize {
        self.lock().len()
    }

    /// Takes everything counted so far. If writing the deltas fails, hand them back with
    /// [`UsageLedger::restore`] so nothing is lost.
    pub fn drain(&self) -> Vec<UsageDelta> {
        let taken = std::mem::take(&mut *self.lock());
        taken
            .into_iter()
            .filter_map(|(key_id, counter)| {
                // Clear the flag before taking the count: a use that lands in between
                // re-queues the key, so it is flushed next time rather than lost.
                counter.queued.store(false, Ordering::Release);
                let uses = counter.pending.swap(0, Ordering::AcqRel);
                let quota = counter.limiter().take_unflushed();
                let minutes = std::mem::take(
                    &mut *counter
                        .minutes
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner),
                );
                (uses > 0 || !quota.is_empty() || !minutes.is_empty()).then(|| UsageDelta {
                    key_id,
                    uses,
                    last_used_at: counter.last_used_at.load(Ordering::Relaxed),
                    quota,
                    minutes,
                })
            })
            .collect()
    }

    /// Puts back deltas that could not be written.
    pub fn restore(
        &self,
        deltas: Vec<UsageDelta>,
        counter_of: impl Fn(Uuid) -> Option<Arc<UsageCounter>>,
    ) {
        for delta in deltas {
            if let Some(counter) = counter_of(delta.key_id) {
                counter.pending.fetch_add(delta.uses, Ordering::AcqRel);
                for &(month, n) in &delta.quota {
                    counter.limiter().restore_unflushed(month, n);
                }
                {
                    let mut minutes = counter
                        .minutes
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    for restored in &delta.minutes {
                        match minutes.iter_mut().find(|m| m.minute == restored.minute) {
                            Some(slot) => slot.add(restored),
                            None => minutes.push(*restored),
                        }
                    }
                }
                if !counter.queued.swap(true, Ordering::AcqRel) {
                    self.lock().push((delta.key_id, counter));
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Uuid, Arc<UsageCounter>)>> {
        // The queue stays consistent even if a holder panicked: it is a plain Vec push/take.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `valid` decisions in the minute starting at 0.
    fn first_minute(valid: u64) -> Vec<MinuteCounts> {
        vec![MinuteCounts {
            minute: 0,
            valid,
            ..MinuteCounts::default()
        }]
    }

    #[test]
    fn outcomes_are_counted_per_minute() {
        let ledger = UsageLedger::default();
        let counter = Arc::new(UsageCounter::new(None));
        let id = Uuid::nil();
        ledger.record_outcome(id, &counter, Outcome::Valid, 60_000);
        ledger.record_outcome(id, &counter, Outcome::RateLimited, 60_500);
        ledger.record_outcome(id, &counter, Outcome::Denied, 120_000);
        assert_eq!(counter.pending(), 1, "only valid decisions are uses");
        let delta = ledger.drain().pop().expect("delta");
        assert_eq!(delta.minutes.len(), 2);
        assert_eq!(
            (
                delta.minutes[0].minute,
                delta.minutes[0].valid,
                delta.minutes[0].rate_limited
            ),
            (60_000, 1, 1)
        );
        assert_eq!(
            (
                delta.minutes[1].minute,
                delta.minutes[1].denied,
                delta.minutes[1].total()
            ),
            (120_000, 1, 1)
        );
        assert!(counter.unflushed_minutes().is_empty());
    }

    #[test]
    fn counts_queue_once_and_drain() {
        let ledger = UsageLedger::default();
        let id = Uuid::nil();
        let counter = Arc::new(UsageCounter::new(None));
        for now in [10, 30, 20] {
            ledger.record(id, &counter, now);
        }
        assert_eq!(ledger.queued(), 1);
        assert_eq!(
            ledger.drain(),
            vec![UsageDelta {
                key_id: id,
                uses: 3,
                last_used_at: 30,
                quota: vec![],
                minutes: first_minute(3),
            }]
        );
        assert_eq!(ledger.queued(), 0);
        assert!(ledger.drain().is_empty());
        ledger.record(id, &counter, 40);
        assert_eq!(ledger.drain()[0].uses, 1);
    }

    #[test]
    fn restore_puts_counts_back() {
        let ledger = UsageLedger::default();
        let id = Uuid::nil();
        let counter = Arc::new(UsageCounter::new(Some(5)));
        ledger.record(id, &counter, 50);
        let deltas = ledger.drain();
        ledger.record(id, &counter, 60);
        ledger.restore(deltas, |_| Some(Arc::clone(&counter)));
        let again = ledger.drain();
        assert_eq!(
            again,
            vec![UsageDelta {
                key_id: id,
                uses: 2,
                last_used_at: 60,
                quota: vec![],
                minutes: first_minute(2),
            }]
        );
    }

    #[test]
    fn concurrent_counting_loses_nothing() {
        let ledger = Arc::new(UsageLedger::default());
        let counter = Arc::new(UsageCounter::new(None));
        let total = std::thread::scope(|scope| {
            for t in 0..4 {
                let (ledger, counter) = (Arc::clone(&ledger), Arc::clone(&counter));
                scope.spawn(move || {
                    for i in 0..10_000 {
                        ledger.record(Uuid::nil(), &counter, t * 10_000 + i);
                    }
                });
            }
            let drainer = scope.spawn(|| {
                let mut sum = 0;
                for _ in 0..1000 {
                    sum += ledger.drain().iter().map(|d| d.uses).sum::<u64>();
                }
                sum
            });
            drainer.join().expect("drainer thread")
        });
        let rest: u64 = ledger.drain().iter().map(|d| d.uses).sum();
        assert_eq!(total + rest, 40_000);
    }
}
