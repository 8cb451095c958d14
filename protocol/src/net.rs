//! Addresses, typed by which side of the tunnel they belong to.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// An address as seen from inside the target (its network namespace or pod).
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RemoteAddr {
    /// An IP socket address in the target's network namespace.
    Ip(#[serde(with = "crate::net::wire_addr")] SocketAddr),
    /// A unix stream socket path inside the target's filesystem.
    Unix(String),
}

impl std::fmt::Display for RemoteAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteAddr::Ip(addr) => write!(f, "{addr}"),
            RemoteAddr::Unix(path) => write!(f, "unix:{path}"),
        }
    }
}

/// An address on the developer's machine (the user process's side).
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LocalAddr(#[serde(with = "crate::net::wire_addr")] pub SocketAddr);

impl std::fmt::Display for LocalAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Transport protocol of an outgoing or incoming stream.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Transport {
    Tcp,
    Udp,
}

/// serde for `SocketAddr` that keeps IPv6 `flowinfo` and `scope_id` (serde's
/// own impl drops them, which breaks link-local addresses like `fe80::1%eth0`).
pub mod wire_addr {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

    #[derive(Serialize, Deserialize)]
    enum Wire {
        V4([u8; 4], u16),
        V6([u8; 16], u16, u32, u32),
    }

    impl From<&SocketAddr> for Wire {
        fn from(addr: &SocketAddr) -> Self {
            match addr {
                SocketAddr::V4(a) => Wire::V4(a.ip().octets(), a.port()),
                SocketAddr::V6(a) => {
                    Wire::V6(a.ip().octets(), a.port(), a.flowinfo(), a.scope_id())
                }
            }
        }
    }

    impl From<Wire> for SocketAddr {
        fn from(w: Wire) -> Self {
            match w {
                Wire::V4(ip, port) => SocketAddrV4::new(Ipv4Addr::from(ip), port).into(),
                Wire::V6(ip, port, flow, scope) => {
                    SocketAddrV6::new(Ipv6Addr::from(ip), port, flow, scope).into()
                }
            }
        }
    }

    pub fn serialize<S: Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        Wire::from(addr).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        Wire::deserialize(d).map(SocketAddr::from)
    }

    /// The same for `Option<SocketAddr>`.
    pub mod option {
        use super::Wire;
        use serde::{Deserialize, Deserializer, Serialize, Serializer};
        use std::net::SocketAddr;

        pub fn serialize<S: Serializer>(
            addr: &Option<SocketAddr>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            addr.as_ref().map(Wire::from).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SocketAddr>, D::Error> {
            Ok(Option::<Wire>::deserialize(d)?.map(SocketAddr::from))
        }
    }
}
