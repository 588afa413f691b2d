//! Server settings fixed at start-up (instance settings that change at run time live in
//! the store, see `keygate_core::settings`).

use crate::passwords::PasswordCost;
use crate::throttle::ThrottleConfig;
use crate::tokens::TokenConfig;
use keygate_core::credential::{DEFAULT_ORDER, Transport};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest accepted request body, in bytes (413 above it).
    pub body_limit: usize,
    /// Name of the API-key header (case-insensitive on the wire).
    pub api_key_header: String,
    /// Transports consulted for a credential, in order.
    pub transports: Vec<Transport>,
    /// How often in-memory usage counts are written to the store.
    pub flush_interval: Duration,
    /// How often the change feed is polled.
    pub feed_poll_interval: Duration,
    /// Change-feed entries older than this are pruned.
    pub feed_retention: Duration,
    /// Proxies whose forwarded-for header is believed; the TCP peer otherwise.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header naming the client behind a trusted proxy.
    pub client_ip_header: String,
    /// The plan (by name) of self-service free keys; `None` turns `POST /keys/free` off.
    pub free_key_plan: Option<String>,
    /// A free key comes with a user account that owns it (ChangeThisFile's accounts).
    pub free_key_accounts: bool,
    /// Free keys one client address may create per hour.
    pub free_keys_per_address: u32,
    /// Routes that act outside any project, so a user-level key needs no project header
    /// there (the project-keys seed's `/validate` and `/projects`). Every other route given
    /// to the verify API as `path` is project-scoped.
    pub project_exempt_paths: Vec<String>,
    /// Route policies for forward auth (first match wins; unmatched routes need a valid
    /// credential).
    pub routes: Vec<keygate_core::route::RoutePolicy>,
    /// Prefix of the identity headers forward auth answers with (`X-Keygate-Key-Id`, ...).
    pub identity_header_prefix: String,
    /// Names that replace the prefix's for single identity headers.
    pub identity_headers: crate::http::forward::IdentityHeaderNames,
    /// The header a request names its project in (case-insensitive).
    pub project_header: String,
    /// Minute usage rows older than this are rolled up into hours.
    pub usage_minute_retention: Duration,
    /// Hour usage rows older than this are rolled up into days.
    pub usage_hour_retention: Duration,
    /// Grace (default and maximum) when a key rotates itself.
    pub self_rotation_grace: Duration,
    /// Paths at which keygate's own endpoints are also served (a preset's paths).
    pub aliases: crate::http::alias::Aliases,
    /// Prefix of generated keys when a request names none (`kg`; a preset's `ctf_sk`).
    pub key_prefix: String,
    /// Scopes of a user's key created without any (`[]`; a preset's `["*"]` makes such
    /// a key act as its user, cut to the user's role).
    pub user_key_scopes: Vec<String>,
    /// Webhook delivery.
    pub webhooks: crate::webhooks::WebhookConfig,
    /// How errors are written (a preset's status codes, messages and body style).
    pub errors: crate::http::error::ErrorPolicy,
    /// Names of the OpenAPI security schemes (Swagger UI's Authorize sections).
    pub openapi_security_schemes: crate::http::docs::SecuritySchemeNames,
    /// Reverse-proxy mode: where requests that are not keygate's own go.
    pub upstream: Option<UpstreamConfig>,
    /// How slowly a client may send requests, and how long it may keep a connection idle.
    pub client_timeouts: crate::http::watch::ClientTimeouts,
    pub tokens: TokenConfig,
    pub password_cost: PasswordCost,
    pub throttle: ThrottleConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            body_limit: 1024 * 1024,
            api_key_header: "x-api-key".into(),
            transports: DEFAULT_ORDER.to_vec(),
            flush_interval: Duration::from_secs(5),
            feed_poll_interval: Duration::from_millis(250),
            feed_retention: Duration::from_secs(24 * 3600),
            trusted_proxies: Vec::new(),
            client_ip_header: "x-forwarded-for".into(),
            self_rotation_grace: Duration::from_secs(24 * 3600),
            project_header: "x-project-id".into(),
            routes: Vec::new(),
            identity_header_prefix: "x-keygate-".into(),
            identity_headers: Default::default(),
            project_exempt_paths: Vec::new(),
            free_key_plan: None,
            free_keys_per_address: 5,
            free_key_accounts: false,
            usage_minute_retention: Duration::from_secs(7 * 86_400),
            usage_hour_retention: Duration::from_secs(90 * 86_400),
            upstream: None,
            client_timeouts: Default::default(),
            errors: Default::default(),
            openapi_security_schemes: Default::default(),
            aliases: Default::default(),
            user_key_scopes: Vec::new(),
            webhooks: Default::default(),
            key_prefix: keygate_core::key_format::DEFAULT_PREFIX.into(),
            tokens: TokenConfig::default(),
            password_cost: PasswordCost::default(),
            throttle: ThrottleConfig::default(),
        }
    }
}

