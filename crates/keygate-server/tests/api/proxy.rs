//! Reverse-proxy mode against a stub upstream on loopback.

use super::limits::header;
use super::*;
use keygate_core::route::RoutePolicy;
use keygate_server::config::UpstreamConfig;
use std::collections::HashSet;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the stub upstream saw.
#[derive(Default)]
struct Seen {
    requests: usize,
    peers: HashSet<std::net::SocketAddr>,
}

/// A stub app: `/echo*` answers with what it received, `/slow` never answers,
/// `/status/{code}` answers that status (with an `ETag`), `/big` streams 16 MiB, `/ws`
/// switches protocols and echoes bytes.
async fn stub_upstream() -> (String, Arc<Mutex<Seen>>) {
    use axum::extract::{ConnectInfo, Request};
    let seen = Arc::new(Mutex::new(Seen::default()));
    let recorder = Arc::clone(&seen);
    let app = axum::Router::new()
        .route(
            "/slow",
            axum::routing::any(std::future::pending::<&'static str>),
        )
        .route(
            "/status/{code}",
            axum::routing::get(
                |axum::extract::Path(code): axum::extract::Path<u16>| async move {
                    let status = axum::http::StatusCode::from_u16(code).expect("status");
                    let body = if status.as_u16() == 204 || status.as_u16() == 304 {
                        axum::body::Body::empty()
                    } else {
                        axum::body::Body::from(format!("the app's own {code}"))
                    };
                    axum::http::Response::builder()
                        .status(status)
                        .header("etag", "\"v1\"")
                        .body(body)
                        .expect("response")
                },
            ),
        )
        .route(
            "/big",
            axum::routing::get(|| async {
                // 16 MiB in 64 KiB parts, streamed.
                let parts = futures_util::stream::iter(
                    (0..256).map(|_| Ok::<_, std::convert::Infallible>(vec![b'z'; 64 * 1024])),
                );
                axum::body::Body::from_stream(parts)
            }),
        )
        .route(
            "/ws",
            axum::routing::get(|mut request: Request| async move {
                let on_upgrade = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    let Ok(upgraded) = on_upgrade.await else {
                        return;
                    };
                    let mut io = hyper_util::rt::TokioIo::new(upgraded);
                    let mut buf = [0u8; 64];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                axum::http::Response::builder()
                    .status(101)
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .body(axum::body::Body::empty())
                    .expect("response")
            }),
        )
        .fallback(
            move |ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>, request: Request| {
                let recorder = Arc::clone(&recorder);
                async move {
                    {
                        let mut seen = recorder.lock().expect("lock");
                        seen.requests += 1;
                        seen.peers.insert(peer);
                    }
                    let (parts, body) = request.into_parts();
                    let body = axum::body::to_bytes(body, usize::MAX)
                        .await
                        .unwrap_or_default();
                    let headers: serde_json::Map<String, Value> = parts
                        .headers
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().to_string(),
                                Value::String(v.to_str().unwrap_or("?").to_string()),
                            )
                        })
                        .collect();
                    (
                        [("x-upstream", "stub"), ("connection", "x-private")],
                        axum::Json(json!({
                            "method": parts.method.as_str(),
                            "uri": parts.uri.to_string(),
                            "headers": headers,
                            "body": String::from_utf8_lossy(&body),
                        })),
                    )
                }
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });
    (base, seen)
}

async fn proxy_server(upstream: &str, routes: Value) -> TestServer {
    let mut upstream = UpstreamConfig::new(upstream).expect("upstream");
    upstream.timeout = Duration::from_millis(300);
    let routes: Vec<RoutePolicy> = serde_json::from_value(routes).expect("routes");
    TestServer::start_with(ServerConfig {
        upstream: Some(upstream),
        routes,
        ..test_config()
    })
    .await
}

