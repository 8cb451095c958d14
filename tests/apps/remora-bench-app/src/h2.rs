//! HTTP/2 without TLS (h2c, prior knowledge), on a tokio runtime with hyper.
//!
//! * `h2-serve ADDR NAME`: an HTTP/1.1 and HTTP/2 server on one port (hyper's
//!   auto server). Every request gets `200` and
//!   `NAME VERSION METHOD PATH BODY-LENGTH\n`, after its whole body was read,
//!   so a test can tell which side answered, over which protocol, and whether
//!   the body arrived whole. HTTP/1.1 connections stay open (keep-alive,
//!   pipelining); an HTTP/2 connection serves its streams concurrently.
//! * `h2-mixed ADDR N HEADER`: N concurrent GETs of `/mixed/I` as streams of
//!   ONE HTTP/2 connection, the even ones carrying HEADER (`name: value`);
//!   prints `STATUS BODY` per request, in request order. (curl 7.88 cannot
//!   reuse a prior-knowledge connection: curl/curl#10634.)

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

pub fn serve(addr: &str, name: &str) -> Result<(), String> {
    runtime()?.block_on(accept_loop(addr, Arc::from(name)))
}

pub fn mixed(addr: &str, n: u64, header: &str) -> Result<String, String> {
    let (name, value) = header
        .split_once(':')
        .ok_or_else(|| format!("HEADER {header:?} is not 'name: value'"))?;
    let (name, value) = (name.trim().to_string(), value.trim().to_string());
    runtime()?.block_on(async move {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let (sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .map_err(|e| format!("HTTP/2 handshake with {addr}: {e}"))?;
        tokio::spawn(conn);
        // Every request is in flight before the first answer is awaited.
        let answers: Vec<_> = (0..n)
            .map(|i| {
                let mut sender = sender.clone();
                let mut req = Request::get(format!("http://{addr}/mixed/{i}"));
                if i % 2 == 0 {
                    req = req.header(name.as_str(), value.as_str());
                }
                tokio::spawn(async move {
                    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
                    let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
                    let status = response.status().as_u16();
                    let body = response.into_body().collect().await;
                    let body = body.map_err(|e| e.to_string())?.to_bytes();
                    Ok::<_, String>(format!("{status} {}", String::from_utf8_lossy(&body)))
                })
            })
            .collect();
        let mut lines = String::new();
        for (i, answer) in answers.into_iter().enumerate() {
            let line = answer
                .await
                .map_err(|e| format!("request {i}: {e}"))?
                .map_err(|e| format!("request {i}: {e}"))?;
            lines.push_str(line.trim_end());
            lines.push('\n');
        }
        Ok(lines.trim_end().to_string())
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Runtime::new().map_err(|e| format!("starting tokio: {e}"))
}

async fn accept_loop(addr: &str, name: Arc<str>) -> Result<(), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
    loop {
        // A failed accept (a peer that reset early) ends only that peer.
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(name.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    name: Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let version = match req.version() {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let line_start = format!("{name} {version} {} {}", req.method(), req.uri().path());
    // Counted frame by frame: a large upload is never held in memory.
    let mut body = req.into_body();
    let mut length = 0usize;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            length += data.len();
        }
    }
    Ok(Response::new(Full::new(Bytes::from(format!(
        "{line_start} {length}\n"
    )))))
}
