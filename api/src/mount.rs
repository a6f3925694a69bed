//! A mount as every component describes it (the CLI, the operator, the
//! master's mount table) and the write types a mount or a file takes,
//! each with its one mapping to and from the protobuf messages.

use crate::proto::master as pb;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

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

/// When the master checks a path it already knows against the
/// under-storage. Encoded as one `u64` of milliseconds (0: never, all
/// ones: always), which is how mounts of earlier releases are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SyncPolicy {
    /// Loaded once, never checked again: for datasets declared immutable.
    #[default]
    Never,
    /// Checked on access once the last check is older than this.
    Interval(Duration),
    /// Checked on every open and lookup; those of one path within
    /// [`SyncPolicy::ALWAYS_SHARED`] share one under-storage stat (a
    /// lookup and the open right after it).
    Always,
}

impl SyncPolicy {
    const ALWAYS_MS: u64 = u64::MAX;

    pub fn from_ms(ms: u64) -> Self {
        match ms {
            0 => SyncPolicy::Never,
            Self::ALWAYS_MS => SyncPolicy::Always,
            ms => SyncPolicy::Interval(Duration::from_millis(ms)),
        }
    }

    pub fn as_ms(self) -> u64 {
        match self {
            SyncPolicy::Never => 0,
            SyncPolicy::Always => Self::ALWAYS_MS,
            SyncPolicy::Interval(d) => (d.as_millis() as u64).clamp(1, Self::ALWAYS_MS - 1),
        }
    }

    /// Whether something last checked `age` ago must be checked again.
    pub fn is_due(self, age: Duration) -> bool {
        match self {
            SyncPolicy::Never => false,
            SyncPolicy::Always => age >= Self::ALWAYS_SHARED,
            SyncPolicy::Interval(d) => age >= d,
        }
    }

    /// From the protobuf's mode and interval; an unspecified mode is what
    /// earlier clients meant by the interval alone.
    pub fn from_pb(mode: i32, interval_ms: u64) -> Self {
        match pb::SyncMode::try_from(mode) {
            Ok(pb::SyncMode::Never) => SyncPolicy::Never,
            Ok(pb::SyncMode::Always) => SyncPolicy::Always,
            Ok(pb::SyncMode::Interval) => {
                SyncPolicy::Interval(Duration::from_millis(interval_ms.max(1)))
            }
            Ok(pb::SyncMode::Unspecified) | Err(_) => Self::from_ms(interval_ms),
        }
    }

    /// The protobuf's mode and interval.
    pub fn to_pb(self) -> (i32, u64) {
        let mode = match self {
            SyncPolicy::Never => pb::SyncMode::Never,
            SyncPolicy::Always => pb::SyncMode::Always,
            SyncPolicy::Interval(_) => pb::SyncMode::Interval,
        };
        let interval = match self {
            SyncPolicy::Interval(d) => d.as_millis() as u64,
            _ => 0,
        };
        (mode as i32, interval)
    }
}

impl SyncPolicy {
    /// What a mount gets when nothing is said: a changed file is noticed
    /// within a minute, at one under-storage stat per file per minute of
    /// use.
    pub const DEFAULT: SyncPolicy = SyncPolicy::Interval(Duration::from_secs(60));

    /// How close together two checks of one path under `Always` must be to
    /// share a stat: the kernel looks a file up and opens it back to back,
    /// and both ask the master. Far below the client's own metadata cache
    /// (a second), so `Always` stays as fresh as a client can see.
    pub const ALWAYS_SHARED: Duration = Duration::from_millis(100);
}

impl std::str::FromStr for SyncPolicy {
    type Err = String;