#[tokio::test]
async fn proxy_checks_strips_and_forwards() {
    let (upstream, seen) = stub_upstream().await;
    let server = proxy_server(
        &upstream,
        json!([
            {"path": "/echo/public", "access": "public"},
            {"path": "/echo/admin", "scopes": ["app:admin"]},
            {"path": "/api/v1/systeminfo", "upstream": true},
        ]),
    )
    .await;
    let (key, created) = server.create_key(json!({"name": "client"})).await;
    let key_id = created["id"].as_str().expect("id");
    server
        .admin_json(
            Method::PATCH,
            "/api/v1/settings",
            json!({"query_param_enabled": true}),
        )
        .await;

    // No credential: refused by keygate, the app never sees the request.
    let (status, body) = read(
        server
            .request(Method::GET, "/echo/data")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "missing_credentials");
    assert_eq!(seen.lock().expect("lock").requests, 0);

    // Allowed: the credential is stripped, identity headers are added, a client's own
    // identity headers are dropped, the body and method pass unchanged.
    let response = server
        .request(Method::POST, "/echo/data?a=1&b=%20two")
        .header("X-API-Key", &key)
        .header("X-Keygate-User", "forged")
        .header("X-Forwarded-For", "203.0.113.1")
        .header("Host", "app.example")
        .body("hello upstream")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get("x-upstream").map(|v| v.as_bytes()),
        Some(&b"stub"[..])
    );
    // The upstream's hop-by-hop `Connection: x-private` is not passed back.
    assert!(response.headers().get("x-private").is_none());
    let echoed: Value = response.json().await.expect("json");
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["uri"], "/echo/data?a=1&b=%20two");
    assert_eq!(echoed["body"], "hello upstream");
    let headers = &echoed["headers"];
    assert_eq!(headers["x-keygate-key-id"], key_id);
    assert!(headers.get("x-keygate-user").is_none(), "{headers}");
    assert!(headers.get("x-api-key").is_none(), "{headers}");
    assert_eq!(headers["host"], "app.example");
    assert_eq!(headers["x-forwarded-host"], "app.example");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert!(!echoed.to_string().contains(&key));

    // The query-parameter credential is never forwarded either; an app's own Basic
    // credentials are.
    let echoed: Value = server
        .request(Method::GET, &format!("/echo/q?apikey={key}&page=2"))
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(echoed["uri"], "/echo/q?page=2", "{echoed}");
    assert_eq!(echoed["headers"]["authorization"], "Basic dXNlcjpwYXNz");
    let echoed: Value = server
        .request(Method::GET, "/echo/bearer")
        .bearer_auth(&key)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert!(echoed["headers"].get("authorization").is_none(), "{echoed}");

    // Route policies: public needs nothing; a scope the key lacks is a 403.
    let response = server
        .request(Method::GET, "/echo/public")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let (status, body) = read(
        server
            .request(Method::GET, "/echo/admin")
            .header("X-API-Key", &key)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::FORBIDDEN, "insufficient_permissions")
    );

    // A path in any but its canonical form is refused: it could be checked as one route
    // and served by the upstream as another.
    for path in [
        "/echo/public/../admin",
        "/echo/public/%2e%2e/admin",
        "//echo/admin",
        "/echo/admin%2fx",
    ] {
        // Over raw TCP: HTTP clients normalise such paths before sending them.
        let head = raw_get(&server.base, path).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{path}: {head}");
    }
    // Identity and address headers a client makes up do not reach the app, whatever
    // their spelling.
    let echoed: Value = server
        .request(Method::GET, "/echo/spoof")
        .header("X-API-Key", &key)
        .header("X_Keygate_User", "forged")
        .header("Forwarded", "for=203.0.113.7")
        .header("X-Real-IP", "203.0.113.7")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let headers = &echoed["headers"];
    for name in ["x_keygate_user", "forwarded", "x-real-ip"] {
        assert!(
            headers.get(name).is_none(),
            "{name} reached the app: {headers}"
        );
    }

    // keygate's own endpoints keep working beside the proxied ones, except a path a
    // route hands to the upstream.
    assert_eq!(server.whoami(&key).await.0, StatusCode::OK);
    let echoed: Value = server
        .request(Method::GET, "/api/v1/systeminfo")
        .header("X-API-Key", &key)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(echoed["uri"], "/api/v1/systeminfo", "{echoed}");

    // Connections to the upstream are pooled and reused.
    let before = seen.lock().expect("lock").peers.len();
    for _ in 0..5 {
        let response = server
            .request(Method::GET, "/echo/again")
            .header("X-API-Key", &key)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::OK);
        response.bytes().await.expect("body");
    }
    assert_eq!(seen.lock().expect("lock").peers.len(), before.max(1));
}

