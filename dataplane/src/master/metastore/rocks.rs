use super::{
    Inode, InodeId, Job, JobId, MetaStore, MountInfo, Op, StoreError, StoreResult, decode, encode,
};
use lru::LruCache;
use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Mutex;

const CF_INODES: &str = "inodes";
const CF_EDGES: &str = "edges";
const CF_MOUNTS: &str = "mounts";
const CF_META: &str = "meta";
const CF_JOBS: &str = "jobs";
const ALL_CFS: [&str; 5] = [CF_INODES, CF_EDGES, CF_MOUNTS, CF_META, CF_JOBS];

/// A raw key and value as RocksDB iterators yield them.
type RawEntry = (Box<[u8]>, Box<[u8]>);

/// Metadata in RocksDB, one column family per kind, with bounded LRU caches
/// of inodes and edges in front (path resolution reads both for every
/// component, and the hot part of a namespace is small).
pub struct RocksStore {
    db: DB,
    inodes: Mutex<LruCache<InodeId, Inode>>,
    edges: Mutex<LruCache<(InodeId, String), InodeId>>,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.db.path())
            .finish()
    }
}

fn be_u64(bytes: &[u8]) -> StoreResult<u64> {
    let array: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "expected an 8-byte big-endian id",
            )
        })?;
    Ok(u64::from_be_bytes(array))
}

fn edge_key(parent: InodeId, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + name.len());
    key.extend_from_slice(&parent.to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

impl RocksStore {
    /// Opens (or creates) the store at `path`, caching up to `cache_entries`
    /// inodes and as many edges.
    pub fn open(path: &Path, cache_entries: usize) -> StoreResult<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        let cfs = ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let cap = NonZeroUsize::new(cache_entries.max(1)).expect("non-zero");
        Ok(Self {
            db,
            inodes: Mutex::new(LruCache::new(cap)),
            edges: Mutex::new(LruCache::new(cap)),
        })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    fn batch_op(&self, batch: &mut WriteBatch, op: &Op) -> StoreResult<()> {
        match op {
            Op::PutInode(i) => batch.put_cf(self.cf(CF_INODES), i.id.to_be_bytes(), encode(i)?),
            Op::DeleteInode(id) => batch.delete_cf(self.cf(CF_INODES), id.to_be_bytes()),
            Op::PutEdge {
                parent,
                name,
                child,
            } => batch.put_cf(
                self.cf(CF_EDGES),
                edge_key(*parent, name),
                child.to_be_bytes(),
            ),
            Op::DeleteEdge { parent, name } => {
                batch.delete_cf(self.cf(CF_EDGES), edge_key(*parent, name))
            }
            Op::PutMount(m) => batch.put_cf(self.cf(CF_MOUNTS), m.path().as_bytes(), encode(m)?),
            Op::DeleteMount(path) => batch.delete_cf(self.cf(CF_MOUNTS), path.as_bytes()),
            Op::PutMeta(k, v) => batch.put_cf(self.cf(CF_META), k.as_bytes(), v),
            Op::DeleteMeta(k) => batch.delete_cf(self.cf(CF_META), k.as_bytes()),
            Op::PutJob(j) => batch.put_cf(self.cf(CF_JOBS), j.id.to_be_bytes(), encode(j)?),
            Op::DeleteJob(id) => batch.delete_cf(self.cf(CF_JOBS), id.to_be_bytes()),
        }
        Ok(())
    }

    /// Brings the caches in line with ops that were just written.
    fn update_caches(&self, ops: Vec<Op>) {
        let mut inodes = self.inodes.lock().expect("lock");
        let mut edges = self.edges.lock().expect("lock");
        for op in ops {
            match op {
                Op::PutInode(i) => {
                    inodes.put(i.id, i);
                }
                Op::DeleteInode(id) => {
                    inodes.pop(&id);
                }
                Op::PutEdge {
                    parent,
                    name,
                    child,
                } => {
                    edges.put((parent, name), child);
                }
                Op::DeleteEdge { parent, name } => {
                    edges.pop(&(parent, name));
                }
                Op::PutMount(_)
                | Op::DeleteMount(_)
                | Op::PutMeta(..)
                | Op::DeleteMeta(_)
                | Op::PutJob(_)
                | Op::DeleteJob(_) => {}
            }
        }
    }

    fn scan(&self, cf: &str) -> impl Iterator<Item = StoreResult<RawEntry>> + '_ {
        self.db
            .iterator_cf(self.cf(cf), IteratorMode::Start)
            .map(|r| r.map_err(Into::into))
    }

    /// Syncs the write-ahead log: everything written so far survives a
    /// machine crash.
    pub fn sync(&self) -> StoreResult<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// A consistent on-disk copy of the store (RocksDB checkpoint: hard
    /// links, so cheap) for Raft snapshots.
    pub fn checkpoint(&self, dir: &Path) -> StoreResult<()> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(dir)?;
        Ok(())
    }
}

