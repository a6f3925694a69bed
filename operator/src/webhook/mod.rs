//! Cache-aware scheduling: a mutating admission webhook that steers pods
//! mounting a dataset's PVC toward the nodes running that dataset's
//! workers. Every operator replica serves it (the Service picks any), not
//! only the leader; each keeps the serving certificate current from the
//! Secret it shares with the others.
//!
//! - [`affinity`]: the change made to a pod
//! - [`cert`]: the certificate, its renewal and the published CA
//! - [`server`]: the HTTPS endpoint and the lookups behind an answer

pub mod affinity;
pub mod cert;
pub mod server;

use crate::Result;
use cert::{CertSettings, CertSlot};
use kube::Client;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How often the Secret is read again (a renewal by another replica, a
/// certificate coming due) and the CA checked in the configuration.
const CERT_CHECK: Duration = Duration::from_secs(60);
/// After a failure (the Secret or configuration not there yet, a write
/// lost to another replica), sooner.
const CERT_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    pub cert: CertSettings,
    /// Give pods that use no dataset a preference for nodes without a
    /// cache worker.
    pub avoid_cache_nodes: bool,
}

/// Serves the webhook and keeps its certificate current, until an error
/// stops the server.
pub async fn run(config: WebhookConfig, client: Client) -> Result<()> {
    let slot = Arc::new(CertSlot::default());
    let keeper = {
        let (slot, client, settings) = (slot.clone(), client.clone(), config.cert.clone());
        tokio::spawn(async move {
            let mut loaded: Option<cert::ServingCert> = None;
            loop {
                let pause = match refresh(&client, &settings, &slot, &mut loaded).await {
                    Ok(()) => CERT_CHECK,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook certificate not current");
                        CERT_RETRY
                    }
                };
                tokio::time::sleep(pause).await;
            }
        })
    };
    let served = server::serve(config.listen, slot, client, config.avoid_cache_nodes).await;
    keeper.abort();
    served
}

async fn refresh(
    client: &Client,
    settings: &CertSettings,
    slot: &CertSlot,
    loaded: &mut Option<cert::ServingCert>,
) -> Result<()> {
    let current = cert::current(client, settings).await?;
    if loaded.as_ref() != Some(&current) {
        slot.set(current.certified_key()?);
        tracing::info!(
            not_after = current.not_after,
            "webhook serving certificate loaded"
        );
    }
    cert::publish_ca(client, settings, &current.ca_pem).await?;
    *loaded = Some(current);
    Ok(())
}