#[tokio::test]
async fn upstream_failures_are_502_and_504() {
    let (upstream, _) = stub_upstream().await;
    let server = proxy_server(&upstream, json!([{"path": "/", "access": "public"}])).await;
    let (status, body) = read(
        server
            .request(Method::GET, "/slow")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
    );
    // With a body too: the timeout counts from its last part.
    let (status, body) = read(
        server
            .request(Method::POST, "/slow")
            .body("a small upload")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
    );

    // Nothing listens on a port taken and released.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let server = proxy_server(
        &format!("http://127.0.0.1:{closed}"),
        json!([{"path": "/", "access": "public"}]),
    )
    .await;
    let (status, body) = read(
        server
            .request(Method::GET, "/anything")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_GATEWAY, "upstream_unavailable")
    );
    assert!(body["error"]["request_id"].is_string());
}

#[tokio::test]
async fn the_upstream_timeout_holds_for_every_request_of_a_connection() {
    let (upstream, _) = stub_upstream().await;
    // 300 ms (see `proxy_server`).
    let server = proxy_server(&upstream, json!([{"path": "/", "access": "public"}])).await;
    // One client, one connection at a time: each request's timeout starts with it.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .expect("client");
    let get = |path: &str| http.get(format!("{}{path}", server.base)).send();
    for round in 0..3 {
        // Fast requests move the deadline on; none of them is cut.
        for _ in 0..3 {
            assert_eq!(get("/echo/a").await.expect("send").status(), StatusCode::OK);
        }
        // A slow one gets its 504 after the whole timeout, counted from its own start,
        // whether the timer last fired or was moved on.
        let started = std::time::Instant::now();
        let response = get("/slow").await.expect("send");
        let waited = started.elapsed();
        assert_eq!(
            response.status(),
            StatusCode::GATEWAY_TIMEOUT,
            "round {round}"
        );
        assert!(
            waited >= Duration::from_millis(300),
            "round {round}: cut after {waited:?}"
        );
    }
}

