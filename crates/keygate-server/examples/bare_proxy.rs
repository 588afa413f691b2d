//! A bare reverse proxy: hyper's server in front of keygate's upstream pool, with none of
//! keygate's per-request work. The floor the proxy mode's own work is measured against
//! (BENCHMARKS.md).
//!
//! `cargo run --release -p keygate-server --example bare_proxy -- 127.0.0.1:9001 127.0.0.1:9000`

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keygate_server::http::upstream::Pool;
use std::time::Duration;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:9001".into());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:9000".into());
    let origin: hyper::Uri = format!("http://{upstream}")
        .parse()
        .map_err(std::io::Error::other)?;
    let pool = Pool::new(&origin, Duration::from_secs(5), Duration::from_secs(90));
    let host = hyper::header::HeaderValue::from_str(&upstream).map_err(std::io::Error::other)?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("bare proxy listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let pool = pool.clone();
        let host = host.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let pool = pool.clone();
                let host = host.clone();
                async move {
                    let (mut parts, body) = request.into_parts();
                    parts.headers.insert(hyper::header::HOST, host);
                    let request = hyper::Request::from_parts(parts, axum::body::Body::new(body));
                    match pool.send(Box::new(request)).await {
                        Ok(response) => Ok::<_, std::convert::Infallible>(response),
                        Err(err) => {
                            let mut response =
                                hyper::Response::new(axum::body::Body::from(err.to_string()));
                            *response.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                            Ok(response)
                        }
                    }
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
