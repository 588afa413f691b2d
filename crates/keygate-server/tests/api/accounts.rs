//! Accounts, JWTs, per-user keys, permissions, throttling and the audit log.

use super::*;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keygate_server::throttle::ThrottleConfig;
use keygate_server::tokens::{JwtAlgorithm, TokenConfig};

impl TestServer {
    async fn login(&self, username: &str, password: &str) -> (StatusCode, Value) {
        let response = self
            .request(Method::POST, "/api/v1/auth/token")
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .expect("send");
        read(response).await
    }

    pub(super) async fn tokens(&self, username: &str, password: &str) -> (String, String) {
        let (status, body) = self.login(username, password).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 300);
        (
            body["access"].as_str().expect("access").into(),
            body["refresh"].as_str().expect("refresh").into(),
        )
    }

    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.request(method, path).bearer_auth(bearer);
        if let Some(body) = body {
            request = request.json(&body);
        }
        read(request.send().await.expect("send")).await
    }

    pub(super) async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        read(
            self.request(Method::POST, path)
                .json(&body)
                .send()
                .await
                .expect("send"),
        )
        .await
    }

    /// Creates a user (as the global key) and returns its id.
    pub(super) async fn add_user(&self, username: &str, role: &str) -> String {
        let (status, user) = self
            .admin_json(
                Method::POST,
                "/api/v1/users",
                json!({"username": username, "password": format!("{username}-password-123"), "role": role}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        user["id"].as_str().expect("id").to_string()
    }
}

#[tokio::test]
async fn sign_in_and_use_a_jwt_everywhere_a_key_works() {
    let server = TestServer::start().await;
    let (access, _) = server.tokens("admin", ADMIN_PASSWORD).await;
    let (status, me) = server
        .call(Method::GET, "/api/v1/whoami", &access, None)
        .await;
    assert_eq!(
        (
            status,
            me["auth"].as_str(),
            me["name"].as_str(),
            me["role"].as_str()
        ),
        (StatusCode::OK, Some("jwt"), Some("admin"), Some("admin"))
    );
    for path in [
        "/api/v1/keys",
        "/api/v1/users",
        "/api/v1/settings",
        "/api/v1/audit",
        "/api/v1/systeminfo",
        "/api/v1/users/me",
    ] {
        let (status, body) = server.call(Method::GET, path, &access, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    // The username is case-insensitive; a wrong password and an unknown user look alike.
    assert_eq!(
        server.login("ADMIN", ADMIN_PASSWORD).await.0,
        StatusCode::OK
    );
    let (s1, wrong) = server.login("admin", "not-the-password").await;
    let (s2, unknown) = server.login("nobody", "not-the-password").await;
    assert_error(s1, &wrong, 401, "invalid_credentials", "not-the-password");
    assert_error(s2, &unknown, 401, "invalid_credentials", "");
    assert_eq!(wrong["error"]["message"], unknown["error"]["message"]);
}

#[tokio::test]
async fn users_and_permissions() {
    let server = TestServer::start().await;
    let ana = server.add_user("ana", "user").await;
    let (status, body) = server
        .admin_json(
            Method::POST,
            "/api/v1/users",
            json!({"username": "Ana", "password": "long-enough-pw"}),
        )
        .await;
    assert_error(status, &body, 409, "conflict", "");
    let (status, body) = server
        .admin_json(
            Method::POST,
            "/api/v1/users",
            json!({"username": "bo", "password": "short"}),
        )
        .await;
    assert_error(status, &body, 400, "invalid_request", "short");
    let (status, body) = server
        .admin_json(
            Method::POST,
            "/api/v1/users",
            json!({"username": "bad name", "password": "long-enough-pw"}),
        )
        .await;
    assert_error(status, &body, 400, "invalid_request", "");

    let (status, list) = server.admin_get("/api/v1/users").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["users"].as_array().expect("users").len(), 2);
    assert!(!list.to_string().contains("password"));

    // A user is authenticated but not permitted to manage users.
    let (access, _) = server.tokens("ana", "ana-password-123").await;
    let (status, body) = server
        .call(Method::GET, "/api/v1/users", &access, None)
        .await;
    assert_error(status, &body, 403, "insufficient_permissions", &access);
    let (status, body) = read(
        server
            .request(Method::GET, "/api/v1/users")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(status, &body, 401, "missing_credentials", "");
    let (status, me) = server
        .call(Method::GET, "/api/v1/users/me", &access, None)
        .await;
    assert_eq!(
        (status, me["username"].as_str(), me["role"].as_str()),
        (StatusCode::OK, Some("ana"), Some("user"))
    );
    assert!(me["last_login_at"].is_string());

    let (status, perms) = server
        .call(Method::GET, "/api/v1/permissions", &access, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = perms["permissions"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        names.contains(&"keys:read")
            && names.contains(&"users:write")
            && names.contains(&"audit:read")
    );
    let user_role = perms["roles"]
        .as_array()
        .expect("roles")
        .iter()
        .find(|r| r["role"] == "user")
        .expect("user role");
    assert_eq!(
        user_role["permissions"],
        json!([
            "keys:read",
            "keys:write",
            "projects:read",
            "projects:write",
            "webhooks:read",
            "webhooks:write"
        ])
    );

    // Promote, update email, disable, delete.
    let path = format!("/api/v1/users/{ana}");
    let (status, updated) = server
        .admin_json(
            Method::PATCH,
            &path,
            json!({"role": "admin", "email": "ana@example.com"}),
        )
        .await;
    assert_eq!(
        (status, updated["role"].as_str(), updated["email"].as_str()),
        (StatusCode::OK, Some("admin"), Some("ana@example.com"))
    );
    let (status, users) = server
        .call(Method::GET, "/api/v1/users", &access, None)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the role is read live, not from the token: {users}"
    );
    let (status, _) = server
        .admin_json(Method::PATCH, &path, json!({"email": null, "role": "user"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server
        .admin_json(Method::PATCH, &path, json!({"role": "root"}))
        .await;
    assert_error(status, &body, 400, "invalid_request", "");
    let (status, body) = server
        .admin_json(Method::PATCH, &path, json!({"email": "not-an-email"}))
        .await;
    assert_error(status, &body, 400, "invalid_request", "");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("email")
    );
    let (status, _) = server
        .admin_json(Method::PATCH, &path, json!({"disabled": true}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server
        .call(Method::GET, "/api/v1/whoami", &access, None)
        .await;
    assert_error(status, &body, 401, "invalid_token", &access);
    assert_error_code(
        server.login("ana", "ana-password-123").await,
        401,
        "invalid_credentials",
    );
    let (status, deleted) = server.admin_json(Method::DELETE, &path, Value::Null).await;
    assert_eq!(
        (status, deleted["username"].as_str()),
        (StatusCode::OK, Some("ana"))
    );
    assert_eq!(server.admin_get(&path).await.0, StatusCode::NOT_FOUND);

    // The last administrator cannot be removed or demoted.
    let (_, list) = server.admin_get("/api/v1/users").await;
    let admin_id = list["users"][0]["id"].as_str().expect("id").to_string();
    let (status, body) = server
        .admin_json(
            Method::PATCH,
            &format!("/api/v1/users/{admin_id}"),
            json!({"role": "user"}),
        )
        .await;
    assert_error(status, &body, 409, "conflict", "");
    let (status, body) = server
        .admin_json(
            Method::DELETE,
            &format!("/api/v1/users/{admin_id}"),
            Value::Null,
        )
        .await;
    assert_error(status, &body, 409, "conflict", "");
}

fn assert_error_code((status, body): (StatusCode, Value), want_status: u16, want_code: &str) {
    assert_error(status, &body, want_status, want_code, "");
}

#[tokio::test]
async fn refresh_rotation_reuse_detection_and_logout() {
    let server = TestServer::start().await;
    let (access, refresh) = server.tokens("admin", ADMIN_PASSWORD).await;
    let (status, rotated) = server
        .post_json("/api/v1/auth/token/refresh", json!({"refresh": refresh}))
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let refresh2 = rotated["refresh"].as_str().expect("refresh").to_string();
    let access2 = rotated["access"].as_str().expect("access").to_string();
    assert_ne!(refresh2, refresh);
    assert_eq!(
        server
            .call(Method::GET, "/api/v1/whoami", &access2, None)
            .await
            .0,
        StatusCode::OK
    );

    // The first refresh token again: theft. The family dies, the new tokens with it.
    let (status, body) = server
        .post_json("/api/v1/auth/token/refresh", json!({"refresh": refresh}))
        .await;
    assert_error(status, &body, 401, "invalid_token", &refresh);
    assert!(
        body["error"]["hint"]
            .as_str()
            .expect("hint")
            .contains("already used")
    );
    let (status, _) = server
        .post_json("/api/v1/auth/token/refresh", json!({"refresh": refresh2}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for token in [&access, &access2] {
        let (status, body) = server
            .call(Method::GET, "/api/v1/whoami", token, None)
            .await;
        assert_error(status, &body, 401, "invalid_token", token);
    }
    let (_, audit) = server
        .admin_get("/api/v1/audit?action=auth.refresh_reused")
        .await;
    assert_eq!(audit["entries"].as_array().expect("entries").len(), 1);

    // Logout ends the sign-in: the access token is refused until it would have expired.
    let (access, refresh) = server.tokens("admin", ADMIN_PASSWORD).await;
    let response = server
        .request(Method::POST, "/api/v1/auth/logout")
        .json(&json!({"refresh": refresh}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, body) = server
        .call(Method::GET, "/api/v1/whoami", &access, None)
        .await;
    assert_error(status, &body, 401, "invalid_token", &access);
    assert_error_code(
        server
            .post_json("/api/v1/auth/token/refresh", json!({"refresh": refresh}))
            .await,
        401,
        "invalid_token",
    );

    // An access token is not a refresh token and vice versa.
    let (access, refresh) = server.tokens("admin", ADMIN_PASSWORD).await;
    assert_error_code(
        server
            .post_json("/api/v1/auth/token/refresh", json!({"refresh": access}))
            .await,
        401,
        "invalid_token",
    );
    let (status, body) = server
        .call(Method::GET, "/api/v1/whoami", &refresh, None)
        .await;
    assert_error(status, &body, 401, "invalid_token", &refresh);
    assert!(
        body["error"]["hint"]
            .as_str()
            .expect("hint")
            .contains("refresh token")
    );
}

#[tokio::test]
async fn password_change_needs_the_old_one_and_ends_sign_ins() {
    let server = TestServer::start().await;
    server.add_user("cy", "user").await;
    let (access, refresh) = server.tokens("cy", "cy-password-123").await;
    let path = "/api/v1/users/me/password";
    let (status, body) = server
        .call(
            Method::POST,
            path,
            &access,
            Some(json!({"old_password": "wrong-password", "new_password": "a-new-password-1"})),
        )
        .await;
    assert_error(
        status,
        &body,
        401,
        "invalid_credentials",
        "a-new-password-1",
    );
    let (status, body) = server
        .call(
            Method::POST,
            path,
            &access,
            Some(json!({"old_password": "cy-password-123", "new_password": "tiny"})),
        )
        .await;
    assert_error(status, &body, 400, "invalid_request", "tiny");
    let (status, _) = server
        .call(
            Method::POST,
            path,
            &access,
            Some(json!({"old_password": "cy-password-123", "new_password": "a-new-password-1"})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_error_code(
        server
            .post_json("/api/v1/auth/token/refresh", json!({"refresh": refresh}))
            .await,
        401,
        "invalid_token",
    );
    assert_error_code(
        server.login("cy", "cy-password-123").await,
        401,
        "invalid_credentials",
    );
    assert_eq!(
        server.login("cy", "a-new-password-1").await.0,
        StatusCode::OK
    );
    // The instance's own key is not a user.
    let (status, body) = server
        .call(
            Method::POST,
            path,
            &server.admin,
            Some(json!({"old_password": "x", "new_password": "yyyyyyyyyyyy"})),
        )
        .await;
    assert_error(status, &body, 404, "not_found", &server.admin);
}

fn forge(claims: &Value, alg: Algorithm, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("encode")
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn tampered_and_foreign_tokens_are_refused() {
    let server = TestServer::start().await;
    let (access, _) = server.tokens("admin", ADMIN_PASSWORD).await;
    let parts: Vec<&str> = access.split('.').collect();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[1])
        .expect("payload");
    let mut claims: Value = serde_json::from_slice(&payload).expect("claims");
    assert_eq!(
        (
            claims["typ"].as_str(),
            claims["iss"].as_str(),
            claims["aud"].as_str()
        ),
        (Some("access"), Some("keygate"), Some("keygate"))
    );
    for claim in ["sub", "name", "role", "iat", "exp", "jti", "nbf", "sid"] {
        assert!(!claims[claim].is_null(), "claim {claim} missing");
    }

    // Changed payload, same signature.
    let mut changed = claims.clone();
    changed["name"] = json!("mallory");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64url(changed.to_string().as_bytes()),
        parts[2]
    );
    // alg: none with no signature.
    let none = format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    // HS256 signed with a guessed secret.
    let guessed = forge(
        &claims,
        Algorithm::HS256,
        &EncodingKey::from_secret(b"secret"),
    );
    // EdDSA from a key keygate does not know (algorithm confusion the other way).
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let der = ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_der(&stranger).expect("der");
    let eddsa = forge(
        &claims,
        Algorithm::EdDSA,
        &EncodingKey::from_ed_der(der.as_bytes()),
    );

    // With the real secret, each claim check on its own.
    let secret = server
        .store
        .secret("jwt.hs256")
        .await
        .expect("secret")
        .expect("created at start");
    let secret = base64::engine::general_purpose::STANDARD
        .decode(secret)
        .expect("base64");
    let real = EncodingKey::from_secret(&secret);
    let now = clock::now_ms() as u64 / 1000;
    let mut expired = claims.clone();
    expired["exp"] = json!(now - 3600);
    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = json!("another-service");
    let mut wrong_iss = claims.clone();
    wrong_iss["iss"] = json!("someone-else");
    let mut future = claims.clone();
    future["nbf"] = json!(now + 3600);
    let mut refresh_typ = claims.clone();
    refresh_typ["typ"] = json!("refresh");
    let mut no_exp = claims.clone();
    no_exp.as_object_mut().expect("object").remove("exp");

    let cases = [
        (tampered, "invalid_token"),
        (none, "invalid_token"),
        (guessed, "invalid_token"),
        (eddsa, "invalid_token"),
        (forge(&expired, Algorithm::HS256, &real), "token_expired"),
        (forge(&wrong_aud, Algorithm::HS256, &real), "invalid_token"),
        (forge(&wrong_iss, Algorithm::HS256, &real), "invalid_token"),
        (forge(&future, Algorithm::HS256, &real), "invalid_token"),
        (
            forge(&refresh_typ, Algorithm::HS256, &real),
            "invalid_token",
        ),
        (forge(&no_exp, Algorithm::HS256, &real), "invalid_token"),
    ];
    for (token, code) in &cases {
        let (status, body) = server
            .call(Method::GET, "/api/v1/whoami", token, None)
            .await;
        assert_error(status, &body, 401, code, token);
    }
    // The forging works: a correctly signed, fresh copy is accepted.
    claims["jti"] = json!("forged-but-valid");
    let (status, _) = server
        .call(
            Method::GET,
            "/api/v1/whoami",
            &forge(&claims, Algorithm::HS256, &real),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn eddsa_tokens_verify_offline_from_the_jwks() {
    let server = TestServer::start_with(ServerConfig {
        tokens: TokenConfig {
            algorithm: JwtAlgorithm::EdDSA,
            ..TokenConfig::default()
        },
        ..test_config()
    })
    .await;
    let (access, _) = server.tokens("admin", ADMIN_PASSWORD).await;
    let (status, jwks) = read(
        server
            .request(Method::GET, "/.well-known/jwks.json")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let jwk = &jwks["keys"][0];
    assert_eq!(
        (
            jwk["kty"].as_str(),
            jwk["crv"].as_str(),
            jwk["alg"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
    );
    let header = jsonwebtoken::decode_header(&access).expect("header");
    assert_eq!(header.kid.as_deref(), jwk["kid"].as_str());
    // Another service verifies the token with nothing but the JWKS.
    let key =
        jsonwebtoken::DecodingKey::from_ed_components(jwk["x"].as_str().expect("x")).expect("key");
    let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["keygate"]);
    let data = jsonwebtoken::decode::<Value>(&access, &key, &validation).expect("verifies offline");
    assert_eq!(data.claims["typ"], "access");
    assert_eq!(
        server
            .call(Method::GET, "/api/v1/whoami", &access, None)
            .await
            .0,
        StatusCode::OK
    );
    // An HS256 token signed with the public key as the secret (the classic confusion).
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwk["x"].as_str().expect("x"))
        .expect("x");
    let confused = forge(
        &data.claims,
        Algorithm::HS256,
        &EncodingKey::from_secret(&x),
    );
    let (status, body) = server
        .call(Method::GET, "/api/v1/whoami", &confused, None)
        .await;
    assert_error(status, &body, 401, "invalid_token", &confused);
    // HS256 instances publish no keys.
    let hs = TestServer::start().await;
    let (_, jwks) = read(
        hs.request(Method::GET, "/.well-known/jwks.json")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(jwks, json!({"keys": []}));
}

#[tokio::test]
async fn keys_belong_to_people() {
    let server = TestServer::start().await;
    let dee = server.add_user("dee", "user").await;
    let eve = server.add_user("eve", "user").await;
    let (dee_jwt, _) = server.tokens("dee", "dee-password-123").await;

    // A user creates their own key; it acts as them.
    let (status, created) = server
        .call(
            Method::POST,
            "/api/v1/keys",
            &dee_jwt,
            Some(json!({"name": "dee laptop", "scopes": ["*"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["owner"].as_str(), Some(dee.as_str()));
    let dee_key = created["key"].as_str().expect("key").to_string();
    let (status, me) = server.whoami(&dee_key).await;
    assert_eq!(
        (status, me["user_id"].as_str(), me["role"].as_str()),
        (StatusCode::OK, Some(dee.as_str()), Some("user"))
    );
    // Its `*` is cut down to the owner's role: keys yes, users no.
    assert_eq!(
        server
            .call(Method::GET, "/api/v1/keys", &dee_key, None)
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = server
        .call(Method::GET, "/api/v1/users", &dee_key, None)
        .await;
    assert_error(status, &body, 403, "insufficient_permissions", &dee_key);
    // The verify API: application scopes are the key's own business.
    assert_eq!(
        server
            .verify(json!({"key": dee_key, "scopes": ["files:read"]}))
            .await["code"],
        "VALID"
    );

    // Admins create keys for anyone and filter by owner; users see only their own.
    let (status, for_eve) = server
        .admin_json(
            Method::POST,
            "/api/v1/keys",
            json!({"name": "eve ci", "user_id": eve}),
        )
        .await;
    assert_eq!(
        (status, for_eve["owner"].as_str()),
        (StatusCode::CREATED, Some(eve.as_str()))
    );
    let (_, eves) = server
        .admin_get(&format!("/api/v1/keys?user_id={eve}"))
        .await;
    assert_eq!(eves["keys"].as_array().expect("keys").len(), 1);
    let (_, mine) = server
        .call(Method::GET, "/api/v1/keys", &dee_jwt, None)
        .await;
    let mine = mine["keys"].as_array().expect("keys");
    assert!(mine.len() == 1 && mine[0]["owner"] == json!(dee));
    let (status, body) = server
        .call(
            Method::GET,
            &format!("/api/v1/keys?user_id={eve}"),
            &dee_jwt,
            None,
        )
        .await;
    assert_error(status, &body, 403, "insufficient_permissions", "");
    let eve_key_path = format!("/api/v1/keys/{}", for_eve["id"].as_str().expect("id"));
    for method in [Method::GET, Method::DELETE] {
        let (status, body) = server.call(method, &eve_key_path, &dee_jwt, None).await;
        assert_error(status, &body, 404, "not_found", "");
    }
    let (status, body) = server
        .call(
            Method::POST,
            "/api/v1/keys",
            &dee_jwt,
            Some(json!({"name": "sneaky", "user_id": eve})),
        )
        .await;
    assert_error(status, &body, 403, "insufficient_permissions", "");
    let global_path = format!(
        "/api/v1/keys/{}",
        server.whoami(&server.admin).await.1["key_id"]
            .as_str()
            .expect("id")
    );
    assert_eq!(
        server
            .call(Method::GET, &global_path, &dee_jwt, None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    // Disabling the owner stops their keys at once; enabling brings them back.
    let dee_path = format!("/api/v1/users/{dee}");
    server
        .admin_json(Method::PATCH, &dee_path, json!({"disabled": true}))
        .await;
    let (status, body) = server.whoami(&dee_key).await;
    assert_error(status, &body, 401, "disabled_api_key", &dee_key);
    assert!(
        body["error"]["hint"]
            .as_str()
            .expect("hint")
            .contains("account")
    );
    server
        .admin_json(Method::PATCH, &dee_path, json!({"disabled": false}))
        .await;
    assert_eq!(server.whoami(&dee_key).await.0, StatusCode::OK);
    // Deleting the owner revokes their keys.
    server
        .admin_json(Method::DELETE, &dee_path, Value::Null)
        .await;
    let (status, body) = server.whoami(&dee_key).await;
    assert_error(status, &body, 401, "revoked_api_key", &dee_key);
}

#[tokio::test]
async fn one_key_per_user_revokes_the_previous_one() {
    let server = TestServer::start().await;
    server.add_user("fay", "user").await;
    let (jwt, _) = server.tokens("fay", "fay-password-123").await;
    let (status, settings) = server
        .admin_json(
            Method::PATCH,
            "/api/v1/settings",
            json!({"keys_per_user": 1}),
        )
        .await;
    assert_eq!(
        (status, settings["keys_per_user"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    let (_, first) = server
        .call(
            Method::POST,
            "/api/v1/keys",
            &jwt,
            Some(json!({"name": "first"})),
        )
        .await;
    let first_key = first["key"].as_str().expect("key").to_string();
    assert_eq!(server.whoami(&first_key).await.0, StatusCode::OK);
    let (status, second) = server
        .call(
            Method::POST,
            "/api/v1/keys",
            &jwt,
            Some(json!({"name": "second"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = server.whoami(&first_key).await;
    assert_error(status, &body, 401, "revoked_api_key", &first_key);
    assert_eq!(
        server.whoami(second["key"].as_str().expect("key")).await.0,
        StatusCode::OK
    );
    // The instance's keys are not personal keys: the rule does not touch them.
    server.create_key(json!({"name": "service a"})).await;
    server.create_key(json!({"name": "service b"})).await;
    assert_eq!(server.whoami(&server.admin).await.0, StatusCode::OK);
    let (status, body) = server
        .admin_json(
            Method::PATCH,
            "/api/v1/settings",
            json!({"keys_per_user": 0}),
        )
        .await;
    assert_error(status, &body, 400, "invalid_request", "");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("keys_per_user")
    );
    let (_, settings) = server
        .admin_json(
            Method::PATCH,
            "/api/v1/settings",
            json!({"keys_per_user": null}),
        )
        .await;
    assert_eq!(settings["keys_per_user"], Value::Null);
}

#[tokio::test]
async fn the_global_key_can_be_shown_and_regenerated() {
    let server = TestServer::start().await;
    let (status, masked) = server.admin_get("/api/v1/settings/api-key").await;
    assert_eq!(
        (status, masked["masked"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    assert!(!masked.to_string().contains(&server.admin));
    assert!(masked["key"].as_str().expect("key").ends_with('…'));
    let (_, shown) = server
        .admin_get("/api/v1/settings/api-key?reveal=true")
        .await;
    assert_eq!(
        (shown["key"].as_str(), shown["masked"].as_bool()),
        (Some(server.admin.as_str()), Some(false))
    );

    server.add_user("gus", "user").await;
    let (jwt, _) = server.tokens("admin", ADMIN_PASSWORD).await;
    let (status, fresh) = server
        .call(
            Method::POST,
            "/api/v1/settings/api-key/regenerate",
            &jwt,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{fresh}");
    let new_key = fresh["key"].as_str().expect("key").to_string();
    assert_ne!(new_key, server.admin);
    let (status, body) = server.whoami(&server.admin).await;
    assert_error(status, &body, 401, "expired_api_key", &server.admin);
    let (status, me) = server.whoami(&new_key).await;
    assert_eq!(
        (status, me["scopes"].clone()),
        (StatusCode::OK, json!(["*"]))
    );
    let (_, shown) = server
        .call(
            Method::GET,
            "/api/v1/settings/api-key?reveal=true",
            &new_key,
            None,
        )
        .await;
    assert_eq!(shown["key"].as_str(), Some(new_key.as_str()));
    // A user may not.
    let (user_jwt, _) = server.tokens("gus", "gus-password-123").await;
    let (status, body) = server
        .call(Method::GET, "/api/v1/settings/api-key", &user_jwt, None)
        .await;
    assert_error(status, &body, 403, "insufficient_permissions", "");
    let (_, audit) = server
        .call(
            Method::GET,
            "/api/v1/audit?action=key.regenerate",
            &new_key,
            None,
        )
        .await;
    assert_eq!(audit["entries"].as_array().expect("entries").len(), 1);
}

#[tokio::test]
async fn sign_in_throttling() {
    let server = TestServer::start_with(ServerConfig {
        throttle: ThrottleConfig {
            max_failures_per_user: 3,
            free_failures: 1,
            delay_step: Duration::from_millis(20),
            delay_max: Duration::from_millis(40),
            ..ThrottleConfig::default()
        },
        ..test_config()
    })
    .await;
    for _ in 0..3 {
        assert_error_code(
            server.login("admin", "guess-guess-guess").await,
            401,
            "invalid_credentials",
        );
    }
    // Locked: even the right password waits for the window.
    let response = server
        .request(Method::POST, "/api/v1/auth/token")
        .json(&json!({"username": "Admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .expect("send");
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after > 0 && retry_after <= 15 * 60, "{retry_after}");
    let (status, body) = read(response).await;
    assert_error(status, &body, 429, "rate_limited", ADMIN_PASSWORD);
    // Unknown usernames are counted too, so probing them is throttled the same way.
    for _ in 0..3 {
        assert_error_code(
            server.login("ghost", "guess-guess-guess").await,
            401,
            "invalid_credentials",
        );
    }
    assert_error_code(
        server.login("ghost", "guess-guess-guess").await,
        429,
        "rate_limited",
    );
    let (_, failures) = server
        .admin_get("/api/v1/audit?action=auth.login_failed")
        .await;
    assert_eq!(failures["entries"].as_array().expect("entries").len(), 6);
}

#[tokio::test]
async fn the_audit_log_records_who_did_what_and_never_a_secret() {
    let server = TestServer::start().await;
    let (jwt, refresh) = server.tokens("admin", ADMIN_PASSWORD).await;
    let (_, created) = server
        .call(
            Method::POST,
            "/api/v1/keys",
            &jwt,
            Some(json!({"name": "audited"})),
        )
        .await;
    let key = created["key"].as_str().expect("key").to_string();
    let key_id = created["id"].as_str().expect("id").to_string();
    server
        .admin_json(
            Method::POST,
            &format!("/api/v1/keys/{key_id}/rotate"),
            json!({"grace_seconds": 5}),
        )
        .await;
    server
        .admin_json(
            Method::DELETE,
            &format!("/api/v1/keys/{key_id}"),
            Value::Null,
        )
        .await;
    let user = server.add_user("hal", "user").await;
    server
        .admin_json(
            Method::PATCH,
            &format!("/api/v1/users/{user}"),
            json!({"email": "hal@example.com"}),
        )
        .await;
    server
        .admin_json(
            Method::PATCH,
            "/api/v1/settings",
            json!({"query_param_enabled": true}),
        )
        .await;
    server.login("admin", "a-wrong-password").await;
    server
        .post_json("/api/v1/auth/logout", json!({"refresh": refresh}))
        .await;

    let (status, log) = server.admin_get("/api/v1/audit?limit=1000").await;
    assert_eq!(status, StatusCode::OK);
    let entries = log["entries"].as_array().expect("entries");
    let actions: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for expected in [
        "auth.login",
        "key.create",
        "key.rotate",
        "key.revoke",
        "user.create",
        "user.update",
        "settings.update",
        "auth.login_failed",
        "auth.logout",
    ] {
        assert!(
            actions.contains(&expected),
            "{expected} missing from {actions:?}"
        );
    }
    let create = entries
        .iter()
        .find(|e| e["action"] == "key.create" && e["target"] == json!(format!("key:{key_id}")))
        .expect("entry");
    assert!(
        create["actor"]
            .as_str()
            .expect("actor")
            .starts_with("user:")
    );
    assert!(
        create["credential"]
            .as_str()
            .expect("credential")
            .starts_with("session:")
    );
    assert_eq!(create["ip"], "127.0.0.1");
    // Filters and paging.
    let (_, keys_only) = server.admin_get("/api/v1/audit?action=key").await;
    assert!(
        keys_only["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .all(|e| e["action"].as_str().expect("action").starts_with("key."))
    );
    let (_, page) = server.admin_get("/api/v1/audit?limit=2").await;
    let before = page["next_before"].as_u64().expect("more pages");
    let (_, next) = server
        .admin_get(&format!("/api/v1/audit?limit=2&before={before}"))
        .await;
    assert!(next["entries"][0]["seq"].as_u64().expect("seq") < before);
    assert_error_code(
        server.admin_get("/api/v1/audit?since=yesterday").await,
        400,
        "invalid_request",
    );

    // No password, key or token anywhere in the log.
    let text = log.to_string();
    for secret in [
        ADMIN_PASSWORD,
        "a-wrong-password",
        "hal-password-123",
        &key,
        &jwt,
        &refresh,
        &server.admin,
    ] {
        assert!(!text.contains(secret), "a secret is in the audit log");
    }
}

#[tokio::test]
async fn nobody_hands_out_more_than_they_hold() {
    let server = TestServer::start().await;
    let (writer, _) = server
        .create_key(json!({"name": "writer", "scopes": ["keys:write", "keys:read", "files:*"]}))
        .await;
    // A key may create keys with what it holds, not more.
    let (status, _) = server
        .call(
            Method::POST,
            "/api/v1/keys",
            &writer,
            Some(json!({"name": "ok", "scopes": ["files:read", "files:*"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    for scopes in [
        json!(["admin"]),
        json!(["*"]),
        json!(["users:write"]),
        json!(["other:read"]),
    ] {
        let (status, body) = server
            .call(
                Method::POST,
                "/api/v1/keys",
                &writer,
                Some(json!({"name": "no", "scopes": scopes})),
            )
            .await;
        assert_error(status, &body, 403, "insufficient_permissions", &writer);
    }
    let writer_id = server.whoami(&writer).await.1["key_id"]
        .as_str()
        .expect("id")
        .to_string();
    let (status, _) = server
        .call(
            Method::PATCH,
            &format!("/api/v1/keys/{writer_id}"),
            &writer,
            Some(json!({"scopes": ["*"]})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The global key is replaced only through the settings endpoint.
    let global_id = server.whoami(&server.admin).await.1["key_id"]
        .as_str()
        .expect("id")
        .to_string();
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/api/v1/keys/{global_id}/rotate"),
            &writer,
            Some(json!({})),
        )
        .await;
    assert_error(status, &body, 409, "conflict", "");
    // A user: not someone else's key, not the global key, not keygate permissions beyond the role.
    server.add_user("ivy", "user").await;
    let (jwt, _) = server.tokens("ivy", "ivy-password-123").await;
    let (status, _) = server
        .call(
            Method::POST,
            &format!("/api/v1/keys/{global_id}/rotate"),
            &jwt,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .call(
            Method::POST,
            "/api/v1/keys",
            &jwt,
            Some(json!({"name": "x", "scopes": ["users:write"]})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, mine) = server
        .call(
            Method::POST,
            "/api/v1/keys",
            &jwt,
            Some(json!({"name": "mine", "scopes": ["*"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let mine_path = format!("/api/v1/keys/{}", mine["id"].as_str().expect("id"));
    let (status, _) = server
        .call(
            Method::PATCH,
            &mine_path,
            &jwt,
            Some(json!({"limits": {"monthly_quota": 1000000}})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "limits are the operator's business"
    );
    let (status, _) = server
        .call(
            Method::PATCH,
            &mine_path,
            &jwt,
            Some(json!({"expires_at": "2001-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A rotated key's expiry cannot be reopened.
    let (status, rotated) = server
        .call(
            Method::POST,
            &format!("{mine_path}/rotate"),
            &jwt,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let (status, body) = server
        .admin_json(Method::PATCH, &mine_path, json!({"expires_at": null}))
        .await;
    assert_error(status, &body, 409, "conflict", "");
}

#[tokio::test]
async fn logout_with_an_expired_refresh_token_still_ends_the_sign_in() {
    let server = TestServer::start().await;
    let (access, refresh) = server.tokens("admin", ADMIN_PASSWORD).await;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(refresh.split('.').nth(1).expect("payload"))
        .expect("b64");
    let mut claims: Value = serde_json::from_slice(&payload).expect("claims");
    claims["exp"] = json!(clock::now_ms() as u64 / 1000 - 7200);
    let secret = server
        .store
        .secret("jwt.hs256")
        .await
        .expect("secret")
        .expect("secret");
    let secret = base64::engine::general_purpose::STANDARD
        .decode(secret)
        .expect("b64");
    let expired = forge(
        &claims,
        Algorithm::HS256,
        &EncodingKey::from_secret(&secret),
    );
    let response = server
        .request(Method::POST, "/api/v1/auth/logout")
        .json(&json!({"refresh": expired}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, body) = server
        .call(Method::GET, "/api/v1/whoami", &access, None)
        .await;
    assert_error(status, &body, 401, "invalid_token", &access);
}

#[tokio::test]
async fn projects_and_key_levels() {
    let server = TestServer::start().await;
    let ana = server.add_user("ana", "user").await;
    let bob = server.add_user("bob", "user").await;
    let (ana_jwt, _) = server.tokens("ana", "ana-password-123").await;
    let (bob_jwt, _) = server.tokens("bob", "bob-password-123").await;
    // Users create projects and own them.
    let (status, alpha) = server
        .call(
            Method::POST,
            "/api/v1/projects",
            &ana_jwt,
            Some(json!({"name": "alpha"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{alpha}");
    assert_eq!(alpha["members"], json!([{"user_id": ana, "role": "owner"}]));
    let alpha_id = alpha["id"].as_str().expect("id").to_string();
    let (_, beta) = server
        .call(
            Method::POST,
            "/api/v1/projects",
            &bob_jwt,
            Some(json!({"name": "beta"})),
        )
        .await;
    let beta_id = beta["id"].as_str().expect("id").to_string();
    let (_, mine) = server
        .call(Method::GET, "/api/v1/projects", &ana_jwt, None)
        .await;
    assert_eq!(mine["projects"].as_array().expect("list").len(), 1);
    assert_eq!(
        server
            .call(
                Method::GET,
                &format!("/api/v1/projects/{beta_id}"),
                &ana_jwt,
                None
            )
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (_, all) = server.admin_get("/api/v1/projects").await;
    assert_eq!(all["projects"].as_array().expect("list").len(), 2);

    // A user-level key acts in every project of its owner, naming it in X-Project-ID.
    let (_, user_key) = server
        .call(
            Method::POST,
            "/api/v1/keys",
            &ana_jwt,
            Some(json!({"name": "ana user"})),
        )
        .await;
    assert_eq!(user_key["level"], "user");
    let user_key = user_key["key"].as_str().expect("key").to_string();
    let with_project = |key: &str, project: &str| {
        server
            .request(Method::GET, "/api/v1/whoami")
            .bearer_auth(key)
            .header("X-Project-ID", project)
            .send()
    };
    let (status, me) = read(with_project(&user_key, &alpha_id).await.expect("send")).await;
    assert_eq!(
        (status, me["project_id"].as_str()),
        (StatusCode::OK, Some(alpha_id.as_str()))
    );
    let (status, body) = read(with_project(&user_key, &beta_id).await.expect("send")).await;
    assert_error(status, &body, 403, "project_forbidden", &user_key);
    let (status, body) = read(with_project(&user_key, "nope").await.expect("send")).await;
    assert_error(status, &body, 403, "project_forbidden", &user_key);
    // The verify API: a project-scoped route needs the project from a user-level key.
    let verdict = server
        .verify(json!({"key": user_key, "project_required": true}))
        .await;
    assert_eq!(verdict["code"], "PROJECT_REQUIRED");
    let verdict = server
        .verify(json!({"key": user_key, "project_required": true, "project_id": alpha_id}))
        .await;
    assert_eq!(
        (verdict["code"].as_str(), verdict["project_id"].as_str()),
        (Some("VALID"), Some(alpha_id.as_str()))
    );
    assert_eq!(
        server
            .verify(json!({"key": user_key, "project_id": beta_id}))
            .await["code"],
        "PROJECT_FORBIDDEN"
    );
    // An unscoped route (project_required false) needs no header.
    assert_eq!(
        server.verify(json!({"key": user_key})).await["code"],
        "VALID"
    );

    // A project-level key is pinned: no header needed, another project refused.
    let (status, pinned) = server
        .call(
            Method::POST,
            "/api/v1/keys",
            &ana_jwt,
            Some(json!({"name": "alpha ci", "level": "project", "project_id": alpha_id})),
        )
        .await;
    assert_eq!(
        (status, pinned["level"].as_str()),
        (StatusCode::CREATED, Some("project")),
        "{pinned}"
    );
    let pinned = pinned["key"].as_str().expect("key").to_string();
    let verdict = server
        .verify(json!({"key": pinned, "project_required": true}))
        .await;
    assert_eq!(
        (verdict["code"].as_str(), verdict["project_id"].as_str()),
        (Some("VALID"), Some(alpha_id.as_str()))
    );
    assert_eq!(
        server
            .verify(json!({"key": pinned, "project_id": beta_id}))
            .await["code"],
        "PROJECT_FORBIDDEN"
    );
    let (status, me) = server.whoami(&pinned).await;
    assert_eq!(
        (status, me["project_id"].as_str()),
        (StatusCode::OK, Some(alpha_id.as_str()))
    );
    // Pinning to a project the owner is not in, or with the wrong shape, is refused.
    let (status, _) = server
        .call(
            Method::POST,
            "/api/v1/keys",
            &ana_jwt,
            Some(json!({"name": "x", "level": "project", "project_id": beta_id})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for body in [
        json!({"name": "x", "level": "project"}),
        json!({"name": "x", "project_id": alpha_id}),
        json!({"name": "x", "level": "team"}),
    ] {
        let (status, _) = server
            .call(Method::POST, "/api/v1/keys", &ana_jwt, Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }

    // Members: bob joins alpha and his user-level key may act there; only owners manage.
    let (status, _) = server
        .call(
            Method::PUT,
            &format!("/api/v1/projects/{alpha_id}/members/{bob}"),
            &bob_jwt,
            Some(json!({"role": "member"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "bob cannot see alpha yet");
    let (status, project) = server
        .call(
            Method::PUT,
            &format!("/api/v1/projects/{alpha_id}/members/{bob}"),
            &ana_jwt,
            Some(json!({"role": "member"})),
        )
        .await;
    assert_eq!(
        (status, project["members"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(2))
    );
    let (_, bob_key) = server
        .call(
            Method::POST,
            "/api/v1/keys",
            &bob_jwt,
            Some(json!({"name": "bob user"})),
        )
        .await;
    let bob_key = bob_key["key"].as_str().expect("key").to_string();
    assert_eq!(
        with_project(&bob_key, &alpha_id)
            .await
            .expect("send")
            .status(),
        StatusCode::OK
    );
    let (status, _) = server
        .call(
            Method::PATCH,
            &format!("/api/v1/projects/{alpha_id}"),
            &bob_jwt,
            Some(json!({"name": "mine now"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server
        .call(
            Method::DELETE,
            &format!("/api/v1/projects/{alpha_id}/members/{bob}"),
            &ana_jwt,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        with_project(&bob_key, &alpha_id)
            .await
            .expect("send")
            .status(),
        StatusCode::FORBIDDEN
    );
    let (status, _) = server
        .call(
            Method::PUT,
            &format!("/api/v1/projects/{alpha_id}/members/{bob}"),
            &ana_jwt,
            Some(json!({"role": "king"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Deleting the project revokes its project-level keys.
    let (status, _) = server
        .call(
            Method::DELETE,
            &format!("/api/v1/projects/{alpha_id}"),
            &ana_jwt,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.whoami(&pinned).await;
    assert_error(status, &body, 401, "revoked_api_key", &pinned);
    // A JWT names a project the same way.
    let (status, me) = read(
        server
            .request(Method::GET, "/api/v1/whoami")
            .bearer_auth(&bob_jwt)
            .header("X-Project-ID", &beta_id)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(
        (status, me["project_id"].as_str()),
        (StatusCode::OK, Some(beta_id.as_str()))
    );
    let (status, _) = read(
        server
            .request(Method::GET, "/api/v1/whoami")
            .bearer_auth(&ana_jwt)
            .header("X-Project-ID", &beta_id)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn exempt_routes_need_no_project_header() {
    let server = TestServer::start_with(ServerConfig {
        project_exempt_paths: vec!["/validate".into(), "/projects".into()],
        ..test_config()
    })
    .await;
    server.add_user("zed", "user").await;
    let (jwt, _) = server.tokens("zed", "zed-password-123").await;
    let (_, key) = server
        .call(
            Method::POST,
            "/api/v1/keys",
            &jwt,
            Some(json!({"name": "zed"})),
        )
        .await;
    let key = key["key"].as_str().expect("key").to_string();
    for (path, code) in [
        ("/validate", "VALID"),
        ("/projects", "VALID"),
        ("/projects/123/sites", "VALID"),
        ("/sites", "PROJECT_REQUIRED"),
        ("/validated", "PROJECT_REQUIRED"),
    ] {
        let verdict = server.verify(json!({"key": key, "path": path})).await;
        assert_eq!(verdict["code"], code, "{path}");
    }
}

#[tokio::test]
async fn a_key_an_administrator_disabled_stays_off_for_its_owner() {
    let server = TestServer::start().await;
    server.add_user("dee", "user").await;
    let (dee_jwt, _) = server.tokens("dee", "dee-password-123").await;
    let (status, created) = server
        .call(
            Method::POST,
            "/api/v1/keys",
            &dee_jwt,
            Some(json!({"name": "dee laptop"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let path = format!("/api/v1/keys/{}", created["id"].as_str().expect("id"));
    let set = |enabled: bool| json!({ "enabled": enabled });

    // Switched off and on by the owner: theirs to decide.
    for enabled in [false, true] {
        let (status, body) = server
            .call(Method::PATCH, &path, &dee_jwt, Some(set(enabled)))
            .await;
        assert_eq!(
            (status, body["enabled"].as_bool()),
            (StatusCode::OK, Some(enabled))
        );
    }
    // Switched off by an administrator: the owner cannot switch it back on.
    let (status, _) = server.admin_json(Method::PATCH, &path, set(false)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server
        .call(Method::PATCH, &path, &dee_jwt, Some(set(true)))
        .await;
    assert_error(status, &body, 403, "insufficient_permissions", "");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("administrator")),
        "{body}"
    );
    // Nor rotate it into a replacement of its own, nor outlast the record by renaming.
    let (status, body) = server
        .call(
            Method::POST,
            &format!("{path}/rotate"),
            &dee_jwt,
            Some(json!({})),
        )
        .await;
    assert_error(status, &body, 403, "insufficient_permissions", "");
    for n in 0..3 {
        let (status, _) = server
            .call(
                Method::PATCH,
                &path,
                &dee_jwt,
                Some(json!({"name": format!("n{n}")})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = server
        .call(Method::PATCH, &path, &dee_jwt, Some(set(true)))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Other changes still work; an administrator can switch it on again.
    let (status, _) = server
        .call(
            Method::PATCH,
            &path,
            &dee_jwt,
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.admin_json(Method::PATCH, &path, set(true)).await;
    assert_eq!(
        (status, body["enabled"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    // The audit log says who switched it, and which way.
    let (_, audit) = server
        .admin_get(&format!(
            "/api/v1/audit?action=key.update&target=key:{}",
            created["id"].as_str().expect("id")
        ))
        .await;
    let switches: Vec<bool> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["detail"]["enabled"].as_bool())
        .collect();
    assert_eq!(switches, vec![true, false, true, false], "newest first");

    // A key an administrator created switched off for dee is not dee's to switch on.
    let dee_id = server.admin_get("/api/v1/users").await.1["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["username"] == "dee")
        .expect("dee")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (status, made) = server
        .admin_json(
            Method::POST,
            "/api/v1/keys",
            json!({"name": "held", "user_id": dee_id, "enabled": false}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let held = format!("/api/v1/keys/{}", made["id"].as_str().expect("id"));
    let (status, _) = server
        .call(Method::PATCH, &held, &dee_jwt, Some(set(true)))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
