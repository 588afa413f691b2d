//! Forward auth: nginx `auth_request`, Traefik ForwardAuth, Caddy `forward_auth` and Envoy
//! `ext_authz` (HTTP) ask keygate about the request they are about to pass on.
//!
//! The original method and URI come from the proxy's headers; the route policy says what
//! the request needs. The answer is 200 with identity headers and an empty body (nginx
//! never reads an auth subrequest's body, and a non-empty one costs it a connection per
//! request), or the error model's refusal.

use crate::AppState;
use crate::clock::now_ms;
use crate::engine::{Principal, RouteRules};
use crate::http::context::{self, set_request_limits};
use crate::http::error::ApiError;
use crate::http::error::Rejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use keygate_core::limit::LimitStatuses;
use keygate_core::route::{Access, indexed_policy_for, normalize_path};

/// The original method and URI as proxies send them (names made once, not parsed per
/// request; `static`, since a const array is made and dropped again at each use).
static ORIGINAL_METHOD: [HeaderName; 2] = [
    HeaderName::from_static("x-forwarded-method"),
    HeaderName::from_static("x-original-method"),
];
static ORIGINAL_URI: [HeaderName; 2] = [
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-original-uri"),
];

/// The original URI as a proxy sent it.
enum OriginalUri<'a> {
    /// The origin form nginx, Traefik and Caddy send (`/path?query`), split where it lies:
    /// this runs for every request a proxy passes on, and parsing copies the text.
    Split {
        path: &'a str,
        query: Option<&'a str>,
    },
    /// Anything else (an absolute URI), parsed.
    Parsed(Uri),
}

/// `None` when the value is no URI.
fn original_uri(value: &str) -> Option<OriginalUri<'_>> {
    // Header text is visible ASCII, spaces and tabs; a URI has no spaces or tabs.
    if !value.starts_with('/') || value.bytes().any(|b| b == b' ' || b == b'\t') {
        return value.parse().ok().map(OriginalUri::Parsed);
    }
    // A fragment is never the server's; drop one as URI parsing does.
    let value = value.split_once('#').map_or(value, |(before, _)| before);
    let (path, query) = match value.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (value, None),
    };
    Some(OriginalUri::Split { path, query })
}

