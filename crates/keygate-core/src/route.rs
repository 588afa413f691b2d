//! Route patterns: which request paths a rule covers.
//!
//! A pattern is an exact path (`/validate`) that also covers everything below it
//! (`/validate/x`), or a prefix ending in `*` (`/api/*`).

use crate::limit::{MAX_RATE_LIMITS, RateLimit, RouteLimits};

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

/// The host name of a `Host` (or `X-Forwarded-Host`) value: the port dropped, a trailing
/// dot dropped, lower case; `None` for a value that names no host.
pub fn host_name(value: &str) -> Option<String> {
    let value = value.trim();
    if let Some(rest) = value.strip_prefix('[') {
        // An IPv6 literal, `[::1]:8080`, and nothing else: a name in brackets is no host a
        // proxy routes by, and must not match a policy for that name.
        let (inside, after) = rest.split_once(']')?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
        let ip = inside
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .filter(|_| port_ok)?;
        return Some(ip.to_string());
    }
    let name = match value.split_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return None,
        None => value,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    valid.then(|| name.to_ascii_lowercase())
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

/// True when the host pattern covers `host` (a [`host_name`]): the same name, or for
/// `*.example.com` any name below example.com (not example.com itself).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .and_then(|sub| sub.strip_suffix('.'))
            .is_some_and(|sub| !sub.is_empty()),
        None => host == pattern,
    }
}

/// The canonical form of a request path, the one route policies are matched against and
/// an upstream resolves: `.` and empty segments dropped, `..` applied, `%2e` read as `.`.
/// `None` for a path that climbs above the root or hides a separator (`%2f`, `%5c`, `\`),
/// which keygate refuses rather than guess how the upstream would read it.
pub fn normalize_path(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    // Nearly every path is canonical already: answer without allocating.
    if is_plainly_canonical(path) {
        return Some(std::borrow::Cow::Borrowed(path));
    }
    resolve(path).map(std::borrow::Cow::Owned)
}

/// [`normalize_path`] the long way: decoded, segment by segment.
fn resolve(path: &str) -> Option<String> {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || path.contains('\\') {
        return None;
    }
    let mut segments: Vec<&str> = Vec::new();
    for raw in path.split('/') {
        let decoded = raw.to_ascii_lowercase().replace("%2e", ".");
        match decoded.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop()?;
            }
            _ => segments.push(raw),
        }
    }
    let mut normalized = format!("/{}", segments.join("/"));
    let last = path
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let trailing = matches!(last.replace("%2e", ".").as_str(), "" | "." | "..");
    if trailing && normalized != "/" {
        normalized.push('/');
    }
    Some(normalized)
}

/// Starts with `/` and has no `//`, `/.`, `%` or `\`: nothing to decode or resolve.
/// Checked byte by byte rather than with a substring search per pattern, because every
/// request's path is checked.
fn is_plainly_canonical(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.first() == Some(&b'/')
        && !bytes.iter().any(|b| matches!(b, b'%' | b'\\'))
        && !bytes
            .windows(2)
            .any(|pair| pair[0] == b'/' && matches!(pair[1], b'/' | b'.'))
}

#[cfg(test)]
mod normalize_tests {
    use super::*;

    #[test]
    fn the_quick_check_passes_only_paths_normalizing_leaves_alone() {
        for (path, plain) in [
            ("/files/a.txt", true),
            ("/a..b/c", true),
            ("/", true),
            ("/.well-known/x", false),
            ("/a/./b", false),
            ("/a//b", false),
            ("/a%2fb", false),
            ("/a\\b", false),
            ("a/b", false),
            ("", false),
        ] {
            assert_eq!(is_plainly_canonical(path), plain, "{path}");
            if plain {
                assert_eq!(resolve(path).as_deref(), Some(path));
            }
        }
    }

    #[test]
    fn paths_are_normalized_or_refused() {
        let cases = [
            ("/admin/users", Some("/admin/users")),
            ("/health/../admin/users", Some("/admin/users")),
            ("/health/%2e%2e/admin", Some("/admin")),
            ("/health/%2E%2e/admin", Some("/admin")),
            ("//admin//users", Some("/admin/users")),
            ("/./admin/./x/", Some("/admin/x/")),
            ("/", Some("/")),
            ("/..", None),
            ("/a/../../b", None),
            ("/admin%2fusers", None),
            ("/admin%5Cusers", None),
            ("/admin\\users", None),
        ];
        for (path, want) in cases {
            assert_eq!(normalize_path(path).as_deref(), want, "{path}");
        }
    }
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

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// No credential needed.
    Public,
    /// A valid credential (and the route's scopes, if any).
    #[default]
    Authenticated,
}

/// Whether a route acts inside a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjectRule {
    /// A user-level key must name the project (`X-Project-ID`).
    Required,
    /// The route acts outside projects.
    #[default]
    Exempt,
}

