//! Webhooks at run time: the notifier that turns hot-path happenings (rate limits, quotas,
//! sign-in bursts) into outbox events, and the worker that delivers the outbox.
//!
//! Events caused by a store write (`key.created`, `user.created`, ...) do not pass through
//! here: they ride on the write's audit entry and are stored in its transaction. Hot-path
//! events are coalesced here and handed to a writer task, so the request never waits on
//! the store; one that is queued but not yet written is lost in a crash (like usage
//! counts, bounded by the queue).

use crate::clock::now_ms;
use crate::engine::Engine;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate_core::UnixMillis;
use keygate_core::webhook::{self as signing, address_allowed, retry_delay_ms};
use keygate_store::Store;
use keygate_store::webhooks::{AttemptOutcome, DeliveryStatus, DueDelivery, OutboxEvent};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, watch};

/// Webhook settings fixed at start-up.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WebhookConfig {
    /// Run the delivery worker on this node (off: events are stored, not sent).
    pub deliver: bool,
    /// Longest wait for a receiver's answer.
    pub timeout: Duration,
    /// The Standard Webhooks schedule: entry n is the wait after the n-th failed attempt
    /// (entry 0 stands for the first attempt, which is always made at once).
    pub retry_schedule: Vec<u64>,
    /// Allow loopback and private receivers (never link-local).
    pub allow_private: bool,
    /// Failed attempts in a row after which an endpoint is shown as failing.
    pub failing_after: u32,
    /// How long a rotated secret keeps signing beside the new one.
    pub secret_overlap: Duration,
    /// How long before a key's expiry `key.expiring` is sent.
    pub expiring_lead: Duration,
    /// Quota use (percent) that sends `quota.threshold`.
    pub quota_threshold_percent: u64,
    /// How often the worker looks for due deliveries when nothing wakes it.
    pub poll_interval: Duration,
    /// PEM certificates trusted for https receivers besides the system's (an internal CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// How often keys are looked at for `key.expiring` / `key.expired`.
    pub expiry_scan_interval: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            deliver: true,
            timeout: Duration::from_secs(15),
            retry_schedule: signing::DEFAULT_RETRY_SCHEDULE.to_vec(),
            allow_private: false,
            failing_after: 5,
            secret_overlap: Duration::from_secs(24 * 3600),
            expiring_lead: Duration::from_secs(7 * 86_400),
            quota_threshold_percent: 80,
            poll_interval: Duration::from_secs(1),
            ca_file: None,
            expiry_scan_interval: Duration::from_secs(30),
        }
    }
}

/// Hot-path events, coalesced, on their way to the store.
pub struct Notifier {
    queue: mpsc::Sender<OutboxEvent>,
    /// (subject, kind) → when it was last sent.
    sent: Mutex<HashMap<(uuid::Uuid, &'static str), UnixMillis>>,
    threshold_percent: u64,
}

/// How long one `ratelimit.exceeded` covers for a key.
const RATE_LIMIT_COALESCE_MS: i64 = 60_000;
/// How long one `auth.login_failed_burst` covers for a username.
const LOGIN_BURST_COALESCE_MS: i64 = 15 * 60_000;

impl Notifier {
    pub fn new(threshold_percent: u64) -> (Self, mpsc::Receiver<OutboxEvent>) {
        let (queue, receiver) = mpsc::channel(4096);
        (
            Self {
                queue,
                sent: Mutex::new(HashMap::new()),
                threshold_percent,
            },
            receiver,
        )
    }

    fn send(&self, event: OutboxEvent) {
        if self.queue.try_send(event).is_err() {
            metrics::counter!("keygate_webhook_events_dropped_total").increment(1);
        }
    }

    /// True (and remembered) when `kind` about `subject` was not sent within `window_ms`,
    /// or — with `same_month` — not yet this calendar month.
    fn first_in_window(
        &self,
        subject: uuid::Uuid,
        kind: &'static str,
        now: UnixMillis,
        window_ms: Option<i64>,
    ) -> bool {
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        // Bounded, and cheap under attack: forgetting costs at most a repeated event, where
        // a scan per call would cost every refused request a walk over the whole map.
        if sent.len() > 100_000 {
            sent.clear();
        }
        let fresh = match (sent.get(&(subject, kind)), window_ms) {
            (None, _) => true,
            (Some(at), Some(window)) => now - at >= window,
            (Some(at), None) => {
                keygate_core::limit::month_of(*at).0 != keygate_core::limit::month_of(now).0
            }
        };
        if fresh {
            sent.insert((subject, kind), now);
        }
        fresh
    }

