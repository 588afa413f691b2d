//! Settings, system information and health wire types.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The instance settings (`GET /api/v1/settings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Settings {
    /// When false, forward auth, the reverse proxy, `whoami` and `systeminfo` answer without
    /// a credential; the management API still needs one. Trusted networks only.
    pub api_access_enabled: bool,
    /// Accept the credential in the `apikey` query parameter.
    pub query_param_enabled: bool,
    /// Personal keys per user; a new one revokes the oldest beyond it. `null`: unlimited.
    pub keys_per_user: Option<u32>,
}

/// `PATCH /api/v1/settings`: only the fields present change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_access_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_param_enabled: Option<bool>,
    /// A number ≥ 1, or `null` for unlimited.
    #[serde(
        default,
        deserialize_with = "present_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u32>)]
    pub keys_per_user: Option<Option<u32>>,
}

pub(crate) fn present_or_null<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyCounts {
    pub active: usize,
    pub disabled: usize,
    pub expired: usize,
    pub revoked: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChangeFeedInfo {
    /// Last change applied to this node's index.
    pub applied_seq: u64,
    /// Changes in the store not yet applied here, as of the last poll.
    pub lag: u64,
    /// Milliseconds since this node last read the feed successfully.
    pub last_poll_ms_ago: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SystemInfo {
    pub version: String,
    pub uptime_seconds: u64,
    pub keys: KeyCounts,
    /// Keys held by this node's in-memory index.
    pub index_size: usize,
    pub change_feed: ChangeFeedInfo,
    /// Keys with usage counted in memory and not yet flushed to the store.
    pub flush_queue: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or what is not ready.
    pub status: String,
}
