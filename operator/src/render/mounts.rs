//! A dataset's mounts as the master gets them (paths, locations, options,
//! credential files, write types), and the volumes master and worker pods
//! need for them: Secret-backed options as files, host paths and claims.

use crate::crd::dataset::{EncryptOption, Mount};
use crate::crd::{CacheRuntime, Dataset};
use crate::names::*;
use crate::{Error, Result};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use weir_api::{MountSpec, WriteType};

/// A volume master and worker pods need for a mount (`local://`, `pvc://`).
#[derive(Debug, Clone, PartialEq)]
enum UfsVolume {
    HostPath(String),
    Claim(String),
}

/// Keys of `options` that configure Weir, not the under-storage.
const WEIR_OPTIONS: [&str; 1] = ["writeType"];

/// The directory name a mount gets when it names none: the last segment of
/// its location (`s3://bucket/a/b` -> `b`, `s3://bucket` -> `bucket`).
pub fn mount_name(m: &Mount) -> String {
    if let Some(n) = &m.name {
        return n.clone();
    }
    let rest = m
        .mount_point
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(&m.mount_point);
    rest.split('/')
        .rev()
        .find(|s| !s.is_empty())
        .unwrap_or("data")
        .to_owned()
}

fn secret_file(opt: &EncryptOption) -> String {
    format!(
        "{SECRETS_DIR}/{}/{}",
        opt.value_from.secret_key_ref.name, opt.value_from.secret_key_ref.key
    )
}

/// Each mount's location, options and credential files as the master gets
/// them, plus the volume it needs in the pods.
fn mounts_with_volumes(
    ds: &Dataset,
    rt: &CacheRuntime,
) -> Result<Vec<(MountSpec, Option<UfsVolume>)>> {
    let sync = rt
        .spec
        .management
        .metadata_sync_policy
        .policy()
        .map_err(|e| Error::Invalid(format!("spec.management.metadataSyncPolicy: {e}")))?;
    let mut seen = BTreeMap::new();
    let mut out = Vec::new();
    for (i, m) in ds.spec.mounts.iter().enumerate() {
        let field = format!("spec.mounts[{i}]");
        let name = mount_name(m);
        let path = m.path.clone().unwrap_or_else(|| format!("/{name}"));
        if path == "/" || path.split('/').any(|s| s == "..") {
            return Err(Error::Invalid(format!(
                "{field}.path {path:?}: a mount needs its own directory below /"
            )));
        }
        if let Some(other) = seen.insert(path.clone(), i) {
            return Err(Error::Invalid(format!(
                "{field}: path {path} is also the path of spec.mounts[{other}]"
            )));
        }
        let (scheme, rest) = m
            .mount_point
            .split_once("://")
            .ok_or_else(|| Error::Invalid(format!("{field}.mountPoint has no scheme")))?;
        let (ufs_uri, volume) = match scheme {
            "s3" | "http" | "https" | "hdfs" => (m.mount_point.clone(), None),
            "local" => {
                let host = format!("/{}", rest.trim_matches('/'));
                (
                    format!("local://{UFS_DIR}/{i}"),
                    Some(UfsVolume::HostPath(host)),
                )
            }
            "pvc" => {
                let (claim, sub) = rest.split_once('/').unwrap_or((rest, ""));
                if claim.is_empty() {
                    return Err(Error::Invalid(format!(
                        "{field}.mountPoint {:?} names no claim",
                        m.mount_point
                    )));
                }
                let sub = sub.trim_matches('/');
                let dir = if sub.is_empty() {
                    format!("{UFS_DIR}/{i}")
                } else {
                    format!("{UFS_DIR}/{i}/{sub}")
                };
                (
                    format!("local://{dir}"),
                    Some(UfsVolume::Claim(claim.into())),
                )
            }
            other => {
                return Err(Error::Invalid(format!(
                    "{field}.mountPoint: scheme {other}:// is not supported"
                )));
            }
        };
        let mut options = ds.spec.shared_options.clone();
        options.extend(m.options.clone());
        let write_type = match options.get("writeType") {
            None => WriteType::CacheThrough,
            Some(w) => w
                .parse()
                .map_err(|e| Error::Invalid(format!("{field}.options.writeType: {e}")))?,
        };
        options.retain(|k, _| !WEIR_OPTIONS.contains(&k.as_str()));
        let mut credential_files = BTreeMap::new();
        for opt in ds
            .spec
            .shared_encrypt_options
            .iter()
            .chain(&m.encrypt_options)
        {
            credential_files.insert(opt.name.clone(), secret_file(opt));
        }
        out.push((
            MountSpec {
                path,
                ufs_uri,
                read_only: m.read_only,
                write_type,
                sync,
                options,
                credential_files,
            },
            volume,
        ));
    }
    Ok(out)
}

pub fn desired_mounts(ds: &Dataset, rt: &CacheRuntime) -> Result<Vec<MountSpec>> {
    Ok(mounts_with_volumes(ds, rt)?
        .into_iter()
        .map(|(m, _)| m)
        .collect())
}

/// Secrets the dataset's options come from, each with the keys used.
fn secrets(ds: &Dataset) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let all = ds
        .spec
        .shared_encrypt_options
        .iter()
        .chain(ds.spec.mounts.iter().flat_map(|m| &m.encrypt_options));
    for opt in all {
        let r = &opt.value_from.secret_key_ref;
        let keys = out.entry(r.name.clone()).or_default();
        if !keys.contains(&r.key) {
            keys.push(r.key.clone());
        }
    }
    out
}

/// Volumes and mounts every master and worker pod has: Secret-backed
/// options as read-only files, and the host paths / claims of the mounts.
pub(super) fn data_volumes(ds: &Dataset, rt: &CacheRuntime) -> Result<(Vec<Value>, Vec<Value>)> {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for (secret, keys) in secrets(ds) {
        let vol = format!("secret-{secret}");
        volumes.push(json!({
            "name": vol,
            "secret": {
                "secretName": secret,
                "defaultMode": 0o400,
                "items": keys.iter().map(|k| json!({"key": k, "path": k})).collect::<Vec<_>>(),
            }
        }));
        mounts.push(
            json!({"name": vol, "mountPath": format!("{SECRETS_DIR}/{secret}"), "readOnly": true}),
        );
    }
    for (i, (m, volume)) in mounts_with_volumes(ds, rt)?.into_iter().enumerate() {
        let vol = format!("ufs-{i}");
        match volume {
            None => continue,
            Some(UfsVolume::HostPath(path)) => {
                volumes.push(json!({"name": vol, "hostPath": {"path": path, "type": "Directory"}}))
            }
            Some(UfsVolume::Claim(claim)) => volumes.push(json!({
                "name": vol,
                "persistentVolumeClaim": {"claimName": claim, "readOnly": m.read_only}
            })),
        }
        mounts.push(
            json!({"name": vol, "mountPath": format!("{UFS_DIR}/{i}"), "readOnly": m.read_only}),
        );
    }
    Ok((volumes, mounts))
}
