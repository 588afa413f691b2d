//! Client timeouts: a connection that sends a request head too slowly, stalls in the
//! middle of a request body, or sits idle between requests too long is closed.
//!
//! Why not hyper's `header_read_timeout`: its timer also runs while a keep-alive
//! connection waits for its next request, so it is an idle timeout as short as the header
//! timeout, shorter than the idle times of the proxies keygate sits behind (nginx 60 s,
//! Traefik 90 s, Caddy 120 s) — closing under them turns into their 502s. Here the three
//! phases have their own limits, as in nginx (`client_header_timeout`,
//! `client_body_timeout`, `keepalive_timeout`).
//!
//! The request path only counts: reads in the socket wrapper ([`Watched`]), heads in the
//! service call, finished answers when the response body is dropped ([`Answered`]). A task
//! per connection ([`watch`]) looks at those counts a few times per timeout and decides;
//! no timer is set or reset per request. A limit is thus enforced up to a quarter of the
//! shortest timeout late, which is what keeps it off the hot path.
//!
//! What is never cut: a request keygate is handling and not waiting on the client for
//! (the upstream is slow, or keygate is not reading the body yet because the upstream
//! is not taking it), a response streaming out, and an upgraded (WebSocket) connection.

use axum::body::Body;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The limits on how slowly a client may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// From a connection's opening, or the first byte of a later request, to the end of
    /// the request head.
    pub header: Duration,
    /// The longest wait for the next byte of a request body keygate is reading.
    pub body: Duration,
    /// The longest a keep-alive connection waits for its next request.
    pub idle: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        Self {
            header: Duration::from_secs(60),
            body: Duration::from_secs(60),
            // Above the idle times of the proxies keygate is put behind (see above).
            idle: Duration::from_secs(180),
        }
    }
}

/// What one connection has done so far. Each count has one writer (the connection's task);
/// the watching task only reads, so relaxed loads and stores are enough.
#[derive(Default)]
pub struct Activity {
    /// Reads that returned bytes.
    reads: AtomicU64,
    /// The last read found nothing to read: the connection waits on the client.
    waiting: AtomicBool,
    /// Request heads handed to the service.
    heads: AtomicU64,
    /// Responses whose body has been written out (or dropped).
    answered: AtomicU64,
    /// `reads` when the last response was done: more reads since are a new request's.
    reads_when_answered: AtomicU64,
    /// A request body is being read and is not finished.
    body_open: AtomicBool,
}

fn bump(count: &AtomicU64) {
    count.store(count.load(Relaxed) + 1, Relaxed);
}

impl Activity {
    /// A request head has arrived; `with_body` when a body follows it.
    pub fn head(&self, with_body: bool) {
        bump(&self.heads);
        if with_body {
            self.body_open.store(true, Relaxed);
        }
    }

    fn answered(&self) {
        self.reads_when_answered
            .store(self.reads.load(Relaxed), Relaxed);
        bump(&self.answered);
    }
}

/// A client connection's socket, counting reads for [`watch`].
pub struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                bump(&this.activity.reads);
                this.activity.waiting.store(false, Relaxed);
            }
            Poll::Pending => this.activity.waiting.store(true, Relaxed),
            _ => {}
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A request body, marking the body finished when it ends or is dropped.
pub struct Reading {
    body: Incoming,
    activity: Arc<Activity>,
}

impl Reading {
    pub fn new(body: Incoming, activity: Arc<Activity>) -> Self {
        Self { body, activity }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.activity.body_open.store(false, Relaxed);
    }
}

