//! The dashboard's forms over plain HTTP (the browser test in crates/keygate drives the
//! same pages in Chromium).

use super::*;

/// A client that keeps no cookies and follows no redirects, so each step is visible.
fn plain() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
}

fn hidden_csrf(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("csrf field")
        .to_string()
}

/// Signs in through the form; answers the session cookie and the page's CSRF token.
async fn ui_sign_in(server: &TestServer, username: &str, password: &str) -> (String, String) {
    let http = plain();
    let page = http
        .get(format!("{}/ui/", server.base))
        .send()
        .await
        .expect("send");
    let login_cookie = set_cookie(&page, "kg_login_csrf").expect("login cookie");
    let csrf = hidden_csrf(&page.text().await.expect("html"));
    let response = http
        .post(format!("{}/ui/login", server.base))
        .header("cookie", &login_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "username={username}&password={password}&csrf={csrf}"
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let session = set_cookie(&response, "kg_session").expect("session cookie");
    let keys = http
        .get(format!("{}/ui/keys", server.base))
        .header("cookie", &session)
        .send()
        .await
        .expect("send");
    assert_eq!(keys.status(), StatusCode::OK);
    (session, hidden_csrf(&keys.text().await.expect("html")))
}

#[tokio::test]
async fn profile_ends_sign_ins_and_changes_the_password() {
    let server = TestServer::start().await;
    let (first, csrf) = ui_sign_in(&server, "admin", ADMIN_PASSWORD).await;
    let (second, _) = ui_sign_in(&server, "admin", ADMIN_PASSWORD).await;
    let http = plain();
    let get = |cookie: &str, path: &str| {
        http.get(format!("{}{path}", server.base))
            .header("cookie", cookie)
            .send()
    };

    // Two sign-ins listed, this one marked; ending the other signs it out at once.
    let html = get(&first, "/ui/profile")
        .await
        .expect("send")
        .text()
        .await
        .expect("html");
    let rows: Vec<(String, bool)> = html
        .split("<tr>")
        .filter_map(|row| {
            let family = row
                .split("/ui/profile/sessions/")
                .nth(1)?
                .split('/')
                .next()?;
            Some((family.to_string(), row.contains("(this one)")))
        })
        .collect();
    assert_eq!(rows.len(), 2, "{html}");
    assert_eq!(rows.iter().filter(|(_, current)| *current).count(), 1);
    let other = &rows.iter().find(|(_, current)| !current).expect("other").0;
    let response = http
        .post(format!(
            "{}/ui/profile/sessions/{other}/revoke",
            server.base
        ))
        .header("cookie", &first)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        get(&second, "/ui/keys").await.expect("send").status(),
        StatusCode::SEE_OTHER
    );
    let live = first.clone();
    assert_eq!(
        get(&live, "/ui/keys").await.expect("send").status(),
        StatusCode::OK
    );

    // Another user's sign-in cannot be ended from here; a missing token is refused.
    let response = http
        .post(format!(
            "{}/ui/profile/sessions/not-a-family/revoke",
            server.base
        ))
        .header("cookie", &live)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = http
        .post(format!("{}/ui/profile/password", server.base))
        .header("cookie", &live)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("old_password=x&new_password=y")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // A new password that is too short is refused next to its field.
    let response = http
        .post(format!("{}/ui/profile/password", server.base))
        .header("cookie", &live)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "csrf={csrf}&old_password={ADMIN_PASSWORD}&new_password=short"
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        response
            .text()
            .await
            .expect("html")
            .contains("new-password-error")
    );

    // The right one changes it and ends every sign-in; the new password signs in.
    let response = http
        .post(format!("{}/ui/profile/password", server.base))
        .header("cookie", &live)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "csrf={csrf}&old_password={ADMIN_PASSWORD}&new_password=a-brand-new-password"
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        get(&live, "/ui/keys").await.expect("send").status(),
        StatusCode::SEE_OTHER
    );
    ui_sign_in(&server, "admin", "a-brand-new-password").await;
}

