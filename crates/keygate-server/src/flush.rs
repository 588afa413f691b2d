//! Writing in-memory usage counts to the store in batches, and pruning the change feed.
//!
//! What a crash can lose: usage counted since the last flush (at most one flush interval,
//! 5 s by default). A clean stop (SIGTERM/SIGINT) flushes before exiting.

use crate::clock::now_ms;
use crate::engine::Engine;
use keygate_store::{Store, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often old change-feed entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

pub struct Flusher {
    pub engine: Arc<Engine>,
    pub store: Arc<dyn Store>,
    pub feed_retention: Duration,
    pub usage_minute_retention: Duration,
    pub usage_hour_retention: Duration,
}

impl Flusher {
    /// Writes everything counted so far; on failure the counts go back to the ledger.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let deltas = self.engine.ledger.drain();
        if deltas.is_empty() {
            return Ok(0);
        }
        let written = deltas.len();
        if let Err(err) = self.store.add_usage(&deltas).await {
            let index = self.engine.index();
            self.engine.ledger.restore(deltas, |id| {
                index.get_by_id(id).map(|k| Arc::clone(&k.usage))
            });
            return Err(err);
        }
        metrics::counter!("keygate_usage_flushed_keys_total").increment(written as u64);
        Ok(written)
    }

    pub async fn run(self, interval: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune = Instant::now();
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if let Err(err) = self.flush().await {
                        tracing::warn!(error = %err, "usage flush failed; counts kept for the next try");
                    }
                    if last_prune.elapsed() >= PRUNE_EVERY {
                        last_prune = Instant::now();
                        let before = now_ms() - i64::try_from(self.feed_retention.as_millis()).unwrap_or(i64::MAX);
                        if let Err(err) = self.store.prune_changes(before).await {
                            tracing::warn!(error = %err, "change feed pruning failed");
                        }
                        let ago = |d: Duration| now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                        let rolled = self
                            .store
                            .roll_up_usage(ago(self.usage_minute_retention), ago(self.usage_hour_retention))
                            .await;
                        if let Err(err) = rolled {
                            tracing::warn!(error = %err, "usage roll-up failed");
                        }
                    }
                }
                _ = stop.changed() => break,
            }
        }
        // The final flush on a clean stop.
        match self.flush().await {
            Ok(keys) => tracing::info!(keys, "usage counters flushed at shutdown"),
            Err(err) => tracing::error!(error = %err, "usage flush at shutdown failed"),
        }
    }
}
