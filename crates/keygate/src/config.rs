//! Configuration: defaults < TOML file (`--config`) < environment (`KEYGATE_*`) < flags.
//!
//! clap resolves flag-over-environment for each setting; this module puts the file under
//! both and the defaults under everything, and reports every bad key at once.

use keygate_api::keys::PlanRequest;
use keygate_api::system::SettingsPatch;
use keygate_core::credential::Transport;
use keygate_server::config::{ServerConfig, UpstreamConfig};
use keygate_server::http::alias::{Alias, Aliases};
use keygate_server::http::docs::SecuritySchemeNames;
use keygate_server::http::error::ErrorPolicy;
use keygate_server::http::forward::IdentityHeaderNames;
use keygate_server::http::watch::ClientTimeouts;
use keygate_server::passwords::PasswordCost;
use keygate_server::throttle::ThrottleConfig;
use keygate_server::tokens::{JwtAlgorithm, TokenConfig};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The settings a TOML file may hold. Unknown keys are errors.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub body_limit: Option<usize>,
    pub api_key_header: Option<String>,
    pub transports: Option<Vec<Transport>>,
    pub flush_interval: Option<String>,
    pub feed_poll_interval: Option<String>,
    pub log_format: Option<String>,
    pub jwt_algorithm: Option<String>,
    pub access_token_ttl: Option<String>,
    pub refresh_token_ttl: Option<String>,
    pub password_memory_kib: Option<u32>,
    pub password_iterations: Option<u32>,
    pub login_max_failures: Option<u32>,
    pub trusted_proxies: Option<Vec<String>>,
    pub client_ip_header: Option<String>,
    pub self_rotation_grace: Option<String>,
    pub project_header: Option<String>,
    pub free_key_plan: Option<String>,
    pub free_keys_per_address: Option<u32>,
    pub project_exempt_paths: Option<Vec<String>>,
    pub usage_minute_retention: Option<String>,
    pub usage_hour_retention: Option<String>,
    pub identity_header_prefix: Option<String>,
    /// Names that replace the prefix's for single identity headers (`[identity_headers]`,
    /// file only): `user = "Remote-User"`.
    pub identity_headers: Option<IdentityHeaderNames>,
    /// Route policies for forward auth and the reverse proxy (`[[routes]]` tables; file only).
    pub routes: Option<Vec<keygate_core::route::RoutePolicy>>,
    pub upstream: Option<String>,
    pub upstream_timeout: Option<String>,
    pub upstream_connect_timeout: Option<String>,
    pub client_header_timeout: Option<String>,
    pub client_body_timeout: Option<String>,
    pub client_send_timeout: Option<String>,
    pub client_idle_timeout: Option<String>,
    /// Forward the credential to the upstream too (file only).
    pub upstream_keep_credential: Option<bool>,
    /// Pass the client's Host on (file only; default true).
    pub upstream_preserve_host: Option<bool>,
    /// Prefix of generated keys (file only; default `kg`).
    pub key_prefix: Option<String>,
    /// Scopes of a user's key created without any (file only; default none).
    pub user_key_scopes: Option<Vec<String>>,
    /// A free key comes with an account that owns it (file only; default false).
    pub free_key_accounts: Option<bool>,
    /// Status codes, messages and body style of refusals (`[errors]`, file only).
    pub errors: Option<ErrorPolicy>,
    /// Names of the OpenAPI security schemes, which Swagger UI's Authorize dialog shows
    /// (`[openapi_security_schemes]`, file only).
    pub openapi_security_schemes: Option<SecuritySchemeNames>,
    /// Extra paths for keygate's endpoints: `"/api/accounts/token/" = "/api/v1/auth/token"`.
    pub aliases: Option<std::collections::BTreeMap<String, String>>,
    /// Instance settings applied at every start (`[settings]`, file only).
    pub settings: Option<SettingsPatch>,
    /// Plans ensured at every start, by name (`[[plans]]`, file only).
    pub plans: Option<Vec<PlanRequest>>,
    pub webhooks_allow_private: Option<bool>,
    pub webhook_delivery: Option<bool>,
    pub webhook_timeout: Option<String>,
    /// Delays between attempts (file only), e.g. ["0s", "5s", "5m"].
    pub webhook_retry_schedule: Option<Vec<String>>,
    pub webhook_secret_overlap: Option<String>,
    pub webhook_expiring_lead: Option<String>,
    /// Quota use in percent that sends `quota.threshold` (file only; default 80).
    pub webhook_quota_threshold_percent: Option<u64>,
    pub webhook_ca_file: Option<PathBuf>,
}

