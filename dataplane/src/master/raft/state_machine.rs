//! The replicated state (namespace and job table) as openraft's state
//! machine. Each entry's effects and the
//! new applied log id (and membership) are written in one batch, so after a
//! crash the store is exactly "everything up to the applied id".

use super::{
    Applied, Entry, LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
    io_err,
};
use crate::master::command::{Command, FsError};
use crate::master::metastore::{MetaStore, Op};
use crate::master::state::ReplicatedState;
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

const META_APPLIED: &str = "raft_applied";
const META_MEMBERSHIP: &str = "raft_membership";

/// A built snapshot as stored on disk: its metadata and the store content.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    ops: Vec<SnapshotOp>,
}

/// [`Op`] in a serialisable form (only the puts a full export contains).
#[derive(Serialize, Deserialize)]
enum SnapshotOp {
    Inode(crate::master::records::Inode),
    Edge {
        parent: u64,
        name: String,
        child: u64,
    },
    Mount(crate::master::records::MountInfo),
    Meta(String, Vec<u8>),
    Job(crate::master::records::Job),
}

impl SnapshotOp {
    fn from_op(op: Op) -> Option<Self> {
        match op {
            Op::PutInode(i) => Some(Self::Inode(i)),
            Op::PutEdge {
                parent,
                name,
                child,
            } => Some(Self::Edge {
                parent,
                name,
                child,
            }),
            Op::PutMount(m) => Some(Self::Mount(m)),
            Op::PutMeta(k, v) => Some(Self::Meta(k, v)),
            Op::PutJob(j) => Some(Self::Job(j)),
            Op::DeleteInode(_)
            | Op::DeleteEdge { .. }
            | Op::DeleteMount(_)
            | Op::DeleteMeta(_)
            | Op::DeleteJob(_) => None,
        }
    }

    fn into_op(self) -> Op {
        match self {
            Self::Inode(i) => Op::PutInode(i),
            Self::Edge {
                parent,
                name,
                child,
            } => Op::PutEdge {
                parent,
                name,
                child,
            },
            Self::Mount(m) => Op::PutMount(m),
            Self::Meta(k, v) => Op::PutMeta(k, v),
            Self::Job(j) => Op::PutJob(j),
        }
    }
}

/// Forces a metadata store's buffered writes to disk.
pub type SyncFn = Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

/// The replicated state. Cloning shares the store.
#[derive(Clone)]
pub struct StateMachine {
    ns: ReplicatedState,
    snapshot_dir: PathBuf,
    /// Forces the store's buffered writes to disk (RocksDB WAL sync); called
    /// before a snapshot lets openraft purge the log behind it.
    sync: SyncFn,
    /// Seconds to apply one entry (including its metadata write).
    apply_latency: prometheus_client::metrics::histogram::Histogram,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("snapshot_dir", &self.snapshot_dir)
            .finish()
    }
}

fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(io_err)
}

fn decode<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(io_err)
}

impl StateMachine {
    pub fn new(store: Arc<dyn MetaStore>, snapshot_dir: PathBuf, sync: SyncFn) -> io::Result<Self> {
        std::fs::create_dir_all(&snapshot_dir)?;
        let ns = ReplicatedState::open(store).map_err(io_err)?;
        let apply_latency = prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.00001, 2.0, 18),
        );
        Ok(Self {
            ns,
            snapshot_dir,
            sync,
            apply_latency,
        })
    }

    pub fn state(&self) -> &ReplicatedState {
        &self.ns
    }

    /// The apply-latency histogram, for registering with `/metrics`.
    pub fn apply_latency(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.apply_latency.clone()
    }

    fn current_path(&self) -> PathBuf {
        self.snapshot_dir.join("current.snap")
    }

    fn read_applied(&self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let store = self.ns.store();
        let applied = match store.meta(META_APPLIED).map_err(io_err)? {
            Some(b) => decode(&b)?,
            None => None,
        };
        let membership = match store.meta(META_MEMBERSHIP).map_err(io_err)? {
            Some(b) => decode(&b)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    /// Writes a snapshot file atomically (temp file, fsync, rename).
    fn save_snapshot(&self, snap: &StoredSnapshot) -> io::Result<Vec<u8>> {
        let bytes = encode(snap)?;
        let tmp = self.snapshot_dir.join("current.snap.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.current_path())?;
        Ok(bytes)
    }

    fn load_snapshot(&self) -> io::Result<Option<(StoredSnapshot, Vec<u8>)>> {
        match std::fs::read(self.current_path()) {
            Ok(bytes) => Ok(Some((decode(&bytes)?, bytes))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        (self.sync)()?;
        // The applied id and membership come from the export itself: the
        // state machine keeps applying while a snapshot is built, so a
        // separate read could describe a different point in time.
        let ops = self.ns.store().export().map_err(io_err)?;
        let (mut last_log_id, mut last_membership) = (None, StoredMembership::default());
        for op in &ops {
            match op {
                Op::PutMeta(k, v) if k == META_APPLIED => last_log_id = decode(v)?,
                Op::PutMeta(k, v) if k == META_MEMBERSHIP => last_membership = decode(v)?,
                _ => {}
            }
        }
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            ops: ops.into_iter().filter_map(SnapshotOp::from_op).collect(),
        };
        let bytes = self.save_snapshot(&stored)?;
        Ok(Snapshot {
            meta,
            snapshot: std::io::Cursor::new(bytes),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        self.read_applied()
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let entry: Entry = entry;
            let started = std::time::Instant::now();
            let mut extra = vec![Op::PutMeta(
                META_APPLIED.into(),
                encode(&Some(entry.log_id))?,
            )];
            let reply = match entry.payload {
                EntryPayload::Blank => self.ns.apply(&Command::Noop, extra),
                EntryPayload::Normal(cmd) => self.ns.apply(&cmd, extra),
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(entry.log_id), m);
                    extra.push(Op::PutMeta(META_MEMBERSHIP.into(), encode(&stored)?));
                    self.ns.apply(&Command::Noop, extra)
                }
            };
            // A failed command is a result for its caller; only a failing
            // store stops the state machine.
            if let Err(FsError::Store(e)) = &reply {
                return Err(io_err(e));
            }
            self.apply_latency.observe(started.elapsed().as_secs_f64());
            if let Some(r) = responder {
                r.send(Applied(reply));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        let bytes = snapshot.into_inner();
        let stored: StoredSnapshot = decode(&bytes)?;
        let mut ops: Vec<Op> = stored.ops.into_iter().map(SnapshotOp::into_op).collect();
        // The snapshot's own applied id and membership win over whatever the
        // exported store held at build time.
        ops.push(Op::PutMeta(META_APPLIED.into(), encode(&meta.last_log_id)?));
        ops.push(Op::PutMeta(
            META_MEMBERSHIP.into(),
            encode(&meta.last_membership)?,
        ));
        self.ns.store().replace_all(ops).map_err(io_err)?;
        self.ns.reload();
        self.save_snapshot(&StoredSnapshot {
            meta: meta.clone(),
            ops: Vec::new(),
        })
        .map(|_| ())?;
        // Keep the full content as the current snapshot so this node can
        // serve it to others.
        let full = self.ns.store().export().map_err(io_err)?;
        self.save_snapshot(&StoredSnapshot {
            meta: meta.clone(),
            ops: full.into_iter().filter_map(SnapshotOp::from_op).collect(),
        })?;
        (self.sync)()
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        Ok(self.load_snapshot()?.map(|(stored, bytes)| Snapshot {
            meta: stored.meta,
            snapshot: std::io::Cursor::new(bytes),
        }))
    }
}