impl MetaStore for RocksStore {
    fn inode(&self, id: InodeId) -> StoreResult<Option<Inode>> {
        if let Some(i) = self.inodes.lock().expect("lock").get(&id) {
            return Ok(Some(i.clone()));
        }
        let Some(bytes) = self
            .db
            .get_pinned_cf(self.cf(CF_INODES), id.to_be_bytes())?
        else {
            return Ok(None);
        };
        let inode: Inode = decode("inode", &bytes)?;
        self.inodes.lock().expect("lock").put(id, inode.clone());
        Ok(Some(inode))
    }

    fn child(&self, parent: InodeId, name: &str) -> StoreResult<Option<InodeId>> {
        let key = (parent, name.to_owned());
        if let Some(id) = self.edges.lock().expect("lock").get(&key) {
            return Ok(Some(*id));
        }
        let Some(bytes) = self
            .db
            .get_pinned_cf(self.cf(CF_EDGES), edge_key(parent, name))?
        else {
            return Ok(None);
        };
        let id = be_u64(&bytes)?;
        self.edges.lock().expect("lock").put(key, id);
        Ok(Some(id))
    }

    fn children(
        &self,
        parent: InodeId,
        start_after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(String, InodeId)>> {
        let prefix = parent.to_be_bytes();
        let from = edge_key(parent, start_after.unwrap_or(""));
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_EDGES),
            IteratorMode::From(&from, Direction::Forward),
        ) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let name = String::from_utf8_lossy(&key[8..]).into_owned();
            if start_after == Some(name.as_str()) {
                continue;
            }
            let child = be_u64(&value)?;
            out.push((name, child));
        }
        Ok(out)
    }

    fn mounts(&self) -> StoreResult<Vec<MountInfo>> {
        self.scan(CF_MOUNTS)
            .map(|r| r.and_then(|(_, v)| decode("mount", &v)))
            .collect()
    }

    fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_META), key.as_bytes())?)
    }

    fn job(&self, id: JobId) -> StoreResult<Option<Job>> {
        match self.db.get_pinned_cf(self.cf(CF_JOBS), id.to_be_bytes())? {
            Some(bytes) => Ok(Some(decode("job", &bytes)?)),
            None => Ok(None),
        }
    }

    fn jobs(&self, after: Option<JobId>, limit: usize) -> StoreResult<Vec<Job>> {
        let from = after.map_or(0, |a| a.saturating_add(1)).to_be_bytes();
        let mut out = Vec::new();
        if after == Some(JobId::MAX) {
            return Ok(out);
        }
        for item in self.db.iterator_cf(
            self.cf(CF_JOBS),
            IteratorMode::From(&from, Direction::Forward),
        ) {
            if out.len() >= limit {
                break;
            }
            out.push(decode("job", &item?.1)?);
        }
        Ok(out)
    }

    fn write(&self, ops: Vec<Op>) -> StoreResult<()> {
        let mut batch = WriteBatch::default();
        for op in &ops {
            self.batch_op(&mut batch, op)?;
        }
        // Not synced: the Raft log (synced) replays whatever a crash loses.
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        self.db.write_opt(batch, &wo)?;
        self.update_caches(ops);
        Ok(())
    }

    fn export(&self) -> StoreResult<Vec<Op>> {
        // One RocksDB snapshot for every column family: the export is a
        // single point in time even while writes go on.
        let snap = self.db.snapshot();
        let scan = |cf: &str| {
            snap.iterator_cf(self.cf(cf), IteratorMode::Start)
                .map(|r| r.map_err(StoreError::from))
                .collect::<Vec<StoreResult<RawEntry>>>()
        };
        let mut ops = Vec::new();
        for item in scan(CF_INODES) {
            ops.push(Op::PutInode(decode("inode", &item?.1)?));
        }
        for item in scan(CF_EDGES) {
            let (k, v) = item?;
            let (parent, child) = (be_u64(&k)?, be_u64(&v)?);
            ops.push(Op::PutEdge {
                parent,
                name: String::from_utf8_lossy(&k[8..]).into_owned(),
                child,
            });
        }
        for item in scan(CF_MOUNTS) {
            ops.push(Op::PutMount(decode("mount", &item?.1)?));
        }
        for item in scan(CF_META) {
            let (k, v) = item?;
            ops.push(Op::PutMeta(
                String::from_utf8_lossy(&k).into_owned(),
                v.into_vec(),
            ));
        }
        for item in scan(CF_JOBS) {
            ops.push(Op::PutJob(decode("job", &item?.1)?));
        }
        Ok(ops)
    }

    fn replace_all(&self, ops: Vec<Op>) -> StoreResult<()> {
        let mut batch = WriteBatch::default();
        for cf in ALL_CFS {
            for item in self.scan(cf) {
                batch.delete_cf(self.cf(cf), item?.0);
            }
        }
        for op in &ops {
            self.batch_op(&mut batch, op)?;
        }
        self.db.write(batch)?;
        self.inodes.lock().expect("lock").clear();
        self.edges.lock().expect("lock").clear();
        Ok(())
    }
}
