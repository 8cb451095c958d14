//! The exchanges are checked against the JSON of the Kubernetes reference
//! (the examples of "Webhook Token Authentication" and "Webhook Mode" in
//! the Kubernetes documentation, authentication.k8s.io/v1 and
//! authorization.k8s.io/v1): what we send serializes to their request
//! shape, and their answers read as expected.

use super::*;
use remora_operator::access::{Access, Grant};
use remora_protocol::{Capabilities, ClientIdentity, PROTOCOL_VERSION, SessionToken};
use serde_json::json;
use std::sync::Mutex;

#[test]
fn token_review_request_is_the_reference_shape() {
    let sent = serde_json::to_value(token_review("014fbff9a07c...")).unwrap();
    assert_eq!(
        sent,
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {},
            "spec": {"token": "014fbff9a07c..."}
        })
    );
}

#[test]
fn an_authenticated_reference_answer_gives_the_identity() {
    let answer: TokenReview = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "status": {
            "authenticated": true,
            "user": {
                "username": "janedoe@example.com",
                "uid": "42",
                "groups": ["developers", "qa"],
                "extra": {"extrafield1": ["extravalue1", "extravalue2"]}
            },
            "audiences": ["https://myserver.example.com", "https://myserver.internal.example.com"]
        }
    }))
    .unwrap();
    let who = identity(&answer).unwrap();
    assert_eq!(who.username, "janedoe@example.com");
    assert_eq!(who.uid.as_deref(), Some("42"));
    assert_eq!(who.groups, ["developers", "qa"]);
    assert_eq!(who.extra["extrafield1"], ["extravalue1", "extravalue2"]);
}

#[test]
fn a_refused_reference_answer_says_why() {
    let answer: TokenReview = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "status": {"authenticated": false, "error": "Credentials are expired"}
    }))
    .unwrap();
    let err = identity(&answer).unwrap_err();
    assert!(err.contains("Credentials are expired"), "{err}");
    assert!(err.contains("kubectl auth whoami"), "{err}");
    // No status at all (an API server that did not answer the review).
    assert!(identity(&token_review("x")).is_err());
}

#[test]
fn access_review_request_is_the_reference_shape() {
    let who = Identity {
        username: "jane".into(),
        groups: vec!["group1".into(), "group2".into()],
        ..Identity::default()
    };
    let sent = serde_json::to_value(access_review(&who, "kittensandponies", "steal")).unwrap();
    assert_eq!(
        sent,
        json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "metadata": {},
            "spec": {
                "resourceAttributes": {
                    "namespace": "kittensandponies",
                    "verb": "steal",
                    "group": "remora.dev",
                    "resource": "remorasessions"
                },
                "user": "jane",
                "groups": ["group1", "group2"]
            }
        })
    );
}

fn answered(status: serde_json::Value) -> SubjectAccessReview {
    let who = Identity {
        username: "jane".into(),
        ..Identity::default()
    };
    let mut review = access_review(&who, "shop", "mirror");
    review.status = Some(serde_json::from_value(status).unwrap());
    review
}

#[test]
fn reference_access_answers_read_as_allowed_or_denied_with_the_permission() {
    assert_eq!(
        decision(&answered(json!({"allowed": true}))),
        Grant::Allowed
    );
    let Grant::Denied(reason) = decision(&answered(json!({
        "allowed": false,
        "reason": "user does not have read access to the namespace"
    }))) else {
        panic!("allowed");
    };
    assert_eq!(
        reason,
        "jane may not mirror remorasessions.remora.dev in namespace shop (user does not have \
         read access to the namespace): ask for a Role granting verb \"mirror\" on resource \
         \"remorasessions\" of apiGroup \"remora.dev\" there"
    );
    // `denied` wins, even next to `allowed` (an authorizer chain's explicit no).
    let explicit = answered(json!({"allowed": true, "denied": true, "reason": "no"}));
    assert!(matches!(decision(&explicit), Grant::Denied(_)));
    // No status: not allowed.
    let mut none = answered(json!({"allowed": true}));
    none.status = None;
    assert!(matches!(decision(&none), Grant::Denied(_)));
}

/// Answers reviews from a table: tokens to identities, (user, verb) to no.
#[derive(Debug, Default)]
struct FakeReviewer {
    tokens: BTreeMap<String, (String, Vec<String>)>,
    denied: Vec<(String, String)>,
    asked: Mutex<Vec<SubjectAccessReview>>,
}