    /// Called for every decided request with a known key (cheap unless something is due).
    pub fn observe(&self, decision: &keygate_core::Decision, now: UnixMillis) {
        use keygate_core::DecisionCode;
        let Some(key) = &decision.key else { return };
        let id = key.record.id;
        let (kind, window) = match decision.code {
            DecisionCode::RateLimited => ("ratelimit", Some(RATE_LIMIT_COALESCE_MS)),
            DecisionCode::QuotaExceeded => ("quota.exceeded", None),
            // Sent by the one request whose use crosses the threshold, so the common case
            // takes no lock.
            DecisionCode::Valid if self.crossed_threshold(decision) => ("quota.threshold", None),
            _ => return,
        };
        if !self.first_in_window(id, kind, now, window) {
            return;
        }
        let event = if kind == "ratelimit" {
            let mut event = OutboxEvent::for_key("ratelimit.exceeded", &key.record, now);
            event.payload["data"]["retry_after_ms"] = decision.retry_after_ms.into();
            event
        } else {
            quota_event(kind, key, decision, now)
        };
        self.send(event);
    }

    /// True when this request's use is the first at or above the threshold of its quota.
    fn crossed_threshold(&self, decision: &keygate_core::Decision) -> bool {
        decision.limits.as_slice().iter().any(|l| {
            let used = l.limit.saturating_sub(l.remaining);
            let bar = l.limit.saturating_mul(self.threshold_percent);
            l.name == keygate_core::limit::PolicyName::Month
                && l.limit > 0
                && used.saturating_mul(100) >= bar
                && used.saturating_sub(1).saturating_mul(100) < bar
        })
    }

    /// A username (or address) was locked out after failed sign-ins.
    pub fn login_failed_burst(&self, username: &str, address: &str, now: UnixMillis) {
        let digest =
            keygate_core::key_format::hash_key(&format!("{}|{address}", username.to_lowercase()));
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        let subject = uuid::Uuid::from_bytes(bytes);
        if self.first_in_window(subject, "login", now, Some(LOGIN_BURST_COALESCE_MS)) {
            let mut data = serde_json::json!({"address": address});
            if keygate_core::user::validate_username(username).is_ok() {
                data["username"] = username.into();
            }
            self.send(OutboxEvent::new("auth.login_failed_burst", data, now));
        }
    }

