//! A tiny HTTP/1 file server on 127.0.0.1: the real service behind a scripted
//! remote address. Serves fixed bodies by path (`GET`), echoes request bodies
//! (`POST`), and records every request head.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Largest request head the server reads.
const MAX_HEAD: usize = 16 * 1024;

/// A running server. Dropping it stops it.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Serve `files` (path → body) to `GET`; other paths get a 404; `POST`
    /// answers with the request's own body.
    pub async fn start(files: &[(&str, &str)]) -> HttpServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("binding the HTTP server on 127.0.0.1");
        let addr = listener.local_addr().expect("HTTP server address");
        let files: Arc<HashMap<String, String>> = Arc::new(
            files
                .iter()
                .map(|(p, b)| (p.to_string(), b.to_string()))
                .collect(),
        );
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, files.clone(), recorded.clone()));
            }
        });
        HttpServer { addr, heads, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request head received (request line and headers).
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    files: Arc<HashMap<String, String>>,
    heads: Arc<Mutex<Vec<String>>>,
) {
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if received.len() >= MAX_HEAD {
            return;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    let mut body = received.split_off(head_end);
    let mut request_line = head.lines().next().unwrap_or("").split_whitespace();
    let method = request_line.next().unwrap_or("").to_string();
    let path = request_line.next().unwrap_or("").to_string();
    let content_length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while body.len() < content_length {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    heads.lock().unwrap().push(head);
    let (status, body): (&str, Vec<u8>) = match (method.as_str(), files.get(&path)) {
        // POST anywhere echoes the request body.
        ("POST", _) => ("200 OK", body),
        (_, Some(file)) => ("200 OK", file.as_bytes().to_vec()),
        _ => ("404 Not Found", b"not found\n".to_vec()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}
