//! keygate's storage: the [`Store`] trait, its SQLite implementation and the change feed.
//!
//! Architecture invariant: the store is never called on the verification hot path. The
//! server reads every key once at start-up and then follows [`Store::changes_since`].

mod sqlite;

pub use sqlite::SqliteStore;

use async_trait::async_trait;
use keygate_core::settings::InstanceSettings;
use keygate_core::usage::UsageDelta;
use keygate_core::{KeyRecord, UnixMillis};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write conflicts with what is stored (e.g. a key with the same hash exists).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A stored value could not be decoded: the database was changed outside keygate.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot open the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What kind of thing a change-feed entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Key,
    Settings,
}

impl Entity {
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Key => "key",
            Entity::Settings => "settings",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "key" => Some(Entity::Key),
            "settings" => Some(Entity::Settings),
            _ => None,
        }
    }
}

/// One entry of the change feed. Consumers reload the entity by id; the op is informative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    pub entity: Entity,
    pub entity_id: String,
    pub op: String,
}

/// Fields a key update may change; `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyUpdate {
    pub name: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub meta: Option<serde_json::Map<String, serde_json::Value>>,
    pub enabled: Option<bool>,
    /// `Some(None)` removes the expiry.
    pub expires_at: Option<Option<UnixMillis>>,
}

/// A page of the key list, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPage {
    pub limit: u32,
    pub offset: u64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every key, for building the in-memory index, and the feed position it reflects.
    async fn load_keys(&self) -> Result<(Vec<KeyRecord>, u64)>;
    /// The newest change-feed sequence number (0 when empty).
    async fn latest_seq(&self) -> Result<u64>;
    /// Changes after `after`, oldest first, at most `limit`.
    async fn changes_since(&self, after: u64, limit: u32) -> Result<Vec<Change>>;
    /// Drops feed entries older than `before` (nodes that start later read the full index).
    async fn prune_changes(&self, before: UnixMillis) -> Result<u64>;

    async fn get_key(&self, id: Uuid) -> Result<Option<KeyRecord>>;
    async fn keys_by_id(&self, ids: &[Uuid]) -> Result<Vec<KeyRecord>>;
    async fn list_keys(&self, page: KeyPage) -> Result<Vec<KeyRecord>>;
    /// Inserts a new key. [`StoreError::Conflict`] if its hash is already stored.
    async fn insert_key(&self, record: &KeyRecord) -> Result<()>;
    /// Inserts the instance's global key unless one exists; true when inserted.
    async fn insert_global_key_if_absent(&self, record: &KeyRecord) -> Result<bool>;
    async fn update_key(
        &self,
        id: Uuid,
        update: &KeyUpdate,
        now: UnixMillis,
    ) -> Result<Option<KeyRecord>>;
    /// Revokes a key (idempotent: a second revocation keeps the first time).
    async fn revoke_key(&self, id: Uuid, now: UnixMillis) -> Result<Option<KeyRecord>>;
    /// Stores `replacement` and makes the key `id` expire at `old_expires_at`, pointing to
    /// the replacement, in one transaction. Returns the updated old key.
    async fn rotate_key(
        &self,
        id: Uuid,
        replacement: &KeyRecord,
        old_expires_at: UnixMillis,
        now: UnixMillis,
    ) -> Result<Option<KeyRecord>>;
    /// Adds in-memory usage counts to the stored ones, in one transaction.
    async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<()>;

    async fn settings(&self) -> Result<InstanceSettings>;
    async fn put_settings(&self, settings: &InstanceSettings, now: UnixMillis) -> Result<()>;
}