/// A route policy: which requests it covers and what they need.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePolicy {
    /// A path pattern (see [`matches`]).
    pub path: String,
    /// Hosts covered (`api.example.com`, or `*.example.com` for the names below it; see
    /// [`host_matches`]), as the client asked for them; empty: every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Methods covered (upper case); empty: every method.
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub access: Access,
    /// Scopes the credential must hold.
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub project: ProjectRule,
    /// Reverse-proxy mode: send matching requests to the upstream even where keygate has
    /// an endpoint of the same path (a preset whose app owns `/api/v1/systeminfo`).
    #[serde(default)]
    pub upstream: bool,
    /// Rate limits that replace the key's own (its plan's) on this route, counted per key
    /// and route; the key's monthly quota still applies and counts. `[]`: none here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<Vec<RateLimit>>,
    /// A plan whose rate limits replace the key's on this route, as `rate_limits` do (the
    /// configuration resolves the name into `rate_limits` when it is loaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

impl RoutePolicy {
    /// What is wrong with this policy, if anything (for the configuration's errors).
    pub fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') {
            return Err(format!("path {:?} must start with /", self.path));
        }
        for host in &self.hosts {
            let name = host.strip_prefix("*.").unwrap_or(host);
            if host_name(name).as_deref() != Some(name) || name.contains(':') {
                return Err(format!(
                    "path {:?}: host {host:?} must be a lower-case host name without a port, or *. and one",
                    self.path
                ));
            }
        }
        if self.plan.is_some() && self.access == Access::Public {
            return Err(format!(
                "path {:?}: a public route takes no credential, so there is no key to count a `plan`'s limits against",
                self.path
            ));
        }
        if let Some(limits) = &self.rate_limits {
            if self.access == Access::Public {
                return Err(format!(
                    "path {:?}: a public route takes no credential, so there is no key to count `rate_limits` against",
                    self.path
                ));
            }
            if limits.len() > MAX_RATE_LIMITS {
                return Err(format!(
                    "path {:?}: at most {MAX_RATE_LIMITS} rate_limits",
                    self.path
                ));
            }
            for limit in limits {
                limit
                    .validate()
                    .map_err(|why| format!("path {:?}: rate_limits: {why}", self.path))?;
            }
        }
        Ok(())
    }

    /// The rate limits this policy, at `index` among the policies, puts in place of a
    /// key's own.
    pub fn route_limits(&self, index: usize) -> Option<RouteLimits<'_>> {
        let rate_limits = self.rate_limits.as_deref()?;
        Some(RouteLimits {
            route: u32::try_from(index).unwrap_or(u32::MAX),
            rate_limits,
        })
    }
}

/// Does any of `policies` name hosts? Only then is a request's host read and checked.
pub fn names_hosts(policies: &[RoutePolicy]) -> bool {
    policies.iter().any(|p| !p.hosts.is_empty())
}

/// The first policy covering `method`, `path` and the request's host; requests no policy
/// covers are `authenticated` with no scopes and no project. `host` answers the request's
/// [`host_name`]; it is asked at most once, and only if a policy that names hosts matches
/// the method and path (most deployments name none, and need not look the host up).
pub fn policy_for<'a, 'h>(
    policies: &'a [RoutePolicy],
    method: &str,
    path: &str,
    host: impl FnOnce() -> Option<std::borrow::Cow<'h, str>>,
) -> Option<&'a RoutePolicy> {
    indexed_policy_for(policies, method, path, host).map(|(_, policy)| policy)
}

