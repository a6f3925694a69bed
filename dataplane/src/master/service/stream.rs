//! The streaming calls of the master's API: directory listings streamed a
//! page at a time, and pipelined metadata streams whose operations run
//! through the same handlers as their unary calls.

use super::MasterApi;
use super::fs::{FsApi, parse};
use crate::master::error::MasterError;
use crate::proto::master as pb;
use crate::proto::master::master_service_server::MasterService;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use weir_api::LEADER_HEADER;

pub type PageStream = Pin<Box<dyn Stream<Item = Result<pb::ListStatusPage, Status>> + Send>>;
pub type MetaResponses = Pin<Box<dyn Stream<Item = Result<pb::MetaResponse, Status>> + Send>>;

const DEFAULT_PAGE: usize = 1000;
const MAX_PAGE: usize = 10_000;
/// Operations of one metadata stream served at once; more wait in the
/// stream (HTTP/2 flow control pushes back on the client).
const STREAM_IN_FLIGHT: usize = 512;

impl FsApi {
    pub async fn list_status(&self, request: pb::ListStatusRequest) -> Result<PageStream, Status> {
        let req = request;
        let path = parse(&req.path)?;
        let dir = self.linearized_inode(&path).await?;
        if dir.is_dir() {
            self.sync.sync_dir(&path).await.map_err(Status::from)?;
        }
        let page_size = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let api = self.clone();
        let mut cursor = (!req.start_after.is_empty()).then_some(req.start_after);
        tokio::spawn(async move {
            if !dir.is_dir() {
                let page = pb::ListStatusPage {
                    entries: vec![api.info(&path, &dir)],
                    cursor: String::new(),
                };
                let _ = tx.send(Ok(page)).await;
                return;
            }
            // One page at a time: no lock or snapshot is held between pages,
            // and a slow reader only holds back its own stream.
            loop {
                let page = match api.namespace.list(&path, cursor.as_deref(), page_size) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(MasterError::from(e).into())).await;
                        return;
                    }
                };
                let last = page.len() < page_size;
                cursor = page.last().map(|i| i.name.clone());
                let entries = page
                    .iter()
                    .filter_map(|i| path.child(&i.name).ok().map(|p| api.info(&p, i)))
                    .collect();
                let msg = pb::ListStatusPage {
                    entries,
                    cursor: cursor.clone().unwrap_or_default(),
                };
                if tx.send(Ok(msg)).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

fn meta_response<T>(
    id: u64,
    result: Result<Response<T>, Status>,
    wrap: impl FnOnce(T) -> pb::meta_response::Result,
) -> pb::MetaResponse {
    match result {
        Ok(r) => pb::MetaResponse {
            id,
            code: 0,
            message: String::new(),
            leader: String::new(),
            result: Some(wrap(r.into_inner())),
        },
        Err(status) => pb::MetaResponse {
            id,
            code: status.code() as i32,
            message: status.message().to_owned(),
            leader: status
                .metadata()
                .get(LEADER_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            result: None,
        },
    }
}

impl MasterApi {
    pub(super) fn open_meta_stream(
        &self,
        request: Request<tonic::Streaming<pb::MetaRequest>>,
    ) -> Result<Response<MetaResponses>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_IN_FLIGHT);
        let api = self.clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(STREAM_IN_FLIGHT));
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (api, tx) = (api.clone(), tx.clone());
                tokio::spawn(async move {
                    let response = api.serve_one(req).await;
                    drop(slot);
                    let _ = tx.send(Ok(response)).await;
                });
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    /// One operation of a metadata stream, through the same handler as its
    /// unary call.
    async fn serve_one(&self, req: pb::MetaRequest) -> pb::MetaResponse {
        use pb::meta_request::Op;
        use pb::meta_response::Result as R;
        let id = req.id;
        match req.op {
            Some(Op::GetStatus(r)) => {
                meta_response(id, self.get_status(Request::new(r)).await, R::File)
            }
            Some(Op::CreateFile(r)) => {
                meta_response(id, self.create_file(Request::new(r)).await, R::File)
            }
            Some(Op::CreateDirectory(r)) => {
                meta_response(id, self.create_directory(Request::new(r)).await, R::File)
            }
            Some(Op::CompleteFile(r)) => {
                meta_response(id, self.complete_file(Request::new(r)).await, R::File)
            }
            Some(Op::Delete(r)) => {
                meta_response(id, self.delete(Request::new(r)).await, R::Deleted)
            }
            Some(Op::Rename(r)) => meta_response(id, self.rename(Request::new(r)).await, R::File),
            None => meta_response::<pb::FileInfo>(
                id,
                Err(Status::invalid_argument("empty operation")),
                R::File,
            ),
        }
    }
}
