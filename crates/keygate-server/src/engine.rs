//! The verification hot path: the in-memory key index, instance settings and usage
//! counters, and the one entry point that turns a request's headers into a decision.
//!
//! Nothing here awaits or touches the store. The change feed (`feed.rs`) writes into the
//! index; the flusher (`flush.rs`) drains the usage ledger.

use crate::config::ServerConfig;
use axum::http::{HeaderMap, HeaderName};
use keygate_core::credential::{self, Extraction, Transport};
use keygate_core::settings::InstanceSettings;
use keygate_core::usage::UsageLedger;
use keygate_core::{
    Check, Decision, DecisionCode, IndexedKey, KeyIndex, KeyRecord, UnixMillis, decide,
};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use uuid::Uuid;

/// Who a request acts as, once authenticated.
#[derive(Debug, Clone)]
pub enum Principal {
    ApiKey(Arc<IndexedKey>),
    /// API access is switched off (`api_access_enabled = false`): no credential needed.
    Open,
}

/// Where this node is in the change feed.
#[derive(Debug, Default)]
pub struct FeedPosition {
    pub applied_seq: AtomicU64,
    pub store_seq: AtomicU64,
    pub last_poll_at: AtomicI64,
}

pub struct Engine {
    index: RwLock<KeyIndex>,
    settings: RwLock<Arc<InstanceSettings>>,
    pub ledger: UsageLedger,
    pub feed: FeedPosition,
    api_key_header: HeaderName,
    transports: Vec<Transport>,
}

impl Engine {
    pub fn new(
        config: &ServerConfig,
        keys: Vec<KeyRecord>,
        settings: InstanceSettings,
        seq: u64,
        now: UnixMillis,
    ) -> Result<Self, String> {
        let api_key_header = HeaderName::try_from(config.api_key_header.as_str())
            .map_err(|_| format!("{:?} is not a valid header name", config.api_key_header))?;
        let engine = Self {
            index: RwLock::new(KeyIndex::from_records(keys)),
            settings: RwLock::new(Arc::new(settings)),
            ledger: UsageLedger::default(),
            feed: FeedPosition::default(),
            api_key_header,
            transports: config.transports.clone(),
        };
        engine.feed.applied_seq.store(seq, Ordering::Release);
        engine.feed.store_seq.store(seq, Ordering::Release);
        engine.feed.last_poll_at.store(now, Ordering::Release);
        Ok(engine)
    }