/// The same settings from flags or the environment (already merged by clap).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Address to listen on.
    #[arg(long, env = "KEYGATE_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory of the embedded SQLite store.
    #[arg(long, env = "KEYGATE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Largest request body in bytes.
    #[arg(long, env = "KEYGATE_BODY_LIMIT", value_name = "BYTES")]
    pub body_limit: Option<usize>,
    /// Name of the API-key header.
    #[arg(long, env = "KEYGATE_API_KEY_HEADER", value_name = "NAME")]
    pub api_key_header: Option<String>,
    /// Credential transports in order, comma-separated: authorization,api-key-header,query-param.
    #[arg(
        long,
        env = "KEYGATE_TRANSPORTS",
        value_name = "LIST",
        value_delimiter = ','
    )]
    pub transports: Option<Vec<String>>,
    /// How often usage counters are written to the store (e.g. 5s, 500ms).
    #[arg(long, env = "KEYGATE_FLUSH_INTERVAL", value_name = "DURATION")]
    pub flush_interval: Option<String>,
    /// How often the change feed is polled (e.g. 250ms).
    #[arg(long, env = "KEYGATE_FEED_POLL_INTERVAL", value_name = "DURATION")]
    pub feed_poll_interval: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "KEYGATE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// JWT signature: HS256 (secret kept in the store) or EdDSA (public key at /.well-known/jwks.json).
    #[arg(long, env = "KEYGATE_JWT_ALGORITHM", value_name = "ALG")]
    pub jwt_algorithm: Option<String>,
    /// Access-token lifetime (e.g. 5m).
    #[arg(long, env = "KEYGATE_ACCESS_TOKEN_TTL", value_name = "DURATION")]
    pub access_token_ttl: Option<String>,
    /// Refresh-token lifetime (e.g. 1d as 24h).
    #[arg(long, env = "KEYGATE_REFRESH_TOKEN_TTL", value_name = "DURATION")]
    pub refresh_token_ttl: Option<String>,
    /// argon2id memory cost in KiB.
    #[arg(long, env = "KEYGATE_PASSWORD_MEMORY_KIB", value_name = "KIB")]
    pub password_memory_kib: Option<u32>,
    /// argon2id passes.
    #[arg(long, env = "KEYGATE_PASSWORD_ITERATIONS", value_name = "N")]
    pub password_iterations: Option<u32>,
    /// Failed sign-ins per username within 15 minutes before 429.
    #[arg(long, env = "KEYGATE_LOGIN_MAX_FAILURES", value_name = "N")]
    pub login_max_failures: Option<u32>,
    /// Proxies (CIDRs, comma-separated) whose forwarded-for header names the client.
    #[arg(
        long,
        env = "KEYGATE_TRUSTED_PROXIES",
        value_name = "CIDRS",
        value_delimiter = ','
    )]
    pub trusted_proxies: Option<Vec<String>>,
    /// The header a trusted proxy names the client in.
    #[arg(long, env = "KEYGATE_CLIENT_IP_HEADER", value_name = "NAME")]
    pub client_ip_header: Option<String>,
    /// How long a key that rotates itself keeps working (default and maximum), e.g. 24h.
    #[arg(long, env = "KEYGATE_SELF_ROTATION_GRACE", value_name = "DURATION")]
    pub self_rotation_grace: Option<String>,
    /// The header a request names its project in.
    #[arg(long, env = "KEYGATE_PROJECT_HEADER", value_name = "NAME")]
    pub project_header: Option<String>,
    /// Turn on POST /api/v1/keys/free with keys on this plan (by name).
    #[arg(long, env = "KEYGATE_FREE_KEY_PLAN", value_name = "PLAN")]
    pub free_key_plan: Option<String>,
    /// Free keys one client address may create per hour.
    #[arg(long, env = "KEYGATE_FREE_KEYS_PER_ADDRESS", value_name = "N")]
    pub free_keys_per_address: Option<u32>,
    /// Paths (comma-separated) that need no project header from a user-level key.
    #[arg(
        long,
        env = "KEYGATE_PROJECT_EXEMPT_PATHS",
        value_name = "PATHS",
        value_delimiter = ','
    )]
    pub project_exempt_paths: Option<Vec<String>>,
    /// Minute usage rows older than this roll up into hours (e.g. 7d as 168h).
    #[arg(long, env = "KEYGATE_USAGE_MINUTE_RETENTION", value_name = "DURATION")]
    pub usage_minute_retention: Option<String>,
    /// Hour usage rows older than this roll up into days.
    #[arg(long, env = "KEYGATE_USAGE_HOUR_RETENTION", value_name = "DURATION")]
    pub usage_hour_retention: Option<String>,
    /// Reverse-proxy mode: the app to forward to (http://host:port).
    #[arg(long, env = "KEYGATE_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,
    /// Longest wait for the upstream's response head (504 after it), e.g. 60s.
    #[arg(long, env = "KEYGATE_UPSTREAM_TIMEOUT", value_name = "DURATION")]
    pub upstream_timeout: Option<String>,
    /// Longest wait for a connection to the upstream (502 after it), e.g. 5s.
    #[arg(
        long,
        env = "KEYGATE_UPSTREAM_CONNECT_TIMEOUT",
        value_name = "DURATION"
    )]
    pub upstream_connect_timeout: Option<String>,
    /// Longest time a client may take to send a request head, e.g. 60s.
    #[arg(long, env = "KEYGATE_CLIENT_HEADER_TIMEOUT", value_name = "DURATION")]
    pub client_header_timeout: Option<String>,
    /// Longest a request body may stall between two reads, e.g. 60s.
    #[arg(long, env = "KEYGATE_CLIENT_BODY_TIMEOUT", value_name = "DURATION")]
    pub client_body_timeout: Option<String>,
    /// Longest a client may leave its answer unread before taking more of it, e.g. 60s.
    #[arg(long, env = "KEYGATE_CLIENT_SEND_TIMEOUT", value_name = "DURATION")]
    pub client_send_timeout: Option<String>,
    /// Longest a keep-alive connection may wait for its next request, e.g. 180s.
    #[arg(long, env = "KEYGATE_CLIENT_IDLE_TIMEOUT", value_name = "DURATION")]
    pub client_idle_timeout: Option<String>,
    /// Let webhooks reach loopback and private addresses (development; never link-local).
    #[arg(long, env = "KEYGATE_WEBHOOKS_ALLOW_PRIVATE", value_name = "BOOL")]
    pub webhooks_allow_private: Option<bool>,
    /// Deliver webhooks from this node (false: events are stored, not sent).
    #[arg(long, env = "KEYGATE_WEBHOOK_DELIVERY", value_name = "BOOL")]
    pub webhook_delivery: Option<bool>,
    /// Longest wait for a webhook receiver's answer, e.g. 15s.
    #[arg(long, env = "KEYGATE_WEBHOOK_TIMEOUT", value_name = "DURATION")]
    pub webhook_timeout: Option<String>,
    /// How long a rotated webhook secret keeps signing beside the new one, e.g. 24h.
    #[arg(long, env = "KEYGATE_WEBHOOK_SECRET_OVERLAP", value_name = "DURATION")]
    pub webhook_secret_overlap: Option<String>,
    /// How long before a key expires `key.expiring` is sent, e.g. 168h.
    #[arg(long, env = "KEYGATE_WEBHOOK_EXPIRING_LEAD", value_name = "DURATION")]
    pub webhook_expiring_lead: Option<String>,
    /// PEM file of CA certificates trusted for https webhook receivers, besides the system's.
    #[arg(long, env = "KEYGATE_WEBHOOK_CA_FILE", value_name = "FILE")]
    pub webhook_ca_file: Option<PathBuf>,
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Effective {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub body_limit: usize,
    pub api_key_header: String,
    pub transports: Vec<Transport>,
    #[serde(serialize_with = "ser_duration")]
    pub flush_interval: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub feed_poll_interval: Duration,
    pub log_format: LogFormat,
    pub jwt_algorithm: JwtAlgorithm,
    #[serde(serialize_with = "ser_duration")]
    pub access_token_ttl: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub refresh_token_ttl: Duration,
    pub password_memory_kib: u32,
    pub password_iterations: u32,
    pub login_max_failures: u32,
    pub trusted_proxies: Vec<String>,
    pub client_ip_header: String,
    #[serde(serialize_with = "ser_duration")]
    pub self_rotation_grace: Duration,
    pub project_header: String,
    pub free_key_plan: Option<String>,
    pub free_keys_per_address: u32,
    pub project_exempt_paths: Vec<String>,
    #[serde(serialize_with = "ser_duration")]
    pub usage_minute_retention: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub usage_hour_retention: Duration,
    pub identity_header_prefix: String,
    #[serde(skip_serializing_if = "IdentityHeaderNames::is_empty")]
    pub identity_headers: IdentityHeaderNames,
    pub routes: Vec<keygate_core::route::RoutePolicy>,
    pub upstream: Option<String>,
    #[serde(serialize_with = "ser_duration")]
    pub upstream_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub upstream_connect_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub client_header_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub client_body_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub client_send_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub client_idle_timeout: Duration,
    pub upstream_keep_credential: bool,
    pub upstream_preserve_host: bool,
    pub key_prefix: String,
    pub user_key_scopes: Vec<String>,
    pub free_key_accounts: bool,
    pub errors: ErrorPolicy,
    pub openapi_security_schemes: SecuritySchemeNames,
    pub aliases: std::collections::BTreeMap<String, String>,
    pub settings: Option<SettingsPatch>,
    pub plans: Vec<PlanRequest>,
    pub webhooks: keygate_server::webhooks::WebhookConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

impl Effective {
    /// What the file declares for the store (settings, plans).
    pub fn declared(&self) -> keygate_server::bootstrap::Declared {
        keygate_server::bootstrap::Declared {
            settings: self.settings.clone(),
            plans: self.plans.clone(),
        }
    }

    fn aliases(&self) -> Result<Aliases, String> {
        Aliases::new(
            self.aliases
                .iter()
                .map(|(from, to)| Alias {
                    from: from.clone(),
                    to: to.clone(),
                })
                .collect(),
        )
    }

    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            body_limit: self.body_limit,
            api_key_header: self.api_key_header.clone(),
            transports: self.transports.clone(),
            flush_interval: self.flush_interval,
            feed_poll_interval: self.feed_poll_interval,
            tokens: TokenConfig {
                algorithm: self.jwt_algorithm,
                access_ttl: self.access_token_ttl,
                refresh_ttl: self.refresh_token_ttl,
                ..TokenConfig::default()
            },
            password_cost: PasswordCost {
                memory_kib: self.password_memory_kib,
                iterations: self.password_iterations,
                ..PasswordCost::default()
            },
            throttle: ThrottleConfig {
                max_failures_per_user: self.login_max_failures,
                ..ThrottleConfig::default()
            },
            trusted_proxies: self
                .trusted_proxies
                .iter()
                .filter_map(|t| parse_net(t).ok())
                .collect(),
            client_ip_header: self.client_ip_header.clone(),
            self_rotation_grace: self.self_rotation_grace,
            project_header: self.project_header.clone(),
            free_key_plan: self.free_key_plan.clone(),
            free_keys_per_address: self.free_keys_per_address,
            project_exempt_paths: self.project_exempt_paths.clone(),
            usage_minute_retention: self.usage_minute_retention,
            usage_hour_retention: self.usage_hour_retention,
            identity_header_prefix: self.identity_header_prefix.clone(),
            identity_headers: self.identity_headers.clone(),
            routes: self.routes.clone(),
            // Checked by `resolve`, so the URL parses here.
            upstream: self.upstream.as_deref().and_then(|url| {
                let mut upstream = UpstreamConfig::new(url).ok()?;
                upstream.timeout = self.upstream_timeout;
                upstream.connect_timeout = self.upstream_connect_timeout;
                upstream.keep_credential = self.upstream_keep_credential;
                upstream.preserve_host = self.upstream_preserve_host;
                Some(upstream)
            }),
            client_timeouts: ClientTimeouts {
                header: self.client_header_timeout,
                body: self.client_body_timeout,
                send: self.client_send_timeout,
                idle: self.client_idle_timeout,
            },
            key_prefix: self.key_prefix.clone(),
            user_key_scopes: self.user_key_scopes.clone(),
            free_key_accounts: self.free_key_accounts,
            webhooks: self.webhooks.clone(),
            errors: self.errors.clone(),
            openapi_security_schemes: self.openapi_security_schemes.clone(),
            // Checked by `resolve`.
            aliases: self.aliases().unwrap_or_default(),
            ..ServerConfig::default()
        }
    }
}

