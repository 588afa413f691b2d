//! The one function that decides whether a credential is good for a request.
//!
//! Phases, each of which may end the request: parse → hash → index lookup → state checks
//! → scope check. (Project, IP, rate-limit and quota phases slot in after scopes.)

use crate::credential::looks_like_jwt;
use crate::index::{IndexedKey, KeyIndex};
use crate::key_format::{self, FormatError, hash_key};
use crate::limit::{LimitRefusal, LimitStatuses, RouteLimits};
use crate::record::{KeyState, UnixMillis};
use crate::scope;
use crate::user::{self, Role};
use std::sync::Arc;

/// Every outcome a decision can have (DESIGN.md, "Decisions and errors").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionCode {
    Valid,
    Missing,
    Ambiguous,
    Malformed,
    NotFound,
    Revoked,
    Expired,
    Disabled,
    InvalidToken,
    TokenExpired,
    ProjectRequired,
    InsufficientPermissions,
    ProjectForbidden,
    IpNotAllowed,
    RateLimited,
    QuotaExceeded,
}

impl DecisionCode {
    pub const ALL: [DecisionCode; 16] = [
        DecisionCode::Valid,
        DecisionCode::Missing,
        DecisionCode::Ambiguous,
        DecisionCode::Malformed,
        DecisionCode::NotFound,
        DecisionCode::Revoked,
        DecisionCode::Expired,
        DecisionCode::Disabled,
        DecisionCode::InvalidToken,
        DecisionCode::TokenExpired,
        DecisionCode::ProjectRequired,
        DecisionCode::InsufficientPermissions,
        DecisionCode::ProjectForbidden,
        DecisionCode::IpNotAllowed,
        DecisionCode::RateLimited,
        DecisionCode::QuotaExceeded,
    ];

    /// The upper-case name used by the verify API (`"NOT_FOUND"`).
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionCode::Valid => "VALID",
            DecisionCode::Missing => "MISSING",
            DecisionCode::Ambiguous => "AMBIGUOUS",
            DecisionCode::Malformed => "MALFORMED",
            DecisionCode::NotFound => "NOT_FOUND",
            DecisionCode::Revoked => "REVOKED",
            DecisionCode::Expired => "EXPIRED",
            DecisionCode::Disabled => "DISABLED",
            DecisionCode::InvalidToken => "INVALID_TOKEN",
            DecisionCode::TokenExpired => "TOKEN_EXPIRED",
            DecisionCode::ProjectRequired => "PROJECT_REQUIRED",
            DecisionCode::InsufficientPermissions => "INSUFFICIENT_PERMISSIONS",
            DecisionCode::ProjectForbidden => "PROJECT_FORBIDDEN",
            DecisionCode::IpNotAllowed => "IP_NOT_ALLOWED",
            DecisionCode::RateLimited => "RATE_LIMITED",
            DecisionCode::QuotaExceeded => "QUOTA_EXCEEDED",
        }
    }
}

/// What the decision needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a, S: AsRef<str>> {
    /// The credential, already trimmed.
    pub credential: &'a str,
    /// Whitespace was trimmed from the credential (mentioned in the hint if it fails).
    pub trimmed: bool,
    pub required_scopes: &'a [S],
    pub now: UnixMillis,
    /// The client's address, for keys with an IP allowlist (`None`: unknown).
    pub client_ip: Option<std::net::IpAddr>,
    /// The project the request names (the `X-Project-ID` header), if any.
    pub project: Option<&'a str>,
    /// The route acts inside a project, so a user-level key must name one.
    pub project_required: bool,
    /// The route's own rate limits, replacing the key's there.
    pub route_limits: Option<RouteLimits<'a>>,
}

