//! keygate's HTTP server: the verification hot path, the management API and the
//! background workers that keep the in-memory index and the store in step.
//!
//! Architecture invariant: request handlers on the verification path (`Caller`, `Admin`,
//! the verify API) read only memory. The store is touched by management writes, the
//! change-feed poller and the usage flusher.

pub mod bootstrap;
pub mod clock;
pub mod config;
pub mod engine;
pub mod feed;
pub mod flush;
pub mod http;
pub mod mint;
pub mod passwords;
pub mod throttle;
pub mod tokens;
pub mod webhooks;

use config::ServerConfig;
use engine::Engine;
use feed::Feed;
use flush::Flusher;
use keygate_store::{Store, StoreError};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::net::TcpListener;

/// What request handlers share: one `Arc`, so the per-request clones axum makes of the
/// state cost one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields behind [`AppState`].
pub struct Shared {
    pub engine: Arc<Engine>,
    pub store: Arc<dyn Store>,
    pub feed: Arc<Feed>,
    pub config: Arc<ServerConfig>,
    pub started: Instant,
    pub passwords: Arc<passwords::Passwords>,
    pub throttle: Arc<throttle::Throttle>,
    /// Free-key creations per client address.
    pub free_key_throttle: Arc<throttle::Throttle>,
    /// Reverse-proxy mode's client to the app, when an upstream is configured.
    pub upstream: Option<Arc<http::proxy::Upstream>>,
    /// The identity headers' names, made once from the configured prefix.
    pub identity_names: http::forward::IdentityNames,
    /// TLS for https webhook receivers.
    pub webhook_tls: Arc<rustls::ClientConfig>,
    /// Rung after writes that enqueue webhook events, so delivery starts at once.
    pub webhook_wake: Arc<tokio::sync::Notify>,
    /// The deployment's error style; `None` when it is keygate's own.
    pub error_policy: Option<Arc<http::error::ErrorPolicy>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("configuration: {0}")]
    Config(String),
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; /metrics is then empty.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only its own");
        }
        handle
    })
}

/// A loaded server, ready to serve.
pub struct Server {
    state: AppState,
}

impl Server {
    /// Loads every key into memory and reads the instance settings.
    pub async fn load(config: ServerConfig, store: Arc<dyn Store>) -> Result<Self, StartError> {
        metrics_handle();
        let now = clock::now_ms();
        let (keys, seq) = store.load_keys().await?;
        let month = keygate_core::limit::month_of(now).0;
        let snapshot = engine::Snapshot {
            keys,
            plans: store.load_plans().await?,
            projects: store.load_projects().await?,
            quota_usage: (month, store.quota_usage(month).await?),
            users: store.load_users().await?,
            settings: store.settings().await?,
            revoked_families: store.revoked_families(now).await?,
            seq,
        };
        http::system::warn_if_open(&snapshot.settings);
        let tokens = tokens::TokenKeys::load(store.as_ref(), config.tokens.clone()).await?;
        let passwords =
            Arc::new(passwords::Passwords::new(config.password_cost).map_err(StartError::Config)?);
        let throttle = Arc::new(throttle::Throttle::new(config.throttle.clone()));
        let free_key_throttle = Arc::new(throttle::Throttle::new(throttle::ThrottleConfig {
            window: std::time::Duration::from_secs(3600),
            max_failures_per_user: u32::MAX,
            max_failures_per_address: config.free_keys_per_address,
            free_failures: u32::MAX,
            ..throttle::ThrottleConfig::default()
        }));
        let engine =
            Arc::new(Engine::new(&config, snapshot, tokens, now).map_err(StartError::Config)?);
        tracing::info!(keys = engine.index().len(), seq, "key index loaded");
        let feed = Arc::new(Feed::new(Arc::clone(&engine), Arc::clone(&store)));
        let webhook_tls =
            webhooks::tls_config(config.webhooks.ca_file.as_deref()).map_err(StartError::Config)?;
        Ok(Self {
            state: AppState(Arc::new(Shared {
                engine,
                store,
                feed,
                config: Arc::new(config.clone()),
                started: Instant::now(),
                passwords,
                throttle,
                free_key_throttle,
                webhook_wake: Arc::new(tokio::sync::Notify::new()),
                webhook_tls,
                identity_names: http::forward::IdentityNames::new(
                    &config.identity_header_prefix,
                    &config.identity_headers,
                    &[&config.api_key_header, &config.client_ip_header],
                )
                .map_err(StartError::Config)?,
                error_policy: (config.errors != http::error::ErrorPolicy::default())
                    .then(|| Arc::new(config.errors.clone())),
                upstream: config
                    .upstream
                    .clone()
                    .map(|upstream| http::proxy::Upstream::new(upstream, &config))
                    .transpose()
                    .map_err(StartError::Config)?
                    .map(Arc::new),
            })),
        })
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then finishes requests in flight, stops the
    /// workers and flushes usage counters.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let poller = tokio::spawn(
            Arc::clone(&state.feed).run(state.config.feed_poll_interval, stop_rx.clone()),
        );
        let flusher = Flusher {
            engine: Arc::clone(&state.engine),
            store: Arc::clone(&state.store),
            feed_retention: state.config.feed_retention,
            usage_minute_retention: state.config.usage_minute_retention,
            usage_hour_retention: state.config.usage_hour_retention,
        };
        let flusher = tokio::spawn(flusher.run(state.config.flush_interval, stop_rx.clone()));
        let queue = state
            .engine
            .notifier_queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let event_writer = queue.map(|queue| {
            tokio::spawn(webhooks::write_events(
                Arc::clone(&state.store),
                queue,
                Arc::clone(&state.webhook_wake),
                stop_rx.clone(),
            ))
        });
        let deliverer = Arc::new(webhooks::Deliverer {
            store: Arc::clone(&state.store),
            engine: Arc::clone(&state.engine),
            config: state.config.webhooks.clone(),
            tls: Arc::clone(&state.webhook_tls),
            wake: Arc::clone(&state.webhook_wake),
        });
        if let Some(upstream) = &state.upstream {
            tokio::spawn(http::upstream::Pool::close_stale_until(
                Arc::downgrade(upstream.pool()),
                stop_rx.clone(),
            ));
        }
        let deliverer = tokio::spawn(deliverer.run(stop_rx));
        let app = http::router(state.clone());
        let served = http::front::serve(
            listener,
            http::front::Fronts::new(state.clone(), app),
            shutdown,
        )
        .await;
        let _ = stop_tx.send(true);
        let _ = poller.await;
        let _ = flusher.await;
        if let Some(writer) = event_writer {
            let _ = writer.await;
        }
        let _ = deliverer.await;
        served
    }
}
