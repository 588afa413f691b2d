//! The in-memory index of every key (hash → record), including revoked and expired ones so
//! their refusals are precise. Built at start-up and kept current from the change feed by
//! the server; this type itself is a plain data structure.

use crate::key_format::KeyHash;
use crate::limit::Limits;
use crate::record::{KeyOrigin, KeyRecord, KeyState, UnixMillis};
use crate::usage::UsageCounter;
use crate::user::OwnerState;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// A key record with its live state and the limits that apply to it.
#[derive(Debug)]
pub struct IndexedKey {
    pub record: KeyRecord,
    pub usage: Arc<UsageCounter>,
    /// The plan's limits with the key's overrides applied; `None` when unlimited.
    pub limits: Option<Arc<Limits>>,
    /// What the server renders from the record once rather than per request.
    pub derived: Derived,
}

/// A slot for what an outer layer derives from a key entry once and reuses on every
/// request (the server keeps the key's identity header values here, which would
/// otherwise be formatted and copied for each allowed request). Any change to a key
/// makes a new entry, so nothing kept here outlives the record it was made from.
#[derive(Default)]
pub struct Derived(std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>);

impl Derived {
    /// The value kept here, made by `make` on first use. `None` only if another type was
    /// kept here first (one layer owns the slot).
    pub fn get_or_init<T: std::any::Any + Send + Sync>(
        &self,
        make: impl FnOnce() -> T,
    ) -> Option<&T> {
        self.0.get_or_init(|| Box::new(make())).downcast_ref()
    }
}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Derived(set)"
        } else {
            "Derived(unset)"
        })
    }
}

impl IndexedKey {
    /// Uses counted by this node and not yet flushed, added to the stored count.
    pub fn usage_count(&self) -> u64 {
        self.record.usage_count + self.usage.pending()
    }

    /// The later of the stored and the in-memory last use.
    pub fn last_used_at(&self) -> Option<UnixMillis> {
        self.record.last_used_at.max(self.usage.last_used_at())
    }
}

/// Key counts by state, for system info and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StateCounts {
    pub active: usize,
    pub disabled: usize,
    pub expired: usize,
    pub revoked: usize,
}

#[derive(Debug, Default)]
pub struct KeyIndex {
    by_hash: HashMap<KeyHash, Arc<IndexedKey>>,
    hash_of: HashMap<Uuid, KeyHash>,
    imported: usize,
    /// Key owners: a key whose owner is disabled or gone stops working at once.
    owners: HashMap<Uuid, OwnerState>,
    /// The id of the instance's global key (the latest one seen with the flag).
    global: Option<Uuid>,
    /// Plans by id: their limits, resolved into each key's `limits` on upsert.
    plans: HashMap<Uuid, Limits>,
    /// Projects and their members.
    projects: HashMap<Uuid, std::collections::HashSet<Uuid>>,
}

impl KeyIndex {
    pub fn from_records(records: impl IntoIterator<Item = KeyRecord>) -> Self {
        let mut index = Self::default();
        for record in records {
            index.upsert(record);
        }
        index
    }

    /// Inserts or replaces a record, keeping the live usage counter of the same key.
    pub fn upsert(&mut self, record: KeyRecord) {
        let usage = match self.remove(record.id) {
            Some(old) => Arc::clone(&old.usage),
            None => Arc::new(UsageCounter::new(record.last_used_at)),
        };
        if record.origin == KeyOrigin::Imported {
            self.imported += 1;
        }
        if record.global {
            self.global = Some(record.id);
        }
        self.hash_of.insert(record.id, record.hash);
        let limits = self.limits_for(&record);
        self.by_hash.insert(
            record.hash,
            Arc::new(IndexedKey {
                record,
                usage,
                limits,
                derived: Derived::default(),
            }),
        );
    }

    /// Removes a key (used when a record vanished from the store).
    pub fn remove(&mut self, id: Uuid) -> Option<Arc<IndexedKey>> {
        let hash = self.hash_of.remove(&id)?;
        let old = self.by_hash.remove(&hash)?;
        if self.global == Some(id) {
            self.global = None;
        }
        if old.record.origin == KeyOrigin::Imported {
            self.imported -= 1;
        }
        Some(old)
    }

