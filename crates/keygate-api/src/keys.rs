//! Key management and verification wire types.

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

pub type Meta = serde_json::Map<String, serde_json::Value>;
pub use keygate_core::limit::{Limits, LimitsOverride, Overage, RateLimit};

/// A key as the management API shows it: never the key, never its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    pub id: Uuid,
    pub name: String,
    /// Prefix and first secret characters, to recognise a key (`kg_AbC1`).
    pub start: String,
    pub scopes: Vec<String>,
    #[schema(value_type = Object)]
    pub meta: Meta,
    pub enabled: bool,
    /// `active`, `disabled`, `expired` or `revoked`.
    pub state: String,
    /// `generated` or `imported`.
    pub origin: String,
    /// The instance's global admin key.
    pub global: bool,
    /// The user who owns the key; `null` for keys of the instance itself.
    pub owner: Option<Uuid>,
    /// The plan whose limits the key takes.
    pub plan: Option<Uuid>,
    /// The key's own limits, replacing its plan's field by field:
    /// `{"rate_limits": [{"limit", "period_seconds", "burst"}], "monthly_quota", "overage"}`.
    #[schema(value_type = Object)]
    pub limits: LimitsOverride,
    /// Requests counted against the monthly quota this month (this node's view).
    pub quota_used: Option<u64>,
    /// Client networks the key may be used from (empty: anywhere).
    #[schema(value_type = Vec<String>)]
    pub allowed_cidrs: Vec<ipnet::IpNet>,
    /// `user` (acts in every project of its owner) or `project` (pinned to `project_id`).
    pub level: String,
    pub project_id: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// On a rotated key: the id of its replacement.
    pub rotated_to: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    pub usage_count: u64,
}

/// A key as returned once, at creation or rotation: the record plus the full key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub record: KeyView,
    /// The full key. Shown this once; keygate keeps only its SHA-256.
    pub key: String,
}

fn default_key_name() -> String {
    "API key".into()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Default `API key`.
    #[serde(default = "default_key_name")]
    pub name: String,
    /// The user who will own the key (admins only; others always create their own).
    /// `user` is accepted too (Dispatcharr's `{"user": id}`).
    #[serde(default, alias = "user")]
    pub user_id: Option<Uuid>,
    /// Absent: none, or for a user's key the instance's `user_key_scopes`.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Key prefix, `[a-z][a-z0-9_]{0,15}`; default: the instance's (`kg`).
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub meta: Option<Meta>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// A plan id: the key takes its limits.
    #[serde(default)]
    pub plan: Option<Uuid>,
    /// The key's own limits, replacing the plan's field by field.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub limits: Option<LimitsOverride>,
    /// Client networks the key may be used from, e.g. `["10.0.0.0/8"]` (default: anywhere).
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub allowed_cidrs: Option<Vec<ipnet::IpNet>>,
    /// `user` (default) or `project`.
    #[serde(default)]
    pub level: Option<String>,
    /// The project of a project-level key.
    #[serde(default)]
    pub project_id: Option<Uuid>,
}

/// Adopt a key string from another system; it is hashed like any other key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportKeyRequest {
    /// 16–512 visible ASCII characters.
    pub key: String,
    pub name: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub meta: Option<Meta>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// Only the fields present change; `"expires_at": null` removes the expiry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub meta: Option<Meta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(
        default,
        deserialize_with = "present_or_null",
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_nullable_time"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Option<OffsetDateTime>>,
    /// A plan id, or `null` to take the key off its plan.
    #[serde(
        default,
        deserialize_with = "uuid_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Uuid>)]
    pub plan: Option<Option<Uuid>>,
    /// Replaces the key's own limits (`{}` removes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub limits: Option<LimitsOverride>,
    /// Replaces the key's network allowlist (`[]`: anywhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub allowed_cidrs: Option<Vec<ipnet::IpNet>>,
}

fn uuid_or_null<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<Uuid>>, D::Error> {
    Option::<Uuid>::deserialize(deserializer).map(Some)
}

/// Tells `"field": null` (Some(None)) from an absent field (None).
fn present_or_null<'de, D>(deserializer: D) -> Result<Option<Option<OffsetDateTime>>, D::Error>
where
    D: Deserializer<'de>,
{
    time::serde::rfc3339::option::deserialize(deserializer).map(Some)
}

fn serialize_nullable_time<S: serde::Serializer>(
    value: &Option<Option<OffsetDateTime>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    time::serde::rfc3339::option::serialize(&value.flatten(), serializer)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    /// How long the old key keeps working after rotation (default 0: it stops at once).
    #[serde(default)]
    pub grace_seconds: u64,
}

