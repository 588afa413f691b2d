//! The embedded SQLite store (WAL mode), the default backend.
//!
//! Several processes may open the same file (a running server and `keygate admin`):
//! writes use `BEGIN IMMEDIATE` so two writers queue on the busy timeout instead of
//! failing on a lock upgrade, and every write appends to `changes` in its transaction.

use crate::{
    AuditEntry, AuditFilter, AuditRecord, Change, Entity, KeyPage, KeyUpdate, Plan, Project,
    RefreshOutcome, RefreshToken, Result, Store, StoreError, UserUpdate,
};
use async_trait::async_trait;
use keygate_core::settings::InstanceSettings;
use keygate_core::usage::{MinuteCounts, UsageDelta};
use keygate_core::{KeyOrigin, KeyRecord, Role, UnixMillis, UserRecord};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "keygate.db";

const KEY_COLUMNS: &str = "id, hash, start, name, scopes, meta, enabled, origin, global, \
     created_at, updated_at, expires_at, revoked_at, rotated_to, last_used_at, usage_count, owner, \
     plan, limits, allowed_cidrs, project";

const USER_COLUMNS: &str =
    "id, username, email, role, disabled, created_at, updated_at, last_login_at";

/// The newest feed position. sqlite_sequence survives pruning, where MAX(seq) would not.
const LATEST_SEQ: &str =
    "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0)";

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) `DIR/keygate.db` and runs the migrations.
    pub async fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(crate) async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Marks a key revoked at `now` and records the change, inside `tx`.
async fn revoke_key_tx(
    tx: &mut Transaction<'static, Sqlite>,
    id: &str,
    now: UnixMillis,
) -> Result<()> {
    sqlx::query("UPDATE keys SET revoked_at = ?, updated_at = ? WHERE id = ?")
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    record_change(tx, Entity::Key, id, "revoke", now).await
}

/// Revokes keys as a side effect of another change (a user or project deleted), each with
/// its own `key.revoked` event in the same transaction.
async fn revoke_keys_announced_tx(
    tx: &mut Transaction<'static, Sqlite>,
    ids: &[String],
    now: UnixMillis,
) -> Result<()> {
    let mut events = Vec::with_capacity(ids.len());
    for id in ids {
        revoke_key_tx(tx, id, now).await?;
        let uuid = Uuid::parse_str(id).map_err(|e| corrupt("key id", e))?;
        if let Some(record) = fetch_key(tx, uuid).await? {
            events.push(crate::OutboxEvent::for_key("key.revoked", &record, now));
        }
    }
    crate::sqlite_webhooks::enqueue_tx(tx, &events).await
}

async fn record_change(
    tx: &mut Transaction<'static, Sqlite>,
    entity: Entity,
    entity_id: &str,
    op: &str,
    now: UnixMillis,
) -> Result<()> {
    sqlx::query("INSERT INTO changes (entity, entity_id, op, at) VALUES (?, ?, ?, ?)")
        .bind(entity.as_str())
        .bind(entity_id)
        .bind(op)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn fetch_key(tx: &mut Transaction<'static, Sqlite>, id: Uuid) -> Result<Option<KeyRecord>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLUMNS} FROM keys WHERE id = ?"
    )))
    .bind(id.to_string())
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(key_from_row).transpose()
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {err}"))
}

fn key_from_row(row: &SqliteRow) -> Result<KeyRecord> {
    let id: String = row.try_get("id")?;
    let id = Uuid::parse_str(&id).map_err(|e| corrupt("key id", e))?;
    let hash: Vec<u8> = row.try_get("hash")?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| corrupt("key hash", "not 32 bytes"))?;
    let scopes: String = row.try_get("scopes")?;
    let meta: String = row.try_get("meta")?;
    let origin: String = row.try_get("origin")?;
    let rotated_to: Option<String> = row.try_get("rotated_to")?;
    let usage_count: i64 = row.try_get("usage_count")?;
    let owner: Option<String> = row.try_get("owner")?;
    let plan: Option<String> = row.try_get("plan")?;
    let limits: String = row.try_get("limits")?;
    let allowed_cidrs: String = row.try_get("allowed_cidrs")?;
    let project: Option<String> = row.try_get("project")?;
    Ok(KeyRecord {
        id,
        hash,
        start: row.try_get("start")?,
        name: row.try_get("name")?,
        scopes: serde_json::from_str(&scopes).map_err(|e| corrupt("key scopes", e))?,
        meta: serde_json::from_str(&meta).map_err(|e| corrupt("key meta", e))?,
        enabled: row.try_get("enabled")?,
        origin: KeyOrigin::parse(&origin).ok_or_else(|| corrupt("key origin", &origin))?,
        global: row.try_get("global")?,
        owner: owner
            .map(|s| Uuid::parse_str(&s))
            .transpose()
            .map_err(|e| corrupt("key owner", e))?,
        plan: plan
            .map(|s| Uuid::parse_str(&s))
            .transpose()
            .map_err(|e| corrupt("key plan", e))?,
        limits: serde_json::from_str(&limits).map_err(|e| corrupt("key limits", e))?,
        allowed_cidrs: serde_json::from_str(&allowed_cidrs)
            .map_err(|e| corrupt("key networks", e))?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        rotated_to: rotated_to
            .map(|s| Uuid::parse_str(&s))
            .transpose()
            .map_err(|e| corrupt("rotated_to", e))?,
        last_used_at: row.try_get("last_used_at")?,
        usage_count: u64::try_from(usage_count).unwrap_or(0),
        project: project
            .map(|s| Uuid::parse_str(&s))
            .transpose()
            .map_err(|e| corrupt("key project", e))?,
    })
}

