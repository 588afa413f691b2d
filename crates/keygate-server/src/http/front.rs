//! The service each connection gets: the gateway's hot request kinds are answered here,
//! beside the router; everything else goes through the router and its middleware.
//!
//! Why: axum's routing plus keygate's general middleware cost about a third of a bare
//! hyper server's throughput before any authentication happens (BENCHMARKS.md), and
//! forward auth is asked once for every request a reverse proxy passes on. The answers
//! are the same either way; only the way to them is shorter.

use crate::AppState;
use crate::http::watch::{Activity, Answered, ClientTimeouts, Reading, Watched};
use crate::http::{forward, proxy, watch};
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
    timeouts: ClientTimeouts,
}

impl Fronts {
    pub fn new(state: AppState, router: Router) -> Self {
        let forward_auth_beside =
            state.config.aliases.is_empty() && !state.config.routes.iter().any(|r| r.upstream);
        let proxy_beside = state.upstream.is_some() && state.config.aliases.is_empty();
        let timeouts = state.config.client_timeouts;
        Self {
            state,
            router,
            forward_auth_beside,
            proxy_beside,
            timeouts,
        }
    }

    /// The service of one accepted connection.
    fn for_peer(&self, peer: SocketAddr, activity: Arc<Activity>) -> Front {
        Front {
            fronts: self.clone(),
            peer,
            activity,
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
    /// What the connection's client has done, for its timeouts (`watch.rs`).
    activity: Arc<Activity>,
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
enum Answer {
    Ready(Option<Response>),
    Pending(Pin<Box<dyn Future<Output = Response> + Send>>),
}

/// The answer to one request, its body counted as answered once written (`watch.rs`).
pub struct FrontFuture {
    answer: Answer,
    activity: Option<Arc<Activity>>,
}

impl Future for FrontFuture {
    type Output = Result<hyper::Response<Answered>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let response = match &mut this.answer {
            Answer::Ready(answer) => answer.take().unwrap_or_else(|| {
                // Polled again after it answered: a caller's bug, not a reason to panic.
                axum::response::IntoResponse::into_response(crate::http::error::ApiError::new(
                    keygate_api::ErrorCode::InternalError,
                ))
            }),
            Answer::Pending(pending) => std::task::ready!(pending.as_mut().poll(cx)),
        };
        let activity = this.activity.take();
        Poll::Ready(Ok(response.map(|body| Answered::new(body, activity))))
    }
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Front {
    type Response = hyper::Response<Answered>;
    type Error = Infallible;
    type Future = FrontFuture;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> FrontFuture {
        let fronts = &self.fronts;
        let activity = Some(Arc::clone(&self.activity));
        if fronts.forward_auth_beside && is_forward_auth(request.uri().path()) {
            // Forward auth reads the head only; its body is dropped unread.
            self.activity.head(false);
            let (parts, _) = request.into_parts();
            let answer = forward::answer_beside_router(&fronts.state, &parts, Some(self.peer.ip()));
            return FrontFuture {
                answer: Answer::Ready(Some(answer)),
                activity,
            };
        }
        let with_body = !hyper::body::Body::is_end_stream(request.body());
        let number = self.activity.head(with_body);
        let mut request = if with_body {
            let activity = Arc::clone(&self.activity);
            request.map(|body| axum::body::Body::new(Reading::new(body, activity, number)))
        } else {
            request.map(axum::body::Body::new)
        };
        if fronts.proxy_beside && !may_be_keygates(request.uri().path()) {
            let answer = match proxy::answer_beside_router(
                &fronts.state,
                request,
                self.address.as_deref(),
            ) {
                proxy::Answer::Ready(response) => Answer::Ready(Some(response)),
                proxy::Answer::Sending(sending) => Answer::Pending(Box::pin(sending)),
            };
            return FrontFuture { answer, activity };
        }
        // Handlers read the peer from here (as with axum's `ConnectInfo`).
        request.extensions_mut().insert(ConnectInfo(self.peer));
        let mut router = fronts.router.clone();
        let routed = tower::Service::call(&mut router, request);
        FrontFuture {
            answer: Answer::Pending(Box::pin(futures_util::FutureExt::map(
                routed,
                |answer: Result<Response, Infallible>| match answer {
                    Ok(response) => response,
                    Err(never) => match never {},
                },
            ))),
            activity,
        }
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
        // No hyper timer: `watch.rs` keeps the client timeouts (hyper's header-read
        // timeout would also cut idle keep-alive connections).
        let activity = Arc::new(Activity::default());
        let io = hyper_util::rt::TokioIo::new(Watched::new(stream, Arc::clone(&activity)));
        let connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, fronts.for_peer(peer, Arc::clone(&activity)))
            .with_upgrades();
        // The watcher runs as a task of its own and signals through `activity`, so the
        // connection's task checks one atomic per poll; it ends with the connection.
        let (gone_tx, gone) = tokio::sync::oneshot::channel::<()>();
        let timeouts = fronts.timeouts;
        let opened = std::time::Instant::now();
        let mut stop = stop_rx.clone();
        let watched = Arc::clone(&activity);
        tokio::spawn(async move {
            let stop = async move {
                // A dropped sender means the server is going away too.
                let _ = stop.changed().await;
            };
            let gone = async move {
                let _ = gone.await;
            };
            watch::watch(watched, timeouts, opened, stop, gone).await;
        });
        connections.spawn(async move {
            // Dropped when the connection ends, which ends its watcher.
            let _gone = gone_tx;
            let mut connection = std::pin::pin!(connection);
            let mut stopping = false;
            let ended = std::future::poll_fn(|cx| {
                loop {
                    if let Poll::Ready(ended) = connection.as_mut().poll(cx) {
                        return Poll::Ready(ended);
                    }
                    match activity.signalled(cx) {
                        Some(watch::Signal::Expired(why)) => {
                            tracing::debug!(reason = why.as_str(), "closing a client connection");
                            return Poll::Ready(Ok(()));
                        }
                        Some(watch::Signal::Stop) if !stopping => {
                            // Finish the request in flight, then close (unless the client
                            // is too slow to let it finish).
                            stopping = true;
                            connection.as_mut().graceful_shutdown();
                        }
                        _ => return Poll::Pending,
                    }
                }
            })
            .await;
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