    /// A user account was created.
    pub fn user_created_event(user: &keygate_core::UserRecord, at: UnixMillis) -> OutboxEvent {
        let mut event = OutboxEvent::new(
            "user.created",
            serde_json::json!({"id": user.id, "username": user.username, "role": user.role.as_str()}),
            at,
        );
        event.owner = Some(user.id);
        event
    }
}

fn quota_event(
    kind: &str,
    key: &keygate_core::index::IndexedKey,
    decision: &keygate_core::Decision,
    now: UnixMillis,
) -> OutboxEvent {
    let mut event = OutboxEvent::for_key(kind, &key.record, now);
    if let Some(quota) = decision
        .limits
        .as_slice()
        .iter()
        .find(|l| l.name == keygate_core::limit::PolicyName::Month)
    {
        event.payload["data"]["quota"] = serde_json::json!({
            "limit": quota.limit,
            "used": quota.limit.saturating_sub(quota.remaining),
            "resets_in_seconds": quota.reset_seconds,
        });
    }
    event
}

/// Writes queued hot-path events to the store in batches; at stop, writes what is queued
/// and ends.
pub async fn write_events(
    store: Arc<dyn Store>,
    mut queue: mpsc::Receiver<OutboxEvent>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(64);
    loop {
        let stopping = tokio::select! {
            received = queue.recv_many(&mut batch, 256) => received == 0,
            _ = stop.changed() => true,
        };
        if stopping {
            while let Ok(event) = queue.try_recv() {
                batch.push(event);
            }
        }
        if !batch.is_empty() {
            if let Err(err) = store.enqueue_events(&batch).await {
                tracing::warn!(error = %err, events = batch.len(), "webhook events could not be stored; dropped");
            } else {
                wake.notify_one();
            }
            batch.clear();
        }
        if stopping {
            return;
        }
    }
}

/// Delivers the outbox.
pub struct Deliverer {
    pub store: Arc<dyn Store>,
    pub engine: Arc<Engine>,
    pub config: WebhookConfig,
    /// TLS for https receivers (see [`tls_config`]).
    pub tls: Arc<rustls::ClientConfig>,
    /// Rung after a write that enqueued events, so they go out at once.
    pub wake: Arc<Notify>,
}

/// Deliveries attempted at once by one node.
const BATCH: u32 = 16;
/// How long a claimed delivery stays with this node before another may take it.
const LEASE: Duration = Duration::from_secs(60);

impl Deliverer {
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        // One node per SQLite file: nothing can be in flight while it starts.
        if self.config.deliver
            && let Err(err) = self.store.release_deliveries().await
        {
            tracing::warn!(error = %err, "could not release webhook leases");
        }
        let mut last_scan: Option<Instant> = None;
        loop {
            if last_scan.is_none_or(|at| at.elapsed() >= self.config.expiry_scan_interval) {
                self.scan_expiry(now_ms()).await;
                last_scan = Some(Instant::now());
            }
            // Without delivery this node still stores the events it notices.
            if self.config.deliver {
                self.deliver_due().await;
            }
            tokio::select! {
                _ = stop.changed() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
        // Attempts already started have finished inside `deliver_due`; nothing is cut off.
    }

    /// Attempts every due delivery, a batch at a time.
    async fn deliver_due(&self) {
        loop {
            let now = now_ms();
            let lease = now + i64::try_from(LEASE.as_millis()).unwrap_or(60_000);
            let due = match self.store.claim_deliveries(now, lease, BATCH).await {
                Ok(due) => due,
                Err(err) => {
                    tracing::warn!(error = %err, "could not read due webhook deliveries");
                    return;
                }
            };
            if due.is_empty() {
                return;
            }
            let mut attempts = tokio::task::JoinSet::new();
            for delivery in due {
                let config = self.config.clone();
                let tls = Arc::clone(&self.tls);
                attempts.spawn(async move { attempt(&config, &tls, delivery).await });
            }
            while let Some(outcome) = attempts.join_next().await {
                let Ok(outcome) = outcome else { continue };
                metrics::counter!("keygate_webhook_attempts_total", "status" => outcome.status.as_str()).increment(1);
                if let Err(err) = self.store.finish_attempt(&outcome).await {
                    tracing::warn!(error = %err, "could not record a webhook attempt; it will be retried");
                }
            }
        }
    }

    /// `key.expiring` once per key within the lead time, `key.expired` once after expiry.
    async fn scan_expiry(&self, now: UnixMillis) {
        let lead = i64::try_from(self.config.expiring_lead.as_millis()).unwrap_or(i64::MAX);
        let mut due = Vec::new();
        self.engine.index().for_each(|key| {
            let record = &key.record;
            let Some(expires_at) = record.expires_at else {
                return;
            };
            if record.revoked_at.is_some() || record.rotated_to.is_some() {
                return;
            }
            if expires_at <= now {
                // Only recent expiries: a restart must not announce ancient ones.
                if now - expires_at < 7 * 86_400_000 {
                    due.push(("expired", OutboxEvent::for_key("key.expired", record, now)));
                }
            } else if expires_at - now <= lead {
                let mut event = OutboxEvent::for_key("key.expiring", record, now);
                event.payload["data"]["expires_in_seconds"] = ((expires_at - now) / 1000).into();
                due.push(("expiring", event));
            }
        });
        for (kind, event) in due {
            let subject = event.payload["data"]["id"]
                .as_str()
                .and_then(|id| uuid::Uuid::parse_str(id).ok());
            let Some(subject) = subject else { continue };
            if let Err(err) = self.store.enqueue_once(subject, kind, &event).await {
                tracing::warn!(error = %err, "could not store a key expiry event");
            }
        }
    }
}

/// The address an attempt connects to: the URL's host resolved now and checked against
/// the SSRF rules (every address the name has must pass). `Err` says why not.
async fn resolve_allowed(
    uri: &axum::http::Uri,
    allow_private: bool,
) -> Result<std::net::SocketAddr, String> {
    let host = uri.host().ok_or("the URL names no host")?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<std::net::SocketAddr> = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![std::net::SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("{host} did not resolve: {e}"))?
            .collect(),
    };
    // Otherwise a name could point at both a public and an internal address and win the
    // race. The address itself is not named: users read this error, and it must not map
    // internal names to internal addresses for them.
    if addresses
        .iter()
        .any(|a| !address_allowed(a.ip(), allow_private))
    {
        return Err(format!(
            "{host} resolves to a loopback, private or link-local address, which is not allowed for webhooks"
        ));
    }
    addresses
        .first()
        .copied()
        .ok_or_else(|| format!("{host} has no address"))
}

/// A resolver that answers with the one address already checked, so the connection goes
/// exactly there (a name that changes its answer between the check and the connect — DNS
/// rebinding — cannot redirect it).
#[derive(Clone)]
struct Pinned(std::net::SocketAddr);

impl tower::Service<hyper_util::client::legacy::connect::dns::Name> for Pinned {
    type Response = std::iter::Once<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        std::future::ready(Ok(std::iter::once(self.0)))
    }
}

