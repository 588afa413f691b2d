//! The webhook outbox: endpoints, events and their deliveries.
//!
//! An event is written in the same transaction as the change that caused it (it rides on
//! the change's [`AuditEntry`](crate::AuditEntry)) and fanned out there to one delivery
//! per subscribed endpoint, so a crash can never keep the change and lose the event.
//! Deliveries are claimed with a lease, attempted, and finished; a delivery whose lease ran
//! out (its node died mid-attempt) is claimed again: at-least-once.

use crate::Result;
use async_trait::async_trait;
use keygate_core::{KeyRecord, UnixMillis};
use uuid::Uuid;

/// A receiver of webhooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub url: String,
    /// Event types delivered; empty: every type.
    pub events: Vec<String>,
    pub enabled: bool,
    pub description: String,
    /// The user who owns it (an administrator's endpoint hears every event).
    pub owner: Option<Uuid>,
    /// The project it belongs to (hears events about that project's keys).
    pub project: Option<Uuid>,
    /// `whsec_…`, kept recoverable: keygate signs with it.
    pub secret: String,
    /// The secret before the last rotation, still signing until `previous_secret_until`.
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<UnixMillis>,
    /// A Stripe-style signature header (`X-CTF-Signature: t=…,v1=…`) besides the
    /// Standard Webhooks ones.
    pub signature_header: Option<String>,
    /// Failed attempts in a row (any delivery); reset by a success.
    pub consecutive_failures: u32,
    /// Why keygate switched the endpoint off (`410 Gone`), if it did.
    pub disabled_reason: Option<String>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

impl WebhookEndpoint {
    /// The secrets that sign a message sent at `now`: the current one first.
    pub fn signing_secrets(&self, now: UnixMillis) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(previous), Some(until)) = (&self.previous_secret, self.previous_secret_until)
            && until > now
        {
            secrets.push(previous);
        }
        secrets
    }
}

/// An event on its way into the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// `msg_…`: the `webhook-id` receivers de-duplicate on.
    pub id: String,
    pub event_type: String,
    /// `{"type","timestamp","data"}`, exactly as sent.
    pub payload: serde_json::Value,
    /// Whose endpoints hear it (administrators' endpoints hear everything).
    pub owner: Option<Uuid>,
    pub project: Option<Uuid>,
    /// Only this endpoint (a test event).
    pub endpoint: Option<Uuid>,
    pub at: UnixMillis,
}

impl OutboxEvent {
    /// An event of `event_type` about `data`, happening at `at`.
    pub fn new(event_type: &str, data: serde_json::Value, at: UnixMillis) -> Self {
        let timestamp = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000_000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        Self {
            id: format!("msg_{}", Uuid::now_v7().simple()),
            event_type: event_type.into(),
            payload: serde_json::json!({"type": event_type, "timestamp": timestamp, "data": data}),
            owner: None,
            project: None,
            endpoint: None,
            at,
        }
    }

    /// A key event (`key.created`, ...): names the key, never its secret.
    pub fn for_key(event_type: &str, key: &KeyRecord, at: UnixMillis) -> Self {
        let data = serde_json::json!({
            "id": key.id,
            "name": key.name,
            "start": key.start,
            "owner": key.owner,
            "project": key.project,
        });
        Self {
            owner: key.owner,
            project: key.project,
            ..Self::new(event_type, data, at)
        }
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    Delivered,
    /// Given up: attempts exhausted, the endpoint answered 410, or the address is refused.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// One event's delivery to one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: Uuid,
    pub event_id: String,
    pub event_type: String,
    pub endpoint_id: Uuid,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<UnixMillis>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub last_latency_ms: Option<u64>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

/// A claimed delivery with what sending it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DueDelivery {
    pub delivery: Delivery,
    pub payload: serde_json::Value,
    pub endpoint: WebhookEndpoint,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptOutcome {
    pub delivery: Uuid,
    pub endpoint: Uuid,
    pub at: UnixMillis,
    /// The new status; `Pending` with `next_attempt_at` to retry.
    pub status: DeliveryStatus,
    pub next_attempt_at: Option<UnixMillis>,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub latency_ms: u64,
    /// Switch the endpoint off, saying why (it answered 410).
    pub disable_endpoint: Option<String>,
}

#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    async fn create_webhook(
        &self,
        endpoint: &WebhookEndpoint,
        audit: &crate::AuditEntry,
    ) -> Result<()>;
    async fn get_webhook(&self, id: Uuid) -> Result<Option<WebhookEndpoint>>;
    /// Endpoints owned by `owner` or in one of `projects`; `None`: every endpoint.
    async fn list_webhooks(&self, owner: Option<(Uuid, Vec<Uuid>)>)
    -> Result<Vec<WebhookEndpoint>>;
    /// Stores every field of `endpoint` (by id) if it is unchanged since it was read
    /// (`read_at`, its `updated_at` then; else [`StoreError::Conflict`](crate::StoreError),
    /// so a stale read cannot undo a concurrent change); false if there is none.
    async fn update_webhook(
        &self,
        endpoint: &WebhookEndpoint,
        read_at: UnixMillis,
        audit: &crate::AuditEntry,
    ) -> Result<bool>;
    /// Deletes the endpoint and its deliveries.
    async fn delete_webhook(&self, id: Uuid, audit: &crate::AuditEntry) -> Result<bool>;
    /// The account-level signing secret of `owner`, if one was made.
    async fn account_webhook_secret(&self, owner: Uuid) -> Result<Option<String>>;
    /// Makes `secret` the account-level secret of `owner` and of every endpoint it owns
    /// (their old secrets keep signing until `overlap_until`).
    async fn set_account_webhook_secret(
        &self,
        owner: Uuid,
        secret: &str,
        overlap_until: UnixMillis,
        audit: &crate::AuditEntry,
    ) -> Result<()>;
    /// Writes events that no other change carries (rate-limit, quota, login events).
    async fn enqueue_events(&self, events: &[OutboxEvent]) -> Result<()>;
    /// Writes `event` unless a notice of `kind` about `subject` was written before (one
    /// `key.expiring` per key). True when it was written now.
    async fn enqueue_once(&self, subject: Uuid, kind: &str, event: &OutboxEvent) -> Result<bool>;
    /// Up to `limit` deliveries due at `now`, leased until `lease_until`.
    async fn claim_deliveries(
        &self,
        now: UnixMillis,
        lease_until: UnixMillis,
        limit: u32,
    ) -> Result<Vec<DueDelivery>>;
    /// Ends the lease of every delivery (a single node starting: nothing is in flight).
    async fn release_deliveries(&self) -> Result<u64>;
    /// Records an attempt: the delivery's new state and the endpoint's failure streak.
    async fn finish_attempt(&self, outcome: &AttemptOutcome) -> Result<()>;
    /// The newest deliveries to an endpoint.
    async fn list_deliveries(&self, endpoint: Uuid, limit: u32) -> Result<Vec<Delivery>>;
    /// Makes a delivery due now again; false if the endpoint has no such delivery.
    async fn retry_delivery(&self, endpoint: Uuid, id: Uuid, now: UnixMillis) -> Result<bool>;
}
