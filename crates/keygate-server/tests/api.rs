//! The HTTP API, end to end: a real server on 127.0.0.1:0 with a SQLite store in a temp
//! directory, driven over HTTP.

use keygate_core::key_format;
use keygate_server::config::ServerConfig;
use keygate_server::passwords::Passwords;
use keygate_server::{Server, bootstrap, clock};
use keygate_store::{SqliteStore, Store};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "api/accounts.rs"]
mod accounts;
#[path = "api/gateway.rs"]
mod gateway;
#[path = "api/limits.rs"]
mod limits;
#[path = "api/proxy.rs"]
mod proxy;
#[path = "api/timeouts.rs"]
mod timeouts;
#[path = "api/ui.rs"]
mod ui;
#[path = "api/webhooks.rs"]
mod webhooks;

/// The `admin` user's password in every test server.
const ADMIN_PASSWORD: &str = "admin-password-for-tests";

/// Defaults with a fast feed poll and cheap password hashing (tests hash a lot).
fn test_config() -> ServerConfig {
    ServerConfig {
        feed_poll_interval: Duration::from_millis(50),
        password_cost: keygate_server::passwords::PasswordCost {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        },
        ..ServerConfig::default()
    }
}

struct TestServer {
    base: String,
    admin: String,
    http: Client,
    store: Arc<SqliteStore>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    dir: tempfile::TempDir,
}

impl TestServer {
    async fn start() -> Self {
        Self::start_with(test_config()).await
    }

    async fn start_with(config: ServerConfig) -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), None, config).await
    }

    /// Stops this server (flushing its counters) and starts a new one on the same data.
    async fn restart(mut self) -> Self {
        self.stop().await;
        self.store.close().await;
        let admin = self.admin.clone();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        Self::start_in(dir, Some(admin), test_config()).await
    }

    async fn start_in(dir: tempfile::TempDir, admin: Option<String>, config: ServerConfig) -> Self {
        let store = Arc::new(SqliteStore::open(dir.path()).await.expect("open store"));
        let created =
            bootstrap::ensure_global_key(store.as_ref(), clock::now_ms(), &config.key_prefix)
                .await
                .expect("bootstrap");
        let admin = created
            .or(admin)
            .expect("first start creates the global key");
        let passwords = Passwords::new(config.password_cost).expect("argon2 params");
        bootstrap::ensure_admin_user(store.as_ref(), &passwords, Some(ADMIN_PASSWORD.into()))
            .await
            .expect("admin user");
        let server = Server::load(config, Arc::clone(&store) as Arc<dyn Store>)
            .await
            .expect("load");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        Self {
            base,
            admin,
            http: Client::new(),
            store,
            stop: Some(stop),
            task: Some(task),
            dir,
        }
    }

    /// Stops the server the way SIGTERM does: in-flight requests finish, counters flush.
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server result");
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// An admin request with a JSON body.
    async fn admin_json(&self, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .request(method, path)
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .expect("send");
        read(response).await
    }

    async fn admin_get(&self, path: &str) -> (StatusCode, Value) {
        read(
            self.request(Method::GET, path)
                .bearer_auth(&self.admin)
                .send()
                .await
                .expect("send"),
        )
        .await
    }

    async fn create_key(&self, body: Value) -> (String, Value) {
        let (status, created) = self.admin_json(Method::POST, "/api/v1/keys", body).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        (created["key"].as_str().expect("key").to_string(), created)
    }

    async fn whoami(&self, key: &str) -> (StatusCode, Value) {
        read(
            self.request(Method::GET, "/api/v1/whoami")
                .bearer_auth(key)
                .send()
                .await
                .expect("send"),
        )
        .await
    }

    async fn verify(&self, body: Value) -> Value {
        let response = self
            .request(Method::POST, "/api/v1/keys/verify")
            .json(&body)
            .send()
            .await
            .expect("send");
        let (status, body) = read(response).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, value)
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

