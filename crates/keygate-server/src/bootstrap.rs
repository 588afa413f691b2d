//! First start: the instance's global admin key.

use crate::mint::{self, KeySpec, MintError};
use keygate_core::UnixMillis;
use keygate_store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mint(#[from] MintError),
}

/// Creates the global admin key if the instance has none. Returns the key (to print once)
/// when it was created now.
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
    Ok(store
        .insert_global_key_if_absent(&record)
        .await?
        .then_some(key))
}