/// Parses `250ms`, `5s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 250ms, 5s, 2m or 1h"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        "h" => Duration::from_secs(number * 3600),
        _ => {
            return Err(format!(
                "{text:?} is not a duration like 250ms, 5s, 2m or 1h"
            ));
        }
    };
    if duration.is_zero() {
        return Err(format!("{text:?} must be longer than zero"));
    }
    Ok(duration)
}

fn parse_transport(text: &str) -> Result<Transport, String> {
    match text.trim() {
        "authorization" => Ok(Transport::Authorization),
        "api-key-header" => Ok(Transport::ApiKeyHeader),
        "query-param" => Ok(Transport::QueryParam),
        other => Err(format!(
            "{other:?} is not a transport (authorization, api-key-header, query-param)"
        )),
    }
}

/// Reads the TOML file. The error names the file and the bad key.
pub fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

fn layered_duration(
    errors: &mut Vec<String>,
    name: &str,
    flag: &Option<String>,
    file: &Option<String>,
    default: Duration,
) -> Duration {
    match flag.as_ref().or(file.as_ref()) {
        None => default,
        Some(text) => parse_duration(text).unwrap_or_else(|e| {
            errors.push(format!("{name}: {e}"));
            default
        }),
    }
}

/// Merges the layers. Every bad value is reported, not just the first.
pub fn resolve(file: &FileConfig, over: &Overrides) -> Result<Effective, Vec<String>> {
    let mut errors = Vec::new();
    let listen_text = over
        .listen
        .clone()
        .or_else(|| file.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listen = listen_text.parse().unwrap_or_else(|_| {
        errors.push(format!(
            "listen: {listen_text:?} is not an address like 127.0.0.1:8080"
        ));
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    let defaults = ServerConfig::default();
    let flush_interval = layered_duration(
        &mut errors,
        "flush_interval",
        &over.flush_interval,
        &file.flush_interval,
        defaults.flush_interval,
    );
    let feed_poll_interval = layered_duration(
        &mut errors,
        "feed_poll_interval",
        &over.feed_poll_interval,
        &file.feed_poll_interval,
        defaults.feed_poll_interval,
    );
    let transports = match (&over.transports, &file.transports) {
        (Some(list), _) => list
            .iter()
            .filter_map(|t| {
                parse_transport(t)
                    .map_err(|e| errors.push(format!("transports: {e}")))
                    .ok()
            })
            .collect(),
        (None, Some(list)) => list.clone(),
        (None, None) => defaults.transports.clone(),
    };
    if transports.is_empty() {
        errors.push("transports: at least one transport is needed".into());
    }
    let api_key_header = over
        .api_key_header
        .clone()
        .or_else(|| file.api_key_header.clone())
        .unwrap_or(defaults.api_key_header.clone())
        .to_ascii_lowercase();
    if axum_header_ok(&api_key_header).is_err() {
        errors.push(format!(
            "api_key_header: {api_key_header:?} is not a valid header name"
        ));
    }
    let body_limit = over
        .body_limit
        .or(file.body_limit)
        .unwrap_or(defaults.body_limit);
    if body_limit < 1024 {
        errors.push("body_limit: must be at least 1024 bytes".into());
    }
    let log_format = match over
        .log_format
        .as_ref()
        .or(file.log_format.as_ref())
        .map(String::as_str)
    {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            errors.push(format!("log_format: {other:?} is not text or json"));
            LogFormat::Text
        }
    };
    let tokens = TokenConfig::default();
    let access_token_ttl = layered_duration(
        &mut errors,
        "access_token_ttl",
        &over.access_token_ttl,
        &file.access_token_ttl,
        tokens.access_ttl,
    );
    let refresh_token_ttl = layered_duration(
        &mut errors,
        "refresh_token_ttl",
        &over.refresh_token_ttl,
        &file.refresh_token_ttl,
        tokens.refresh_ttl,
    );
    let jwt_algorithm = match over
        .jwt_algorithm
        .as_ref()
        .or(file.jwt_algorithm.as_ref())
        .map(String::as_str)
    {
        None | Some("HS256") => JwtAlgorithm::HS256,
        Some("EdDSA") => JwtAlgorithm::EdDSA,
        Some(other) => {
            errors.push(format!("jwt_algorithm: {other:?} is not HS256 or EdDSA"));
            JwtAlgorithm::HS256
        }
    };
    let cost = PasswordCost::default();
    let password_memory_kib = over
        .password_memory_kib
        .or(file.password_memory_kib)
        .unwrap_or(cost.memory_kib);
    let password_iterations = over
        .password_iterations
        .or(file.password_iterations)
        .unwrap_or(cost.iterations);
    if keygate_server::passwords::Passwords::new(PasswordCost {
        memory_kib: password_memory_kib,
        iterations: password_iterations,
        parallelism: cost.parallelism,
    })
    .is_err()
    {
        errors.push("password_memory_kib / password_iterations: not valid argon2 parameters (memory ≥ 8 KiB, passes ≥ 1)".into());
    }
    let login_max_failures = over
        .login_max_failures
        .or(file.login_max_failures)
        .unwrap_or(ThrottleConfig::default().max_failures_per_user);
    if login_max_failures == 0 {
        errors.push("login_max_failures: must be at least 1".into());
    }
    let trusted_proxies: Vec<String> = over
        .trusted_proxies
        .clone()
        .or_else(|| file.trusted_proxies.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| !t.trim().is_empty())
        .collect();
    for proxy in &trusted_proxies {
        if let Err(e) = parse_net(proxy) {
            errors.push(format!("trusted_proxies: {e}"));
        }
    }
    let client_ip_header = over
        .client_ip_header
        .clone()
        .or_else(|| file.client_ip_header.clone())
        .unwrap_or_else(|| "x-forwarded-for".into())
        .to_ascii_lowercase();
    if axum_header_ok(&client_ip_header).is_err() {
        errors.push(format!(
            "client_ip_header: {client_ip_header:?} is not a valid header name"
        ));
    }
    let self_rotation_grace = layered_duration(
        &mut errors,
        "self_rotation_grace",
        &over.self_rotation_grace,
        &file.self_rotation_grace,
        defaults.self_rotation_grace,
    );
    let project_header = over
        .project_header
        .clone()
        .or_else(|| file.project_header.clone())
        .unwrap_or_else(|| defaults.project_header.clone())
        .to_ascii_lowercase();
    if axum_header_ok(&project_header).is_err() {
        errors.push(format!(
            "project_header: {project_header:?} is not a valid header name"
        ));
    }
    let free_key_plan = over
        .free_key_plan
        .clone()
        .or_else(|| file.free_key_plan.clone())
        .filter(|p| !p.is_empty());
    let free_keys_per_address = over
        .free_keys_per_address
        .or(file.free_keys_per_address)
        .unwrap_or(defaults.free_keys_per_address);
    if free_keys_per_address == 0 {
        errors.push("free_keys_per_address: must be at least 1".into());
    }
    let project_exempt_paths: Vec<String> = over
        .project_exempt_paths
        .clone()
        .or_else(|| file.project_exempt_paths.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .collect();
    for path in &project_exempt_paths {
        if !path.starts_with('/') {
            errors.push(format!("project_exempt_paths: {path:?} must start with /"));
        }
    }
    let usage_minute_retention = layered_duration(
        &mut errors,
        "usage_minute_retention",
        &over.usage_minute_retention,
        &file.usage_minute_retention,
        defaults.usage_minute_retention,
    );
    let usage_hour_retention = layered_duration(
        &mut errors,
        "usage_hour_retention",
        &over.usage_hour_retention,
        &file.usage_hour_retention,
        defaults.usage_hour_retention,
    );
    let identity_header_prefix = file
        .identity_header_prefix
        .clone()
        .unwrap_or_else(|| defaults.identity_header_prefix.clone())
        .to_ascii_lowercase();
    if axum_header_ok(&format!("{identity_header_prefix}key-id")).is_err() {
        errors.push(format!(
            "identity_header_prefix: {identity_header_prefix:?} does not make valid header names"
        ));
    }
    let identity_headers = file.identity_headers.clone().unwrap_or_default();
    // The server makes the names the same way at its start; a bad name is told here first.
    if let Err(e) = keygate_server::http::forward::IdentityNames::new(
        &identity_header_prefix,
        &identity_headers,
        &[&api_key_header, &client_ip_header],
    ) {
        // A bad prefix is reported above already.
        if e.starts_with("identity_headers") {
            errors.push(e);
        }
    }
    let mut routes = file.routes.clone().unwrap_or_default();
    for route in &mut routes {
        // A route's `plan` is one of this file's plans: its rate limits become the route's.
        // Resolved once, into `rate_limits`: what `config check` prints then reads back.
        if let Some(name) = route.plan.take() {
            let name = name.trim();
            let plan = file.plans.iter().flatten().find(|p| p.name.trim() == name);
            match (plan, &route.rate_limits) {
                (_, Some(_)) => errors.push(format!(
                    "routes: path {:?}: give `plan` or `rate_limits`, not both",
                    route.path
                )),
                (None, None) => errors.push(format!(
                    "routes: path {:?}: plan {name:?} is not one of this file's [[plans]]",
                    route.path
                )),
                (Some(plan), None) => route.rate_limits = Some(plan.rate_limits.clone()),
            }
        }
        if let Err(why) = route.validate() {
            errors.push(format!("routes: {why}"));
        }
    }
    let upstream = over
        .upstream
        .clone()
        .or_else(|| file.upstream.clone())
        .filter(|u| !u.trim().is_empty());
    let upstream_defaults = UpstreamConfig::new("http://127.0.0.1").map_err(|e| vec![e])?;
    if let Some(url) = &upstream
        && let Err(e) = UpstreamConfig::new(url)
    {
        errors.push(format!("upstream: {e}"));
    }
    let upstream_timeout = layered_duration(
        &mut errors,
        "upstream_timeout",
        &over.upstream_timeout,
        &file.upstream_timeout,
        upstream_defaults.timeout,
    );
    let upstream_connect_timeout = layered_duration(
        &mut errors,
        "upstream_connect_timeout",
        &over.upstream_connect_timeout,
        &file.upstream_connect_timeout,
        upstream_defaults.connect_timeout,
    );
    let client_defaults = ClientTimeouts::default();
    let client_header_timeout = layered_duration(
        &mut errors,
        "client_header_timeout",
        &over.client_header_timeout,
        &file.client_header_timeout,
        client_defaults.header,
    );
    let client_body_timeout = layered_duration(
        &mut errors,
        "client_body_timeout",
        &over.client_body_timeout,
        &file.client_body_timeout,
        client_defaults.body,
    );
    let client_send_timeout = layered_duration(
        &mut errors,
        "client_send_timeout",
        &over.client_send_timeout,
        &file.client_send_timeout,
        client_defaults.send,
    );
    let client_idle_timeout = layered_duration(
        &mut errors,
        "client_idle_timeout",
        &over.client_idle_timeout,
        &file.client_idle_timeout,
        client_defaults.idle,
    );
    let key_prefix = file
        .key_prefix
        .clone()
        .unwrap_or_else(|| defaults.key_prefix.clone());
    if keygate_core::key_format::validate_prefix(&key_prefix).is_err() {
        errors.push(format!(
            "key_prefix: {key_prefix:?} must be 1 to 16 lower-case letters, digits or _, starting with a letter"
        ));
    }
    let user_key_scopes = file.user_key_scopes.clone().unwrap_or_default();
    if let Err(e) = keygate_server::mint::validate_scopes(&user_key_scopes) {
        errors.push(format!("user_key_scopes: {e}"));
    }
    let error_policy = file.errors.clone().unwrap_or_default();
    if let Err(e) = error_policy.validate() {
        errors.push(e);
    }
    let openapi_security_schemes = file.openapi_security_schemes.clone().unwrap_or_default();
    if let Err(e) = openapi_security_schemes.validate() {
        errors.push(e);
    }
    let plans = file.plans.clone().unwrap_or_default();
    for plan in &plans {
        if let Err(e) = keygate_server::http::plans::validate_name(&plan.name) {
            errors.push(format!("plans: {}", e.message));
        }
        if let Err(e) = keygate_server::http::plans::validate_rate_limits(&plan.rate_limits) {
            errors.push(format!("plans: {:?}: {}", plan.name, e.message));
        }
    }
    if let Some(Some(0)) = file.settings.as_ref().and_then(|s| s.keys_per_user) {
        errors.push("settings.keys_per_user: must be at least 1".into());
    }
    let webhook_defaults = keygate_server::webhooks::WebhookConfig::default();
    let mut retry_schedule = Vec::new();
    for delay in file.webhook_retry_schedule.clone().unwrap_or_default() {
        // "0s" is allowed here: the first attempt may be immediate.
        let parsed = if delay.trim() == "0s" {
            Ok(Duration::ZERO)
        } else {
            parse_duration(&delay)
        };
        match parsed {
            Ok(d) => retry_schedule.push(d.as_secs()),
            Err(e) => errors.push(format!("webhook_retry_schedule: {e}")),
        }
    }
    let webhooks = keygate_server::webhooks::WebhookConfig {
        deliver: over
            .webhook_delivery
            .or(file.webhook_delivery)
            .unwrap_or(webhook_defaults.deliver),
        allow_private: over
            .webhooks_allow_private
            .or(file.webhooks_allow_private)
            .unwrap_or(webhook_defaults.allow_private),
        timeout: layered_duration(
            &mut errors,
            "webhook_timeout",
            &over.webhook_timeout,
            &file.webhook_timeout,
            webhook_defaults.timeout,
        ),
        secret_overlap: layered_duration(
            &mut errors,
            "webhook_secret_overlap",
            &over.webhook_secret_overlap,
            &file.webhook_secret_overlap,
            webhook_defaults.secret_overlap,
        ),
        expiring_lead: layered_duration(
            &mut errors,
            "webhook_expiring_lead",
            &over.webhook_expiring_lead,
            &file.webhook_expiring_lead,
            webhook_defaults.expiring_lead,
        ),
        retry_schedule: if retry_schedule.is_empty() {
            webhook_defaults.retry_schedule.clone()
        } else {
            retry_schedule
        },
        quota_threshold_percent: file
            .webhook_quota_threshold_percent
            .unwrap_or(webhook_defaults.quota_threshold_percent),
        ca_file: over
            .webhook_ca_file
            .clone()
            .or_else(|| file.webhook_ca_file.clone()),
        ..webhook_defaults
    };
    if let Some(path) = &webhooks.ca_file
        && let Err(e) = keygate_server::webhooks::tls_config(Some(path))
    {
        errors.push(e);
    }
    if !(1..=100).contains(&webhooks.quota_threshold_percent) {
        errors.push("webhook_quota_threshold_percent: must be 1 to 100".into());
    }
    let effective = Effective {
        listen,
        data_dir: over
            .data_dir
            .clone()
            .or_else(|| file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("./keygate-data")),
        body_limit,
        api_key_header,
        transports,
        flush_interval,
        feed_poll_interval,
        log_format,
        jwt_algorithm,
        access_token_ttl,
        refresh_token_ttl,
        password_memory_kib,
        password_iterations,
        login_max_failures,
        trusted_proxies,
        client_ip_header,
        self_rotation_grace,
        project_header,
        free_key_plan,
        free_keys_per_address,
        project_exempt_paths,
        usage_minute_retention,
        usage_hour_retention,
        identity_header_prefix,
        identity_headers,
        routes,
        upstream,
        upstream_timeout,
        upstream_connect_timeout,
        client_header_timeout,
        client_body_timeout,
        client_send_timeout,
        client_idle_timeout,
        upstream_keep_credential: file
            .upstream_keep_credential
            .unwrap_or(upstream_defaults.keep_credential),
        upstream_preserve_host: file
            .upstream_preserve_host
            .unwrap_or(upstream_defaults.preserve_host),
        key_prefix,
        user_key_scopes,
        free_key_accounts: file.free_key_accounts.unwrap_or(false),
        errors: error_policy,
        openapi_security_schemes,
        aliases: file.aliases.clone().unwrap_or_default(),
        settings: file.settings.clone(),
        plans,
        webhooks,
    };
    if let Err(e) = effective.aliases() {
        errors.push(e);
    }
    if errors.is_empty() {
        Ok(effective)
    } else {
        Err(errors)
    }
}

/// A CIDR (`10.0.0.0/8`) or a single address (`192.0.2.1`).
fn parse_net(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or a CIDR like 10.0.0.0/8"))
}

fn axum_header_ok(name: &str) -> Result<(), ()> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if valid { Ok(()) } else { Err(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order() {
        let file: FileConfig =
            toml::from_str("listen = \"127.0.0.1:9000\"\nflush_interval = \"2s\"").expect("toml");
        let none = Overrides::default();
        let eff = resolve(&file, &none).expect("valid");
        assert_eq!(eff.listen.port(), 9000);
        assert_eq!(eff.flush_interval, Duration::from_secs(2));
        assert_eq!(eff.data_dir, PathBuf::from("./keygate-data"));
        let over = Overrides {
            listen: Some("127.0.0.1:9100".into()),
            ..Default::default()
        };
        assert_eq!(resolve(&file, &over).expect("valid").listen.port(), 9100);
    }

    #[test]
    fn every_bad_value_is_reported() {
        let file = FileConfig {
            listen: Some("nowhere".into()),
            flush_interval: Some("5 parsecs".into()),
            api_key_header: Some("bad header".into()),
            ..Default::default()
        };
        let errors = resolve(&file, &Overrides::default()).expect_err("invalid");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(toml::from_str::<FileConfig>("colour = \"red\"").is_err());
    }

    #[test]
    fn security_scheme_names_are_checked() {
        let file: FileConfig =
            toml::from_str("[openapi_security_schemes]\nbearer = \"Bearer\"\n").expect("toml");
        let names = resolve(&file, &Overrides::default())
            .expect("valid")
            .openapi_security_schemes;
        assert_eq!(
            (names.bearer.as_str(), names.api_key.as_str()),
            ("Bearer", "api_key")
        );
        for bad in [
            "[openapi_security_schemes]\nbearer = \"my scheme\"\n",
            "[openapi_security_schemes]\nbearer = \"\"\n",
            "[openapi_security_schemes]\nbearer = \"key\"\napi_key = \"key\"\n",
        ] {
            let file: FileConfig = toml::from_str(bad).expect("toml");
            let errors = resolve(&file, &Overrides::default()).expect_err(bad);
            assert!(
                errors[0].starts_with("openapi_security_schemes"),
                "{errors:?}"
            );
        }
        assert!(
            toml::from_str::<FileConfig>("[openapi_security_schemes]\nbasic = \"B\"\n").is_err()
        );
    }

    #[test]
    fn identity_header_names_are_checked() {
        let file: FileConfig =
            toml::from_str("[identity_headers]\nuser = \"Remote-User\"\n").expect("toml");
        let effective = resolve(&file, &Overrides::default()).expect("valid");
        assert_eq!(
            effective.identity_headers.user.as_deref(),
            Some("Remote-User")
        );
        assert_eq!(
            effective.server_config().identity_headers.user.as_deref(),
            Some("Remote-User")
        );
        for (bad, said) in [
            (
                "[identity_headers]\nuser = \"two words\"\n",
                "not a valid header name",
            ),
            (
                "[identity_headers]\nscopes = \"Authorization\"\n",
                "already uses",
            ),
            // The API-key header is where credentials come from.
            (
                "[identity_headers]\nkey_id = \"X-API-Key\"\n",
                "already uses",
            ),
            (
                "[identity_headers]\nuser = \"X-Who\"\nproject = \"x-who\"\n",
                "names two identity headers",
            ),
        ] {
            let file: FileConfig = toml::from_str(bad).expect("toml");
            let errors = resolve(&file, &Overrides::default()).expect_err(bad);
            assert!(
                errors
                    .iter()
                    .any(|e| e.starts_with("identity_headers") && e.contains(said)),
                "{bad}: {errors:?}"
            );
        }
        assert!(toml::from_str::<FileConfig>("[identity_headers]\ngroups = \"G\"\n").is_err());
    }

    #[test]
    fn every_compatibility_preset_is_a_valid_configuration() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/compat");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("examples/compat") {
            let path = entry.expect("entry").path();
            let file = read_file(&path).expect("parses");
            let effective = resolve(&file, &Overrides::default())
                .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
            let _ = effective.server_config();
            seen += 1;
        }
        assert_eq!(seen, 5, "one preset per seed document");
    }

    #[test]
    fn route_rate_limits_are_read_and_checked() {
        let file: FileConfig = toml::from_str(
            "[[routes]]\npath = \"/v1/convert\"\nrate_limits = [{ limit = 10, period_seconds = 60 }]\n",
        )
        .expect("toml");
        let routes = resolve(&file, &Overrides::default())
            .expect("valid")
            .server_config()
            .routes;
        assert_eq!(routes[0].rate_limits.as_deref().map(<[_]>::len), Some(1));
        // A route's plan lends it the plan's rate limits.
        let file: FileConfig = toml::from_str(
            "[[plans]]\nname = \"heavy\"\nrate_limits = [{ limit = 2, period_seconds = 60 }, { limit = 20, period_seconds = 3600 }]\n\
             [[routes]]\npath = \"/v1/convert\"\nplan = \"heavy\"\n",
        )
        .expect("toml");
        let routes = resolve(&file, &Overrides::default())
            .expect("valid")
            .server_config()
            .routes;
        assert_eq!(
            routes[0]
                .rate_limits
                .as_deref()
                .map(|l| l.iter().map(|l| l.limit).collect::<Vec<_>>()),
            Some(vec![2, 20])
        );
        for (toml, says) in [
            (
                "[[routes]]\npath = \"/health\"\naccess = \"public\"\nrate_limits = []\n",
                "public route",
            ),
            (
                "[[routes]]\npath = \"/a\"\nrate_limits = [{ limit = 1, period_seconds = 0 }]\n",
                "period_seconds",
            ),
            (
                "[[routes]]\npath = \"/a\"\nhosts = [\"Status.example.com:443\"]\n",
                "host",
            ),
            (
                "[[routes]]\npath = \"/a\"\nplan = \"missing\"\n",
                "not one of this file's [[plans]]",
            ),
            (
                "[[plans]]\nname = \"p\"\n[[routes]]\npath = \"/a\"\nplan = \"p\"\nrate_limits = []\n",
                "not both",
            ),
        ] {
            let file: FileConfig = toml::from_str(toml).expect("toml");
            let errors = resolve(&file, &Overrides::default()).expect_err(toml);
            assert!(errors[0].contains(says), "{errors:?}");
        }
    }

    #[test]
    fn error_policies_are_checked() {
        let file: FileConfig =
            toml::from_str("[errors]\nstyle = \"detail\"\n[errors.unauthorized]\nstatus = 302\n")
                .expect("toml");
        let errors = resolve(&file, &Overrides::default()).expect_err("a 302 is no refusal");
        assert!(errors[0].contains("302"), "{errors:?}");
        assert!(toml::from_str::<FileConfig>("[errors]\nstyle = \"xml\"").is_err());
        assert!(toml::from_str::<FileConfig>("[errors.codes.not_a_code]\nstatus = 400").is_err());
    }

    #[test]
    fn client_timeouts_are_layered_and_checked() {
        let file: FileConfig =
            toml::from_str("client_idle_timeout = \"90s\"\nclient_header_timeout = \"20s\"")
                .expect("toml");
        let over = Overrides {
            client_header_timeout: Some("5s".into()),
            ..Default::default()
        };
        let timeouts = resolve(&file, &over)
            .expect("valid")
            .server_config()
            .client_timeouts;
        assert_eq!(
            timeouts,
            ClientTimeouts {
                header: Duration::from_secs(5),
                body: ClientTimeouts::default().body,
                send: ClientTimeouts::default().send,
                idle: Duration::from_secs(90),
            }
        );
        let file: FileConfig = toml::from_str("client_body_timeout = \"0s\"").expect("toml");
        let errors = resolve(&file, &Overrides::default()).expect_err("a zero timeout");
        assert!(errors[0].contains("client_body_timeout"), "{errors:?}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
    }
}
