//! The volume calls: stage (the dataset's FUSE mount made sure of on this
//! node, and recorded), publish (the FUSE mount or a sub-path of it bound
//! into the pod), and their idempotent undoing.

use super::NodeService;
use super::state::{PodRef, Published, Staged};
use crate::mounts;
use crate::proto as pb;
use crate::validate;
use crate::{Error, Result};

impl NodeService {
    pub async fn stage(&self, r: pb::NodeStageVolumeRequest) -> Result<()> {
        let volume_id = validate::volume_id(&r.volume_id)?.to_owned();
        let staging = self.staging_path(&r.staging_target_path)?;
        Self::check_capability(r.volume_capability.as_ref())?;
        let mount_path = self.mount_path(&r.volume_context)?;
        let fuse_label = match r.volume_context.get("fuseLabel") {
            Some(l) => Some(validate::fuse_label(l)?.to_owned()),
            None => None,
        };
        let on_demand = r
            .volume_context
            .get("cleanPolicy")
            .is_none_or(|p| p == "OnDemand");
        let _op = self.ops.lock().await;
        if let (Some(label), Some(api)) = (&fuse_label, &self.api) {
            api.set_label(label, Some("true")).await?;
        }
        self.wait_for_fuse(&mount_path).await?;
        std::fs::create_dir_all(&staging).map_err(|source| Error::Io {
            what: "creating the staging path",
            path: staging.clone(),
            source,
        })?;
        // A bind left here by an earlier version of the plugin would keep
        // the kubelet from ever unstaging.
        mounts::unmount_all(&staging)?;
        tracing::info!(volume = %volume_id, staging = %staging.display(), "staged");
        self.update(|s| {
            s.staged.insert(
                staging.clone(),
                Staged {
                    volume_id,
                    mount_path,
                    fuse_label,
                    on_demand,
                },
            );
        })
    }

    pub async fn unstage(&self, r: pb::NodeUnstageVolumeRequest) -> Result<()> {
        validate::volume_id(&r.volume_id)?;
        let staging = self.staging_path(&r.staging_target_path)?;
        let _op = self.ops.lock().await;
        mounts::unmount_all(&staging)?;
        let _ = std::fs::remove_dir(&staging);
        let gone = self.state().staged.get(&staging).cloned();
        tracing::info!(volume = %r.volume_id, staging = %staging.display(), "unstaged");
        self.update(|s| {
            s.staged.remove(&staging);
        })?;
        if let Some(gone) = &gone
            && !self.uses_mount(&gone.mount_path)
        {
            if let Some(holder) = self.holder.get() {
                holder.forget(&gone.mount_path);
            }
            // A FUSE process that left its mount to a holder which then went
            // away (or a FUSE process that died) leaves a dead mount that
            // nothing else unmounts once no volume needs it: its FUSE pod
            // leaves this node rather than coming back to clear it.
            if mounts::is_broken(&gone.mount_path) {
                tracing::info!(path = %gone.mount_path.display(), "unmounting a dead FUSE mount no volume uses");
                mounts::unmount(&gone.mount_path)?;
            }
        }
        // The FUSE pod leaves this node once no staged volume needs it.
        if let Some(Staged {
            fuse_label: Some(label),
            on_demand: true,
            ..
        }) = gone
        {
            let still_used = self
                .state()
                .staged
                .values()
                .any(|s| s.fuse_label.as_deref() == Some(&label));
            if !still_used && let Some(api) = &self.api {
                api.set_label(&label, None).await?;
                tracing::info!(%label, "no staged volume needs the FUSE pod here: label removed");
            }
        }
        Ok(())
    }

    pub async fn publish(&self, r: pb::NodePublishVolumeRequest) -> Result<()> {
        let volume_id = validate::volume_id(&r.volume_id)?.to_owned();
        if r.target_path.is_empty() {
            return Err(Error::InvalidArgument("target path is required".into()));
        }
        let target = validate::target_path(&r.target_path, &self.config.kubelet_root)?;
        let staging = self.staging_path(&r.staging_target_path)?;
        let cap_read_only = Self::check_capability(r.volume_capability.as_ref())?;
        let read_only = r.readonly || cap_read_only;
        let _op = self.ops.lock().await;
        let Some(staged) = self.state().staged.get(&staging).cloned() else {
            return Err(Error::FailedPrecondition(format!(
                "volume {volume_id} is not staged at {}",
                staging.display()
            )));
        };
        if self.fuse_waiting(&staged.mount_path) {
            // Resolving the sub-path would block until the next FUSE process
            // takes the mount over, with every other volume call waiting.
            return Err(Error::Unavailable(format!(
                "the FUSE daemon of volume {volume_id} is restarting; try again"
            )));
        }
        let pod = PodRef::from_context(&r.volume_context);
        let sub_path = r
            .volume_context
            .get("subPath")
            .filter(|s| !s.is_empty())
            .cloned();
        let source = Self::bind_source(&staged, sub_path.as_deref())?;
        std::fs::create_dir_all(&target).map_err(|source| Error::Io {
            what: "creating the target path",
            path: target.clone(),
            source,
        })?;
        match mounts::mounted_at(&target)? {
            Some(m) if m.read_only == read_only && !mounts::is_broken(&target) => {}
            Some(m) if m.read_only == read_only => mounts::bind(&source, &target, read_only)?,
            Some(_) => {
                mounts::unmount_all(&target)?;
                mounts::bind(&source, &target, read_only)?;
            }
            None => mounts::bind(&source, &target, read_only)?,
        }
        tracing::info!(volume = %volume_id, target = %target.display(), read_only, "published");
        self.update(|s| {
            s.published.insert(
                target.clone(),
                Published {
                    volume_id,
                    staging,
                    sub_path,
                    read_only,
                    pod,
                },
            );
        })
    }

    pub async fn unpublish(&self, r: pb::NodeUnpublishVolumeRequest) -> Result<()> {
        validate::volume_id(&r.volume_id)?;
        if r.target_path.is_empty() {
            return Err(Error::InvalidArgument("target path is required".into()));
        }
        let target = validate::target_path(&r.target_path, &self.config.kubelet_root)?;
        let _op = self.ops.lock().await;
        mounts::unmount_all(&target)?;
        // Only the now empty mount point is removed, never its contents.
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    what: "removing the target path",
                    path: target,
                    source,
                });
            }
        }
        tracing::info!(volume = %r.volume_id, target = %target.display(), "unpublished");
        self.update(|s| {
            s.published.remove(&target);
        })
    }
}
