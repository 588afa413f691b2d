//! Webhooks end to end, against a real HTTP receiver on loopback.

use super::*;
use keygate_server::webhooks::WebhookConfig;
use std::collections::VecDeque;
use std::sync::Mutex;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

/// A scripted answer: status and `Retry-After`.
type Answer = (u16, Option<&'static str>);

/// A receiver that records every request and answers with the scripted statuses (then 200).
#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<Answer>>>,
}

impl Receiver {
    async fn start() -> (Self, String) {
        let receiver = Self::default();
        let state = receiver.clone();
        let app = axum::Router::new().fallback(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    state.received.lock().expect("lock").push(Received {
                        headers,
                        body: body.to_vec(),
                    });
                    let (status, retry_after) = state
                        .script
                        .lock()
                        .expect("lock")
                        .pop_front()
                        .unwrap_or((200, None));
                    let mut response = axum::http::Response::builder().status(status);
                    if let Some(seconds) = retry_after {
                        response = response.header("retry-after", seconds);
                    }
                    response.body(axum::body::Body::empty()).expect("response")
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hooks", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn answer(&self, status: u16, retry_after: Option<&'static str>) {
        self.script
            .lock()
            .expect("lock")
            .push_back((status, retry_after));
    }

    fn all(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// Waits (on a condition, with a deadline) until `n` requests of `event_type` arrived.
    async fn wait_for(&self, event_type: &str, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let matching: Vec<Received> = self
                .all()
                .into_iter()
                .filter(|r| r.json()["type"] == event_type)
                .collect();
            if matching.len() >= n {
                return matching;
            }
            assert!(
                Instant::now() < deadline,
                "{n} {event_type} event(s) did not arrive; got {:?}",
                self.all().iter().map(Received::json).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The delivery of `event_id` to `endpoint` as it is after its first attempt.
async fn first_attempt(server: &TestServer, endpoint: &str, event_id: &Value) -> Value {
    let matches = |d: &&Value| d["event_id"] == *event_id && d["attempts"] == 1;
    let list = server
        .poll_get(&format!("/api/v1/webhooks/{endpoint}/deliveries"), |l| {
            l["deliveries"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| matches(&x)))
        })
        .await;
    list["deliveries"]
        .as_array()
        .and_then(|d| d.iter().find(matches).cloned())
        .expect("delivery")
}

fn webhook_config(allow_private: bool) -> ServerConfig {
    ServerConfig {
        webhooks: WebhookConfig {
            allow_private,
            retry_schedule: vec![0, 1, 1, 1],
            poll_interval: Duration::from_millis(50),
            expiry_scan_interval: Duration::from_millis(100),
            failing_after: 2,
            ..WebhookConfig::default()
        },
        ..test_config()
    }
}

fn verify(secret: &str, received: &Received) -> Result<(), keygate_core::webhook::VerifyError> {
    keygate_core::webhook::verify(
        secret,
        received.header("webhook-id"),
        received.header("webhook-timestamp"),
        &received.body,
        received.header("webhook-signature"),
        clock::now_ms() / 1000,
        keygate_core::webhook::DEFAULT_TOLERANCE_SECS,
    )
}

impl TestServer {
    /// GETs `path` as the administrator until `done` holds for the body (a condition,
    /// polled every 10 ms, with a deadline), and returns that body.
    async fn poll_get(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = self.admin_get(path).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            if done(&body) {
                return body;
            }
            assert!(Instant::now() < deadline, "{path}: {body}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn webhook(&self, body: Value) -> (String, String) {
        let (status, created) = self
            .admin_json(Method::POST, "/api/v1/webhooks", body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        (
            created["id"].as_str().expect("id").to_string(),
            created["secret"].as_str().expect("secret").to_string(),
        )
    }
}

#[tokio::test]
async fn key_events_arrive_signed_and_verifiable() {
    let (receiver, url) = Receiver::start().await;
    let server = TestServer::start_with(webhook_config(true)).await;
    let (endpoint, secret) = server
        .webhook(
            json!({"url": url, "events": ["key.created", "key.revoked", "key.rotated"],
                        "signature_header": "X-CTF-Signature"}),
        )
        .await;
    assert!(secret.starts_with("whsec_"));
    assert!(
        keygate_core::webhook::secret_bytes(&secret)
            .expect("base64")
            .len()
            >= 24
    );

    let (key, created) = server.create_key(json!({"name": "hooked"})).await;
    let key_id = created["id"].as_str().expect("id");
    let event = receiver.wait_for("key.created", 1).await.remove(0);
    verify(&secret, &event).expect("the signature verifies");
    assert!(event.header("webhook-id").starts_with("msg_"));
    assert_eq!(event.header("content-type"), "application/json");
    let body = event.json();
    assert_eq!(body["data"]["id"], key_id);
    assert_eq!(body["data"]["name"], "hooked");
    assert_eq!(body["data"]["start"], created["start"]);
    assert!(body["timestamp"].is_string());
    assert!(
        !String::from_utf8_lossy(&event.body).contains(&key),
        "no secret in events"
    );
    // The Stripe-style header: t=<ts>,v1=<hex HMAC of "ts.body">.
    let stripe = event.header("x-ctf-signature");
    assert_eq!(
        stripe,
        keygate_core::webhook::sign_stripe_style(
            &[&secret],
            event.header("webhook-timestamp").parse().expect("ts"),
            &event.body
        )
        .expect("sign")
    );
    // A tampered body does not verify.
    let mut tampered = event.clone();
    tampered.body.push(b' ');
    assert!(verify(&secret, &tampered).is_err());

    // The Python and Node receivers in examples/ accept the real delivery.
    let dir = tempfile::tempdir().expect("temp dir");
    let body_file = dir.path().join("body.json");
    std::fs::write(&body_file, &event.body).expect("write");
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/receivers");
    for (runtime, script) in [("python3", "verify.py"), ("node", "verify.js")] {
        let Ok(output) = std::process::Command::new(runtime)
            .arg(format!("{examples}/{script}"))
            .args([
                &secret,
                event.header("webhook-id"),
                event.header("webhook-timestamp"),
                event.header("webhook-signature"),
            ])
            .arg(&body_file)
            .output()
        else {
            assert!(
                std::env::var("KEYGATE_REQUIRE_ALL").is_err(),
                "{runtime} is required"
            );
            println!("SKIPPED: {runtime} is not installed");
            continue;
        };
        assert!(
            output.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }

    // Rotation and revocation are announced too; other event types are not sent.
    let (status, rotated) = server
        .admin_json(
            Method::POST,
            &format!("/api/v1/keys/{key_id}/rotate"),
            json!({"grace_seconds": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let event = receiver.wait_for("key.rotated", 1).await.remove(0);
    assert_eq!(event.json()["data"]["replacement"]["id"], rotated["id"]);
    let new_id = rotated["id"].as_str().expect("id");
    let (status, _) = server
        .admin_json(Method::DELETE, &format!("/api/v1/keys/{new_id}"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    receiver.wait_for("key.revoked", 1).await;

    // The deliveries API shows them delivered (once the worker has recorded the answers).
    let list = server
        .poll_get(&format!("/api/v1/webhooks/{endpoint}/deliveries"), |l| {
            let deliveries = l["deliveries"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            deliveries.len() >= 3 && deliveries.iter().all(|d| d["status"] == "delivered")
        })
        .await;
    assert_eq!(list["deliveries"][0]["last_status_code"], 200);
}

#[tokio::test]
async fn failed_deliveries_are_retried_and_410_disables() {
    let (receiver, url) = Receiver::start().await;
    let server = TestServer::start_with(webhook_config(true)).await;
    let (endpoint, secret) = server.webhook(json!({"url": url})).await;

    // 500, then 200: delivered on the retry, with the same webhook-id.
    receiver.answer(500, None);
    server.create_key(json!({"name": "retried"})).await;
    let attempts = receiver.wait_for("key.created", 2).await;
    assert_eq!(
        attempts[0].header("webhook-id"),
        attempts[1].header("webhook-id")
    );
    verify(&secret, &attempts[1]).expect("verifies");
    let list = server
        .poll_get(&format!("/api/v1/webhooks/{endpoint}/deliveries"), |l| {
            l["deliveries"][0]["status"] == "delivered"
        })
        .await;
    assert_eq!(list["deliveries"][0]["attempts"], 2);
    assert_eq!(list["deliveries"][0]["last_status_code"], 200);

    // 429 with Retry-After: the next attempt waits at least that long.
    receiver.answer(429, Some("120"));
    let (status, sent) = server
        .admin_json(
            Method::POST,
            &format!("/api/v1/webhooks/{endpoint}/test"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    receiver.wait_for("webhook.test", 1).await;
    let delivery = first_attempt(&server, &endpoint, &sent["event_id"]).await;
    assert_eq!(delivery["status"], "pending");
    assert_eq!(delivery["last_status_code"], 429);
    let next = time::OffsetDateTime::parse(
        delivery["next_attempt_at"].as_str().expect("next"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("time");
    assert!(next - time::OffsetDateTime::now_utc() > time::Duration::seconds(100));
    // Retried by hand: due at once.
    let (status, _) = server
        .admin_json(
            Method::POST,
            &format!(
                "/api/v1/webhooks/{endpoint}/deliveries/{}/retry",
                delivery["id"].as_str().expect("id")
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    receiver.wait_for("webhook.test", 2).await;

    // 410 Gone: the endpoint is switched off and nothing more is sent.
    receiver.answer(410, None);
    server.create_key(json!({"name": "gone"})).await;
    let view = server
        .poll_get(&format!("/api/v1/webhooks/{endpoint}"), |e| {
            e["enabled"] == false
        })
        .await;
    assert_eq!(view["status"], "disabled");
    assert!(
        view["disabled_reason"]
            .as_str()
            .expect("reason")
            .contains("410")
    );
    let before = receiver.all().len();
    server.create_key(json!({"name": "unheard"})).await;
    let (status, _) = server
        .admin_json(
            Method::POST,
            &format!("/api/v1/webhooks/{endpoint}/test"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Give the worker a poll cycle's chance (a bound, not a race: nothing may arrive).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.all().len(), before);
}

#[tokio::test]
async fn secret_rotation_signs_with_both_during_the_overlap() {
    let (receiver, url) = Receiver::start().await;
    let server = TestServer::start_with(webhook_config(true)).await;
    let (endpoint, old) = server.webhook(json!({"url": url})).await;
    let (status, rotated) = server
        .admin_json(
            Method::POST,
            &format!("/api/v1/webhooks/{endpoint}/secret"),
            json!({"overlap_seconds": 3600}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["secret"].as_str().expect("secret").to_string();
    assert_ne!(new, old);
    assert!(rotated["previous_secret_expires_at"].is_string());
    // The current secret can be shown again, with the overlap.
    let (status, shown) = server
        .admin_get(&format!("/api/v1/webhooks/{endpoint}/secret"))
        .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["secret"], new.as_str());
    assert_eq!(
        shown["previous_secret_expires_at"],
        rotated["previous_secret_expires_at"]
    );

    server.create_key(json!({"name": "overlap"})).await;
    let event = receiver.wait_for("key.created", 1).await.remove(0);
    assert_eq!(
        event.header("webhook-signature").split(' ').count(),
        2,
        "{}",
        event.header("webhook-signature")
    );
    verify(&new, &event).expect("the new secret verifies");
    verify(&old, &event).expect("the old secret still verifies");

    // Without an overlap the old secret stops at once.
    let (_, rotated) = server
        .admin_json(
            Method::POST,
            &format!("/api/v1/webhooks/{endpoint}/secret"),
            json!({"overlap_seconds": 0}),
        )
        .await;
    let newest = rotated["secret"].as_str().expect("secret").to_string();
    server.create_key(json!({"name": "no overlap"})).await;
    let event = receiver.wait_for("key.created", 2).await.remove(1);
    verify(&newest, &event).expect("verifies");
    assert!(verify(&new, &event).is_err());

    // The account-level secret (POST /api/v1/webhooks/secret) needs a user account and
    // then signs that user's endpoints.
    let (status, body) = server
        .admin_json(Method::POST, "/api/v1/webhooks/secret", json!({}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, tokens) = server
        .admin_json(
            Method::POST,
            "/api/v1/auth/token",
            json!({"username": "admin", "password": ADMIN_PASSWORD}),
        )
        .await;
    let access = tokens["access"].as_str().expect("access").to_string();
    let response = server
        .request(Method::POST, "/api/v1/webhooks")
        .bearer_auth(&access)
        .json(&json!({"url": url, "events": ["user.created"]}))
        .send()
        .await
        .expect("send");
    let (status, mine) = read(response).await;
    assert_eq!(status, StatusCode::CREATED, "{mine}");
    let response = server
        .request(Method::POST, "/api/v1/webhooks/secret")
        .bearer_auth(&access)
        .json(&json!({"overlap_seconds": 0}))
        .send()
        .await
        .expect("send");
    let (status, account) = read(response).await;
    assert_eq!(status, StatusCode::OK, "{account}");
    let account = account["secret"].as_str().expect("secret").to_string();
    server
        .admin_json(
            Method::POST,
            "/api/v1/users",
            json!({"username": "newbie", "password": "newbie-password-1"}),
        )
        .await;
    // Two endpoints hear it: the instance's (its own secret) and the admin's (the account
    // secret).
    let events = receiver.wait_for("user.created", 2).await;
    assert!(
        events
            .iter()
            .all(|e| e.json()["data"]["username"] == "newbie")
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| verify(&account, e).is_ok())
            .count(),
        1
    );
}

#[tokio::test]
async fn outbound_addresses_are_checked() {
    // Without the development switch loopback and private receivers are refused...
    let server = TestServer::start_with(webhook_config(false)).await;
    for url in [
        "http://127.0.0.1:9/x",
        "http://10.0.0.8/x",
        "http://[::1]:9/x",
        "http://169.254.169.254/latest",
    ] {
        let (status, body) = server
            .admin_json(Method::POST, "/api/v1/webhooks", json!({"url": url}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
    }
    for url in [
        "ftp://example.com/x",
        "not a url",
        "http://user:pw@example.com/",
    ] {
        let (status, _) = server
            .admin_json(Method::POST, "/api/v1/webhooks", json!({"url": url}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}");
    }
    // ...and a name is checked on the address it resolves to, at send time.
    let (receiver, url) = Receiver::start().await;
    let named = url.replace("127.0.0.1", "localhost");
    let (endpoint, _) = server.webhook(json!({"url": named})).await;
    server.create_key(json!({"name": "ssrf"})).await;
    let list = server
        .poll_get(&format!("/api/v1/webhooks/{endpoint}/deliveries"), |l| {
            l["deliveries"][0]["status"] == "failed"
        })
        .await;
    let error = list["deliveries"][0]["last_error"].as_str().expect("error");
    assert!(error.contains("not allowed"), "{error}");
    assert!(receiver.all().is_empty());

    // With it, loopback is allowed but link-local (cloud metadata) never is.
    let server = TestServer::start_with(webhook_config(true)).await;
    let (status, _) = server
        .admin_json(Method::POST, "/api/v1/webhooks", json!({"url": url}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = server
        .admin_json(
            Method::POST,
            "/api/v1/webhooks",
            json!({"url": "http://169.254.169.254/latest/meta-data"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Unknown event types and bad headers are refused clearly.
    let (status, body) = server
        .admin_json(
            Method::POST,
            "/api/v1/webhooks",
            json!({"url": url, "events": ["key.exploded"]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("key.exploded")
    );
}

#[tokio::test]
async fn hot_path_events_are_coalesced_and_users_see_their_own_endpoints() {
    let (receiver, url) = Receiver::start().await;
    let server = TestServer::start_with(webhook_config(true)).await;
    let (endpoint, _) = server
        .webhook(json!({"url": url, "events": ["ratelimit.exceeded", "quota.threshold", "quota.exceeded"]}))
        .await;
    let plan = server
        .plan(json!({"name": "tiny", "rate_limits": [{"limit": 1, "period_seconds": 3600}]}))
        .await;
    let (key, created) = server
        .create_key(json!({"name": "busy", "plan": plan}))
        .await;
    for _ in 0..4 {
        server.whoami(&key).await;
    }
    let events = receiver.wait_for("ratelimit.exceeded", 1).await;
    assert_eq!(events[0].json()["data"]["id"], created["id"]);

    // Quota: 5 a month; the 4th use crosses 80 %, the 6th is refused.
    let (quota_key, _) = server
        .create_key(json!({"name": "metered", "limits": {"monthly_quota": 5}}))
        .await;
    for _ in 0..7 {
        server.whoami(&quota_key).await;
    }
    let threshold = receiver.wait_for("quota.threshold", 1).await.remove(0);
    assert_eq!(threshold.json()["data"]["quota"]["limit"], 5);
    receiver.wait_for("quota.exceeded", 1).await;
    // Give the worker a cycle to deliver anything extra, then count: one of each.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let count = |kind: &str| {
        receiver
            .all()
            .iter()
            .filter(|r| r.json()["type"] == kind)
            .count()
    };
    assert_eq!(count("ratelimit.exceeded"), 1);
    assert_eq!(count("quota.threshold"), 1);
    assert_eq!(count("quota.exceeded"), 1);

    // A user sees their own endpoints, not the administrator's.
    server
        .admin_json(
            Method::POST,
            "/api/v1/users",
            json!({"username": "hooker", "password": "hooker-password-1"}),
        )
        .await;
    let response = server
        .request(Method::POST, "/api/v1/auth/token")
        .json(&json!({"username": "hooker", "password": "hooker-password-1"}))
        .send()
        .await
        .expect("send");
    let (_, tokens) = read(response).await;
    let access = tokens["access"].as_str().expect("access").to_string();
    let response = server
        .request(Method::GET, "/api/v1/webhooks")
        .bearer_auth(&access)
        .send()
        .await
        .expect("send");
    let (status, list) = read(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["webhooks"].as_array().expect("list").len(), 0);
    let response = server
        .request(Method::GET, &format!("/api/v1/webhooks/{endpoint}"))
        .bearer_auth(&access)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

/// An https receiver with the test certificate (`tests/fixtures`, for localhost and
/// 127.0.0.1); records the bodies it gets.
async fn tls_receiver() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let certs = CertificateDer::pem_file_iter(format!("{fixtures}/receiver-cert.pem"))
        .expect("cert file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(format!("{fixtures}/receiver-key.pem")).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "https://localhost:{}/tls",
        listener.local_addr().expect("addr").port()
    );
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let recorder = Arc::clone(&bodies);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let recorder = Arc::clone(&recorder);
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |request: axum::extract::Request<hyper::body::Incoming>| {
                        let recorder = Arc::clone(&recorder);
                        async move {
                            let body = axum::body::to_bytes(
                                axum::body::Body::new(request.into_body()),
                                usize::MAX,
                            )
                            .await
                            .unwrap_or_default();
                            recorder.lock().expect("lock").push(body.to_vec());
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new()))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, bodies)
}

#[tokio::test]
async fn https_receivers_need_a_trusted_certificate() {
    let (url, bodies) = tls_receiver().await;
    let ca = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/receiver-cert.pem"
    );

    // Without trusting the receiver's certificate: refused at the handshake, not sent.
    let server = TestServer::start_with(webhook_config(true)).await;
    let (endpoint, _) = server.webhook(json!({"url": url})).await;
    server.create_key(json!({"name": "untrusted"})).await;
    let list = server
        .poll_get(&format!("/api/v1/webhooks/{endpoint}/deliveries"), |l| {
            l["deliveries"][0]["attempts"].as_u64().unwrap_or(0) >= 1
        })
        .await;
    let error = list["deliveries"][0]["last_error"].as_str().expect("error");
    assert!(error.contains("certificate"), "{error}");
    assert!(bodies.lock().expect("lock").is_empty());

    // Trusting it (webhook_ca_file): delivered over TLS.
    let mut config = webhook_config(true);
    config.webhooks.ca_file = Some(ca.into());
    let server = TestServer::start_with(config).await;
    server
        .webhook(json!({"url": url, "events": ["key.created"]}))
        .await;
    server.create_key(json!({"name": "trusted"})).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let delivered = bodies.lock().expect("lock").iter().any(|b| {
            serde_json::from_slice::<Value>(b).is_ok_and(|v| v["data"]["name"] == "trusted")
        });
        if delivered {
            break;
        }
        assert!(Instant::now() < deadline, "no delivery over TLS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn expiry_login_bursts_redirects_and_failing_endpoints() {
    let (receiver, url) = Receiver::start().await;
    let mut config = webhook_config(true);
    config.throttle.max_failures_per_user = 2;
    config.throttle.delay_step = Duration::ZERO;
    config.throttle.delay_max = Duration::ZERO;
    let server = TestServer::start_with(config).await;
    let (endpoint, _) = server
        .webhook(json!({"url": url, "events": [
            "key.expiring", "key.expired", "auth.login_failed_burst", "webhook.test"
        ]}))
        .await;

    // key.expiring within the lead time (7 days), once; key.expired after expiry, once.
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let rfc3339 = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .expect("rfc3339")
    };
    let (_, created) = server
        .create_key(json!({"name": "ephemeral", "expires_at": rfc3339(soon)}))
        .await;
    let expiring = receiver.wait_for("key.expiring", 1).await.remove(0);
    assert_eq!(expiring.json()["data"]["id"], created["id"]);
    let expired = receiver.wait_for("key.expired", 1).await.remove(0);
    assert_eq!(expired.json()["data"]["id"], created["id"]);

    // A burst of failed sign-ins: one event when the username is locked out.
    for _ in 0..4 {
        server
            .request(Method::POST, "/api/v1/auth/token")
            .json(&json!({"username": "admin", "password": "wrong-password-guess"}))
            .send()
            .await
            .expect("send");
    }
    let burst = receiver
        .wait_for("auth.login_failed_burst", 1)
        .await
        .remove(0);
    assert_eq!(burst.json()["data"]["username"], "admin");
    assert!(!String::from_utf8_lossy(&burst.body).contains("wrong-password-guess"));

    // Redirects are not followed; two failures in a row show the endpoint as failing.
    receiver.answer(302, None);
    receiver.answer(500, None);
    let (_, sent) = server
        .admin_json(
            Method::POST,
            &format!("/api/v1/webhooks/{endpoint}/test"),
            json!({}),
        )
        .await;
    let first = first_attempt(&server, &endpoint, &sent["event_id"]).await;
    assert_eq!(first["last_status_code"], 302);
    assert!(
        first["last_error"]
            .as_str()
            .expect("error")
            .contains("redirects are not followed"),
        "{first}"
    );
    server
        .poll_get(&format!("/api/v1/webhooks/{endpoint}"), |v| {
            v["status"] == "failing"
        })
        .await;
    // The third attempt succeeds; every attempt came to this receiver.
    receiver.wait_for("webhook.test", 3).await;
}

#[tokio::test]
async fn project_members_see_but_only_owners_change_endpoints() {
    let (_receiver, url) = Receiver::start().await;
    let server = TestServer::start_with(webhook_config(true)).await;
    let mut tokens = Vec::new();
    for name in ["owner", "member"] {
        let (status, _) = server
            .admin_json(
                Method::POST,
                "/api/v1/users",
                json!({"username": name, "password": format!("{name}-password-12")}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let response = server
            .request(Method::POST, "/api/v1/auth/token")
            .json(&json!({"username": name, "password": format!("{name}-password-12")}))
            .send()
            .await
            .expect("send");
        let (_, pair) = read(response).await;
        tokens.push(pair["access"].as_str().expect("access").to_string());
    }
    let as_user = |i: usize, method: Method, path: &str, body: Value| {
        server
            .request(method, path)
            .bearer_auth(&tokens[i])
            .json(&body)
            .send()
    };
    let (status, project) = read(
        as_user(
            0,
            Method::POST,
            "/api/v1/projects",
            json!({"name": "shared"}),
        )
        .await
        .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{project}");
    let project = project["id"].as_str().expect("id").to_string();
    let (_, users) = server.admin_get("/api/v1/users").await;
    let member_id = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["username"] == "member")
        .expect("member")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (status, body) = read(
        as_user(
            0,
            Method::PUT,
            &format!("/api/v1/projects/{project}/members/{member_id}"),
            json!({"role": "member"}),
        )
        .await
        .expect("send"),
    )
    .await;
    assert!(status.is_success(), "{status} {body}");
    let (status, endpoint) = read(
        as_user(
            0,
            Method::POST,
            "/api/v1/webhooks",
            json!({"url": url, "project_id": project}),
        )
        .await
        .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{endpoint}");
    let path = format!("/api/v1/webhooks/{}", endpoint["id"].as_str().expect("id"));

    // The member sees it, but may not redirect, pause or re-key it.
    let response = server
        .request(Method::GET, &path)
        .bearer_auth(&tokens[1])
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    for (method, suffix, body) in [
        (
            Method::PATCH,
            "",
            json!({"url": "http://127.0.0.1:9/elsewhere"}),
        ),
        (Method::POST, "/secret", json!({})),
        (Method::GET, "/secret", json!({})),
        (Method::DELETE, "", json!({})),
    ] {
        let (status, body) = read(
            as_user(1, method.clone(), &format!("{path}{suffix}"), body)
                .await
                .expect("send"),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {suffix}: {body}");
    }
    // The owner may.
    let (status, _) = read(
        as_user(0, Method::PATCH, &path, json!({"description": "mine"}))
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}
