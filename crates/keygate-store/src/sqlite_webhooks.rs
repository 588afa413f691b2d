//! [`WebhookStore`] on SQLite.

use crate::sqlite::{SqliteStore, audit_tx, json};
use crate::webhooks::{
    AttemptOutcome, Delivery, DeliveryStatus, DueDelivery, OutboxEvent, WebhookEndpoint,
    WebhookStore,
};
use crate::{AuditEntry, Result, StoreError};
use async_trait::async_trait;
use keygate_core::UnixMillis;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;

const ENDPOINT_COLUMNS: &str = "id, url, events, enabled, description, owner, project, secret, \
     previous_secret, previous_secret_until, signature_header, consecutive_failures, \
     disabled_reason, created_at, updated_at";

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, e.type, d.endpoint_id, d.status, d.attempts, \
     d.next_attempt_at, d.last_status_code, d.last_error, d.last_latency_ms, d.created_at, \
     d.updated_at";

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.into())
}

fn uuid_of(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|_| corrupt("a webhook id"))
}

fn opt_uuid(row: &SqliteRow, column: &str) -> Result<Option<Uuid>> {
    row.try_get::<Option<String>, _>(column)?
        .as_deref()
        .map(uuid_of)
        .transpose()
}

fn endpoint_from_row(row: &SqliteRow) -> Result<WebhookEndpoint> {
    Ok(WebhookEndpoint {
        id: uuid_of(row.try_get("id")?)?,
        url: row.try_get("url")?,
        events: serde_json::from_str(row.try_get("events")?)
            .map_err(|_| corrupt("webhook events"))?,
        enabled: row.try_get("enabled")?,
        description: row.try_get("description")?,
        owner: opt_uuid(row, "owner")?,
        project: opt_uuid(row, "project")?,
        secret: row.try_get("secret")?,
        previous_secret: row.try_get("previous_secret")?,
        previous_secret_until: row.try_get("previous_secret_until")?,
        signature_header: row.try_get("signature_header")?,
        consecutive_failures: u32::try_from(row.try_get::<i64, _>("consecutive_failures")?)
            .unwrap_or(u32::MAX),
        disabled_reason: row.try_get("disabled_reason")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn delivery_from_row(row: &SqliteRow) -> Result<Delivery> {
    Ok(Delivery {
        id: uuid_of(row.try_get(0)?)?,
        event_id: row.try_get(1)?,
        event_type: row.try_get(2)?,
        endpoint_id: uuid_of(row.try_get(3)?)?,
        status: DeliveryStatus::parse(row.try_get(4)?).ok_or_else(|| corrupt("delivery status"))?,
        attempts: u32::try_from(row.try_get::<i64, _>(5)?).unwrap_or(u32::MAX),
        next_attempt_at: row.try_get(6)?,
        last_status_code: row
            .try_get::<Option<i64>, _>(7)?
            .and_then(|c| u16::try_from(c).ok()),
        last_error: row.try_get(8)?,
        last_latency_ms: row
            .try_get::<Option<i64>, _>(9)?
            .and_then(|l| u64::try_from(l).ok()),
        created_at: row.try_get(10)?,
        updated_at: row.try_get(11)?,
    })
}

/// Writes events into the outbox and fans each out to the endpoints that hear it, inside
/// the caller's transaction.
pub(crate) async fn enqueue_tx(
    tx: &mut Transaction<'static, Sqlite>,
    events: &[OutboxEvent],
) -> Result<()> {
    for event in events {
        sqlx::query(
            "INSERT INTO webhook_events (id, type, payload, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&event.id)
        .bind(&event.event_type)
        .bind(json(&event.payload))
        .bind(event.at)
        .execute(&mut **tx)
        .await?;
        let endpoints = sqlx::query(
            // A test event goes to its one endpoint. Others go to the subscribed endpoints
            // of the subject's project, of its owner, of administrators and of the
            // instance itself (endpoints with neither owner nor project).
            "SELECT e.id FROM webhook_endpoints e
             WHERE e.enabled = 1
               AND (   (?2 IS NOT NULL AND e.id = ?2)
                    OR (?2 IS NULL
                        AND (e.events = '[]'
                             OR EXISTS (SELECT 1 FROM json_each(e.events) j WHERE j.value = ?1))
                        AND (   (e.project IS NOT NULL AND e.project = ?3)
                             OR (e.project IS NULL AND e.owner IS NULL)
                             OR (e.project IS NULL AND e.owner = ?4)
                             OR (e.project IS NULL AND EXISTS (
                                    SELECT 1 FROM users u
                                    WHERE u.id = e.owner AND u.role = 'admin')))))
               -- An owner who was disabled or deleted hears nothing more; a project's
               -- endpoint only while its owner still belongs to the project (or is an
               -- administrator).
               AND (e.owner IS NULL
                    OR EXISTS (SELECT 1 FROM users u WHERE u.id = e.owner AND u.disabled = 0))
               AND (e.project IS NULL OR e.owner IS NULL
                    OR EXISTS (SELECT 1 FROM project_members m
                               WHERE m.project_id = e.project AND m.user_id = e.owner)
                    OR EXISTS (SELECT 1 FROM users u WHERE u.id = e.owner AND u.role = 'admin'))",
        )
        .bind(&event.event_type)
        .bind(event.endpoint.map(|id| id.to_string()))
        .bind(event.project.map(|id| id.to_string()))
        .bind(event.owner.map(|id| id.to_string()))
        .fetch_all(&mut **tx)
        .await?;
        for endpoint in endpoints {
            let endpoint: String = endpoint.try_get(0)?;
            sqlx::query(
                "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, status, attempts,
                     next_attempt_at, created_at, updated_at)
                 VALUES (?, ?, ?, 'pending', 0, ?, ?, ?)",
            )
            .bind(Uuid::now_v7().to_string())
            .bind(&event.id)
            .bind(endpoint)
            .bind(event.at)
            .bind(event.at)
            .bind(event.at)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

async fn write_endpoint_tx(
    tx: &mut Transaction<'static, Sqlite>,
    e: &WebhookEndpoint,
    insert: bool,
) -> Result<u64> {
    let sql = if insert {
        format!(
            "INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
        )
    } else {
        // The failure count belongs to the delivery worker, which updates it without
        // touching `updated_at`, so a write from an earlier read must not put back the
        // count it read. An update leaves it alone, except that switching a disabled
        // endpoint back on starts it from zero.
        "UPDATE webhook_endpoints SET url = ?2, events = ?3, enabled = ?4, description = ?5, \
         owner = ?6, project = ?7, secret = ?8, previous_secret = ?9, previous_secret_until = ?10, \
         signature_header = ?11, \
         consecutive_failures = CASE WHEN enabled = 0 AND ?4 = 1 THEN 0 ELSE consecutive_failures END, \
         disabled_reason = ?13, \
         created_at = ?14, updated_at = ?15 WHERE id = ?1"
            .to_string()
    };
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(e.id.to_string())
        .bind(&e.url)
        .bind(json(&e.events))
        .bind(e.enabled)
        .bind(&e.description)
        .bind(e.owner.map(|id| id.to_string()))
        .bind(e.project.map(|id| id.to_string()))
        .bind(&e.secret)
        .bind(&e.previous_secret)
        .bind(e.previous_secret_until)
        .bind(&e.signature_header)
        .bind(i64::from(e.consecutive_failures))
        .bind(&e.disabled_reason)
        .bind(e.created_at)
        .bind(e.updated_at)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected())
}

#[async_trait]
impl WebhookStore for SqliteStore {
    async fn create_webhook(&self, endpoint: &WebhookEndpoint, audit: &AuditEntry) -> Result<()> {
        let mut tx = self.write_tx().await?;
        write_endpoint_tx(&mut tx, endpoint, true).await?;
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_webhook(&self, id: Uuid) -> Result<Option<WebhookEndpoint>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?"
        )))
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(endpoint_from_row).transpose()
    }

    async fn list_webhooks(
        &self,
        owner: Option<(Uuid, Vec<Uuid>)>,
    ) -> Result<Vec<WebhookEndpoint>> {
        let rows = match owner {
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at"
                )))
                .fetch_all(self.pool())
                .await?
            }
            Some((owner, projects)) => {
                let projects: Vec<String> = projects.iter().map(Uuid::to_string).collect();
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints
                     WHERE owner = ? OR project IN (SELECT value FROM json_each(?))
                     ORDER BY created_at"
                )))
                .bind(owner.to_string())
                .bind(json(&projects))
                .fetch_all(self.pool())
                .await?
            }
        };
        rows.iter().map(endpoint_from_row).collect()
    }

    async fn update_webhook(
        &self,
        endpoint: &WebhookEndpoint,
        read_at: UnixMillis,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT updated_at FROM webhook_endpoints WHERE id = ?")
                .bind(endpoint.id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        match current {
            None => return Ok(false),
            Some(at) if at != read_at => {
                return Err(StoreError::Conflict(
                    "the endpoint changed meanwhile; read it again and retry".into(),
                ));
            }
            Some(_) => {}
        }
        write_endpoint_tx(&mut tx, endpoint, false).await?;
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn delete_webhook(&self, id: Uuid, audit: &AuditEntry) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let id = id.to_string();
        let deleted = sqlx::query("DELETE FROM webhook_endpoints WHERE id = ?")
            .bind(&id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM webhook_deliveries WHERE endpoint_id = ?")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn account_webhook_secret(&self, owner: Uuid) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT secret FROM webhook_account_secrets WHERE owner = ?")
                .bind(owner.to_string())
                .fetch_optional(self.pool())
                .await?,
        )
    }

    async fn set_account_webhook_secret(
        &self,
        owner: Uuid,
        secret: &str,
        overlap_until: UnixMillis,
        audit: &AuditEntry,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let owner = owner.to_string();
        sqlx::query(
            "INSERT INTO webhook_account_secrets (owner, secret, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (owner) DO UPDATE SET secret = ?2, updated_at = ?3",
        )
        .bind(&owner)
        .bind(secret)
        .bind(audit.at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_until = ?1,
                 secret = ?2, updated_at = ?3
             WHERE owner = ?4 AND project IS NULL",
        )
        .bind(overlap_until)
        .bind(secret)
        .bind(audit.at)
        .bind(&owner)
        .execute(&mut *tx)
        .await?;
        audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn enqueue_events(&self, events: &[OutboxEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        enqueue_tx(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn enqueue_once(&self, subject: Uuid, kind: &str, event: &OutboxEvent) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO webhook_notices (subject, kind, at) VALUES (?, ?, ?)",
        )
        .bind(subject.to_string())
        .bind(kind)
        .bind(event.at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        enqueue_tx(&mut tx, std::slice::from_ref(event)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn claim_deliveries(
        &self,
        now: UnixMillis,
        lease_until: UnixMillis,
        limit: u32,
    ) -> Result<Vec<DueDelivery>> {
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS}, e.payload FROM webhook_deliveries d
             JOIN webhook_events e ON e.id = d.event_id
             JOIN webhook_endpoints w ON w.id = d.endpoint_id
             WHERE d.status = 'pending' AND d.next_attempt_at <= ?1
               AND (d.leased_until IS NULL OR d.leased_until <= ?1)
               -- A paused endpoint keeps its deliveries pending until it is enabled again.
               AND w.enabled = 1
             ORDER BY d.next_attempt_at LIMIT ?2"
        )))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let mut due = Vec::with_capacity(rows.len());
        for row in &rows {
            let delivery = delivery_from_row(row)?;
            let payload: String = row.try_get(12)?;
            let payload = serde_json::from_str(&payload).map_err(|_| corrupt("webhook payload"))?;
            let endpoint = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?"
            )))
            .bind(delivery.endpoint_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(endpoint) = endpoint.as_ref().map(endpoint_from_row).transpose()? else {
                continue;
            };
            sqlx::query("UPDATE webhook_deliveries SET leased_until = ? WHERE id = ?")
                .bind(lease_until)
                .bind(delivery.id.to_string())
                .execute(&mut *tx)
                .await?;
            due.push(DueDelivery {
                delivery,
                payload,
                endpoint,
            });
        }
        tx.commit().await?;
        Ok(due)
    }

    async fn release_deliveries(&self) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE webhook_deliveries SET leased_until = NULL
             WHERE status = 'pending' AND leased_until IS NOT NULL",
        )
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    async fn finish_attempt(&self, outcome: &AttemptOutcome) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE webhook_deliveries SET status = ?, attempts = attempts + 1,
                 next_attempt_at = ?, leased_until = NULL, last_status_code = ?, last_error = ?,
                 last_latency_ms = ?, updated_at = ?
             WHERE id = ?",
        )
        .bind(outcome.status.as_str())
        .bind(outcome.next_attempt_at)
        .bind(outcome.status_code.map(i64::from))
        .bind(&outcome.error)
        .bind(i64::try_from(outcome.latency_ms).unwrap_or(i64::MAX))
        .bind(outcome.at)
        .bind(outcome.delivery.to_string())
        .execute(&mut *tx)
        .await?;
        let endpoint = outcome.endpoint.to_string();
        if outcome.status == DeliveryStatus::Delivered {
            sqlx::query("UPDATE webhook_endpoints SET consecutive_failures = 0 WHERE id = ?")
                .bind(&endpoint)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query(
                "UPDATE webhook_endpoints SET consecutive_failures = consecutive_failures + 1
                 WHERE id = ?",
            )
            .bind(&endpoint)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(reason) = &outcome.disable_endpoint {
            sqlx::query(
                "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?, updated_at = ?
                 WHERE id = ?",
            )
            .bind(reason)
            .bind(outcome.at)
            .bind(&endpoint)
            .execute(&mut *tx)
            .await?;
            // Nothing more goes to an endpoint that is gone.
            sqlx::query(
                "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL,
                     last_error = ?, updated_at = ?
                 WHERE endpoint_id = ? AND status = 'pending'",
            )
            .bind(reason)
            .bind(outcome.at)
            .bind(&endpoint)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_deliveries(&self, endpoint: Uuid, limit: u32) -> Result<Vec<Delivery>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d
             JOIN webhook_events e ON e.id = d.event_id
             WHERE d.endpoint_id = ? ORDER BY d.created_at DESC, d.id DESC LIMIT ?"
        )))
        .bind(endpoint.to_string())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(delivery_from_row).collect()
    }

    async fn retry_delivery(&self, endpoint: Uuid, id: Uuid, now: UnixMillis) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = ?,
                 leased_until = NULL, updated_at = ?
             WHERE id = ? AND endpoint_id = ?",
        )
        .bind(now)
        .bind(now)
        .bind(id.to_string())
        .bind(endpoint.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(done > 0)
    }
}
