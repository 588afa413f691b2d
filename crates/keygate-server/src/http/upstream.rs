//! Keep-alive connections to the upstream, each driven by the task of the request using it.
//!
//! Why not hyper-util's pooled client: it runs every upstream connection in a task of
//! its own, so each proxied request hops from the client connection's task to the
//! upstream connection's task and back (two wake-ups, two task switches, a channel each
//! way). That hop cost more than all of keygate's own work on a proxied request
//! (BENCHMARKS.md). Here an idle connection waits in the pool unpolled; the request that
//! takes it polls it while it sends, and its response body polls it while the body
//! streams, then puts it back.
//!
//! An idle connection the upstream closed is only noticed when it is next taken; a
//! request that was never written on it goes again on a fresh connection, so that race
//! costs a reconnect and never a failed request.
//!
//! That only suits requests without a body. While a body is still being sent, the
//! connection must keep moving whatever the response side does: an upstream may answer
//! before it has read an upload (a 401, a 413), or stream its answer while the client
//! is still uploading and reads nothing until it is done. Requests with a body, and
//! protocol upgrades, therefore go through hyper-util's pooled client, whose connection
//! tasks run on their own ([`Pool::send_streaming`]).

use axum::body::Body;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Most idle connections kept; more are closed as their requests finish.
const MAX_IDLE: usize = 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request got no answer from the upstream.
#[derive(Debug)]
pub enum Failure {
    /// No TCP connection within the connect timeout, or it was refused.
    Connect(BoxError),
    /// The connection failed while the request was sent or the answer read.
    Exchange(BoxError),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(err) => write!(f, "connecting to the upstream failed: {err}"),
            Failure::Exchange(err) => write!(f, "the upstream exchange failed: {err}"),
        }
    }
}

type Connection = http1::Connection<TokioIo<TcpStream>, Body>;

/// One keep-alive connection: the handle requests are sent with and the connection
/// state machine that must be polled for anything to move.
struct Link {
    sender: http1::SendRequest<Body>,
    /// `None` once the connection has closed or failed. It is dropped then, which is what
    /// tells `sender` (and a request waiting on it) that the connection is gone.
    connection: Option<Pin<Box<Connection>>>,
}

/// Moves a connection along; whatever it does next wakes the calling task.
fn drive(connection: &mut Option<Pin<Box<Connection>>>, cx: &mut Context<'_>) {
    if let Some(running) = connection
        && let Poll::Ready(result) = running.as_mut().poll(cx)
    {
        *connection = None;
        if let Err(err) = result {
            tracing::debug!(error = %err, "upstream connection ended");
        }
    }
}

impl Link {
    /// Waits until the connection takes a request, driving it meanwhile; an error means
    /// it has closed.
    async fn ready(&mut self) -> Result<(), hyper::Error> {
        let Link { sender, connection } = self;
        poll_fn(|cx| {
            drive(connection, cx);
            sender.poll_ready(cx)
        })
        .await
    }

    /// Sends `request` on a [ready](Link::ready) connection and waits for the response
    /// head, driving the connection meanwhile.
    async fn exchange(
        &mut self,
        request: Box<hyper::Request<Body>>,
    ) -> Result<Response, NotAnswered> {
        let Link { sender, connection } = self;
        let mut answer = std::pin::pin!(sender.try_send_request(*request));
        let answer = poll_fn(|cx| {
            drive(connection, cx);
            answer.as_mut().poll(cx)
        })
        .await;
        answer.map_err(|mut err| match err.take_message() {
            Some(request) => NotAnswered::NotSent(err.into_error(), Box::new(request)),
            None => NotAnswered::Failed(err.into_error()),
        })
    }

    /// Done with its last exchange, both ways, and open: hyper only asks for the next
    /// request then. (An upstream may answer before the request is written whole; such
    /// a connection is closed, not handed to the next request to wait behind.)
    fn reusable(&self) -> bool {
        self.connection.is_some() && self.sender.is_ready()
    }
}

