//! Registration with the kubelet's plugin watcher: a socket in the
//! kubelet's `plugins_registry` directory that says "CSI plugin
//! `csi.weir.io`, listening at <endpoint>". The kubelet connects to it when
//! it appears and tells the outcome.

use crate::node::DRIVER_NAME;
use crate::registration as pb;
use std::path::PathBuf;
use tonic::{Request, Response, Status};

#[derive(Debug, Clone)]
struct Registrar {
    endpoint: String,
}

#[tonic::async_trait]
impl pb::registration_server::Registration for Registrar {
    async fn get_info(
        &self,
        _r: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::PluginInfo>, Status> {
        Ok(Response::new(pb::PluginInfo {
            r#type: "CSIPlugin".into(),
            name: DRIVER_NAME.into(),
            endpoint: self.endpoint.clone(),
            supported_versions: vec!["1.0.0".into()],
        }))
    }

    async fn notify_registration_status(
        &self,
        r: Request<pb::RegistrationStatus>,
    ) -> Result<Response<pb::RegistrationStatusResponse>, Status> {
        let s = r.into_inner();
        if s.plugin_registered {
            tracing::info!("registered with the kubelet");
        } else {
            tracing::error!(error = %s.error, "the kubelet refused the registration");
        }
        Ok(Response::new(pb::RegistrationStatusResponse {}))
    }
}

/// Serves the registration socket until the task is dropped.
pub async fn serve(dir: PathBuf, kubelet_endpoint: String) {
    let socket = dir.join(format!("{DRIVER_NAME}-reg.sock"));
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::remove_file(&socket);
    let listener = match tokio::net::UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(socket = %socket.display(), error = %e, "cannot serve the registration socket");
            return;
        }
    };
    tracing::info!(socket = %socket.display(), endpoint = %kubelet_endpoint, "registration socket ready");
    let served = tonic::transport::Server::builder()
        .add_service(pb::registration_server::RegistrationServer::new(
            Registrar {
                endpoint: kubelet_endpoint,
            },
        ))
        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "registration socket stopped");
    }
}
