//! Client timeouts: a connection that sends a request head too slowly, stalls in the
//! middle of a request body, stops reading its answer, or sits idle between requests too
//! long is closed.
//!
//! Why not hyper's `header_read_timeout`: its timer also runs while a keep-alive
//! connection waits for its next request, so it is an idle timeout as short as the header
//! timeout, shorter than the idle times of the proxies keygate sits behind (nginx 60 s,
//! Traefik 90 s, Caddy 120 s) — closing under them turns into their 502s. Here each phase
//! has its own limit, as in nginx (`client_header_timeout`, `client_body_timeout`,
//! `send_timeout`, `keepalive_timeout`).
//!
//! The request path only counts: reads and writes in the socket wrapper ([`Watched`]),
//! heads in the service call, a body's reader starved for bytes ([`Reading`]), finished
//! answers when the response body is dropped ([`Answered`]). A task per connection
//! ([`watch`]) looks at those counts a few times per timeout and decides; no timer is set
//! or reset per request. A limit is thus enforced up to a quarter of the shortest timeout
//! late, which is what keeps it off the hot path. The watcher also passes the server's
//! shutdown on. Either reaches the connection's task as a [`Signal`] in the [`Activity`]
//! and a wake-up: that task checks one atomic per poll instead of polling two channels
//! (which cost more than a tenth of a proxied request's instructions in keygate's own code).
//!
//! What is never cut: a request keygate is working on without waiting for the client (the
//! upstream is slow, or has not taken the body yet), a response the client keeps reading
//! however long it streams, and an upgraded (WebSocket) connection. Once the app has
//! answered, though, what is left of the request's body must keep moving: nothing else
//! bounds it.

use axum::body::Body;
use futures_util::task::AtomicWaker;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool, AtomicU8, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The limits on how slowly a client may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// From a connection's opening, or the first byte of a later request, to the end of
    /// the request head.
    pub header: Duration,
    /// The longest a request body's reader waits for the client's next byte.
    pub body: Duration,
    /// The longest the client may leave its answer unread (the socket full) before it
    /// takes more of it.
    pub send: Duration,
    /// The longest a keep-alive connection waits for its next request.
    pub idle: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        Self {
            header: Duration::from_secs(60),
            body: Duration::from_secs(60),
            send: Duration::from_secs(60),
            // Above the idle times of the proxies keygate is put behind (see above).
            idle: Duration::from_secs(180),
        }
    }
}

/// What one connection has done so far. The socket counts and the heads are written by
/// the connection's task alone; a request body may be read (and its marks written) on
/// another task, the upstream connection's, so those marks name their request. The
/// watching task only reads: relaxed loads and stores are enough.
#[derive(Default)]
pub struct Activity {
    /// Reads that returned bytes.
    reads: AtomicU64,
    /// Writes that took bytes.
    writes: AtomicU64,
    /// The last write found the socket full: the client is not reading.
    write_blocked: AtomicBool,
    /// Request heads handed to the service.
    heads: AtomicU64,
    /// Responses whose body has been written out (or dropped).
    answered: AtomicU64,
    /// `reads` when the latest head arrived or the latest body ended: more reads since
    /// are the next request's.
    reads_mark: AtomicU64,
    /// The number (counting heads) of the request whose body is being read; 0 for none.
    open_body: AtomicU64,
    /// The number of the request whose body's reader waits for the client; 0 for none.
    starved_body: AtomicU64,
    /// What the watcher has to tell the connection's task (see [`Signal`]); 0 for nothing.
    signal: AtomicU8,
    /// The connection's task, woken when `signal` is set.
    task: AtomicWaker,
}

/// What the watcher tells a connection's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The server is shutting down: finish the request in flight, then close.
    Stop,
    /// A limit was broken: close now.
    Expired(Expired),
}

impl Signal {
    fn code(self) -> u8 {
        match self {
            Signal::Stop => 1,
            Signal::Expired(Expired::Header) => 2,
            Signal::Expired(Expired::Body) => 3,
            Signal::Expired(Expired::Send) => 4,
            Signal::Expired(Expired::Idle) => 5,
        }
    }