/// `POST /api/v1/keys/rotate`: the calling key rotates itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SelfRotateRequest {
    /// How long the calling key keeps working (default and maximum: the instance's
    /// `self_rotation_grace`).
    #[serde(default)]
    pub grace_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RotatedKey {
    /// The replacement, with its full key (shown this once).
    #[serde(flatten)]
    pub key: CreatedKey,
    /// The old key, now expiring at the end of the grace period.
    pub previous: KeyView,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
    /// Pass as `offset` to get the next page; absent on the last page.
    pub next_offset: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub key: String,
    /// Scopes the key must hold.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The address of the client that presented the key, for keys with an IP allowlist.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub ip: Option<std::net::IpAddr>,
    /// The project the request acts in (what the client sent as `X-Project-ID`).
    #[serde(default)]
    pub project_id: Option<String>,
    /// The route acts inside a project: a user-level key must name one.
    #[serde(default)]
    pub project_required: bool,
    /// The path the client called; it is project-scoped unless the instance lists it in
    /// `project_exempt_paths` (this sets `project_required` for you).
    #[serde(default)]
    pub path: Option<String>,
}

/// The verify API's answer: always 200 for a well-formed request; `valid` says the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VerifyResponse {
    pub valid: bool,
    /// `VALID`, `NOT_FOUND`, `REVOKED`, ... (DESIGN.md's decision codes).
    pub code: String,
    pub key_id: Option<Uuid>,
    pub name: Option<String>,
    pub scopes: Vec<String>,
    #[schema(value_type = Option<Object>)]
    pub meta: Option<Meta>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_scope: Option<String>,
    /// The project the request acts in: the key's own, or the one named and allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<Uuid>,
    /// For `RATE_LIMITED` and `QUOTA_EXCEEDED`: seconds until a retry can succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Each limit on the key after this request: `{"name","limit","window","remaining","reset"}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LimitView {
    /// `minute`, `hour`, `day`, `month`, or `<n>s`.
    pub name: String,
    pub limit: u64,
    /// Window in seconds.
    pub window: u64,
    pub remaining: u64,
    /// Seconds until the limit is fully available again.
    pub reset: u64,
}

/// A plan: a name and the limits of the keys on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlanView {
    pub id: Uuid,
    pub name: String,
    #[schema(value_type = Vec<Object>)]
    pub rate_limits: Vec<RateLimit>,
    pub monthly_quota: Option<u64>,
    /// `block` (refuse with quota_exceeded) or `allow` (serve and count the overage).
    #[schema(value_type = String)]
    pub overage: Overage,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub rate_limits: Vec<RateLimit>,
    #[serde(default)]
    pub monthly_quota: Option<u64>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub overage: Option<Overage>,
}

/// Only the fields present change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub rate_limits: Option<Vec<RateLimit>>,
    /// A number, or `null` for no quota.
    #[serde(
        default,
        deserialize_with = "u64_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u64>)]
    pub monthly_quota: Option<Option<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub overage: Option<Overage>,
}

fn u64_or_null<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlanList {
    pub plans: Vec<PlanView>,
}

/// Who the request's credential belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// `api_key`, `jwt`, or `none` when API access is switched off.
    pub auth: String,
    pub key_id: Option<Uuid>,
    /// The key's name, or the user's name for a JWT.
    pub name: Option<String>,
    pub scopes: Vec<String>,
    /// The user acting (a key's owner, or the JWT's subject).
    pub user_id: Option<Uuid>,
    pub role: Option<String>,
    /// The project the request acts in.
    pub project_id: Option<Uuid>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_tells_null_from_absent() {
        let absent: UpdateKeyRequest = serde_json::from_str("{}").expect("parses");
        assert_eq!(absent.expires_at, None);
        let null: UpdateKeyRequest =
            serde_json::from_str(r#"{"expires_at":null}"#).expect("parses");
        assert_eq!(null.expires_at, Some(None));
        let set: UpdateKeyRequest =
            serde_json::from_str(r#"{"expires_at":"2030-01-01T00:00:00Z"}"#).expect("parses");
        assert!(matches!(set.expires_at, Some(Some(_))));
        assert!(serde_json::from_str::<UpdateKeyRequest>(r#"{"expires_at":"soon"}"#).is_err());
        assert!(serde_json::from_str::<UpdateKeyRequest>(r#"{"colour":"red"}"#).is_err());
    }
}

/// Decisions in one period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageRow {
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    pub valid: u64,
    pub rate_limited: u64,
    pub quota_exceeded: u64,
    /// Every other refusal of a known key (revoked, expired, disabled, scope, address).
    pub denied: u64,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    /// Periods with at least one decision, oldest first.
    pub rows: Vec<UsageRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FreeKeyRequest {
    pub email: String,
}

/// A self-service free key, shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FreeKeyResponse {
    pub api_key: String,
    /// The plan's name.
    pub plan: String,
    pub monthly_limit: Option<u64>,
    pub message: String,
}
