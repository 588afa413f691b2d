//! The real `keygate` binary: first start, restart persistence, the CLI writing while the
//! server runs, the CLI client, configuration errors, SIGTERM, and logs free of secrets.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_keygate");

fn keygate() -> Command {
    let mut command = Command::new(BIN);
    // Nothing from the developer's shell leaks into a test.
    for (name, _) in std::env::vars() {
        if name.starts_with("KEYGATE_") {
            command.env_remove(name);
        }
    }
    command
}

/// A `keygate serve` child process on a loopback port.
struct Running {
    child: Child,
    base: String,
    /// The global key if this start printed one.
    first_key: Option<String>,
    /// The generated `admin` password if this start printed one.
    admin_password: Option<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

fn find_key(line: &str) -> Option<String> {
    line.split_whitespace()
        .find(|w| keygate_core::key_format::parse_key(w).is_ok())
        .map(str::to_string)
}

fn serve(data_dir: &Path, extra_env: &[(&str, &str)]) -> Running {
    serve_with(data_dir, &[], extra_env)
}

/// [`serve`] with more command-line arguments.
fn serve_with(data_dir: &Path, extra_args: &[&str], extra_env: &[(&str, &str)]) -> Running {
    let mut command = keygate();
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--flush-interval",
            "1h",
            "--feed-poll-interval",
            "100ms",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in extra_env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("spawn keygate serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut first_key = None;
    let mut admin_password = None;
    let mut password_next = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("keygate did not print its address in time");
        };
        if first_key.is_none() {
            first_key = find_key(&line);
        }
        if line.contains("created the user `admin` with the password") {
            password_next = true;
        } else if password_next && !line.trim().is_empty() {
            admin_password = Some(line.trim().to_string());
            password_next = false;
        }
        if let Some(rest) = line.strip_prefix("keygate listening on ") {
            let base = rest.split_whitespace().next().expect("url").to_string();
            return Running {
                child,
                base,
                first_key,
                admin_password,
                stderr: Some(stderr),
            };
        }
    }
}

impl Running {
    /// SIGTERM, then the exit status and everything logged.
    fn terminate(self) -> (std::process::ExitStatus, String) {
        self.signal("-TERM")
    }