/// [`policy_for`], with the policy's place among `policies`.
pub fn indexed_policy_for<'a, 'h>(
    policies: &'a [RoutePolicy],
    method: &str,
    path: &str,
    host: impl FnOnce() -> Option<std::borrow::Cow<'h, str>>,
) -> Option<(usize, &'a RoutePolicy)> {
    let mut ask = Some(host);
    let mut asked: Option<Option<std::borrow::Cow<'h, str>>> = None;
    policies.iter().enumerate().find(|(_, p)| {
        (p.methods.is_empty() || p.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
            && matches(&p.path, path)
            && (p.hosts.is_empty() || {
                let host = asked.get_or_insert_with(|| ask.take().and_then(|ask| ask()));
                host.as_deref()
                    .is_some_and(|host| p.hosts.iter().any(|pattern| host_matches(pattern, host)))
            })
    })
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    #[test]
    fn route_rate_limits_are_checked_and_refused_on_public_routes() {
        let policy = |value: serde_json::Value| -> RoutePolicy {
            serde_json::from_value(value).expect("policy")
        };
        let limited = policy(
            serde_json::json!({"path": "/convert", "rate_limits": [{"limit": 10, "period_seconds": 60}]}),
        );
        assert_eq!(limited.validate(), Ok(()));
        let at = limited.route_limits(3).expect("limits");
        assert_eq!((at.route, at.rate_limits.len()), (3, 1));
        assert_eq!(
            policy(serde_json::json!({"path": "/a"})).route_limits(0),
            None
        );
        let public =
            policy(serde_json::json!({"path": "/health", "access": "public", "rate_limits": []}));
        assert!(public.validate().expect_err("public").contains("public"));
        let zero = policy(
            serde_json::json!({"path": "/a", "rate_limits": [{"limit": 0, "period_seconds": 60}]}),
        );
        assert!(
            zero.validate()
                .expect_err("zero")
                .contains("`limit` must be at least 1")
        );
        assert!(policy(serde_json::json!({"path": "a"})).validate().is_err());
        let many = vec![serde_json::json!({"limit": 1, "period_seconds": 60}); MAX_RATE_LIMITS + 1];
        let many = policy(serde_json::json!({"path": "/a", "rate_limits": many}));
        assert!(many.validate().expect_err("too many").contains("at most"));
    }

    #[test]
    fn hosts_are_read_without_port_or_case() {
        for (value, name) in [
            ("API.Example.com", Some("api.example.com")),
            ("api.example.com:8443", Some("api.example.com")),
            ("api.example.com.", Some("api.example.com")),
            ("[::1]:8080", Some("::1")),
            ("[::1]", Some("::1")),
            ("127.0.0.1:80", Some("127.0.0.1")),
            ("", None),
            ("a b", None),
            ("api.example.com:x", None),
            ("[::1]x", None),
            ("[status.example.com]", None),
            ("[status.example.com]:80", None),
            ("::1", None),
            ("a:b:80", None),
            ("[::1]:80:80", None),
            ("evil.com/x", None),
        ] {
            assert_eq!(host_name(value).as_deref(), name, "{value:?}");
        }
        assert!(host_matches("api.example.com", "api.example.com"));
        assert!(!host_matches("api.example.com", "www.example.com"));
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "badexample.com"));
    }

    #[test]
    fn policies_by_host_ask_for_the_host_only_when_needed() {
        let policies: Vec<RoutePolicy> = serde_json::from_value(serde_json::json!([
            {"path": "/", "hosts": ["status.example.com"], "access": "public"},
            {"path": "/admin/*", "hosts": ["*.internal.example.com"], "scopes": ["ops"]},
            {"path": "/admin/*", "scopes": ["admin"]},
        ]))
        .expect("policies");
        for policy in &policies {
            assert_eq!(policy.validate(), Ok(()));
        }
        let host = |name: &'static str| move || Some(std::borrow::Cow::Borrowed(name));
        assert_eq!(
            policy_for(&policies, "GET", "/x", host("status.example.com")).map(|p| p.access),
            Some(Access::Public)
        );
        assert!(policy_for(&policies, "GET", "/x", host("api.example.com")).is_none());
        assert!(policy_for(&policies, "GET", "/x", || None).is_none());
        assert_eq!(
            policy_for(
                &policies,
                "GET",
                "/admin/a",
                host("db.internal.example.com")
            )
            .map(|p| p.scopes.clone()),
            Some(vec!["ops".to_string()])
        );
        assert_eq!(
            policy_for(&policies, "GET", "/admin/a", host("api.example.com"))
                .map(|p| p.scopes.clone()),
            Some(vec!["admin".to_string()])
        );
        // No policy names hosts: the host is never looked up.
        let plain: Vec<RoutePolicy> =
            serde_json::from_value(serde_json::json!([{"path": "/a"}])).expect("policies");
        let looked = std::cell::Cell::new(false);
        let found = policy_for(&plain, "GET", "/a", || {
            looked.set(true);
            None
        });
        assert!(found.is_some() && !looked.get());
        for bad in [
            "API.example.com",
            "api.example.com:80",
            "*",
            "*.",
            "a/b",
            "",
        ] {
            let policy: RoutePolicy =
                serde_json::from_value(serde_json::json!({"path": "/", "hosts": [bad]}))
                    .expect("policy");
            assert!(policy.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn first_matching_policy_wins() {
        let policies: Vec<RoutePolicy> = serde_json::from_value(serde_json::json!([
            {"path": "/health", "access": "public"},
            {"path": "/files/*", "methods": ["DELETE"], "scopes": ["files:delete"]},
            {"path": "/files/*", "scopes": ["files:read"], "project": "required"},
        ]))
        .expect("policies");
        assert_eq!(
            policy_for(&policies, "GET", "/health", || None).map(|p| p.access),
            Some(Access::Public)
        );
        assert_eq!(
            policy_for(&policies, "delete", "/files/a", || None).map(|p| p.scopes.clone()),
            Some(vec!["files:delete".to_string()])
        );
        let read = policy_for(&policies, "GET", "/files/a", || None).expect("policy");
        assert_eq!(
            (read.scopes.clone(), read.project),
            (vec!["files:read".to_string()], ProjectRule::Required)
        );
        assert!(policy_for(&policies, "GET", "/other", || None).is_none());
        assert!(
            serde_json::from_value::<RoutePolicy>(serde_json::json!({"path": "/", "colour": 1}))
                .is_err()
        );
    }
}
