//! The embedded SQLite store (WAL mode), the default backend.
//!
//! Several processes may open the same file (a running server and `keygate admin`):
//! writes use `BEGIN IMMEDIATE` so two writers queue on the busy timeout instead of
//! failing on a lock upgrade, and every write appends to `changes` in its transaction.

use crate::{Change, Entity, KeyPage, KeyUpdate, Result, Store, StoreError};
use async_trait::async_trait;
use keygate_core::settings::InstanceSettings;
use keygate_core::usage::UsageDelta;
use keygate_core::{KeyOrigin, KeyRecord, UnixMillis};
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
     created_at, updated_at, expires_at, revoked_at, rotated_to, last_used_at, usage_count";

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

    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
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
    })
}

fn json(value: &impl serde::Serialize) -> String {
    // Serializing Vec<String> or a JSON map cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

async fn insert_key_tx(tx: &mut Transaction<'static, Sqlite>, r: &KeyRecord) -> Result<()> {
    let result = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
            "SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
        )))
        .bind(page.limit)
        .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn insert_key(&self, record: &KeyRecord) -> Result<()> {
        let mut tx = self.write_tx().await?;
        insert_key_tx(&mut tx, record).await?;
        tx.commit().await?;
        Ok(())
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
        tx.commit().await?;
        Ok(true)
    }

    async fn update_key(
        &self,
        id: Uuid,
        update: &KeyUpdate,
        now: UnixMillis,
    ) -> Result<Option<KeyRecord>> {
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
        record.updated_at = now;
        sqlx::query(
            "UPDATE keys SET name = ?, scopes = ?, meta = ?, enabled = ?, expires_at = ?, \
             updated_at = ? WHERE id = ?",
        )
        .bind(&record.name)
        .bind(json(&record.scopes))
        .bind(json(&record.meta))
        .bind(record.enabled)
        .bind(record.expires_at)
        .bind(now)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        record_change(&mut tx, Entity::Key, &id.to_string(), "update", now).await?;
        tx.commit().await?;
        Ok(Some(record))
    }

    async fn revoke_key(&self, id: Uuid, now: UnixMillis) -> Result<Option<KeyRecord>> {
        let mut tx = self.write_tx().await?;
        let Some(mut record) = fetch_key(&mut tx, id).await? else {
            return Ok(None);
        };
        if record.revoked_at.is_none() {
            record.revoked_at = Some(now);
            record.updated_at = now;
            sqlx::query("UPDATE keys SET revoked_at = ?, updated_at = ? WHERE id = ?")
                .bind(now)
                .bind(now)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            record_change(&mut tx, Entity::Key, &id.to_string(), "revoke", now).await?;
        }
        tx.commit().await?;
        Ok(Some(record))
    }

    async fn rotate_key(
        &self,
        id: Uuid,
        replacement: &KeyRecord,
        old_expires_at: UnixMillis,
        now: UnixMillis,
    ) -> Result<Option<KeyRecord>> {
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

    async fn put_settings(&self, settings: &InstanceSettings, now: UnixMillis) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ('instance', ?) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(json(settings))
        .execute(&mut *tx)
        .await?;
        record_change(&mut tx, Entity::Settings, "instance", "update", now).await?;
        tx.commit().await?;
        Ok(())
    }
}
