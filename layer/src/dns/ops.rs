//! Safe logic of the DNS hooks.

use crate::error::{HookError, HookResult};
use crate::{session, state};
use remora_config::Route;
use remora_protocol::dns::{AddrFamily, LookupReply, LookupRequest, SockType};
use remora_protocol::{ErrorCode, Request, Response};
use std::net::IpAddr;
use std::sync::OnceLock;

/// A lookup the layer answers remotely.
#[derive(Debug)]
pub struct Query {
    pub name: String,
    pub family: AddrFamily,
    pub socktype: SockType,
    pub flags: i32,
}

/// Whether `name` resolves in the target; bypass for IP literals and local names.
pub fn should_resolve_remotely(name: &str) -> HookResult<()> {
    let state = state::get().ok_or(HookError::Bypass("layer inactive"))?;
    if name.is_empty() || name.parse::<IpAddr>().is_ok() {
        return Err(HookError::Bypass("numeric or empty host"));
    }
    match state.policies.dns.decide(name) {
        Route::Local => Err(HookError::Bypass("dns filter says local")),
        Route::Remote => Ok(()),
    }
}

/// Resolve remotely and remember the answers for outgoing filters.
pub fn lookup(query: Query) -> HookResult<LookupReply> {
    let request = Request::Lookup(LookupRequest {
        name: query.name.clone(),
        family: query.family,
        socktype: query.socktype,
        flags: query.flags,
    });
    match session::remote(request)? {
        Response::Lookup(reply) => {
            for ip in &reply.addresses {
                super::remember(*ip, &query.name);
            }
            Ok(reply)
        }
        other => Err(session::protocol_violation(&other)),
    }
}

/// `getaddrinfo`'s `EAI_*` code for a failure.
pub fn eai_of(err: &HookError) -> i32 {
    match err {
        HookError::Remote(r) => match r.code {
            ErrorCode::NameNotResolved | ErrorCode::NotFound => libc::EAI_NONAME,
            ErrorCode::TemporaryNameFailure | ErrorCode::TimedOut => libc::EAI_AGAIN,
            _ => libc::EAI_FAIL,
        },
        _ => libc::EAI_FAIL,
    }
}

static HOSTNAME: OnceLock<String> = OnceLock::new();

/// The target's hostname (asked once per process).
pub fn hostname() -> HookResult<&'static str> {
    state::get().ok_or(HookError::Bypass("layer inactive"))?;
    if let Some(h) = HOSTNAME.get() {
        return Ok(h);
    }
    match session::remote(Request::Hostname)? {
        Response::Hostname(h) => Ok(HOSTNAME.get_or_init(|| h)),
        other => Err(session::protocol_violation(&other)),
    }
}
