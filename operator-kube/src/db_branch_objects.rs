//! The database-branch registry as `RemoraDbBranch` objects in the
//! operator's namespace ([`crate::crd::db_branch`]), so that a restarted
//! operator (a new pod, with no state of its predecessor's) lists the
//! branches and drops them at their TTL: the operator's
//! [`BranchStore`].
//!
//! Each object shows what `remora db ls` shows (`kubectl get
//! remoradbbranches -n remora`); what may not be shown (the credentials the
//! branch is dropped with, the session's rewritten variables) is in an
//! immutable Secret of the same name, owned by the object, so the garbage
//! collector deletes it with the object. The operator creates and reads
//! those Secrets only: no list, update or delete of Secrets.

use crate::crd::db_branch::{DbBranchMode, DbBranchType, RemoraDbBranch, RemoraDbBranchSpec};
use crate::session_objects::MANAGED_BY;
use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use remora_operator::branches::store::{BranchRecord, BranchSecret, BranchStore, StoredBranch};
use remora_protocol::db::{BranchInfo, CopyMode, DbKind};
use std::collections::BTreeMap;

/// The Secret's key holding the [`BranchSecret`] (JSON).
pub const SECRET_KEY: &str = "branch.json";

/// The operator's [`BranchStore`] on Kubernetes.
#[derive(Clone)]
pub struct DbBranchObjects {
    objects: Api<RemoraDbBranch>,
    secrets: Api<Secret>,
}

impl std::fmt::Debug for DbBranchObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbBranchObjects").finish_non_exhaustive()
    }
}

impl DbBranchObjects {
    /// The objects in `namespace` (the operator's own).
    pub fn new(client: kube::Client, namespace: &str) -> DbBranchObjects {
        DbBranchObjects {
            objects: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client, namespace),
        }
    }
}

fn rfc3339(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string()
}

fn unix(text: &str) -> Result<u64, String> {
    let t: Timestamp = text
        .parse()
        .map_err(|e| format!("bad timestamp {text:?}: {e}"))?;
    u64::try_from(t.as_second()).map_err(|_| format!("timestamp before 1970: {text:?}"))
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())])
}

/// The object for an entry (pure).
pub fn object(key: &str, record: &BranchRecord) -> RemoraDbBranch {
    let info = &record.info;
    let mut object = RemoraDbBranch::new(
        key,
        RemoraDbBranchSpec {
            id: info.id.clone(),
            type_: match info.kind {
                DbKind::Postgres => DbBranchType::Postgres,
                DbKind::Mysql => DbBranchType::Mysql,
            },
            source: info.source.clone(),
            branch: info.branch.clone(),
            mode: match info.mode {
                CopyMode::Empty => DbBranchMode::Empty,
                CopyMode::Schema => DbBranchMode::Schema,
                CopyMode::All => DbBranchMode::All,
            },
            owner: info.owner.clone(),
            target: info.target.clone(),
            server: record.server.clone(),
            created_at: rfc3339(info.created_at),
            expires_at: rfc3339(info.expires_at),
            method: info.method.clone(),
            golden: record.golden,
            ready: record.ready,
            dir: record
                .dir
                .as_ref()
                .map(|d| d.to_string_lossy().into_owned()),
            pod: record.pod.clone(),
        },
    );
    object.metadata.labels = Some(labels());
    object
}

/// The record an object holds (pure).
///
/// # Errors
/// A timestamp that does not parse.
pub fn record(object: &RemoraDbBranch) -> Result<BranchRecord, String> {
    let spec = &object.spec;
    Ok(BranchRecord {
        info: BranchInfo {
            id: spec.id.clone(),
            kind: match spec.type_ {
                DbBranchType::Postgres => DbKind::Postgres,
                DbBranchType::Mysql => DbKind::Mysql,
            },
            source: spec.source.clone(),
            branch: spec.branch.clone(),
            mode: match spec.mode {
                DbBranchMode::Empty => CopyMode::Empty,
                DbBranchMode::Schema => CopyMode::Schema,
                DbBranchMode::All => CopyMode::All,
            },
            owner: spec.owner.clone(),
            target: spec.target.clone(),
            created_at: unix(&spec.created_at)?,
            expires_at: unix(&spec.expires_at)?,
            method: spec.method.clone(),
        },
        golden: spec.golden,
        ready: spec.ready,
        dir: spec.dir.as_ref().map(std::path::PathBuf::from),
        pod: spec.pod.clone(),
        server: spec.server.clone(),
    })
}

