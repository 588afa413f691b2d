//! keygate's storage: the [`Store`] trait, its SQLite implementation and the change feed.
//!
//! Architecture invariant: the store is never called on the verification hot path. The
//! server reads every key once at start-up and then follows [`Store::changes_since`].

mod sqlite;
mod sqlite_webhooks;
pub mod webhooks;

pub use sqlite::SqliteStore;
pub use webhooks::{OutboxEvent, WebhookEndpoint, WebhookStore};

use async_trait::async_trait;
use keygate_core::limit::{Limits, LimitsOverride};
use keygate_core::settings::InstanceSettings;
use keygate_core::usage::UsageDelta;
use keygate_core::{KeyRecord, Role, UnixMillis, UserRecord};
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
    User,
    /// A sign-in's token family (revocations matter to the hot path).
    Family,
    Plan,
    Project,
}

impl Entity {
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Key => "key",
            Entity::Settings => "settings",
            Entity::User => "user",
            Entity::Family => "family",
            Entity::Plan => "plan",
            Entity::Project => "project",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "key" => Some(Entity::Key),
            "settings" => Some(Entity::Settings),
            "user" => Some(Entity::User),
            "family" => Some(Entity::Family),
            "plan" => Some(Entity::Plan),
            "project" => Some(Entity::Project),
            _ => None,
        }
    }
}

/// One audit-log entry. Never holds a secret: credentials are named by key id or token
/// family.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuditEntry {
    pub at: UnixMillis,
    /// `user:<id>`, `key:<id>`, `instance`, `cli` or `anonymous`.
    pub actor: String,
    /// `key.create`, `auth.login`, `auth.login_failed`, `user.update`, ...
    pub action: String,
    pub target: Option<String>,
    pub ip: Option<String>,
    pub credential: Option<String>,
    pub detail: serde_json::Map<String, serde_json::Value>,
    /// Webhook events the change raises, written in its transaction (not read back).
    pub events: Vec<OutboxEvent>,
}

/// A stored audit entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub seq: u64,
    pub entry: AuditEntry,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor: Option<String>,
    pub target: Option<String>,
    pub since: Option<UnixMillis>,
    /// Entries with a smaller seq (paging backwards).
    pub before_seq: Option<u64>,
    /// Entries with a larger seq (following the tail).
    pub after_seq: Option<u64>,
    pub limit: u32,
}

/// Fields a user update may change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserUpdate {
    pub role: Option<Role>,
    /// `Some(None)` removes the address.
    pub email: Option<Option<String>>,
    pub disabled: Option<bool>,
}

/// A refresh token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    pub jti: String,
    pub family: String,
    pub user_id: Uuid,
    pub issued_at: UnixMillis,
    pub expires_at: UnixMillis,
}

/// What happened to a refresh-token rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The old token is spent; the new one is stored in the same family.
    Rotated,
    /// The token was already rotated: presumed stolen. The family is now revoked.
    Reused { family: String, user_id: Uuid },
    /// The family was revoked (logout, password change, theft) or has expired.
    Revoked,
    /// No such refresh token.
    Unknown,
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
    /// `Some(None)` takes the key off its plan.
    pub plan: Option<Option<Uuid>>,
    pub limits: Option<LimitsOverride>,
    pub allowed_cidrs: Option<Vec<ipnet::IpNet>>,
}

/// A project and its members with their roles (`owner` or `member`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: Uuid,
    pub name: String,
    pub members: Vec<(Uuid, String)>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

/// A plan: a name and the limits its keys take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: Uuid,
    pub name: String,
    pub limits: Limits,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

/// One sign-in (token family) as the profile page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignIn {
    pub family: String,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
}

/// A page of the key list, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPage {
    pub limit: u32,
    pub offset: u64,
    /// Only keys owned by this user.
    pub owner: Option<Uuid>,
}

