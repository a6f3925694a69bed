//! A mount as every component describes it (the CLI, the operator, the
//! master's mount table) and the write types a mount or a file takes,
//! each with its one mapping to and from the protobuf messages.

use crate::proto::master as pb;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How writes reach the under-storage. The variant order is part of the
/// encoding of replicated commands and of the data path's headers: new
/// variants go at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum WriteType {
    /// Cache only; lost with the cache.
    #[default]
    MustCache,
    /// Cache and under-storage, synchronously.
    CacheThrough,
    /// Under-storage only.
    Through,
    /// Cache now (pinned), under-storage later in the order written.
    AsyncThrough,
}

impl WriteType {
    pub const ALL: [WriteType; 4] = [
        WriteType::MustCache,
        WriteType::CacheThrough,
        WriteType::Through,
        WriteType::AsyncThrough,
    ];

    /// Whether written bytes stay in the cache.
    pub fn caches(self) -> bool {
        self != WriteType::Through
    }

    /// Whether a close returns only once the under-storage has the bytes.
    pub fn writes_through(self) -> bool {
        matches!(self, WriteType::CacheThrough | WriteType::Through)
    }

    /// The name users know (Alluxio's): `MUST_CACHE`, `CACHE_THROUGH` ...
    pub fn name(self) -> &'static str {
        match self {
            WriteType::MustCache => "MUST_CACHE",
            WriteType::CacheThrough => "CACHE_THROUGH",
            WriteType::Through => "THROUGH",
            WriteType::AsyncThrough => "ASYNC_THROUGH",
        }
    }

    /// Parses [`WriteType::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == name)
    }

    /// The protobuf enum's value; unknown values read as the default.
    pub fn from_pb(value: i32) -> Self {
        match pb::WriteType::try_from(value) {
            Ok(pb::WriteType::CacheThrough) => WriteType::CacheThrough,
            Ok(pb::WriteType::Through) => WriteType::Through,
            Ok(pb::WriteType::AsyncThrough) => WriteType::AsyncThrough,
            Ok(pb::WriteType::MustCache) | Err(_) => WriteType::MustCache,
        }
    }

    pub fn to_pb(self) -> i32 {
        (match self {
            WriteType::MustCache => pb::WriteType::MustCache,
            WriteType::CacheThrough => pb::WriteType::CacheThrough,
            WriteType::Through => pb::WriteType::Through,
            WriteType::AsyncThrough => pb::WriteType::AsyncThrough,
        }) as i32
    }
}

impl std::str::FromStr for WriteType {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|w| w.name()).collect();
            format!("unknown write type {name:?}: one of {}", names.join(", "))
        })
    }
}

impl std::fmt::Display for WriteType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A mount: `path` in the namespace shows `ufs_uri`. The field order is
/// part of the encoding of replicated commands and snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MountSpec {
    pub path: String,
    pub ufs_uri: String,
    pub read_only: bool,
    pub write_type: WriteType,
    /// 0: never re-validate a loaded listing.
    pub sync_interval_ms: u64,
    /// Options for the under-storage (endpoint, region ...), never secrets.
    pub options: BTreeMap<String, String>,
    /// Option name -> the file holding its secret value (mounted into the
    /// master and worker pods).
    pub credential_files: BTreeMap<String, String>,
}

impl MountSpec {
    pub fn to_request(&self) -> pb::MountRequest {
        pb::MountRequest {
            path: self.path.clone(),
            ufs_uri: self.ufs_uri.clone(),
            read_only: self.read_only,
            write_type: self.write_type.to_pb(),
            sync_interval_ms: self.sync_interval_ms,
            options: self.options.clone().into_iter().collect(),
            credential_files: self.credential_files.clone().into_iter().collect(),
        }
    }

    pub fn from_request(r: pb::MountRequest) -> Self {
        Self {
            path: r.path,
            ufs_uri: r.ufs_uri,
            read_only: r.read_only,
            write_type: WriteType::from_pb(r.write_type),
            sync_interval_ms: r.sync_interval_ms,
            options: r.options.into_iter().collect(),
            credential_files: r.credential_files.into_iter().collect(),
        }
    }

    /// The mount-table entry of this spec under `mount_id`.
    pub fn to_point(&self, mount_id: u64) -> pb::MountPoint {
        pb::MountPoint {
            path: self.path.clone(),
            ufs_uri: self.ufs_uri.clone(),
            read_only: self.read_only,
            write_type: self.write_type.to_pb(),
            sync_interval_ms: self.sync_interval_ms,
            options: self.options.clone().into_iter().collect(),
            credential_files: self.credential_files.clone().into_iter().collect(),
            mount_id,
        }
    }

    /// A mount-table entry and its id.
    pub fn from_point(p: pb::MountPoint) -> (Self, u64) {
        (
            Self {
                path: p.path,
                ufs_uri: p.ufs_uri,
                read_only: p.read_only,
                write_type: WriteType::from_pb(p.write_type),
                sync_interval_ms: p.sync_interval_ms,
                options: p.options.into_iter().collect(),
                credential_files: p.credential_files.into_iter().collect(),
            },
            p.mount_id,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_types_round_trip_through_names_and_protobuf() {
        for w in WriteType::ALL {
            assert_eq!(WriteType::from_name(w.name()), Some(w));
            assert_eq!(WriteType::from_pb(w.to_pb()), w);
            let generated = pb::WriteType::try_from(w.to_pb()).unwrap().as_str_name();
            assert_eq!(generated, format!("WRITE_TYPE_{}", w.name()));
        }
        assert_eq!(WriteType::from_name("NEVER"), None);
        assert_eq!(WriteType::from_pb(99), WriteType::MustCache);
    }

    /// Replicated commands and data-path headers carry the write type by
    /// variant index: the order must never change.
    #[test]
    fn the_encoding_of_write_types_and_mounts_is_fixed() {
        let indices: Vec<u8> = WriteType::ALL
            .iter()
            .map(|w| postcard::to_allocvec(w).unwrap()[0])
            .collect();
        assert_eq!(indices, [0, 1, 2, 3]);
        let spec = MountSpec {
            path: "/d".into(),
            ufs_uri: "s3://b".into(),
            read_only: true,
            write_type: WriteType::Through,
            sync_interval_ms: 5,
            options: [("k".to_owned(), "v".to_owned())].into(),
            credential_files: Default::default(),
        };
        assert_eq!(
            postcard::to_allocvec(&spec).unwrap(),
            [
                2, b'/', b'd', 6, b's', b'3', b':', b'/', b'/', b'b', 1, 2, 5, 1, 1, b'k', 1, b'v',
                0
            ]
        );
        let point = spec.to_point(7);
        assert_eq!(MountSpec::from_point(point), (spec.clone(), 7));
        assert_eq!(MountSpec::from_request(spec.to_request()), spec);
    }
}