    fn of(code: u8) -> Option<Self> {
        Some(match code {
            1 => Signal::Stop,
            2 => Signal::Expired(Expired::Header),
            3 => Signal::Expired(Expired::Body),
            4 => Signal::Expired(Expired::Send),
            5 => Signal::Expired(Expired::Idle),
            _ => return None,
        })
    }
}

fn bump(count: &AtomicU64) {
    count.store(count.load(Relaxed) + 1, Relaxed);
}

impl Activity {
    /// A request head has arrived; `with_body` when a body follows it. Answers the
    /// request's number, for its [`Reading`].
    pub fn head(&self, with_body: bool) -> u64 {
        let number = self.heads.load(Relaxed) + 1;
        self.heads.store(number, Relaxed);
        self.reads_mark.store(self.reads.load(Relaxed), Relaxed);
        if with_body {
            self.open_body.store(number, Relaxed);
        }
        number
    }

    fn answered(&self) {
        bump(&self.answered);
    }

    /// Tells the connection's task: an expiry overrides a stop, never the other way.
    fn signal(&self, signal: Signal) {
        let code = signal.code();
        let _ = self
            .signal
            .fetch_update(Release, Relaxed, |now| (now < code).then_some(code));
        self.task.wake();
    }

    /// For the connection's task: what it has been told so far. It registers its waker
    /// first, so a signal set after this look wakes it.
    pub fn signalled(&self, cx: &Context<'_>) -> Option<Signal> {
        self.task.register(cx.waker());
        Signal::of(self.signal.load(Acquire))
    }

    /// Request `number`'s body reader waits for the client's bytes.
    fn body_starved(&self, number: u64) {
        self.starved_body.store(number, Relaxed);
    }

    /// Request `number`'s body reader got bytes.
    fn body_fed(&self, number: u64) {
        // Runs for every frame: a plain load first spares the usual case a locked write.
        if self.starved_body.load(Relaxed) == number {
            let _ = self
                .starved_body
                .compare_exchange(number, 0, Relaxed, Relaxed);
        }
    }

    /// Request `number`'s body has ended or been dropped. A later request's marks stay.
    fn body_done(&self, number: u64) {
        let _ = self.open_body.compare_exchange(number, 0, Relaxed, Relaxed);
        self.body_fed(number);
        // A body dropped late (on the upstream connection's task) after the next head
        // arrived leaves that head's mark alone; the mark only moves forward.
        if self.heads.load(Relaxed) == number {
            self.reads_mark.fetch_max(self.reads.load(Relaxed), Relaxed);
        }
    }
}

/// A client connection's socket, counting reads and writes for [`watch`].
pub struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }

    fn wrote(&self, polled: &Poll<std::io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(n)) if *n > 0 => {
                bump(&self.activity.writes);
                self.activity.write_blocked.store(false, Relaxed);
            }
            Poll::Pending => self.activity.write_blocked.store(true, Relaxed),
            _ => {}
        }
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
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            bump(&this.activity.reads);
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
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&polled);
        polled
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

/// A request body, marking when its reader waits for the client and when it is done.
/// Whether the reader waits is the body's business, not the socket's: hyper also reads
/// the socket while a body it has whole waits for its reader (to notice a hang-up), and
/// that is no stall of the client's.
pub struct Reading {
    body: Incoming,
    activity: Arc<Activity>,
    /// The request's number (see [`Activity::head`]).
    number: u64,
    finished: bool,
}

impl Reading {
    pub fn new(body: Incoming, activity: Arc<Activity>, number: u64) -> Self {
        Self {
            body,
            activity,
            number,
            finished: false,
        }
    }