#[async_trait]
pub trait Store: WebhookStore + Send + Sync + 'static {
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
    /// Inserts a new key. [`StoreError::Conflict`] if its hash is already stored. With
    /// `keep_per_owner = Some(n)` and an owner, the owner's oldest unrevoked keys beyond
    /// the newest `n` (counting this one) are revoked in the same transaction.
    async fn insert_key(
        &self,
        record: &KeyRecord,
        keep_per_owner: Option<u32>,
        audit: &AuditEntry,
    ) -> Result<Vec<Uuid>>;
    /// Inserts the instance's global key unless one exists; true when inserted.
    async fn insert_global_key_if_absent(&self, record: &KeyRecord) -> Result<bool>;
    async fn update_key(
        &self,
        id: Uuid,
        update: &KeyUpdate,
        audit: &AuditEntry,
    ) -> Result<Option<KeyRecord>>;
    /// Revokes a key (idempotent: a second revocation keeps the first time).
    async fn revoke_key(&self, id: Uuid, audit: &AuditEntry) -> Result<Option<KeyRecord>>;
    /// Stores `replacement` and makes the key `id` expire at `old_expires_at`, pointing to
    /// the replacement, in one transaction. Returns the updated old key.
    async fn rotate_key(
        &self,
        id: Uuid,
        replacement: &KeyRecord,
        old_expires_at: UnixMillis,
        audit: &AuditEntry,
    ) -> Result<Option<KeyRecord>>;
    /// Adds in-memory usage counts to the stored ones, in one transaction.
    async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<()>;

    async fn settings(&self) -> Result<InstanceSettings>;
    async fn put_settings(&self, settings: &InstanceSettings, audit: &AuditEntry) -> Result<()>;

    /// Every user, for the owner index.
    async fn load_users(&self) -> Result<Vec<UserRecord>>;
    async fn users_by_id(&self, ids: &[Uuid]) -> Result<Vec<UserRecord>>;
    async fn count_users(&self) -> Result<u64>;
    /// [`StoreError::Conflict`] if the username is taken (case-insensitively).
    async fn create_user(
        &self,
        user: &UserRecord,
        password_hash: &str,
        audit: &AuditEntry,
    ) -> Result<()>;
    async fn get_user(&self, id: Uuid) -> Result<Option<UserRecord>>;
    /// The user and their password hash, by case-insensitive username.
    async fn user_for_login(&self, username: &str) -> Result<Option<(UserRecord, String)>>;
    async fn list_users(&self, limit: u32, offset: u64) -> Result<Vec<UserRecord>>;
    async fn update_user(
        &self,
        id: Uuid,
        update: &UserUpdate,
        audit: &AuditEntry,
    ) -> Result<Option<UserRecord>>;
    /// Deletes a user, revokes their keys and token families, in one transaction.
    async fn delete_user(&self, id: Uuid, audit: &AuditEntry) -> Result<Option<UserRecord>>;
    /// Sets a password hash and revokes the user's token families. False if no such user.
    async fn set_password(&self, id: Uuid, password_hash: &str, audit: &AuditEntry)
    -> Result<bool>;
    async fn record_login(&self, id: Uuid, at: UnixMillis) -> Result<()>;

    /// Starts a token family with its first refresh token.
    async fn create_family(&self, first: &RefreshToken, audit: &AuditEntry) -> Result<()>;
    /// Spends `old_jti` and stores `next` in its family, or detects reuse.
    async fn rotate_refresh(
        &self,
        old_jti: &str,
        next: &RefreshToken,
        now: UnixMillis,
    ) -> Result<RefreshOutcome>;
    /// The stored refresh token, if any.
    async fn refresh_token(&self, jti: &str) -> Result<Option<RefreshToken>>;
    /// Revokes a family; false if it was already revoked or does not exist.
    async fn revoke_family(&self, family: &str, reason: &str, audit: &AuditEntry) -> Result<bool>;
    /// Families revoked and not yet expired at `now` (for the in-memory deny list).
    async fn revoked_families(&self, now: UnixMillis) -> Result<Vec<(String, UnixMillis)>>;
    async fn family(&self, family: &str) -> Result<Option<(Uuid, UnixMillis, Option<UnixMillis>)>>;
    /// A user's sign-ins that are neither revoked nor expired at `now`, newest first.
    async fn active_sign_ins(&self, user: Uuid, now: UnixMillis) -> Result<Vec<SignIn>>;

    async fn append_audit(&self, entry: &AuditEntry) -> Result<()>;
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>>;

    async fn load_plans(&self) -> Result<Vec<Plan>>;
    async fn get_plan(&self, id: Uuid) -> Result<Option<Plan>>;
    /// [`StoreError::Conflict`] if the name is taken.
    async fn create_plan(&self, plan: &Plan, audit: &AuditEntry) -> Result<()>;
    /// Replaces a plan's name and limits. [`StoreError::Conflict`] if the name is taken.
    async fn update_plan(&self, plan: &Plan, audit: &AuditEntry) -> Result<bool>;
    /// Decision counts of the given keys (all keys for `None`) in `[from, to)`, summed into
    /// buckets of `bucket_ms` (a multiple of a minute; whole hours or days for rolled-up
    /// rows), oldest first.
    async fn usage(
        &self,
        keys: Option<&[Uuid]>,
        from: UnixMillis,
        to: UnixMillis,
        bucket_ms: i64,
    ) -> Result<Vec<keygate_core::usage::MinuteCounts>>;
    /// Rolls minute rows older than `minutes_before` into hours, and hour rows older than
    /// `hours_before` into days.
    async fn roll_up_usage(
        &self,
        minutes_before: UnixMillis,
        hours_before: UnixMillis,
    ) -> Result<()>;
    /// Quota use of every key in `month`, for the limiter at start-up.
    async fn quota_usage(&self, month: i32) -> Result<Vec<(Uuid, u64)>>;

    async fn load_projects(&self) -> Result<Vec<Project>>;
    async fn get_project(&self, id: Uuid) -> Result<Option<Project>>;
    /// Stores a project with its members (the creator as `owner`).
    async fn create_project(&self, project: &Project, audit: &AuditEntry) -> Result<()>;
    async fn rename_project(&self, id: Uuid, name: &str, audit: &AuditEntry) -> Result<bool>;
    /// Deletes a project and revokes its project-level keys, in one transaction.
    async fn delete_project(&self, id: Uuid, audit: &AuditEntry) -> Result<bool>;
    /// Adds a member or changes their role (`None`: removes them).
    async fn set_member(
        &self,
        project: Uuid,
        user: Uuid,
        role: Option<&str>,
        audit: &AuditEntry,
    ) -> Result<bool>;

    /// Stores a free key for a normalised email, with the account that owns it if one is
    /// given (user and password hash), in one transaction; [`StoreError::Conflict`] if that
    /// email already has a free key (or the account's username is taken).
    async fn insert_free_key(
        &self,
        email: &str,
        record: &KeyRecord,
        account: Option<(&UserRecord, &str)>,
        audit: &AuditEntry,
    ) -> Result<()>;

    async fn secret(&self, name: &str) -> Result<Option<String>>;
    /// Stores `value` unless the name is taken; returns the stored value either way.
    async fn secret_or_insert(&self, name: &str, value: &str) -> Result<String>;
    async fn put_secret(&self, name: &str, value: &str) -> Result<()>;
}