/// The one value sent under any of `names` (`what` names it in a refusal), or `None`.
///
/// Two different values are refused rather than one chosen: a proxy that sets one of the
/// names but passes the client's headers on (nginx's `auth_request` does) would otherwise
/// let a client name a public path in the other, and have it checked in place of the
/// path it asks for. An unreadable value is refused too, not skipped.
fn original<'a>(
    headers: &'a HeaderMap,
    names: &[HeaderName],
    what: &str,
) -> Result<Option<&'a str>, Rejection> {
    let mut found: Option<&str> = None;
    for value in names.iter().flat_map(|name| headers.get_all(name)) {
        let Ok(value) = value.to_str() else {
            return Err(ApiError::invalid(format!(
                "The original request's {what} header holds bytes that are not visible ASCII."
            ))
            .into());
        };
        match found {
            Some(earlier) if earlier != value => {
                return Err(ApiError::invalid(format!(
                    "The request carries two different original {what}s ({}).",
                    names
                        .iter()
                        .map(HeaderName::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .hint(format!(
                    "have the proxy set the original {what} under one of these names and drop or overwrite the others the client sends"
                ))
                .into());
            }
            _ => found = Some(value),
        }
    }
    Ok(found)
}

/// The host the client asked for: `X-Forwarded-Host`, else the `Host` the proxy asked
/// with (Envoy passes the client's on); `None` when neither is there. As with the original
/// URI, entries that name different hosts (a client's own beside the proxy's, in another
/// line or further down a comma list) and unreadable ones are refused, not chosen between.
fn original_host(headers: &HeaderMap) -> Result<Option<String>, Rejection> {
    let forwarded = headers.get_all(&X_FORWARDED_HOST);
    let (values, what) = if forwarded.iter().next().is_some() {
        (forwarded, "X-Forwarded-Host")
    } else {
        (headers.get_all(axum::http::header::HOST), "Host")
    };
    let mut found: Option<String> = None;
    for value in values {
        for entry in value.to_str().unwrap_or(",").split(',') {
            let Some(host) = keygate_core::route::host_name(entry) else {
                return Err(
                    ApiError::invalid(format!("{what} names no host that can be read.")).into(),
                );
            };
            match &found {
                Some(earlier) if *earlier != host => {
                    return Err(ApiError::invalid(format!(
                        "{what} names two different hosts."
                    ))
                    .hint("have the proxy set the original host once, overwriting the client's")
                    .into());
                }
                _ => found = Some(host),
            }
        }
    }
    Ok(found)
}

static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

#[utoipa::path(
    get, path = "/api/v1/forward-auth", tag = "gateway",
    params(
        ("X-Forwarded-Method" = Option<String>, Header, description = "The original method (also X-Original-Method)"),
        ("X-Forwarded-Uri" = Option<String>, Header, description = "The original URI (also X-Original-URI)"),
        ("X-Forwarded-Host" = Option<String>, Header, description = "The original host, for route policies that name hosts (else Host)"),
    ),
    responses(
        (status = 200, description = "Allowed: identity in X-Keygate-* headers, empty body"),
        (status = 401, description = "No valid credential", body = keygate_api::ErrorBody),
        (status = 403, description = "Not permitted", body = keygate_api::ErrorBody),
        (status = 429, description = "Rate limited or over quota", body = keygate_api::ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
/// Any method is accepted: proxies forward the original one or send their own.
pub async fn forward_auth(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let peer = crate::http::extract::peer_ip_of(&request);
    let (parts, _) = request.into_parts();
    let (response, limits) = decide(&state, &parts, peer).map_err(Rejection::into_error)?;
    // The router's request context adds the `RateLimit` fields.
    set_request_limits(limits.as_slice());
    Ok(response)
}

/// Forward auth answered beside the router (`front.rs`): the same answer as the routed
/// handler, with the same request id, `RateLimit` fields, error style and log line, but
/// without axum's routing and the general middleware stack — which cost more than the
/// decision itself (BENCHMARKS.md). Only the request's head is read.
pub fn answer_beside_router(
    state: &AppState,
    parts: &axum::http::request::Parts,
    peer: Option<std::net::IpAddr>,
) -> Response {
    let started = std::time::Instant::now();
    let id = context::request_id_of(&parts.headers);
    // A refusal is rendered inside the request's task-locals (its id, error style and
    // the key's limit states); an allowed request needs none.
    let refused = |refusal: Rejection| {
        let (response, limits) = context::within_request(&id, state.error_policy.clone(), || {
            refusal.into_error().into_response()
        });
        (response, limits.into_iter().collect::<LimitStatuses>())
    };
    // As the router's CatchPanicLayer does: a panic is a 500 in the error model.
    let (mut response, limits) =
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decide(state, parts, peer)))
        {
            // Kept inline: an allowed answer allocates nothing for its limits.
            Ok(Ok((response, limits))) => (response, limits),
            Ok(Err(refusal)) => refused(refusal),
            Err(_) => {
                tracing::error!("forward auth panicked");
                refused(ApiError::new(keygate_api::ErrorCode::InternalError).into())
            }
        };
    context::finish(
        &mut response,
        &id,
        limits.as_slice(),
        &parts.method,
        &parts.uri,
        started,
    );
    response
}

/// The decision for one forward-auth request, from its head (read by reference: the hot
/// path copies no header map) and its TCP peer; with the key's limit states.
fn decide(
    state: &AppState,
    parts: &axum::http::request::Parts,
    peer: Option<std::net::IpAddr>,
) -> Result<(Response, LimitStatuses), Rejection> {
    let client_ip = state.config.client_ip(peer, &parts.headers);
    let (method, uri, headers) = (&parts.method, &parts.uri, &parts.headers);
    let original_method = original(headers, &ORIGINAL_METHOD, "method")?.unwrap_or(method.as_str());
    // The original URI: from the proxy's header, else whatever follows our own path (the
    // form Envoy's path_prefix produces), else the request's URI itself. A parsed URI is
    // kept here for the borrowed path and query below.
    let parsed: Uri;
    let sent_uri = original(headers, &ORIGINAL_URI, "URI")?;
    // Envoy's form: the original path and query after our own path.
    let suffix = uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .and_then(|pq| pq.strip_prefix("/api/v1/forward-auth"))
        .filter(|rest| rest.starts_with('/'));
    if let (Some(sent), Some(suffix)) = (sent_uri, suffix)
        && sent != suffix
    {
        return Err(ApiError::invalid(
            "The request names two different original URIs (a header and the path after /api/v1/forward-auth).",
        )
        .into());
    }
    let (original_path, original_query) =
        match sent_uri.map(|value| original_uri(value).ok_or(value)) {
            Some(Ok(OriginalUri::Split { path, query })) => (path, query),
            Some(Ok(OriginalUri::Parsed(uri))) => {
                parsed = uri;
                (parsed.path(), parsed.query())
            }
            // Checking some other path than the one sent would be a guess.
            Some(Err(_)) => {
                return Err(
                    ApiError::invalid("The original request's URI header is not a URI.").into(),
                );
            }
            None => {
                parsed = match suffix {
                    Some(rest) => rest.parse::<Uri>().map_err(|_| {
                        ApiError::invalid("The path after /api/v1/forward-auth is not a URI.")
                    })?,
                    None => uri.clone(),
                };
                (parsed.path(), parsed.query())
            }
        };
    // Matched on the path as the upstream will resolve it: a raw `/public/../admin` (what
    // nginx's $request_uri holds) must be checked as /admin.
    let Some(path) = normalize_path(original_path) else {
        return Err(ApiError::invalid(
            "The original path climbs above the root or hides a separator (%2f, %5c).",
        )
        .into());
    };
    // The host is read only where a route names hosts.
    let host = if keygate_core::route::names_hosts(&state.config.routes) {
        original_host(headers)?
    } else {
        None
    };
    let indexed = indexed_policy_for(&state.config.routes, original_method, path.as_ref(), || {
        host.as_deref().map(std::borrow::Cow::Borrowed)
    });
    let policy = indexed.map(|(_, policy)| policy);
    if policy.is_some_and(|p| p.access == Access::Public) {
        return Ok((
            allowed(&state.identity_names, None),
            LimitStatuses::default(),
        ));
    }
    let scopes: Vec<&str> = policy
        .map(|p| p.scopes.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let principal = state
        .engine
        .authenticate_route(
            headers,
            original_query,
            &scopes,
            client_ip,
            RouteRules::of(indexed),
            now_ms(),
        )
        .map_err(Rejection::Denied)?;
    let response = allowed(&state.identity_names, Some(&principal));
    let limits = match principal {
        Principal::ApiKey { limits, .. } => limits,
        _ => LimitStatuses::default(),
    };
    Ok((response, limits))
}

/// The 200 of an allowed request: every identity header, empty when there is nothing to
/// say (a public route, a key without an owner). Proxies copy these onto the request
/// they pass on; a header keygate left out would let the client's own copy through
/// (Traefik's `authResponseHeaders`, Envoy's `allowed_upstream_headers`), and Caddy 2.6
/// would set the literal placeholder text instead.
fn allowed(names: &IdentityNames, principal: Option<&Principal>) -> Response {
    let mut response = Response::new(axum::body::Body::empty());
    let mut headers = names.allowed_head.clone();
    let values = principal.map_or([None, None, None, None], identity_headers);
    // The clone keeps the template's order: the length, then the identity headers in the
    // order of `all()`.
    for (slot, value) in headers.values_mut().skip(1).zip(values) {
        if let Some(value) = value {
            *slot = value;
        }
    }
    *response.headers_mut() = headers;
    response
}

/// Names that replace the prefix's for single identity headers (`[identity_headers]`),
/// for apps that read the caller from a header of their own (`Remote-User`, `X-User-Id`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityHeaderNames {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<String>,
}

impl IdentityHeaderNames {
    /// No name configured: every identity header takes the prefix's.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Headers an identity header may not be named, besides the proxy's hop-by-hop and
/// untrusted forwarding headers (which it removes): HTTP's own, the credentials, and the
/// forwarding headers the proxy writes itself.
const RESERVED_NAMES: [&str; 12] = [
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "upgrade",
    "authorization",
    "cookie",
    "set-cookie",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    context::REQUEST_ID_HEADER,
];

/// Do two header names read the same to an upstream? `_` counts as `-` (CGI-style
/// upstreams read `Remote_User` as `Remote-User`); names are lowercase.
#[inline]
fn same_header(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x == y || matches!((x, y), (b'_', b'-') | (b'-', b'_')))
}

/// Is `name` under `prefix`, with `_` read as `-`? (Both lowercase.)
#[inline]
fn under_prefix(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len() && same_header(&name[..prefix.len()], prefix)
}

/// The names of the identity headers, made once from the configured prefix and names.
#[derive(Debug, Clone)]
pub struct IdentityNames {
    key_id: HeaderName,
    user: HeaderName,
    project: HeaderName,
    scopes: HeaderName,
    /// The prefix, lowercase: any name under it is taken for an identity header.
    prefix: String,
    /// The configured names that are not under the prefix.
    outside_prefix: Vec<HeaderName>,
    /// The head of forward auth's 200: `Content-Length: 0`, then every identity header,
    /// empty, then the request id. Each answer clones it and fills the values in place:
    /// a clone copies the map without hashing a name, where inserting five names hashes
    /// each of them, the largest share of an allowed answer's work (BENCHMARKS.md).
    allowed_head: HeaderMap,
}

impl IdentityNames {
    /// Key id, user, project, scopes: the order of [`identity_headers`].
    pub fn all(&self) -> [&HeaderName; 4] {
        [&self.key_id, &self.user, &self.project, &self.scopes]
    }

    /// The names `prefix` makes, each replaced by its entry in `names` when there is one.
    /// `taken` are header names keygate reads credentials or addresses from (the API-key
    /// and client-address headers), which an identity header may not reuse.
    pub fn new(prefix: &str, names: &IdentityHeaderNames, taken: &[&str]) -> Result<Self, String> {
        let name = |field: &str, suffix: &str, named: &Option<String>| match named {
            Some(named) => {
                let lower = named.trim().to_ascii_lowercase();
                let parsed = HeaderName::try_from(lower.as_str()).map_err(|_| {
                    format!("identity_headers.{field}: {named:?} is not a valid header name")
                })?;
                let removed_by_proxy = crate::http::proxy::HOP_BY_HOP
                    .iter()
                    .chain(&crate::http::proxy::UNTRUSTED_FORWARDING)
                    .map(HeaderName::as_str);
                let clash = RESERVED_NAMES
                    .iter()
                    .copied()
                    .chain(removed_by_proxy)
                    .chain(taken.iter().copied())
                    .any(|reserved| same_header(&lower, &reserved.to_ascii_lowercase()));
                if clash {
                    return Err(format!(
                        "identity_headers.{field}: {named:?} is a header keygate or HTTP already uses"
                    ));
                }
                Ok(parsed)
            }
            None => HeaderName::try_from(format!("{prefix}{suffix}")).map_err(|_| {
                format!("identity_header_prefix {prefix:?} makes no valid header name")
            }),
        };
        let [key_id, user, project, scopes] = [
            name("key_id", "key-id", &names.key_id)?,
            name("user", "user", &names.user)?,
            name("project", "project", &names.project)?,
            name("scopes", "scopes", &names.scopes)?,
        ];
        let all = [&key_id, &user, &project, &scopes];
        for (i, a) in all.iter().enumerate() {
            if all[..i].iter().any(|b| same_header(a.as_str(), b.as_str())) {
                return Err(format!(
                    "identity_headers: {:?} names two identity headers",
                    a.as_str()
                ));
            }
        }
        // Room to spare: a map at its capacity grows on any insert, even one that only
        // replaces a value (as the request id's does), and an answer may add the two
        // `RateLimit` fields.
        let mut allowed_head = HeaderMap::with_capacity(12);
        allowed_head.insert(
            axum::http::header::CONTENT_LENGTH,
            HeaderValue::from_static("0"),
        );
        for name in all {
            allowed_head.insert(name.clone(), HeaderValue::from_static(""));
        }
        // Set on the way out (`context::finish`); in place here, so the clone need not
        // grow for it.
        allowed_head.insert(context::REQUEST_ID_NAME, HeaderValue::from_static("-"));
        let prefix = prefix.to_ascii_lowercase();
        let outside_prefix = all
            .into_iter()
            .filter(|name| !under_prefix(name.as_str(), &prefix))
            .cloned()
            .collect();
        Ok(Self {
            key_id,
            user,
            project,
            scopes,
            prefix,
            outside_prefix,
            allowed_head,
        })
    }

    /// Would an upstream read `name` as one of the identity headers? Any name under the
    /// prefix counts (the four and whatever a later version adds), and each configured
    /// name, with `_` read as `-`.
    #[inline]
    pub fn claimed_by(&self, name: &HeaderName) -> bool {
        let name = name.as_str();
        under_prefix(name, &self.prefix)
            || self
                .outside_prefix
                .iter()
                .any(|own| same_header(name, own.as_str()))
    }
}

/// The identity headers that tell the app who is calling (`X-Keygate-Key-Id`, ...), in
/// the order of [`IdentityNames::all`]: key id, user, project, scopes. `None` where there
/// is nothing to say (a key without an owner, a request outside any project).
pub fn identity_headers(principal: &Principal) -> [Option<HeaderValue>; 4] {
    match principal {
        Principal::ApiKey {
            key,
            owner,
            project,
            ..
        } => {
            let made;
            let kept = match key.derived.get_or_init(|| KeyIdentity::of(&key.record)) {
                Some(kept) => kept,
                None => {
                    made = KeyIdentity::of(&key.record);
                    &made
                }
            };
            let owner = owner.and_then(|(user, _)| match &kept.owner {
                Some((id, value)) if *id == user => Some(value.clone()),
                _ => id_value(&user),
            });
            [
                kept.key_id.clone(),
                owner,
                project.as_ref().and_then(id_value),
                kept.scopes.clone(),
            ]
        }
        Principal::User {
            id: user,
            role,
            project,
            ..
        } => [
            None,
            id_value(user),
            project.as_ref().and_then(id_value),
            HeaderValue::from_str(&role.permissions().join(" ")).ok(),
        ],
        Principal::Open => [None, None, None, None],
    }
}

fn id_value(id: &uuid::Uuid) -> Option<HeaderValue> {
    // Written into a buffer on the stack rather than formatted into a String.
    let mut buffer = uuid::Uuid::encode_buffer();
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut buffer)).ok()
}