/// Asserts the error model: code, message, request id, and no secret echoed.
fn assert_error(status: StatusCode, body: &Value, want_status: u16, want_code: &str, secret: &str) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(error_code(body), want_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        body["error"]["request_id"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    if !secret.is_empty() {
        assert!(!body.to_string().contains(secret), "secret echoed: {body}");
    }
}

#[tokio::test]
async fn every_transport_carries_a_key() {
    let server = TestServer::start().await;
    let key = server.admin.clone();
    let with = |name: &str, value: String| {
        server
            .request(Method::GET, "/api/v1/whoami")
            .header(name, value)
    };
    let requests = [
        with("Authorization", format!("Bearer {key}")),
        with("Authorization", format!("bearer {key}")),
        with("Authorization", format!("ApiKey {key}")),
        with("Authorization", format!("Token {key}")),
        with("authorization", format!("TOKEN {key}")),
        with("X-API-Key", key.clone()),
        with("x-api-key", key.clone()),
        with("X-Api-Key", format!("  {key}  ")),
        // The same key twice is not ambiguous.
        with("X-API-Key", key.clone()).bearer_auth(&key),
    ];
    for request in requests {
        let (status, body) = read(request.send().await.expect("send")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["auth"], "api_key");
        assert_eq!(body["name"], "global admin key");
        assert_eq!(body["scopes"], json!(["*"]));
    }

    // No credential: 401 with an RFC 6750 challenge and a hint naming the transports.
    let response = server
        .request(Method::GET, "/api/v1/whoami")
        .send()
        .await
        .expect("send");
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="keygate""#
    );
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let (status, body) = read(response).await;
    assert_error(status, &body, 401, "missing_credentials", "");
    assert!(
        body["error"]["hint"]
            .as_str()
            .expect("hint")
            .contains("x-api-key")
    );

    // An unsupported scheme is explained.
    let (status, body) = read(
        with("Authorization", "Basic dXNlcjpwYXNz".into())
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(status, &body, 401, "missing_credentials", "");
    assert!(
        body["error"]["hint"]
            .as_str()
            .expect("hint")
            .contains("Basic")
    );
}

#[tokio::test]
async fn two_different_credentials_are_refused() {
    let server = TestServer::start().await;
    let (other, _) = server.create_key(json!({"name": "other"})).await;
    let response = server
        .request(Method::GET, "/api/v1/whoami")
        .bearer_auth(&server.admin)
        .header("X-API-Key", &other)
        .send()
        .await
        .expect("send");
    let (status, body) = read(response).await;
    assert_error(status, &body, 400, "ambiguous_credentials", &other);
    assert!(!body.to_string().contains(&server.admin));
}

#[tokio::test]
async fn query_parameter_only_when_enabled() {
    let server = TestServer::start().await;
    let path = format!("/api/v1/whoami?apikey={}", server.admin);
    let (status, body) = read(
        server
            .request(Method::GET, &path)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(status, &body, 401, "missing_credentials", &server.admin);
    assert!(
        body["error"]["hint"]
            .as_str()
            .expect("hint")
            .contains("switched off"),
        "{body}"
    );

    let (status, settings) = server
        .admin_json(
            Method::PATCH,
            "/api/v1/settings",
            json!({"query_param_enabled": true}),
        )
        .await;
    assert_eq!(
        (status, &settings["query_param_enabled"]),
        (StatusCode::OK, &json!(true))
    );
    let (status, body) = read(
        server
            .request(Method::GET, &path)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Whitespace around the value (a pasted newline) is tolerated.
    let padded = format!("/api/v1/whoami?apikey=%20{}%0A", server.admin);
    let (status, _) = read(
        server
            .request(Method::GET, &padded)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, settings) = server.admin_get("/api/v1/settings").await;
    assert_eq!(
        settings,
        json!({"api_access_enabled": true, "query_param_enabled": true, "keys_per_user": null})
    );
}

#[tokio::test]
async fn management_needs_a_permission() {
    let server = TestServer::start().await;
    let (reader, _) = server
        .create_key(json!({"name": "reader", "scopes": ["read"]}))
        .await;
    let (files, _) = server
        .create_key(json!({"name": "files", "scopes": ["admin"]}))
        .await;
    let response = server
        .request(Method::GET, "/api/v1/keys")
        .bearer_auth(&reader)
        .send()
        .await
        .expect("send");
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        challenge.contains(r#"error="insufficient_scope""#)
            && challenge.contains(r#"scope="keys:read""#),
        "{challenge}"
    );
    let (status, body) = read(response).await;
    assert_error(status, &body, 403, "insufficient_permissions", &reader);
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("keys:read")
    );
    // Any valid key may use whoami and systeminfo; a key with `admin` manages.
    assert_eq!(server.whoami(&reader).await.0, StatusCode::OK);
    let response = server
        .request(Method::GET, "/api/v1/systeminfo")
        .bearer_auth(&reader)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let response = server
        .request(Method::GET, "/api/v1/keys")
        .bearer_auth(&files)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn key_lifecycle_through_the_api() {
    let server = TestServer::start().await;
    let (key, created) = server
        .create_key(json!({
            "name": "billing service",
            "scopes": ["read", "files:*"],
            "prefix": "ctf_sk",
            "meta": {"customer": "acme"},
            "expires_at": "2099-01-01T00:00:00Z"
        }))
        .await;
    assert!(
        key.starts_with("ctf_sk_") && key_format::parse_key(&key).is_ok(),
        "{key}"
    );
    assert_eq!(created["start"], key[..11]);
    assert_eq!(created["state"], "active");
    assert_eq!(created["expires_at"], "2099-01-01T00:00:00Z");
    let id = created["id"].as_str().expect("id").to_string();

    // Reading never shows the key or its hash.
    let (status, list) = server.admin_get("/api/v1/keys").await;
    assert_eq!(status, StatusCode::OK);
    let (status, shown) = server.admin_get(&format!("/api/v1/keys/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    for body in [&list, &shown] {
        let text = body.to_string();
        assert!(
            !text.contains(&key) && !text.contains("hash") && !text.contains("\"key\""),
            "{text}"
        );
    }
    assert_eq!(list["keys"].as_array().expect("keys").len(), 2);
    assert_eq!(shown["meta"], json!({"customer": "acme"}));

    // The key works; its use is counted.
    let (status, me) = server.whoami(&key).await;
    assert_eq!(
        (status, me["key_id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
    let (_, shown) = server.admin_get(&format!("/api/v1/keys/{id}")).await;
    assert_eq!(shown["usage_count"], 1);
    assert!(shown["last_used_at"].is_string());

    // Disable, enable, expire, un-expire.
    let path = format!("/api/v1/keys/{id}");
    let steps: [(Value, u16, &str); 5] = [
        (json!({"enabled": false}), 401, "disabled_api_key"),
        (json!({"enabled": true, "name": "renamed"}), 200, ""),
        (
            json!({"expires_at": "2001-01-01T00:00:00Z"}),
            401,
            "expired_api_key",
        ),
        (json!({"expires_at": null}), 200, ""),
        (json!({"scopes": ["write"]}), 200, ""),
    ];
    for (patch, want, code) in steps {
        let (status, body) = server.admin_json(Method::PATCH, &path, patch.clone()).await;
        assert_eq!(status, StatusCode::OK, "{patch}: {body}");
        let (status, body) = server.whoami(&key).await;
        assert_eq!(status.as_u16(), want, "after {patch}: {body}");
        if want != 200 {
            assert_error(status, &body, want, code, &key);
        }
    }
    let (_, shown) = server.admin_get(&path).await;
    assert_eq!(
        (
            shown["name"].as_str(),
            &shown["scopes"],
            &shown["expires_at"]
        ),
        (Some("renamed"), &json!(["write"]), &Value::Null)
    );

    // Revoke: the very next request is refused.
    let (status, revoked) = server.admin_json(Method::DELETE, &path, Value::Null).await;
    assert_eq!(
        (status, revoked["state"].as_str()),
        (StatusCode::OK, Some("revoked"))
    );
    let response = server
        .request(Method::GET, "/api/v1/whoami")
        .bearer_auth(&key)
        .send()
        .await
        .expect("send");
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    let (status, body) = read(response).await;
    assert_error(status, &body, 401, "revoked_api_key", &key);
    let (_, listed) = server.admin_get("/api/v1/keys?state=revoked").await;
    assert_eq!(listed["keys"].as_array().expect("keys").len(), 1);
}

#[tokio::test]
async fn rotation_with_and_without_grace() {
    let server = TestServer::start().await;
    let (old, created) = server
        .create_key(json!({"name": "svc", "scopes": ["read"], "prefix": "app"}))
        .await;
    let id = created["id"].as_str().expect("id");
    let (status, rotated) = server
        .admin_json(
            Method::POST,
            &format!("/api/v1/keys/{id}/rotate"),
            json!({"grace_seconds": 3600}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["key"].as_str().expect("new key").to_string();
    assert!(new.starts_with("app_") && new != old);
    assert_eq!(rotated["scopes"], json!(["read"]));
    assert_eq!(rotated["previous"]["rotated_to"], rotated["id"]);
    // During the grace period both work.
    assert_eq!(server.whoami(&old).await.0, StatusCode::OK);
    assert_eq!(server.whoami(&new).await.0, StatusCode::OK);
    // Rotating the old key again is a conflict.
    let (status, body) = server
        .admin_json(
            Method::POST,
            &format!("/api/v1/keys/{id}/rotate"),
            json!({}),
        )
        .await;
    assert_error(status, &body, 409, "conflict", "");

    // Without grace the old key stops at once, with a hint to use the replacement.
    let new_id = rotated["id"].as_str().expect("id");
    // No body at all means the defaults (grace 0).
    let request = server
        .request(Method::POST, &format!("/api/v1/keys/{new_id}/rotate"))
        .bearer_auth(&server.admin);
    let (status, again) = read(request.send().await.expect("send")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let (status, body) = server.whoami(&new).await;
    assert_error(status, &body, 401, "expired_api_key", &new);
    assert!(
        body["error"]["hint"]
            .as_str()
            .expect("hint")
            .contains("replacement")
    );
    assert_eq!(
        server.whoami(again["key"].as_str().expect("key")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_key_in_its_rotation_grace_shares_its_replacements_rate_limit() {
    let server = TestServer::start().await;
    let (old, created) = server
        .create_key(json!({
            "name": "metered",
            "limits": {"rate_limits": [{"limit": 3, "period_seconds": 3600}]}
        }))
        .await;
    let id = created["id"].as_str().expect("id");
    assert_eq!(server.whoami(&old).await.0, StatusCode::OK);
    let (status, rotated) = server
        .admin_json(
            Method::POST,
            &format!("/api/v1/keys/{id}/rotate"),
            json!({"grace_seconds": 3600}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["key"].as_str().expect("key").to_string();
    // Three an hour for the client, whichever of its two keys it sends.
    assert_eq!(server.whoami(&new).await.0, StatusCode::OK);
    assert_eq!(server.whoami(&old).await.0, StatusCode::OK);
    for key in [&old, &new] {
        let (status, body) = server.whoami(key).await;
        assert_error(status, &body, 429, "rate_limited", key);
    }
}

#[tokio::test]
async fn imported_keys_work_like_any_other() {
    let server = TestServer::start().await;
    let legacy = "legacy-app-token-0123456789abcdef";
    let (status, imported) = server
        .admin_json(
            Method::POST,
            "/api/v1/keys/import",
            json!({"key": legacy, "name": "old app", "scopes": ["read"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{imported}");
    assert_eq!(
        (imported["origin"].as_str(), imported["start"].as_str()),
        (Some("imported"), Some("legacy-a"))
    );
    assert!(!imported.to_string().contains(legacy));
    let response = server
        .request(Method::GET, "/api/v1/whoami")
        .header("X-API-Key", legacy)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    // With an imported key present, an unknown foreign string is NOT_FOUND, not malformed.
    let verdict = server
        .verify(json!({"key": "legacy-app-token-unknown-000"}))
        .await;
    assert_eq!(verdict["code"], "NOT_FOUND");

    let (status, body) = server
        .admin_json(
            Method::POST,
            "/api/v1/keys/import",
            json!({"key": legacy, "name": "again"}),
        )
        .await;
    assert_error(status, &body, 409, "conflict", legacy);
    let (status, body) = server
        .admin_json(
            Method::POST,
            "/api/v1/keys/import",
            json!({"key": "short", "name": "x"}),
        )
        .await;
    assert_error(status, &body, 400, "invalid_request", "");
    let mut broken = key_format::format_key("kg", &[5; 32]).expect("key");
    let last = broken.pop();
    broken.push(if last == Some('0') { '1' } else { '0' });
    let (status, body) = server
        .admin_json(
            Method::POST,
            "/api/v1/keys/import",
            json!({"key": broken, "name": "x"}),
        )
        .await;
    assert_error(status, &body, 400, "invalid_request", &broken);
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("checksum")
    );
}

#[tokio::test]
async fn verify_api_reports_every_state() {
    let server = TestServer::start().await;
    let (active, created) = server
        .create_key(json!({"name": "a", "scopes": ["read"], "meta": {"plan": "pro"}, "expires_at": "2099-01-01T00:00:00Z"}))
        .await;
    let (revoked, r) = server.create_key(json!({"name": "r"})).await;
    let (disabled, _) = server
        .create_key(json!({"name": "d", "enabled": false}))
        .await;
    let (expired, e) = server.create_key(json!({"name": "e"})).await;
    server
        .admin_json(
            Method::DELETE,
            &format!("/api/v1/keys/{}", r["id"].as_str().expect("id")),
            Value::Null,
        )
        .await;
    server
        .admin_json(
            Method::PATCH,
            &format!("/api/v1/keys/{}", e["id"].as_str().expect("id")),
            json!({"expires_at": "2000-01-01T00:00:00Z"}),
        )
        .await;
    let mut bad_checksum = active.clone();
    let last = bad_checksum.pop();
    bad_checksum.push(if last == Some('0') { '1' } else { '0' });
    let unknown = key_format::format_key("kg", &[42; 32]).expect("key");

    let cases = [
        (json!({"key": active}), "VALID", true),
        (json!({"key": format!("{active}\n")}), "VALID", true),
        (json!({"key": active, "scopes": ["read"]}), "VALID", true),
        (
            json!({"key": active, "scopes": ["read", "write"]}),
            "INSUFFICIENT_PERMISSIONS",
            false,
        ),
        (json!({"key": revoked}), "REVOKED", false),
        (json!({"key": disabled}), "DISABLED", false),
        (json!({"key": expired}), "EXPIRED", false),
        (json!({"key": unknown}), "NOT_FOUND", false),
        (json!({"key": bad_checksum}), "MALFORMED", false),
        (json!({"key": "not a key"}), "MALFORMED", false),
        (json!({"key": ""}), "MISSING", false),
    ];
    for (request, code, valid) in cases {
        let verdict = server.verify(request.clone()).await;
        assert_eq!(
            (verdict["code"].as_str(), verdict["valid"].as_bool()),
            (Some(code), Some(valid)),
            "{request}: {verdict}"
        );
    }
    let verdict = server
        .verify(json!({"key": active, "scopes": ["write"]}))
        .await;
    assert_eq!(verdict["missing_scope"], "write");
    let verdict = server.verify(json!({"key": active})).await;
    assert_eq!(verdict["key_id"], created["id"]);
    assert_eq!(verdict["name"], "a");
    assert_eq!(verdict["scopes"], json!(["read"]));
    assert_eq!(verdict["meta"], json!({"plan": "pro"}));
    assert_eq!(verdict["expires_at"], "2099-01-01T00:00:00Z");
    let verdict = server.verify(json!({"key": format!("  {unknown} ")})).await;
    assert!(
        verdict["hint"]
            .as_str()
            .expect("hint")
            .contains("whitespace")
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx() {
    let server = TestServer::start().await;
    let admin = &server.admin;
    let send = |method: Method, path: &str, content_type: Option<&str>, body: Vec<u8>| {
        let mut request = server.request(method, path).bearer_auth(admin).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        request.send()
    };
    let json_ct = Some("application/json");
    let big = format!(r#"{{"name": "{}"}}"#, "x".repeat(2 * 1024 * 1024)).into_bytes();
    // (method, path, content type, body, status, error code, text the message must mention)
    type Case<'a> = (
        Method,
        &'a str,
        Option<&'a str>,
        Vec<u8>,
        u16,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/api/v1/keys",
            json_ct,
            b"{not json".to_vec(),
            400,
            "invalid_request",
            "",
        ),
        (
            Method::POST,
            "/api/v1/keys",
            json_ct,
            br#"{"name": "x", "colour": "red"}"#.to_vec(),
            400,
            "invalid_request",
            "colour",
        ),
        (
            Method::POST,
            "/api/v1/keys",
            json_ct,
            br#"{"name": "  ", "scopes": []}"#.to_vec(),
            400,
            "invalid_request",
            "name",
        ),
        (
            Method::POST,
            "/api/v1/keys",
            json_ct,
            br#"{"name": "x", "expires_at": "tomorrow"}"#.to_vec(),
            400,
            "invalid_request",
            "",
        ),
        (
            Method::POST,
            "/api/v1/keys",
            json_ct,
            br#"{"name": "x", "expires_at": "2001-01-01T00:00:00Z"}"#.to_vec(),
            400,
            "invalid_request",
            "expires_at",
        ),
        (
            Method::POST,
            "/api/v1/keys",
            json_ct,
            br#"{"name": "x", "prefix": "Bad-Prefix"}"#.to_vec(),
            400,
            "invalid_request",
            "prefix",
        ),
        (
            Method::POST,
            "/api/v1/keys",
            json_ct,
            br#"{"name": "x", "scopes": ["a b"]}"#.to_vec(),
            400,
            "invalid_request",
            "scope",
        ),
        (
            Method::POST,
            "/api/v1/keys",
            json_ct,
            br#"{"name": ""}"#.to_vec(),
            400,
            "invalid_request",
            "name",
        ),
        (
            Method::POST,
            "/api/v1/keys",
            json_ct,
            br#"[1, 2]"#.to_vec(),
            400,
            "invalid_request",
            "",
        ),
        (
            Method::POST,
            "/api/v1/keys",
            json_ct,
            big,
            413,
            "payload_too_large",
            "",
        ),
        (
            Method::POST,
            "/api/v1/keys",
            Some("application/x-www-form-urlencoded"),
            br#"{"name": "x"}"#.to_vec(),
            415,
            "unsupported_media_type",
            "",
        ),
        (
            Method::GET,
            "/api/v1/keys/not-a-uuid",
            None,
            vec![],
            400,
            "invalid_request",
            "UUID",
        ),
        (
            Method::GET,
            "/api/v1/keys/01900000-0000-7000-8000-000000000000",
            None,
            vec![],
            404,
            "not_found",
            "",
        ),
        (
            Method::PATCH,
            "/api/v1/keys/01900000-0000-7000-8000-000000000000",
            json_ct,
            b"{}".to_vec(),
            404,
            "not_found",
            "",
        ),
        (
            Method::GET,
            "/api/v1/keys?limit=0",
            None,
            vec![],
            400,
            "invalid_request",
            "limit",
        ),
        (
            Method::GET,
            "/api/v1/keys?limit=abc",
            None,
            vec![],
            400,
            "invalid_request",
            "",
        ),
        (
            Method::GET,
            "/api/v1/keys?state=sleepy",
            None,
            vec![],
            400,
            "invalid_request",
            "state",
        ),
        (
            Method::POST,
            "/api/v1/keys/01900000-0000-7000-8000-000000000000/rotate",
            json_ct,
            br#"{"grace_seconds": -1}"#.to_vec(),
            400,
            "invalid_request",
            "",
        ),
        (
            Method::PATCH,
            "/api/v1/settings",
            json_ct,
            br#"{"api_access_enabled": "yes"}"#.to_vec(),
            400,
            "invalid_request",
            "",
        ),
        (
            Method::PATCH,
            "/api/v1/settings",
            json_ct,
            br#"{"dark_mode": true}"#.to_vec(),
            400,
            "invalid_request",
            "dark_mode",
        ),
        (
            Method::GET,
            "/api/v1/nothing-here",
            None,
            vec![],
            404,
            "not_found",
            "",
        ),
        (
            Method::PUT,
            "/api/v1/whoami",
            None,
            vec![],
            405,
            "method_not_allowed",
            "",
        ),
    ];
    for (method, path, ct, body, want_status, want_code, mention) in cases {
        let label = format!("{method} {path}");
        let (status, body) = read(send(method, path, ct, body).await.expect("send")).await;
        assert_error(status, &body, want_status, want_code, admin);
        assert!(
            body["error"]["message"]
                .as_str()
                .expect("message")
                .contains(mention),
            "{label}: {body}"
        );
    }
    // A secret pasted into the wrong field is not echoed back.
    let key = key_format::format_key("kg", &[8; 32]).expect("key");
    let (status, body) = read(
        send(
            Method::POST,
            "/api/v1/keys/verify",
            json_ct,
            json!({"key": [key.clone()], "scopes": key})
                .to_string()
                .into_bytes(),
        )
        .await
        .expect("send"),
    )
    .await;
    assert_error(status, &body, 400, "invalid_request", &key);
}

#[tokio::test]
async fn api_access_toggle_opens_the_gateway_but_not_management() {
    let server = TestServer::start().await;
    let (status, _) = server
        .admin_json(
            Method::PATCH,
            "/api/v1/settings",
            json!({"api_access_enabled": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Open: who am I, the instance's information, and forward auth for the app's API.
    let (status, me) = read(
        server
            .request(Method::GET, "/api/v1/whoami")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(
        (status, me["auth"].as_str()),
        (StatusCode::OK, Some("none"))
    );
    let response = server
        .request(Method::GET, "/api/v1/systeminfo")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let response = server
        .request(Method::GET, "/api/v1/forward-auth")
        .header("X-Forwarded-Uri", "/app/data")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    // Still checked: everything that manages keygate. Nobody who merely reaches the port
    // may list keys, mint an administrator key or switch access back on.
    for (method, path, body) in [
        (Method::GET, "/api/v1/keys", Value::Null),
        (
            Method::POST,
            "/api/v1/keys",
            json!({"name": "mine", "scopes": ["*"]}),
        ),
        (Method::GET, "/api/v1/users", Value::Null),
        (Method::GET, "/api/v1/audit", Value::Null),
        (
            Method::PATCH,
            "/api/v1/settings",
            json!({"api_access_enabled": true}),
        ),
    ] {
        let mut request = server.request(method.clone(), path);
        if !body.is_null() {
            request = request.json(&body);
        }
        let (status, body) = read(request.send().await.expect("send")).await;
        assert_error(status, &body, 401, "missing_credentials", "");
    }
    // With the key: the switch goes back on, and a credential is required again.
    let (status, _) = server
        .admin_json(
            Method::PATCH,
            "/api/v1/settings",
            json!({"api_access_enabled": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = read(
        server
            .request(Method::GET, "/api/v1/whoami")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(status, &body, 401, "missing_credentials", "");
}

#[tokio::test]
async fn system_info_health_and_metrics() {
    let server = TestServer::start().await;
    let (_, revoked) = server.create_key(json!({"name": "gone"})).await;
    server
        .admin_json(
            Method::DELETE,
            &format!("/api/v1/keys/{}", revoked["id"].as_str().expect("id")),
            Value::Null,
        )
        .await;
    server
        .create_key(json!({"name": "off", "enabled": false}))
        .await;
    let (status, info) = server.admin_get("/api/v1/systeminfo").await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert!(info["uptime_seconds"].is_u64());
    assert_eq!(
        info["keys"],
        json!({"active": 1, "disabled": 1, "expired": 0, "revoked": 1})
    );
    assert_eq!(info["index_size"], 3);
    assert_eq!(info["change_feed"]["lag"], 0);
    assert!(info["change_feed"]["applied_seq"].as_u64().expect("seq") >= 4);
    // The admin's own uses are waiting to be flushed.
    assert_eq!(info["flush_queue"], 1);

    for path in ["/healthz", "/readyz"] {
        let (status, body) = read(
            server
                .request(Method::GET, path)
                .send()
                .await
                .expect("send"),
        )
        .await;
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::OK, Some("ok")),
            "{path}"
        );
    }
    let response = server
        .request(Method::GET, "/metrics")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain")
    );
    let text = response.text().await.expect("text");
    for needle in [
        "keygate_decisions_total{code=\"VALID\"}",
        "keygate_index_keys",
        "keygate_change_feed_lag",
        "keygate_keys{state=\"revoked\"}",
    ] {
        assert!(
            text.contains(needle),
            "missing {needle} in metrics:\n{text}"
        );
    }
}

#[tokio::test]
async fn openapi_document_and_swagger_ui() {
    let server = TestServer::start().await;
    let (status, doc) = read(
        server
            .request(Method::GET, "/api/v1/openapi.json")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().expect("version").starts_with("3.1"));
    let paths = doc["paths"].as_object().expect("paths");
    let expected = [
        ("/api/v1/keys", ["post", "get"].as_slice()),
        ("/api/v1/keys/{id}", &["get", "patch", "delete"]),
        ("/api/v1/keys/{id}/rotate", &["post"]),
        ("/api/v1/keys/import", &["post"]),
        ("/api/v1/keys/rotate", &["post"]),
        ("/api/v1/keys/free", &["post"]),
        ("/api/v1/keys/{id}/usage", &["get"]),
        ("/api/v1/usage", &["get"]),
        ("/api/v1/forward-auth", &["get"]),
        ("/api/v1/projects", &["get", "post"]),
        ("/api/v1/projects/{id}", &["get", "patch", "delete"]),
        (
            "/api/v1/projects/{id}/members/{user_id}",
            &["put", "delete"],
        ),
        ("/api/v1/keys/verify", &["post"]),
        ("/api/v1/whoami", &["get"]),
        ("/api/v1/settings", &["get", "patch"]),
        ("/api/v1/settings/api-key", &["get"]),
        ("/api/v1/settings/api-key/regenerate", &["post"]),
        ("/api/v1/users", &["get", "post"]),
        ("/api/v1/users/{id}", &["get", "patch", "delete"]),
        ("/api/v1/users/me", &["get"]),
        ("/api/v1/users/me/password", &["post"]),
        ("/api/v1/permissions", &["get"]),
        ("/api/v1/auth/token", &["post"]),
        ("/api/v1/auth/token/refresh", &["post"]),
        ("/api/v1/auth/logout", &["post"]),
        ("/.well-known/jwks.json", &["get"]),
        ("/api/v1/audit", &["get"]),
        ("/api/v1/plans", &["get", "post"]),
        ("/api/v1/plans/{id}", &["get", "patch"]),
        ("/api/v1/systeminfo", &["get"]),
        ("/api/v1/webhooks", &["get", "post"]),
        ("/api/v1/webhooks/secret", &["post"]),
        ("/api/v1/webhooks/{id}", &["get", "patch", "delete"]),
        ("/api/v1/webhooks/{id}/secret", &["post"]),
        ("/api/v1/webhooks/{id}/test", &["post"]),
        ("/api/v1/webhooks/{id}/deliveries", &["get"]),
        (
            "/api/v1/webhooks/{id}/deliveries/{delivery_id}/retry",
            &["post"],
        ),
        ("/api/v1/openapi.json", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
    ];
    assert_eq!(paths.len(), expected.len(), "{:?}", paths.keys());
    for (path, methods) in expected {
        for method in methods {
            assert!(
                paths[path][method].is_object(),
                "{method} {path} is not documented"
            );
        }
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(
        schemes["api_key"],
        json!({"type": "apiKey", "in": "header", "name": "x-api-key", "description": "An API key in this header."})
    );
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert!(
        paths["/api/v1/keys"]["post"]["security"]
            .to_string()
            .contains("bearer")
    );

    // Every documented operation is routed (none falls through to the 404/405 fallbacks).
    for (path, item) in paths {
        for method in item.as_object().expect("path item").keys() {
            let concrete = path
                .replace("{id}", "01900000-0000-7000-8000-000000000000")
                .replace("{user_id}", "01900000-0000-7000-8000-000000000001");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let response = server
                .request(method.clone(), &concrete)
                .send()
                .await
                .expect("send");
            let status = response.status();
            let (_, body) = read(response).await;
            let fell_through = status == StatusCode::METHOD_NOT_ALLOWED
                || body["error"]["message"] == "No such endpoint.";
            assert!(
                !fell_through,
                "{method} {path} is documented but not routed: {status} {body}"
            );
        }
    }

    // Swagger UI is served from the binary, no CDN.
    let html = server
        .request(Method::GET, "/api/docs/")
        .send()
        .await
        .expect("send");
    assert_eq!(html.status(), StatusCode::OK);
    let html = html.text().await.expect("html");
    assert!(
        html.contains("swagger-ui") && !html.contains("https://"),
        "{html}"
    );
    for asset in [
        "/api/docs/swagger-ui.css",
        "/api/docs/swagger-ui-bundle.js",
        "/api/docs/swagger-initializer.js",
    ] {
        let response = server
            .request(Method::GET, asset)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
    }
    let init = server
        .request(Method::GET, "/api/docs/swagger-initializer.js")
        .send()
        .await
        .expect("send");
    assert!(
        init.text()
            .await
            .expect("js")
            .contains("/api/v1/openapi.json")
    );
}

fn cli_audit(action: &str) -> keygate_store::AuditEntry {
    keygate_store::AuditEntry {
        at: clock::now_ms(),
        actor: "cli".into(),
        action: action.into(),
        ..Default::default()
    }
}

/// Polls `check` until it returns true or `limit` passes: waiting on a condition, not a
/// fixed sleep.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn writes_from_another_process_arrive_through_the_change_feed() {
    let server = TestServer::start().await;
    // A second handle on the same SQLite file stands in for `keygate admin create-key`.
    let other = SqliteStore::open(server.dir.path()).await.expect("open");
    let spec = keygate_server::mint::KeySpec {
        name: "from cli".into(),
        enabled: true,
        ..Default::default()
    };
    let (key, record) = keygate_server::mint::mint(&spec, clock::now_ms()).expect("mint");
    other
        .insert_key(&record, None, &cli_audit("key.create"))
        .await
        .expect("insert");
    let took = eventually(Duration::from_secs(1), || async {
        server.whoami(&key).await.0 == StatusCode::OK
    })
    .await;
    println!("accepted after {took:?}");
    other
        .revoke_key(record.id, &cli_audit("key.revoke"))
        .await
        .expect("revoke");
    eventually(Duration::from_secs(1), || async {
        error_code(&server.whoami(&key).await.1) == "revoked_api_key"
    })
    .await;
    let off = keygate_core::settings::InstanceSettings {
        api_access_enabled: true,
        query_param_enabled: true,
        keys_per_user: None,
    };
    other
        .put_settings(&off, &cli_audit("settings.update"))
        .await
        .expect("settings");
    let path = format!("/api/v1/whoami?apikey={}", server.admin);
    eventually(Duration::from_secs(1), || async {
        server
            .request(Method::GET, &path)
            .send()
            .await
            .expect("send")
            .status()
            == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn usage_is_flushed_to_the_store_on_stop() {
    let mut server = TestServer::start_with(ServerConfig {
        // Long enough that only the shutdown flush can write the counts.
        flush_interval: Duration::from_secs(3600),
        ..test_config()
    })
    .await;
    let (key, created) = server.create_key(json!({"name": "counted"})).await;
    let id: uuid::Uuid = created["id"].as_str().expect("id").parse().expect("uuid");
    // Twenty concurrent requests, each counted exactly once.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let request = server
                .request(Method::GET, "/api/v1/whoami")
                .bearer_auth(&key);
            tokio::spawn(async move { request.send().await.expect("send").status() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("task"), StatusCode::OK);
    }
    let (_, shown) = server.admin_get(&format!("/api/v1/keys/{id}")).await;
    assert_eq!(shown["usage_count"], 20);
    assert_eq!(
        server
            .store
            .get_key(id)
            .await
            .expect("get")
            .expect("row")
            .usage_count,
        0
    );
    server.stop().await;
    let stored = server.store.get_key(id).await.expect("get").expect("row");
    assert_eq!(stored.usage_count, 20);
    assert!(stored.last_used_at.is_some());
}
