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
) -> Result<Option<String>, BootstrapError> {
    let spec = KeySpec {
        name: "global admin key".into(),
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
