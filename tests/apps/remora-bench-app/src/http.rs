//! `http-serve ADDR BODY [WORK_US]`: a minimal HTTP/1.1 keep-alive responder
//! (thread per connection) answering every request with `200` and BODY. Enough
//! for `wrk`; it reads request heads up to the blank line and skips
//! `Content-Length` bodies. With WORK_US it first spends that many
//! microseconds of CPU per request (a busy loop), standing in for a service
//! that does real work.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

pub fn serve(addr: &str, body: &str, work_us: u64) -> Result<(), String> {
    let work = std::time::Duration::from_micros(work_us);
    if !work.is_zero() {
        // Calibrate before the first request.
        nanos_per_round();
    }
    let listener = TcpListener::bind(addr).map_err(|e| format!("binding {addr}: {e}"))?;
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for conn in listener.incoming().flatten() {
        let response = response.clone();
        std::thread::spawn(move || {
            let _ = handle(conn, response.as_bytes(), work);
        });
    }
    Ok(())
}

fn handle(conn: TcpStream, response: &[u8], work: std::time::Duration) -> io::Result<()> {
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
        busy(work);
        writer.write_all(response)?;
    }
}

/// Spend about `work` of CPU on this thread (not sleeping: a sleeping
/// service would hide the CPU a proxy takes from it). A fixed number of loop
/// rounds, calibrated once, so that time stolen by other processes does not
/// shorten the work.
fn busy(work: std::time::Duration) {
    if work.is_zero() {
        return;
    }
    let rounds = (work.as_nanos() as f64 / nanos_per_round()) as u64;
    spin(rounds);
}

fn spin(rounds: u64) -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..rounds {
        x = std::hint::black_box(x.rotate_left(5) ^ i).wrapping_mul(0x100_0000_01b3);
    }
    x
}

/// Nanoseconds one round of [`spin`] takes (the fastest of a few tries).
fn nanos_per_round() -> f64 {
    static CALIBRATED: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *CALIBRATED.get_or_init(|| {
        const ROUNDS: u64 = 2_000_000;
        (0..5)
            .map(|_| {
                let start = std::time::Instant::now();
                spin(ROUNDS);
                start.elapsed().as_nanos() as f64 / ROUNDS as f64
            })
            .fold(f64::MAX, f64::min)
    })
}