/// The outcome, with the key when one was found (also on refusals such as `REVOKED`).
#[derive(Debug, Clone)]
pub struct Decision {
    pub code: DecisionCode,
    pub key: Option<Arc<IndexedKey>>,
    /// What the client should do about a refusal. Never contains the credential.
    pub hint: Option<String>,
    /// For `INSUFFICIENT_PERMISSIONS`: the first scope the key lacks.
    pub missing_scope: Option<String>,
    /// The state of each limit that applies to the key (for `RateLimit` fields).
    pub limits: LimitStatuses,
    /// For `RATE_LIMITED` and `QUOTA_EXCEEDED`: when a retry can succeed.
    pub retry_after_ms: Option<i64>,
    /// The key's owner and their role, read under the same lock as the decision.
    pub owner: Option<(uuid::Uuid, Role)>,
    /// The project the request acts in: the key's own, or the one named and allowed.
    pub project: Option<uuid::Uuid>,
}

impl Decision {
    pub fn is_valid(&self) -> bool {
        self.code == DecisionCode::Valid
    }

    fn refuse(code: DecisionCode, key: Option<Arc<IndexedKey>>, hint: Option<String>) -> Self {
        Decision {
            code,
            key,
            hint,
            missing_scope: None,
            limits: LimitStatuses::default(),
            retry_after_ms: None,
            owner: None,
            project: None,
        }
    }
}

/// Whether a key's scopes grant `needed`. The `admin` scope stands for every keygate
/// permission (not for application scopes).
pub fn key_grants(scopes: &[String], needed: &str) -> bool {
    scopes.iter().any(|held| scope::grants(held, needed))
        || (user::is_keygate_permission(needed) && scopes.iter().any(|s| s == user::ADMIN_SCOPE))
}

/// Whether an owner's role allows `needed`: keygate's own permissions follow the role,
/// application scopes are the key's business.
pub fn owner_grants(role: Role, needed: &str) -> bool {
    !user::is_keygate_permission(needed)
        || (needed == user::ADMIN_SCOPE && role == Role::Admin)
        || role.grants(needed)
}

fn owner_is_admin(index: &KeyIndex, owner: uuid::Uuid) -> bool {
    index.owner(owner).is_some_and(|o| o.role == Role::Admin)
}

