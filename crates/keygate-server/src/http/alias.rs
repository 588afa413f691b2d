//! Path aliases: a preset serves keygate's endpoints at the paths of the product it stands
//! in for (`/api/accounts/token/` → `/api/v1/auth/token`). Rewritten before routing, so
//! the aliased request is in every way the keygate request.

use axum::extract::Request;
use axum::http::Uri;
use axum::http::uri::PathAndQuery;
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;

/// One alias: requests at `from` (and below it) go to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    pub from: String,
    pub to: String,
}

/// Aliases, longest `from` first so the most specific wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aliases(Vec<Alias>);

impl Aliases {
    pub fn new(mut aliases: Vec<Alias>) -> Result<Self, String> {
        for alias in &aliases {
            if !alias.from.starts_with('/') || !alias.to.starts_with('/') {
                return Err(format!(
                    "aliases: {:?} → {:?}: both paths must start with /",
                    alias.from, alias.to
                ));
            }
        }
        aliases.sort_by_key(|a| std::cmp::Reverse(a.from.len()));
        Ok(Self(aliases))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keygate path for `path`, if an alias covers it. `/a/` covers `/a`, `/a/` and
    /// everything below; the remainder is appended to the target and one trailing slash
    /// dropped (keygate's paths have none; the aliased products' often do).
    pub fn rewrite(&self, path: &str) -> Option<String> {
        self.0.iter().find_map(|alias| {
            let base = alias.from.trim_end_matches('/');
            let rest = path.strip_prefix(base)?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            let target = alias.to.trim_end_matches('/');
            let rewritten = format!("{target}{rest}");
            let trimmed = rewritten.strip_suffix('/').unwrap_or(&rewritten);
            Some(if trimmed.is_empty() {
                "/".into()
            } else {
                trimmed.to_string()
            })
        })
    }
}

/// The middleware: rewrites the path, keeps the query.
pub async fn rewrite(aliases: Arc<Aliases>, mut request: Request, next: Next) -> Response {
    if let Some(path) = aliases.rewrite(request.uri().path()) {
        let path_and_query = match request.uri().query() {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        if let Ok(path_and_query) = PathAndQuery::try_from(path_and_query) {
            let mut parts = request.uri().clone().into_parts();
            parts.path_and_query = Some(path_and_query);
            if let Ok(uri) = Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_alias_wins_and_trailing_slashes_go() {
        let aliases = Aliases::new(vec![
            Alias {
                from: "/api/accounts/token/".into(),
                to: "/api/v1/auth/token".into(),
            },
            Alias {
                from: "/api/accounts/token/refresh/".into(),
                to: "/api/v1/auth/token/refresh".into(),
            },
            Alias {
                from: "/api/accounts/api-keys/".into(),
                to: "/api/v1/keys".into(),
            },
        ])
        .expect("aliases");
        let cases = [
            ("/api/accounts/token/", Some("/api/v1/auth/token")),
            ("/api/accounts/token", Some("/api/v1/auth/token")),
            (
                "/api/accounts/token/refresh/",
                Some("/api/v1/auth/token/refresh"),
            ),
            ("/api/accounts/api-keys/12/", Some("/api/v1/keys/12")),
            ("/api/accounts/tokens/", None),
            ("/other", None),
        ];
        for (path, want) in cases {
            assert_eq!(aliases.rewrite(path).as_deref(), want, "{path}");
        }
        assert!(
            Aliases::new(vec![Alias {
                from: "x".into(),
                to: "/y".into()
            }])
            .is_err()
        );
    }
}