pub(crate) fn json(value: &impl serde::Serialize) -> String {
    // Serializing Vec<String> or a JSON map cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

async fn insert_key_tx(tx: &mut Transaction<'static, Sqlite>, r: &KeyRecord) -> Result<()> {
    let result = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )))
    .bind(r.id.to_string())
    .bind(&r.hash[..])
    .bind(&r.start)
    .bind(&r.name)
    .bind(json(&r.scopes))
    .bind(json(&r.meta))
    .bind(r.enabled)
    .bind(r.origin.as_str())
    .bind(r.global)
    .bind(r.created_at)
    .bind(r.updated_at)
    .bind(r.expires_at)
    .bind(r.revoked_at)
    .bind(r.rotated_to.map(|id| id.to_string()))
    .bind(r.last_used_at)
    .bind(i64::try_from(r.usage_count).unwrap_or(i64::MAX))
    .bind(r.owner.map(|id| id.to_string()))
    .bind(r.plan.map(|id| id.to_string()))
    .bind(json(&r.limits))
    .bind(json(&r.allowed_cidrs))
    .bind(r.project.map(|id| id.to_string()))
    .execute(&mut **tx)
    .await;
    match result {
        Ok(_) => {}
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            return Err(StoreError::Conflict(
                "a key with the same value already exists".into(),
            ));
        }
        Err(err) => return Err(err.into()),
    }
    record_change(tx, Entity::Key, &r.id.to_string(), "insert", r.created_at).await
}

async fn insert_user_tx(
    tx: &mut Transaction<'static, Sqlite>,
    user: &UserRecord,
    password_hash: &str,
) -> Result<()> {
    let result = sqlx::query(
        "INSERT INTO users (id, username, username_key, email, password_hash, role, disabled, \
         created_at, updated_at, last_login_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(user.id.to_string())
    .bind(&user.username)
    .bind(user.username.to_lowercase())
    .bind(&user.email)
    .bind(password_hash)
    .bind(user.role.as_str())
    .bind(user.disabled)
    .bind(user.created_at)
    .bind(user.updated_at)
    .bind(user.last_login_at)
    .execute(&mut **tx)
    .await;
    match result {
        Ok(_) => {}
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            return Err(StoreError::Conflict("this username is taken".into()));
        }
        Err(err) => return Err(err.into()),
    }
    record_change(
        tx,
        Entity::User,
        &user.id.to_string(),
        "insert",
        user.created_at,
    )
    .await
}

