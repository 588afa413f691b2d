//! Route patterns: which request paths a rule covers.
//!
//! A pattern is an exact path (`/validate`) that also covers everything below it
//! (`/validate/x`), or a prefix ending in `*` (`/api/*`).

/// True when `pattern` covers `path`.
pub fn matches(pattern: &str, path: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*') {
        return path.starts_with(prefix);
    }
    let pattern = pattern.trim_end_matches('/');
    path == pattern
        || path
            .strip_prefix(pattern)
            .is_some_and(|rest| rest.starts_with('/'))
        || (pattern.is_empty() && path.starts_with('/'))
}

/// True when any of `patterns` covers `path`.
pub fn any_matches<S: AsRef<str>>(patterns: &[S], path: &str) -> bool {
    patterns.iter().any(|p| matches(p.as_ref(), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let cases = [
            ("/validate", "/validate", true),
            ("/validate", "/validate/", true),
            ("/validate", "/validate/deep", true),
            ("/validate", "/validated", false),
            ("/projects/", "/projects", true),
            ("/api/*", "/api/v1/x", true),
            ("/api/*", "/apix", false),
            ("/", "/anything", true),
        ];
        for (pattern, path, want) in cases {
            assert_eq!(matches(pattern, path), want, "{pattern} {path}");
        }
    }
}
