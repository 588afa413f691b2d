//! Making new key records: validation of what an operator asked for, the secret from the
//! OS CSPRNG, and the record that keeps only the key's hash.

use keygate_core::key_format::{self, DEFAULT_PREFIX};
use keygate_core::{KeyOrigin, KeyRecord, UnixMillis, scope};
use uuid::Uuid;

/// What a new key should look like.
#[derive(Debug, Clone, Default)]
pub struct KeySpec {
    pub name: String,
    pub scopes: Vec<String>,
    pub prefix: Option<String>,
    pub expires_at: Option<UnixMillis>,
    pub meta: serde_json::Map<String, serde_json::Value>,
    pub enabled: bool,
    pub global: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("the operating system's random number generator failed")]
    Entropy,
}

fn invalid(field: &'static str, message: impl Into<String>) -> MintError {
    MintError::Invalid {
        field,
        message: message.into(),
    }
}

/// Longest key name accepted.
pub const MAX_NAME_LEN: usize = 200;

pub fn validate_name(name: &str) -> Result<(), MintError> {
    if name.trim().is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(invalid(
            "name",
            format!("must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("name", "must not contain control characters"));
    }
    Ok(())
}

pub fn validate_scopes(scopes: &[String]) -> Result<(), MintError> {
    if scopes.len() > 100 {
        return Err(invalid("scopes", "at most 100 scopes per key"));
    }
    scopes
        .iter()
        .try_for_each(|s| scope::validate_scope(s))
        .map_err(|message| invalid("scopes", message))
}

pub fn validate_expiry(expires_at: Option<UnixMillis>, now: UnixMillis) -> Result<(), MintError> {
    match expires_at {
        Some(at) if at <= now => Err(invalid("expires_at", "must be in the future")),
        _ => Ok(()),
    }
}

fn validate(spec: &KeySpec, now: UnixMillis) -> Result<(), MintError> {
    validate_name(&spec.name)?;
    validate_scopes(&spec.scopes)?;
    validate_expiry(spec.expires_at, now)
}

fn record(
    spec: &KeySpec,
    hash: [u8; 32],
    start: String,
    origin: KeyOrigin,
    now: UnixMillis,
) -> KeyRecord {
    KeyRecord {
        id: Uuid::now_v7(),
        hash,
        start,
        name: spec.name.trim().to_string(),
        scopes: spec.scopes.clone(),
        meta: spec.meta.clone(),
        enabled: spec.enabled,
        origin,
        global: spec.global,
        owner: None,
        plan: None,
        limits: Default::default(),
        allowed_cidrs: Vec::new(),
        project: None,
        created_at: now,
        updated_at: now,
        expires_at: spec.expires_at,
        revoked_at: None,
        rotated_to: None,
        last_used_at: None,
        usage_count: 0,
    }
}

/// Generates a new key. Returns the full key (to show once) and its record.
pub fn mint(spec: &KeySpec, now: UnixMillis) -> Result<(String, KeyRecord), MintError> {
    validate(spec, now)?;
    let prefix = spec.prefix.as_deref().unwrap_or(DEFAULT_PREFIX);
    key_format::validate_prefix(prefix).map_err(|_| {
        invalid(
            "prefix",
            "must be 1 to 16 characters: lower-case letters, digits and `_`, starting with a letter",
        )
    })?;
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|_| MintError::Entropy)?;
    let key = key_format::format_key(prefix, &secret).map_err(|e| invalid("prefix", e.hint()))?;
    let parsed = key_format::parse_key(&key).map_err(|e| invalid("prefix", e.hint()))?;
    let record = record(
        spec,
        key_format::hash_key(&key),
        parsed.start(),
        KeyOrigin::Generated,
        now,
    );
    Ok((key, record))
}

/// Adopts an existing key string from another system.
pub fn adopt(key: &str, spec: &KeySpec, now: UnixMillis) -> Result<KeyRecord, MintError> {
    validate(spec, now)?;
    match key_format::parse_key(key) {
        // A keygate-format key keeps its own display start.
        Ok(parsed) => Ok(record(
            spec,
            key_format::hash_key(key),
            parsed.start(),
            KeyOrigin::Generated,
            now,
        )),
        // Shaped like ours but with a bad checksum: every request with it would be refused
        // as malformed before any lookup, so adopting it would be a trap.
        Err(key_format::FormatError::Checksum) => Err(invalid(
            "key",
            "looks like a keygate key but its checksum is wrong, so it could never be used",
        )),
        Err(_) => {
            key_format::validate_imported(key).map_err(|m| invalid("key", m))?;
            Ok(record(
                spec,
                key_format::hash_key(key),
                key_format::imported_start(key),
                KeyOrigin::Imported,
                now,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KeySpec {
        KeySpec {
            name: "ci".into(),
            enabled: true,
            ..Default::default()
        }
    }

    #[test]
    fn minted_keys_parse_and_hash() {
        let (key, record) = mint(
            &KeySpec {
                prefix: Some("ctf_sk".into()),
                ..spec()
            },
            10,
        )
        .expect("mint");
        assert!(key.starts_with("ctf_sk_"));
        assert_eq!(record.hash, key_format::hash_key(&key));
        assert!(key.starts_with(&record.start));
        let (other, _) = mint(&spec(), 10).expect("mint");
        assert_ne!(key, other);
    }

    #[test]
    fn bad_specs_name_their_field() {
        let cases: Vec<(KeySpec, &str)> = vec![
            (
                KeySpec {
                    name: " ".into(),
                    ..spec()
                },
                "name",
            ),
            (
                KeySpec {
                    prefix: Some("Bad".into()),
                    ..spec()
                },
                "prefix",
            ),
            (
                KeySpec {
                    scopes: vec!["a b".into()],
                    ..spec()
                },
                "scopes",
            ),
            (
                KeySpec {
                    expires_at: Some(5),
                    ..spec()
                },
                "expires_at",
            ),
        ];
        for (spec, field) in cases {
            match mint(&spec, 10) {
                Err(MintError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn adoption() {
        let imported = adopt("legacy_0123456789abcdef", &spec(), 1).expect("adopt");
        assert_eq!(
            (imported.origin, imported.start.as_str()),
            (KeyOrigin::Imported, "legacy_0")
        );
        assert!(adopt("short", &spec(), 1).is_err());
        let (key, _) = mint(&spec(), 1).expect("mint");
        assert_eq!(
            adopt(&key, &spec(), 1).expect("adopt").origin,
            KeyOrigin::Generated
        );
        let mut broken = key.clone();
        let last = broken.pop();
        broken.push(if last == Some('0') { '1' } else { '0' });
        assert!(matches!(
            adopt(&broken, &spec(), 1),
            Err(MintError::Invalid { field: "key", .. })
        ));
    }
}
