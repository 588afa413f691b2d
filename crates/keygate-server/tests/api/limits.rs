//! Plans, rate limits (GCRA), monthly quotas and the RateLimit response fields.

use super::*;

impl TestServer {
    pub(super) async fn plan(&self, body: Value) -> String {
        let (status, plan) = self.admin_json(Method::POST, "/api/v1/plans", body).await;
        assert_eq!(status, StatusCode::CREATED, "{plan}");
        plan["id"].as_str().expect("id").to_string()
    }

    /// A key on a plan of two requests a minute.
    pub(super) async fn key_on_two_a_minute(&self) -> String {
        let plan = self
            .plan(json!({"name": "small", "rate_limits": [{"limit": 2, "period_seconds": 60}]}))
            .await;
        self.create_key(json!({"name": "metered", "plan": plan}))
            .await
            .0
    }

    async fn whoami_response(&self, key: &str) -> reqwest::Response {
        self.request(Method::GET, "/api/v1/whoami")
            .bearer_auth(key)
            .send()
            .await
            .expect("send")
    }
}

pub(super) fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn plans_are_managed_and_validated() {
    let server = TestServer::start().await;
    let id = server
        .plan(json!({"name": "free", "rate_limits": [{"limit": 10, "period_seconds": 60}, {"limit": 1000, "period_seconds": 86400}], "monthly_quota": 1000, "overage": "block"}))
        .await;
    let (status, plan) = server.admin_get(&format!("/api/v1/plans/{id}")).await;
    assert_eq!(
        (
            status,
            plan["monthly_quota"].as_u64(),
            plan["overage"].as_str()
        ),
        (StatusCode::OK, Some(1000), Some("block"))
    );
    assert_eq!(plan["rate_limits"].as_array().expect("limits").len(), 2);
    let (_, list) = server.admin_get("/api/v1/plans").await;
    assert_eq!(list["plans"].as_array().expect("plans").len(), 1);
    let cases = [
        json!({"name": "free"}),
        json!({"name": "x", "rate_limits": [{"limit": 0, "period_seconds": 60}]}),
        json!({"name": "x", "rate_limits": [{"limit": 1, "period_seconds": 0}]}),
        json!({"name": "x", "overage": "sometimes"}),
        json!({"name": ""}),
        json!({"name": "x", "rate_limits": [{"limit": 1, "period_seconds": 60, "colour": 1}]}),
    ];
    for body in cases {
        let (status, error) = server
            .admin_json(Method::POST, "/api/v1/plans", body.clone())
            .await;
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::CONFLICT,
            "{body}: {status} {error}"
        );
    }
    let (status, patched) = server
        .admin_json(
            Method::PATCH,
            &format!("/api/v1/plans/{id}"),
            json!({"monthly_quota": null, "overage": "allow"}),
        )
        .await;
    assert_eq!(
        (
            status,
            &patched["monthly_quota"],
            patched["overage"].as_str()
        ),
        (StatusCode::OK, &Value::Null, Some("allow"))
    );
    // A key on an unknown plan is refused; users may not manage plans.
    let (status, body) = server
        .admin_json(
            Method::POST,
            "/api/v1/keys",
            json!({"name": "k", "plan": "01900000-0000-7000-8000-000000000000"}),
        )
        .await;
    assert_error(status, &body, 400, "invalid_request", "");
    server.add_user("pat", "user").await;
    let (jwt, _) = server.tokens("pat", "pat-password-123").await;
    let (status, body) = server.call(Method::GET, "/api/v1/plans", &jwt, None).await;
    assert_error(status, &body, 403, "insufficient_permissions", "");
}