#[tokio::test]
async fn an_upload_may_take_longer_than_the_upstream_timeout() {
    let (upstream, _) = stub_upstream().await;
    let mut config = UpstreamConfig::new(&upstream).expect("upstream");
    config.timeout = Duration::from_millis(600);
    let routes: Vec<RoutePolicy> =
        serde_json::from_value(json!([{"path": "/", "access": "public"}])).expect("routes");
    let server = TestServer::start_with(ServerConfig {
        upstream: Some(config),
        routes,
        ..test_config()
    })
    .await;
    // A client uploading at its own pace: 8 parts, 150 ms apart, twice the timeout in
    // all. The app reads each part as it comes and answers once it has them all.
    let addr = server.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let part = "x".repeat(1000);
    let head = format!(
        "POST /echo/upload HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        part.len() * 8
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let started = std::time::Instant::now();
    for _ in 0..8 {
        stream.write_all(part.as_bytes()).await.expect("write");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let response = String::from_utf8_lossy(&response);
    assert!(started.elapsed() > Duration::from_millis(600));
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(&"x".repeat(8000)), "{response}");
}

#[tokio::test]
async fn the_apps_statuses_and_large_answers_pass_unchanged() {
    let (upstream, _) = stub_upstream().await;
    let server = proxy_server(&upstream, json!([{"path": "/", "access": "public"}])).await;
    for code in [201u16, 204, 301, 304, 404, 409, 500, 503] {
        let response = server
            .request(Method::GET, &format!("/status/{code}"))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status().as_u16(), code);
        assert_eq!(header(&response, "etag"), "\"v1\"");
        assert!(response.headers().get("x-request-id").is_some());
        let body = response.text().await.expect("body");
        if code == 204 || code == 304 {
            assert_eq!(body, "");
        } else {
            // An app's own errors are its own: not rewritten into keygate's error model.
            assert_eq!(body, format!("the app's own {code}"));
        }
    }
    // HEAD: the app's head, no body.
    let response = server
        .request(Method::HEAD, "/status/200")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "etag"), "\"v1\"");
    assert_eq!(response.bytes().await.expect("body").len(), 0);
    // A large answer streams through whole.
    let response = server
        .request(Method::GET, "/big")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.bytes().await.expect("body");
    assert_eq!(body.len(), 16 * 1024 * 1024);
    assert!(body.iter().all(|b| *b == b'z'));
}

#[tokio::test]
async fn routes_for_one_host_apply_to_that_host_only() {
    let (upstream, _) = stub_upstream().await;
    let server = proxy_server(
        &upstream,
        json!([
            {"path": "/echo", "hosts": ["status.example.com", "*.docs.example.com"], "access": "public"},
        ]),
    )
    .await;
    for (host, status) in [
        ("status.example.com", StatusCode::OK),
        ("STATUS.example.com:8080", StatusCode::OK),
        ("v2.docs.example.com", StatusCode::OK),
        ("docs.example.com", StatusCode::UNAUTHORIZED),
        ("api.example.com", StatusCode::UNAUTHORIZED),
    ] {
        let response = server
            .request(Method::GET, "/echo/page")
            .header("Host", host)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), status, "{host}");
    }
    // A client's own X-Forwarded-Host names no host here: the Host it asked for does.
    let response = server
        .request(Method::GET, "/echo/page")
        .header("X-Forwarded-Host", "status.example.com")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // Two Host headers, none, or a name in brackets (no host a server routes by): refused.
    // An absolute-form request line's authority is not the Host: the host route does not
    // apply.
    let addr = server.base.trim_start_matches("http://");
    for (head, status) in [
        (
            "GET /echo/page HTTP/1.1\r\nHost: status.example.com\r\nHost: api.example.com\r\nConnection: close\r\n\r\n".to_string(),
            "400",
        ),
        (
            "GET /echo/page HTTP/1.1\r\nHost: [status.example.com]\r\nConnection: close\r\n\r\n".to_string(),
            "400",
        ),
        (
            "GET /echo/page HTTP/1.1\r\nConnection: close\r\n\r\n".to_string(),
            "400",
        ),
        (
            format!("GET http://status.example.com/echo/page HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
            "401",
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        let response = String::from_utf8_lossy(&response);
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}")),
            "{head:?}: {response}"
        );
    }
}

#[tokio::test]
async fn keep_credential_and_the_upstreams_own_host() {
    let (upstream, _) = stub_upstream().await;
    let mut config = UpstreamConfig::new(&upstream).expect("upstream");
    config.keep_credential = true;
    config.preserve_host = false;
    let server = TestServer::start_with(ServerConfig {
        upstream: Some(config),
        ..test_config()
    })
    .await;
    let (key, _) = server.create_key(json!({"name": "client"})).await;
    let echoed: Value = server
        .request(Method::GET, "/echo/kept")
        .header("X-API-Key", &key)
        .header("Host", "app.example")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let headers = &echoed["headers"];
    // Told to keep it, keygate passes the credential on.
    assert_eq!(headers["x-api-key"], key.as_str(), "{headers}");
    // The upstream's own Host; the client's is still told in X-Forwarded-Host.
    assert_eq!(
        headers["host"],
        upstream.trim_start_matches("http://"),
        "{headers}"
    );
    assert_eq!(headers["x-forwarded-host"], "app.example");
}

