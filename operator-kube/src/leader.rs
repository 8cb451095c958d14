//! Leader election with a `coordination.k8s.io/v1` Lease: of several
//! operator replicas, only the holder of the Lease serves; the others wait
//! and take over when it is released (clean shutdown) or expires (a crashed
//! holder). Whether to take the Lease is decided by a pure function
//! ([`decide`]); the API calls are a thin layer around it, with the
//! resourceVersion making each write a compare-and-swap.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The Lease's name.
pub const LEASE_NAME: &str = "remora-operator";
/// How long a holder's claim lasts without renewal.
pub const LEASE_SECONDS: i32 = 15;
/// How often the holder renews, and a waiting replica retries.
pub const RETRY: Duration = Duration::from_secs(2);

/// What to do with the Lease as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Take it (free, expired, or ours): write it with us as holder.
    Take {
        /// Whether the holder changes (`leaseTransitions` counts up).
        transition: bool,
    },
    /// Someone else holds it until it expires.
    Wait {
        /// The holder.
        holder: String,
    },
}

/// Decide on `lease` (none: it does not exist yet) for `me` at `now` (pure).
pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease else {
        return Decision::Take { transition: true };
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Take { transition: true };
    }
    if holder == me {
        return Decision::Take { transition: false };
    }
    let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
    let expired = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .is_none_or(|t| t.0 + SignedDuration::from_secs(seconds) < now);
    if expired {
        Decision::Take { transition: true }
    } else {
        Decision::Wait {
            holder: holder.to_owned(),
        }
    }
}

/// The Lease written by `me` taking or renewing it (pure).
pub fn taken(previous: Option<&Lease>, me: &str, now: Timestamp, transition: bool) -> Lease {
    let mut lease = previous.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(LEASE_NAME.to_owned()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let spec = lease.spec.get_or_insert_default();
    spec.holder_identity = Some(me.to_owned());
    spec.lease_duration_seconds = Some(LEASE_SECONDS);
    spec.renew_time = Some(MicroTime(now));
    if transition {
        spec.acquire_time = Some(MicroTime(now));
        if previous.is_some() {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
    }
    lease
}

/// One replica's side of the election.
#[derive(Debug, Clone)]
pub struct Election {
    api: Api<Lease>,
    /// This replica's identity (pod name + random suffix).
    pub me: String,
}

impl Election {
    /// Compete for the Lease in `namespace` as `me`.
    pub fn new(client: kube::Client, namespace: &str, me: String) -> Self {
        Election {
            api: Api::namespaced(client, namespace),
            me,
        }
    }

    /// One round: `Ok(None)` when we hold the Lease now, else its holder.
    async fn round(&self) -> Result<Option<String>, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(LEASE_NAME).await?;
        match decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.me,
            now,
        ) {
            Decision::Wait { holder } => Ok(Some(holder)),
            Decision::Take { transition } => {
                let lease = taken(current.as_ref(), &self.me, now, transition);
                let written = match current {
                    None => self.api.create(&PostParams::default(), &lease).await,
                    // The resourceVersion makes it a compare-and-swap: a 409
                    // means another replica wrote first.
                    Some(_) => {
                        self.api
                            .replace(LEASE_NAME, &PostParams::default(), &lease)
                            .await
                    }
                };
                match written {
                    Ok(_) => Ok(None),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(Some("another replica".into())),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Wait until we hold the Lease (or `cancel`: `false`).
    pub async fn acquire(&self, cancel: &CancellationToken) -> bool {
        let mut told = None;
        loop {
            match self.round().await {
                Ok(None) => return true,
                Ok(Some(holder)) => {
                    if told.as_ref() != Some(&holder) {
                        tracing::info!(%holder, me = %self.me, "waiting for the leader lease {LEASE_NAME}");
                        told = Some(holder);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the leader lease {LEASE_NAME}"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// Renew until `cancel`, then release the Lease so another replica
    /// takes over at once. Cancels `lost` when a renewal fails past the
    /// Lease's duration (another replica may hold it now).
    pub async fn keep(self, cancel: CancellationToken, lost: CancellationToken) {
        let mut last_renewed = tokio::time::Instant::now();
        let duration = Duration::from_secs(u64::try_from(LEASE_SECONDS).unwrap_or(15));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(RETRY) => {}
            }
            match self.round().await {
                Ok(None) => last_renewed = tokio::time::Instant::now(),
                Ok(Some(holder)) => {
                    tracing::error!(%holder, "the leader lease was taken over");
                    lost.cancel();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the leader lease");
                    if last_renewed.elapsed() > duration {
                        lost.cancel();
                        return;
                    }
                }
            }
        }
        self.release().await;
    }

    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(LEASE_NAME).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.me.as_str()) {
            return;
        }
        spec.holder_identity = None;
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("leader lease released"),
            Err(e) => tracing::warn!(error = %e, "cannot release the leader lease (it expires)"),
        }
    }
}

#[cfg(test)]
mod tests;