    fn finish(&mut self) {
        if !std::mem::replace(&mut self.finished, true) {
            self.activity.body_done(self.number);
        }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        self.finish();
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
        match &polled {
            Poll::Pending => this.activity.body_starved(this.number),
            Poll::Ready(Some(Ok(_))) => this.activity.body_fed(this.number),
            Poll::Ready(None | Some(Err(_))) => this.finish(),
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
    Send,
    Idle,
}

impl Expired {
    pub fn as_str(self) -> &'static str {
        match self {
            Expired::Header => "the request head took too long",
            Expired::Body => "the request body stalled",
            Expired::Send => "the client stopped reading its answer",
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
    writes: u64,
    reads_mark: u64,
    open_body: u64,
    starved_body: u64,
    write_blocked: bool,
}

impl Look {
    fn of(activity: &Activity) -> Self {
        Self {
            heads: activity.heads.load(Relaxed),
            answered: activity.answered.load(Relaxed),
            reads: activity.reads.load(Relaxed),
            writes: activity.writes.load(Relaxed),
            reads_mark: activity.reads_mark.load(Relaxed),
            open_body: activity.open_body.load(Relaxed),
            starved_body: activity.starved_body.load(Relaxed),
            write_blocked: activity.write_blocked.load(Relaxed),
        }
    }
}

/// What a connection is doing, as far as the client's pace goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Receiving the head of the request after the first `heads` (the first one counts
    /// from the connection's opening).
    Head { heads: u64 },
    /// A body's reader waits on the client; `reads` so far.
    BodyStalled { reads: u64 },
    /// An answer waits for the client to read; `writes` so far, and `reads` so far while
    /// a body is still coming in (an app may stream its answer to a client that reads
    /// nothing until its upload is done: the upload is progress too).
    SendStalled { writes: u64, reads: u64 },
    /// The rest of an answered request's body; `reads` so far.
    BodyAfterAnswer { reads: u64 },
    /// Between requests, after `heads` of them.
    Idle { heads: u64 },
    /// Keygate's turn: handling a request or writing its answer.
    Busy,
}

impl Phase {
    fn of(look: Look) -> Self {
        let working = look.open_body != 0 || look.heads > look.answered;
        if look.open_body != 0 && look.starved_body == look.open_body {
            Phase::BodyStalled { reads: look.reads }
        } else if look.write_blocked {
            // Unwritten bytes wait in hyper's buffer (even once the answer's body has been
            // taken whole and dropped).
            Phase::SendStalled {
                writes: look.writes,
                reads: if look.open_body != 0 { look.reads } else { 0 },
            }
        } else if look.open_body != 0 && look.answered >= look.open_body {
            // The app answered before taking the whole body; the rest is still on its way
            // and nothing else bounds it (`upstream_timeout` ends with the answer's head).
            Phase::BodyAfterAnswer { reads: look.reads }
        } else if working {
            Phase::Busy
        } else if look.heads == 0 || look.reads > look.reads_mark {
            Phase::Head { heads: look.heads }
        } else {
            Phase::Idle { heads: look.heads }
        }
    }

    fn limit(self, timeouts: &ClientTimeouts) -> Option<(Duration, Expired)> {
        match self {
            Phase::Head { .. } => Some((timeouts.header, Expired::Header)),
            Phase::BodyStalled { .. } | Phase::BodyAfterAnswer { .. } => {
                Some((timeouts.body, Expired::Body))
            }
            Phase::SendStalled { .. } => Some((timeouts.send, Expired::Send)),
            Phase::Idle { .. } => Some((timeouts.idle, Expired::Idle)),
            Phase::Busy => None,
        }
    }
}

/// The watcher's memory between looks: the phase seen and since when.
#[derive(Debug, Clone, Copy)]
struct Watcher {
    phase: Phase,
    since: Instant,
}

impl Watcher {
    /// A watcher of a connection opened at `opened`.
    fn new(opened: Instant) -> Self {
        Self {
            phase: Phase::Head { heads: 0 },
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
    let shortest = [timeouts.header, timeouts.body, timeouts.send, timeouts.idle]
        .into_iter()
        .min()
        .unwrap_or(timeouts.header);
    (shortest / 4).max(Duration::from_millis(10))
}

/// Watches a connection until it breaks a limit or `gone` completes, and passes `stop`
/// on; both reach the connection's task through [`Activity::signalled`].
pub async fn watch(
    activity: Arc<Activity>,
    timeouts: ClientTimeouts,
    opened: Instant,
    stop: impl std::future::Future<Output = ()>,
    gone: impl std::future::Future<Output = ()>,
) {
    let mut watcher = Watcher::new(opened);
    let mut ticks = tokio::time::interval(interval(&timeouts));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gone = std::pin::pin!(gone);
    let mut stop = std::pin::pin!(futures_util::FutureExt::fuse(stop));
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if let Some(expired) = watcher.look(Look::of(&activity), Instant::now(), &timeouts) {
                    activity.signal(Signal::Expired(expired));
                    return;
                }
            }
            () = &mut stop => activity.signal(Signal::Stop),
            () = &mut gone => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ClientTimeouts = ClientTimeouts {
        header: Duration::from_secs(10),
        body: Duration::from_secs(20),
        send: Duration::from_secs(25),
        idle: Duration::from_secs(30),
    };

    /// A connection as its watcher sees it, with time under the test's control.
    struct Connection {
        activity: Activity,
        watcher: Watcher,
        start: Instant,
    }

    impl Connection {
        fn new() -> Self {
            let start = Instant::now();
            Self {
                activity: Activity::default(),
                watcher: Watcher::new(start),
                start,
            }
        }

        fn at(&mut self, secs: u64) -> Option<Expired> {
            let now = self.start + Duration::from_secs(secs);
            self.watcher.look(Look::of(&self.activity), now, &LIMITS)
        }

        fn read(&self) {
            bump(&self.activity.reads);
        }
    }

    #[test]
    fn a_new_connection_must_send_its_head_within_the_header_limit() {
        let mut c = Connection::new();
        assert_eq!(c.at(9), None);
        // Trickling bytes does not buy time: the limit is on the whole head.
        c.read();
        assert_eq!(c.at(9), None);
        assert_eq!(c.at(10), Some(Expired::Header));
    }

    #[test]
    fn an_idle_keep_alive_connection_gets_the_idle_limit_not_the_header_one() {
        let mut c = Connection::new();
        c.read();
        c.activity.head(false);
        assert_eq!(c.at(1), None);
        c.activity.answered();
        assert_eq!(c.at(2), None);
        assert_eq!(c.at(31), None);
        assert_eq!(c.at(32), Some(Expired::Idle));
    }

    #[test]
    fn the_next_head_starts_the_header_limit_again() {
        let mut c = Connection::new();
        c.read();
        c.activity.head(false);
        c.activity.answered();
        assert_eq!(c.at(5), None);
        c.read();
        assert_eq!(c.at(20), None);
        assert_eq!(c.at(30), Some(Expired::Header));
    }

    #[test]
    fn a_request_keygate_handles_is_never_cut() {
        let mut c = Connection::new();
        c.read();
        c.activity.head(false);
        // Waiting on the upstream.
        assert_eq!(c.at(1), None);
        assert_eq!(c.at(1000), None);
    }

    #[test]
    fn a_body_received_whole_but_not_yet_taken_is_no_stall() {
        let mut c = Connection::new();
        c.read();
        let number = c.activity.head(true);
        c.activity.body_starved(number);
        c.read();
        c.activity.body_fed(number);
        // The reader got its bytes and has not asked again (the upstream is slow to take
        // them); hyper meanwhile waits on the socket, which is not the client's doing.
        assert_eq!(c.at(1), None);
        assert_eq!(c.at(1000), None);
        // Once the body ends and the answer is out, the connection is idle.
        c.activity.body_done(number);
        c.activity.answered();
        assert_eq!(c.at(1001), None);
        assert_eq!(c.at(1031), Some(Expired::Idle));
    }

    #[test]
    fn a_starved_body_is_cut_after_the_body_limit_without_bytes() {
        let mut c = Connection::new();
        c.read();
        let number = c.activity.head(true);
        c.activity.body_starved(number);
        assert_eq!(c.at(1), None);
        // Bytes keep it alive: each read starts the limit again.
        c.read();
        assert_eq!(c.at(15), None);
        assert_eq!(c.at(34), None);
        assert_eq!(c.at(35), Some(Expired::Body));
    }

    #[test]
    fn an_earlier_bodys_end_does_not_clear_a_later_ones_marks() {
        let mut c = Connection::new();
        c.read();
        let first = c.activity.head(true);
        // The upstream answered early; the next request's body opens before the first
        // body is dropped (on the upstream connection's task).
        c.activity.answered();
        c.read();
        let second = c.activity.head(true);
        c.activity.body_starved(second);
        c.activity.body_done(first);
        assert_eq!(c.at(1), None);
        assert_eq!(c.at(21), Some(Expired::Body));
    }

    #[test]
    fn a_client_that_stops_reading_its_answer_is_cut_after_the_send_limit() {
        let mut c = Connection::new();
        c.read();
        c.activity.head(false);
        c.activity.write_blocked.store(true, Relaxed);
        c.activity.answered(); // hyper drops a small body once it is in the buffer
        assert_eq!(c.at(1), None);
        // Taking some of it starts the limit again.
        bump(&c.activity.writes);
        assert_eq!(c.at(20), None);
        assert_eq!(c.at(44), None);
        assert_eq!(c.at(45), Some(Expired::Send));
    }

    #[test]
    fn an_upload_still_coming_in_is_progress_while_the_answer_waits() {
        let mut c = Connection::new();
        c.read();
        let number = c.activity.head(true);
        // The app streams its answer; the client reads none of it until its upload is
        // done, and the upload flows.
        c.activity.write_blocked.store(true, Relaxed);
        for second in (10..200).step_by(10) {
            c.read();
            c.activity.body_fed(number);
            assert_eq!(c.at(second), None, "{second} s");
        }
        // The upload ends; now the answer must move.
        c.activity.body_done(number);
        assert_eq!(c.at(200), None);
        assert_eq!(c.at(225), Some(Expired::Send));
    }

    #[test]
    fn a_body_dropped_after_the_next_head_leaves_that_heads_mark() {
        let mut c = Connection::new();
        c.read();
        let first = c.activity.head(true);
        c.activity.answered();
        c.read();
        c.activity.head(false);
        c.activity.answered();
        // The first body is dropped only now, by the upstream connection's task.
        c.activity.body_done(first);
        assert_eq!(c.at(1), None);
        assert_eq!(c.at(30), None);
        assert_eq!(c.at(31), Some(Expired::Idle));
    }

    #[test]
    fn the_rest_of_an_answered_requests_body_must_keep_moving() {
        let mut c = Connection::new();
        c.read();
        let number = c.activity.head(true);
        // The app answers early and then takes the rest of the upload as it comes.
        c.activity.answered();
        for second in (10..100).step_by(10) {
            c.read();
            c.activity.body_fed(number);
            assert_eq!(c.at(second), None, "{second} s");
        }
        // It stops taking it (and keeps its socket open): the upload no longer moves.
        assert_eq!(c.at(109), None);
        assert_eq!(c.at(110), Some(Expired::Body));
    }

    #[test]
    fn an_expiry_overrides_a_stop_and_is_never_overridden() {
        let activity = Activity::default();
        let cx = Context::from_waker(std::task::Waker::noop());
        assert_eq!(activity.signalled(&cx), None);
        activity.signal(Signal::Stop);
        assert_eq!(activity.signalled(&cx), Some(Signal::Stop));
        activity.signal(Signal::Expired(Expired::Send));
        activity.signal(Signal::Stop);
        assert_eq!(
            activity.signalled(&cx),
            Some(Signal::Expired(Expired::Send))
        );
        for code in 1..=5 {
            assert_eq!(Signal::of(code).map(Signal::code), Some(code));
        }
        assert_eq!(Signal::of(0), None);
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
