//! `serve`, `tcp-rr` and `tcp-stream`: a TCP server and the two clients that measure
//! latency (1-byte round trips) and throughput (a one-way bulk transfer) through it.
//!
//! Protocol: the client's first byte picks the mode. `E`: every byte received is sent
//! back. `S`: bytes are read until EOF, then their count goes back as a big-endian u64.

use crate::report::Report;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::Instant;

/// Size of each write in `tcp-stream`, and of the server's read buffer.
const CHUNK: usize = 64 * 1024;
const MIB: u64 = 1024 * 1024;

/// Serves connections on 0.0.0.0:`port`, one thread each, until killed.
pub fn serve(port: u16) -> Result<(), String> {
    let listener =
        TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("binding port {port}: {e}"))?;
    for conn in listener.incoming() {
        match conn {
            Ok(conn) => {
                std::thread::spawn(move || {
                    if let Err(e) = handle(conn) {
                        eprintln!("remora-bench-app serve: connection: {e}");
                    }
                });
            }
            Err(e) => eprintln!("remora-bench-app serve: accept: {e}"),
        }
    }
    Ok(())
}

fn handle(mut conn: TcpStream) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut mode = [0u8; 1];
    // Readiness probes connect and close without a byte: nothing to do.
    if conn.read(&mut mode)? == 0 {
        return Ok(());
    }
    let mut buf = vec![0u8; CHUNK];
    match mode[0] {
        b'E' => loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            conn.write_all(&buf[..n])?;
        },
        b'S' => {
            let mut total: u64 = 0;
            loop {
                let n = conn.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            conn.write_all(&total.to_be_bytes())
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown mode byte {other:#04x} (expected 'E' or 'S')"),
        )),
    }
}

/// `n` 1-byte request/response round trips on one connection to an `E` server.
pub fn request_response(addr: &str, n: u64) -> Result<Report, String> {
    let mut conn = connect(addr)?;
    conn.write_all(b"E")
        .map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut seq: u8 = 0;
    Report::measure(n, None, || {
        seq = seq.wrapping_add(1);
        conn.write_all(&[seq])
            .map_err(|e| format!("writing to {addr}: {e}"))?;
        let mut reply = [0u8; 1];
        conn.read_exact(&mut reply)
            .map_err(|e| format!("reading from {addr}: {e}"))?;
        if reply[0] != seq {
            return Err(format!("{addr} echoed {:#04x}, sent {seq:#04x}", reply[0]));
        }
        Ok(())
    })
}

/// Sends `mb` MiB in 64 KiB writes to an `S` server, half-closes, and waits for its
/// count; the time covers all of it, so the data has really arrived.
pub fn stream(addr: &str, mb: u64) -> Result<Report, String> {
    let mut conn = connect(addr)?;
    let total = mb * MIB;
    let chunk = vec![0xa5u8; CHUNK];
    let start = Instant::now();
    conn.write_all(b"S")
        .map_err(|e| format!("writing to {addr}: {e}"))?;
    for _ in 0..total / CHUNK as u64 {
        conn.write_all(&chunk)
            .map_err(|e| format!("writing to {addr}: {e}"))?;
    }
    conn.shutdown(Shutdown::Write)
        .map_err(|e| format!("half-closing {addr}: {e}"))?;
    let mut count = [0u8; 8];
    conn.read_exact(&mut count)
        .map_err(|e| format!("reading the count from {addr}: {e}"))?;
    let elapsed = start.elapsed();
    let received = u64::from_be_bytes(count);
    if received != total {
        return Err(format!("{addr} received {received} bytes, sent {total}"));
    }
    Ok(Report {
        ops: total / CHUNK as u64,
        elapsed,
        bytes: Some(total),
        cpu: None,
    })
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    // A literal address never goes through name resolution.
    let addrs: Vec<SocketAddr> = match addr.parse() {
        Ok(one) => vec![one],
        Err(_) => addr
            .to_socket_addrs()
            .map_err(|e| format!("resolving {addr}: {e}"))?
            .collect(),
    };
    let conn = TcpStream::connect(&addrs[..]).map_err(|e| format!("connecting to {addr}: {e}"))?;
    conn.set_nodelay(true)
        .map_err(|e| format!("setting TCP_NODELAY on {addr}: {e}"))?;
    Ok(conn)
}