/// A form body, URL-encoded.
fn encode(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

/// A signed-in dashboard session driven over plain HTTP.
struct Ui {
    http: Client,
    base: String,
    cookie: String,
    csrf: String,
}

impl Ui {
    async fn sign_in(server: &TestServer, username: &str, password: &str) -> Ui {
        let (cookie, csrf) = ui_sign_in(server, username, password).await;
        Ui {
            http: plain(),
            base: server.base.clone(),
            cookie,
            csrf,
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .expect("send");
        let status = response.status();
        (status, response.text().await.expect("html"))
    }

    /// Posts a form with this session's CSRF token added.
    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> (StatusCode, String) {
        let mut form: Vec<(&str, &str)> = vec![("csrf", &self.csrf)];
        form.extend_from_slice(fields);
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode(&form))
            .send()
            .await
            .expect("send");
        let status = response.status();
        (status, response.text().await.expect("html"))
    }
}

/// The text of the element with this id (its first text node), for checks on a page.
fn by_id<'a>(html: &'a str, id: &str) -> Option<&'a str> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let rest = &html[at..];
    let start = rest.find('>')? + 1;
    let end = rest[start..].find('<')? + start;
    Some(rest[start..end].trim())
}

/// The first `href` after `marker` on the page.
fn link_after(html: &str, marker: &str) -> String {
    html.split(marker)
        .nth(1)
        .and_then(|rest| rest.split("href=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .expect("link")
        .replace("&amp;", "&")
}

#[tokio::test]
async fn dashboard_pages_for_users_projects_plans_and_audit() {
    let server = TestServer::start().await;
    let admin = Ui::sign_in(&server, "admin", ADMIN_PASSWORD).await;

    // Users: a short password is refused next to its field; a good one adds the user.
    let (status, html) = admin
        .post(
            "/ui/users",
            &[("username", "bob"), ("password", "short"), ("role", "user")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(by_id(&html, "password-error").is_some(), "{html}");
    assert!(
        html.contains("value=\"bob\""),
        "the form keeps what was typed"
    );
    let (status, html) = admin
        .post(
            "/ui/users",
            &[
                ("username", "bob"),
                ("password", "bobs-password-1"),
                ("role", "user"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_id(&html, "users-message"), Some("Added bob."));
    let bob = Ui::sign_in(&server, "bob", "bobs-password-1").await;

    // Administrator pages answer 403 to a user, with a page that says why.
    for page in ["/ui/users", "/ui/plans", "/ui/audit", "/ui/settings"] {
        let (status, html) = bob.get(page).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
        assert!(by_id(&html, "page-error").is_some(), "{page}");
    }
    // A form without its token is refused even with a valid session.
    let forged = plain()
        .post(format!("{}/ui/projects", server.base))
        .header("cookie", &bob.cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&[("name", "forged")]))
        .send()
        .await
        .expect("send");
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);

    // Projects: bob creates one, adds nobody by a wrong name, then the admin.
    let (status, html) = bob.post("/ui/projects", &[("name", "")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(by_id(&html, "project-name-error").is_some(), "{html}");
    let created = bob
        .http
        .post(format!("{}/ui/projects", server.base))
        .header("cookie", &bob.cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&[("csrf", bob.csrf.as_str()), ("name", "billing")]))
        .send()
        .await
        .expect("send");
    assert_eq!(created.status(), StatusCode::SEE_OTHER);
    let project_page = created
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("location")
        .to_string();
    let (status, html) = bob
        .post(
            &format!("{project_page}/members"),
            &[("username", "nobody"), ("role", "member")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(by_id(&html, "member-error").is_some_and(|e| e.contains("nobody")));
    let (status, html) = bob
        .post(
            &format!("{project_page}/members"),
            &[("username", "ADMIN"), ("role", "member")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("admin is a member now."));
    let (_, list) = bob.get("/ui/projects").await;
    assert!(list.contains(">billing</a>"), "{list}");
    let (status, html) = bob.post(&project_page, &[("name", "billing-eu")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_id(&html, "project-title"), Some("billing-eu"));

    // Plans: a wrong rate limit is refused next to its field; a right one is listed and
    // editable.
    let (status, html) = admin
        .post(
            "/ui/plans",
            &[("name", "pro"), ("rate_limits", "100 per minute")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(by_id(&html, "rate-limits-error").is_some_and(|e| e.contains("100 per minute")));
    let (status, _) = admin
        .post(
            "/ui/plans",
            &[
                ("name", "pro"),
                ("rate_limits", "100/60, 5000/3600:200"),
                ("monthly_quota", "1000000"),
                ("overage", "allow"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, plans) = admin.get("/ui/plans").await;
    assert!(plans.contains("100/60, 5000/3600:200"), "{plans}");
    let plan_page = link_after(&plans, "id=\"plans-table\"");
    let (status, html) = admin
        .post(
            &plan_page,
            &[
                ("name", "pro"),
                ("rate_limits", "50/60"),
                ("monthly_quota", ""),
                ("overage", "block"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("value=\"50/60\""));
    let (status, plan) = server.admin_get("/api/v1/plans").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(plan["plans"][0]["monthly_quota"], Value::Null);

    // Disable bob from the users page: his dashboard session ends at once.
    let (_, users) = admin.get("/ui/users").await;
    let bob_id = users
        .split("id=\"disable-bob\"")
        .next()
        .and_then(|before| before.rsplit("action=\"/ui/users/").next())
        .and_then(|rest| rest.split('"').next())
        .expect("bob's row")
        .to_string();
    let (status, html) = admin
        .post(&format!("/ui/users/{bob_id}"), &[("disabled", "true")])
        .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("Saved bob: user, disabled."));
    assert_eq!(bob.get("/ui/keys").await.0, StatusCode::SEE_OTHER);

    // The audit log shows what happened, filtered by action and by actor name.
    let (status, html) = admin.get("/ui/audit?action=user").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("user.create") && html.contains("user.update"),
        "{html}"
    );
    assert!(!html.contains(">project.create<"));
    let (_, html) = admin.get("/ui/audit?actor=user%3Abob").await;
    assert!(html.contains("project.create"), "{html}");
    assert!(!html.contains(">user.create<"));
}

#[tokio::test]
async fn dashboard_keys_search_page_rotate_and_usage() {
    let server = TestServer::start().await;
    let admin = Ui::sign_in(&server, "admin", ADMIN_PASSWORD).await;
    for n in 0..30 {
        server
            .create_key(json!({"name": format!("bulk {n:02}")}))
            .await;
    }
    let (key, created) = server
        .create_key(json!({"name": "needle", "expires_at": "2999-01-01T00:00:00Z"}))
        .await;
    let id = created["id"].as_str().expect("id").to_string();

    // 31 keys and the global one: two pages of 25; search narrows to one.
    let (_, html) = admin.get("/ui/keys").await;
    assert_eq!(by_id(&html, "key-count"), Some("32 keys"));
    let next = link_after(&html, "<nav class=\"pages\"");
    assert!(next.contains("page=2"), "{next}");
    let (_, second) = admin.get(&next).await;
    assert_eq!(
        second.matches("<tr>").count() - 1,
        7,
        "the header row and 7 keys"
    );
    let (_, found) = admin.get("/ui/keys?q=NEEDLE").await;
    assert_eq!(by_id(&found, "key-count"), Some("1 key"));
    let (_, none) = admin.get("/ui/keys?state=revoked").await;
    assert_eq!(by_id(&none, "key-count"), Some("0 keys"));

    // A bad expiry and a bad network are refused next to their fields.
    let (status, html) = admin
        .post(
            "/ui/keys",
            &[
                ("name", "x"),
                ("level", "user"),
                ("expires", "tomorrow"),
                ("allowed_cidrs", "10.0.0.0/99"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(by_id(&html, "expires-error").is_some(), "{html}");
    assert!(by_id(&html, "cidrs-error").is_some_and(|e| e.contains("10.0.0.0/99")));

    // Use the key, then read its page: usage counted, no refusals.
    assert_eq!(server.whoami(&key).await.0, StatusCode::OK);
    assert_eq!(server.whoami(&key).await.0, StatusCode::OK);
    let (status, page) = admin.get(&format!("/ui/keys/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<svg class=\"chart\""), "{page}");
    assert!(page.contains("<th>Allowed</th><td>2</td>"), "{page}");

    // Disable and enable from its page: refused, then let through.
    let disabled = admin
        .http
        .post(format!("{}/ui/keys/{id}/enabled", server.base))
        .header("cookie", &admin.cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&[
            ("csrf", admin.csrf.as_str()),
            ("enabled", "false"),
        ]))
        .send()
        .await
        .expect("send");
    assert_eq!(disabled.status(), StatusCode::SEE_OTHER);
    assert_eq!(server.whoami(&key).await.0, StatusCode::UNAUTHORIZED);
    let (_, page) = admin.get(&format!("/ui/keys/{id}")).await;
    assert!(page.contains("id=\"enable-key\""));
    assert!(
        page.contains("<th>Denied (scope, IP, project, state)</th><td>1</td>"),
        "{page}"
    );
    admin
        .post(&format!("/ui/keys/{id}/enabled"), &[("enabled", "true")])
        .await;
    assert_eq!(server.whoami(&key).await.0, StatusCode::OK);

    // Rotate with an hour's grace: a new key shown once, the old one still works.
    let (status, html) = admin
        .post(
            &format!("/ui/keys/{id}/rotate"),
            &[("grace_seconds", "3600")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let fresh = by_id(&html, "new-key-value").expect("new key").to_string();
    assert!(fresh.starts_with("kg_") && fresh != key);
    assert!(by_id(&html, "keys-message").is_some_and(|m| m.contains("keeps working until")));
    assert_eq!(server.whoami(&fresh).await.0, StatusCode::OK);
    assert_eq!(server.whoami(&key).await.0, StatusCode::OK);

    // Usage: the page totals what happened; the CSV has the same rows.
    let (status, usage) = admin.get(&format!("/ui/usage?key={id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        by_id(&usage, "usage-totals"),
        Some("5 requests, 1 refused.")
    );
    let csv = admin
        .http
        .get(format!("{}/ui/usage.csv?key={id}&range=7d", server.base))
        .header("cookie", &admin.cookie)
        .send()
        .await
        .expect("send");
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(
        csv.headers()["content-disposition"]
            .to_str()
            .expect("ascii")
            .contains("keygate-usage-7d.csv")
    );
    let text = csv.text().await.expect("csv");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("start,valid,rate_limited,quota_exceeded,denied,total")
    );
    let totals = lines.fold(0, |sum, line| {
        sum + line
            .rsplit(',')
            .next()
            .and_then(|t| t.parse::<u64>().ok())
            .expect("total")
    });
    assert_eq!(totals, 5);
    let (status, html) = admin.get("/ui/usage?key=not-a-key").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(by_id(&html, "page-error").is_some());

    // Overview: counts by state, and the key that expires soon needs attention.
    server
        .create_key(json!({"name": "soon gone", "expires_at": time_in_days(2)}))
        .await;
    let (_, overview) = admin.get("/ui/overview").await;
    assert!(overview.contains("soon gone</a>: expires"), "{overview}");
    assert!(overview.contains("id=\"recent-audit\""));

    // Profile: a personal key is generated, shown once, listed and revoked.
    let (status, html) = admin.post("/ui/profile/keys", &[("name", "laptop")]).await;
    assert_eq!(status, StatusCode::OK);
    let personal = by_id(&html, "personal-key-value")
        .expect("shown")
        .to_string();
    assert_eq!(server.whoami(&personal).await.0, StatusCode::OK);
    let revoke = html
        .split("/ui/profile/keys/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("revoke form")
        .to_string();
    let (status, html) = admin.post(&format!("/ui/profile/keys/{revoke}"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Revoked laptop"));
    assert_eq!(server.whoami(&personal).await.0, StatusCode::UNAUTHORIZED);
}

fn time_in_days(days: i64) -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::days(days))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

#[tokio::test]
async fn dashboard_webhook_endpoints_secrets_and_deliveries() {
    // Deliveries are stored, not sent: nothing leaves this machine.
    let mut config = test_config();
    config.webhooks.deliver = false;
    let server = TestServer::start_with(config).await;
    let admin = Ui::sign_in(&server, "admin", ADMIN_PASSWORD).await;

    // A URL that is not http(s) is refused next to its field; a good one shows its secret.
    let (status, html) = admin
        .post(
            "/ui/webhooks",
            &[("url", "ftp://example.com/hook"), ("owner", "me")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(by_id(&html, "url-error").is_some(), "{html}");
    let (status, html) = admin
        .post(
            "/ui/webhooks",
            &[
                ("url", "https://hooks.example.com/keygate"),
                ("events", "key.created"),
                ("events", "key.revoked"),
                ("owner", "me"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let secret = by_id(&html, "new-endpoint-secret")
        .expect("secret")
        .to_string();
    assert!(secret.starts_with("whsec_"));
    assert!(html.contains("key.created key.revoked"));
    let page = link_after(&html, "id=\"endpoints-table\"");

    // Its page masks the secret until revealed; rotating shows a new one.
    let (_, html) = admin.get(&page).await;
    assert!(!html.contains(&secret));
    let (status, html) = admin.post(&format!("{page}/secret"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_id(&html, "endpoint-secret"), Some(secret.as_str()));
    let (_, html) = admin
        .post(&format!("{page}/rotate"), &[("overlap_seconds", "3600")])
        .await;
    let rotated = by_id(&html, "endpoint-secret")
        .expect("new secret")
        .to_string();
    assert!(rotated.starts_with("whsec_") && rotated != secret);
    assert!(html.contains("The previous secret also signs until"));

    // A test event becomes a pending delivery in the log, which can be retried; pausing
    // is said, and a paused endpoint's deliveries cannot be retried.
    let (status, html) = admin.post(&format!("{page}/test"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("webhook.test"), "{html}");
    let delivery = html
        .split("/deliveries/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("a delivery with a retry button")
        .to_string();
    let (status, html) = admin
        .post(&format!("{page}/deliveries/{delivery}/retry"), &[])
        .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("due again now"));
    let (_, html) = admin.post(&page, &[("enabled", "false")]).await;
    assert!(html.contains("Paused"));
    let (status, html) = admin
        .post(&format!("{page}/deliveries/{delivery}/retry"), &[])
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(by_id(&html, "page-error").is_some_and(|e| e.contains("enable it first")));

    // Revealing is audited; deleting takes it off the list.
    let (_, audit) = admin.get("/ui/audit?action=webhook.reveal_secret").await;
    assert!(audit.contains(">webhook.reveal_secret<"), "{audit}");
    let deleted = admin
        .http
        .post(format!("{}{page}/delete", server.base))
        .header("cookie", &admin.cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&[("csrf", admin.csrf.as_str())]))
        .send()
        .await
        .expect("send");
    assert_eq!(deleted.status(), StatusCode::SEE_OTHER);
    let (_, list) = admin.get("/ui/webhooks").await;
    assert!(by_id(&list, "no-endpoints").is_some());
}
