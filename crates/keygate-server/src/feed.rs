//! Following the store's change feed into the in-memory index.
//!
//! Every node polls `changes_since(applied)`; writes made through this node's API call
//! [`Feed::sync`] right after committing so the writer reads its own write at once. Both
//! paths go through the same lock, so changes are applied in order exactly once.

use crate::clock::now_ms;
use crate::engine::Engine;
use keygate_store::{Entity, Store, StoreError};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use uuid::Uuid;

/// Changes read per store round trip.
const BATCH: u32 = 1000;

pub struct Feed {
    engine: Arc<Engine>,
    store: Arc<dyn Store>,
    lock: tokio::sync::Mutex<()>,
}

impl Feed {
    pub fn new(engine: Arc<Engine>, store: Arc<dyn Store>) -> Self {
        Self {
            engine,
            store,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Applies every change after this node's position. Returns how many were applied.
    pub async fn sync(&self) -> Result<usize, StoreError> {
        let _guard = self.lock.lock().await;
        let position = &self.engine.feed;
        let mut applied = 0;
        loop {
            let after = position.applied_seq.load(Ordering::Acquire);
            let changes = self.store.changes_since(after, BATCH).await?;
            let Some(last) = changes.last().map(|c| c.seq) else {
                break;
            };
            let mut key_ids = HashSet::new();
            let mut user_ids = HashSet::new();
            let mut plan_ids = HashSet::new();
            let mut project_ids = HashSet::new();
            let mut settings_changed = false;
            let mut families_changed = false;
            for change in &changes {
                let ids = match change.entity {
                    Entity::Key => &mut key_ids,
                    Entity::Plan => &mut plan_ids,
                    Entity::Project => &mut project_ids,
                    Entity::User => &mut user_ids,
                    Entity::Settings => {
                        settings_changed = true;
                        continue;
                    }
                    Entity::Family => {
                        families_changed = true;
                        continue;
                    }
                };
                match Uuid::parse_str(&change.entity_id) {
                    Ok(id) => {
                        ids.insert(id);
                    }
                    Err(_) => {
                        tracing::warn!(seq = change.seq, "change feed entry with a bad id skipped")
                    }
                }
            }
            // Users first, so a key and its owner's change land together.
            if !user_ids.is_empty() {
                let ids: Vec<Uuid> = user_ids.into_iter().collect();
                let users = self.store.users_by_id(&ids).await?;
                let found: HashSet<Uuid> = users.iter().map(|u| u.id).collect();
                let removed: Vec<Uuid> = ids.into_iter().filter(|id| !found.contains(id)).collect();
                self.engine.apply_users(users, &removed);
            }
            for id in project_ids {
                let project = self.store.get_project(id).await?;
                self.engine.apply_project(
                    id,
                    project.map(|p| p.members.iter().map(|(user, _)| *user).collect()),
                );
            }
            for id in plan_ids {
                let plan = self.store.get_plan(id).await?;
                self.engine.apply_plan(id, plan.map(|p| p.limits));
            }
            if families_changed {
                self.engine
                    .apply_revoked_families(self.store.revoked_families(now_ms()).await?);
            }
            let ids: Vec<Uuid> = key_ids.into_iter().collect();
            let records = self.store.keys_by_id(&ids).await?;
            let found: HashSet<Uuid> = records.iter().map(|r| r.id).collect();
            let removed: Vec<Uuid> = ids.into_iter().filter(|id| !found.contains(id)).collect();
            if settings_changed {
                self.engine.apply_settings(self.store.settings().await?);
            }
            self.engine.apply_keys(records, &removed);
            position.applied_seq.store(last, Ordering::Release);
            applied += changes.len();
            if changes.len() < BATCH as usize {
                break;
            }
        }
        let latest = self.store.latest_seq().await?;
        position.store_seq.store(latest, Ordering::Release);
        position.last_poll_at.store(now_ms(), Ordering::Release);
        if applied > 0 {
            tracing::debug!(
                applied,
                seq = position.applied_seq.load(Ordering::Relaxed),
                "change feed applied"
            );
        }
        Ok(applied)
    }

    /// Polls until `stop` fires.
    pub async fn run(
        self: Arc<Self>,
        interval: std::time::Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if let Err(err) = self.sync().await {
                        tracing::warn!(error = %err, "change feed poll failed; will retry");
                    }
                }
                _ = stop.changed() => break,
            }
        }
    }
}