/// The app behind keygate in reverse-proxy mode.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `http://host:port`, optionally with a path prefix that every forwarded path is put under.
    pub url: axum::http::Uri,
    /// Longest wait for a TCP connection to the upstream (502 after it).
    pub connect_timeout: Duration,
    /// Longest wait for the upstream's response head (504 after it): from the start of a
    /// request without a body; for one with a body, for the upstream to take each next
    /// part of it, and then from its end. Bodies stream for as long as they take.
    pub timeout: Duration,
    /// Forward the credential to the upstream too (off: it is stripped).
    pub keep_credential: bool,
    /// Pass the client's `Host` on (on) or send the upstream's own (off).
    pub preserve_host: bool,
    /// Idle pooled connections to the upstream are closed after this.
    pub pool_idle_timeout: Duration,
}

impl UpstreamConfig {
    /// An upstream at `url` with the default timeouts.
    pub fn new(url: &str) -> Result<Self, String> {
        let uri: axum::http::Uri = url
            .parse()
            .map_err(|e| format!("upstream `{url}` is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "upstream `{url}`: https upstreams are not supported; run keygate beside \
                     the app and reach it over http on a private address"
                ));
            }
            _ => return Err(format!("upstream `{url}` must start with http://")),
        }
        if uri.authority().is_none() {
            return Err(format!("upstream `{url}` names no host"));
        }
        if uri.query().is_some() {
            return Err(format!("upstream `{url}` must not have a query"));
        }
        Ok(Self {
            url: uri,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            keep_credential: false,
            preserve_host: true,
            pool_idle_timeout: Duration::from_secs(90),
        })
    }
}

impl ServerConfig {
    /// Is `ip` one of `trusted_proxies`?
    pub fn is_trusted_proxy(&self, ip: &std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(ip))
    }

    /// The client's address: the TCP peer, or — when the peer is a trusted proxy — the
    /// right-most address in the forwarded-for header that is not itself a trusted proxy.
    pub fn client_ip(
        &self,
        peer: Option<std::net::IpAddr>,
        headers: &axum::http::HeaderMap,
    ) -> Option<std::net::IpAddr> {
        // IPv4 peers on a dual-stack socket arrive as ::ffff:a.b.c.d; compare them as IPv4.
        let peer = peer?.to_canonical();
        let trusted = |ip: &std::net::IpAddr| self.is_trusted_proxy(ip);
        if !trusted(&peer) {
            return Some(peer);
        }
        let hops: Vec<&str> = headers
            .get_all(self.client_ip_header.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        // Walk from the right: each trusted hop vouches for the one before it. The first
        // untrusted or unreadable hop ends the walk — nothing left of it can be believed.
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.parse::<std::net::IpAddr>().map(|ip| ip.to_canonical()) else {
                break;
            };
            client = ip;
            if !trusted(&ip) {
                break;
            }
        }
        Some(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_address_behind_trusted_proxies() {
        let config = ServerConfig {
            trusted_proxies: vec!["10.0.0.0/8".parse().expect("net")],
            ..ServerConfig::default()
        };
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7, 10.0.0.2"
                .parse()
                .expect("value"),
        );
        let ip = |s: &str| Some(s.parse().expect("ip"));
        // From a trusted proxy: the right-most untrusted hop (earlier ones can be forged).
        assert_eq!(
            config.client_ip(ip("10.0.0.1"), &headers),
            ip("198.51.100.7")
        );
        // From anyone else the header is ignored.
        assert_eq!(config.client_ip(ip("192.0.2.1"), &headers), ip("192.0.2.1"));
        // No header: the peer.
        assert_eq!(
            config.client_ip(ip("10.0.0.1"), &axum::http::HeaderMap::new()),
            ip("10.0.0.1")
        );
        // An unreadable hop (ip:port) ends the walk instead of being skipped.
        let mut odd = axum::http::HeaderMap::new();
        odd.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7:443, 10.0.0.2"
                .parse()
                .expect("value"),
        );
        assert_eq!(config.client_ip(ip("10.0.0.1"), &odd), ip("10.0.0.2"));
        // An IPv4-mapped peer is an IPv4 peer.
        assert_eq!(
            config.client_ip(ip("::ffff:10.0.0.1"), &headers),
            ip("198.51.100.7")
        );
    }
}
