//! Leader election on a `coordination.k8s.io/v1` Lease, so several operator
//! replicas can run and one reconciles. A replica takes the Lease when it
//! is free or its holder stopped renewing it for a lease duration; every
//! write is conditional on the resourceVersion read, so two candidates
//! never both win. A leader that cannot renew before its lease runs out
//! stops (the process exits and restarts as a candidate).

use crate::{Error, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The holder's pod, made the Lease's owner: when the pods go (an
    /// uninstall), the Lease goes with them, even though their service
    /// account may already be gone and they cannot delete it themselves.
    owner: Option<OwnerReference>,
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
            owner: None,
        }
    }

    /// Makes the holding pod the Lease's owner.
    pub fn owned_by_pod(mut self, name: &str, uid: &str) -> Self {
        self.owner = Some(OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: name.into(),
            uid: uid.into(),
            ..Default::default()
        });
        self
    }

    fn owners(&self) -> Option<Vec<OwnerReference>> {
        self.owner.clone().map(|o| vec![o])
    }

    fn spec(&self, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let ours = previous.and_then(|p| p.holder_identity.as_deref()) == Some(&self.identity);
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: if ours {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
            ..Default::default()
        }
    }

    /// One attempt to take or renew the Lease; `Ok(true)` when this replica
    /// holds it afterwards.
    pub async fn try_acquire(&self) -> Result<bool> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    owner_references: self.owners(),
                    ..Default::default()
                },
                spec: Some(self.spec(None, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let held_by_other = spec
            .holder_identity
            .as_deref()
            .is_some_and(|h| !h.is_empty() && h != self.identity);
        if held_by_other {
            let renewed = spec.renew_time.as_ref().map(|t| t.0);
            let ttl = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15) as i64);
            if renewed.is_some_and(|r| r + ttl > now) {
                return Ok(false);
            }
        }
        lease.spec = Some(self.spec(Some(&spec), now));
        if self.owner.is_some() {
            lease.metadata.owner_references = self.owners();
        }
        // `replace` carries the resourceVersion read: a concurrent writer
        // makes this fail with a conflict instead of both winning.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) -> Result<()> {
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "leading");
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(self.duration / 5).await;
        }
    }

    /// Renews while leading; returns (an error) once the Lease is lost or
    /// could not be renewed within its duration.
    pub async fn keep(&self) -> Error {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_acquire().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    return Error::Lease(format!("lease {} taken by another replica", self.name));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the lease");
                    // Stop before the lease runs out, so two never lead.
                    if last_renewed.elapsed() > self.duration * 2 / 3 {
                        return Error::Lease(format!("could not renew lease {}: {e}", self.name));
                    }
                }
            }
        }
    }

    /// Gives the Lease up on a clean exit, so a standby takes over at once
    /// (it creates the Lease anew). Deleted rather than emptied, so an
    /// uninstalled operator leaves no Lease behind; the resourceVersion
    /// precondition keeps a Lease a standby just took.
    pub async fn release(&self) {
        if let Ok(Some(lease)) = self.api.get_opt(&self.name).await
            && lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(&self.identity)
        {
            let params = kube::api::DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    resource_version: lease.metadata.resource_version.clone(),
                    uid: lease.metadata.uid.clone(),
                }),
                ..Default::default()
            };
            if let Err(e) = self.api.delete(&self.name, &params).await {
                tracing::warn!(error = %e, lease = %self.name, "releasing the lease");
            }
        }
    }
}