    pub fn index(&self) -> RwLockReadGuard<'_, KeyIndex> {
        // A panic while holding the lock cannot leave the map half-written in a way that
        // matters more than refusing every request would.
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn settings(&self) -> Arc<InstanceSettings> {
        Arc::clone(&self.settings.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Applies reloaded records (and removals) from the change feed in one write.
    pub fn apply_keys(&self, records: Vec<KeyRecord>, removed: &[Uuid]) {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        for id in removed {
            index.remove(*id);
        }
        for record in records {
            index.upsert(record);
        }
    }

    pub fn apply_settings(&self, settings: InstanceSettings) {
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(settings);
    }

    /// Authenticates a request from its headers and query string. `required_scopes` are
    /// checked after the key's state. A valid use is counted.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        required_scopes: &[&str],
        now: UnixMillis,
    ) -> Result<Principal, Decision> {
        let settings = self.settings();
        if !settings.api_access_enabled {
            return Ok(Principal::Open);
        }
        // Query values are decoded into owned strings; borrowed below for the extraction.
        let query_values: Vec<String> = match query {
            Some(q) if settings.query_param_enabled && q.contains("apikey") => {
                form_urlencoded::parse(q.as_bytes())
                    .filter(|(name, _)| name == "apikey")
                    .map(|(_, value)| value.into_owned())
                    .collect()
            }
            _ => Vec::new(),
        };
        let extraction = credential::extract(&self.transports, |transport| {
            let values: Box<dyn Iterator<Item = &str>> = match transport {
                Transport::Authorization => Box::new(
                    headers
                        .get_all(axum::http::header::AUTHORIZATION)
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                ),
                Transport::ApiKeyHeader => Box::new(
                    headers
                        .get_all(&self.api_key_header)
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                ),
                Transport::QueryParam => Box::new(query_values.iter().map(String::as_str)),
            };
            values
        });
        let decision = match extraction {
            Extraction::Found(presented) => {
                self.decide_and_count(presented.value, presented.trimmed, required_scopes, now)
            }
            Extraction::Missing { hint } => {
                let hint = hint.unwrap_or_else(|| self.missing_hint(&settings, query));
                count_outcome(DecisionCode::Missing);
                refusal(DecisionCode::Missing, hint)
            }
            Extraction::Ambiguous { first, second } => {
                count_outcome(DecisionCode::Ambiguous);
                refusal(
                    DecisionCode::Ambiguous,
                    format!(
                        "credentials were found in both the {} and the {}, and they differ; send one",
                        describe(first, &self.api_key_header),
                        describe(second, &self.api_key_header)
                    ),
                )
            }
        };
        match decision.key.clone() {
            Some(key) if decision.is_valid() => Ok(Principal::ApiKey(key)),
            _ => Err(decision),
        }
    }

    /// Verifies a key given directly (the verify API). Counts a valid use.
    pub fn verify<S: AsRef<str>>(&self, key: &str, scopes: &[S], now: UnixMillis) -> Decision {
        let (key, trimmed) = credential::trim_credential(key);
        if key.is_empty() {
            count_outcome(DecisionCode::Missing);
            return refusal(DecisionCode::Missing, "the `key` field is empty".into());
        }
        self.decide_and_count(key, trimmed, scopes, now)
    }

    fn decide_and_count<S: AsRef<str>>(
        &self,
        credential: &str,
        trimmed: bool,
        required_scopes: &[S],
        now: UnixMillis,
    ) -> Decision {
        if trimmed {
            metrics::counter!("keygate_credential_whitespace_trimmed_total").increment(1);
        }
        let decision = {
            let index = self.index();
            decide(
                &index,
                &Check {
                    credential,
                    trimmed,
                    required_scopes,
                    now,
                },
            )
        };
        if let (true, Some(key)) = (decision.is_valid(), &decision.key) {
            self.ledger.record(key.record.id, &key.usage, now);
        }
        count_outcome(decision.code);
        decision
    }

    fn missing_hint(&self, settings: &InstanceSettings, query: Option<&str>) -> String {
        let query_ignored = !(settings.query_param_enabled
            && self.transports.contains(&Transport::QueryParam))
            && query.is_some_and(|q| q.split('&').any(|pair| pair.starts_with("apikey=")));
        if query_ignored {
            return format!(
                "the `apikey` query parameter is switched off on this instance; send the key as `Authorization: Bearer <key>` or in the `{}` header",
                self.api_key_header
            );
        }
        let mut hint = format!(
            "send the key as `Authorization: Bearer <key>` or in the `{}` header",
            self.api_key_header
        );
        if settings.query_param_enabled && self.transports.contains(&Transport::QueryParam) {
            hint.push_str(", or as the `apikey` query parameter");
        }
        hint
    }
}

fn describe(transport: Transport, header: &HeaderName) -> String {
    match transport {
        Transport::Authorization => "Authorization header".into(),
        Transport::ApiKeyHeader => format!("{header} header"),
        Transport::QueryParam => "apikey query parameter".into(),
    }
}

fn refusal(code: DecisionCode, hint: String) -> Decision {
    Decision {
        code,
        key: None,
        hint: Some(hint),
        missing_scope: None,
    }
}

fn count_outcome(code: DecisionCode) {
    metrics::counter!("keygate_decisions_total", "code" => code.as_str()).increment(1);
}
