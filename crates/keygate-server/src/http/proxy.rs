//! Reverse-proxy mode: keygate in front of an app (`serve --upstream URL`).
//!
//! Requests keygate has no endpoint for (and those a route marks `upstream = true`) are
//! checked against their route policy, stripped of the credential, given the identity
//! headers and streamed to the upstream; the answer streams back. Bodies are never
//! buffered, so memory stays flat whatever their size. WebSocket upgrades pass through
//! once the handshake request is allowed.

use crate::AppState;
use crate::clock::now_ms;
use crate::config::{ServerConfig, UpstreamConfig};
use crate::engine::{Principal, RouteRules};
use crate::http::context::set_request_limits;
use crate::http::error::{ApiError, Rejection};
use crate::http::forward::identity_headers;
use crate::http::upstream::{Failure, Pool};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::uri::{PathAndQuery, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use keygate_api::ErrorCode;
use keygate_core::limit::LimitStatuses;
use keygate_core::route::{
    Access, RoutePolicy, indexed_policy_for, names_hosts, normalize_path, policy_for,
};
use std::sync::Arc;

/// The upstream and its keep-alive connections.
pub struct Upstream {
    config: UpstreamConfig,
    pool: Arc<Pool>,
    /// `Host` for requests that do not pass the client's on.
    host: HeaderValue,
    /// The server's configured header names, parsed once rather than per request.
    api_key_header: Option<HeaderName>,
    client_ip_header: Option<HeaderName>,
}

impl Upstream {
    pub fn new(config: UpstreamConfig, server: &ServerConfig) -> Result<Self, String> {
        let url = &config.url;
        let Some(host) = url.host() else {
            return Err(format!("upstream `{url}` names no host"));
        };
        let host = host_header(host, url.port_u16())
            .ok_or_else(|| format!("upstream `{url}`: its host cannot be a Host header"))?;
        let pool = Pool::new(url, config.connect_timeout, config.pool_idle_timeout);
        let header = |name: &str| HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok();
        Ok(Self {
            config,
            pool,
            host,
            api_key_header: header(&server.api_key_header),
            client_ip_header: header(&server.client_ip_header),
        })
    }

    /// The idle connections, for the sweeper of stale ones.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The origin-form URI the upstream is asked for: its path prefix, then the path and
    /// the query of the request without `apikey` parameters (never forwarded, DESIGN.md).
    fn target(&self, uri: &Uri) -> Result<Uri, ApiError> {
        let prefix = self.config.url.path().trim_end_matches('/');
        let query = uri.query().filter(|q| !q.is_empty());
        if prefix.is_empty()
            && !query.is_some_and(may_carry_credential)
            && let Some(path_and_query) = uri.path_and_query()
            && path_and_query.query() != Some("")
        {
            // Nothing to change: the request's own path and query, without a copy.
            return Ok(Uri::from(path_and_query.clone()));
        }
        let mut path_and_query = format!("{prefix}{}", uri.path());
        if let Some(query) = query
            .map(query_without_credential)
            .filter(|q| !q.is_empty())
        {
            path_and_query.push('?');
            path_and_query.push_str(&query);
        }
        let path_and_query = PathAndQuery::try_from(path_and_query)
            .map_err(|_| ApiError::invalid("The request path cannot be forwarded."))?;
        Ok(Uri::from(path_and_query))
    }
}

/// `Host` for the upstream: its name, and its port unless it is HTTP's default (never
/// the URL's user information).
fn host_header(host: &str, port: Option<u16>) -> Option<HeaderValue> {
    match port {
        Some(port) if port != 80 => HeaderValue::try_from(format!("{host}:{port}")).ok(),
        _ => HeaderValue::from_str(host).ok(),
    }
}

/// Could this query hold an `apikey` parameter (in any case, or percent-encoded)?
fn may_carry_credential(query: &str) -> bool {
    query.contains('%')
        || query
            .as_bytes()
            .windows(6)
            .any(|w| w.eq_ignore_ascii_case(b"apikey"))
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1); never
/// forwarded, in either direction. A `static`, not a `const`: a const array of names is
/// made and dropped again wherever it is used, here once per header of every message.
pub(crate) static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names instead of nine removals.
    if !headers
        .keys()
        .any(|name| name == header::UPGRADE || HOP_BY_HOP.contains(name))
    {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// The `Upgrade` value of a WebSocket-style upgrade request, if it is one.
fn upgrade_of(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    wants
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// The query without `apikey` parameters, other parameters byte for byte as sent.
fn query_without_credential(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            let decoded: String = form_urlencoded::parse(name.as_bytes())
                .map(|(n, _)| n.into_owned())
                .collect();
            !decoded.eq_ignore_ascii_case("apikey")
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// True for an `Authorization` value whose scheme carries a keygate credential (the app's
/// own `Basic` credentials pass through).
fn is_credential_authorization(value: &HeaderValue) -> bool {
    let scheme = value
        .to_str()
        .ok()
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_default();
    ["bearer", "apikey", "token"]
        .iter()
        .any(|s| scheme.eq_ignore_ascii_case(s))
}

/// Sends requests for paths a route marks `upstream = true` to the upstream before
/// keygate's own router sees them.
pub async fn divert(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = normalize_path(request.uri().path());
    let diverted = path.is_none()
        || policy_for(
            &state.config.routes,
            request.method().as_str(),
            path.as_deref().unwrap_or_default(),
            // An unreadable host is refused once the request reaches the proxy's check.
            || {
                let peer = crate::http::extract::peer_ip_of(&request).map(PeerAddress::new);
                request_host(&state, request.headers(), peer.as_ref())
                    .ok()
                    .flatten()
                    .map(std::borrow::Cow::Owned)
            },
        )
        .is_some_and(|p| p.upstream);
    if diverted {
        proxy(State(state), request).await
    } else {
        next.run(request).await
    }
}

/// A proxied request answered beside the router (`front.rs`): what the router's fallback
/// would answer, with the same request id, `RateLimit` fields, error style, panic
/// handling and log line, without the routing and the general middleware stack.
///
/// The request is checked here, synchronously: a refusal is answered at once, and only
/// a request on its way to the upstream becomes a future. The request's task-locals (id,
/// limits, error style) are only set to render an error, so the wait for the upstream is
/// not wrapped in them.
pub fn answer_beside_router(
    state: &AppState,
    request: Request,
    peer: Option<&PeerAddress>,
) -> Answer<impl Future<Output = Response> + Send + 'static> {
    use crate::http::context::{finish, request_id_of, within_request};
    use futures_util::FutureExt as _;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let started = std::time::Instant::now();
    let id = request_id_of(request.headers());
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let policy = state.error_policy.clone();
    let panicked = || {
        tracing::error!("a proxied request panicked");
        ApiError::new(ErrorCode::InternalError)
    };
    // An error is rendered inside the request's task-locals (its id, error style and
    // the key's limit states); a request on its way to the upstream needs none.
    let refused = move |refusal: Rejection, id: &HeaderValue| {
        within_request(id, policy, || refusal.into_error().into_response())
    };
    let prepared = match &state.upstream {
        Some(upstream) => catch_unwind(AssertUnwindSafe(|| {
            prepare(state, upstream, request, peer).map(|p| (p, Arc::clone(upstream)))
        })),
        None => Ok(Err(no_upstream().into())),
    };
    let (mut response, limits) = match prepared {
        Ok(Ok((prepared, upstream))) => {
            let Prepared {
                outgoing,
                upgrade,
                limits,
            } = prepared;
            let limits = limits.as_slice().to_vec();
            return Answer::Sending(async move {
                let sent = AssertUnwindSafe(send(&upstream, outgoing, upgrade))
                    .catch_unwind()
                    .await;
                let mut response = match sent {
                    Ok(Ok(response)) => response,
                    Ok(Err(error)) => refused(error.into(), &id).0,
                    Err(_) => refused(panicked().into(), &id).0,
                };
                finish(&mut response, &id, &limits, &method, &uri, started);
                response
            });
        }
        Ok(Err(refusal)) => refused(refusal, &id),
        Err(_) => refused(panicked().into(), &id),
    };
    finish(&mut response, &id, &limits, &method, &uri, started);
    Answer::Ready(response)
}

/// What [`answer_beside_router`] makes of a request.
pub enum Answer<F> {
    /// Answered by keygate itself (a refusal).
    Ready(Response),
    /// On its way to the upstream; the future answers its response.
    Sending(F),
}

/// The peer of a connection, with its address already written out for
/// `X-Forwarded-For` (once per connection rather than once per request).
pub struct PeerAddress {
    ip: std::net::IpAddr,
    text: HeaderValue,
}

impl PeerAddress {
    pub fn new(ip: std::net::IpAddr) -> Self {
        let ip = ip.to_canonical();
        let text = HeaderValue::try_from(ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { ip, text }
    }
}

/// The handler for every request keygate does not answer itself.
pub async fn proxy(State(state): State<AppState>, request: Request) -> Response {
    let peer = crate::http::extract::peer_ip_of(&request).map(PeerAddress::new);
    let Some(upstream) = state.upstream.as_deref() else {
        return no_upstream().into_response();
    };
    let answer = match prepare(&state, upstream, request, peer.as_ref()) {
        Ok(prepared) => {
            // The router's request context adds the `RateLimit` fields.
            set_request_limits(prepared.limits.as_slice());
            send(upstream, prepared.outgoing, prepared.upgrade).await
        }
        Err(refusal) => Err(refusal.into_error()),
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

/// The host the client asked for, its one `Host`, for route policies that name hosts.
/// Refused: no `Host` (HTTP/1.1 requires one, and the app would serve whichever site is
/// its default), two, an unreadable one, and an `X-Forwarded-Host` from a trusted proxy
/// that names another host (the app could serve that one while keygate checked this).
fn request_host(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<&PeerAddress>,
) -> Result<Option<String>, ApiError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let (Some(value), None) = (hosts.next(), hosts.next()) else {
        return Err(ApiError::invalid(
            "The request needs exactly one Host header here.",
        ));
    };
    let host = value
        .to_str()
        .ok()
        .and_then(keygate_core::route::host_name)
        .ok_or_else(|| ApiError::invalid("Host names no host that can be read."))?;
    if peer.is_some_and(|p| state.config.is_trusted_proxy(&p.ip)) {
        for forwarded in headers.get_all(X_FORWARDED_HOST) {
            for entry in forwarded.to_str().unwrap_or(",").split(',') {
                if keygate_core::route::host_name(entry).as_deref() != Some(host.as_str()) {
                    return Err(ApiError::invalid(
                        "X-Forwarded-Host names another host than Host.",
                    ));
                }
            }
        }
    }
    Ok(Some(host))
}

/// A request checked and ready for the upstream.
struct Prepared {
    /// Boxed: it is kept in the proxied request's future (see `Pool::send`).
    outgoing: Box<Request>,
    /// The protocol of an upgrade request, and the client side of the upgrade.
    upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
    /// The key's limit states after this request (for `RateLimit` fields).
    limits: LimitStatuses,
}

/// Checks a request against its route policy and makes the request the upstream gets.
fn prepare(
    state: &AppState,
    upstream: &Upstream,
    mut request: Request,
    peer: Option<&PeerAddress>,
) -> Result<Prepared, Rejection> {
    // The policy is matched on the path the upstream will resolve, so the path must
    // already be in that form: `/public/../admin` or `//admin` would otherwise be checked
    // as one route and served as another.
    if normalize_path(request.uri().path()).as_deref() != Some(request.uri().path()) {
        return Err(ApiError::invalid(
            "The request path is not in canonical form (dot segments, empty segments or an encoded separator).",
        )
        .hint("send the path as the server should read it, e.g. /a/b rather than /a/./b or /x/../a/b")
        .into());
    }
    let client_ip = state
        .config
        .client_ip(peer.map(|p| p.ip), request.headers());
    // The host is read only where a route names hosts.
    let host = if names_hosts(&state.config.routes) {
        request_host(state, request.headers(), peer)?
    } else {
        None
    };
    let indexed = indexed_policy_for(
        &state.config.routes,
        request.method().as_str(),
        request.uri().path(),
        || host.as_deref().map(std::borrow::Cow::Borrowed),
    );
    let policy: Option<&RoutePolicy> = indexed.map(|(_, policy)| policy);
    let principal = if policy.is_some_and(|p| p.access == Access::Public) {
        None
    } else {
        let scopes: Vec<&str> = policy
            .map(|p| p.scopes.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let principal = state
            .engine
            .authenticate_route(
                request.headers(),
                request.uri().query(),
                &scopes,
                client_ip,
                RouteRules::of(indexed),
                now_ms(),
            )
            .map_err(Rejection::Denied)?;
        Some(principal)
    };

    let upgrade = upgrade_of(request.headers());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let config = &upstream.config;
    // The `apikey` parameter is never forwarded (DESIGN.md), even with keep_credential.
    let target = upstream.target(&parts.uri)?;

    let headers = &mut parts.headers;
    let original_host = headers.get(header::HOST).cloned();
    strip_hop_by_hop(headers);
    if !config.keep_credential {
        if let Some(name) = &upstream.api_key_header {
            headers.remove(name);
        }
        // Most requests carry their key in one place only: look before rewriting.
        if headers.contains_key(header::AUTHORIZATION) {
            let app_authorization: Vec<HeaderValue> = headers
                .get_all(header::AUTHORIZATION)
                .iter()
                .filter(|v| !is_credential_authorization(v))
                .cloned()
                .collect();
            headers.remove(header::AUTHORIZATION);
            for value in app_authorization {
                headers.append(header::AUTHORIZATION, value);
            }
        }
    }
    // Identity headers come from keygate alone: a client's own copies are dropped.
    let identity = &state.identity_names;
    if headers.keys().any(|name| identity.claimed_by(name)) {
        let spoofed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| identity.claimed_by(name))
            .cloned()
            .collect();
        for name in spoofed {
            headers.remove(&name);
        }
    }
    if let Some(principal) = &principal {
        let names = state.identity_names.all();
        for (name, value) in names.into_iter().zip(identity_headers(principal)) {
            if let Some(value) = value {
                headers.insert(name.clone(), value);
            }
        }
    }
    forwarded_headers(state, upstream, headers, peer, original_host.as_ref());
    if !config.preserve_host || !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, upstream.host.clone());
    }
    if let Some(protocol) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    parts.uri = target;
    // The client speaks HTTP/1.1 to the upstream whatever the caller used.
    parts.version = axum::http::Version::HTTP_11;
    Ok(Prepared {
        outgoing: Box::new(Request::from_parts(parts, body)),
        upgrade: upgrade.zip(client_upgrade),
        limits: match principal {
            Some(Principal::ApiKey { limits, .. }) => limits,
            _ => LimitStatuses::default(),
        },
    })
}

/// The answer for a proxied path when keygate has no upstream.
fn no_upstream() -> ApiError {
    ApiError::new(ErrorCode::NotFound).message("No such endpoint.")
}

/// Sends a prepared request and answers the upstream's response, streaming.
async fn send(
    upstream: &Upstream,
    outgoing: Box<Request>,
    upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
) -> Result<Response, ApiError> {
    // See `upstream.rs`: requests without a body take the pool driven in this task.
    // Requests with one are boxed apart, so as not to make every request's future larger.
    let answered = if upgrade.is_some() || !hyper::body::Body::is_end_stream(outgoing.body()) {
        Box::pin(send_with_body(upstream, *outgoing)).await
    } else {
        // The other connections with a request ready take their turn first, so their
        // requests reach the upstream together: an upstream on the same core then wakes
        // once for several of them, instead of preempting keygate at each write and
        // answering them one or two at a time (BENCHMARKS.md).
        tokio::task::yield_now().await;
        tokio::time::timeout(upstream.config.timeout, upstream.pool.send(outgoing))
            .await
            .ok()
    };
    let mut response = match answered {
        None => {
            tracing::warn!("upstream did not answer in time");
            return Err(ApiError::new(ErrorCode::UpstreamTimeout));
        }
        Some(Err(failure)) => {
            tracing::warn!(
                error = %failure,
                connect = matches!(failure, Failure::Connect(_)),
                "upstream request failed"
            );
            return Err(ApiError::new(ErrorCode::UpstreamUnavailable));
        }
        Some(Ok(response)) => response,
    };

    if response.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS {
        let Some((_, client_upgrade)) = upgrade else {
            // An upstream may not switch protocols unasked.
            return Err(ApiError::new(ErrorCode::UpstreamUnavailable));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    let mut client = TokioIo::new(client);
                    let mut upstream = TokioIo::new(upstream);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                Err(err) => tracing::debug!(error = %err, "upgrade failed"),
            }
        });
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }

    strip_hop_by_hop(response.headers_mut());
    Ok(response)
}

/// Sends a request with a body; `None` when the upstream timed out.
///
/// The timeout counts from the last part of the body the upstream took, not from the
/// start: an upload takes as long as the link needs (a gigabyte is minutes on most links),
/// and an app usually answers once it has read it all. So the upstream has the whole
/// timeout to take each next part, and the whole timeout after the last one to answer,
/// as nginx's `proxy_send_timeout` and `proxy_read_timeout` do.
async fn send_with_body(
    upstream: &Upstream,
    outgoing: Request,
) -> Option<Result<Response, Failure>> {
    let timeout = upstream.config.timeout;
    let progress = Arc::new(BodyProgress::new());
    let outgoing = outgoing.map(|body| {
        Body::new(Progressed {
            body,
            progress: Arc::clone(&progress),
        })
    });
    let mut sent = std::pin::pin!(upstream.pool.send_streaming(outgoing));
    let mut deadline = later(tokio::time::Instant::now(), timeout);
    loop {
        match tokio::time::timeout_at(deadline, sent.as_mut()).await {
            Ok(answer) => return Some(answer),
            Err(_) => {
                let moved = later(progress.last(), timeout);
                if moved <= tokio::time::Instant::now() {
                    return None;
                }
                deadline = moved;
            }
        }
    }
}

/// `timeout` after `at`, or a time as good as never for a timeout too long to add (the
/// configuration takes any duration; tokio's own `timeout` saturates the same way).
fn later(at: tokio::time::Instant, timeout: std::time::Duration) -> tokio::time::Instant {
    const NEVER: std::time::Duration = std::time::Duration::from_secs(86_400 * 365 * 30);
    at.checked_add(timeout.min(NEVER)).unwrap_or(at)
}

/// When the upstream last took a part of a request body (or the body's end).
struct BodyProgress {
    started: tokio::time::Instant,
    /// Milliseconds after `started`.
    last_ms: std::sync::atomic::AtomicU64,
}

impl BodyProgress {
    fn new() -> Self {
        Self {
            started: tokio::time::Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn moved(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms
            .fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.started
            + std::time::Duration::from_millis(
                self.last_ms.load(std::sync::atomic::Ordering::Relaxed),
            )
    }
}

/// A request body that marks its [`BodyProgress`] as the upstream reads it.
struct Progressed {
    body: Body,
    progress: Arc<BodyProgress>,
}

impl hyper::body::Body for Progressed {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None | Some(Ok(_)))) {
            self.progress.moved();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const X_FORWARDED_SERVER: HeaderName = HeaderName::from_static("x-forwarded-server");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Forwarding headers only a trusted proxy may send (a `static`: see [`HOP_BY_HOP`]).
pub(crate) static UNTRUSTED_FORWARDING: [HeaderName; 5] = [
    FORWARDED,
    X_REAL_IP,
    X_FORWARDED_PORT,
    X_FORWARDED_PREFIX,
    X_FORWARDED_SERVER,
];

/// `X-Forwarded-For/-Host/-Proto`: what the upstream needs to know about the original
/// request. A chain sent by an untrusted client is replaced, not extended.
fn forwarded_headers(
    state: &AppState,
    upstream: &Upstream,
    headers: &mut HeaderMap,
    peer: Option<&PeerAddress>,
    original_host: Option<&HeaderValue>,
) {
    let peer_trusted = peer.is_some_and(|p| state.config.is_trusted_proxy(&p.ip));
    let forwarded_for = if peer_trusted {
        let mut chain = String::new();
        for earlier in headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            chain.push_str(earlier);
            chain.push_str(", ");
        }
        match peer {
            Some(peer) if !chain.is_empty() => {
                chain.push_str(peer.text.to_str().unwrap_or_default());
                HeaderValue::try_from(chain).ok()
            }
            _ => peer.map(|p| p.text.clone()),
        }
    } else {
        // What an untrusted client says about addresses and hops is not passed on.
        let untrusted = &UNTRUSTED_FORWARDING;
        let client_ip_header = upstream.client_ip_header.as_ref();
        // Most requests carry none of them: one pass over the names instead of six removals.
        if headers
            .keys()
            .any(|name| untrusted.contains(name) || Some(name) == client_ip_header)
        {
            for name in untrusted.iter().chain(client_ip_header) {
                headers.remove(name);
            }
        }
        peer.map(|p| p.text.clone())
    };
    // `insert` replaces every earlier value: a removal is only needed without one.
    match forwarded_for {
        Some(value) => {
            headers.insert(X_FORWARDED_FOR, value);
        }
        None => {
            headers.remove(X_FORWARDED_FOR);
        }
    }
    if !peer_trusted || !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !peer_trusted || !headers.contains_key(X_FORWARDED_HOST) {
        match original_host {
            Some(original) => {
                headers.insert(X_FORWARDED_HOST, original.clone());
            }
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_query_parameters_are_dropped_and_the_rest_kept_verbatim() {
        assert_eq!(
            query_without_credential("a=1&apikey=secret&b=%20x&APIKEY=2&api%6Bey=3"),
            "a=1&b=%20x"
        );
        assert_eq!(query_without_credential("apikey=only"), "");
    }

    #[test]
    fn hop_by_hop_headers_go_including_the_named_ones() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-trace"),
        );
        headers.insert("x-trace", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn the_upstreams_host_header_has_no_default_port_and_no_user_information() {
        for (url, host) in [
            ("http://app", "app"),
            ("http://app:80", "app"),
            ("http://app:8080/prefix", "app:8080"),
            ("http://user:secret@app:8080", "app:8080"),
            ("http://127.0.0.1:9000", "127.0.0.1:9000"),
            ("http://[::1]:9000", "[::1]:9000"),
        ] {
            let config = UpstreamConfig::new(url).expect("url");
            let upstream = Upstream::new(config, &ServerConfig::default()).expect("upstream");
            assert_eq!(upstream.host, host, "{url}");
        }
    }

    #[test]
    fn queries_that_might_hold_a_credential_are_rewritten() {
        for (query, may) in [
            ("a=1&b=2", false),
            ("apikey=x", true),
            ("a=1&APIKEY=x", true),
            ("api%6Bey=x", true),
            ("q=apikeys", true),
        ] {
            assert_eq!(may_carry_credential(query), may, "{query}");
        }
    }

    #[test]
    fn only_keygate_schemes_count_as_credentials() {
        for (value, credential) in [
            ("Bearer abc", true),
            ("apikey abc", true),
            ("Token abc", true),
            ("Basic dXNlcjpwYXNz", false),
        ] {
            assert_eq!(
                is_credential_authorization(&HeaderValue::from_static(value)),
                credential,
                "{value}"
            );
        }
    }
}
