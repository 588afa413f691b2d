//! Instance settings that an administrator changes at run time (`/api/v1/settings`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceSettings {
    /// When false, protected endpoints answer without a credential (changedetection.io's
    /// "API access token enabled" toggle). Meant for trusted networks only.
    pub api_access_enabled: bool,
    /// Accept the credential in the `apikey` query parameter.
    pub query_param_enabled: bool,
    /// Personal keys a user may hold; creating one more revokes the oldest at once
    /// (`1` is Dispatcharr's one-key-per-user rule). `None`: unlimited.
    pub keys_per_user: Option<u32>,
}

impl Default for InstanceSettings {
    fn default() -> Self {
        Self {
            api_access_enabled: true,
            query_param_enabled: false,
            keys_per_user: None,
        }
    }
}
