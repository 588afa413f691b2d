//! Per-request context: the request id (taken from `X-Request-Id` when sane, else made
//! here), access logging with secrets kept out, and panics turned into the error model.

use crate::AppState;
use crate::http::error::ErrorPolicy;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::Response;
use keygate_core::limit::LimitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

tokio::task_local! {
    static REQUEST_ID: Arc<str>;
    /// The limit states of the request's credential, set by the auth extractors and turned
    /// into `RateLimit-Policy` / `RateLimit` response fields here.
    static REQUEST_LIMITS: Arc<Mutex<Vec<LimitStatus>>>;
    /// The deployment's error style, read by `ApiError` when it renders.
    static ERROR_POLICY: Option<Arc<ErrorPolicy>>;
}

/// The error policy of the request being handled (`None`: keygate's own).
pub fn current_error_policy() -> Option<Arc<ErrorPolicy>> {
    ERROR_POLICY.try_with(Clone::clone).ok().flatten()
}

/// Records the credential's limit states for the response fields.
pub fn set_request_limits(limits: &[LimitStatus]) {
    if limits.is_empty() {
        return;
    }
    let _ = REQUEST_LIMITS.try_with(|cell| {
        *cell.lock().unwrap_or_else(PoisonError::into_inner) = limits.to_vec();
    });
}

/// `RateLimit-Policy` and `RateLimit` (IETF draft-ietf-httpapi-ratelimit-headers-11).
///
/// Written byte by byte into one buffer each: a key on a plan gets these on every answer,
/// and `format!` per limit plus joining cost more than the whole key check did
/// (BENCHMARKS.md).
pub fn rate_limit_fields(limits: &[LimitStatus]) -> Option<(HeaderValue, HeaderValue)> {
    if limits.is_empty() {
        return None;
    }
    // `"minute";q=1000000;w=60` is about 25 bytes; room for the usual two limits.
    let mut policy = Vec::with_capacity(64 * limits.len());
    let mut state = Vec::with_capacity(64 * limits.len());
    for (i, limit) in limits.iter().enumerate() {
        if i > 0 {
            policy.extend_from_slice(b", ");
            state.extend_from_slice(b", ");
        }
        for (out, (a, b), (x, y)) in [
            (
                &mut policy,
                (b"q=", limit.limit),
                (b"w=", limit.window_seconds),
            ),
            (
                &mut state,
                (b"r=", limit.remaining),
                (b"t=", limit.reset_seconds),
            ),
        ] {
            push_policy_name(out, limit.name);
            out.push(b';');
            out.extend_from_slice(a);
            push_decimal(out, b);
            out.push(b';');
            out.extend_from_slice(x);
            push_decimal(out, y);
        }
    }
    // Digits, letters and punctuation only: always a valid header value.
    let policy = HeaderValue::from_maybe_shared(axum::body::Bytes::from(policy)).ok()?;
    let state = HeaderValue::from_maybe_shared(axum::body::Bytes::from(state)).ok()?;
    Some((policy, state))
}

/// A limit's name as a quoted string (`"minute"`, `"90s"`).
fn push_policy_name(out: &mut Vec<u8>, name: keygate_core::limit::PolicyName) {
    use keygate_core::limit::PolicyName;
    out.push(b'"');
    match name {
        PolicyName::Second => out.extend_from_slice(b"second"),
        PolicyName::Minute => out.extend_from_slice(b"minute"),
        PolicyName::Hour => out.extend_from_slice(b"hour"),
        PolicyName::Day => out.extend_from_slice(b"day"),
        PolicyName::Month => out.extend_from_slice(b"month"),
        PolicyName::Seconds(seconds) => {
            push_decimal(out, seconds);
            out.push(b's');
        }
    }
    out.push(b'"');
}

/// `value` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

pub const REQUEST_ID_HEADER: &str = "x-request-id";
// Made once: inserting by `&str` would parse the name on every response.
pub const REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The id of the request being handled, or `-` outside a request.
pub fn current_request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.to_string())
        .unwrap_or_else(|_| "-".into())
}

