//! First start: the instance's global admin key and the `admin` user.

use crate::clock::now_ms;
use crate::http::system::GLOBAL_KEY_SECRET;
use crate::mint::{self, KeySpec, MintError};
use crate::passwords::{self, HashError, Passwords};
use keygate_core::{Role, UnixMillis, UserRecord};
use keygate_store::{AuditEntry, Store, StoreError};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mint(#[from] MintError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error("KEYGATE_ADMIN_PASSWORD {0}")]
    Password(String),
    #[error("the operating system's random number generator failed")]
    Entropy,
}

/// Creates the global admin key if the instance has none. Returns the key (to print once)
/// when it was created now. A copy is kept in the store's secrets so that administrators
/// can show it again (`GET /api/v1/settings/api-key?reveal=true`).
pub async fn ensure_global_key(
    store: &dyn Store,
    now: UnixMillis,
    prefix: &str,
) -> Result<Option<String>, BootstrapError> {
    let spec = KeySpec {
        name: "global admin key".into(),
        prefix: Some(prefix.into()),
        scopes: vec!["*".into()],
        enabled: true,
        global: true,
        ..Default::default()
    };
    let (key, record) = mint::mint(&spec, now)?;
    if !store.insert_global_key_if_absent(&record).await? {
        return Ok(None);
    }
    store.put_secret(GLOBAL_KEY_SECRET, &key).await?;
    Ok(Some(key))
}

/// Creates the `admin` user when the instance has no users. The password is `given`
/// (from `KEYGATE_ADMIN_PASSWORD`) or generated; a generated one is returned to print once.
pub async fn ensure_admin_user(
    store: &dyn Store,
    passwords: &Passwords,
    given: Option<String>,
) -> Result<Option<String>, BootstrapError> {
    if store.count_users().await? > 0 {
        return Ok(None);
    }
    let (password, generated) = match given {
        Some(password) => {
            passwords::validate_password(&password).map_err(BootstrapError::Password)?;
            (password, false)
        }
        None => (
            passwords::generate_password().map_err(|_| BootstrapError::Entropy)?,
            true,
        ),
    };
    let hash = passwords.hash(&password)?;
    let now = now_ms();
    let admin = UserRecord {
        id: Uuid::now_v7(),
        username: "admin".into(),
        email: None,
        role: Role::Admin,
        disabled: false,
        created_at: now,
        updated_at: now,
        last_login_at: None,
    };
    let entry = AuditEntry {
        at: now,
        actor: "instance".into(),
        action: "user.create".into(),
        target: Some(format!("user:{}", admin.id)),
        ..Default::default()
    };
    match store.create_user(&admin, &hash, &entry).await {
        Ok(()) => Ok(generated.then_some(password)),
        // Another process created it first.
        Err(StoreError::Conflict(_)) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// Settings and plans the configuration file declares, applied at every start (the file
/// wins over what the API changed; what it leaves out keeps the API's value).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Declared {
    pub settings: Option<keygate_api::system::SettingsPatch>,
    pub plans: Vec<keygate_api::keys::PlanRequest>,
}

/// Applies `declared` to the store; each change is audited as the configuration's.
pub async fn apply_declared(
    store: &dyn Store,
    declared: &Declared,
    now: UnixMillis,
) -> Result<(), BootstrapError> {
    let entry = |action: &str, target: String| AuditEntry {
        at: now,
        actor: "config".into(),
        action: action.into(),
        target: Some(target),
        ..Default::default()
    };
    if let Some(patch) = &declared.settings {
        let current = store.settings().await?;
        let mut wanted = current.clone();
        if let Some(on) = patch.api_access_enabled {
            wanted.api_access_enabled = on;
        }
        if let Some(on) = patch.query_param_enabled {
            wanted.query_param_enabled = on;
        }
        if let Some(limit) = patch.keys_per_user {
            wanted.keys_per_user = limit;
        }
        if wanted != current {
            store
                .put_settings(&wanted, &entry("settings.update", "settings".into()))
                .await?;
        }
    }
    let existing = store.load_plans().await?;
    for declared in &declared.plans {
        let limits = keygate_core::limit::Limits {
            rate_limits: declared.rate_limits.clone(),
            monthly_quota: declared.monthly_quota,
            overage: declared.overage.unwrap_or_default(),
        };
        match existing.iter().find(|p| p.name == declared.name.trim()) {
            Some(plan) if plan.limits == limits => {}
            Some(plan) => {
                let updated = keygate_store::Plan {
                    limits,
                    updated_at: now,
                    ..plan.clone()
                };
                store
                    .update_plan(&updated, &entry("plan.update", format!("plan:{}", plan.id)))
                    .await?;
            }
            None => {
                let plan = keygate_store::Plan {
                    id: Uuid::now_v7(),
                    name: declared.name.trim().to_string(),
                    limits,
                    created_at: now,
                    updated_at: now,
                };
                store
                    .create_plan(&plan, &entry("plan.create", format!("plan:{}", plan.id)))
                    .await?;
            }
        }
    }
    Ok(())
}
