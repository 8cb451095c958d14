//! Name resolution as the target resolves names.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Address family filter of a lookup.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AddrFamily {
    Any,
    V4,
    V6,
}

/// Socket type hint of a lookup (kept so the remote side may honour SRV-like
/// behaviour later; addresses do not depend on it today).
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SockType {
    Any,
    Stream,
    Datagram,
}

/// `getaddrinfo`-style forward lookup.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupRequest {
    pub name: String,
    pub family: AddrFamily,
    pub socktype: SockType,
    /// `AI_*` flags as given by the application (informational).
    pub flags: i32,
}

/// Result of a forward lookup: addresses in the order the target's resolver
/// returned them.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupReply {
    pub canonical_name: Option<String>,
    pub addresses: Vec<IpAddr>,
}

/// `getnameinfo`/`gethostbyaddr`-style reverse lookup.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReverseRequest {
    pub address: IpAddr,
}

/// Names for an address; the first is the primary name.
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReverseReply {
    pub names: Vec<String>,
}

/// A raw DNS query (`res_query`/`res_search`): the target's nameservers are
/// asked for `name`'s records of `class`/`rtype`, with its search list when
/// `search` is set. Protocol v4, [`crate::Capabilities::DNS_QUERY`].
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsQueryRequest {
    pub name: String,
    pub class: u16,
    pub rtype: u16,
    pub search: bool,
}

/// The answer to a [`DnsQueryRequest`]: the nameserver's reply message as
/// received (its header carries the response code).
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsAnswer {
    #[cfg_attr(test, proptest(strategy = "crate::tests::bytes()"))]
    pub message: bytes::Bytes,
}
