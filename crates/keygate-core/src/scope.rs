//! Scope matching: `*` grants everything, `files:*` grants `files:read` and `files:x:y`.

/// True when the scope `held` grants `needed`.
pub fn grants(held: &str, needed: &str) -> bool {
    if held == "*" || held == needed {
        return true;
    }
    match held.strip_suffix('*') {
        // `files:*` covers anything under `files:` but not `files` itself or `filesystem:x`.
        Some(stem) if stem.ends_with(':') => needed.starts_with(stem) && needed.len() > stem.len(),
        _ => false,
    }
}

/// The first scope in `needed` that nothing in `held` grants.
pub fn first_missing<'n, S: AsRef<str>>(held: &[String], needed: &'n [S]) -> Option<&'n str> {
    needed
        .iter()
        .map(AsRef::as_ref)
        .find(|n| !held.iter().any(|h| grants(h, n)))
}

/// Checks a scope string supplied by an operator: visible ASCII, no spaces, bounded.
pub fn validate_scope(scope: &str) -> Result<(), String> {
    if scope.is_empty() || scope.len() > 128 {
        return Err("a scope must be 1 to 128 characters long".into());
    }
    if !scope.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "scope {scope:?} may contain only visible ASCII characters"
        ));
    }
    if scope.contains('*')
        && !(scope == "*" || (scope.ends_with(":*") && scope.matches('*').count() == 1))
    {
        return Err(format!(
            "scope {scope:?}: `*` is allowed only alone or as a trailing `:*` wildcard"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        let cases = [
            ("*", "admin", true),
            ("admin", "admin", true),
            ("admin", "admins", false),
            ("files:*", "files:read", true),
            ("files:*", "files:read:deep", true),
            ("files:*", "files", false),
            ("files:*", "files:", false),
            ("files:*", "filesystem:read", false),
            ("files*", "files:read", false),
        ];
        for (held, needed, want) in cases {
            assert_eq!(grants(held, needed), want, "{held} -> {needed}");
        }
    }

    #[test]
    fn missing() {
        let held = vec!["files:*".to_string(), "read".to_string()];
        assert_eq!(first_missing(&held, &["read", "files:x"]), None);
        assert_eq!(first_missing(&held, &["read", "write"]), Some("write"));
    }

    #[test]
    fn validation() {
        for ok in ["*", "admin", "files:*", "a:b:*"] {
            assert!(validate_scope(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "fi*les", "*:x", "files*", &"x".repeat(129)] {
            assert!(validate_scope(bad).is_err(), "{bad}");
        }
    }
}
