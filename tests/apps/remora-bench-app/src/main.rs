//! A small real program for remora's benchmarks (`remora-bench`): each subcommand
//! times its own loop and prints one machine-readable line of `key=value` pairs, so
//! the cost of starting `remora run` (or `nsenter`) never counts. It uses only the
//! standard library, so every call goes through glibc, and through the layer when
//! `remora run` preloads it.
//!
//! ```text
//! remora-bench-app files-local N            open+read 4 KiB+close of a /tmp file and a stat under /usr/lib
//! remora-bench-app sock-local N             connect+close to its own unix listener under /tmp
//! remora-bench-app read-file PATH N         std::fs::read of the whole of PATH
//! remora-bench-app read-bytes PATH N        open PATH and read it one byte per read(2)
//! remora-bench-app serve PORT               TCP server on 0.0.0.0:PORT: 'E' echo, 'S' sink
//! remora-bench-app tcp-rr HOST:PORT N       1-byte request/response round trips on one connection
//! remora-bench-app tcp-stream HOST:PORT MB  send MB MiB on one connection, read back the count
//! remora-bench-app http-serve ADDR BODY [WORK_US]
//!                                           HTTP/1.1 keep-alive server answering 200 BODY (for wrk),
//!                                           spending WORK_US of CPU per request (default 0)
//! remora-bench-app h2-serve ADDR NAME       HTTP/1.1 + HTTP/2 (h2c) server answering
//!                                           "NAME VERSION METHOD PATH BODY-LENGTH\n"
//! remora-bench-app h2-mixed ADDR N HEADER   N concurrent GETs on one h2c connection, even ones
//!                                           with HEADER; prints "STATUS BODY" per request
//! ```
//!
//! Output: `ns_per_op=1234.5 ops=N`, plus `cpu_ns_per_op=987.6` (the timed loop's CPU
//! time per op, user and system) where the kernel reports it, and `mib_per_s=456.7
//! bytes=B` when bytes moved.

mod files;
mod h2;
mod http;
mod local;
mod report;
mod tcp;

use std::process::ExitCode;
use std::str::FromStr;

const USAGE: &str = "usage: remora-bench-app files-local N | sock-local N | read-file PATH N | read-bytes PATH N \
                     | serve PORT | tcp-rr HOST:PORT N | tcp-stream HOST:PORT MB \
                     | http-serve ADDR BODY [WORK_US] | h2-serve ADDR NAME \
                     | h2-mixed ADDR N HEADER";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("remora-bench-app: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[&str]) -> Result<String, String> {
    let report = match *args {
        ["files-local", n] => local::files(count(n)?)?,
        ["sock-local", n] => local::sockets(count(n)?)?,
        ["read-file", path, n] => files::read_whole(path, count(n)?)?,
        ["read-bytes", path, n] => files::read_bytes(path, count(n)?)?,
        ["serve", port] => return tcp::serve(number("PORT", port)?).map(|()| String::new()),
        ["tcp-rr", addr, n] => tcp::request_response(addr, count(n)?)?,
        ["tcp-stream", addr, mb] => tcp::stream(addr, count(mb)?)?,
        ["http-serve", addr, body] => return http::serve(addr, body, 0).map(|()| String::new()),
        ["http-serve", addr, body, work] => {
            let work = number("WORK_US", work)?;
            return http::serve(addr, body, work).map(|()| String::new());
        }
        ["h2-serve", addr, name] => return h2::serve(addr, name).map(|()| String::new()),
        ["h2-mixed", addr, n, header] => return h2::mixed(addr, count(n)?, header),
        _ => return Err(USAGE.into()),
    };
    Ok(report.to_string())
}

/// A loop count: at least 1, so every report divides by something.
fn count(text: &str) -> Result<u64, String> {
    match number("N", text)? {
        0 => Err("N must be at least 1".into()),
        n => Ok(n),
    }
}

fn number<T: FromStr>(what: &str, text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|e| format!("{what} {text:?} is not a valid number: {e} ({USAGE})"))
}
