//! Name resolution as the target resolves names: `getaddrinfo`,
//! `freeaddrinfo`, `gethostbyname`, `gethostname`; raw queries (`res_*`)
//! and `getaddrinfo_a` ([`query`]).
//!
//! Addresses learnt from remote lookups are remembered (bounded) so outgoing
//! filters written with host names can match the IPs the app connects to.

pub mod hooks;
pub mod hostent;
pub mod ops;
pub mod query;

use crate::sync::ForkMutex;
use std::collections::HashMap;
use std::net::IpAddr;

/// Upper bound of remembered address → name pairs.
const HOSTNAME_CACHE_CAP: usize = 4096;

pub(crate) static HOSTNAMES: ForkMutex<Option<HashMap<IpAddr, String>>> = ForkMutex::new(None);

/// Remember that `ip` came from resolving `name`.
pub fn remember(ip: IpAddr, name: &str) {
    let mut cache = HOSTNAMES.lock();
    let map = cache.get_or_insert_with(HashMap::new);
    if map.len() >= HOSTNAME_CACHE_CAP {
        map.clear();
    }
    map.insert(ip, name.to_string());
}

/// The name `ip` was resolved from, if the layer resolved it.
pub fn hostname_for(ip: IpAddr) -> Option<String> {
    HOSTNAMES.lock().as_ref()?.get(&ip).cloned()
}
