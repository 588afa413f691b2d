//! The dashboard in a real headless Chromium, driven over WebDriver (chromedriver) against
//! the real binary. Each step saves a screenshot under `target/ui-screenshots/`.

use super::*;
use base64::Engine as _;

/// A minimal W3C WebDriver client over HTTP (no extra crate for a handful of commands).
struct Browser {
    http: reqwest::Client,
    session: String,
    driver: Child,
    shots: std::path::PathBuf,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn binary(candidates: &[&'static str]) -> Option<&'static str> {
    candidates
        .iter()
        .copied()
        .find(|path| Path::new(path).exists())
}

/// Whether a WebDriver error means the element belonged to a page that has since been
/// replaced. Chromium reports this either as a stale reference or, mid-navigation, as an
/// inspector error about a node outside the document.
fn is_stale(error: &str, answer: &Value) -> bool {
    error == "stale element reference"
        || answer["value"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("does not belong to the document"))
}

impl Browser {
    async fn start() -> Option<Self> {
        let chromium = binary(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
        let driver = binary(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            assert!(
                std::env::var("KEYGATE_REQUIRE_ALL").is_err(),
                "chromium and chromedriver are required (KEYGATE_REQUIRE_ALL=1)"
            );
            println!("SKIPPED: chromium or chromedriver is not installed");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1200,900",
                         "--no-first-run", "--disable-background-networking"]
            }
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("json");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_string();
        let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots");
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        Some(Self {
            http,
            session: format!("{base}/session/{session}"),
            driver,
            shots,
        })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("json");
        if answer["value"].get("error").is_some() {
            panic!("WebDriver {path}: {answer}");
        }
        answer["value"].clone()
    }

    /// A WebDriver command whose errors the caller looks at: the whole answer.
    async fn post_raw(&self, path: &str, body: Value) -> Value {
        self.http
            .post(format!("{}{path}", self.session))
            .json(&body)
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("json")
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let answer = self
                .post_raw("/element", json!({"using": "css selector", "value": css}))
                .await;
            if let Some(id) = answer["value"][ELEMENT].as_str() {
                return id.to_string();
            }
            assert!(Instant::now() < deadline, "no element {css}: {answer}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs an element command, finding the element again if a navigation made the one
    /// found stale.
    async fn on_element(
        &self,
        css: &str,
        method: reqwest::Method,
        command: &str,
        body: Option<Value>,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let id = self.find(css).await;
            let mut request = self.http.request(
                method.clone(),
                format!("{}/element/{id}{command}", self.session),
            );
            if let Some(body) = &body {
                request = request.json(body);
            }
            let answer: Value = request
                .send()
                .await
                .expect("webdriver")
                .json()
                .await
                .expect("json");
            match answer["value"].get("error").and_then(Value::as_str) {
                None => return answer["value"].clone(),
                Some(error) if is_stale(error, &answer) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Some(_) => panic!("WebDriver {command} on {css}: {answer}"),
            }
        }
    }

    /// Clicks a control that submits a form and waits for the page the form leads to, so
    /// the next step never reads the page being left (which may hold a matching element).
    async fn submit(&self, css: &str) {
        self.mark_page().await;
        self.click(css).await;
        self.wait_for_new_page().await;
    }

    /// Like `submit`, for a form that asks for confirmation first.
    async fn submit_confirmed(&self, css: &str) {
        self.mark_page().await;
        self.click(css).await;
        self.accept_confirm().await;
        self.wait_for_new_page().await;
    }

    /// Marks the current document; a navigation replaces the window object and the mark.
    async fn mark_page(&self) {
        self.script("window.keygateTestOldPage = true;").await;
    }

    async fn wait_for_new_page(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Errors here mean the browser is between pages; ask again.
            let answer = self
                .post_raw(
                    "/execute/sync",
                    json!({
                        "script": "return window.keygateTestOldPage !== true && document.readyState === 'complete';",
                        "args": []
                    }),
                )
                .await;
            if answer["value"] == Value::Bool(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the form led to no new page: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.on_element(css, reqwest::Method::POST, "/click", Some(json!({})))
            .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, reqwest::Method::POST, "/clear", Some(json!({})))
            .await;
        self.on_element(
            css,
            reqwest::Method::POST,
            "/value",
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn text(&self, css: &str) -> String {
        self.on_element(css, reqwest::Method::GET, "/text", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn accept_confirm(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let answer = self.post_raw("/alert/accept", json!({})).await;
            if answer["value"].get("error").is_none() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no confirmation dialog: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn script(&self, source: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": source, "args": []})),
        )
        .await
    }

    /// Every resource this page loaded came from `origin`.
    async fn assert_only_from(&self, origin: &str) {
        let urls = self
            .script(
                "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name));",
            )
            .await;
        for url in urls.as_array().expect("urls") {
            let url = url.as_str().unwrap_or_default();
            assert!(
                url.starts_with(origin),
                "a page loaded {url} from outside keygate"
            );
        }
    }

    async fn screenshot(&self, name: &str) {
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("png");
        std::fs::write(self.shots.join(format!("{name}.png")), bytes).expect("save screenshot");
    }
}

impl Drop for Browser {
    /// Ends the WebDriver session (which closes Chromium) before stopping chromedriver:
    /// killing the driver alone would leave the browser running. Plain blocking HTTP, as
    /// this may run while a failed test unwinds.
    fn drop(&mut self) {
        use std::io::Write;
        if let Some(rest) = self.session.strip_prefix("http://")
            && let Some((addr, path)) = rest.split_once('/')
            && let Ok(mut stream) = std::net::TcpStream::connect(addr)
        {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request =
                format!("DELETE /{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            if stream.write_all(request.as_bytes()).is_ok() {
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test]
async fn dashboard_in_a_real_browser() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let running = serve(
        dir.path(),
        &[
            ("KEYGATE_ADMIN_PASSWORD", "dashboard-admin-password"),
            ("KEYGATE_PASSWORD_MEMORY_KIB", "1024"),
            ("KEYGATE_PASSWORD_ITERATIONS", "1"),
        ],
    );
    let base = running.base.clone();
    let global = running.first_key.clone().expect("global key");
    let http = reqwest::Client::new();
    let (status, project) =
        post_json(&base, "/api/v1/projects", &global, json!({"name": "alpha"})).await;
    assert_eq!(status, 201, "{project}");
    let project_id = project["id"].as_str().expect("id").to_string();

    // Sign in: a wrong password is refused next to the form, the right one gets in.
    browser.go(&format!("{base}/ui/")).await;
    browser.assert_only_from(&base).await;
    browser.screenshot("01-sign-in").await;
    browser.type_into("#username", "admin").await;
    browser.type_into("#password", "not-the-password").await;
    browser.submit("#sign-in").await;
    assert!(browser.text("#login-error").await.contains("wrong"));
    browser
        .type_into("#password", "dashboard-admin-password")
        .await;
    browser.submit("#sign-in").await;
    // Signed in, the overview: keys by state and the last 24 hours as a chart.
    browser.find("#key-counts").await;
    browser.find("svg.chart").await;
    browser.assert_only_from(&base).await;
    browser.go(&format!("{base}/ui/keys")).await;
    browser.find("#new-key-form").await;

    // A form with bad input says what is wrong next to the field.
    browser.click("#level-project").await;
    browser.type_into("#name", "no project chosen").await;
    browser.submit("#create-key").await;
    assert!(browser.text("#project-error").await.contains("project"));

    // Create a project-level key and copy it.
    browser.type_into("#name", "browser key").await;
    browser.click("#level-project").await;
    browser
        .click(&format!("#project_id option[value='{project_id}']"))
        .await;
    browser.submit("#create-key").await;
    let key = browser.text("#new-key-value").await;
    assert!(key.starts_with("kg_"), "{key}");
    browser.click("#copy-new-key").await;
    browser.screenshot("02-new-key").await;

    // The key works against the API.
    let (status, whoami) = get(&base, "/api/v1/whoami", &key).await;
    assert_eq!(status, 200, "{whoami}");
    assert_eq!(whoami["project_id"], project_id.as_str());
    let key_id = whoami["key_id"].as_str().expect("id").to_string();

    // Revoke it (with confirmation) and see the refusal.
    browser.submit_confirmed(&format!("#revoke-{key_id}")).await;
    assert!(browser.text("#keys-message").await.contains("Revoked"));
    browser.screenshot("03-revoked").await;
    let (status, body) = get(&base, "/api/v1/whoami", &key).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "revoked_api_key");

    // Settings: API access off (a warning, requests pass without a key), then on again.
    browser.go(&format!("{base}/ui/settings")).await;
    browser.assert_only_from(&base).await;
    browser.click("#api-access").await;
    browser.submit("#save-settings").await;
    browser.find("#access-warning").await;
    browser.screenshot("04-access-off").await;
    let open = http
        .get(format!("{base}/api/v1/whoami"))
        .send()
        .await
        .expect("send");
    assert_eq!(open.status().as_u16(), 200);
    browser.click("#api-access").await;
    browser.submit("#save-settings").await;
    assert!(browser.text("#settings-message").await.contains("saved"));
    let closed = http
        .get(format!("{base}/api/v1/whoami"))
        .send()
        .await
        .expect("send");
    assert_eq!(closed.status().as_u16(), 401);

    // Regenerate the global key: the new one is shown, the old one stops.
    browser.submit_confirmed("#regenerate-global-key").await;
    let fresh = browser.text("#global-key").await;
    assert!(fresh.starts_with("kg_") && fresh != global, "{fresh}");
    browser.screenshot("05-regenerated").await;
    assert_eq!(get(&base, "/api/v1/whoami", &global).await.0, 401);
    assert_eq!(get(&base, "/api/v1/whoami", &fresh).await.0, 200);

    // A form without its security token is refused, even with the session cookie.
    let session = browser
        .call(reqwest::Method::GET, "/cookie/kg_session", None)
        .await;
    let cookie = format!("kg_session={}", session["value"].as_str().expect("cookie"));
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Strict");
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    for body in ["api_access_enabled=", "api_access_enabled=&csrf=forged"] {
        let forged = no_redirects
            .post(format!("{base}/ui/settings"))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(forged.status().as_u16(), 403, "{body}");
    }
    assert_eq!(get(&base, "/api/v1/whoami", &fresh).await.0, 200);

    // Profile: this sign-in is listed; a wrong current password is refused next to its
    // field (and nothing changes).
    browser.go(&format!("{base}/ui/profile")).await;
    assert!(browser.text("#sessions").await.contains("this one"));
    browser.type_into("#old_password", "not-my-password").await;
    browser
        .type_into("#new_password", "a-new-password-123")
        .await;
    browser.submit("#change-password").await;
    assert!(browser.text("#old-password-error").await.contains("wrong"));
    browser.screenshot("06-profile").await;

    // Every page of the dashboard renders at phone width without the page itself
    // scrolling sideways (wide tables scroll inside their card) and loads nothing from
    // elsewhere.
    browser
        .call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": 360, "height": 800})),
        )
        .await;
    for (page, marker) in [
        ("overview", "#key-counts"),
        ("keys", "#keys-table"),
        ("projects", "#projects-table"),
        ("webhooks", "#new-endpoint-form"),
        ("usage", "#usage-table"),
        ("users", "#users-table"),
        ("plans", "#new-plan-form"),
        ("audit", "#audit-table"),
        ("settings", "#settings-form"),
        ("profile", "#personal-key-form"),
    ] {
        browser.go(&format!("{base}/ui/{page}")).await;
        browser.find(marker).await;
        browser.assert_only_from(&base).await;
        let overflow = browser
            .script("return document.documentElement.scrollWidth - window.innerWidth;")
            .await;
        assert!(
            overflow.as_i64().is_some_and(|px| px <= 0),
            "/ui/{page} is wider than the phone: {overflow}"
        );
        if page == "overview" || page == "usage" {
            browser.screenshot(&format!("08-{page}-phone")).await;
        }
    }
    browser
        .call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": 1280, "height": 900})),
        )
        .await;
    // On a desktop: the overview with the requests made above, and a key's own page.
    browser.go(&format!("{base}/ui/overview")).await;
    assert!(browser.text("#request-totals").await.contains("refused"));
    browser.screenshot("09-overview").await;
    browser.go(&format!("{base}/ui/keys/{key_id}")).await;
    browser.find("#refusals").await;
    browser.screenshot("10-key").await;
    // The audit log has what happened above, and filters it.
    browser
        .go(&format!("{base}/ui/audit?action=key.revoke"))
        .await;
    assert!(browser.text("#audit-table").await.contains("key.revoke"));
    assert!(!browser.text("#audit-table").await.contains("key.create"));

    // Sign out: back to the sign-in form; the keys page needs signing in again.
    browser.submit("#sign-out").await;
    browser.find("#sign-in").await;
    browser.go(&format!("{base}/ui/keys")).await;
    browser.find("#sign-in").await;
    browser.screenshot("07-signed-out").await;
    let (status, _) = running.terminate();
    assert!(status.success());
}