    fn signal(mut self, signal: &str) -> (std::process::ExitStatus, String) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        let log = self
            .stderr
            .take()
            .map(|t| t.join().expect("stderr thread"))
            .unwrap_or_default();
        (exit, log)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_ok(command: &mut Command) -> Output {
    let output = command.output().expect("run keygate");
    assert!(
        output.status.success(),
        "{:?} failed:\n{}",
        command,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

async fn get(base: &str, path: &str, key: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn first_start_restart_and_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(dir.path(), &[]);
    let admin = server
        .first_key
        .clone()
        .expect("first start prints the global key");
    let base = server.base.clone();
    assert!(base.starts_with("http://127.0.0.1:"));
    let (status, me) = get(&base, "/api/v1/whoami", &admin).await;
    assert_eq!(
        (status, me["name"].as_str()),
        (200, Some("global admin key"))
    );

    // The CLI as a client of the running server.
    let client = |args: &[&str]| {
        let mut command = keygate();
        command
            .args(args)
            .env("KEYGATE_URL", &base)
            .env("KEYGATE_API_KEY", &admin);
        command
    };
    let created = run_ok(&mut client(&[
        "keys", "create", "--name", "kept", "--scopes", "read", "--json",
    ]));
    let created: Value = serde_json::from_slice(&created.stdout).expect("json");
    let kept = created["key"].as_str().expect("key").to_string();
    let kept_id = created["id"].as_str().expect("id").to_string();
    let doomed = run_ok(&mut client(&[
        "keys", "create", "--name", "doomed", "--json",
    ]));
    let doomed: Value = serde_json::from_slice(&doomed.stdout).expect("json");
    let doomed_key = doomed["key"].as_str().expect("key").to_string();
    let revoked = run_ok(&mut client(&[
        "keys",
        "revoke",
        doomed["id"].as_str().expect("id"),
    ]));
    assert!(String::from_utf8_lossy(&revoked.stdout).contains("revoked"));
    for _ in 0..3 {
        assert_eq!(get(&base, "/api/v1/whoami", &kept).await.0, 200);
    }

    // SIGTERM: exit 0 after flushing counters.
    let (exit, log) = server.terminate();
    assert!(exit.success(), "exit {exit:?}\n{log}");
    assert!(log.contains("usage counters flushed at shutdown"), "{log}");

    // Restart: no second banner; keys survive, revoked stays revoked, usage persisted.
    let server = serve(dir.path(), &[]);
    assert_eq!(
        server.first_key, None,
        "the global key is printed only once"
    );
    let base = server.base.clone();
    assert_eq!(get(&base, "/api/v1/whoami", &admin).await.0, 200);
    assert_eq!(get(&base, "/api/v1/whoami", &kept).await.0, 200);
    let (status, body) = get(&base, "/api/v1/whoami", &doomed_key).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("revoked_api_key"))
    );
    let (_, shown) = get(&base, &format!("/api/v1/keys/{kept_id}"), &admin).await;
    assert_eq!(shown["usage_count"], 4, "{shown}");
}

#[tokio::test]
async fn admin_create_key_reaches_a_running_server_within_a_second() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(dir.path(), &[]);
    let output = run_ok(
        keygate()
            .args([
                "admin",
                "create-key",
                "--name",
                "deploy bot",
                "--scopes",
                "read,deploy",
                "--prefix",
                "bot",
            ])
            .arg("--data-dir")
            .arg(dir.path()),
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let key = stdout.trim_end_matches('\n');
    assert!(
        key.starts_with("bot_") && !key.contains('\n') && stdout.ends_with('\n'),
        "stdout must be the key alone: {stdout:?}"
    );
    let written = Instant::now();
    loop {
        let (status, me) = get(&server.base, "/api/v1/whoami", key).await;
        if status == 200 {
            assert_eq!(me["scopes"], json!(["read", "deploy"]));
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(1),
            "not accepted within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // With the server stopped, the command works too.
    let admin = server.first_key.clone().expect("global key");
    drop(server);
    let output = run_ok(
        keygate()
            .args(["admin", "create-key", "--name", "offline"])
            .arg("--data-dir")
            .arg(dir.path()),
    );
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("kg_"));
    let bad = keygate()
        .args(["admin", "create-key", "--name", "x", "--prefix", "NO"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("prefix"));

    // With the server's configuration file: its data directory and key prefix, unless a
    // flag says otherwise; a bad file is a clear error.
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nkey_prefix = \"acme_live\"\n",
            dir.path().display().to_string()
        ),
    )
    .expect("config");
    let output = run_ok(
        keygate()
            .args(["admin", "create-key", "--name", "configured", "--config"])
            .arg(&config)
            .env_remove("KEYGATE_DATA_DIR"),
    );
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("acme_live_"));
    let output = run_ok(
        keygate()
            .args([
                "admin",
                "create-key",
                "--name",
                "flagged",
                "--prefix",
                "ops",
            ])
            .arg("--config")
            .arg(&config),
    );
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("ops_"));
    std::fs::write(&config, "key_prefix = \"NO\"\n").expect("config");
    let bad = keygate()
        .args(["admin", "create-key", "--name", "x", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("prefix"));
    // --data-dir beats the file's.
    let other = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        &config,
        format!("data_dir = {:?}\n", dir.path().display().to_string()),
    )
    .expect("config");
    run_ok(
        keygate()
            .args(["admin", "create-key", "--name", "elsewhere", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(other.path()),
    );
    assert!(
        std::fs::read_dir(other.path())
            .expect("dir")
            .next()
            .is_some(),
        "the store was made in --data-dir"
    );
    // Both keys went to the file's data directory: a server on it lists them.
    let server = serve(dir.path(), &[]);
    let listed: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/keys?limit=100", server.base))
        .header("X-API-Key", &admin)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let names: Vec<&str> = listed["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert!(
        names.contains(&"configured") && names.contains(&"flagged"),
        "{listed}"
    );
}

#[tokio::test]
async fn cli_client_commands() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(dir.path(), &[]);
    let admin = server.first_key.clone().expect("key");
    let client = |args: &[&str]| {
        let mut command = keygate();
        command
            .args(args)
            .args(["--url", &server.base, "--api-key", &admin]);
        command
    };
    let human = run_ok(&mut client(&["keys", "create", "--name", "human"]));
    let text = String::from_utf8_lossy(&human.stdout).to_string();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .expect("key line")
        .trim()
        .to_string();
    assert!(String::from_utf8_lossy(&human.stderr).contains("will not be shown again"));
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .expect("id line")
        .trim()
        .to_string();

    let list = run_ok(&mut client(&["keys", "list", "--json"]));
    let list: Value = serde_json::from_slice(&list.stdout).expect("json");
    assert_eq!(list["keys"].as_array().expect("keys").len(), 2);
    assert!(!list.to_string().contains(&key));
    let table = run_ok(&mut client(&["keys", "list"]));
    assert!(String::from_utf8_lossy(&table.stdout).contains("human"));

    let shown = run_ok(&mut client(&["keys", "show", &id]));
    assert!(String::from_utf8_lossy(&shown.stdout).contains("state:      active"));

    let rotated = run_ok(&mut client(&[
        "keys",
        "rotate",
        &id,
        "--grace-seconds",
        "60",
        "--json",
    ]));
    let rotated: Value = serde_json::from_slice(&rotated.stdout).expect("json");
    let new_key = rotated["key"].as_str().expect("key");
    assert_eq!(get(&server.base, "/api/v1/whoami", new_key).await.0, 200);
    assert_eq!(get(&server.base, "/api/v1/whoami", &key).await.0, 200);

    // Errors are clear and exit non-zero.
    let bad_id = client(&["keys", "show", "nope"]).output().expect("run");
    assert!(!bad_id.status.success());
    assert!(String::from_utf8_lossy(&bad_id.stderr).contains("not a key id"));
    let missing = client(&["keys", "show", "01900000-0000-7000-8000-000000000000"])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404 (not_found)"));
    let wrong_key = keygate()
        .args([
            "keys",
            "list",
            "--url",
            &server.base,
            "--api-key",
            "kg_wrong",
        ])
        .output()
        .expect("run");
    assert!(!wrong_key.status.success());
    assert!(String::from_utf8_lossy(&wrong_key.stderr).contains("malformed_api_key"));
    let no_key = keygate()
        .args(["keys", "list", "--url", &server.base])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("KEYGATE_API_KEY"));

    // SIGINT (Ctrl-C) stops as cleanly as SIGTERM.
    let (exit, log) = server.signal("-INT");
    assert!(exit.success(), "exit {exit:?}\n{log}");
    assert!(log.contains("usage counters flushed at shutdown"), "{log}");
}

