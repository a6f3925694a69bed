//! Volume stats, and the repair loop: every staged or published mount
//! whose FUSE source died is bound again once the FUSE pod is back.

use super::NodeService;
use crate::mounts;
use crate::proto as pb;
use crate::validate;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

impl NodeService {
    pub fn stats(
        &self,
        r: pb::NodeGetVolumeStatsRequest,
    ) -> Result<pb::NodeGetVolumeStatsResponse> {
        validate::volume_id(&r.volume_id)?;
        if r.volume_path.is_empty() {
            return Err(Error::InvalidArgument("volume path is required".into()));
        }
        let path = PathBuf::from(&r.volume_path);
        // Asked first: a look at a mount that waits for its FUSE process
        // would block until the next one takes it over.
        // The state lock is let go before the holder is asked: the holder
        // asks `uses_mount` (which takes the state lock) with its own lock
        // held, so holding them the other way round here could deadlock.
        let mount_path = {
            let state = self.state.lock().expect("state");
            state
                .published
                .get(&path)
                .map(|p| &p.staging)
                .or(state.staged.contains_key(&path).then_some(&path))
                .and_then(|staging| state.staged.get(staging))
                .map(|s| s.mount_path.clone())
        };
        let waiting = mount_path.is_some_and(|m| self.fuse_waiting(&m));
        if waiting {
            return Ok(pb::NodeGetVolumeStatsResponse {
                usage: vec![],
                volume_condition: Some(pb::VolumeCondition {
                    abnormal: true,
                    message: "the FUSE daemon is restarting; reads wait for it".into(),
                }),
            });
        }
        if !mounts::exists(&path) {
            return Err(Error::NotFound(format!(
                "volume path {} does not exist",
                path.display()
            )));
        }
        if mounts::is_broken(&path) {
            return Ok(pb::NodeGetVolumeStatsResponse {
                usage: vec![],
                volume_condition: Some(pb::VolumeCondition {
                    abnormal: true,
                    message: "the FUSE mount is gone (being recovered)".into(),
                }),
            });
        }
        let (total, free, inodes, inodes_free) = mounts::usage(&path)?;
        let usage = |unit: pb::volume_usage::Unit, total: u64, free: u64| pb::VolumeUsage {
            available: free as i64,
            total: total as i64,
            used: total.saturating_sub(free) as i64,
            unit: unit as i32,
        };
        Ok(pb::NodeGetVolumeStatsResponse {
            usage: vec![
                usage(pb::volume_usage::Unit::Bytes, total, free),
                usage(pb::volume_usage::Unit::Inodes, inodes, inodes_free),
            ],
            volume_condition: Some(pb::VolumeCondition {
                abnormal: false,
                message: String::new(),
            }),
        })
    }

    /// Re-binds every staged and published mount whose source died, once
    /// the FUSE mount it comes from is back. Returns how many it repaired.
    pub async fn repair(&self) -> usize {
        let _op = self.ops.lock().await;
        let state = self.state();
        let mut repaired = 0;
        let fail = |what: &Path, e: Error| {
            tracing::warn!(path = %what.display(), error = %e, "could not repair a mount");
            self.metrics.recovery_failures.inc();
        };
        let held = self.holder.get().map(|h| h.held()).unwrap_or_default();
        for (staging, staged) in &state.staged {
            if self.fuse_waiting(&staged.mount_path) {
                // Alive and held: nothing to repair, and a look would block
                // until the next FUSE process takes it over.
                continue;
            }
            // A FUSE process took the held mount over from its predecessor:
            // nothing broke, but the pods are told their daemon restarted.
            let generation = held
                .iter()
                .find(|h| h.mount_point == staged.mount_path)
                .map(|h| h.generation);
            let taken_over = generation.is_some_and(|g| {
                let mut seen = self.fuse_generations.lock().expect("generations");
                seen.insert(staged.mount_path.clone(), g)
                    .is_some_and(|before| before < g)
            });
            if taken_over {
                self.metrics.takeovers.inc();
                for p in state.published.values().filter(|p| p.staging == *staging) {
                    tracing::info!(volume = %p.volume_id, "a restarted FUSE daemon took over the live mount");
                    if let (Some(pod), Some(api)) = (&p.pod, &self.api) {
                        let note = format!(
                            "the FUSE daemon of volume {} restarted and took over the live mount: reads waited for it, none failed",
                            p.volume_id
                        );
                        if let Err(e) = api.mount_repaired(pod, note).await {
                            tracing::warn!(error = %e, pod = %pod.name, "could not record the takeover");
                        }
                    }
                }
            }
            let healthy_source = mounts::fuse_mounted(&staged.mount_path).unwrap_or(false)
                && !mounts::is_broken(&staged.mount_path);
            if !healthy_source {
                continue;
            }
            // A new FUSE mount (a new device) under a staged volume: its
            // daemon restarted. When it was stacked on the dead mount, the
            // host's shared mounts carry it into the pods' targets (peers of
            // the dead one) by themselves; either way the pods are told
            // their mount is back.
            let device = mounts::device(&staged.mount_path);
            let restarted = {
                let mut seen = self.fuse_devices.lock().expect("fuse devices");
                let before = match device {
                    Some(d) => seen.insert(staging.clone(), d),
                    None => seen.get(staging).copied(),
                };
                before.is_some() && before != device
            };
            // Repairs stack the new mount on top of the dead one, never
            // unmount first: pods hold copies of their targets (slaves of
            // the host's), and only a mount made on top reaches those
            // copies; an unmounted and re-made target would not.
            for (target, p) in state
                .published
                .iter()
                .filter(|(_, p)| p.staging == *staging)
            {
                let broken = mounts::is_broken(target);
                if broken {
                    let done = Self::bind_source(staged, p.sub_path.as_deref())
                        .and_then(|src| mounts::bind(&src, target, p.read_only));
                    if let Err(e) = done {
                        fail(target, e);
                        continue;
                    }
                    tracing::info!(target = %target.display(), volume = %p.volume_id, "re-bound a mount after its FUSE daemon came back");
                } else if restarted && !mounts::is_broken(target) {
                    tracing::info!(target = %target.display(), volume = %p.volume_id, "a mount is back after its FUSE daemon restarted");
                } else {
                    continue;
                }
                repaired += 1;
                if let (Some(pod), Some(api)) = (&p.pod, &self.api) {
                    let note = format!(
                        "the FUSE daemon of volume {} restarted; the mount at {} works again{}",
                        p.volume_id,
                        target.display(),
                        if broken { " (re-bound)" } else { "" }
                    );
                    if let Err(e) = api.mount_repaired(pod, note).await {
                        tracing::warn!(error = %e, pod = %pod.name, "could not record the repair");
                    }
                }
            }
        }
        self.metrics.recoveries.inc_by(repaired as u64);
        repaired
    }
}
