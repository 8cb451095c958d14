//! A small real program for remora's end-to-end tests and demo: each
//! subcommand prints one thing the process sees, using only the standard
//! library (so everything goes through glibc and the layer).
//!
//! ```text
//! remora-probe env NAME          value of an environment variable
//! remora-probe file PATH         contents of a file
//! remora-probe ls DIR            sorted entries of a directory
//! remora-probe resolve NAME      addresses NAME resolves to
//! remora-probe hostname          the hostname
//! remora-probe get HOST:PORT PATH  an HTTP/1.0 GET, printing the body
//! ```

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run(&args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("remora-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[&str]) -> Result<String, String> {
    match args {
        ["env", name] => std::env::var(name).map(|v| format!("{v}\n")).map_err(|e| format!("{name}: {e}")),
        ["file", path] => std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}")),
        ["ls", dir] => {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .map_err(|e| format!("{dir}: {e}"))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            Ok(names.iter().map(|n| format!("{n}\n")).collect())
        }
        ["resolve", name] => {
            let addrs = (*name, 0u16).to_socket_addrs().map_err(|e| format!("{name}: {e}"))?;
            let mut ips: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            ips.dedup();
            Ok(ips.iter().map(|ip| format!("{ip}\n")).collect())
        }
        ["hostname"] => hostname().map(|h| format!("{h}\n")),
        ["get", addr, path] => get(addr, path),
        _ => Err("usage: remora-probe env NAME | file PATH | ls DIR | resolve NAME | hostname | get HOST:PORT PATH".into()),
    }
}

fn hostname() -> Result<String, String> {
    // std has no gethostname(); /bin/hostname calls glibc's, which the layer
    // answers (and exercises exec'd children loading the layer too).
    let out = std::process::Command::new("hostname")
        .output()
        .map_err(|e| format!("hostname: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn get(addr: &str, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(format!("unexpected status: {status}"));
    }
    Ok(body.to_string())
}
