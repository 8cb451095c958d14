//! Kubernetes identity and access for the operator: the client's bearer
//! token is authenticated with a TokenReview, and each session authorised
//! with SubjectAccessReviews: `create` on `remorasessions.remora.dev` in the
//! target's namespace to have a session at all, and the custom verbs
//! `steal` and `mirror` on the same resource for each kind of incoming
//! traffic. The reviews are built and read by pure functions; the API calls
//! sit behind the [`Reviewer`] seam.

use crate::crd::GROUP;
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use remora_operator::access::{Access, Caller, Grant, Grants, Vouched};
use remora_operator::platform::ResolvedTarget;
use remora_protocol::Hello;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The resource sessions are authorised on.
pub const SESSION_RESOURCE: &str = "remorasessions";
/// Verb: have a session at all.
pub const VERB_CREATE: &str = "create";
/// Verb: steal incoming traffic.
pub const VERB_STEAL: &str = "steal";
/// Verb: mirror incoming traffic.
pub const VERB_MIRROR: &str = "mirror";

/// Who the API server says a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// User name (`jane@example.com`, `system:serviceaccount:ci:runner`).
    pub username: String,
    /// Its uid, when the authenticator gives one.
    pub uid: Option<String>,
    /// Its groups.
    pub groups: Vec<String>,
    /// Extra attributes, passed on to authorisation as they came.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The TokenReview asking who `token` belongs to.
pub fn token_review(token: &str) -> TokenReview {
    TokenReview {
        spec: TokenReviewSpec {
            token: token.to_owned(),
            audiences: None,
        },
        ..TokenReview::default()
    }
}

/// Read an answered TokenReview.
///
/// # Errors
/// The client's token was not accepted, with the API server's reason.
pub fn identity(review: &TokenReview) -> Result<Identity, String> {
    let status = review.status.as_ref();
    let authenticated = status.and_then(|s| s.authenticated).unwrap_or(false);
    let user = status.and_then(|s| s.user.as_ref());
    match (authenticated, user.and_then(|u| u.username.as_deref())) {
        (true, Some(username)) if !username.is_empty() => {
            let user = user.expect("matched above");
            Ok(Identity {
                username: username.to_owned(),
                uid: user.uid.clone(),
                groups: user.groups.clone().unwrap_or_default(),
                extra: user.extra.clone().unwrap_or_default(),
            })
        }
        _ => {
            let why = status
                .and_then(|s| s.error.as_deref())
                .filter(|e| !e.is_empty())
                .unwrap_or("not authenticated");
            Err(format!(
                "the cluster did not accept your token ({why}): remora sends your kubeconfig \
                 user's bearer token; check that `kubectl auth whoami` works"
            ))
        }
    }
}

/// The SubjectAccessReview asking whether `who` may `verb`
/// `remorasessions.remora.dev` in `namespace`.
pub fn access_review(who: &Identity, namespace: &str, verb: &str) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_owned()),
                verb: Some(verb.to_owned()),
                group: Some(GROUP.to_owned()),
                resource: Some(SESSION_RESOURCE.to_owned()),
                ..ResourceAttributes::default()
            }),
            user: Some(who.username.clone()),
            groups: (!who.groups.is_empty()).then(|| who.groups.clone()),
            uid: who.uid.clone(),
            extra: (!who.extra.is_empty()).then(|| who.extra.clone()),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    }
}

/// Read an answered SubjectAccessReview: allowed, or why not, naming the
/// missing permission.
pub fn decision(review: &SubjectAccessReview) -> Grant {
    let status = review.status.as_ref();
    if status.is_some_and(|s| s.allowed && !s.denied.unwrap_or(false)) {
        return Grant::Allowed;
    }
    let attrs = review.spec.resource_attributes.as_ref();
    let verb = attrs.and_then(|a| a.verb.as_deref()).unwrap_or("?");
    let namespace = attrs.and_then(|a| a.namespace.as_deref()).unwrap_or("?");
    let user = review.spec.user.as_deref().unwrap_or("?");
    let reason = status
        .and_then(|s| s.reason.as_deref())
        .filter(|r| !r.is_empty())
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    Grant::Denied(format!(
        "{user} may not {verb} {SESSION_RESOURCE}.{GROUP} in namespace {namespace}{reason}: \
         ask for a Role granting verb \"{verb}\" on resource \"{SESSION_RESOURCE}\" of \
         apiGroup \"{GROUP}\" there"
    ))
}

