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