/// A key's identity header values that are the same on every request (the project may
/// differ per request), made once per key entry and kept with it: formatting and copying
/// them was a large share of an allowed request's work (BENCHMARKS.md).
struct KeyIdentity {
    key_id: Option<HeaderValue>,
    /// The owner's id with its value.
    owner: Option<(uuid::Uuid, HeaderValue)>,
    scopes: Option<HeaderValue>,
}

impl KeyIdentity {
    fn of(record: &keygate_core::record::KeyRecord) -> Self {
        Self {
            key_id: id_value(&record.id),
            owner: record
                .owner
                .and_then(|owner| Some((owner, id_value(&owner)?))),
            scopes: HeaderValue::from_str(&record.scopes.join(" ")).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::index::KeyIndex;
    use keygate_core::record::KeyRecord;
    use keygate_core::user::Role;
    use std::sync::Arc;
    use uuid::Uuid;

    fn split(value: &str) -> Option<(String, Option<String>)> {
        original_uri(value).map(|uri| match uri {
            OriginalUri::Split { path, query } => (path.to_owned(), query.map(str::to_owned)),
            OriginalUri::Parsed(uri) => (
                format!("parsed:{}", uri.path()),
                uri.query().map(str::to_owned),
            ),
        })
    }

    #[test]
    fn original_uris_are_split_into_path_and_query_where_they_lie() {
        let s = |path: &str, query: Option<&str>| Some((path.to_owned(), query.map(str::to_owned)));
        assert_eq!(split("/files/a"), s("/files/a", None));
        assert_eq!(split("/files/a?x=1&y=2"), s("/files/a", Some("x=1&y=2")));
        assert_eq!(split("/files/a?x=1#top"), s("/files/a", Some("x=1")));
        assert_eq!(split("/files/a#top?x"), s("/files/a", None));
        assert_eq!(split("/a/../b"), s("/a/../b", None));
        // Characters `Uri` refuses (`<`, `"`) are read as sent, as the upstream gets them;
        // `normalize_path` still refuses what could hide a path (`%2f`, `\`, `..` above
        // the root).
        assert_eq!(split("/public/<x"), s("/public/<x", None));
        assert_eq!(split("/files?q=\"a\""), s("/files", Some("q=\"a\"")));
        // Not the origin form: parsed, as before.
        assert_eq!(
            split("http://app.example/p?q=1"),
            s("parsed:/p", Some("q=1"))
        );
        // No URI at all: the caller falls back to the request's own.
        assert_eq!(split("/a b"), None);
        assert_eq!(split("/a\tb"), None);
        assert_eq!(split(""), None);
    }

    fn key(scopes: &[&str], owner: Option<Uuid>) -> Arc<keygate_core::index::IndexedKey> {
        let record = record(scopes, owner);
        let hash = record.hash;
        let index = KeyIndex::from_records([record]);
        Arc::clone(index.get_by_hash(&hash).expect("indexed"))
    }

    fn record(scopes: &[&str], owner: Option<Uuid>) -> KeyRecord {
        let spec = crate::mint::KeySpec {
            name: "test".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            enabled: true,
            ..Default::default()
        };
        let (_, mut record) = crate::mint::mint(&spec, 0).expect("mint");
        // Fixed, so answers can be compared and a changed record found again.
        record.id = Uuid::from_u128(1);
        record.hash = keygate_core::key_format::hash_key("kg_test");
        record.owner = owner;
        record
    }

    fn principal(
        key: &Arc<keygate_core::index::IndexedKey>,
        owner: Option<Uuid>,
        project: Option<Uuid>,
    ) -> Principal {
        Principal::ApiKey {
            key: Arc::clone(key),
            owner: owner.map(|id| (id, Role::User)),
            limits: LimitStatuses::default(),
            project,
        }
    }

    fn answer_headers(response: &Response) -> Vec<(String, String)> {
        response
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    value.to_str().expect("text").to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn allowed_answers_put_each_identity_value_under_its_own_name() {
        let names =
            IdentityNames::new("x-id-", &IdentityHeaderNames::default(), &[]).expect("names");
        let (owner, project) = (Uuid::from_u128(2), Uuid::from_u128(3));
        let key = key(&["files:read", "files:write"], Some(owner));
        let want = |user: &str, project: &str| {
            vec![
                ("content-length".to_owned(), "0".to_owned()),
                (
                    "x-id-key-id".to_owned(),
                    "00000000-0000-0000-0000-000000000001".to_owned(),
                ),
                ("x-id-user".to_owned(), user.to_owned()),
                ("x-id-project".to_owned(), project.to_owned()),
                (
                    "x-id-scopes".to_owned(),
                    "files:read files:write".to_owned(),
                ),
                ("x-request-id".to_owned(), "-".to_owned()),
            ]
        };
        // Twice: the second answer takes the values kept with the key.
        for _ in 0..2 {
            let response = allowed(&names, Some(&principal(&key, Some(owner), Some(project))));
            assert_eq!(
                answer_headers(&response),
                want(
                    "00000000-0000-0000-0000-000000000002",
                    "00000000-0000-0000-0000-000000000003"
                )
            );
        }
        // The project is the request's, not kept with the key; an owner the decision no
        // longer reports is not sent.
        let response = allowed(&names, Some(&principal(&key, None, None)));
        assert_eq!(answer_headers(&response), want("", ""));
        // An owner other than the one kept with the key is written out, not replaced.
        let other = Uuid::from_u128(4);
        let response = allowed(&names, Some(&principal(&key, Some(other), None)));
        assert_eq!(
            answer_headers(&response),
            want("00000000-0000-0000-0000-000000000004", "")
        );
        // A public route: every identity header present and empty.
        let response = allowed(&names, None);
        let headers = answer_headers(&response);
        assert_eq!(headers[1], ("x-id-key-id".to_owned(), String::new()));
        assert_eq!(headers[4], ("x-id-scopes".to_owned(), String::new()));
    }

    #[test]
    fn identity_headers_are_recognised_in_either_spelling() {
        let default =
            IdentityNames::new("x-keygate-", &IdentityHeaderNames::default(), &[]).expect("names");
        let named = IdentityHeaderNames {
            user: Some("Remote-User".into()),
            ..Default::default()
        };
        let remote = IdentityNames::new("x-keygate-", &named, &[]).expect("names");
        for (name, by_default, with_remote_user) in [
            ("x-keygate-user", true, true),
            ("x_keygate_user", true, true),
            ("x-keygate_scopes", true, true),
            ("x-keygate-future", true, true),
            ("x-keygate", false, false),
            ("x-keygates", false, false),
            ("x-other", false, false),
            ("remote-user", false, true),
            ("remote_user", false, true),
            ("remote-users", false, false),
        ] {
            let name = HeaderName::from_static(name);
            assert_eq!(default.claimed_by(&name), by_default, "{name}");
            assert_eq!(remote.claimed_by(&name), with_remote_user, "{name}");
        }
    }

    #[test]
    fn configured_names_replace_the_prefixed_ones() {
        let named = IdentityHeaderNames {
            user: Some("Remote-User".into()),
            scopes: Some("X-Scopes".into()),
            ..Default::default()
        };
        let names = IdentityNames::new("x-auth-", &named, &["x-api-key"]).expect("names");
        let all: Vec<&str> = names.all().iter().map(|n| n.as_str()).collect();
        assert_eq!(
            all,
            ["x-auth-key-id", "remote-user", "x-auth-project", "x-scopes"]
        );
        let response = allowed(&names, None);
        assert_eq!(response.headers()["remote-user"], "");
        assert_eq!(response.headers()["x-scopes"], "");
    }

    #[test]
    fn identity_header_names_that_cannot_work_are_refused() {
        let refused = |named: IdentityHeaderNames| {
            IdentityNames::new("x-keygate-", &named, &["x-api-key", "x-forwarded-for"])
                .expect_err("refused")
        };
        let user = |name: &str| IdentityHeaderNames {
            user: Some(name.into()),
            ..Default::default()
        };
        assert!(refused(user("bad name")).contains("not a valid header name"));
        assert!(refused(user("")).contains("not a valid header name"));
        for taken in [
            "Host",
            "authorization",
            "X-Request-Id",
            "x_api_key",
            "Cookie",
            "Keep-Alive",
            "X-Real-IP",
            "X-Forwarded-Port",
        ] {
            let error = refused(user(taken));
            assert!(error.contains("already uses"), "{taken}: {error}");
        }
        // Two identity headers under one name (in either spelling).
        let error = refused(IdentityHeaderNames {
            user: Some("x-who".into()),
            project: Some("X_Who".into()),
            ..Default::default()
        });
        assert!(error.contains("names two identity headers"), "{error}");
        let error = refused(user("x-keygate-key-id"));
        assert!(error.contains("names two identity headers"), "{error}");
    }

    #[test]
    fn a_changed_key_gets_its_identity_values_anew() {
        let names =
            IdentityNames::new("x-keygate-", &IdentityHeaderNames::default(), &[]).expect("names");
        let mut index = KeyIndex::from_records([record(&["a"], None)]);
        let hash = record(&[], None).hash;
        let before = Arc::clone(index.get_by_hash(&hash).expect("indexed"));
        let response = allowed(&names, Some(&principal(&before, None, None)));
        assert_eq!(response.headers()["x-keygate-scopes"], "a");
        // The change feed brings the key back with another scope.
        index.upsert(record(&["a", "b"], None));
        let after = Arc::clone(index.get_by_hash(&hash).expect("indexed"));
        let response = allowed(&names, Some(&principal(&after, None, None)));
        assert_eq!(response.headers()["x-keygate-scopes"], "a b");
    }
}
