//! Who a client is and what it may do: the [`Access`] seam, and the
//! [`SessionObserver`] seam through which the session table is mirrored
//! elsewhere (as `RemoraSession` objects in a cluster).
//!
//! The local platform uses [`TokenAccess`] (the operator's shared token);
//! the Kubernetes mode (crate `remora-operator-kube`) authenticates the
//! client's bearer token with a TokenReview and authorises it with
//! SubjectAccessReviews.

use crate::platform::ResolvedTarget;
use futures::future::BoxFuture;
use remora_protocol::session::SessionInfo;
use remora_protocol::{Hello, SessionToken};
use std::collections::BTreeMap;

/// A client identity vouched for by whoever carried the connection to the
/// operator (the API server's front proxy, for the aggregated API: it
/// authenticated the user), with what the connection was opened for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Vouched {
    /// The user name.
    pub username: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// Its extra attributes.
    pub extra: BTreeMap<String, Vec<String>>,
    /// The namespace the connection was opened in (its URL's).
    pub namespace: String,
    /// The target name the connection was opened for (its URL's), which the
    /// client's Hello must name.
    pub target: String,
}

/// Whether one kind of access is granted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Grant {
    /// Yes.
    #[default]
    Allowed,
    /// No, and why (naming the missing permission).
    Denied(String),
}

/// What an admitted session may do beyond existing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grants {
    /// Stealing incoming traffic.
    pub steal: Grant,
    /// Mirroring incoming traffic.
    pub mirror: Grant,
}

/// An admitted client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The display name (`REMORA_USER`): informative only.
    pub user: String,
    /// Who the platform says the client is (a Kubernetes user name), when
    /// it vouches for one.
    pub identity: Option<String>,
    /// The groups the platform puts that identity in.
    pub groups: Vec<String>,
    /// The identity's extra attributes (passed on to authorisation as they
    /// came).
    pub extra: BTreeMap<String, Vec<String>>,
    /// What the session may do.
    pub grants: Grants,
}

/// Decides who may connect, in two steps: who the client is (before
/// anything else is looked at), then whether it may have a session on a
/// target.
pub trait Access: Send + Sync + std::fmt::Debug + 'static {
    /// Authenticate `hello`; the caller's grants are filled in by
    /// [`Access::authorize`].
    ///
    /// # Errors
    /// The refusal, as the client will print it.
    fn authenticate(&self, hello: &Hello) -> BoxFuture<'static, Result<Caller, String>>;

    /// May `caller` have a session on `target`, and steal or mirror there?
    ///
    /// # Errors
    /// The refusal, naming the missing permission.
    fn authorize(
        &self,
        caller: &Caller,
        target: &ResolvedTarget,
    ) -> BoxFuture<'static, Result<Grants, String>>;

    /// Admit a client whose identity the carrier of its connection vouches
    /// for ([`Vouched`]) instead of authenticating `hello`'s token; the
    /// caller's grants are filled in by [`Access::authorize`]. By default
    /// refused: only an access that trusts such a carrier admits them.
    ///
    /// # Errors
    /// The refusal, as the client will print it.
    fn admit_vouched(
        &self,
        _hello: &Hello,
        _who: &Vouched,
    ) -> BoxFuture<'static, Result<Caller, String>> {
        Box::pin(async {
            Err("this operator takes no identity from the connection's carrier".to_owned())
        })
    }
}

/// The local platform's access: everyone holding the operator's token may
/// do everything.
#[derive(Debug, Clone)]
pub struct TokenAccess {
    /// What clients must present.
    pub token: SessionToken,
}

impl Access for TokenAccess {
    fn authenticate(&self, hello: &Hello) -> BoxFuture<'static, Result<Caller, String>> {
        let result = if hello.token.matches(&self.token) {
            Ok(Caller {
                user: hello.client.user.clone(),
                identity: None,
                groups: Vec::new(),
                extra: BTreeMap::new(),
                grants: Grants::default(),
            })
        } else {
            Err(
                "invalid operator token: set REMORA_OPERATOR_TOKEN to the operator's token \
                 (see its --token-file)"
                    .to_owned(),
            )
        };
        Box::pin(async move { result })
    }

    fn authorize(
        &self,
        _: &Caller,
        _: &ResolvedTarget,
    ) -> BoxFuture<'static, Result<Grants, String>> {
        Box::pin(async { Ok(Grants::default()) })
    }
}

/// A session as mirrored outside the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// What `remora session ls` shows.
    pub info: SessionInfo,
    /// The platform's identity of its user.
    pub identity: Option<String>,
}

/// Told the whole session table every time it changes (a session starts or
/// ends, a subscription is granted or given up), so an implementation can
/// reconcile idempotently. Called with the table's lock released; must not
/// block (hand the list to a task).
pub trait SessionObserver: Send + Sync + std::fmt::Debug + 'static {
    /// The sessions now, oldest first.
    fn sessions_changed(&self, sessions: Vec<SessionRecord>);
}