#[tokio::test]
async fn the_eleventh_request_in_a_minute_is_refused_with_the_right_wait() {
    let server = TestServer::start().await;
    let plan = server.plan(json!({"name": "free", "rate_limits": [{"limit": 10, "period_seconds": 60}], "monthly_quota": 1000})).await;
    let (key, _) = server
        .create_key(json!({"name": "metered", "plan": plan}))
        .await;
    for i in 0..10 {
        let response = server.whoami_response(&key).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "ratelimit-policy"),
            r#""minute";q=10;w=60, "month";q=1000;w=2592000"#
        );
        let state = header(&response, "ratelimit");
        assert!(
            state.starts_with(&format!(r#""minute";r={};t="#, 9 - i)),
            "{state}"
        );
        assert!(
            state.contains(&format!(r#""month";r={};"#, 999 - i)),
            "{state}"
        );
    }
    let response = server.whoami_response(&key).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&response, "retry-after"), "6");
    assert!(header(&response, "ratelimit").starts_with(r#""minute";r=0;"#));
    let (status, body) = read(response).await;
    assert_error(status, &body, 429, "rate_limited", &key);
    // The refused request did not spend quota.
    let (_, shown) = server.admin_get("/api/v1/keys?limit=10").await;
    let metered = shown["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["name"] == "metered")
        .expect("key")
        .clone();
    assert_eq!(metered["quota_used"], 10);
    // The verify API reports the same.
    let verdict = server.verify(json!({"key": key})).await;
    assert_eq!(
        (verdict["code"].as_str(), verdict["retry_after"].as_u64()),
        (Some("RATE_LIMITED"), Some(6))
    );
    assert_eq!(verdict["limits"][0]["name"], "minute");
}

#[tokio::test]
async fn monthly_quota_blocks_or_counts_overage() {
    let server = TestServer::start().await;
    let block = server
        .plan(json!({"name": "block", "monthly_quota": 3, "overage": "block"}))
        .await;
    let allow = server
        .plan(json!({"name": "allow", "monthly_quota": 3, "overage": "allow"}))
        .await;
    let (blocked, _) = server.create_key(json!({"name": "b", "plan": block})).await;
    let (allowed, created) = server.create_key(json!({"name": "a", "plan": allow})).await;
    for _ in 0..3 {
        assert_eq!(server.whoami(&blocked).await.0, StatusCode::OK);
    }
    let response = server.whoami_response(&blocked).await;
    let retry: u64 = header(&response, "retry-after").parse().expect("seconds");
    assert!(
        retry > 0 && retry <= 31 * 86_400,
        "to the start of next month: {retry}"
    );
    let (status, body) = read(response).await;
    assert_error(status, &body, 429, "quota_exceeded", &blocked);
    for _ in 0..5 {
        assert_eq!(server.whoami(&allowed).await.0, StatusCode::OK);
    }
    let (_, shown) = server
        .admin_get(&format!(
            "/api/v1/keys/{}",
            created["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(shown["quota_used"], 5, "the overage is counted for billing");
    // A key's own limits replace its plan's: here, a bigger quota.
    let id = server.whoami(&blocked).await.1;
    assert_eq!(id["error"]["code"], "quota_exceeded");
    let (_, list) = server.admin_get("/api/v1/keys?limit=10").await;
    let b_id = list["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["name"] == "b")
        .expect("b")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (status, _) = server
        .admin_json(
            Method::PATCH,
            &format!("/api/v1/keys/{b_id}"),
            json!({"limits": {"monthly_quota": 10}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.whoami(&blocked).await.0, StatusCode::OK);
    // Changing the plan reaches its keys at once.
    server
        .admin_json(
            Method::PATCH,
            &format!("/api/v1/plans/{allow}"),
            json!({"overage": "block"}),
        )
        .await;
    assert_eq!(
        server.whoami(&allowed).await.1["error"]["code"],
        "quota_exceeded"
    );
}

#[tokio::test]
async fn limits_are_exact_under_concurrency_and_survive_a_restart() {
    let server = TestServer::start().await;
    let plan = server
        .plan(json!({"name": "fifty", "monthly_quota": 50}))
        .await;
    let (key, _) = server
        .create_key(json!({"name": "busy", "plan": plan}))
        .await;
    // Eight clients, ten requests each, at once: exactly fifty are served.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let requests: Vec<_> = (0..10)
                .map(|_| {
                    server
                        .request(Method::GET, "/api/v1/whoami")
                        .bearer_auth(&key)
                })
                .collect();
            tokio::spawn(async move {
                let mut served = 0;
                for request in requests {
                    if request.send().await.expect("send").status() == StatusCode::OK {
                        served += 1;
                    }
                }
                served
            })
        })
        .collect();
    let mut served = 0;
    for client in clients {
        served += client.await.expect("client");
    }
    assert_eq!(served, 50);
    // The month's use is not forgotten across a restart.
    let server = server.restart().await;
    let (status, body) = server.whoami(&key).await;
    assert_error(status, &body, 429, "quota_exceeded", &key);
}

#[tokio::test]
async fn ip_allowlists_and_trusted_proxies() {
    let server = TestServer::start().await;
    let (office, _) = server
        .create_key(json!({"name": "office", "allowed_cidrs": ["10.0.0.0/8"]}))
        .await;
    let (local, created) = server
        .create_key(json!({"name": "local", "allowed_cidrs": ["127.0.0.0/8", "::1/128"]}))
        .await;
    assert_eq!(created["allowed_cidrs"], json!(["127.0.0.0/8", "::1/128"]));
    let (status, body) = server.whoami(&office).await;
    assert_error(status, &body, 403, "ip_not_allowed", &office);
    assert!(
        body["error"]["hint"]
            .as_str()
            .expect("hint")
            .contains("127.0.0.1")
    );
    assert_eq!(server.whoami(&local).await.0, StatusCode::OK);
    // A forwarded-for header from an untrusted peer changes nothing.
    let response = server
        .request(Method::GET, "/api/v1/whoami")
        .bearer_auth(&office)
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // The verify API takes the client's address from the application.
    assert_eq!(
        server
            .verify(json!({"key": office, "ip": "10.9.9.9"}))
            .await["code"],
        "VALID"
    );
    assert_eq!(
        server
            .verify(json!({"key": office, "ip": "192.0.2.1"}))
            .await["code"],
        "IP_NOT_ALLOWED"
    );
    assert_eq!(
        server.verify(json!({"key": office})).await["code"],
        "IP_NOT_ALLOWED"
    );
    let (status, body) = server
        .admin_json(
            Method::POST,
            "/api/v1/keys",
            json!({"name": "bad", "allowed_cidrs": ["10.0.0.0/33"]}),
        )
        .await;
    assert_error(status, &body, 400, "invalid_request", "");
    // Behind a trusted proxy, its header names the client.
    let behind = TestServer::start_with(ServerConfig {
        trusted_proxies: vec!["127.0.0.1/32".parse().expect("net")],
        ..test_config()
    })
    .await;
    let (office, _) = behind
        .create_key(json!({"name": "office", "allowed_cidrs": ["10.0.0.0/8"]}))
        .await;
    let response = behind
        .request(Method::GET, "/api/v1/whoami")
        .bearer_auth(&office)
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let response = behind
        .request(Method::GET, "/api/v1/whoami")
        .bearer_auth(&office)
        .header("x-forwarded-for", "10.1.2.3, 192.0.2.50")
        .send()
        .await
        .expect("send");
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "the right-most untrusted hop is the client"
    );
}

#[tokio::test]
async fn a_key_rotates_itself_without_downtime() {
    let server = TestServer::start().await;
    let plan = server
        .plan(json!({"name": "p", "monthly_quota": 100}))
        .await;
    let (old, created) = server
        .create_key(json!({"name": "client", "scopes": ["read"], "plan": plan}))
        .await;
    let response = server
        .request(Method::POST, "/api/v1/keys/rotate")
        .bearer_auth(&old)
        .json(&json!({"grace_seconds": 600}))
        .send()
        .await
        .expect("send");
    let (status, rotated) = read(response).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["key"].as_str().expect("key").to_string();
    assert_eq!(
        (rotated["scopes"].clone(), rotated["plan"].clone()),
        (json!(["read"]), json!(plan))
    );
    assert_eq!(rotated["previous"]["id"], created["id"]);
    assert_eq!(
        server.whoami(&old).await.0,
        StatusCode::OK,
        "the old key works during the grace"
    );
    assert_eq!(server.whoami(&new).await.0, StatusCode::OK);
    // More grace than the instance allows, a JWT, no body at all.
    let response = server
        .request(Method::POST, "/api/v1/keys/rotate")
        .bearer_auth(&new)
        .json(&json!({"grace_seconds": 10_000_000}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (jwt, _) = server.tokens("admin", ADMIN_PASSWORD).await;
    let (status, _) = server
        .call(Method::POST, "/api/v1/keys/rotate", &jwt, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let response = server
        .request(Method::POST, "/api/v1/keys/rotate")
        .bearer_auth(&new)
        .send()
        .await
        .expect("send");
    let (status, again) = read(response).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert!(again["previous"]["expires_at"].is_string());
}

#[tokio::test]
async fn usage_numbers_match_the_requests_made() {
    let server = TestServer::start().await;
    // The minute the requests begin in (they are counted in it or later).
    let began = {
        let now = time::OffsetDateTime::now_utc();
        now.replace_second(0)
            .and_then(|t| t.replace_nanosecond(0))
            .expect("minute")
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format")
    };
    let plan = server
        .plan(json!({"name": "metered", "rate_limits": [{"limit": 30, "period_seconds": 3600}]}))
        .await;
    let (key, created) = server
        .create_key(json!({"name": "billed", "plan": plan}))
        .await;
    let key_id = created["id"].as_str().expect("id").to_string();
    // 8 concurrent clients, 5 requests each: 30 valid, 10 rate limited.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let requests: Vec<_> = (0..5)
                .map(|_| {
                    server
                        .request(Method::GET, "/api/v1/whoami")
                        .bearer_auth(&key)
                })
                .collect();
            tokio::spawn(async move {
                for request in requests {
                    request.send().await.expect("send");
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("client");
    }
    // A denied decision: the key lacks a scope the verify API asks for.
    assert_eq!(
        server
            .verify(json!({"key": key, "scopes": ["admin:x"]}))
            .await["code"],
        "INSUFFICIENT_PERMISSIONS"
    );
    let expected =
        json!({"valid": 30, "rate_limited": 10, "quota_exceeded": 0, "denied": 1, "total": 41});
    let totals = |report: &Value| {
        let rows = report["rows"].as_array().expect("rows");
        let sum = |field: &str| {
            rows.iter()
                .map(|r| r[field].as_u64().expect("count"))
                .sum::<u64>()
        };
        json!({"valid": sum("valid"), "rate_limited": sum("rate_limited"), "quota_exceeded": sum("quota_exceeded"), "denied": sum("denied"), "total": sum("total")})
    };
    // Counted but not flushed yet: already in the numbers.
    let (status, report) = server
        .admin_get(&format!("/api/v1/keys/{key_id}/usage?granularity=minute"))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(totals(&report), expected);
    for granularity in ["hour", "day", "month"] {
        let (_, report) = server
            .admin_get(&format!(
                "/api/v1/usage?plan_id={plan}&granularity={granularity}"
            ))
            .await;
        assert_eq!(totals(&report), expected, "{granularity}");
        assert_eq!(report["rows"].as_array().expect("rows").len(), 1);
    }
    // A graceful stop loses nothing: the same numbers come back from the store.
    let server = server.restart().await;
    let (_, report) = server
        .admin_get(&format!("/api/v1/keys/{key_id}/usage?granularity=minute"))
        .await;
    assert_eq!(totals(&report), expected);
    // A window that starts inside an hour keeps that hour's stored counts from its start.
    let (_, report) = server
        .admin_get(&format!(
            "/api/v1/keys/{key_id}/usage?granularity=hour&from={}",
            began.replace(':', "%3A").replace('+', "%2B")
        ))
        .await;
    assert_eq!(totals(&report), expected, "{report}");
    // CSV for billing jobs.
    let response = server
        .request(
            Method::GET,
            &format!("/api/v1/usage?key_id={key_id}&format=csv"),
        )
        .bearer_auth(&server.admin)
        .send()
        .await
        .expect("send");
    assert!(header(&response, "content-type").starts_with("text/csv"));
    let csv = response.text().await.expect("csv");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("start,valid,rate_limited,quota_exceeded,denied,total")
    );
    assert!(
        lines.next().expect("a row").ends_with(",30,10,0,1,41"),
        "{csv}"
    );
    // Bad ranges, and other users' numbers, are refused.
    for bad in [
        "granularity=week",
        "from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z",
        "from=yesterday",
        "format=xml",
        "granularity=minute&from=2020-01-01T00:00:00Z",
    ] {
        let (status, _) = server.admin_get(&format!("/api/v1/usage?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let other = server.add_user("uma", "user").await;
    let (jwt, _) = server.tokens("uma", "uma-password-123").await;
    let (status, _) = server
        .call(
            Method::GET,
            &format!("/api/v1/keys/{key_id}/usage"),
            &jwt,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, mine) = server.call(Method::GET, "/api/v1/usage", &jwt, None).await;
    assert_eq!(
        (status, mine["rows"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0))
    );
    let (status, _) = server
        .call(
            Method::GET,
            &format!("/api/v1/usage?user_id={}", uuid::Uuid::now_v7()),
            &jwt,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server
        .call(
            Method::GET,
            &format!("/api/v1/usage?user_id={other}"),
            &jwt,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn free_keys_for_self_service_sign_up() {
    // Off by default: the endpoint says so.
    let off = TestServer::start().await;
    let (status, body) = off
        .post_json("/api/v1/keys/free", json!({"email": "a@example.com"}))
        .await;
    assert_error(status, &body, 404, "not_found", "");

    let server = TestServer::start_with(ServerConfig {
        free_key_plan: Some("free".into()),
        free_keys_per_address: 3,
        ..test_config()
    })
    .await;
    server.plan(json!({"name": "free", "rate_limits": [{"limit": 10, "period_seconds": 60}], "monthly_quota": 1000})).await;
    let (status, free) = server
        .post_json(
            "/api/v1/keys/free",
            json!({"email": "Ana+test@Example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{free}");
    assert_eq!(
        (free["plan"].as_str(), free["monthly_limit"].as_u64()),
        (Some("free"), Some(1000))
    );
    assert!(
        free["message"]
            .as_str()
            .expect("message")
            .contains("not be shown again")
    );
    let key = free["api_key"].as_str().expect("key").to_string();
    let response = server
        .request(Method::GET, "/api/v1/whoami")
        .bearer_auth(&key)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, "ratelimit-policy").contains(r#""minute";q=10;w=60"#));
    // One per normalised address.
    let (status, body) = server
        .post_json("/api/v1/keys/free", json!({"email": "ana@example.com"}))
        .await;
    assert_error(status, &body, 409, "conflict", "");
    let (status, body) = server
        .post_json("/api/v1/keys/free", json!({"email": "not-an-email"}))
        .await;
    assert_error(status, &body, 400, "invalid_request", "");
    // Per-address throttling (3 per hour here; the conflict above counted too).
    assert_eq!(
        server
            .post_json("/api/v1/keys/free", json!({"email": "bo@example.com"}))
            .await
            .0,
        StatusCode::CREATED
    );
    let (status, body) = server
        .post_json("/api/v1/keys/free", json!({"email": "cy@example.com"}))
        .await;
    assert_error(status, &body, 429, "rate_limited", "");
}

#[tokio::test]
async fn rotation_does_not_reset_limits() {
    let server = TestServer::start().await;
    let plan = server
        .plan(json!({"name": "three", "monthly_quota": 3}))
        .await;
    let (key, _) = server.create_key(json!({"name": "k", "plan": plan})).await;
    for _ in 0..3 {
        assert_eq!(server.whoami(&key).await.0, StatusCode::OK);
    }
    let response = server
        .request(Method::POST, "/api/v1/keys/rotate")
        .bearer_auth(&key)
        .json(&json!({"grace_seconds": 60}))
        .send()
        .await;
    let (status, body) = read(response.expect("send")).await;
    // The rotate call itself is refused: the quota is spent.
    assert_error(status, &body, 429, "quota_exceeded", &key);
    let id = server.whoami(&server.admin).await.1;
    assert_eq!(id["auth"], "api_key");
    let (_, list) = server.admin_get("/api/v1/keys?limit=10").await;
    let key_id = list["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["name"] == "k")
        .expect("k")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (status, rotated) = server
        .admin_json(
            Method::POST,
            &format!("/api/v1/keys/{key_id}/rotate"),
            json!({"grace_seconds": 60}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["key"].as_str().expect("key").to_string();
    let (status, body) = server.whoami(&new).await;
    assert_error(status, &body, 429, "quota_exceeded", &new);
    // And still after a restart.
    let server = server.restart().await;
    let (status, body) = server.whoami(&new).await;
    assert_error(status, &body, 429, "quota_exceeded", &new);
}

#[tokio::test]
async fn forward_auth_for_reverse_proxies() {
    use keygate_core::route::RoutePolicy;
    let routes: Vec<RoutePolicy> = serde_json::from_value(json!([
        {"path": "/health", "access": "public"},
        {"path": "/files/*", "methods": ["DELETE"], "scopes": ["files:delete"]},
        {"path": "/files/*", "scopes": ["files:read"]},
        {"path": "/sites/*", "project": "required"},
    ]))
    .expect("routes");
    let server = TestServer::start_with(ServerConfig {
        routes,
        ..test_config()
    })
    .await;
    let plan = server
        .plan(json!({"name": "two", "rate_limits": [{"limit": 2, "period_seconds": 60}]}))
        .await;
    let (reader, created) = server
        .create_key(json!({"name": "reader", "scopes": ["files:read"], "plan": plan}))
        .await;
    let ask = |method: &str, uri: &str, key: Option<&str>| {
        let mut request = server
            .request(Method::GET, "/api/v1/forward-auth")
            .header("X-Forwarded-Method", method)
            .header("X-Forwarded-Uri", uri);
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        request.send()
    };
    // Public route: no credential, empty 200.
    let response = ask("GET", "/health", None).await.expect("send");
    assert_eq!(
        (response.status(), header(&response, "content-length")),
        (StatusCode::OK, "0".to_string())
    );
    // Allowed, with identity headers and an empty body.
    let response = ask("GET", "/files/a.txt", Some(&reader))
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-length"), "0");
    assert_eq!(
        header(&response, "x-keygate-key-id"),
        created["id"].as_str().expect("id")
    );
    assert_eq!(header(&response, "x-keygate-scopes"), "files:read");
    assert!(header(&response, "ratelimit").starts_with(r#""minute";r=1;"#));
    assert!(response.text().await.expect("body").is_empty());
    // The route's scopes, per method.
    let (status, body) = read(
        ask("DELETE", "/files/a.txt", Some(&reader))
            .await
            .expect("send"),
    )
    .await;
    assert_error(status, &body, 403, "insufficient_permissions", &reader);
    // The original path is checked as the upstream will resolve it: a raw URI that dots
    // its way out of a public route is the protected route it lands on.
    let (status, body) = read(
        ask("GET", "/health/../files/a.txt", None)
            .await
            .expect("send"),
    )
    .await;
    assert_error(status, &body, 401, "missing_credentials", &reader);
    let (status, _) = read(
        ask("GET", "/health/%2e%2e/%2e%2e/x", None)
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // No credential on a protected route; a project-scoped route without a project.
    let (status, body) = read(ask("GET", "/files/a.txt", None).await.expect("send")).await;
    assert_error(status, &body, 401, "missing_credentials", "");
    let (status, body) = read(ask("GET", "/sites/1", Some(&reader)).await.expect("send")).await;
    assert_error(status, &body, 400, "project_id_required", &reader);
    // Rate limited (2 per minute; one spent above, one refused by scope did not count).
    assert_eq!(
        ask("GET", "/files/b", Some(&reader))
            .await
            .expect("send")
            .status(),
        StatusCode::OK
    );
    let response = ask("GET", "/files/c", Some(&reader)).await.expect("send");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&response, "retry-after"), "30");
    assert!(header(&response, "ratelimit").starts_with(r#""minute";r=0;"#));
    // Like every answer, a refusal carries the request id, in the header and the body.
    let response = server
        .request(Method::GET, "/api/v1/forward-auth")
        .header("X-Forwarded-Uri", "/files/d")
        .header("X-Request-Id", "trace-42")
        .send()
        .await
        .expect("send");
    assert_eq!(header(&response, "x-request-id"), "trace-42");
    let (status, body) = read(response).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["request_id"], "trace-42");
    // Envoy's form: the original path appended to the endpoint's path.
    let response = server
        .request(Method::GET, "/api/v1/forward-auth/health")
        .send()
        .await
        .expect("send");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "public route reached through the path suffix"
    );
    let response = server
        .request(Method::GET, "/api/v1/forward-auth/files/x")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // nginx's X-Original-URI works too, and the apikey parameter of the original URI when on.
    server
        .admin_json(
            Method::PATCH,
            "/api/v1/settings",
            json!({"query_param_enabled": true}),
        )
        .await;
    let response = server
        .request(Method::POST, "/api/v1/forward-auth")
        .header(
            "X-Original-URI",
            format!("/anything?apikey={}", server.admin),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn forward_auth_refuses_originals_it_would_have_to_guess() {
    use keygate_core::route::RoutePolicy;
    let routes: Vec<RoutePolicy> = serde_json::from_value(json!([
        {"path": "/health", "access": "public"},
    ]))
    .expect("routes");
    let server = TestServer::start_with(ServerConfig {
        routes,
        ..test_config()
    })
    .await;
    let ask = |headers: &[(&str, &[u8])]| {
        let mut request = server.request(Method::GET, "/api/v1/forward-auth");
        for (name, value) in headers {
            request = request.header(
                *name,
                axum::http::HeaderValue::from_bytes(value).expect("header value"),
            );
        }
        request.send()
    };
    // The same original under both names is one original: the public route answers.
    let response = ask(&[
        ("X-Forwarded-Uri", b"/health"),
        ("X-Original-URI", b"/health"),
        ("X-Forwarded-Method", b"GET"),
        ("X-Original-Method", b"GET"),
    ])
    .await
    .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    // Two different ones (a client's own beside the proxy's), in either order or under one
    // name twice; an unreadable one; one that is no URI: refused, never guessed.
    for headers in [
        &[
            ("X-Forwarded-Uri", &b"/health"[..]),
            ("X-Original-URI", b"/admin"),
        ][..],
        &[
            ("X-Original-URI", b"/health"),
            ("X-Forwarded-Uri", b"/admin"),
        ],
        &[
            ("X-Forwarded-Uri", b"/health"),
            ("X-Forwarded-Uri", b"/admin"),
        ],
        &[
            ("X-Forwarded-Uri", b"/health"),
            ("X-Forwarded-Method", b"GET"),
            ("X-Original-Method", b"DELETE"),
        ],
        &[("X-Forwarded-Uri", b"/health\xff")],
        &[("X-Forwarded-Uri", b"::not a uri::")],
    ] {
        let (status, body) = read(ask(headers).await.expect("send")).await;
        assert_error(status, &body, 400, "invalid_request", "");
    }
    // Envoy's form, the path after /api/v1/forward-auth, is one more original.
    for (uri, status) in [
        ("/health", StatusCode::OK),
        ("/admin", StatusCode::BAD_REQUEST),
    ] {
        let response = server
            .request(Method::GET, "/api/v1/forward-auth/health")
            .header("X-Forwarded-Uri", uri)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), status, "{uri}");
    }
}

#[tokio::test]
async fn forward_auth_reads_the_original_host_for_host_routes() {
    use keygate_core::route::RoutePolicy;
    let routes: Vec<RoutePolicy> = serde_json::from_value(json!([
        {"path": "/", "hosts": ["status.example.com"], "access": "public"},
    ]))
    .expect("routes");
    let server = TestServer::start_with(ServerConfig {
        routes,
        ..test_config()
    })
    .await;
    for (headers, status) in [
        (
            &[("X-Forwarded-Host", "status.example.com:443")][..],
            StatusCode::OK,
        ),
        // The same host twice, in one line or two, is one host.
        (
            &[(
                "X-Forwarded-Host",
                "status.example.com, status.example.com:443",
            )],
            StatusCode::OK,
        ),
        // No X-Forwarded-Host (Envoy): the Host the proxy asks with.
        (&[("Host", "Status.Example.com")], StatusCode::OK),
        // X-Forwarded-Host names the client's host when both are there.
        (
            &[
                ("X-Forwarded-Host", "api.example.com"),
                ("Host", "status.example.com"),
            ],
            StatusCode::UNAUTHORIZED,
        ),
        (&[], StatusCode::UNAUTHORIZED),
        // Two hosts (a client's own beside the proxy's), or one that cannot be read: refused.
        (
            &[("X-Forwarded-Host", "status.example.com, api.example.com")],
            StatusCode::BAD_REQUEST,
        ),
        (
            &[
                ("X-Forwarded-Host", "api.example.com"),
                ("X-Forwarded-Host", "status.example.com"),
            ],
            StatusCode::BAD_REQUEST,
        ),
        (
            &[("X-Forwarded-Host", "[status.example.com]")],
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let mut request = server
            .request(Method::GET, "/api/v1/forward-auth")
            .header("X-Forwarded-Uri", "/page");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), status, "{headers:?}");
    }
}

#[tokio::test]
async fn forward_auth_answers_carry_the_keys_rate_limit_fields() {
    let server = TestServer::start().await;
    let key = server.key_on_two_a_minute().await;
    let ask = || {
        server
            .request(Method::GET, "/api/v1/forward-auth")
            .header("x-api-key", &key)
            .header("x-forwarded-uri", "/files/a.txt")
            .send()
    };
    for remaining in [1, 0] {
        let response = ask().await.expect("send");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "ratelimit-policy"),
            r#""minute";q=2;w=60"#
        );
        let state = header(&response, "ratelimit");
        assert!(
            state.starts_with(&format!(r#""minute";r={remaining};"#)),
            "{state}"
        );
        assert!(header(&response, "x-request-id").starts_with("req_"));
    }
    let response = ask().await.expect("send");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(!header(&response, "retry-after").is_empty());
    assert!(header(&response, "ratelimit").starts_with(r#""minute";r=0;"#));
    let (status, body) = read(response).await;
    assert_error(status, &body, 429, "rate_limited", &key);
}
