//! A UDP service on 127.0.0.1 standing in for a remote one: answers every
//! datagram with its upper-cased copy and records what it received.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A running echo service. Dropping it stops it.
#[derive(Debug)]
pub struct UdpEcho {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl UdpEcho {
    pub async fn start() -> UdpEcho {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("binding the UDP echo service on 127.0.0.1");
        let addr = socket.local_addr().expect("UDP echo address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let recorded = received.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                recorded.lock().unwrap().push(buf[..n].to_vec());
                let _ = socket.send_to(&buf[..n].to_ascii_uppercase(), from).await;
            }
        });
        UdpEcho {
            addr,
            received,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every datagram received, in order.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}