fn new_request_id() -> HeaderValue {
    static NODE: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let node = NODE.get_or_init(|| {
        let mut bytes = [0u8; 4];
        // A failed read only makes ids less unique across restarts; still unique per run.
        let _ = getrandom::fill(&mut bytes);
        u32::from_be_bytes(bytes)
    });
    // `req_` + 8 hex digits of the node + at least 10 of the counter, written without
    // the formatting machinery (this runs once per request).
    let mut id = [0u8; 4 + 8 + 16];
    id[..4].copy_from_slice(b"req_");
    let mut end = 4;
    end += hex_into(&mut id[end..], u64::from(*node), 8);
    end += hex_into(&mut id[end..], COUNTER.fetch_add(1, Ordering::Relaxed), 10);
    HeaderValue::from_bytes(&id[..end]).unwrap_or_else(|_| HeaderValue::from_static("req_"))
}

/// Writes `value` in lower-case hex, zero-padded to at least `min_digits`; answers the
/// number of bytes written.
fn hex_into(out: &mut [u8], value: u64, min_digits: usize) -> usize {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let significant = (64 - value.leading_zeros() as usize).div_ceil(4);
    let digits = significant.max(min_digits).min(out.len());
    for (i, slot) in out[..digits].iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        *slot = if shift < 64 {
            DIGITS[((value >> shift) & 0xf) as usize]
        } else {
            b'0'
        };
    }
    digits
}

fn sane_incoming(value: &HeaderValue) -> Option<HeaderValue> {
    let text = value.to_str().ok()?;
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| value.clone())
}

/// The URI as it may appear in a log line: the `apikey` parameter's value and anything
/// shaped like a keygate key are replaced.
pub fn loggable_uri(uri: &Uri) -> String {
    let path = keygate_core::key_format::redact_keys(uri.path()).into_owned();
    let Some(query) = uri.query() else {
        return path;
    };
    let redacted: Vec<String> = form_urlencoded::parse(query.as_bytes())
        .map(|(name, value)| {
            if name.eq_ignore_ascii_case("apikey") {
                format!("{name}=[REDACTED]")
            } else {
                format!("{name}={}", keygate_core::key_format::redact_keys(&value))
            }
        })
        .collect();
    format!("{path}?{}", redacted.join("&"))
}

/// The request id as the task-local error rendering reads it (made only when an error
/// may be rendered: the hot paths answer allowed requests without it).
fn id_text(id: &HeaderValue) -> Arc<str> {
    Arc::from(id.to_str().unwrap_or("-"))
}

/// The id of an incoming request: its own `X-Request-Id` when sane, else a new one.
/// Kept as the header value it is sent back as, so an allowed request costs at most one
/// allocation for it.
pub fn request_id_of(headers: &axum::http::HeaderMap) -> HeaderValue {
    headers
        .get(&REQUEST_ID_NAME)
        .and_then(sane_incoming)
        .unwrap_or_else(new_request_id)
}

/// Runs a synchronous handler with the request's task-locals set (for answers made beside
/// the router, see `front.rs`); answers its result and the limit states it recorded.
pub fn within_request<T>(
    id: &HeaderValue,
    policy: Option<Arc<ErrorPolicy>>,
    handler: impl FnOnce() -> T,
) -> (T, Vec<LimitStatus>) {
    let limits = Arc::new(Mutex::new(Vec::new()));
    let answer = REQUEST_ID.sync_scope(id_text(id), || {
        REQUEST_LIMITS.sync_scope(Arc::clone(&limits), || {
            ERROR_POLICY.sync_scope(policy, handler)
        })
    });
    let limits = std::mem::take(&mut *limits.lock().unwrap_or_else(PoisonError::into_inner));
    (answer, limits)
}

/// [`within_request`] for an asynchronous handler.
pub async fn within_request_async(
    id: &HeaderValue,
    policy: Option<Arc<ErrorPolicy>>,
    handler: impl Future<Output = Response>,
) -> (Response, Vec<LimitStatus>) {
    let limits = Arc::new(Mutex::new(Vec::new()));
    let answer = REQUEST_ID
        .scope(
            id_text(id),
            REQUEST_LIMITS.scope(Arc::clone(&limits), ERROR_POLICY.scope(policy, handler)),
        )
        .await;
    let limits = std::mem::take(&mut *limits.lock().unwrap_or_else(PoisonError::into_inner));
    (answer, limits)
}