/// The Secret of an entry, owned by its object (pure).
///
/// # Panics
/// Never: the secret always serializes.
pub fn secret(key: &str, owner: &RemoraDbBranch, secret: &BranchSecret) -> Secret {
    let json = serde_json::to_vec(secret).expect("a BranchSecret serializes");
    Secret {
        metadata: ObjectMeta {
            name: Some(key.to_owned()),
            labels: Some(labels()),
            owner_references: Some(vec![OwnerReference {
                api_version: RemoraDbBranch::api_version(&()).into_owned(),
                kind: RemoraDbBranch::kind(&()).into_owned(),
                name: key.to_owned(),
                uid: owner.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        },
        immutable: Some(true),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(SECRET_KEY.to_owned(), ByteString(json))])),
        ..Secret::default()
    }
}

fn is(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl DbBranchObjects {
    async fn load_all(&self) -> Result<Vec<StoredBranch>, String> {
        let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
        let list = self
            .objects
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| {
                format!(
                    "cannot list RemoraDbBranch objects: {e} (are the CRDs installed? \
                     `remora operator manifests | kubectl apply -f -`)"
                )
            })?;
        let mut out = Vec::new();
        for object in list.items {
            let Some(key) = object.metadata.name.clone() else {
                continue;
            };
            let record = record(&object).map_err(|e| format!("RemoraDbBranch {key}: {e}"))?;
            let secret = match self.secrets.get(&key).await {
                Ok(secret) => secret,
                Err(e) if is(&e, 404) => {
                    // Made between the object and its Secret by an operator
                    // that stopped there: nothing to drop the branch with.
                    tracing::warn!(
                        %key,
                        branch = %record.info.branch,
                        server = %record.server,
                        "a RemoraDbBranch without its Secret: the branch cannot be dropped \
                         (drop it by hand); forgetting it"
                    );
                    let _ = self.objects.delete(&key, &DeleteParams::default()).await;
                    continue;
                }
                Err(e) => return Err(format!("cannot read the Secret {key}: {e}")),
            };
            let data = secret
                .data
                .as_ref()
                .and_then(|d| d.get(SECRET_KEY))
                .ok_or_else(|| format!("the Secret {key} has no {SECRET_KEY}"))?;
            let secret: BranchSecret = serde_json::from_slice(&data.0)
                .map_err(|e| format!("the Secret {key}: {SECRET_KEY}: {e}"))?;
            out.push(StoredBranch {
                key,
                record,
                secret,
            });
        }
        Ok(out)
    }

    async fn put_one(&self, branch: StoredBranch, new: bool) -> Result<(), String> {
        let key = branch.key.clone();
        let wanted = object(&key, &branch.record);
        let api = |e: kube::Error| format!("RemoraDbBranch {key}: {e}");
        let patch = || async {
            let spec = serde_json::json!({ "spec": wanted.spec });
            self.objects
                .patch(&key, &PatchParams::default(), &Patch::Merge(&spec))
                .await
        };
        if !new {
            patch().await.map_err(api)?;
            return Ok(());
        }
        let made = match self.objects.create(&PostParams::default(), &wanted).await {
            Ok(made) => made,
            // Stored before, but not its Secret (that failed): the same key.
            Err(e) if is(&e, 409) => patch().await.map_err(api)?,
            Err(e) => return Err(api(e)),
        };
        match self
            .secrets
            .create(&PostParams::default(), &secret(&key, &made, &branch.secret))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is(&e, 409) => Ok(()),
            Err(e) => Err(format!("the Secret {key}: {e}")),
        }
    }

    async fn remove_one(&self, key: String) -> Result<(), String> {
        match self.objects.delete(&key, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if is(&e, 404) => Ok(()),
            Err(e) => Err(format!("RemoraDbBranch {key}: {e}")),
        }
    }
}

impl BranchStore for DbBranchObjects {
    fn load(&self) -> BoxFuture<'static, Result<Vec<StoredBranch>, String>> {
        let this = self.clone();
        Box::pin(async move { this.load_all().await })
    }

    fn put(&self, branch: StoredBranch, new: bool) -> BoxFuture<'static, Result<(), String>> {
        let this = self.clone();
        Box::pin(async move { this.put_one(branch, new).await })
    }

    fn remove(&self, key: String) -> BoxFuture<'static, Result<(), String>> {
        let this = self.clone();
        Box::pin(async move { this.remove_one(key).await })
    }
}

#[cfg(test)]
mod tests;
