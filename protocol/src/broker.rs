//! The local fast path ("fd broker"): on the local platform the agent shares
//! the developer's machine, so instead of proxying bytes it can hand the
//! layer a real descriptor opened or connected inside the target (a
//! read-only file, a connected TCP socket) with `SCM_RIGHTS` over a unix
//! socket.
//!
//! The link is layer ⇄ agent directly, one blocking connection per process:
//! [`BrokerHello`] first (the run's layer token, which the agent was started
//! with), then [`BrokerRequest`]s each answered by one [`BrokerReply`]; a
//! reply that carries a descriptor ([`BrokerReply::Opened`],
//! [`BrokerReply::Connected`]) has it attached to its first byte. Frames
//! are the usual length-prefixed bincode ([`crate::codec`]).
//!
//! Both ends always come from the same remora build (the CLI starts the
//! agent and sets the layer's environment in one run), so the link has a
//! version number but no capability negotiation. It is offered only when no
//! operator sits between the run and the agent: the operator's rules are
//! checked on its relay, which this link would bypass.

use crate::error::RemoteError;
use crate::handshake::SessionToken;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Version of the broker link; both ends must agree exactly.
pub const BROKER_VERSION: u32 = 2;

/// Environment variable giving the layer (and the intproxy) the broker's
/// unix socket path. Unset: no fast path.
pub const BROKER_PATH_ENV: &str = "REMORA_FD_BROKER";

/// Environment variable turning off the client's direct opens under the
/// broker's root ([`BrokerRequest::OpenRoot`]) when `0`, `off`, `false` or
/// `no`: every read-only open then asks the broker (to compare both, and
/// to rule them out when diagnosing).
pub const BROKER_DIRECT_ENV: &str = "REMORA_FD_BROKER_DIRECT";

/// Whether a switch variable's value turns its feature off (`0`, `off`,
/// `false`, `no`, around spaces): [`BROKER_DIRECT_ENV`] and the CLI's
/// `REMORA_LOCAL_FAST_PATH`.
pub fn turned_off(value: &str) -> bool {
    matches!(value.trim(), "0" | "off" | "false" | "no")
}

/// Environment variable carrying the token the agent's broker accepts (the
/// run's layer token), so it never shows in `ps`.
pub const BROKER_TOKEN_ENV: &str = "REMORA_FD_BROKER_TOKEN";

/// The broker's unix socket address for an endpoint as [`BROKER_PATH_ENV`]
/// carries it: `@NAME` is a name in the abstract namespace (what the CLI
/// picks: no file exists, so none is left behind whoever dies, and it is
/// gone with the agent's listener), anything else a socket file's path.
/// An abstract name belongs to the network namespace it was bound in: the
/// agent's own, which is the run's (a program moved into another one finds
/// no broker and takes the proxied path).
///
/// # Errors
/// The name or path does not fit a unix socket address.
pub fn socket_addr(endpoint: &std::path::Path) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    match abstract_name(endpoint) {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name),
        None => std::os::unix::net::SocketAddr::from_pathname(endpoint),
    }
    .map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "fd broker address {:?}: {e}",
                endpoint.as_os_str().as_bytes()
            ),
        )
    })
}

/// The abstract name of an `@NAME` endpoint ([`socket_addr`]).
pub fn abstract_name(endpoint: &std::path::Path) -> Option<&[u8]> {
    use std::os::unix::ffi::OsStrExt;
    endpoint.as_os_str().as_bytes().strip_prefix(b"@")
}

/// The first frame from the layer.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerHello {
    pub version: u32,
    pub token: SessionToken,
}

/// The agent's answer to [`BrokerHello`].
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerHelloReply {
    Accepted,
    Rejected { reason: String },
}

/// What the layer asks for.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerRequest {
    /// Open `path` read-only inside the target's mount namespace. Only a
    /// regular file is handed over; anything else is [`BrokerReply::NotRegular`].
    OpenRead { path: String, nofollow: bool },
    /// Connect a TCP socket to `remote` from inside the target's network
    /// namespace and hand it over connected.
    ConnectTcp {
        #[serde(with = "crate::net::wire_addr")]
        remote: SocketAddr,
    },
    /// Hand over the root directory the broker opens files under (the
    /// target's, as the broker's thread sees it after entering the target's
    /// mount namespace), as an `O_PATH` descriptor ([`BrokerReply::Opened`]).
    /// The client then opens files under it itself, with `openat2` and
    /// `RESOLVE_IN_ROOT`, and asks [`BrokerRequest::OpenRead`] only when
    /// that cannot give the broker's answer (since version 2).
    OpenRoot,
}

/// The agent's answer to one [`BrokerRequest`].
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerReply {
    /// The file's (or, for [`BrokerRequest::OpenRoot`], the root's) descriptor is attached.
    Opened,
    /// The path exists but is not a regular file (a directory, a FIFO, a
    /// device): the layer takes the proxied path for it.
    NotRegular,
    /// The connected socket is attached; `local` is its address in the target.
    Connected {
        #[serde(with = "crate::net::wire_addr")]
        local: SocketAddr,
    },
    /// The operation failed in the target (the errno the program sees).
    Failed(RemoteError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn switch_values_that_turn_a_feature_off() {
        for off in ["0", "off", "false", "no", " off\n"] {
            assert!(turned_off(off), "{off:?}");
        }
        for on in ["", "1", "on", "yes", "Off"] {
            assert!(!turned_off(on), "{on:?}");
        }
    }

    proptest! {
        #[test]
        fn broker_messages_roundtrip(
            hello in any::<BrokerHello>(),
            hello_reply in any::<BrokerHelloReply>(),
            request in any::<BrokerRequest>(),
            reply in any::<BrokerReply>(),
        ) {
            let back: BrokerHello = crate::codec::decode(&crate::codec::encode(&hello).unwrap()).unwrap();
            prop_assert_eq!(back, hello);
            let back: BrokerHelloReply = crate::codec::decode(&crate::codec::encode(&hello_reply).unwrap()).unwrap();
            prop_assert_eq!(back, hello_reply);
            let back: BrokerRequest = crate::codec::decode(&crate::codec::encode(&request).unwrap()).unwrap();
            prop_assert_eq!(back, request);
            let back: BrokerReply = crate::codec::decode(&crate::codec::encode(&reply).unwrap()).unwrap();
            prop_assert_eq!(back, reply);
        }
    }
}
