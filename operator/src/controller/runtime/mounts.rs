//! The master's mount table made the dataset's: what is missing mounted
//! (also after a master lost its state), what changed re-mounted, what the
//! dataset no longer has unmounted.

use crate::context::Context;
use crate::{Error, Result};
use weir_api::MountSpec;
use weir_api::proto::master as pb;

fn same_mount(have: &pb::MountPoint, want: &MountSpec) -> bool {
    MountSpec::from_point(have.clone()).0 == *want
}

/// Makes the master's mount table the dataset's: mounts what is missing
/// (also after a master lost its state), re-mounts what changed, unmounts
/// what the dataset no longer has. Returns what it changed.
pub(super) async fn apply_mounts(
    ctx: &Context,
    ns: &str,
    name: &str,
    desired: &[MountSpec],
) -> Result<Vec<String>> {
    let master = ctx
        .masters(ns, name)
        .await?
        .ok_or_else(|| Error::NoMaster("no master pod has an address yet".into()))?;
    let table = master
        .call(|mut c| async move { c.get_mount_table(pb::Empty {}).await })
        .await;
    ctx.count_master_call("mount_table", table.is_ok());
    let table = table?;
    let mut changes = Vec::new();
    for have in &table.mounts {
        if !desired.iter().any(|d| d.path == have.path) {
            unmount(ctx, &master, &have.path).await?;
            changes.push(format!("unmounted {}", have.path));
        }
    }
    for want in desired {
        match table.mounts.iter().find(|m| m.path == want.path) {
            Some(have) if same_mount(have, want) => continue,
            Some(_) => {
                unmount(ctx, &master, &want.path).await?;
                changes.push(format!("re-mounted {} from {}", want.path, want.ufs_uri));
            }
            None => changes.push(format!("mounted {} from {}", want.path, want.ufs_uri)),
        }
        let req = want.to_request();
        let done = master
            .call(|mut c| {
                let req = req.clone();
                async move { c.mount(req).await }
            })
            .await;
        ctx.count_master_call("mount", done.is_ok());
        done.map_err(|source| Error::MasterCall {
            what: format!("mounting {} at {}", want.ufs_uri, want.path),
            source,
        })?;
    }
    Ok(changes)
}

async fn unmount(ctx: &Context, master: &weir_api::MasterClient, path: &str) -> Result<()> {
    let req = pb::PathRequest { path: path.into() };
    let done = master
        .call(|mut c| {
            let req = req.clone();
            async move { c.unmount(req).await }
        })
        .await;
    ctx.count_master_call("unmount", done.is_ok());
    done.map_err(|source| Error::MasterCall {
        what: format!("unmounting {path}"),
        source,
    })?;
    Ok(())
}
