//! Conformance of the compatibility presets (`examples/compat/*.toml`): each test starts
//! the real binary with a preset in front of a stub upstream and replays the examples and
//! error tables of the seed document the preset reproduces.

use super::*;
use reqwest::Method;

fn preset(name: &str) -> String {
    format!(
        "{}/../../examples/compat/{name}.toml",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A stub app on loopback: answers every request with what it received. Paths the seed
/// documents show a body for answer with that body.
async fn stub_app() -> String {
    use axum::extract::Request;
    let app = axum::Router::new()
        .route(
            "/api/v1/systeminfo",
            axum::routing::get(|| async {
                axum::Json(json!({
                    "watch_count": 42, "tag_count": 5, "uptime": 172800.5,
                    "version": "0.50.10", "queue_size": 3, "overdue_watches": []
                }))
            }),
        )
        .fallback(|request: Request| async move {
            let headers: serde_json::Map<String, Value> = request
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        Value::String(v.to_str().unwrap_or("?").to_string()),
                    )
                })
                .collect();
            axum::Json(json!({
                "app": "stub",
                "method": request.method().as_str(),
                "uri": request.uri().to_string(),
                "headers": headers,
            }))
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

struct Preset {
    running: Running,
    dir: tempfile::TempDir,
    /// The preset's file, as `--config` names it.
    config: String,
    http: reqwest::Client,
}

const ADMIN_PASSWORD: &str = "compat-admin-password";

impl Preset {
    async fn start(name: &str) -> Self {
        let upstream = stub_app().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let config = preset(name);
        // As the preset's header says to run it: `keygate serve --config FILE --upstream
        // URL --listen ADDR --data-dir DIR`.
        let running = serve_with(
            dir.path(),
            &["--config", config.as_str(), "--upstream", upstream.as_str()],
            &[
                ("KEYGATE_ADMIN_PASSWORD", ADMIN_PASSWORD),
                ("KEYGATE_PASSWORD_MEMORY_KIB", "1024"),
                ("KEYGATE_PASSWORD_ITERATIONS", "1"),
            ],
        );
        Self {
            running,
            dir,
            config,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::limited(3))
                .build()
                .expect("client"),
        }
    }

    fn global_key(&self) -> String {
        self.running.first_key.clone().expect("global key")
    }

    /// A key made by `keygate admin create-key --config PRESET`, once the running server
    /// accepts it (it arrives through the change feed).
    async fn admin_created_key(&self, header: &str, extra: &[&str]) -> String {
        let output = run_ok(
            keygate()
                .args(["admin", "create-key", "--name", "compat"])
                .args(["--config", self.config.as_str()])
                .args(extra)
                .arg("--data-dir")
                .arg(self.dir.path()),
        );
        let key = String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_string();
        // `Authorization` carries it as a bearer credential.
        let value = if header.eq_ignore_ascii_case("authorization") {
            format!("Bearer {key}")
        } else {
            key.clone()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = self
                .send(Method::GET, "/api/v1/whoami", &[(header, &value)], None)
                .await
                .0;
            if status == 200 {
                return key;
            }
            assert!(Instant::now() < deadline, "the new key was not accepted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a request; answers the status, the headers and the body (JSON if it is JSON,
    /// else a string).
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.running.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("send");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, body)
    }
}

fn content_type(headers: &reqwest::header::HeaderMap) -> &str {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn changedetection_preset() {
    let p = Preset::start("changedetection").await;
    let key = p.admin_created_key("x-api-key", &[]).await;

    // curl -X GET "http://localhost:5000/api/v1/watch" -H "x-api-key: YOUR_API_KEY"
    let (status, _, body) = p
        .send(Method::GET, "/api/v1/watch", &[("x-api-key", &key)], None)
        .await;
    assert_eq!((status, &body["uri"]), (200, &json!("/api/v1/watch")));
    assert!(body["headers"].get("x-api-key").is_none(), "{body}");
    // The header name is case-insensitive; whitespace around the key is tolerated.
    let padded = format!(" {key} ");
    let (status, _, _) = p
        .send(
            Method::GET,
            "/api/v1/watch",
            &[("X-API-KEY", &padded)],
            None,
        )
        .await;
    assert_eq!(status, 200);

    // Missing or invalid: 403 "Invalid access - API key invalid."
    let refusal = json!("Invalid access - API key invalid.");
    for headers in [vec![], vec![("x-api-key", "not-a-key-at-all")]] {
        let (status, response_headers, body) =
            p.send(Method::GET, "/api/v1/watch", &headers, None).await;
        assert_eq!((status, &body), (403, &refusal));
        assert!(content_type(&response_headers).starts_with("application/json"));
    }
    // Another transport is not this product's: the key in a bearer header counts as missing.
    let (status, _, body) = p
        .send(
            Method::GET,
            "/api/v1/watch",
            &[("authorization", &format!("Bearer {key}"))],
            None,
        )
        .await;
    assert_eq!((status, &body), (403, &refusal));

    // GET /api/v1/full-spec needs no key.
    let (status, _, body) = p.send(Method::GET, "/api/v1/full-spec", &[], None).await;
    assert_eq!((status, &body["uri"]), (200, &json!("/api/v1/full-spec")));

    // GET /api/v1/systeminfo is the app's, behind the key.
    let (status, _, body) = p
        .send(
            Method::GET,
            "/api/v1/systeminfo",
            &[("x-api-key", &key)],
            None,
        )
        .await;
    assert_eq!(status, 200);
    for field in [
        "watch_count",
        "tag_count",
        "uptime",
        "version",
        "queue_size",
        "overdue_watches",
    ] {
        assert!(body.get(field).is_some(), "{field} in {body}");
    }
    let (status, _, _) = p.send(Method::GET, "/api/v1/systeminfo", &[], None).await;
    assert_eq!(status, 403);

    // A regenerated key replaces the old one at once.
    let global = p.global_key();
    let (status, _, body) = p
        .send(
            Method::POST,
            "/api/v1/settings/api-key/regenerate",
            &[("x-api-key", &global)],
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let fresh = body["key"].as_str().expect("new key").to_string();
    let (status, _, body) = p
        .send(
            Method::GET,
            "/api/v1/watch",
            &[("x-api-key", &global)],
            None,
        )
        .await;
    assert_eq!((status, &body), (403, &refusal));

    // "API access token enabled" unchecked: requests work without a key.
    let (status, _, body) = p
        .send(
            Method::PATCH,
            "/api/v1/settings",
            &[("x-api-key", &fresh)],
            Some(json!({"api_access_enabled": false})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = p.send(Method::GET, "/api/v1/watch", &[], None).await;
    assert_eq!(status, 200);
    // keygate's own management still needs the key: switching access back on, too.
    let (status, _, _) = p
        .send(
            Method::PATCH,
            "/api/v1/settings",
            &[],
            Some(json!({"api_access_enabled": true})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _, _) = p
        .send(
            Method::PATCH,
            "/api/v1/settings",
            &[("x-api-key", &fresh)],
            Some(json!({"api_access_enabled": true})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _, body) = p.send(Method::GET, "/api/v1/watch", &[], None).await;
    assert_eq!((status, &body), (403, &refusal));
}

/// POST /api/accounts/api-keys/ {"user": id} as an admin.
async fn generate_key_for(p: &Preset, admin: &str, user_id: &str) -> Value {
    let (status, _, key) = p
        .send(
            Method::POST,
            "/api/accounts/api-keys/",
            &[("authorization", admin)],
            Some(json!({"user": user_id})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    key
}

#[tokio::test]
async fn dispatcharr_preset() {
    let p = Preset::start("dispatcharr").await;
    let login = json!({"username": "admin", "password": ADMIN_PASSWORD});

    // Obtaining a token pair, at both login endpoints.
    let (status, _, pair) = p
        .send(
            Method::POST,
            "/api/accounts/token/",
            &[],
            Some(login.clone()),
        )
        .await;
    assert_eq!(status, 200, "{pair}");
    let access = pair["access"].as_str().expect("access").to_string();
    let refresh = pair["refresh"].as_str().expect("refresh").to_string();
    let (status, _, other) = p
        .send(Method::POST, "/api/accounts/auth/login/", &[], Some(login))
        .await;
    assert_eq!(status, 200);
    assert!(other["access"].is_string() && other["refresh"].is_string());
    let admin = format!("Bearer {access}");

    // Using the access token against the app.
    let (status, _, body) = p
        .send(
            Method::GET,
            "/api/channels/",
            &[("authorization", &admin)],
            None,
        )
        .await;
    assert_eq!((status, &body["uri"]), (200, &json!("/api/channels/")));

    // Refreshing.
    let (status, _, body) = p
        .send(
            Method::POST,
            "/api/accounts/token/refresh/",
            &[],
            Some(json!({"refresh": refresh})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access"].is_string());

    // Admins create users and generate a key for one with {"user": id}.
    let (status, _, user) = p
        .send(
            Method::POST,
            "/api/accounts/users/",
            &[("authorization", &admin)],
            Some(json!({"username": "viewer", "password": "viewer-password-1"})),
        )
        .await;
    assert_eq!(status, 201, "{user}");
    let user_id = user["id"].as_str().expect("id").to_string();
    let (status, _, users) = p
        .send(
            Method::GET,
            "/api/accounts/users/",
            &[("authorization", &admin)],
            None,
        )
        .await;
    assert_eq!(status, 200, "{users}");
    // The document's example names the user by a number; keygate's users have UUIDs,
    // and a number is refused with a 400 that says so.
    let (status, _, body) = p
        .send(
            Method::POST,
            "/api/accounts/api-keys/",
            &[("authorization", &admin)],
            Some(json!({"user": 5})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let detail = body["detail"].as_str().expect("detail");
    assert!(
        detail.contains("expected a formatted UUID string"),
        "{detail}"
    );
    let first = generate_key_for(&p, &admin, &user_id).await;
    let first_key = first["key"].as_str().expect("key").to_string();
    assert_eq!(first["owner"], json!(user_id));

    // Both ways of sending it.
    for header in [
        ("authorization", format!("ApiKey {first_key}")),
        ("x-api-key", first_key.clone()),
    ] {
        let (status, _, body) = p
            .send(
                Method::GET,
                "/api/channels/",
                &[(header.0, &header.1)],
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(body["headers"].get("x-api-key").is_none());
        assert!(body["headers"].get("authorization").is_none());
    }

    // One key per user: generating a new one revokes the previous at once.
    let second = generate_key_for(&p, &admin, &user_id).await;
    let second_key = second["key"].as_str().expect("key").to_string();
    let invalid_key = json!({"detail": "Invalid API key."});
    let (status, _, body) = p
        .send(
            Method::GET,
            "/api/channels/",
            &[("x-api-key", &first_key)],
            None,
        )
        .await;
    assert_eq!((status, &body), (401, &invalid_key));

    // Listing: admins see every key, users their own.
    let (status, _, all) = p
        .send(
            Method::GET,
            "/api/accounts/api-keys/",
            &[("authorization", &admin)],
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(all["keys"].as_array().expect("keys").len() >= 3, "{all}");
    let (status, _, own) = p
        .send(
            Method::GET,
            "/api/accounts/api-keys/",
            &[("x-api-key", &second_key)],
            None,
        )
        .await;
    assert_eq!(status, 200, "{own}");
    let own = own["keys"].as_array().expect("keys");
    assert!(own.iter().all(|k| k["owner"] == json!(user_id)), "{own:?}");

    // A user may not list users: 403 with the document's sentence.
    let (status, _, body) = p
        .send(
            Method::GET,
            "/api/accounts/users/",
            &[("x-api-key", &second_key)],
            None,
        )
        .await;
    assert_eq!(
        (status, &body),
        (
            403,
            &json!({"detail": "You do not have permission to perform this action."})
        )
    );

    // Revoking a specific key (admin): refused at once.
    let id = second["id"].as_str().expect("id");
    let (status, _, _) = p
        .send(
            Method::DELETE,
            &format!("/api/accounts/api-keys/{id}/"),
            &[("authorization", &admin)],
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _, body) = p
        .send(
            Method::GET,
            "/api/channels/",
            &[("x-api-key", &second_key)],
            None,
        )
        .await;
    assert_eq!((status, &body), (401, &invalid_key));

    // The document's 401 bodies.
    let (status, _, body) = p.send(Method::GET, "/api/channels/", &[], None).await;
    assert_eq!(
        (status, &body),
        (
            401,
            &json!({"detail": "Authentication credentials were not provided."})
        )
    );
    let forged = format!("Bearer {}x", &access[..access.len() - 1]);
    let (status, _, body) = p
        .send(
            Method::GET,
            "/api/channels/",
            &[("authorization", &forged)],
            None,
        )
        .await;
    assert_eq!((status, &body), (401, &json!({"detail": "Invalid token."})));

    // Permissions, and Swagger UI at /api/swagger/.
    let (status, _, body) = p
        .send(
            Method::GET,
            "/api/accounts/permissions/",
            &[("authorization", &admin)],
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, headers, body) = p.send(Method::GET, "/api/swagger/", &[], None).await;
    assert_eq!(status, 200);
    assert!(
        content_type(&headers).starts_with("text/html"),
        "{headers:?}"
    );
    assert!(body.as_str().unwrap_or_default().contains("swagger"));
    // Its Authorize dialog has the document's "Bearer" and "ApiKey" sections: the
    // document's security schemes carry those names, and every operation refers to them.
    let (status, _, spec) = p.send(Method::GET, "/api/v1/openapi.json", &[], None).await;
    assert_eq!(status, 200);
    let schemes = spec["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    let mut names: Vec<&str> = schemes.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["ApiKey", "Bearer"]);
    assert_eq!(schemes["Bearer"]["scheme"], "bearer");
    assert_eq!(schemes["ApiKey"]["in"], "header");
    assert_eq!(schemes["ApiKey"]["name"], "x-api-key");
    let mut referenced = std::collections::BTreeSet::new();
    for item in spec["paths"].as_object().expect("paths").values() {
        for operation in item.as_object().expect("path item").values() {
            for requirement in operation["security"].as_array().into_iter().flatten() {
                referenced.extend(
                    requirement
                        .as_object()
                        .expect("requirement")
                        .keys()
                        .cloned(),
                );
            }
        }
    }
    assert_eq!(
        referenced.into_iter().collect::<Vec<_>>(),
        ["ApiKey", "Bearer"]
    );

    // Logout ends the sign-in: its refresh token is refused afterwards.
    let (status, _, _) = p
        .send(
            Method::POST,
            "/api/accounts/auth/logout/",
            &[],
            Some(json!({"refresh": other["refresh"]})),
        )
        .await;
    assert_eq!(status, 204);
    let (status, _, body) = p
        .send(
            Method::POST,
            "/api/accounts/token/refresh/",
            &[],
            Some(json!({"refresh": other["refresh"]})),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(body["detail"].is_string(), "{body}");
}

#[tokio::test]
async fn octoprint_preset() {
    let p = Preset::start("octoprint").await;
    let global = p.global_key();
    let created = p.admin_created_key("x-api-key", &[]).await;

    // GET /api/files with X-Api-Key: the global key and any other key.
    for key in [&global, &created] {
        let (status, _, body) = p
            .send(Method::GET, "/api/files", &[("X-Api-Key", key)], None)
            .await;
        assert_eq!((status, &body["uri"]), (200, &json!("/api/files")));
    }
    // GET /api/files?apikey=...: accepted, and never forwarded to the app.
    let (status, _, body) = p
        .send(
            Method::GET,
            &format!("/api/files?apikey={global}&recursive=true"),
            &[],
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["uri"], "/api/files?recursive=true");
    assert!(!body.to_string().contains(&global));

    // A user's own key: the user signs in and generates it, and can revoke it.
    let (status, _, _) = p
        .send(
            Method::POST,
            "/api/v1/users",
            &[("x-api-key", &global)],
            Some(json!({"username": "printer", "password": "printer-password-1"})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _, tokens) = p
        .send(
            Method::POST,
            "/api/v1/auth/token",
            &[],
            Some(json!({"username": "printer", "password": "printer-password-1"})),
        )
        .await;
    assert_eq!(status, 200);
    let bearer = format!("Bearer {}", tokens["access"].as_str().expect("access"));
    let (status, _, own) = p
        .send(
            Method::POST,
            "/api/v1/keys",
            &[("authorization", &bearer)],
            Some(json!({"name": "my key"})),
        )
        .await;
    assert_eq!(status, 201, "{own}");
    let own_key = own["key"].as_str().expect("key");
    let (status, _, body) = p
        .send(Method::GET, "/api/job", &[("X-Api-Key", own_key)], None)
        .await;
    assert_eq!(status, 200);
    assert!(body["headers"]["x-keygate-user"].is_string(), "{body}");
    let (status, _, _) = p
        .send(
            Method::DELETE,
            &format!("/api/v1/keys/{}", own["id"].as_str().expect("id")),
            &[("authorization", &bearer)],
            None,
        )
        .await;
    assert_eq!(status, 200);

    // Missing, invalid or revoked: 401, JSON in UTF-8.
    for headers in [
        vec![],
        vec![("X-Api-Key", "abcdef")],
        vec![("X-Api-Key", own_key)],
    ] {
        let (status, response_headers, body) =
            p.send(Method::GET, "/api/files", &headers, None).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(
            content_type(&response_headers),
            "application/json; charset=utf-8"
        );
        assert!(body["error"]["code"].is_string());
    }
    let (status, _, _) = p
        .send(Method::GET, "/api/files?apikey=abcdef", &[], None)
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn changethisfile_preset() {
    let p = Preset::start("changethisfile").await;

    // Get a free key: the document's response fields, a ctf_sk_ key.
    let (status, _, free) = p
        .send(
            Method::POST,
            "/v1/keys/free",
            &[],
            Some(json!({"email": "you@example.com"})),
        )
        .await;
    assert_eq!(status, 201, "{free}");
    let key = free["api_key"].as_str().expect("api_key").to_string();
    assert!(key.starts_with("ctf_sk_"), "{key}");
    assert_eq!(free["plan"], "free");
    assert_eq!(free["monthly_limit"], 1000);
    assert_eq!(
        free["message"],
        "Save this key — it will not be shown again."
    );
    let bearer = format!("Bearer {key}");
    // An operator's key from `keygate admin create-key --config` has the preset's prefix
    // and passes the way the document's keys do.
    let operator = p.admin_created_key("authorization", &[]).await;
    assert!(operator.starts_with("ctf_sk_"), "{operator}");
    let (status, _, body) = p
        .send(
            Method::POST,
            "/v1/convert",
            &[("authorization", &format!("Bearer {operator}"))],
            None,
        )
        .await;
    assert_eq!(
        (status, &body["uri"]),
        (200, &json!("/v1/convert")),
        "{body}"
    );

    // POST /v1/convert with Authorization: Bearer.
    let (status, headers, body) = p
        .send(
            Method::POST,
            "/v1/convert",
            &[("authorization", &bearer)],
            None,
        )
        .await;
    assert_eq!((status, &body["uri"]), (200, &json!("/v1/convert")));
    assert!(headers.get("ratelimit-policy").is_some(), "{headers:?}");

    // 401 invalid_api_key: header missing, malformed, or revoked.
    for headers in [
        vec![],
        vec![("authorization", "Bearer ctf_sk_malformed")],
        vec![("x-api-key", key.as_str())],
    ] {
        let (status, _, body) = p.send(Method::GET, "/v1/usage", &headers, None).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    }

    // POST /v1/keys/rotate: a new ctf_sk_ key; the old one keeps working for the grace.
    let (status, _, rotated) = p
        .send(
            Method::POST,
            "/v1/keys/rotate",
            &[("authorization", &bearer)],
            Some(json!({"grace_seconds": 60})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_key = rotated["key"].as_str().expect("key").to_string();
    assert!(new_key.starts_with("ctf_sk_") && new_key != key);
    let new_bearer = format!("Bearer {new_key}");
    for credential in [&bearer, &new_bearer] {
        let (status, _, _) = p
            .send(
                Method::GET,
                "/v1/usage",
                &[("authorization", credential)],
                None,
            )
            .await;
        assert_eq!(status, 200);
    }

    // A key the free account makes for itself is on the free plan too.
    let (status, _, minted) = p
        .send(
            Method::POST,
            "/api/v1/keys",
            &[("authorization", &new_bearer)],
            Some(json!({"name": "second"})),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    assert!(minted["plan"].is_string(), "{minted}");
    assert_eq!(minted["plan"], rotated["plan"]);

    // POST /v1/webhooks/secret: a whsec_ signing secret for the key's account.
    let (status, _, secret) = p
        .send(
            Method::POST,
            "/v1/webhooks/secret",
            &[("authorization", &new_bearer)],
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{secret}");
    assert!(
        secret["secret"]
            .as_str()
            .is_some_and(|s| s.starts_with("whsec_")),
        "{secret}"
    );
    // It is not an API key, and keygate says so.
    let whsec = format!("Bearer {}", secret["secret"].as_str().unwrap_or_default());
    let (status, _, body) = p
        .send(Method::GET, "/v1/usage", &[("authorization", &whsec)], None)
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["hint"]
            .as_str()
            .is_some_and(|h| h.contains("webhook signing secret")),
        "{body}"
    );

    // The free tier's throttle, 10 a minute (carried over by the rotation): then 429
    // rate_limited with Retry-After.
    let mut allowed = 0;
    let refused = loop {
        let (status, headers, body) = p
            .send(
                Method::GET,
                "/v1/usage",
                &[("authorization", &new_bearer)],
                None,
            )
            .await;
        if status != 200 {
            break (status, headers, body);
        }
        allowed += 1;
        assert!(
            allowed <= 10,
            "more than 10 requests in a minute were allowed"
        );
    };
    assert_eq!(refused.0, 429, "{}", refused.2);
    assert_eq!(refused.2["error"]["code"], "rate_limited");
    assert!(refused.1.get("retry-after").is_some());

    // A key past its monthly quota: 429 quota_exceeded with Retry-After. The quota is
    // given to a fresh key as its own limit so the test need not send 1,000 requests.
    let global = format!("Bearer {}", p.global_key());
    let (status, _, small) = p
        .send(
            Method::POST,
            "/api/v1/keys",
            &[("authorization", &global)],
            Some(json!({"name": "small", "limits": {"monthly_quota": 2}})),
        )
        .await;
    assert_eq!(status, 201, "{small}");
    let small = format!("Bearer {}", small["key"].as_str().expect("key"));
    assert!(small.starts_with("Bearer ctf_sk_"));
    for _ in 0..2 {
        let (status, _, _) = p
            .send(Method::GET, "/v1/usage", &[("authorization", &small)], None)
            .await;
        assert_eq!(status, 200);
    }
    let (status, headers, body) = p
        .send(Method::GET, "/v1/usage", &[("authorization", &small)], None)
        .await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert!(headers.get("retry-after").is_some());
}

#[tokio::test]
async fn project_keys_preset() {
    let p = Preset::start("project-keys").await;
    let global = p.global_key();
    let admin = [("x-api-key", global.as_str())];

    // Two projects, a user who is a member of the first.
    let mut projects = Vec::new();
    for name in ["alpha", "beta"] {
        let (status, _, project) = p
            .send(
                Method::POST,
                "/api/v1/projects",
                &admin,
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(status, 201, "{project}");
        projects.push(project["id"].as_str().expect("id").to_string());
    }
    let (status, _, user) = p
        .send(
            Method::POST,
            "/api/v1/users",
            &admin,
            Some(json!({"username": "dev", "password": "dev-password-12"})),
        )
        .await;
    assert_eq!(status, 201);
    let user_id = user["id"].as_str().expect("id");
    let (status, _, body) = p
        .send(
            Method::PUT,
            &format!("/api/v1/projects/{}/members/{user_id}", projects[0]),
            &admin,
            Some(json!({"role": "member"})),
        )
        .await;
    assert!(status == 200 || status == 204, "{status} {body}");

    // Named keys: one user-level, one project-level.
    let make = |body: Value| {
        let global = global.clone();
        let p = &p;
        async move {
            let (status, _, key) = p
                .send(
                    Method::POST,
                    "/api/v1/keys",
                    &[("x-api-key", &global)],
                    Some(body),
                )
                .await;
            assert_eq!(status, 201, "{key}");
            key["key"].as_str().expect("key").to_string()
        }
    };
    let user_key = make(json!({"name": "example-api-key", "user_id": user_id})).await;
    let project_key = make(json!({
        "name": "alpha-key", "user_id": user_id, "level": "project", "project_id": projects[0]
    }))
    .await;

    // User level: X-Project-ID required except for /validate and /projects.
    let (status, _, body) = p
        .send(Method::GET, "/sites", &[("x-api-key", &user_key)], None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("project_id_required"))
    );
    for path in ["/validate", "/projects"] {
        let (status, _, _) = p
            .send(Method::GET, path, &[("x-api-key", &user_key)], None)
            .await;
        assert_eq!(status, 200, "{path}");
    }
    let (status, _, body) = p
        .send(
            Method::GET,
            "/sites",
            &[("x-api-key", &user_key), ("x-project-id", &projects[0])],
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-keygate-project"], json!(projects[0]));

    // Project level: no header needed; scoped to its project.
    let (status, _, body) = p
        .send(Method::GET, "/sites", &[("x-api-key", &project_key)], None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-keygate-project"], json!(projects[0]));

    // 403 Insufficient permissions: a project the key cannot reach.
    for key in [&user_key, &project_key] {
        let (status, _, body) = p
            .send(
                Method::GET,
                "/sites",
                &[("x-api-key", key), ("x-project-id", &projects[1])],
                None,
            )
            .await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["message"], "Insufficient permissions");
    }

    // 401 Invalid API key: incorrect or expired.
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let expiring = make(json!({
        "name": "short", "user_id": user_id, "project_id": null,
        "expires_at": expires.format(&time::format_description::well_known::Rfc3339).expect("rfc3339")
    }))
    .await;
    let (status, _, _) = p
        .send(Method::GET, "/validate", &[("x-api-key", &expiring)], None)
        .await;
    assert_eq!(status, 200);
    // Waits for the expiry time itself, then checks the refusal.
    while time::OffsetDateTime::now_utc() <= expires {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unknown = keygate_core::key_format::format_key("kg", &[9; 32]).expect("key");
    for key in ["wrong-key-value-123", unknown.as_str(), expiring.as_str()] {
        let (status, _, body) = p
            .send(Method::GET, "/validate", &[("x-api-key", key)], None)
            .await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["message"], "Invalid API key");
        // One answer: no hint tells an unknown key from an expired one.
        if key != "wrong-key-value-123" {
            assert!(body["error"].get("hint").is_none(), "{body}");
        }
    }
}

/// Identity headers under names an app reads (`[identity_headers]`), through the real
/// binary: forward auth answers with them, the proxy passes keygate's values on under
/// them, and a client's own copies of those names (in either spelling) never reach the app.
#[tokio::test]
async fn identity_headers_take_the_names_the_app_reads() {
    let upstream = stub_app().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        "[identity_headers]\nuser = \"Remote-User\"\nscopes = \"X-Scopes\"\n",
    )
    .expect("config");
    let data = dir.path().join("data");
    let running = serve_with(
        &data,
        &[
            "--config",
            config.to_str().expect("path"),
            "--upstream",
            upstream.as_str(),
        ],
        &[],
    );
    let key = running.first_key.clone().expect("global key");
    let http = reqwest::Client::new();

    let answer = http
        .get(format!("{}/api/v1/forward-auth", running.base))
        .header("X-API-Key", &key)
        .header("X-Forwarded-Method", "GET")
        .header("X-Forwarded-Uri", "/files/a.txt")
        .send()
        .await
        .expect("send");
    assert_eq!(answer.status(), 200);
    let headers = answer.headers();
    // Every identity header is there, empty when there is nothing to say (this key has
    // no owner), so a proxy's copy replaces a client's forged one.
    assert_eq!(headers["remote-user"], "");
    assert!(!headers["x-scopes"].is_empty(), "{headers:?}");
    let key_id = headers["x-keygate-key-id"]
        .to_str()
        .expect("text")
        .to_owned();
    assert!(!key_id.is_empty());
    assert!(headers.get("x-keygate-user").is_none(), "{headers:?}");
    assert!(headers.get("x-keygate-scopes").is_none(), "{headers:?}");

    let echoed: Value = http
        .get(format!("{}/files/a.txt", running.base))
        .header("X-API-Key", &key)
        .header("Remote-User", "admin")
        .header("Remote_User", "admin")
        .header("X-Scopes", "everything")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(echoed["app"], "stub", "{echoed}");
    let headers = &echoed["headers"];
    assert!(headers.get("remote-user").is_none(), "{headers}");
    assert!(headers.get("remote_user").is_none(), "{headers}");
    assert_eq!(headers["x-keygate-key-id"], key_id.as_str(), "{headers}");
    assert_ne!(headers["x-scopes"], "everything", "{headers}");
    assert!(headers.get("x-scopes").is_some(), "{headers}");
    assert!(headers.get("x-api-key").is_none(), "{headers}");

    // A name the server could not use is refused before it starts.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[identity_headers]\nuser = \"Authorization\"\n").expect("config");
    let output = keygate()
        .args(["config", "check", "--config", bad.to_str().expect("path")])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("identity_headers.user"), "{said}");
}