/// What every response gets on its way out: the request id, the `RateLimit` fields of
/// the credential's limits, and the access log line.
pub fn finish(
    response: &mut Response,
    id: &HeaderValue,
    limits: &[LimitStatus],
    method: &axum::http::Method,
    uri: &Uri,
    started: Instant,
) {
    response.headers_mut().insert(REQUEST_ID_NAME, id.clone());
    let id = id.to_str().unwrap_or("-");
    if let Some((policy, state)) = rate_limit_fields(limits) {
        response.headers_mut().insert(RATELIMIT_POLICY, policy);
        response.headers_mut().insert(RATELIMIT, state);
    }
    let status = response.status().as_u16();
    // The clock is read inside the macros: only when the line is logged.
    if status >= 500 {
        tracing::warn!(request_id = %id, %method, uri = %loggable_uri(uri), status, micros = started.elapsed().as_micros() as u64, "request failed");
    } else {
        tracing::debug!(request_id = %id, %method, uri = %loggable_uri(uri), status, micros = started.elapsed().as_micros() as u64, "request");
    }
}

pub async fn request_context(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let id = request_id_of(request.headers());
    let method = request.method().clone();
    let uri = request.uri().clone();
    let started = Instant::now();
    let (mut response, limits) =
        within_request_async(&id, state.error_policy.clone(), next.run(request)).await;
    finish(&mut response, &id, &limits, &method, &uri, started);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_fields_as_the_draft_writes_them() {
        use keygate_core::limit::PolicyName;
        assert!(rate_limit_fields(&[]).is_none());
        let limits = [
            LimitStatus {
                name: PolicyName::Minute,
                limit: 10,
                window_seconds: 60,
                remaining: 0,
                reset_seconds: 6,
            },
            LimitStatus {
                name: PolicyName::Seconds(90),
                limit: 18_446_744_073_709_551_615,
                window_seconds: 90,
                remaining: 1_000,
                reset_seconds: 89,
            },
            LimitStatus {
                name: PolicyName::Month,
                limit: 1000,
                window_seconds: 2_592_000,
                remaining: 999,
                reset_seconds: 1_234_567,
            },
        ];
        let (policy, state) = rate_limit_fields(&limits).expect("fields");
        assert_eq!(
            policy,
            r#""minute";q=10;w=60, "90s";q=18446744073709551615;w=90, "month";q=1000;w=2592000"#
        );
        assert_eq!(
            state,
            r#""minute";r=0;t=6, "90s";r=1000;t=89, "month";r=999;t=1234567"#
        );
    }

    #[test]
    fn log_lines_hide_credentials() {
        let key = keygate_core::key_format::format_key("kg", &[3; 32]).expect("key");
        let uri: Uri = format!("/api/v1/x/{key}?apikey=secret-value&q={key}&page=2")
            .parse()
            .expect("uri");
        let logged = loggable_uri(&uri);
        assert!(
            !logged.contains(&key) && !logged.contains("secret-value"),
            "{logged}"
        );
        assert!(logged.contains("page=2"));
    }

    #[test]
    fn new_ids_are_distinct_and_shaped_like_the_old_ones() {
        let first = new_request_id();
        let second = new_request_id();
        assert_ne!(first, second);
        for id in [&first, &second] {
            let id = id.to_str().expect("ascii");
            assert_eq!(id.len(), 4 + 8 + 10, "{id}");
            assert!(id.starts_with("req_"));
            assert!(
                id[4..]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
        let mut out = [0u8; 16];
        let n = hex_into(&mut out, 0xabc, 5);
        assert_eq!(&out[..n], b"00abc");
        let n = hex_into(&mut out, u64::MAX, 10);
        assert_eq!(&out[..n], b"ffffffffffffffff");
    }

    #[test]
    fn incoming_ids_are_checked() {
        assert!(sane_incoming(&HeaderValue::from_static("abc-123")).is_some());
        assert!(sane_incoming(&HeaderValue::from_static("a b")).is_none());
        assert!(sane_incoming(&HeaderValue::from_static("")).is_none());
    }
}