impl hyper::body::Body for Reading {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.activity.body_open.store(false, Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body, counting the response as answered once it has been written out
/// (hyper drops it then) or abandoned.
pub struct Answered {
    body: Body,
    activity: Option<Arc<Activity>>,
}

impl Answered {
    pub fn new(body: Body, activity: Option<Arc<Activity>>) -> Self {
        Self { body, activity }
    }
}

impl Drop for Answered {
    fn drop(&mut self) {
        if let Some(activity) = &self.activity {
            activity.answered();
        }
    }
}

impl hyper::body::Body for Answered {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Why [`watch`] closed a connection (for the debug log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Header,
    Body,
    Idle,
}

impl Expired {
    pub fn as_str(self) -> &'static str {
        match self {
            Expired::Header => "the request head took too long",
            Expired::Body => "the request body stalled",
            Expired::Idle => "the connection was idle too long",
        }
    }
}

/// One look at a connection's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Look {
    heads: u64,
    answered: u64,
    reads: u64,
    reads_when_answered: u64,
    waiting: bool,
    body_open: bool,
}

impl Look {
    fn of(activity: &Activity) -> Self {
        Self {
            heads: activity.heads.load(Relaxed),
            answered: activity.answered.load(Relaxed),
            reads: activity.reads.load(Relaxed),
            reads_when_answered: activity.reads_when_answered.load(Relaxed),
            waiting: activity.waiting.load(Relaxed),
            body_open: activity.body_open.load(Relaxed),
        }
    }
}

/// What a connection is doing, as far as the client's pace goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Receiving the head of request number `answered + 1` (the first one counts from
    /// the connection's opening).
    Head { answered: u64 },
    /// Waiting on the client for more of a request body; `reads` so far.
    BodyStalled { reads: u64 },
    /// Between requests, after `answered` answers.
    Idle { answered: u64 },
    /// Keygate's turn: handling a request or writing its answer.
    Busy,
}

impl Phase {
    fn of(look: Look) -> Self {
        if look.heads > look.answered {
            if look.body_open && look.waiting {
                Phase::BodyStalled { reads: look.reads }
            } else {
                Phase::Busy
            }
        } else if look.heads == 0 || look.reads > look.reads_when_answered {
            Phase::Head {
                answered: look.answered,
            }
        } else {
            Phase::Idle {
                answered: look.answered,
            }
        }
    }

    fn limit(self, timeouts: &ClientTimeouts) -> Option<(Duration, Expired)> {
        match self {
            Phase::Head { .. } => Some((timeouts.header, Expired::Header)),
            Phase::BodyStalled { .. } => Some((timeouts.body, Expired::Body)),
            Phase::Idle { .. } => Some((timeouts.idle, Expired::Idle)),
            Phase::Busy => None,
        }
    }
}

/// The watcher's memory between looks: the phase seen and since when.
#[derive(Debug, Clone, Copy)]
pub struct Watcher {
    phase: Phase,
    since: Instant,
}

impl Watcher {
    /// A watcher of a connection opened at `opened`.
    pub fn new(opened: Instant) -> Self {
        Self {
            phase: Phase::Head { answered: 0 },
            since: opened,
        }
    }

    /// Looks at the counts at `now`; `Some` when the connection is to be closed.
    fn look(&mut self, look: Look, now: Instant, timeouts: &ClientTimeouts) -> Option<Expired> {
        let phase = Phase::of(look);
        if phase != self.phase {
            self.phase = phase;
            self.since = now;
        }
        let (limit, expired) = phase.limit(timeouts)?;
        (now.duration_since(self.since) >= limit).then_some(expired)
    }
}

/// How often a connection is looked at: a quarter of the shortest limit, so a limit is
/// enforced at most that late.
pub fn interval(timeouts: &ClientTimeouts) -> Duration {
    (timeouts.header.min(timeouts.body).min(timeouts.idle) / 4).max(Duration::from_millis(10))
}