#[async_trait]
impl Store for SqliteStore {
    async fn load_keys(&self) -> Result<(Vec<KeyRecord>, u64)> {
        // One read transaction so the keys and the feed position agree.
        let mut tx = self.pool.begin().await?;
        let seq: i64 = sqlx::query_scalar(LATEST_SEQ).fetch_one(&mut *tx).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM keys"
        )))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let keys = rows.iter().map(key_from_row).collect::<Result<_>>()?;
        Ok((keys, u64::try_from(seq).unwrap_or(0)))
    }

    async fn latest_seq(&self) -> Result<u64> {
        let seq: i64 = sqlx::query_scalar(LATEST_SEQ).fetch_one(&self.pool).await?;
        Ok(u64::try_from(seq).unwrap_or(0))
    }

    async fn changes_since(&self, after: u64, limit: u32) -> Result<Vec<Change>> {
        let rows = sqlx::query(
            "SELECT seq, entity, entity_id, op FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let entity: String = row.try_get("entity")?;
                let seq: i64 = row.try_get("seq")?;
                Ok(Change {
                    seq: u64::try_from(seq).unwrap_or(0),
                    entity: Entity::parse(&entity)
                        .ok_or_else(|| corrupt("change entity", &entity))?,
                    entity_id: row.try_get("entity_id")?,
                    op: row.try_get("op")?,
                })
            })
            .collect()
    }

    async fn prune_changes(&self, before: UnixMillis) -> Result<u64> {
        let done = sqlx::query("DELETE FROM changes WHERE at < ?")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn get_key(&self, id: Uuid) -> Result<Option<KeyRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM keys WHERE id = ?"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn keys_by_id(&self, ids: &[Uuid]) -> Result<Vec<KeyRecord>> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM keys WHERE id IN (SELECT value FROM json_each(?))"
        )))
        .bind(json(&ids))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn list_keys(&self, page: KeyPage) -> Result<Vec<KeyRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM keys WHERE (?1 IS NULL OR owner = ?1) \
             ORDER BY created_at DESC, id DESC LIMIT ?2 OFFSET ?3"
        )))
        .bind(page.owner.map(|id| id.to_string()))
        .bind(page.limit)
        .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn insert_key(
        &self,
        record: &KeyRecord,
        keep_per_owner: Option<u32>,
        audit: &AuditEntry,
    ) -> Result<Vec<Uuid>> {
        let mut tx = self.write_tx().await?;
        insert_key_tx(&mut tx, record).await?;
        let mut revoked = Vec::new();
        if let (Some(keep), Some(owner)) = (keep_per_owner, record.owner) {
            // The owner's live keys, newest first; everything past `keep` is revoked now.
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM keys WHERE owner = ? AND revoked_at IS NULL AND global = 0 \
                 ORDER BY created_at DESC, id DESC LIMIT -1 OFFSET ?",
            )
            .bind(owner.to_string())
            .bind(keep)
            .fetch_all(&mut *tx)
            .await?;
            for id in ids {
                revoke_key_tx(&mut tx, &id, record.created_at).await?;
                let uuid = Uuid::parse_str(&id).map_err(|e| corrupt("key id", e))?;
                let mut entry = audit.clone();
                entry.action = "key.revoke".into();
                entry.target = Some(format!("key:{id}"));
                entry.detail.insert("reason".into(), "keys_per_user".into());
                // This revocation's own event, not a copy of the creation's.
                entry.events = fetch_key(&mut tx, uuid)
                    .await?
                    .map(|old| crate::OutboxEvent::for_key("key.revoked", &old, record.created_at))
                    .into_iter()
                    .collect();
                audit_tx(&mut tx, &entry).await?;
                revoked.push(uuid);
            }
        }
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    async fn insert_global_key_if_absent(&self, record: &KeyRecord) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM keys WHERE global = 1)")
                .fetch_one(&mut *tx)
                .await?;
        if exists {
            return Ok(false);
        }
        insert_key_tx(&mut tx, record).await?;
        let entry = AuditEntry {
            at: record.created_at,
            actor: "instance".into(),
            action: "key.create".into(),
            target: Some(format!("key:{}", record.id)),
            ..Default::default()
        };
        audit_tx(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn update_key(
        &self,
        id: Uuid,
        update: &KeyUpdate,
        audit: &AuditEntry,
    ) -> Result<Option<KeyRecord>> {
        let now = audit.at;
        let mut tx = self.write_tx().await?;
        let Some(mut record) = fetch_key(&mut tx, id).await? else {
            return Ok(None);
        };
        if let Some(name) = &update.name {
            record.name.clone_from(name);
        }
        if let Some(scopes) = &update.scopes {
            record.scopes.clone_from(scopes);
        }
        if let Some(meta) = &update.meta {
            record.meta.clone_from(meta);
        }
        if let Some(enabled) = update.enabled {
            record.enabled = enabled;
        }
        if let Some(expires_at) = update.expires_at {
            record.expires_at = expires_at;
        }
        if let Some(plan) = update.plan {
            record.plan = plan;
        }
        if let Some(limits) = &update.limits {
            record.limits.clone_from(limits);
        }
        if let Some(cidrs) = &update.allowed_cidrs {
            record.allowed_cidrs.clone_from(cidrs);
        }
        record.updated_at = now;
        sqlx::query(
            "UPDATE keys SET name = ?, scopes = ?, meta = ?, enabled = ?, expires_at = ?, \
             plan = ?, limits = ?, allowed_cidrs = ?, updated_at = ? WHERE id = ?",
        )
        .bind(&record.name)
        .bind(json(&record.scopes))
        .bind(json(&record.meta))
        .bind(record.enabled)
        .bind(record.expires_at)
        .bind(record.plan.map(|id| id.to_string()))
        .bind(json(&record.limits))
        .bind(json(&record.allowed_cidrs))
        .bind(now)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        record_change(&mut tx, Entity::Key, &id.to_string(), "update", now).await?;
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(Some(record))
    }

    async fn revoke_key(&self, id: Uuid, audit: &AuditEntry) -> Result<Option<KeyRecord>> {
        let now = audit.at;
        let mut tx = self.write_tx().await?;
        let Some(mut record) = fetch_key(&mut tx, id).await? else {
            return Ok(None);
        };
        if record.revoked_at.is_none() {
            record.revoked_at = Some(now);
            record.updated_at = now;
            revoke_key_tx(&mut tx, &id.to_string(), now).await?;
            audit_tx(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(Some(record))
    }

    async fn rotate_key(
        &self,
        id: Uuid,
        replacement: &KeyRecord,
        old_expires_at: UnixMillis,
        audit: &AuditEntry,
    ) -> Result<Option<KeyRecord>> {
        let now = audit.at;
        let mut tx = self.write_tx().await?;
        let Some(mut old) = fetch_key(&mut tx, id).await? else {
            return Ok(None);
        };
        if old.revoked_at.is_some() {
            return Err(StoreError::Conflict(
                "a revoked key cannot be rotated".into(),
            ));
        }
        if let Some(next) = old.rotated_to {
            return Err(StoreError::Conflict(format!(
                "this key was already rotated; rotate its replacement {next} instead"
            )));
        }
        if replacement.global {
            // Only one key may be the global one: hand the role to the replacement.
            sqlx::query("UPDATE keys SET global = 0 WHERE id = ?")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            old.global = false;
        }
        insert_key_tx(&mut tx, replacement).await?;
        // The old key never lives longer than it would have without the rotation.
        old.expires_at = Some(
            old.expires_at
                .map_or(old_expires_at, |at| at.min(old_expires_at)),
        );
        old.rotated_to = Some(replacement.id);
        old.updated_at = now;
        sqlx::query("UPDATE keys SET expires_at = ?, rotated_to = ?, updated_at = ? WHERE id = ?")
            .bind(old.expires_at)
            .bind(replacement.id.to_string())
            .bind(now)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        record_change(&mut tx, Entity::Key, &id.to_string(), "rotate", now).await?;
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(Some(old))
    }

    async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<()> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        for delta in deltas {
            sqlx::query(
                "UPDATE keys SET usage_count = usage_count + ?, \
                 last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?",
            )
            .bind(i64::try_from(delta.uses).unwrap_or(i64::MAX))
            .bind(delta.last_used_at)
            .bind(delta.key_id.to_string())
            .execute(&mut *tx)
            .await?;
            for minute in &delta.minutes {
                sqlx::query(
                    "INSERT INTO usage (key_id, grain, start, valid, rate_limited, quota_exceeded, denied) \
                     VALUES (?, 'm', ?, ?, ?, ?, ?) ON CONFLICT (key_id, grain, start) DO UPDATE SET \
                     valid = valid + excluded.valid, rate_limited = rate_limited + excluded.rate_limited, \
                     quota_exceeded = quota_exceeded + excluded.quota_exceeded, denied = denied + excluded.denied",
                )
                .bind(delta.key_id.to_string())
                .bind(minute.minute)
                .bind(count(minute.valid))
                .bind(count(minute.rate_limited))
                .bind(count(minute.quota_exceeded))
                .bind(count(minute.denied))
                .execute(&mut *tx)
                .await?;
            }
            for &(month, used) in &delta.quota {
                sqlx::query(
                    "INSERT INTO quota_usage (key_id, month, used) VALUES (?, ?, ?) \
                     ON CONFLICT (key_id, month) DO UPDATE SET used = used + excluded.used",
                )
                .bind(delta.key_id.to_string())
                .bind(month)
                .bind(i64::try_from(used).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn settings(&self) -> Result<InstanceSettings> {
        let value: Option<String> =
            sqlx::query_scalar("SELECT value FROM settings WHERE name = 'instance'")
                .fetch_optional(&self.pool)
                .await?;
        match value {
            None => Ok(InstanceSettings::default()),
            Some(text) => serde_json::from_str(&text).map_err(|e| corrupt("settings", e)),
        }
    }

    async fn put_settings(&self, settings: &InstanceSettings, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ('instance', ?) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(json(settings))
        .execute(&mut *tx)
        .await?;
        record_change(&mut tx, Entity::Settings, "instance", "update", audit.at).await?;
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn load_users(&self) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn users_by_id(&self, ids: &[Uuid]) -> Result<Vec<UserRecord>> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE id IN (SELECT value FROM json_each(?))"
        )))
        .bind(json(&ids))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn count_users(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn create_user(
        &self,
        user: &UserRecord,
        password_hash: &str,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        insert_user_tx(&mut tx, user, password_hash).await?;
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_user(&self, id: Uuid) -> Result<Option<UserRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE id = ?"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user_for_login(&self, username: &str) -> Result<Option<(UserRecord, String)>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS}, password_hash FROM users WHERE username_key = ?"
        )))
        .bind(username.to_lowercase())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Ok(None),
            Some(row) => Ok(Some((user_from_row(&row)?, row.try_get("password_hash")?))),
        }
    }

    async fn list_users(&self, limit: u32, offset: u64) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id LIMIT ? OFFSET ?"
        )))
        .bind(limit)
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn update_user(
        &self,
        id: Uuid,
        update: &UserUpdate,
        audit: &AuditEntry,
    ) -> Result<Option<UserRecord>> {
        let mut tx = self.write_tx().await?;
        let Some(mut user) = fetch_user(&mut tx, id).await? else {
            return Ok(None);
        };
        let stays_admin = update.role.unwrap_or(user.role) == Role::Admin
            && !update.disabled.unwrap_or(user.disabled);
        if !stays_admin {
            keep_an_admin(&mut tx, &user).await?;
        }
        if let Some(role) = update.role {
            user.role = role;
        }
        if let Some(email) = &update.email {
            user.email.clone_from(email);
        }
        if let Some(disabled) = update.disabled {
            user.disabled = disabled;
        }
        user.updated_at = audit.at;
        sqlx::query(
            "UPDATE users SET role = ?, email = ?, disabled = ?, updated_at = ? WHERE id = ?",
        )
        .bind(user.role.as_str())
        .bind(&user.email)
        .bind(user.disabled)
        .bind(user.updated_at)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        record_change(&mut tx, Entity::User, &id.to_string(), "update", audit.at).await?;
        if update.disabled == Some(true) {
            // A disabled account's sign-ins end now.
            revoke_user_families_tx(&mut tx, id, "user disabled", audit.at).await?;
        }
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(Some(user))
    }

    async fn delete_user(&self, id: Uuid, audit: &AuditEntry) -> Result<Option<UserRecord>> {
        let now = audit.at;
        let mut tx = self.write_tx().await?;
        let Some(user) = fetch_user(&mut tx, id).await? else {
            return Ok(None);
        };
        keep_an_admin(&mut tx, &user).await?;
        let key_ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM keys WHERE owner = ? AND revoked_at IS NULL")
                .bind(id.to_string())
                .fetch_all(&mut *tx)
                .await?;
        revoke_keys_announced_tx(&mut tx, &key_ids, now).await?;
        revoke_user_families_tx(&mut tx, id, "user deleted", now).await?;
        sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        record_change(&mut tx, Entity::User, &id.to_string(), "delete", now).await?;
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(Some(user))
    }

    async fn set_password(
        &self,
        id: Uuid,
        password_hash: &str,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?")
            .bind(password_hash)
            .bind(audit.at)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        revoke_user_families_tx(&mut tx, id, "password changed", audit.at).await?;
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn record_login(&self, id: Uuid, at: UnixMillis) -> Result<()> {
        sqlx::query("UPDATE users SET last_login_at = ? WHERE id = ?")
            .bind(at)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn active_sign_ins(&self, user: Uuid, now: UnixMillis) -> Result<Vec<crate::SignIn>> {
        let rows = sqlx::query(
            "SELECT family, created_at, expires_at FROM token_families
             WHERE user_id = ? AND revoked_at IS NULL AND expires_at > ?
             ORDER BY created_at DESC, family DESC",
        )
        .bind(user.to_string())
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(crate::SignIn {
                    family: row.try_get("family")?,
                    created_at: row.try_get("created_at")?,
                    expires_at: row.try_get("expires_at")?,
                })
            })
            .collect()
    }

    async fn create_family(&self, first: &RefreshToken, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("INSERT INTO token_families (family, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)")
            .bind(&first.family)
            .bind(first.user_id.to_string())
            .bind(first.issued_at)
            .bind(first.expires_at)
            .execute(&mut *tx)
            .await?;
        insert_refresh_tx(&mut tx, first).await?;
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rotate_refresh(
        &self,
        old_jti: &str,
        next: &RefreshToken,
        now: UnixMillis,
    ) -> Result<RefreshOutcome> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "SELECT r.used_at, r.expires_at, f.family, f.user_id, f.revoked_at FROM refresh_tokens r \
             JOIN token_families f ON f.family = r.family WHERE r.jti = ?",
        )
        .bind(old_jti)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(RefreshOutcome::Unknown);
        };
        let used_at: Option<i64> = row.try_get("used_at")?;
        let expires_at: i64 = row.try_get("expires_at")?;
        let family: String = row.try_get("family")?;
        let user_id: String = row.try_get("user_id")?;
        let user_id = Uuid::parse_str(&user_id).map_err(|e| corrupt("family user", e))?;
        let revoked_at: Option<i64> = row.try_get("revoked_at")?;
        if revoked_at.is_some() || expires_at <= now {
            return Ok(RefreshOutcome::Revoked);
        }
        if used_at.is_some() {
            // A spent token came back: someone holds a copy. End the whole sign-in.
            revoke_family_tx(&mut tx, &family, "refresh token reused", now).await?;
            tx.commit().await?;
            return Ok(RefreshOutcome::Reused { family, user_id });
        }
        sqlx::query("UPDATE refresh_tokens SET used_at = ? WHERE jti = ?")
            .bind(now)
            .bind(old_jti)
            .execute(&mut *tx)
            .await?;
        let next = RefreshToken {
            family: family.clone(),
            user_id,
            ..next.clone()
        };
        insert_refresh_tx(&mut tx, &next).await?;
        sqlx::query("UPDATE token_families SET expires_at = MAX(expires_at, ?) WHERE family = ?")
            .bind(next.expires_at)
            .bind(&family)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RefreshOutcome::Rotated)
    }

    async fn refresh_token(&self, jti: &str) -> Result<Option<RefreshToken>> {
        let row = sqlx::query(
            "SELECT r.jti, r.family, f.user_id, r.issued_at, r.expires_at FROM refresh_tokens r \
             JOIN token_families f ON f.family = r.family WHERE r.jti = ?",
        )
        .bind(jti)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let user_id: String = row.try_get("user_id")?;
            Ok(RefreshToken {
                jti: row.try_get("jti")?,
                family: row.try_get("family")?,
                user_id: Uuid::parse_str(&user_id).map_err(|e| corrupt("family user", e))?,
                issued_at: row.try_get("issued_at")?,
                expires_at: row.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    async fn revoke_family(&self, family: &str, reason: &str, audit: &AuditEntry) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let revoked = revoke_family_tx(&mut tx, family, reason, audit.at).await?;
        if revoked {
            audit_tx(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(revoked)
    }

    async fn revoked_families(&self, now: UnixMillis) -> Result<Vec<(String, UnixMillis)>> {
        let rows = sqlx::query("SELECT family, expires_at FROM token_families WHERE revoked_at IS NOT NULL AND expires_at > ?")
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("family")?, row.try_get("expires_at")?)))
            .collect()
    }

    async fn family(&self, family: &str) -> Result<Option<(Uuid, UnixMillis, Option<UnixMillis>)>> {
        let row = sqlx::query(
            "SELECT user_id, expires_at, revoked_at FROM token_families WHERE family = ?",
        )
        .bind(family)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let user_id: String = row.try_get("user_id")?;
            Ok((
                Uuid::parse_str(&user_id).map_err(|e| corrupt("family user", e))?,
                row.try_get("expires_at")?,
                row.try_get("revoked_at")?,
            ))
        })
        .transpose()
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        let mut tx = self.write_tx().await?;
        audit_tx(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        // Following the tail reads forwards; every other query reads newest first.
        let order = if filter.after_seq.is_some() {
            "ASC"
        } else {
            "DESC"
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT seq, at, actor, action, target, ip, credential, detail FROM audit_log \
             WHERE (?1 IS NULL OR action = ?1 OR action LIKE ?1 || '.%') \
             AND (?2 IS NULL OR actor = ?2) AND (?3 IS NULL OR target = ?3) \
             AND (?4 IS NULL OR at >= ?4) AND (?5 IS NULL OR seq < ?5) AND (?6 IS NULL OR seq > ?6) \
             ORDER BY seq {order} LIMIT ?7"
        )))
        .bind(&filter.action)
        .bind(&filter.actor)
        .bind(&filter.target)
        .bind(filter.since)
        .bind(filter.before_seq.map(|s| i64::try_from(s).unwrap_or(i64::MAX)))
        .bind(filter.after_seq.map(|s| i64::try_from(s).unwrap_or(i64::MAX)))
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get("seq")?;
                let detail: String = row.try_get("detail")?;
                Ok(AuditRecord {
                    seq: u64::try_from(seq).unwrap_or(0),
                    entry: AuditEntry {
                        at: row.try_get("at")?,
                        actor: row.try_get("actor")?,
                        action: row.try_get("action")?,
                        target: row.try_get("target")?,
                        ip: row.try_get("ip")?,
                        credential: row.try_get("credential")?,
                        detail: serde_json::from_str(&detail)
                            .map_err(|e| corrupt("audit detail", e))?,
                        events: Vec::new(),
                    },
                })
            })
            .collect()
    }

    async fn load_plans(&self) -> Result<Vec<Plan>> {
        let rows = sqlx::query(
            "SELECT id, name, limits, created_at, updated_at FROM plans ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(plan_from_row).collect()
    }

    async fn get_plan(&self, id: Uuid) -> Result<Option<Plan>> {
        let row =
            sqlx::query("SELECT id, name, limits, created_at, updated_at FROM plans WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(plan_from_row).transpose()
    }

    async fn create_plan(&self, plan: &Plan, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let result = sqlx::query(
            "INSERT INTO plans (id, name, limits, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(plan.id.to_string())
        .bind(&plan.name)
        .bind(json(&plan.limits))
        .bind(plan.created_at)
        .bind(plan.updated_at)
        .execute(&mut *tx)
        .await;
        unique_to_conflict(result, "a plan with this name exists")?;
        record_change(
            &mut tx,
            Entity::Plan,
            &plan.id.to_string(),
            "insert",
            plan.created_at,
        )
        .await?;
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn update_plan(&self, plan: &Plan, audit: &AuditEntry) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let result =
            sqlx::query("UPDATE plans SET name = ?, limits = ?, updated_at = ? WHERE id = ?")
                .bind(&plan.name)
                .bind(json(&plan.limits))
                .bind(plan.updated_at)
                .bind(plan.id.to_string())
                .execute(&mut *tx)
                .await;
        if unique_to_conflict(result, "a plan with this name exists")?.rows_affected() == 0 {
            return Ok(false);
        }
        record_change(
            &mut tx,
            Entity::Plan,
            &plan.id.to_string(),
            "update",
            plan.updated_at,
        )
        .await?;
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn usage(
        &self,
        keys: Option<&[Uuid]>,
        from: UnixMillis,
        to: UnixMillis,
        bucket_ms: i64,
    ) -> Result<Vec<MinuteCounts>> {
        let keys = keys.map(|ids| json(&ids.iter().map(Uuid::to_string).collect::<Vec<_>>()));
        let rows = sqlx::query(
            "SELECT (start / ?4) * ?4 AS bucket, SUM(valid) AS valid, SUM(rate_limited) AS rate_limited, \
             SUM(quota_exceeded) AS quota_exceeded, SUM(denied) AS denied FROM usage \
             WHERE (?1 IS NULL OR key_id IN (SELECT value FROM json_each(?1))) AND start >= ?2 AND start < ?3 \
             GROUP BY bucket ORDER BY bucket",
        )
        .bind(keys)
        .bind(from)
        .bind(to)
        .bind(bucket_ms.max(60_000))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let get = |name: &str| -> Result<u64> {
                    Ok(u64::try_from(row.try_get::<i64, _>(name)?).unwrap_or(0))
                };
                Ok(MinuteCounts {
                    minute: row.try_get("bucket")?,
                    valid: get("valid")?,
                    rate_limited: get("rate_limited")?,
                    quota_exceeded: get("quota_exceeded")?,
                    denied: get("denied")?,
                })
            })
            .collect()
    }

    async fn roll_up_usage(
        &self,
        minutes_before: UnixMillis,
        hours_before: UnixMillis,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for (from, to, size, before) in [
            ("m", "h", 3_600_000_i64, minutes_before),
            ("h", "d", 86_400_000, hours_before),
        ] {
            sqlx::query(
                "INSERT INTO usage (key_id, grain, start, valid, rate_limited, quota_exceeded, denied) \
                 SELECT key_id, ?2, (start / ?3) * ?3, SUM(valid), SUM(rate_limited), SUM(quota_exceeded), SUM(denied) \
                 FROM usage WHERE grain = ?1 AND start < ?4 GROUP BY key_id, (start / ?3) * ?3 \
                 ON CONFLICT (key_id, grain, start) DO UPDATE SET \
                 valid = valid + excluded.valid, rate_limited = rate_limited + excluded.rate_limited, \
                 quota_exceeded = quota_exceeded + excluded.quota_exceeded, denied = denied + excluded.denied",
            )
            .bind(from)
            .bind(to)
            .bind(size)
            .bind(before)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM usage WHERE grain = ? AND start < ?")
                .bind(from)
                .bind(before)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn quota_usage(&self, month: i32) -> Result<Vec<(Uuid, u64)>> {
        let rows = sqlx::query("SELECT key_id, used FROM quota_usage WHERE month = ?")
            .bind(month)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("key_id")?;
                let used: i64 = row.try_get("used")?;
                Ok((
                    Uuid::parse_str(&id).map_err(|e| corrupt("quota key", e))?,
                    u64::try_from(used).unwrap_or(0),
                ))
            })
            .collect()
    }

    async fn load_projects(&self) -> Result<Vec<Project>> {
        // Two queries for all projects, not one per project.
        let rows = sqlx::query(
            "SELECT id, name, created_at, updated_at FROM projects ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        let members =
            sqlx::query("SELECT project_id, user_id, role FROM project_members ORDER BY user_id")
                .fetch_all(&self.pool)
                .await?;
        let mut by_project: std::collections::HashMap<String, Vec<(Uuid, String)>> =
            std::collections::HashMap::new();
        for m in &members {
            let user: String = m.try_get("user_id")?;
            by_project
                .entry(m.try_get("project_id")?)
                .or_default()
                .push((
                    Uuid::parse_str(&user).map_err(|e| corrupt("member id", e))?,
                    m.try_get("role")?,
                ));
        }
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                Ok(Project {
                    id: Uuid::parse_str(&id).map_err(|e| corrupt("project id", e))?,
                    name: row.try_get("name")?,
                    members: by_project.remove(&id).unwrap_or_default(),
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            })
            .collect()
    }

    async fn get_project(&self, id: Uuid) -> Result<Option<Project>> {
        let Some(row) =
            sqlx::query("SELECT id, name, created_at, updated_at FROM projects WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(None);
        };
        let members = sqlx::query(
            "SELECT user_id, role FROM project_members WHERE project_id = ? ORDER BY user_id",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|m| {
            let user: String = m.try_get("user_id")?;
            Ok((
                Uuid::parse_str(&user).map_err(|e| corrupt("member id", e))?,
                m.try_get("role")?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
        Ok(Some(Project {
            id,
            name: row.try_get("name")?,
            members,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        }))
    }

    async fn create_project(&self, project: &Project, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("INSERT INTO projects (id, name, created_at, updated_at) VALUES (?, ?, ?, ?)")
            .bind(project.id.to_string())
            .bind(&project.name)
            .bind(project.created_at)
            .bind(project.updated_at)
            .execute(&mut *tx)
            .await?;
        for (user, role) in &project.members {
            sqlx::query("INSERT INTO project_members (project_id, user_id, role) VALUES (?, ?, ?)")
                .bind(project.id.to_string())
                .bind(user.to_string())
                .bind(role)
                .execute(&mut *tx)
                .await?;
        }
        record_change(
            &mut tx,
            Entity::Project,
            &project.id.to_string(),
            "insert",
            project.created_at,
        )
        .await?;
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rename_project(&self, id: Uuid, name: &str, audit: &AuditEntry) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("UPDATE projects SET name = ?, updated_at = ? WHERE id = ?")
            .bind(name)
            .bind(audit.at)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        record_change(
            &mut tx,
            Entity::Project,
            &id.to_string(),
            "update",
            audit.at,
        )
        .await?;
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn delete_project(&self, id: Uuid, audit: &AuditEntry) -> Result<bool> {
        let now = audit.at;
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("DELETE FROM projects WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM project_members WHERE project_id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        let keys: Vec<String> =
            sqlx::query_scalar("SELECT id FROM keys WHERE project = ? AND revoked_at IS NULL")
                .bind(id.to_string())
                .fetch_all(&mut *tx)
                .await?;
        revoke_keys_announced_tx(&mut tx, &keys, now).await?;
        record_change(&mut tx, Entity::Project, &id.to_string(), "delete", now).await?;
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn set_member(
        &self,
        project: Uuid,
        user: Uuid,
        role: Option<&str>,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM projects WHERE id = ?)")
                .bind(project.to_string())
                .fetch_one(&mut *tx)
                .await?;
        if !exists {
            return Ok(false);
        }
        match role {
            Some(role) => {
                sqlx::query(
                    "INSERT INTO project_members (project_id, user_id, role) VALUES (?, ?, ?) \
                     ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role",
                )
                .bind(project.to_string())
                .bind(user.to_string())
                .bind(role)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM project_members WHERE project_id = ? AND user_id = ?")
                    .bind(project.to_string())
                    .bind(user.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        record_change(
            &mut tx,
            Entity::Project,
            &project.to_string(),
            "members",
            audit.at,
        )
        .await?;
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn insert_free_key(
        &self,
        email: &str,
        record: &KeyRecord,
        account: Option<(&UserRecord, &str)>,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        if let Some((user, password_hash)) = account {
            insert_user_tx(&mut tx, user, password_hash).await?;
        }
        let result =
            sqlx::query("INSERT INTO free_keys (email, key_id, created_at) VALUES (?, ?, ?)")
                .bind(email)
                .bind(record.id.to_string())
                .bind(record.created_at)
                .execute(&mut *tx)
                .await;
        unique_to_conflict(result, "this email address already has a free key")?;
        insert_key_tx(&mut tx, record).await?;
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn secret(&self, name: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM secrets WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn secret_or_insert(&self, name: &str, value: &str) -> Result<String> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&mut *tx)
        .await?;
        let stored: String = sqlx::query_scalar("SELECT value FROM secrets WHERE name = ?")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn put_secret(&self, name: &str, value: &str) -> Result<()> {
        sqlx::query("INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
            .bind(name)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn plan_from_row(row: &SqliteRow) -> Result<Plan> {
    let id: String = row.try_get("id")?;
    let limits: String = row.try_get("limits")?;
    Ok(Plan {
        id: Uuid::parse_str(&id).map_err(|e| corrupt("plan id", e))?,
        name: row.try_get("name")?,
        limits: serde_json::from_str(&limits).map_err(|e| corrupt("plan limits", e))?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn unique_to_conflict(
    result: std::result::Result<sqlx::sqlite::SqliteQueryResult, sqlx::Error>,
    message: &str,
) -> Result<sqlx::sqlite::SqliteQueryResult> {
    match result {
        Ok(done) => Ok(done),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            Err(StoreError::Conflict(message.into()))
        }
        Err(err) => Err(err.into()),
    }
}

fn user_from_row(row: &SqliteRow) -> Result<UserRecord> {
    let id: String = row.try_get("id")?;
    let role: String = row.try_get("role")?;
    Ok(UserRecord {
        id: Uuid::parse_str(&id).map_err(|e| corrupt("user id", e))?,
        username: row.try_get("username")?,
        email: row.try_get("email")?,
        role: Role::parse(&role).ok_or_else(|| corrupt("user role", &role))?,
        disabled: row.try_get("disabled")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_login_at: row.try_get("last_login_at")?,
    })
}

async fn fetch_user(tx: &mut Transaction<'static, Sqlite>, id: Uuid) -> Result<Option<UserRecord>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id = ?"
    )))
    .bind(id.to_string())
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(user_from_row).transpose()
}

/// Refuses, inside the write transaction, a change that would leave no enabled
/// administrator (checked here so two concurrent demotions cannot both pass).
async fn keep_an_admin(tx: &mut Transaction<'static, Sqlite>, user: &UserRecord) -> Result<()> {
    if user.role != Role::Admin || user.disabled {
        return Ok(());
    }
    let others: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0 AND id != ?",
    )
    .bind(user.id.to_string())
    .fetch_one(&mut **tx)
    .await?;
    if others == 0 {
        return Err(StoreError::Conflict(
            "this is the last enabled administrator; make another user an administrator first"
                .into(),
        ));
    }
    Ok(())
}

pub(crate) async fn audit_tx(
    tx: &mut Transaction<'static, Sqlite>,
    entry: &AuditEntry,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, target, ip, credential, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(entry.at)
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(&entry.target)
    .bind(&entry.ip)
    .bind(&entry.credential)
    .bind(json(&entry.detail))
    .execute(&mut **tx)
    .await?;
    // The events the change raises are written with it, or not at all.
    crate::sqlite_webhooks::enqueue_tx(tx, &entry.events).await
}

async fn insert_refresh_tx(
    tx: &mut Transaction<'static, Sqlite>,
    token: &RefreshToken,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO refresh_tokens (jti, family, issued_at, expires_at) VALUES (?, ?, ?, ?)",
    )
    .bind(&token.jti)
    .bind(&token.family)
    .bind(token.issued_at)
    .bind(token.expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn revoke_family_tx(
    tx: &mut Transaction<'static, Sqlite>,
    family: &str,
    reason: &str,
    now: UnixMillis,
) -> Result<bool> {
    let done = sqlx::query("UPDATE token_families SET revoked_at = ?, reason = ? WHERE family = ? AND revoked_at IS NULL")
        .bind(now)
        .bind(reason)
        .bind(family)
        .execute(&mut **tx)
        .await?;
    if done.rows_affected() > 0 {
        record_change(tx, Entity::Family, family, "revoke", now).await?;
    }
    Ok(done.rows_affected() > 0)
}

async fn revoke_user_families_tx(
    tx: &mut Transaction<'static, Sqlite>,
    user: Uuid,
    reason: &str,
    now: UnixMillis,
) -> Result<()> {
    let families: Vec<String> =
        sqlx::query_scalar("SELECT family FROM token_families WHERE user_id = ? AND revoked_at IS NULL AND expires_at > ?")
            .bind(user.to_string())
            .bind(now)
            .fetch_all(&mut **tx)
            .await?;
    for family in families {
        revoke_family_tx(tx, &family, reason, now).await?;
    }
    Ok(())
}