    fn limits_for(&self, record: &KeyRecord) -> Option<Arc<Limits>> {
        let plan = record.plan.and_then(|id| self.plans.get(&id));
        let limits = record.limits.apply(plan);
        (!limits.is_empty()).then(|| Arc::new(limits))
    }

    /// Inserts, replaces or (with `None`) removes a plan, and re-resolves its keys' limits.
    pub fn set_plan(&mut self, id: Uuid, limits: Option<Limits>) {
        match limits {
            Some(limits) => self.plans.insert(id, limits),
            None => self.plans.remove(&id),
        };
        let affected: Vec<KeyRecord> = self
            .by_hash
            .values()
            .filter(|k| k.record.plan == Some(id))
            .map(|k| k.record.clone())
            .collect();
        for record in affected {
            self.upsert(record);
        }
    }

    /// Inserts, replaces or (with `None`) removes a project and its members.
    pub fn set_project(&mut self, id: Uuid, members: Option<std::collections::HashSet<Uuid>>) {
        match members {
            Some(members) => self.projects.insert(id, members),
            None => self.projects.remove(&id),
        };
    }

    pub fn project_exists(&self, project: Uuid) -> bool {
        self.projects.contains_key(&project)
    }

    /// `None` if the project does not exist, else whether `user` is a member.
    pub fn is_member(&self, project: Uuid, user: Uuid) -> Option<bool> {
        self.projects
            .get(&project)
            .map(|members| members.contains(&user))
    }

    /// Inserts or replaces what the hot path knows about a user.
    pub fn upsert_owner(&mut self, id: Uuid, state: OwnerState) {
        self.owners.insert(id, state);
    }

    pub fn remove_owner(&mut self, id: Uuid) {
        self.owners.remove(&id);
    }

    pub fn owner(&self, id: Uuid) -> Option<OwnerState> {
        self.owners.get(&id).copied()
    }

    pub fn get_by_hash(&self, hash: &KeyHash) -> Option<&Arc<IndexedKey>> {
        self.by_hash.get(hash)
    }

    pub fn get_by_id(&self, id: Uuid) -> Option<&Arc<IndexedKey>> {
        self.by_hash.get(self.hash_of.get(&id)?)
    }

    /// Visits every key.
    pub fn for_each(&self, mut f: impl FnMut(&IndexedKey)) {
        self.by_hash.values().for_each(|k| f(k));
    }

    /// Every key, shared: a caller can keep the ones it wants after the index is
    /// released (listing pages copy pointers under the lock, not records).
    pub fn shared(&self) -> impl Iterator<Item = &Arc<IndexedKey>> {
        self.by_hash.values()
    }

    /// The instance's global admin key.
    pub fn global_key(&self) -> Option<&Arc<IndexedKey>> {
        self.get_by_id(self.global?)
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Number of imported (non-keygate-format) keys; when zero, a value that is not in
    /// the keygate format can be refused as malformed without hashing it.
    pub fn imported_count(&self) -> usize {
        self.imported
    }

    pub fn counts_by_state(&self, now: UnixMillis) -> StateCounts {
        let mut counts = StateCounts::default();
        for key in self.by_hash.values() {
            match key.record.state(now) {
                KeyState::Active => counts.active += 1,
                KeyState::Disabled => counts.disabled += 1,
                KeyState::Expired => counts.expired += 1,
                KeyState::Revoked => counts.revoked += 1,
            }
        }
        counts
    }
}

#[cfg(test)]
mod derived_tests {
    use super::Derived;

    #[test]
    fn a_derived_value_is_made_once_and_kept() {
        let slot = Derived::default();
        let mut made = 0;
        for _ in 0..3 {
            let value = slot.get_or_init(|| {
                made += 1;
                String::from("kept")
            });
            assert_eq!(value.map(String::as_str), Some("kept"));
        }
        assert_eq!(made, 1);
        // Another type than the one kept: none, never a wrong value.
        assert_eq!(slot.get_or_init(|| 7_u32), None);
        assert_eq!(format!("{slot:?}"), "Derived(set)");
    }
}
