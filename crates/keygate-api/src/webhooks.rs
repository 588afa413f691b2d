//! Webhook endpoints, secrets and deliveries on the wire.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// Every event type keygate sends.
pub const EVENT_TYPES: &[&str] = &[
    "key.created",
    "key.rotated",
    "key.revoked",
    "key.expiring",
    "key.expired",
    "quota.threshold",
    "quota.exceeded",
    "ratelimit.exceeded",
    "user.created",
    "auth.login_failed_burst",
    "webhook.test",
];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// `http://` or `https://`.
    pub url: String,
    /// Event types to receive; empty or absent: every type.
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub description: Option<String>,
    /// The owning user (admins only; others always own their endpoints).
    #[serde(default)]
    pub user_id: Option<Uuid>,
    /// Make it a project's endpoint: it hears events about that project's keys.
    #[serde(default)]
    pub project_id: Option<Uuid>,
    /// Also sign in one Stripe-style header of this name (`X-CTF-Signature: t=…,v1=…`).
    #[serde(default)]
    pub signature_header: Option<String>,
}

/// Only the fields present change; `"signature_header": null` removes the header.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// `true` also clears a `disabled_reason` keygate set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(
        default,
        deserialize_with = "crate::system::present_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub signature_header: Option<Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub enabled: bool,
    pub description: String,
    pub owner: Option<Uuid>,
    pub project_id: Option<Uuid>,
    pub signature_header: Option<String>,
    /// `active`, `failing` (a streak of failed attempts) or `disabled`.
    pub status: String,
    pub consecutive_failures: u32,
    /// Why keygate switched it off (`410 Gone`).
    pub disabled_reason: Option<String>,
    /// Until when the previous secret still signs beside the current one.
    #[serde(with = "time::serde::rfc3339::option")]
    pub previous_secret_expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// `whsec_…`: verify signatures with it.
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecretRequest {
    /// Seconds the old secret keeps signing beside the new one (default: the instance's,
    /// 24 h).
    #[serde(default)]
    pub overlap_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookSecret {
    /// The new `whsec_…` secret.
    pub secret: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub previous_secret_expires_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    pub id: Uuid,
    /// The `webhook-id` the receiver saw.
    pub event_id: String,
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub last_latency_ms: Option<u64>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TestEventSent {
    /// The `webhook-id` of the test event.
    pub event_id: String,
}