/// Watches a connection until it breaks a limit (answering which) or `gone` completes.
pub async fn watch(
    activity: Arc<Activity>,
    timeouts: ClientTimeouts,
    opened: Instant,
    gone: impl std::future::Future<Output = ()>,
) -> Option<Expired> {
    let mut watcher = Watcher::new(opened);
    let mut ticks = tokio::time::interval(interval(&timeouts));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gone = std::pin::pin!(gone);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if let Some(expired) = watcher.look(Look::of(&activity), Instant::now(), &timeouts) {
                    return Some(expired);
                }
            }
            () = &mut gone => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ClientTimeouts = ClientTimeouts {
        header: Duration::from_secs(10),
        body: Duration::from_secs(20),
        idle: Duration::from_secs(30),
    };

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn a_new_connection_must_send_its_head_within_the_header_limit() {
        let start = Instant::now();
        let activity = Activity::default();
        let mut watcher = Watcher::new(start);
        assert_eq!(
            watcher.look(Look::of(&activity), at(start, 9), &LIMITS),
            None
        );
        // Trickling bytes does not buy time: the limit is on the whole head.
        bump(&activity.reads);
        assert_eq!(
            watcher.look(Look::of(&activity), at(start, 9), &LIMITS),
            None
        );
        assert_eq!(
            watcher.look(Look::of(&activity), at(start, 10), &LIMITS),
            Some(Expired::Header)
        );
    }

    #[test]
    fn an_idle_keep_alive_connection_gets_the_idle_limit_not_the_header_one() {
        let start = Instant::now();
        let activity = Activity::default();
        let mut watcher = Watcher::new(start);
        bump(&activity.reads);
        activity.head(false);
        assert_eq!(
            watcher.look(Look::of(&activity), at(start, 1), &LIMITS),
            None
        );
        activity.answered();
        assert_eq!(
            watcher.look(Look::of(&activity), at(start, 2), &LIMITS),
            None
        );
        assert_eq!(
            watcher.look(Look::of(&activity), at(start, 31), &LIMITS),
            None
        );
        assert_eq!(
            watcher.look(Look::of(&activity), at(start, 32), &LIMITS),
            Some(Expired::Idle)
        );
    }

    #[test]
    fn the_next_head_starts_the_header_limit_again() {
        let start = Instant::now();
        let activity = Activity::default();
        let mut watcher = Watcher::new(start);
        bump(&activity.reads);
        activity.head(false);
        activity.answered();
        assert_eq!(
            watcher.look(Look::of(&activity), at(start, 5), &LIMITS),
            None
        );
        bump(&activity.reads);
        assert_eq!(
            watcher.look(Look::of(&activity), at(start, 20), &LIMITS),
            None
        );
        assert_eq!(
            watcher.look(Look::of(&activity), at(start, 30), &LIMITS),
            Some(Expired::Header)
        );
    }

    #[test]
    fn a_request_keygate_handles_is_never_cut() {
        let start = Instant::now();
        let activity = Activity::default();
        let mut watcher = Watcher::new(start);
        bump(&activity.reads);
        activity.head(false);
        // Waiting on the upstream: the client connection waits for nothing.
        activity.waiting.store(true, Relaxed);
        assert_eq!(
            watcher.look(Look::of(&activity), at(start, 1), &LIMITS),
            None
        );
        assert_eq!(
            watcher.look(Look::of(&activity), at(start, 1000), &LIMITS),
            None
        );
        // A body keygate is not reading (the last read returned bytes) is not a stall.
        activity.head(true);
        bump(&activity.reads);
        activity.waiting.store(false, Relaxed);
        assert_eq!(
            watcher.look(Look::of(&activity), at(start, 2000), &LIMITS),
            None
        );
    }

    #[test]
    fn a_stalled_body_is_cut_after_the_body_limit_without_bytes() {
        let start = Instant::now();
        let activity = Activity::default();
        let mut watcher = Watcher::new(start);
        bump(&activity.reads);
        activity.head(true);
        activity.waiting.store(true, Relaxed);
        assert_eq!(
            watcher.look(Look::of(&activity), at(start, 1), &LIMITS),
            None
        );
        // Bytes keep it alive: each read starts the limit again.
        bump(&activity.reads);
        assert_eq!(
            watcher.look(Look::of(&activity), at(start, 15), &LIMITS),
            None
        );
        assert_eq!(
            watcher.look(Look::of(&activity), at(start, 34), &LIMITS),
            None
        );
        assert_eq!(
            watcher.look(Look::of(&activity), at(start, 35), &LIMITS),
            Some(Expired::Body)
        );
    }

    #[test]
    fn the_look_interval_is_a_quarter_of_the_shortest_limit() {
        assert_eq!(interval(&LIMITS), Duration::from_millis(2500));
        assert_eq!(
            interval(&ClientTimeouts::default()),
            Duration::from_secs(15)
        );
    }
}
