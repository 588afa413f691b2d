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
            tokens: TokenConfig::default(),
            password_cost: PasswordCost::default(),
            throttle: ThrottleConfig::default(),
        }
    }
}