type Response = hyper::Response<Incoming>;

enum NotAnswered {
    /// The request never left: it can go again on another connection.
    NotSent(hyper::Error, Box<hyper::Request<Body>>),
    Failed(hyper::Error),
}

struct Idle {
    link: Link,
    since: Instant,
}

/// The upstream's idle keep-alive connections.
pub struct Pool {
    /// The upstream's scheme and authority (`http://host:port`).
    origin: axum::http::Uri,
    /// Makes TCP connections (name resolution, each address in turn, connect timeout).
    connector: HttpConnector,
    /// For requests with a body and upgrades (see the module's documentation).
    streaming: Client<HttpConnector, Body>,
    idle_timeout: Duration,
    /// Oldest first; requests take the newest, which is the likeliest to be alive.
    idle: Mutex<VecDeque<Idle>>,
}

impl Pool {
    /// A pool for the upstream at `origin` (`http://host:port`; a path is ignored).
    pub fn new(
        origin: &axum::http::Uri,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        // Requests are written whole: Nagle would hold them behind delayed ACKs.
        connector.set_nodelay(true);
        let streaming = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle_timeout)
            .build(connector.clone());
        let mut parts = axum::http::uri::Parts::default();
        parts.scheme = origin.scheme().cloned();
        parts.authority = origin.authority().cloned();
        parts.path_and_query = Some(axum::http::uri::PathAndQuery::from_static("/"));
        Arc::new(Self {
            origin: axum::http::Uri::from_parts(parts).unwrap_or_else(|_| origin.clone()),
            connector,
            streaming,
            idle_timeout,
            idle: Mutex::new(VecDeque::new()),
        })
    }

    /// Sends `request` (origin-form URI, `Host` set) and answers the response head; the
    /// body streams from the upstream as it is read.
    ///
    /// The request comes boxed because this future is in every proxied request's own
    /// (boxed) future: an unboxed request would be kept at each layer of it, and a
    /// future that size takes the allocator's slow path (BENCHMARKS.md).
    pub async fn send(
        self: &Arc<Self>,
        mut request: Box<hyper::Request<Body>>,
    ) -> Result<hyper::Response<Body>, Failure> {
        while let Some(mut link) = self.take_idle() {
            let sent = match link.ready().await {
                Ok(()) => link.exchange(request).await,
                Err(err) => Err(NotAnswered::NotSent(err, request)),
            };
            match sent {
                Ok(response) => return Ok(self.stream(link, response)),
                // Closed while it sat idle: try the next one, or a fresh one.
                Err(NotAnswered::NotSent(err, unsent)) => {
                    tracing::debug!(error = %err, "idle upstream connection was closed");
                    request = unsent;
                }
                Err(NotAnswered::Failed(err)) => return Err(Failure::Exchange(err.into())),
            }
        }
        // Boxed: connecting is rare, and its future is larger than the rest of this one.
        let mut link = Box::pin(self.connect()).await?;
        link.ready()
            .await
            .map_err(|err| Failure::Exchange(err.into()))?;
        match link.exchange(request).await {
            Ok(response) => Ok(self.stream(link, response)),
            Err(NotAnswered::NotSent(err, _) | NotAnswered::Failed(err)) => {
                Err(Failure::Exchange(err.into()))
            }
        }
    }

    /// Sends a request with a body, or a protocol upgrade, through hyper-util's pooled
    /// client: its connections run in tasks of their own, so an upload keeps flowing
    /// whatever the response side does, and a `101` hands the socket over.
    pub async fn send_streaming(
        &self,
        mut request: hyper::Request<Body>,
    ) -> Result<hyper::Response<Body>, Failure> {
        // hyper-util's client wants the absolute form; it sends the origin form.
        let mut parts = self.origin.clone().into_parts();
        parts.path_and_query = request.uri().path_and_query().cloned();
        *request.uri_mut() =
            axum::http::Uri::from_parts(parts).map_err(|err| Failure::Exchange(Box::new(err)))?;
        match self.streaming.request(request).await {
            Ok(response) => Ok(response.map(Body::new)),
            Err(err) if err.is_connect() => Err(Failure::Connect(Box::new(err))),
            Err(err) => Err(Failure::Exchange(Box::new(err))),
        }
    }

    fn stream(self: &Arc<Self>, link: Link, response: Response) -> hyper::Response<Body> {
        response.map(|body| {
            Body::new(PooledBody {
                body,
                link: Some(link),
                pool: Arc::clone(self),
            })
        })
    }

    async fn connect(&self) -> Result<Link, Failure> {
        use tower::ServiceExt as _;
        let io = self
            .connector
            .clone()
            .oneshot(self.origin.clone())
            .await
            .map_err(|err| Failure::Connect(Box::new(err)))?;
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(|err| Failure::Exchange(err.into()))?;
        Ok(Link {
            sender,
            connection: Some(Box::pin(connection)),
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take_idle(&self) -> Option<Link> {
        let mut idle = self.idle();
        let newest = idle.pop_back()?;
        if newest.since.elapsed() >= self.idle_timeout {
            // The newest is stale, so every one is.
            idle.clear();
            return None;
        }
        Some(newest.link)
    }

    fn put_back(&self, link: Link) {
        if !link.reusable() {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push_back(Idle {
                link,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle for longer than the idle timeout.
    fn close_stale(&self) {
        let mut idle = self.idle();
        while idle
            .front()
            .is_some_and(|oldest| oldest.since.elapsed() >= self.idle_timeout)
        {
            idle.pop_front();
        }
    }

    /// Closes stale idle connections every so often until `stop` or the pool is gone.
    pub async fn close_stale_until(pool: Weak<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(period) = pool.upgrade().map(|p| (p.idle_timeout / 2).max(MIN_SWEEP)) else {
            return;
        };
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => match pool.upgrade() {
                    Some(pool) => pool.close_stale(),
                    None => return,
                },
                _ = stop.changed() => return,
            }
        }
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle().len()
    }
}

/// The shortest interval between sweeps of stale idle connections.
const MIN_SWEEP: Duration = Duration::from_millis(100);

/// A response body from a pooled connection: reading it drives the connection, and the
/// connection goes back to the pool once the body has been read to its end.
struct PooledBody {
    body: Incoming,
    link: Option<Link>,
    pool: Arc<Pool>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(link) = self.link.take() {
            self.pool.put_back(link);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(link) = &mut this.link {
            drive(&mut link.connection, cx);
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            // Once more, so the connection moves from the finished exchange to idle.
            if let Some(link) = &mut this.link {
                drive(&mut link.connection, cx);
            }
            this.release();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body read to its end (or empty, which a server may never poll) leaves the
        // connection ready for the next request; one dropped half-read leaves it mid-
        // message, so it is closed.
        if hyper::body::Body::is_end_stream(&self.body) {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    struct Upstream {
        address: String,
        connections: Arc<std::sync::atomic::AtomicUsize>,
        /// One message each time the upstream has closed a connection.
        closed: tokio::sync::mpsc::UnboundedReceiver<()>,
        /// A connection that has had its answers closes when this is notified.
        close: Arc<tokio::sync::Notify>,
    }

    impl Upstream {
        fn origin(&self) -> axum::http::Uri {
            format!("http://{}", self.address).parse().expect("uri")
        }

        /// A pool for this upstream: 1 s to connect, idle connections kept 60 s.
        fn pool(&self) -> Arc<Pool> {
            Pool::new(
                &self.origin(),
                Duration::from_secs(1),
                Duration::from_secs(60),
            )
        }

        fn connections(&self) -> usize {
            self.connections.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// An upstream that answers `answers` requests on each connection with a fixed body,
    /// then closes it when told to; counts connections.
    async fn upstream(answers: usize) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
        let close = Arc::new(tokio::sync::Notify::new());
        let told = Arc::clone(&close);
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.expect("accept");
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let closed_tx = closed_tx.clone();
                let told = Arc::clone(&told);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    for _ in 0..answers {
                        while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                            let mut chunk = [0u8; 1024];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buffer
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .expect("a head");
                        buffer.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    told.notified().await;
                    drop(stream);
                    let _ = closed_tx.send(());
                });
            }
        });
        Upstream {
            address,
            connections,
            closed,
            close,
        }
    }

    fn get() -> Box<hyper::Request<Body>> {
        Box::new(
            hyper::Request::builder()
                .uri("/")
                .header("host", "upstream")
                .body(Body::empty())
                .expect("a request"),
        )
    }

    async fn body_of(response: hyper::Response<Body>) -> Bytes {
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body")
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_body_is_read() {
        let upstream = upstream(usize::MAX).await;
        let pool = upstream.pool();
        for _ in 0..5 {
            let response = pool.send(get()).await.expect("an answer");
            assert_eq!(body_of(response).await, "ok");
        }
        assert_eq!(upstream.connections(), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced_without_failing_the_request() {
        // One answer per connection, then the upstream closes it (as at its idle timeout).
        let mut upstream = upstream(1).await;
        let pool = upstream.pool();
        for _ in 0..3 {
            let response = pool.send(get()).await.expect("an answer");
            assert_eq!(body_of(response).await, "ok");
            assert_eq!(pool.idle_count(), 1);
            upstream.close.notify_one();
            upstream.closed.recv().await.expect("a close");
        }
        assert_eq!(upstream.connections(), 3);
    }

    #[tokio::test]
    async fn a_half_read_body_closes_its_connection() {
        let upstream = upstream(usize::MAX).await;
        let pool = upstream.pool();
        drop(pool.send(get()).await.expect("an answer"));
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(
            body_of(pool.send(get()).await.expect("an answer")).await,
            "ok"
        );
        assert_eq!(upstream.connections(), 2);
    }

    #[tokio::test]
    async fn a_connection_answered_before_its_request_was_written_is_not_reused() {
        // The upstream answers once it has the head; this body never ends.
        let upstream = upstream(usize::MAX).await;
        let pool = upstream.pool();
        let endless = futures_util::stream::unfold(true, |first| async move {
            if first {
                Some((Ok::<_, std::io::Error>(Bytes::from_static(b"part")), false))
            } else {
                std::future::pending().await
            }
        });
        let upload = hyper::Request::builder()
            .method("POST")
            .uri("/")
            .header("host", "upstream")
            .body(Body::from_stream(endless))
            .expect("a request");
        let response = pool.send(Box::new(upload)).await.expect("an answer");
        assert_eq!(body_of(response).await, "ok");
        assert_eq!(pool.idle_count(), 0, "still sending: not reusable");
        let next = tokio::time::timeout(Duration::from_secs(5), pool.send(get()))
            .await
            .expect("not held up behind the unfinished upload")
            .expect("an answer");
        assert_eq!(body_of(next).await, "ok");
        assert_eq!(upstream.connections(), 2);
    }

    #[tokio::test]
    async fn stale_idle_connections_are_not_used() {
        let upstream = upstream(usize::MAX).await;
        let pool = Pool::new(&upstream.origin(), Duration::from_secs(1), Duration::ZERO);
        for _ in 0..2 {
            assert_eq!(
                body_of(pool.send(get()).await.expect("an answer")).await,
                "ok"
            );
        }
        assert_eq!(upstream.connections(), 2);
        assert_eq!(pool.idle_count(), 1);
        pool.close_stale();
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        drop(listener);
        let origin = format!("http://{address}").parse().expect("uri");
        let pool = Pool::new(&origin, Duration::from_secs(1), Duration::from_secs(60));
        assert!(matches!(pool.send(get()).await, Err(Failure::Connect(_))));
    }
}