/// Sends `GET path` exactly as given and returns the whole response.
async fn raw_get(base: &str, path: &str) -> String {
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

/// Sends a raw upgrade request and returns the stream and the response head.
async fn raw_upgrade(base: &str, key: Option<&str>) -> (tokio::net::TcpStream, String) {
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let credential = key
        .map(|k| format!("X-API-Key: {k}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{credential}\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.expect("read");
        if n == 0 {
            break;
        }
        response.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&response).into_owned())
}

#[tokio::test]
async fn websocket_upgrades_pass_through_after_auth() {
    let (upstream, _) = stub_upstream().await;
    let server = proxy_server(&upstream, json!([])).await;
    let (key, _) = server.create_key(json!({"name": "ws"})).await;

    let (_, head) = raw_upgrade(&server.base, None).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    let (mut stream, head) = raw_upgrade(&server.base, Some(&key)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    stream
        .write_all(b"ping over the tunnel")
        .await
        .expect("write");
    let mut echoed = vec![0u8; 20];
    stream.read_exact(&mut echoed).await.expect("read");
    assert_eq!(&echoed, b"ping over the tunnel");
}

#[tokio::test]
async fn proxied_requests_carry_the_keys_rate_limit_fields() {
    let (upstream, seen) = stub_upstream().await;
    let server = proxy_server(&upstream, json!([])).await;
    let key = server.key_on_two_a_minute().await;
    for remaining in [1, 0] {
        let response = server
            .request(Method::GET, "/echo/limited")
            .header("x-api-key", &key)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "ratelimit-policy"),
            r#""minute";q=2;w=60"#
        );
        assert!(
            header(&response, "ratelimit").starts_with(&format!(r#""minute";r={remaining};"#)),
            "{}",
            header(&response, "ratelimit")
        );
        assert!(header(&response, "x-request-id").starts_with("req_"));
    }
    let before = seen.lock().expect("lock").requests;
    let response = server
        .request(Method::GET, "/echo/limited")
        .header("x-api-key", &key)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(!header(&response, "retry-after").is_empty());
    assert!(header(&response, "ratelimit").starts_with(r#""minute";r=0;"#));
    let (status, body) = read(response).await;
    assert_error(status, &body, 429, "rate_limited", &key);
    assert_eq!(
        seen.lock().expect("lock").requests,
        before,
        "refused, not forwarded"
    );
}

/// An upstream that answers every request as soon as it has the head, without reading
/// a body, and keeps the connection open (as nginx does when it refuses an upload).
async fn early_answering_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    base
}

#[tokio::test]
async fn an_upload_the_app_answered_early_holds_up_no_other_request() {
    let upstream = early_answering_upstream().await;
    let server = proxy_server(&upstream, json!([])).await;
    let (key, _) = server.create_key(json!({"name": "uploads"})).await;
    // A chunked upload that is never finished; the app answers it at once.
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut uploader = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {key}\r\n\
         Transfer-Encoding: chunked\r\n\r\n4\r\npart\r\n"
    );
    uploader.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"early") {
        let n = uploader.read(&mut byte).await.expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.push(byte[0]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Other requests are not queued behind the unfinished upload (the upstream timeout
    // here is 300 ms: waiting behind it would be a 504).
    for _ in 0..3 {
        let response = server
            .request(Method::GET, "/after")
            .header("x-api-key", &key)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().await.expect("body"), "early");
    }
    drop(uploader);
}

/// Reads one whole HTTP/1.1 answer (with `Content-Length`) from `stream`.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> String {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if seen.len() >= end + 4 + length {
                return String::from_utf8_lossy(&seen).into_owned();
            }
        }
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(
            n > 0,
            "closed mid-answer: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn a_stop_finishes_the_request_in_flight_and_closes_idle_connections() {
    // An upstream that holds its one answer until the test releases it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream = format!("http://{}", listener.local_addr().expect("addr"));
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the proxy hung up");
            seen.extend_from_slice(&chunk[..n]);
        }
        let _ = arrived_tx.send(());
        let _ = released.await;
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nheld";
        stream.write_all(answer).await.expect("answer");
        // Keep the connection open, as a keep-alive upstream would.
        let _ = stream.read(&mut chunk).await;
    });
    let mut config = UpstreamConfig::new(&upstream).expect("upstream");
    config.timeout = Duration::from_secs(30);
    let mut server = TestServer::start_with(ServerConfig {
        upstream: Some(config),
        routes: serde_json::from_value(json!([{"path": "/held", "access": "public"}]))
            .expect("routes"),
        ..test_config()
    })
    .await;
    let address = server.base.trim_start_matches("http://").to_string();

    // A keep-alive connection that has had its answer and sits idle.
    let mut idle = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: keygate\r\n\r\n")
        .await
        .expect("write");
    assert!(read_answer(&mut idle).await.starts_with("HTTP/1.1 200"));
    // A request the upstream has and has not answered yet.
    let held = format!("{}/held", server.base);
    let in_flight = tokio::spawn(async move { Client::new().get(held).send().await });
    arrived.await.expect("the request reached the upstream");

    let stopping = tokio::spawn(async move { server.stop().await });
    // The idle connection is closed at once (end of stream, nothing more to read).
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut rest))
        .await
        .expect("the idle connection was not closed");
    assert!(read.is_ok_and(|n| n == 0), "{rest:?}");
    // The request in flight still gets its answer, and only then does the server stop.
    let _ = release.send(());
    let response = in_flight.await.expect("task").expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("body"), "held");
    stopping.await.expect("stopped");
}

