//! People: roles, the permissions each role has, and what the hot path needs to know
//! about a key's owner.

use crate::record::UnixMillis;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Admin, Role::User];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// The permissions this role holds.
    pub fn permissions(self) -> &'static [&'static str] {
        match self {
            Role::Admin => ALL_PERMISSIONS,
            // Users manage their own keys (handlers restrict them to keys they own).
            Role::User => &[
                KEYS_READ,
                KEYS_WRITE,
                PROJECTS_READ,
                PROJECTS_WRITE,
                WEBHOOKS_READ,
                WEBHOOKS_WRITE,
            ],
        }
    }

    pub fn grants(self, permission: &str) -> bool {
        self.permissions().contains(&permission)
    }
}

pub const KEYS_READ: &str = "keys:read";
pub const KEYS_WRITE: &str = "keys:write";
pub const USERS_READ: &str = "users:read";
pub const USERS_WRITE: &str = "users:write";
pub const SETTINGS_READ: &str = "settings:read";
pub const SETTINGS_WRITE: &str = "settings:write";
pub const AUDIT_READ: &str = "audit:read";
pub const PLANS_READ: &str = "plans:read";
pub const PLANS_WRITE: &str = "plans:write";
pub const PROJECTS_READ: &str = "projects:read";
pub const PROJECTS_WRITE: &str = "projects:write";
pub const WEBHOOKS_READ: &str = "webhooks:read";
pub const WEBHOOKS_WRITE: &str = "webhooks:write";

/// Every permission keygate itself checks, with what it allows.
pub const PERMISSIONS: &[(&str, &str)] = &[
    (KEYS_READ, "List and show API keys (a user: their own)."),
    (
        KEYS_WRITE,
        "Create, update, rotate and revoke API keys (a user: their own).",
    ),
    (USERS_READ, "List and show user accounts."),
    (USERS_WRITE, "Create, update and delete user accounts."),
    (SETTINGS_READ, "Read instance settings and the global key."),
    (
        SETTINGS_WRITE,
        "Change instance settings and regenerate the global key.",
    ),
    (AUDIT_READ, "Read the audit log."),
    (PLANS_READ, "List and show plans."),
    (PLANS_WRITE, "Create and change plans."),
    (
        PROJECTS_READ,
        "List and show projects (a user: those they belong to).",
    ),
    (
        PROJECTS_WRITE,
        "Create projects, rename, delete and manage members (a user: projects they own).",
    ),
    (
        WEBHOOKS_READ,
        "List webhook endpoints and their deliveries (a user: their own and their projects').",
    ),
    (
        WEBHOOKS_WRITE,
        "Create, change, delete, test and rotate the secrets of webhook endpoints (a user: their own).",
    ),
];

const ALL_PERMISSIONS: &[&str] = &[
    KEYS_READ,
    KEYS_WRITE,
    USERS_READ,
    USERS_WRITE,
    SETTINGS_READ,
    SETTINGS_WRITE,
    AUDIT_READ,
    PLANS_READ,
    PLANS_WRITE,
    PROJECTS_READ,
    PROJECTS_WRITE,
    WEBHOOKS_READ,
    WEBHOOKS_WRITE,
];

/// The scope that stands for every keygate permission on a key (kept from the first
/// release, where management needed `admin`).
pub const ADMIN_SCOPE: &str = "admin";

/// True for the strings keygate checks itself; other scopes belong to the applications
/// behind keygate and are not limited by the owner's role.
pub fn is_keygate_permission(scope: &str) -> bool {
    scope == ADMIN_SCOPE || ALL_PERMISSIONS.contains(&scope)
}

/// A user account as stored (the password hash stays in the store layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: Uuid,
    pub username: String,
    pub email: Option<String>,
    pub role: Role,
    pub disabled: bool,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    pub last_login_at: Option<UnixMillis>,
}

/// What the hot path keeps about a key's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerState {
    pub role: Role,
    pub disabled: bool,
}

impl From<&UserRecord> for OwnerState {
    fn from(user: &UserRecord) -> Self {
        Self {
            role: user.role,
            disabled: user.disabled,
        }
    }
}

/// Checks a username: 1–64 characters of letters, digits and `._-@`.
pub fn validate_username(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
    {
        return Err("may contain only letters, digits and . _ - @");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_permissions() {
        assert!(Role::Admin.grants(USERS_WRITE));
        assert!(!Role::User.grants(USERS_WRITE));
        assert!(Role::User.grants(KEYS_WRITE));
        assert_eq!(PERMISSIONS.len(), ALL_PERMISSIONS.len());
        assert!(PERMISSIONS.iter().all(|(p, _)| is_keygate_permission(p)));
        assert!(is_keygate_permission("admin"));
        assert!(!is_keygate_permission("files:read"));
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn usernames() {
        assert!(validate_username("ana.maria-1@x").is_ok());
        assert!(validate_username("").is_err());
        assert!(validate_username("a b").is_err());
        assert!(validate_username(&"a".repeat(65)).is_err());
    }
}