/// Decides a request. Counting the use is the caller's last step, on `VALID` only.
pub fn decide<S: AsRef<str>>(index: &KeyIndex, check: &Check<'_, S>) -> Decision {
    let credential = check.credential;
    let with_trim_note = |hint: String| {
        if check.trimmed {
            format!("{hint} (whitespace around the key was removed before checking)")
        } else {
            hint
        }
    };

    // Parse: a keygate-format key must carry a valid checksum; anything else can only be
    // an imported key.
    let parsed = key_format::parse_key(credential);
    match parsed {
        Ok(_) => {}
        Err(FormatError::Checksum) => {
            return Decision::refuse(
                DecisionCode::Malformed,
                None,
                Some(with_trim_note(FormatError::Checksum.hint().to_string())),
            );
        }
        Err(format_error) => {
            let importable = key_format::validate_imported(credential).is_ok();
            if !importable || index.imported_count() == 0 {
                let hint = if credential.starts_with("whsec_") {
                    "this is a webhook signing secret (`whsec_…`), not an API key".to_string()
                } else if looks_like_jwt(credential) {
                    "this looks like a JWT, but this endpoint expects an API key".to_string()
                } else {
                    format_error.hint().to_string()
                };
                return Decision::refuse(DecisionCode::Malformed, None, Some(with_trim_note(hint)));
            }
        }
    }

    // Hash and look up.
    let Some(key) = index.get_by_hash(&hash_key(credential)) else {
        return Decision::refuse(
            DecisionCode::NotFound,
            None,
            Some(with_trim_note(
                "no such key: check that the whole key was copied, and that it belongs to this keygate instance".into(),
            )),
        );
    };
    let key = Arc::clone(key);

    // State.
    let state = key.record.state(check.now);
    let refusal = match state {
        KeyState::Active => None,
        KeyState::Revoked => Some((
            DecisionCode::Revoked,
            "this key was revoked; ask for a new one".to_string(),
        )),
        KeyState::Expired => Some((
            DecisionCode::Expired,
            if key.record.rotated_to.is_some() {
                "this key was rotated and its grace period is over; use its replacement".to_string()
            } else {
                "this key has expired; ask for a new one or for its expiry to be extended"
                    .to_string()
            },
        )),
        KeyState::Disabled => Some((
            DecisionCode::Disabled,
            "this key is disabled; an administrator can enable it again".to_string(),
        )),
    };
    if let Some((code, hint)) = refusal {
        return Decision::refuse(code, Some(key), Some(hint));
    }

    // Owner: a key never outlives or outranks the person it belongs to.
    let owner = match key.record.owner {
        None => None,
        Some(owner_id) => match index.owner(owner_id) {
            None => {
                return Decision::refuse(
                    DecisionCode::Revoked,
                    Some(key),
                    Some("the account that owned this key was deleted".into()),
                );
            }
            Some(state) if state.disabled => {
                return Decision::refuse(
                    DecisionCode::Disabled,
                    Some(key),
                    Some("the account that owns this key is disabled".into()),
                );
            }
            Some(state) => Some(state),
        },
    };

    // IP allowlist.
    if !key.record.allowed_cidrs.is_empty()
        && !check
            .client_ip
            .is_some_and(|ip| key.record.allowed_cidrs.iter().any(|net| net.contains(&ip)))
    {
        let hint = match check.client_ip {
            Some(ip) => {
                format!("this key may not be used from {ip}; it is limited to certain networks")
            }
            None => {
                "this key is limited to certain networks and the client address is unknown".into()
            }
        };
        return Decision::refuse(DecisionCode::IpNotAllowed, Some(key), Some(hint));
    }

    // Project: a project-level key acts in its project only; a user-level key acts in the
    // project it names, if its owner belongs to it (the instance's keys: any project).
    let named = match check.project.map(str::trim).filter(|p| !p.is_empty()) {
        None => None,
        Some(text) => match uuid::Uuid::parse_str(text) {
            Ok(id) => Some(id),
            Err(_) => {
                return Decision::refuse(
                    DecisionCode::ProjectForbidden,
                    Some(key),
                    Some(
                        "the project header does not name a project (a project id is a UUID)"
                            .into(),
                    ),
                );
            }
        },
    };
    // Who may act in `project`: a member of it, an administrator, or an instance key that
    // holds administrator scopes (not an ownerless key such as a free one).
    let may_act_in = |project: uuid::Uuid| match key.record.owner {
        None => {
            index.project_exists(project)
                && key
                    .record
                    .scopes
                    .iter()
                    .any(|s| s == "*" || s == user::ADMIN_SCOPE)
        }
        Some(owner) => match index.is_member(project, owner) {
            None => false,
            Some(member) => member || owner_is_admin(index, owner),
        },
    };
    let project = match (key.record.project, named) {
        (Some(own), Some(other)) if own != other => {
            return Decision::refuse(
                DecisionCode::ProjectForbidden,
                Some(key),
                Some("this is a project-level key for another project".into()),
            );
        }
        (Some(own), _) => {
            // A pinned key stops when its owner leaves the project or the project is gone.
            if key.record.owner.is_some() && !may_act_in(own) {
                return Decision::refuse(
                    DecisionCode::ProjectForbidden,
                    Some(key),
                    Some("the key's owner is no longer a member of its project".into()),
                );
            }
            Some(own)
        }
        (None, Some(named)) => {
            if !may_act_in(named) {
                return Decision::refuse(
                    DecisionCode::ProjectForbidden,
                    Some(key),
                    Some("this key may not act in the project named in the request".into()),
                );
            }
            Some(named)
        }
        (None, None) if check.project_required => {
            return Decision::refuse(
                DecisionCode::ProjectRequired,
                Some(key),
                Some(
                    "this is a user-level key: name the project in the X-Project-ID header".into(),
                ),
            );
        }
        (None, None) => None,
    };

    // Scopes: the key's own, intersected with the owner's role for keygate's permissions.
    let missing = check
        .required_scopes
        .iter()
        .map(AsRef::as_ref)
        .find(|needed| {
            // A project-level key works inside its project; it never manages keygate.
            (key.record.project.is_some() && user::is_keygate_permission(needed))
                || !key_grants(&key.record.scopes, needed)
                || owner.is_some_and(|o| !owner_grants(o.role, needed))
        });
    if let Some(missing) = missing {
        return Decision {
            limits: LimitStatuses::default(),
            retry_after_ms: None,
            owner: None,
            project: None,
            code: DecisionCode::InsufficientPermissions,
            hint: Some(format!(
                "use a key that holds the `{missing}` scope (or `*`)"
            )),
            missing_scope: Some(missing.to_string()),
            key: Some(key),
        };
    }

    // Limits last: rate limits, then the monthly quota (a refused request spends neither).
    let mut limits = LimitStatuses::default();
    let metered = replacement_of(index, &key);
    let admitted = match (check.route_limits, &metered.limits) {
        (Some(route), key_limits) => Some(metered.usage.limiter().admit_on_route(
            key_limits.as_deref(),
            route,
            check.now,
        )),
        (None, Some(key_limits)) => Some(metered.usage.limiter().admit(key_limits, check.now)),
        (None, None) => None,
    };
    if let Some((admitted, statuses)) = admitted {
        if let Err(refusal) = admitted {
            let (code, wait, hint) = match refusal {
                LimitRefusal::RateLimited { retry_after_ms } => (
                    DecisionCode::RateLimited,
                    retry_after_ms,
                    if check.route_limits.is_some() {
                        "slow down: this key's rate limit on this route is reached; retry after the time in Retry-After"
                    } else {
                        "slow down: this key's rate limit is reached; retry after the time in Retry-After"
                    },
                ),
                LimitRefusal::QuotaExceeded { retry_after_ms } => (
                    DecisionCode::QuotaExceeded,
                    retry_after_ms,
                    "this key's monthly quota is used up; it renews at the start of next month (UTC)",
                ),
            };
            return Decision {
                code,
                hint: Some(hint.into()),
                missing_scope: None,
                limits: statuses,
                retry_after_ms: Some(wait),
                owner: None,
                project: None,
                key: Some(key),
            };
        }
        limits = statuses;
    }

    let owner = key.record.owner.zip(owner.map(|o| o.role));
    Decision {
        code: DecisionCode::Valid,
        key: Some(key),
        hint: None,
        missing_scope: None,
        limits,
        retry_after_ms: None,
        owner,
        project,
    }
}