impl Reviewer for FakeReviewer {
    fn token_review(
        &self,
        mut review: TokenReview,
    ) -> BoxFuture<'static, Result<TokenReview, String>> {
        let token = review.spec.token.clone();
        let status = match self.tokens.get(&token) {
            Some((user, groups)) => json!({"authenticated": true,
                "user": {"username": user, "groups": groups}}),
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        review.status = Some(serde_json::from_value(status).unwrap());
        Box::pin(async move { Ok(review) })
    }

    fn subject_access_review(
        &self,
        mut review: SubjectAccessReview,
    ) -> BoxFuture<'static, Result<SubjectAccessReview, String>> {
        let user = review.spec.user.clone().unwrap_or_default();
        let verb = review
            .spec
            .resource_attributes
            .as_ref()
            .and_then(|a| a.verb.clone())
            .unwrap_or_default();
        let denied = self.denied.contains(&(user, verb));
        review.status = Some(
            serde_json::from_value(json!({"allowed": !denied,
                "reason": if denied { "RBAC: no rule" } else { "" }}))
            .unwrap(),
        );
        self.asked.lock().unwrap().push(review.clone());
        Box::pin(async move { Ok(review) })
    }
}

fn hello(token: &str, user: &str) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        capabilities: Capabilities::default(),
        token: SessionToken(token.into()),
        client: ClientIdentity {
            user: user.into(),
            program: "test".into(),
            pid: 1,
            hostname: "h".into(),
            remora_version: "0.1.0".into(),
        },
        target: Some("deployment/api".into()),
    }
}

#[tokio::test]
async fn sessions_are_authorised_with_create_steal_and_mirror_separately() {
    let reviewer = Arc::new(FakeReviewer {
        tokens: BTreeMap::from([
            ("t-alice".into(), ("alice".into(), vec!["dev".into()])),
            ("t-bob".into(), ("bob".into(), vec![])),
            ("t-eve".into(), ("eve".into(), vec![])),
        ]),
        denied: vec![
            ("bob".into(), "steal".into()),
            ("eve".into(), "create".into()),
        ],
        ..FakeReviewer::default()
    });
    let access = KubeAccess {
        reviewer: reviewer.clone(),
        namespace: "shop".into(),
    };
    let target = ResolvedTarget {
        name: "deployment/api".into(),
    };

    // REMORA_USER stays a display name; the identity is the cluster's.
    let alice = access
        .authenticate(&hello("t-alice", "Alice A."))
        .await
        .unwrap();
    assert_eq!(alice.user, "Alice A.");
    assert_eq!(alice.identity.as_deref(), Some("alice"));
    let grants = access.authorize(&alice, &target).await.unwrap();
    assert_eq!(grants.steal, Grant::Allowed);
    assert_eq!(grants.mirror, Grant::Allowed);
    {
        let asked = reviewer.asked.lock().unwrap();
        let mut verbs: Vec<_> = asked
            .iter()
            .map(|r| {
                let a = r.spec.resource_attributes.as_ref().unwrap();
                assert_eq!(a.namespace.as_deref(), Some("shop"));
                assert_eq!(r.spec.groups.as_deref(), Some(&["dev".to_owned()][..]));
                a.verb.clone().unwrap()
            })
            .collect();
        verbs.sort();
        assert_eq!(verbs, ["create", "mirror", "steal"]);
    }

    let bob = access.authenticate(&hello("t-bob", "bob")).await.unwrap();
    let grants = access.authorize(&bob, &target).await.unwrap();
    assert_eq!(grants.mirror, Grant::Allowed);
    let Grant::Denied(why) = grants.steal else {
        panic!("bob may steal")
    };
    assert!(why.contains("bob may not steal remorasessions.remora.dev in namespace shop"));

    let eve = access.authenticate(&hello("t-eve", "eve")).await.unwrap();
    let refused = access.authorize(&eve, &target).await.unwrap_err();
    assert!(
        refused.contains("eve may not create remorasessions.remora.dev in namespace shop"),
        "{refused}"
    );

    let stranger = access
        .authenticate(&hello("wrong", "mallory"))
        .await
        .unwrap_err();
    assert!(stranger.contains("invalid bearer token"), "{stranger}");
}