#[tokio::test]
async fn a_routes_rate_limits_replace_the_keys_in_the_proxy_and_forward_auth() {
    let (upstream, seen) = stub_upstream().await;
    let server = proxy_server(
        &upstream,
        json!([
            {"path": "/echo/convert", "rate_limits": [{"limit": 1, "period_seconds": 3600}]},
            {"path": "/echo/status", "rate_limits": []},
        ]),
    )
    .await;
    // The key's own plan: two a minute.
    let key = server.key_on_two_a_minute().await;
    let get = |path: &str| {
        server
            .request(Method::GET, path)
            .header("x-api-key", &key)
            .send()
    };
    // The expensive route: its own one an hour, reported as such.
    let response = get("/echo/convert").await.expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "ratelimit-policy"),
        r#""hour";q=1;w=3600"#
    );
    let before = seen.lock().expect("lock").requests;
    let response = get("/echo/convert").await.expect("send");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = header(&response, "retry-after").parse().expect("seconds");
    assert!(wait > 3500, "retry after {wait} s");
    let (status, body) = read(response).await;
    assert_error(status, &body, 429, "rate_limited", &key);
    assert!(
        body["error"]["hint"]
            .as_str()
            .is_some_and(|h| h.contains("on this route")),
        "{body}"
    );
    assert_eq!(seen.lock().expect("lock").requests, before, "not forwarded");
    // Forward auth asks about the same route and gets the same answer.
    let response = server
        .request(Method::GET, "/api/v1/forward-auth")
        .header("x-api-key", &key)
        .header("x-forwarded-uri", "/echo/convert")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    // The route's use did not spend the key's own two a minute elsewhere...
    for _ in 0..2 {
        assert_eq!(
            get("/echo/other").await.expect("send").status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        get("/echo/other").await.expect("send").status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // ...and a route with no rate limits of its own is not limited by the key's.
    for _ in 0..3 {
        let response = get("/echo/status").await.expect("send");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "ratelimit-policy"), "");
    }
}