#[test]
fn configuration_errors_name_the_problem() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:0\"\ncolour = \"red\"\n").expect("write");
    let output = keygate()
        .args(["config", "check", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("bad.toml") && stderr.contains("colour"),
        "{stderr}"
    );

    let output = keygate()
        .args(["serve", "--config", "/nonexistent/keygate.toml"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/keygate.toml"));

    let output = keygate()
        .args(["serve", "--listen", "nowhere", "--flush-interval", "soon"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("listen") && stderr.contains("flush_interval"),
        "{stderr}"
    );

    let output = keygate()
        .args(["serve", "--no-such-flag"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--no-such-flag"));

    // Defaults < file < environment < flags.
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "listen = \"127.0.0.1:7001\"\nflush_interval = \"2s\"\napi_key_header = \"X-Token\"\n",
    )
    .expect("write");
    let check = |env: &[(&str, &str)], flags: &[&str]| {
        let mut command = keygate();
        command
            .args(["config", "check", "--config"])
            .arg(&good)
            .args(flags);
        for (k, v) in env {
            command.env(k, v);
        }
        let output = run_ok(&mut command);
        toml::from_str::<toml::Value>(&String::from_utf8_lossy(&output.stdout))
            .expect("toml output")
    };
    let effective = check(&[], &[]);
    assert_eq!(effective["listen"].as_str(), Some("127.0.0.1:7001"));
    assert_eq!(effective["flush_interval"].as_str(), Some("2000ms"));
    assert_eq!(effective["api_key_header"].as_str(), Some("x-token"));
    assert_eq!(effective["data_dir"].as_str(), Some("./keygate-data"));
    let effective = check(&[("KEYGATE_LISTEN", "127.0.0.1:7002")], &[]);
    assert_eq!(effective["listen"].as_str(), Some("127.0.0.1:7002"));
    let effective = check(
        &[("KEYGATE_LISTEN", "127.0.0.1:7002")],
        &["--listen", "127.0.0.1:7003"],
    );
    assert_eq!(effective["listen"].as_str(), Some("127.0.0.1:7003"));
}

#[test]
fn migrate_creates_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("nested/data");
    let output = run_ok(keygate().arg("migrate").arg("--data-dir").arg(&data));
    assert!(String::from_utf8_lossy(&output.stdout).contains("migrations applied"));
    assert!(data.join("keygate.db").exists());
}

#[tokio::test]
async fn logs_never_contain_a_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(dir.path(), &[("KEYGATE_LOG", "debug")]);
    let admin = server.first_key.clone().expect("key");
    let base = server.base.clone();
    let http = reqwest::Client::new();
    let enable = http
        .patch(format!("{base}/api/v1/settings"))
        .bearer_auth(&admin)
        .json(&json!({"query_param_enabled": true}))
        .send()
        .await
        .expect("send");
    assert_eq!(enable.status(), 200);
    let created: Value = http
        .post(format!("{base}/api/v1/keys"))
        .bearer_auth(&admin)
        .json(&json!({"name": "secret holder"}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let key = created["key"].as_str().expect("key").to_string();
    let imported = "imported-secret-value-123456";
    http.post(format!("{base}/api/v1/keys/import"))
        .bearer_auth(&admin)
        .json(&json!({"key": imported, "name": "legacy"}))
        .send()
        .await
        .expect("send");
    for path in [
        format!("/api/v1/whoami?apikey={key}"),
        format!("/api/v1/whoami?apikey={imported}&x=1"),
        format!("/api/v1/nothing/{key}"),
    ] {
        http.get(format!("{base}{path}"))
            .send()
            .await
            .expect("send");
    }
    http.post(format!("{base}/api/v1/keys/verify"))
        .json(&json!({"key": key, "scopes": [key]}))
        .send()
        .await
        .expect("send");
    http.post(format!("{base}/api/v1/keys/verify"))
        .json(&json!({"key": [key]}))
        .send()
        .await
        .expect("send");
    let (exit, log) = server.terminate();
    assert!(exit.success());
    assert!(
        log.contains("[REDACTED]"),
        "the query parameter is logged redacted:\n{log}"
    );
    for secret in [admin.as_str(), key.as_str(), imported] {
        assert!(!log.contains(secret), "a secret appears in the log:\n{log}");
    }
}

async fn sign_in(base: &str, username: &str, password: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/token"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn admin_account_password_reset_audit_tail_and_quiet_logs() {
    // A generated admin password is printed once at first start.
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(dir.path(), &[("KEYGATE_LOG", "debug")]);
    let password = server
        .admin_password
        .clone()
        .expect("first start prints the admin password");
    let base = server.base.clone();
    let (status, tokens) = sign_in(&base, "admin", &password).await;
    assert_eq!(status, 200, "{tokens}");
    let access = tokens["access"].as_str().expect("access").to_string();
    let refresh = tokens["refresh"].as_str().expect("refresh").to_string();
    let http = reqwest::Client::new();
    let rotated: Value = http
        .post(format!("{base}/api/v1/auth/token/refresh"))
        .json(&json!({"refresh": refresh}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let refresh2 = rotated["refresh"].as_str().expect("refresh").to_string();
    assert_eq!(sign_in(&base, "admin", "a-wrong-password").await.0, 401);

    // Locked out? reset-password works beside the running server and ends sign-ins.
    let output = run_ok(
        keygate()
            .args(["admin", "reset-password", "admin"])
            .arg("--data-dir")
            .arg(dir.path()),
    );
    let new_password = String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    assert_eq!(new_password.len(), 24);
    let refused = http
        .post(format!("{base}/api/v1/auth/token/refresh"))
        .json(&json!({"refresh": refresh2}))
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status().as_u16(), 401);
    assert_eq!(sign_in(&base, "admin", &password).await.0, 401);
    assert_eq!(sign_in(&base, "admin", &new_password).await.0, 200);
    // From stdin, with a chosen password; unknown users are a clear error.
    let mut child = keygate()
        .args(["admin", "reset-password", "ADMIN", "--password-stdin"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::io::Write::write_all(
        child.stdin.as_mut().expect("stdin"),
        b"chosen-password-42\n",
    )
    .expect("write");
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success() && output.stdout.is_empty());
    assert_eq!(sign_in(&base, "admin", "chosen-password-42").await.0, 200);
    let unknown = keygate()
        .args(["admin", "reset-password", "nobody"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("nobody"));

    // keygate audit tail, with a JWT as the credential (a fresh one: the reset ended the old).
    let (status, _) = get(&base, "/api/v1/whoami", &access).await;
    assert_eq!(status, 401, "the reset ended this sign-in too");
    let (_, tokens) = sign_in(&base, "admin", "chosen-password-42").await;
    let access = tokens["access"].as_str().expect("access").to_string();
    let output = run_ok(keygate().args([
        "audit",
        "tail",
        "--limit",
        "50",
        "--url",
        &base,
        "--api-key",
        &access,
    ]));
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    for action in [
        "auth.login",
        "auth.login_failed",
        "user.password_reset",
        "user.create",
    ] {
        assert!(
            text.contains(action),
            "{action} missing from audit tail:\n{text}"
        );
    }
    let json_lines = run_ok(keygate().args([
        "audit",
        "tail",
        "--json",
        "--action",
        "auth",
        "--url",
        &base,
        "--api-key",
        &access,
    ]));
    for line in String::from_utf8_lossy(&json_lines.stdout).lines() {
        let entry: Value = serde_json::from_str(line).expect("one JSON entry per line");
        assert!(
            entry["action"]
                .as_str()
                .expect("action")
                .starts_with("auth.")
        );
    }

    let (exit, log) = server.terminate();
    assert!(exit.success());
    for secret in [
        password.as_str(),
        new_password.as_str(),
        "chosen-password-42",
        "a-wrong-password",
        &access,
        &refresh,
        &refresh2,
    ] {
        assert!(!log.contains(secret), "a secret appears in the log");
    }

    // With KEYGATE_ADMIN_PASSWORD the first start uses it and prints none.
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(
        dir.path(),
        &[("KEYGATE_ADMIN_PASSWORD", "given-admin-password")],
    );
    assert_eq!(server.admin_password, None);
    assert_eq!(
        sign_in(&server.base, "admin", "given-admin-password")
            .await
            .0,
        200
    );
    // A too-short one is refused at start, naming the variable.
    let dir = tempfile::tempdir().expect("temp dir");
    let output = keygate()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("KEYGATE_ADMIN_PASSWORD", "short")
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("KEYGATE_ADMIN_PASSWORD"));
}

/// The Standard Webhooks vectors, verified by `keygate webhooks verify` and by the Python and
/// Node.js receiver examples in examples/receivers (which the README shows).
#[test]
fn webhook_signatures_verify_with_the_cli_and_the_receiver_examples() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let vectors: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/tests/vectors/standard-webhooks.json"))
            .expect("vectors"),
    )
    .expect("JSON");
    let dir = tempfile::tempdir().expect("temp dir");
    let require_all = std::env::var("KEYGATE_REQUIRE_ALL").as_deref() == Ok("1");
    let runtimes: Vec<(&str, String)> = [("python3", "verify.py"), ("node", "verify.js")]
        .into_iter()
        .filter_map(|(bin, script)| {
            let found = Command::new(bin)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                assert!(
                    !require_all,
                    "{bin} is required (KEYGATE_REQUIRE_ALL=1) but not installed"
                );
                println!("SKIPPED: {bin} not found; the {script} receiver example is not run");
            }
            found.then(|| (bin, format!("{root}/examples/receivers/{script}")))
        })
        .collect();
    for (n, case) in vectors["valid"]
        .as_array()
        .expect("cases")
        .iter()
        .enumerate()
    {
        let field = |name: &str| {
            case[name]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| case[name].to_string())
        };
        let (secret, id, ts, signature) = (
            field("secret"),
            field("webhook_id"),
            field("webhook_timestamp"),
            field("webhook_signature"),
        );
        let body = dir.path().join(format!("body{n}"));
        std::fs::write(&body, field("body")).expect("write body");
        let tampered = dir.path().join(format!("tampered{n}"));
        std::fs::write(&tampered, format!("{} ", field("body"))).expect("write body");

        let cli = |body: &Path, at: &str| {
            keygate()
                .args([
                    "webhooks",
                    "verify",
                    "--secret",
                    &secret,
                    "--id",
                    &id,
                    "--timestamp",
                    &ts,
                    "--signature",
                    &signature,
                    "--at",
                    at,
                ])
                .arg("--body")
                .arg(body)
                .output()
                .expect("run")
        };
        let good = cli(&body, &ts);
        assert!(
            good.status.success(),
            "{}",
            String::from_utf8_lossy(&good.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&good.stdout).trim(), "valid");
        let bad = cli(&tampered, &ts);
        assert!(!bad.status.success());
        assert!(String::from_utf8_lossy(&bad.stderr).contains("no signature matches"));
        let late = cli(&body, &(ts.parse::<i64>().expect("ts") + 301).to_string());
        assert!(String::from_utf8_lossy(&late.stderr).contains("s old"));
        // The same from a headers file; the secret never appears in the output.
        let headers = dir.path().join(format!("headers{n}"));
        std::fs::write(
            &headers,
            format!("webhook-id: {id}\nwebhook-timestamp: {ts}\nwebhook-signature: {signature}\n"),
        )
        .expect("write");
        let from_file = keygate()
            .args(["webhooks", "verify", "--at", &ts])
            .arg("--headers")
            .arg(&headers)
            .arg("--body")
            .arg(&body)
            .env("KEYGATE_WEBHOOK_SECRET", &secret)
            .output()
            .expect("run");
        assert!(
            from_file.status.success(),
            "{}",
            String::from_utf8_lossy(&from_file.stderr)
        );
        assert!(!String::from_utf8_lossy(&bad.stderr).contains(&secret));

        for (bin, script) in &runtimes {
            let run = |body: &Path| {
                Command::new(bin)
                    .arg(script)
                    .args([&secret, &id, &ts, &signature])
                    .arg(body)
                    .arg(&ts)
                    .output()
                    .expect("run example")
            };
            let ok = run(&body);
            assert!(
                ok.status.success(),
                "{bin}: {}",
                String::from_utf8_lossy(&ok.stderr)
            );
            assert!(
                !run(&tampered).status.success(),
                "{bin} accepted a tampered body"
            );
        }
    }
}

/// A stub upstream on loopback that reads each request body to the end and answers with
/// the number of bytes it received. Raw TCP, so the test measures keygate, not a framework.
async fn counting_upstream() -> String {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = tokio::io::BufReader::new(stream);
                loop {
                    let mut length: u64 = 0;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut received: u64 = 0;
                    let mut buf = vec![0u8; 1 << 16];
                    while received < length {
                        let want = usize::try_from((length - received).min(1 << 16)).unwrap_or(1);
                        match stream.read(&mut buf[..want]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => received += n as u64,
                        }
                    }
                    let body = received.to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test]
async fn proxy_streams_a_gigabyte_upload_with_flat_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = counting_upstream().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let running = serve(dir.path(), &[("KEYGATE_UPSTREAM", &upstream)]);
    let key = running.first_key.clone().expect("global key");
    let before = peak_rss_kib(running.child.id());

    const SIZE: u64 = 1 << 30;
    let addr = running.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {key}\r\n\
         Content-Length: {SIZE}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..(SIZE >> 20) {
        stream.write_all(&chunk).await.expect("body");
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(&SIZE.to_string()), "{answer}");

    // Without a credential the upload is refused before anything reaches the app.
    let response = reqwest::Client::new()
        .post(format!("{}/upload", running.base))
        .body("small")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 401);

    let grew_mib = peak_rss_kib(running.child.id()).saturating_sub(before) / 1024;
    assert!(
        grew_mib < 64,
        "peak memory grew by {grew_mib} MiB while proxying 1 GiB"
    );
    let (status, _) = running.terminate();
    assert!(status.success());
}

/// The client timeouts come from the configuration: a connection that never finishes its
/// request head is closed, and such a connection does not hold up a SIGTERM.
#[test]
fn slow_clients_are_cut_off_as_configured() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = serve(
        dir.path(),
        &[
            ("KEYGATE_CLIENT_HEADER_TIMEOUT", "300ms"),
            ("KEYGATE_CLIENT_IDLE_TIMEOUT", "1h"),
        ],
    );
    let address = server.base.trim_start_matches("http://").to_string();
    let mut silent = std::net::TcpStream::connect(&address).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let opened = Instant::now();
    let mut buf = [0u8; 64];
    let read = silent.read(&mut buf);
    // Closed by keygate (a read timeout here would be an error of another kind).
    assert!(
        matches!(&read, Ok(0))
            || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
    assert!(
        opened.elapsed() < Duration::from_secs(5),
        "cut after {:?}",
        opened.elapsed()
    );
    // Half a head, then SIGTERM: keygate still stops.
    let mut half = std::net::TcpStream::connect(&address).expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: keygate\r\n")
        .expect("write");
    let (exit, log) = server.terminate();
    assert!(exit.success(), "exit {exit:?}\n{log}");
}

#[path = "cli/compat.rs"]
mod compat;
#[path = "cli/dashboard.rs"]
mod dashboard;

/// A webhook receiver on loopback: records every body; the first request for a key named
/// "hang" is never answered (keygate is then mid-delivery).
async fn webhook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let recorder = std::sync::Arc::clone(&received);
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let recorder = std::sync::Arc::clone(&recorder);
        async move {
            let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let first_hang = {
                let mut all = recorder.lock().expect("lock");
                let seen = all.iter().any(|e| e == &event);
                all.push(event.clone());
                event["data"]["name"] == "hang" && !seen
            };
            if first_hang {
                std::future::pending::<()>().await;
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

async fn post_json(base: &str, path: &str, key: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until the receiver holds `n` events about the key `name`.
async fn wait_for_events(received: &std::sync::Mutex<Vec<Value>>, name: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let count = received
            .lock()
            .expect("lock")
            .iter()
            .filter(|e| e["type"] == "key.created" && e["data"]["name"] == name)
            .count();
        if count >= n {
            return;
        }
        assert!(Instant::now() < deadline, "no event for {name}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn webhook_events_survive_sigkill() {
    let (url, received) = webhook_receiver().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [("KEYGATE_WEBHOOKS_ALLOW_PRIVATE", "true")];

    // Stored but not sent (delivery off on this node), then killed.
    let mut quiet = env.to_vec();
    quiet.push(("KEYGATE_WEBHOOK_DELIVERY", "false"));
    let running = serve(dir.path(), &quiet);
    let key = running.first_key.clone().expect("global key");
    let (status, body) =
        post_json(&running.base, "/api/v1/webhooks", &key, json!({"url": url})).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = post_json(
        &running.base,
        "/api/v1/keys",
        &key,
        json!({"name": "queued"}),
    )
    .await;
    assert_eq!(status, 201);
    let (_, _) = running.signal("-KILL");
    assert!(received.lock().expect("lock").is_empty());

    // Mid-delivery (the receiver holds the request), then killed.
    let running = serve(dir.path(), &env);
    wait_for_events(&received, "queued", 1).await;
    let (status, _) = post_json(&running.base, "/api/v1/keys", &key, json!({"name": "hang"})).await;
    assert_eq!(status, 201);
    wait_for_events(&received, "hang", 1).await;
    let (_, _) = running.signal("-KILL");

    // After a restart the interrupted delivery is made again (at least once).
    let running = serve(dir.path(), &env);
    wait_for_events(&received, "hang", 2).await;
    let (status, log) = running.terminate();
    assert!(status.success(), "{status}: {log}");
}
