//! Client timeouts: slow heads, stalled bodies, unread answers and idle keep-alive
//! connections are cut; a request keygate is working on is not.

use super::*;
use keygate_server::config::UpstreamConfig;
use keygate_server::http::watch::ClientTimeouts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn server_with(timeouts: ClientTimeouts) -> TestServer {
    TestServer::start_with(ServerConfig {
        client_timeouts: timeouts,
        ..test_config()
    })
    .await
}

async fn connect(server: &TestServer) -> TcpStream {
    TcpStream::connect(server.base.trim_start_matches("http://"))
        .await
        .expect("connect")
}

/// Reads until the server closes the connection (or `limit` passes, which fails the
/// test); answers everything read and when the close came.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Instant) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "the connection was still open after {limit:?}: {}",
                String::from_utf8_lossy(&seen)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&seen).into(), Instant::now());
            }
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends one request and reads its whole answer (a small JSON body with a length).
async fn exchange(stream: &mut TcpStream, request: &str) -> String {
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer")
            .expect("read");
        assert!(n > 0, "closed before answering");
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().expect("length"))
                })
                .expect("content-length");
            if body.len() >= length {
                return text.into();
            }
        }
    }
}

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: keygate\r\n\r\n";

#[tokio::test]
async fn a_request_head_trickled_in_is_cut_at_the_header_timeout() {
    let server = server_with(ClientTimeouts {
        header: Duration::from_millis(400),
        body: Duration::from_secs(30),
        send: Duration::from_secs(30),
        idle: Duration::from_secs(30),
    })
    .await;
    let mut stream = connect(&server).await;
    let started = Instant::now();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: keygate\r\n")
        .await
        .expect("write");
    // A header line every 100 ms: progress, but the head never ends.
    let trickle = async {
        for n in 0.. {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream
                .write_all(format!("X-Slow-{n}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let mut probe = connect(&server).await;
    tokio::select! {
        () = trickle => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => panic!("the trickled head was never cut"),
    }
    // Not before the limit (less a little: the server counts from its accept, which may
    // come just before this test's clock reading).
    let cut_after = started.elapsed();
    assert!(cut_after >= Duration::from_millis(300), "{cut_after:?}");
    // A connection that sends nothing at all is cut the same way.
    let (answer, closed) = read_until_closed(&mut probe, Duration::from_secs(5)).await;
    assert_eq!(answer, "");
    assert!(closed.duration_since(started) >= Duration::from_millis(300));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_the_header_timeout_until_the_idle_one() {
    let server = server_with(ClientTimeouts {
        header: Duration::from_millis(300),
        body: Duration::from_secs(30),
        send: Duration::from_secs(30),
        idle: Duration::from_millis(1500),
    })
    .await;
    let mut stream = connect(&server).await;
    assert!(
        exchange(&mut stream, HEALTHZ)
            .await
            .starts_with("HTTP/1.1 200")
    );
    // Idle for well past the header timeout: still open, and it serves the next request.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        exchange(&mut stream, HEALTHZ)
            .await
            .starts_with("HTTP/1.1 200")
    );
    let answered = Instant::now();
    let (rest, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(rest, "");
    // Cut by the idle limit, well past the header one.
    let idle = closed.duration_since(answered);
    assert!(idle >= Duration::from_millis(1200), "closed after {idle:?}");
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_at_the_body_timeout() {
    let server = server_with(ClientTimeouts {
        header: Duration::from_secs(30),
        body: Duration::from_millis(400),
        send: Duration::from_secs(30),
        idle: Duration::from_secs(30),
    })
    .await;
    let key_count = || async {
        let (status, keys) = server.admin_get("/api/v1/keys").await;
        assert_eq!(status, StatusCode::OK);
        keys["keys"].as_array().expect("keys").len()
    };
    let before = key_count().await;
    let mut stream = connect(&server).await;
    let head = format!(
        "POST /api/v1/keys HTTP/1.1\r\nHost: keygate\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":",
        server.admin
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let sent = Instant::now();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    // Not at once: the limit counts from the last byte (less a little, as the server may
    // read it before this test reads its clock).
    assert!(
        closed.duration_since(sent) >= Duration::from_millis(300),
        "{answer}"
    );
    assert!(!answer.contains("201"), "{answer}");
    // Nothing was created from half a body.
    assert_eq!(key_count().await, before);
}

#[tokio::test]
async fn a_request_waiting_on_the_upstream_is_not_cut_by_client_timeouts() {
    // An upstream that answers after 1.2 s, longer than every client timeout here.
    let app = axum::Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        "late but fine"
    });
    let (server, key) = proxy_in_front_of(
        app,
        ClientTimeouts {
            header: Duration::from_millis(200),
            body: Duration::from_millis(200),
            send: Duration::from_millis(200),
            idle: Duration::from_millis(200),
        },
    )
    .await;
    let mut stream = connect(&server).await;
    let answer = exchange(
        &mut stream,
        &format!("GET /report HTTP/1.1\r\nHost: app\r\nX-API-Key: {key}\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("late but fine"), "{answer}");
    // A body keygate passes on while the upstream is slow is not a stalled body either.
    let started = Instant::now();
    let answer = exchange(
        &mut stream,
        &format!(
            "POST /upload HTTP/1.1\r\nHost: app\r\nX-API-Key: {key}\r\nContent-Length: 5\r\n\r\nhello"
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(1200));
}

/// A proxy in front of `app`, with the key it accepts.
async fn proxy_in_front_of(app: axum::Router, timeouts: ClientTimeouts) -> (TestServer, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    proxy_to(&upstream, timeouts).await
}

/// A proxy in front of the app at `upstream`, with the key it accepts.
async fn proxy_to(upstream: &str, timeouts: ClientTimeouts) -> (TestServer, String) {
    let mut upstream = UpstreamConfig::new(upstream).expect("upstream");
    upstream.timeout = Duration::from_secs(20);
    let server = TestServer::start_with(ServerConfig {
        upstream: Some(upstream),
        client_timeouts: timeouts,
        ..test_config()
    })
    .await;
    let (key, _) = server.create_key(json!({"name": "client"})).await;
    (server, key)
}

#[tokio::test]
async fn an_upload_the_upstream_is_slow_to_take_is_not_a_stalled_body() {
    // The app waits before it reads: whatever part of the body keygate already holds
    // waits inside keygate, with the client done sending (or blocked by keygate).
    let app = axum::Router::new().fallback(|request: axum::extract::Request| async move {
        tokio::time::sleep(Duration::from_millis(3000)).await;
        let body = axum::body::to_bytes(request.into_body(), usize::MAX)
            .await
            .expect("body");
        body.len().to_string()
    });
    let (server, key) = proxy_in_front_of(
        app,
        ClientTimeouts {
            header: Duration::from_secs(30),
            // Well above a scheduling pause on a busy machine, well below the app's wait.
            body: Duration::from_secs(1),
            send: Duration::from_secs(30),
            idle: Duration::from_secs(30),
        },
    )
    .await;
    // Sizes around what loopback buffers hold, where the whole body can end up inside
    // keygate before the app reads.
    let sizes = [
        64 << 10,
        1 << 20,
        2 << 20,
        4 << 20,
        (4 << 20) + (3 << 18),
        6 << 20,
        8 << 20,
    ];
    let uploads = sizes.map(|size| {
        server
            .request(Method::POST, "/upload")
            .header("x-api-key", &key)
            .body(vec![b'x'; size])
            .send()
    });
    for (size, sent) in sizes
        .iter()
        .zip(futures_util::future::join_all(uploads).await)
    {
        let answer = sent.unwrap_or_else(|e| panic!("{size} bytes: {e}"));
        assert_eq!(answer.status(), StatusCode::OK, "{size} bytes");
        assert_eq!(answer.text().await.expect("text"), size.to_string());
    }
}

#[tokio::test]
async fn a_client_that_leaves_its_answer_unread_is_cut_at_the_send_timeout() {
    const ANSWER: usize = 64 << 20;
    let app = axum::Router::new().fallback(|| async { vec![b'y'; ANSWER] });
    let (server, key) = proxy_in_front_of(
        app,
        ClientTimeouts {
            header: Duration::from_secs(30),
            body: Duration::from_secs(30),
            send: Duration::from_millis(300),
            idle: Duration::from_secs(30),
        },
    )
    .await;
    let mut stream = connect(&server).await;
    stream
        .write_all(format!("GET /big HTTP/1.1\r\nHost: app\r\nX-API-Key: {key}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    // The client reads nothing for a while (its behaviour under test, not a wait for a
    // race), then reads what reached it: not the whole answer, as keygate gave up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut received = 0usize;
    let mut head = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Err(_) => panic!("still open after {received} bytes"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                if head.len() < 64 {
                    head.extend_from_slice(&buf[..n.min(64)]);
                }
                received += n;
            }
        }
    }
    // The answer had started (so it was cut while being sent, not refused) and did not
    // arrive whole.
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    assert!(
        received < ANSWER,
        "the whole answer arrived: {received} bytes"
    );
}

#[tokio::test]
async fn an_upload_the_app_stopped_taking_after_answering_is_cut() {
    // An app that answers at once, then never reads the rest of the upload and keeps its
    // socket open.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                std::future::pending::<()>().await;
                drop(socket);
            });
        }
    });
    let (server, key) = proxy_to(
        &upstream,
        ClientTimeouts {
            header: Duration::from_secs(30),
            body: Duration::from_millis(500),
            send: Duration::from_secs(30),
            idle: Duration::from_secs(30),
        },
    )
    .await;
    let (mut reader, mut writer) = connect(&server).await.into_split();
    writer
        .write_all(
            format!(
                "POST /upload HTTP/1.1\r\nHost: app\r\nX-API-Key: {key}\r\nContent-Length: {}\r\n\r\n",
                1u64 << 30
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    // The client keeps uploading as fast as keygate takes it.
    let uploading = tokio::spawn(async move {
        let chunk = vec![b'z'; 1 << 16];
        while writer.write_all(&chunk).await.is_ok() {}
    });
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, reader.read(&mut buf)).await {
            Err(_) => panic!("still open: {}", String::from_utf8_lossy(&seen)),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    uploading.abort();
}