    /// `never`, `always`, or an interval: `500ms`, `30s`, `5m`, or plain
    /// milliseconds.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("sync policy {s:?}: never, always, or an interval such as 30s");
        let t = s.trim().to_ascii_lowercase();
        let (digits, unit) = match t.as_str() {
            "never" => return Ok(SyncPolicy::Never),
            "always" => return Ok(SyncPolicy::Always),
            t if t.ends_with("ms") => (&t[..t.len() - 2], 1),
            t if t.ends_with('s') => (&t[..t.len() - 1], 1000),
            t if t.ends_with('m') => (&t[..t.len() - 1], 60_000),
            t => (t, 1),
        };
        let n: u64 = digits.trim().parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(format!("{}: an interval of 0; say never or always", bad()));
        }
        Ok(SyncPolicy::Interval(Duration::from_millis(
            n.saturating_mul(unit),
        )))
    }
}

impl std::fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncPolicy::Never => f.write_str("Never (immutable)"),
            SyncPolicy::Always => f.write_str("Always"),
            SyncPolicy::Interval(d) => write!(f, "Interval ({}s)", d.as_secs_f64()),
        }
    }
}

impl Serialize for SyncPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.as_ms())
    }
}

impl<'de> Deserialize<'de> for SyncPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u64::deserialize(d).map(Self::from_ms)
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
    /// When known paths are checked against the under-storage again.
    pub sync: SyncPolicy,
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
            sync_interval_ms: self.sync.to_pb().1,
            options: self.options.clone().into_iter().collect(),
            credential_files: self.credential_files.clone().into_iter().collect(),
            sync_mode: self.sync.to_pb().0,
        }
    }

    pub fn from_request(r: pb::MountRequest) -> Self {
        Self {
            path: r.path,
            ufs_uri: r.ufs_uri,
            read_only: r.read_only,
            write_type: WriteType::from_pb(r.write_type),
            sync: SyncPolicy::from_pb(r.sync_mode, r.sync_interval_ms),
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
            sync_interval_ms: self.sync.to_pb().1,
            options: self.options.clone().into_iter().collect(),
            credential_files: self.credential_files.clone().into_iter().collect(),
            mount_id,
            sync_mode: self.sync.to_pb().0,
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
                sync: SyncPolicy::from_pb(p.sync_mode, p.sync_interval_ms),
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
            sync: SyncPolicy::Interval(Duration::from_millis(5)),
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
        for sync in [
            SyncPolicy::Never,
            SyncPolicy::Always,
            SyncPolicy::Interval(Duration::from_secs(3)),
        ] {
            let encoded = postcard::to_allocvec(&sync).unwrap();
            assert_eq!(postcard::from_bytes::<SyncPolicy>(&encoded).unwrap(), sync);
            let (mode, ms) = sync.to_pb();
            assert_eq!(SyncPolicy::from_pb(mode, ms), sync);
        }
        let always = SyncPolicy::Always;
        assert!(
            !always.is_due(Duration::from_millis(20)),
            "a lookup and its open share a stat"
        );
        assert!(always.is_due(SyncPolicy::ALWAYS_SHARED));
        assert!(!SyncPolicy::Never.is_due(Duration::MAX));
        assert!(SyncPolicy::Interval(Duration::from_secs(1)).is_due(Duration::from_secs(1)));
        assert_eq!("never".parse(), Ok(SyncPolicy::Never));
        assert_eq!("Always".parse(), Ok(SyncPolicy::Always));
        assert_eq!(
            "30s".parse(),
            Ok(SyncPolicy::Interval(Duration::from_secs(30)))
        );
        assert_eq!(
            "250".parse(),
            Ok(SyncPolicy::Interval(Duration::from_millis(250)))
        );
        assert!("0s".parse::<SyncPolicy>().is_err());
        assert!("soon".parse::<SyncPolicy>().is_err());
        // Mounts of earlier releases: an interval of 0 loaded once.
        assert_eq!(SyncPolicy::from_pb(0, 0), SyncPolicy::Never);
        assert_eq!(
            SyncPolicy::from_pb(0, 3000),
            SyncPolicy::Interval(Duration::from_secs(3))
        );
        let point = spec.to_point(7);
        assert_eq!(MountSpec::from_point(point), (spec.clone(), 7));
        assert_eq!(MountSpec::from_request(spec.to_request()), spec);
    }
}