/// TLS for https receivers: the system's trusted roots plus those of `ca_file`, ring as
/// the crypto provider.
pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "a system CA certificate could not be loaded");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| format!("webhook_ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "webhook_ca_file {}: no PEM certificate in it",
                path.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("webhook_ca_file {}: {e}", path.display()))?;
        }
    }
    if roots.is_empty() {
        tracing::warn!("no trusted CA certificates found: https webhooks will fail");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The error and its causes in one line (TLS and connect errors hide the useful part in
/// the source chain). Holds no secret: only what went wrong on the wire.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One attempt at one delivery.
async fn attempt(
    config: &WebhookConfig,
    tls: &rustls::ClientConfig,
    due: DueDelivery,
) -> AttemptOutcome {
    let started = Instant::now();
    let now = now_ms();
    let delivery = &due.delivery;
    let endpoint = &due.endpoint;
    let mut outcome = AttemptOutcome {
        delivery: delivery.id,
        endpoint: endpoint.id,
        at: now,
        status: DeliveryStatus::Failed,
        next_attempt_at: None,
        status_code: None,
        error: None,
        latency_ms: 0,
        disable_endpoint: None,
    };
    let retry = |outcome: &mut AttemptOutcome, retry_after: Option<u64>| {
        let jitter = {
            let mut byte = [0u8; 1];
            let _ = getrandom::fill(&mut byte);
            f64::from(byte[0]) / 255.0
        };
        match retry_delay_ms(
            &config.retry_schedule,
            delivery.attempts + 1,
            jitter,
            retry_after,
        ) {
            Some(delay) => {
                outcome.status = DeliveryStatus::Pending;
                outcome.next_attempt_at =
                    Some(now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX)));
            }
            None => outcome.status = DeliveryStatus::Failed,
        }
    };
    if !endpoint.enabled {
        outcome.error = Some("the endpoint is disabled".into());
        return outcome;
    }
    let uri = match endpoint.url.parse::<axum::http::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) => uri,
        _ => {
            outcome.error = Some("the endpoint URL is not an http or https URL".into());
            return outcome;
        }
    };
    let address = match resolve_allowed(&uri, config.allow_private).await {
        Ok(address) => address,
        Err(why) => {
            // A name that does not resolve may resolve later; a refused address will not.
            let refused = why.contains("not allowed");
            outcome.error = Some(why);
            if !refused {
                retry(&mut outcome, None);
            }
            return outcome;
        }
    };
    let mut http = HttpConnector::new_with_resolver(Pinned(address));
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    // One connection per attempt: nothing pooled to an endpoint outlives its check.
    let client: Client<_, axum::body::Body> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(https);

    let body = serde_json::to_vec(&due.payload).unwrap_or_default();
    let timestamp = now / 1000;
    let secrets = endpoint.signing_secrets(now);
    let signatures: Vec<String> = secrets
        .iter()
        .filter_map(|s| signing::sign(s, &delivery.event_id, timestamp, &body).ok())
        .collect();
    let mut request = axum::http::Request::post(uri)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("keygate-webhooks/", env!("CARGO_PKG_VERSION")),
        )
        .header("webhook-id", &delivery.event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signatures.join(" "));
    if let Some(name) = &endpoint.signature_header
        && let Ok(value) = signing::sign_stripe_style(&secrets, timestamp, &body)
    {
        request = request.header(name.as_str(), value);
    }
    let request = match request.body(axum::body::Body::from(body)) {
        Ok(request) => request,
        Err(err) => {
            outcome.error = Some(format!("the request could not be built: {err}"));
            return outcome;
        }
    };
    let response = tokio::time::timeout(config.timeout, client.request(request)).await;
    outcome.latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match response {
        Ok(Ok(response)) => {
            // The body is not read: receivers' answers are not keygate's business.
            let status = response.status();
            outcome.status_code = Some(status.as_u16());
            if status.is_success() {
                outcome.status = DeliveryStatus::Delivered;
            } else if status.as_u16() == 410 {
                outcome.error = Some("the endpoint answered 410 Gone; it was disabled".into());
                outcome.disable_endpoint = Some("the endpoint answered 410 Gone".into());
            } else {
                let retry_after = matches!(status.as_u16(), 429 | 503)
                    .then(|| {
                        response
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                    })
                    .flatten();
                outcome.error = Some(if status.is_redirection() {
                    format!("the endpoint answered {status}; redirects are not followed")
                } else {
                    format!("the endpoint answered {status}")
                });
                retry(&mut outcome, retry_after);
            }
        }
        Ok(Err(err)) => {
            outcome.error = Some(if err.is_connect() {
                format!("could not connect: {}", error_chain(&err))
            } else {
                format!("the request failed: {}", error_chain(&err))
            });
            retry(&mut outcome, None);
        }
        Err(_) => {
            outcome.error = Some(format!("no answer within {} s", config.timeout.as_secs()));
            retry(&mut outcome, None);
        }
    }
    outcome
}

/// A new `whsec_` secret from the OS CSPRNG.
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut random = [0u8; 24];
    getrandom::fill(&mut random)?;
    Ok(signing::format_secret(&random))
}