/// Admit a client the API server vouched for (the aggregated API's
/// front-proxy headers): the target its Hello names must be the one its
/// connect URL named, which is what the API server authorised.
///
/// # Errors
/// No user name, or the Hello names another target than the URL.
pub fn admit(hello: &Hello, who: &Vouched, default_namespace: &str) -> Result<Caller, String> {
    if who.username.is_empty() {
        return Err("the API server vouched for no user".to_owned());
    }
    let (namespace, name) =
        remora_kube::operator_api::route(hello.target.as_deref(), default_namespace);
    // A connection without a target lists and kills sessions: any
    // namespace's URL may carry it.
    let same = name == who.target && (hello.target.is_none() || namespace == who.namespace);
    if !same {
        return Err(format!(
            "the connection was opened for {RESOURCE}/{} in namespace {} but asks for {} in              namespace {namespace}",
            who.target,
            who.namespace,
            name,
            RESOURCE = remora_kube::operator_api::RESOURCE,
        ));
    }
    Ok(Caller {
        user: hello.client.user.clone(),
        identity: Some(who.username.clone()),
        groups: who.groups.clone(),
        extra: who.extra.clone(),
        grants: Grants::default(),
    })
}

/// The API calls the reviews need.
pub trait Reviewer: Send + Sync + std::fmt::Debug + 'static {
    /// Create a TokenReview; the answer carries its status.
    fn token_review(&self, review: TokenReview) -> BoxFuture<'static, Result<TokenReview, String>>;
    /// Create a SubjectAccessReview; the answer carries its status.
    fn subject_access_review(
        &self,
        review: SubjectAccessReview,
    ) -> BoxFuture<'static, Result<SubjectAccessReview, String>>;
}

/// [`Reviewer`] over the API server.
#[derive(Clone)]
pub struct ApiReviewer {
    /// The operator's client (its service account).
    pub client: kube::Client,
}

impl std::fmt::Debug for ApiReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiReviewer").finish_non_exhaustive()
    }
}

impl Reviewer for ApiReviewer {
    fn token_review(&self, review: TokenReview) -> BoxFuture<'static, Result<TokenReview, String>> {
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        Box::pin(async move {
            api.create(&kube::api::PostParams::default(), &review)
                .await
                .map_err(|e| {
                    format!(
                        "the operator cannot review tokens: {e} (its service account needs \
                         create on tokenreviews.authentication.k8s.io)"
                    )
                })
        })
    }

    fn subject_access_review(
        &self,
        review: SubjectAccessReview,
    ) -> BoxFuture<'static, Result<SubjectAccessReview, String>> {
        let api: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
        Box::pin(async move {
            api.create(&kube::api::PostParams::default(), &review)
                .await
                .map_err(|e| {
                    format!(
                        "the operator cannot review access: {e} (its service account needs \
                         create on subjectaccessreviews.authorization.k8s.io)"
                    )
                })
        })
    }
}

/// The operator's [`Access`] in Kubernetes mode.
#[derive(Debug, Clone)]
pub struct KubeAccess {
    /// Where the reviews go.
    pub reviewer: Arc<dyn Reviewer>,
    /// The default namespace of targets (sessions on a target named with
    /// its namespace are authorised in that one).
    pub namespace: String,
}

impl Access for KubeAccess {
    fn authenticate(&self, hello: &Hello) -> BoxFuture<'static, Result<Caller, String>> {
        let reviewer = self.reviewer.clone();
        let review = token_review(&hello.token.0);
        let user = hello.client.user.clone();
        Box::pin(async move {
            let who = identity(&reviewer.token_review(review).await?)?;
            Ok(Caller {
                user,
                identity: Some(who.username),
                groups: who.groups,
                extra: who.extra,
                grants: Grants::default(),
            })
        })
    }

    fn admit_vouched(
        &self,
        hello: &Hello,
        who: &Vouched,
    ) -> BoxFuture<'static, Result<Caller, String>> {
        let result = admit(hello, who, &self.namespace);
        Box::pin(async move { result })
    }

    fn authorize(
        &self,
        caller: &Caller,
        target: &ResolvedTarget,
    ) -> BoxFuture<'static, Result<Grants, String>> {
        let reviewer = self.reviewer.clone();
        // The target's own namespace (`namespace/<ns>/...`), else the default.
        let namespace = remora_kube::namespaced::split(&target.name)
            .0
            .unwrap_or(&self.namespace)
            .to_owned();
        let caller = caller.clone();
        Box::pin(async move {
            let username = caller.identity.clone().ok_or_else(|| {
                "no Kubernetes identity: the client was not authenticated".to_owned()
            })?;
            let who = Identity {
                username,
                groups: caller.groups.clone(),
                extra: caller.extra.clone(),
                ..Identity::default()
            };
            let ask = |verb: &str| {
                let review = access_review(&who, &namespace, verb);
                let reviewer = reviewer.clone();
                async move {
                    reviewer
                        .subject_access_review(review)
                        .await
                        .map(|r| decision(&r))
                }
            };
            let (create, steal, mirror) =
                futures::try_join!(ask(VERB_CREATE), ask(VERB_STEAL), ask(VERB_MIRROR))?;
            match create {
                Grant::Allowed => Ok(Grants { steal, mirror }),
                Grant::Denied(reason) => Err(reason),
            }
        })
    }
}

#[cfg(test)]
mod tests;
