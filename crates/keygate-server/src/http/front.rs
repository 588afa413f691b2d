//! The service each connection gets: the gateway's hot request kinds are answered here,
//! beside the router; everything else goes through the router and its middleware.
//!
//! Why: axum's routing plus keygate's general middleware cost about a third of a bare
//! hyper server's throughput before any authentication happens (BENCHMARKS.md), and
//! forward auth is asked once for every request a reverse proxy passes on. The answers
//! are the same either way; only the way to them is shorter.

use crate::AppState;
use crate::http::{forward, proxy};
use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::Response;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The path forward auth answers on (and under, for Envoy's prefix form).
const FORWARD_AUTH: &str = "/api/v1/forward-auth";

/// What every connection's [`Front`] shares.
#[derive(Clone)]
pub struct Fronts {
    state: AppState,
    router: Router,
    /// Forward auth is answered beside the router only when nothing may change what the
    /// router would do with its path: no aliases (they rewrite paths before routing) and
    /// no route sent upstream ahead of keygate's own endpoints.
    forward_auth_beside: bool,
    /// In reverse-proxy mode (without aliases), paths keygate has nothing under go to
    /// the upstream beside the router.
    proxy_beside: bool,
}

impl Fronts {
    pub fn new(state: AppState, router: Router) -> Self {
        let forward_auth_beside =
            state.config.aliases.is_empty() && !state.config.routes.iter().any(|r| r.upstream);
        let proxy_beside = state.upstream.is_some() && state.config.aliases.is_empty();
        Self {
            state,
            router,
            forward_auth_beside,
            proxy_beside,
        }
    }

    /// The service of one accepted connection.
    pub fn for_peer(&self, peer: SocketAddr) -> Front {
        Front {
            fronts: self.clone(),
            peer,
            address: self
                .proxy_beside
                .then(|| Arc::new(proxy::PeerAddress::new(peer.ip()))),
        }
    }
}

/// One connection's service (hyper calls it once per request).
#[derive(Clone)]
pub struct Front {
    fronts: Fronts,
    peer: SocketAddr,
    /// The peer written out for proxied requests, once per connection.
    address: Option<Arc<proxy::PeerAddress>>,
}

/// Could the router answer this path itself? Everything keygate serves is under `/api`,
/// `/ui` or `/.well-known/`, or is one of its three probes; any other path is the app's.
fn may_be_keygates(path: &str) -> bool {
    ["/api", "/ui", "/.well-known/"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
        || matches!(path, "/healthz" | "/readyz" | "/metrics")
}

fn is_forward_auth(path: &str) -> bool {
    path.strip_prefix(FORWARD_AUTH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// An answer made already, or one on its way.
pub enum FrontFuture {
    Ready(Option<Response>),
    Pending(Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>),
}

impl Future for FrontFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            FrontFuture::Ready(answer) => Poll::Ready(Ok(answer.take().unwrap_or_else(|| {
                // Polled again after it answered: a caller's bug, not a reason to panic.
                axum::response::IntoResponse::into_response(crate::http::error::ApiError::new(
                    keygate_api::ErrorCode::InternalError,
                ))
            }))),
            FrontFuture::Pending(pending) => pending.as_mut().poll(cx),
        }
    }
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = FrontFuture;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> FrontFuture {
        let fronts = &self.fronts;
        if fronts.forward_auth_beside && is_forward_auth(request.uri().path()) {
            // Forward auth reads the head only; its body is dropped unread.
            let (parts, _) = request.into_parts();
            return FrontFuture::Ready(Some(forward::answer_beside_router(
                &fronts.state,
                &parts,
                Some(self.peer.ip()),
            )));
        }
        let mut request = request.map(axum::body::Body::new);
        if fronts.proxy_beside && !may_be_keygates(request.uri().path()) {
            return match proxy::answer_beside_router(
                &fronts.state,
                request,
                self.address.as_deref(),
            ) {
                proxy::Answer::Ready(response) => FrontFuture::Ready(Some(response)),
                proxy::Answer::Sending(sending) => {
                    FrontFuture::Pending(Box::pin(futures_util::FutureExt::map(sending, Ok)))
                }
            };
        }
        // Handlers read the peer from here (as with axum's `ConnectInfo`).
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let mut router = fronts.router.clone();
        FrontFuture::Pending(Box::pin(tower::Service::call(&mut router, request)))
    }
}

/// Accepts connections until `shutdown` completes, serving each with its [`Front`];
/// then lets every connection finish the request it is on and waits for them.
pub async fn serve(
    listener: tokio::net::TcpListener,
    fronts: Fronts,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) if is_connection_error(&err) => continue,
                Err(err) => {
                    // Out of descriptors or memory: wait rather than spin.
                    tracing::error!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            },
            // Reap finished connections so the set stays as large as the live ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut shutdown => break,
        };
        // Answers are small and written whole: Nagle's algorithm would only hold them
        // back behind the client's delayed ACKs.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY");
        }
        // No timer, as with `axum::serve` before: hyper's header-read timeout would also
        // close keep-alive connections idle for 30 s, under proxies that keep theirs
        // longer (nginx 60 s, Traefik 90 s), and turn that race into their 502s.
        let connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), fronts.for_peer(peer))
            .with_upgrades();
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = stop.changed() => {
                    // Finish the request in flight, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = ended {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Errors of one connection that `accept` reports (the listener itself is fine).
fn is_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_forward_auth_paths_are_answered_beside_the_router() {
        assert!(is_forward_auth("/api/v1/forward-auth"));
        assert!(is_forward_auth("/api/v1/forward-auth/files/a.txt"));
        assert!(!is_forward_auth("/api/v1/forward-authx"));
        assert!(!is_forward_auth("/api/v1/forward"));
        assert!(!is_forward_auth("/API/v1/forward-auth"));
    }

    #[test]
    fn keygates_own_paths_are_left_to_the_router() {
        for path in [
            "/api/v1/keys",
            "/api/docs/",
            "/ui/",
            "/ui",
            "/.well-known/jwks.json",
            "/healthz",
            "/readyz",
            "/metrics",
        ] {
            assert!(may_be_keygates(path), "{path}");
        }
        for path in [
            "/",
            "/files/a.txt",
            "/healthz/deep",
            "/metricsx",
            "/v1/validate",
        ] {
            assert!(!may_be_keygates(path), "{path}");
        }
    }
}
