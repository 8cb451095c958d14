//! `http-serve ADDR BODY`: a minimal HTTP/1.1 keep-alive responder (thread per
//! connection) answering every request with `200` and BODY. Enough for `wrk`;
//! it reads request heads up to the blank line and skips `Content-Length` bodies.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

pub fn serve(addr: &str, body: &str) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("binding {addr}: {e}"))?;
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for conn in listener.incoming().flatten() {
        let response = response.clone();
        std::thread::spawn(move || {
            let _ = handle(conn, response.as_bytes());
        });
    }
    Ok(())
}

fn handle(conn: TcpStream, response: &[u8]) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        // Request line and headers.
        let mut content_length = 0usize;
        let mut saw_request = false;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                if saw_request {
                    break;
                }
                continue;
            }
            saw_request = true;
            if let Some((name, value)) = trimmed.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        if content_length > 0 {
            let mut body = vec![0u8; content_length];
            io::Read::read_exact(&mut reader, &mut body)?;
        }
        writer.write_all(response)?;
    }
}