/// The key whose limits and limiter meter requests made with `key`: the last of its
/// replacements, for a key rotated with a grace period. Both keys are one client's
/// credentials while the grace lasts, and a limiter each would double the client's rate
/// and quota. (Rotation carries the limiter state over, `Engine::carry_limits`.)
fn replacement_of<'a>(index: &'a KeyIndex, key: &'a IndexedKey) -> &'a IndexedKey {
    let mut current = key;
    // Bounded: a corrupt chain that loops must not hang the hot path.
    for _ in 0..8 {
        match current.record.rotated_to.and_then(|id| index.get_by_id(id)) {
            Some(next) => current = next,
            None => break,
        }
    }
    current
}

/// A plain active key record for `key`, for tests to adjust with struct update syntax.
#[cfg(test)]
pub(crate) fn test_record(key: &str, id: u128) -> crate::record::KeyRecord {
    crate::record::KeyRecord {
        id: uuid::Uuid::from_u128(id),
        hash: hash_key(key),
        start: key.chars().take(7).collect(),
        name: "test".into(),
        scopes: Vec::new(),
        meta: Default::default(),
        enabled: true,
        origin: crate::record::KeyOrigin::Generated,
        global: false,
        owner: None,
        plan: None,
        limits: Default::default(),
        allowed_cidrs: Vec::new(),
        project: None,
        created_at: 0,
        updated_at: 0,
        expires_at: None,
        revoked_at: None,
        rotated_to: None,
        last_used_at: None,
        usage_count: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{KeyOrigin, KeyRecord};
    use uuid::Uuid;

    const NOW: UnixMillis = 1_700_000_000_000;
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

    fn record(key: &str, tweak: impl FnOnce(&mut KeyRecord)) -> KeyRecord {
        let mut record = KeyRecord {
            id: Uuid::from_u128(u128::from(
                NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            )),
            scopes: vec!["read".into(), "files:*".into()],
            created_at: NOW - 1000,
            updated_at: NOW - 1000,
            ..test_record(key, 0)
        };
        tweak(&mut record);
        record
    }

    fn key(n: u8) -> String {
        key_format::format_key("kg", &[n; 32]).expect("valid prefix")
    }

    fn check(index: &KeyIndex, credential: &str, scopes: &[&str]) -> Decision {
        decide(
            index,
            &Check {
                credential,
                trimmed: false,
                required_scopes: scopes,
                now: NOW,
                client_ip: None,
                project: None,
                project_required: false,
                route_limits: None,
            },
        )
    }

    #[test]
    fn decisions() {
        let imported = "legacy-0123456789abcdef";
        let index = KeyIndex::from_records([
            record(&key(1), |_| {}),
            record(&key(2), |r| r.revoked_at = Some(NOW - 1)),
            record(&key(3), |r| r.expires_at = Some(NOW)),
            record(&key(4), |r| r.enabled = false),
            record(&key(5), |r| {
                r.expires_at = Some(NOW - 5);
                r.rotated_to = Some(Uuid::nil());
            }),
            record(&key(6), |r| r.expires_at = Some(NOW + 1)),
            record(imported, |r| r.origin = KeyOrigin::Imported),
        ]);
        let mut bad_checksum = key(1);
        let last = bad_checksum.pop();
        bad_checksum.push(if last == Some('0') { '1' } else { '0' });
        let keys: Vec<String> = (0..10).map(key).collect();
        let cases: Vec<(&str, Vec<&str>, DecisionCode)> = vec![
            (&keys[1], vec![], DecisionCode::Valid),
            (&keys[1], vec!["read", "files:write"], DecisionCode::Valid),
            (
                &keys[1],
                vec!["admin"],
                DecisionCode::InsufficientPermissions,
            ),
            (&keys[2], vec![], DecisionCode::Revoked),
            (&keys[3], vec![], DecisionCode::Expired),
            (&keys[4], vec![], DecisionCode::Disabled),
            (&keys[5], vec![], DecisionCode::Expired),
            (&keys[6], vec![], DecisionCode::Valid),
            (&keys[9], vec![], DecisionCode::NotFound),
            (&bad_checksum, vec![], DecisionCode::Malformed),
            (imported, vec![], DecisionCode::Valid),
            ("legacy-unknown-123456", vec![], DecisionCode::NotFound),
            ("short", vec![], DecisionCode::Malformed),
        ];
        for (credential, scopes, want) in cases {
            assert_eq!(
                check(&index, credential, &scopes).code,
                want,
                "{credential} {scopes:?}"
            );
        }
    }

    #[test]
    fn a_key_in_its_rotation_grace_shares_its_replacements_limits() {
        let two_a_minute = crate::limit::LimitsOverride {
            rate_limits: Some(vec![crate::limit::RateLimit {
                limit: 2,
                period_seconds: 60,
                burst: None,
            }]),
            ..Default::default()
        };
        let replacement = record(&key(21), |r| r.limits = two_a_minute.clone());
        let replacement_id = replacement.id;
        let index = KeyIndex::from_records([
            replacement,
            record(&key(20), |r| {
                r.limits = two_a_minute.clone();
                r.rotated_to = Some(replacement_id);
                r.expires_at = Some(NOW + 60_000);
            }),
            record(&key(22), |r| r.limits = two_a_minute.clone()),
        ]);
        let (old, new, other) = (key(20), key(21), key(22));
        assert_eq!(check(&index, &old, &[]).code, DecisionCode::Valid);
        assert_eq!(check(&index, &new, &[]).code, DecisionCode::Valid);
        // Two requests spent the client's two a minute, whichever key each used.
        assert_eq!(check(&index, &old, &[]).code, DecisionCode::RateLimited);
        assert_eq!(check(&index, &new, &[]).code, DecisionCode::RateLimited);
        // Another client's key has its own.
        assert_eq!(check(&index, &other, &[]).code, DecisionCode::Valid);
    }

    #[test]
    fn a_rotation_chain_that_loops_still_gets_a_decision() {
        let (a, b) = (Uuid::from_u128(9001), Uuid::from_u128(9002));
        let index = KeyIndex::from_records([
            record(&key(23), |r| {
                r.id = a;
                r.rotated_to = Some(b);
                r.expires_at = Some(NOW + 60_000);
            }),
            record(&key(24), |r| {
                r.id = b;
                r.rotated_to = Some(a);
                r.expires_at = Some(NOW + 60_000);
            }),
        ]);
        assert_eq!(check(&index, &key(23), &[]).code, DecisionCode::Valid);
    }

    #[test]
    fn refusal_details() {
        let index = KeyIndex::from_records([record(&key(1), |_| {})]);
        let decision = check(&index, &key(1), &["read", "admin"]);
        assert_eq!(decision.missing_scope.as_deref(), Some("admin"));
        assert!(decision.key.is_some());

        // Without imported keys, a foreign string is malformed without a lookup.
        let decision = check(&index, "legacy-unknown-123456", &[]);
        assert_eq!(decision.code, DecisionCode::Malformed);
        let whsec = check(&index, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &[]);
        assert!(whsec.hint.expect("hint").contains("webhook signing secret"));
        let jwt = check(
            &index,
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
            &[],
        );
        assert!(jwt.hint.expect("hint").contains("JWT"));

        let trimmed = decide(
            &index,
            &Check {
                credential: &key(7),
                trimmed: true,
                required_scopes: &[] as &[&str],
                now: NOW,
                client_ip: None,
                project: None,
                project_required: false,
                route_limits: None,
            },
        );
        assert!(trimmed.hint.expect("hint").contains("whitespace"));
    }

    #[test]
    fn hints_never_echo_the_credential() {
        let k = key(1);
        let index = KeyIndex::from_records([record(&k, |r| r.revoked_at = Some(1))]);
        for credential in [k.as_str(), &key(8), "legacy-unknown-123456"] {
            let hint = check(&index, credential, &[]).hint.unwrap_or_default();
            assert!(!hint.contains(credential));
        }
    }
}

#[cfg(test)]
mod owner_tests {
    use super::*;
    use crate::record::KeyRecord;
    use crate::user::OwnerState;
    use uuid::Uuid;

    const NOW: UnixMillis = 1_700_000_000_000;

    fn owned(n: u8, owner: Option<Uuid>, scopes: &[&str]) -> (String, KeyRecord) {
        let key = key_format::format_key("kg", &[n; 32]).expect("valid prefix");
        let record = KeyRecord {
            owner,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..test_record(&key, 0x1_0000 + u128::from(n))
        };
        (key, record)
    }

    #[test]
    fn a_key_never_exceeds_its_owner() {
        let (admin_id, user_id, off_id, gone_id) = (
            Uuid::from_u64_pair(9, 1),
            Uuid::from_u64_pair(9, 2),
            Uuid::from_u64_pair(9, 3),
            Uuid::from_u64_pair(9, 4),
        );
        let (k_admin, r1) = owned(1, Some(admin_id), &["*"]);
        let (k_user, r2) = owned(2, Some(user_id), &["*"]);
        let (k_off, r3) = owned(3, Some(off_id), &["*"]);
        let (k_gone, r4) = owned(4, Some(gone_id), &["*"]);
        let (k_inst, r5) = owned(5, None, &["admin"]);
        let mut index = KeyIndex::from_records([r1, r2, r3, r4, r5]);
        index.upsert_owner(
            admin_id,
            OwnerState {
                role: Role::Admin,
                disabled: false,
            },
        );
        index.upsert_owner(
            user_id,
            OwnerState {
                role: Role::User,
                disabled: false,
            },
        );
        index.upsert_owner(
            off_id,
            OwnerState {
                role: Role::Admin,
                disabled: true,
            },
        );
        let cases: [(&str, &str, DecisionCode); 9] = [
            (&k_admin, "users:write", DecisionCode::Valid),
            (&k_user, "keys:write", DecisionCode::Valid),
            (
                &k_user,
                "users:write",
                DecisionCode::InsufficientPermissions,
            ),
            (&k_user, "admin", DecisionCode::InsufficientPermissions),
            // Application scopes are not limited by the role.
            (&k_user, "files:read", DecisionCode::Valid),
            (&k_off, "keys:read", DecisionCode::Disabled),
            (&k_gone, "keys:read", DecisionCode::Revoked),
            // `admin` on a key stands for every keygate permission, not for app scopes.
            (&k_inst, "settings:write", DecisionCode::Valid),
            (&k_inst, "files:read", DecisionCode::InsufficientPermissions),
        ];
        for (key, needed, want) in cases {
            let got = decide(
                &index,
                &Check {
                    credential: key,
                    trimmed: false,
                    required_scopes: &[needed],
                    now: NOW,
                    client_ip: None,
                    project: None,
                    project_required: false,
                    route_limits: None,
                },
            );
            assert_eq!(got.code, want, "{needed}");
        }
    }
}

#[cfg(test)]
mod ip_tests {
    use super::*;
    use crate::record::KeyRecord;

    #[test]
    fn allowlisted_networks_only() {
        let key = key_format::format_key("kg", &[3; 32]).expect("key");
        let record = KeyRecord {
            allowed_cidrs: vec![
                "10.0.0.0/8".parse().expect("net"),
                "2001:db8::/32".parse().expect("net"),
            ],
            ..test_record(&key, 0x3_0003)
        };
        let index = KeyIndex::from_records([record]);
        let cases = [
            (Some("10.1.2.3"), DecisionCode::Valid),
            (Some("2001:db8::1"), DecisionCode::Valid),
            (Some("192.168.1.1"), DecisionCode::IpNotAllowed),
            (None, DecisionCode::IpNotAllowed),
        ];
        for (ip, want) in cases {
            let check = Check {
                credential: &key,
                trimmed: false,
                required_scopes: &[] as &[&str],
                now: 1,
                client_ip: ip.map(|i| i.parse().expect("ip")),
                project: None,
                project_required: false,
                route_limits: None,
            };
            assert_eq!(decide(&index, &check).code, want, "{ip:?}");
        }
    }
}

#[cfg(test)]
mod project_tests {
    use super::*;
    use crate::record::KeyRecord;
    use crate::user::OwnerState;
    use uuid::Uuid;

    fn record(n: u8, owner: Option<Uuid>, project: Option<Uuid>) -> (String, KeyRecord) {
        let key = key_format::format_key("kg", &[n; 32]).expect("key");
        let record = KeyRecord {
            owner,
            project,
            scopes: vec!["*".into()],
            ..test_record(&key, 0x5_0000 + u128::from(n))
        };
        (key, record)
    }

    #[test]
    fn key_levels_and_the_project_header() {
        let (ana, alpha, beta) = (
            Uuid::from_u64_pair(6, 1),
            Uuid::from_u64_pair(6, 2),
            Uuid::from_u64_pair(6, 3),
        );
        let (user_level, r1) = record(1, Some(ana), None);
        let (project_level, r2) = record(2, Some(ana), Some(alpha));
        let (instance, r3) = record(3, None, None);
        let mut index = KeyIndex::from_records([r1, r2, r3]);
        index.upsert_owner(
            ana,
            OwnerState {
                role: Role::User,
                disabled: false,
            },
        );
        index.set_project(alpha, Some([ana].into_iter().collect()));
        index.set_project(beta, Some(Default::default()));
        let (a, b) = (alpha.to_string(), beta.to_string());
        // (key, X-Project-ID, project required, expected code, resolved project)
        type Case<'a> = (&'a str, Option<&'a str>, bool, DecisionCode, Option<Uuid>);
        let cases: [Case; 10] = [
            (
                &user_level,
                Some(&a),
                true,
                DecisionCode::Valid,
                Some(alpha),
            ),
            (&user_level, None, true, DecisionCode::ProjectRequired, None),
            (&user_level, None, false, DecisionCode::Valid, None),
            (
                &user_level,
                Some(&b),
                true,
                DecisionCode::ProjectForbidden,
                None,
            ),
            (
                &user_level,
                Some("not-a-uuid"),
                false,
                DecisionCode::ProjectForbidden,
                None,
            ),
            (&project_level, None, true, DecisionCode::Valid, Some(alpha)),
            (
                &project_level,
                Some(&a),
                true,
                DecisionCode::Valid,
                Some(alpha),
            ),
            (
                &project_level,
                Some(&b),
                true,
                DecisionCode::ProjectForbidden,
                None,
            ),
            (&instance, Some(&b), true, DecisionCode::Valid, Some(beta)),
            (
                &instance,
                Some("00000000-0000-0000-0000-000000000009"),
                true,
                DecisionCode::ProjectForbidden,
                None,
            ),
        ];
        for (key, header, required, code, project) in cases {
            let check = Check {
                credential: key,
                trimmed: false,
                required_scopes: &[] as &[&str],
                now: 1,
                client_ip: None,
                project: header,
                project_required: required,
                route_limits: None,
            };
            let decision = decide(&index, &check);
            assert_eq!(
                (decision.code, decision.project),
                (code, project),
                "{header:?} required={required}"
            );
        }
    }
}

#[cfg(test)]
mod project_review_tests {
    use super::*;
    use crate::record::KeyRecord;
    use crate::user::OwnerState;
    use uuid::Uuid;

    fn record(
        n: u8,
        owner: Option<Uuid>,
        project: Option<Uuid>,
        scopes: &[&str],
    ) -> (String, KeyRecord) {
        let key = key_format::format_key("kg", &[n; 32]).expect("key");
        let record = KeyRecord {
            owner,
            project,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..test_record(&key, 0x7_0000 + u128::from(n))
        };
        (key, record)
    }

    #[test]
    fn pinned_keys_follow_membership_and_ownerless_keys_stay_out() {
        let (ana, alpha) = (Uuid::from_u64_pair(8, 1), Uuid::from_u64_pair(8, 2));
        let (pinned, r1) = record(1, Some(ana), Some(alpha), &["*"]);
        let (free, r2) = record(2, None, None, &[]);
        let mut index = KeyIndex::from_records([r1, r2]);
        index.upsert_owner(
            ana,
            OwnerState {
                role: Role::User,
                disabled: false,
            },
        );
        index.set_project(alpha, Some([ana].into_iter().collect()));
        let check = |index: &KeyIndex, key: &str, project: Option<&str>, scopes: &[&str]| {
            let check = Check {
                credential: key,
                trimmed: false,
                required_scopes: scopes,
                now: 1,
                client_ip: None,
                project,
                project_required: false,
                route_limits: None,
            };
            decide(index, &check).code
        };
        let a = alpha.to_string();
        assert_eq!(check(&index, &pinned, None, &[]), DecisionCode::Valid);
        // A project-level key never holds keygate's own permissions.
        assert_eq!(
            check(&index, &pinned, None, &["keys:read"]),
            DecisionCode::InsufficientPermissions
        );
        // An ownerless key without administrator scopes cannot name a project.
        assert_eq!(
            check(&index, &free, Some(&a), &[]),
            DecisionCode::ProjectForbidden
        );
        // When the owner leaves the project, the pinned key stops.
        index.set_project(alpha, Some(Default::default()));
        assert_eq!(
            check(&index, &pinned, None, &[]),
            DecisionCode::ProjectForbidden
        );
    }
}
