use super::{Inode, InodeId, Job, JobId, MetaStore, MountInfo, Op, StoreResult};
use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

/// Metadata on the heap. Loses everything on restart; Raft replays it.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: RwLock<State>,
}

#[derive(Debug, Default, Clone)]
struct State {
    inodes: HashMap<InodeId, Inode>,
    edges: BTreeMap<(InodeId, String), InodeId>,
    mounts: BTreeMap<String, MountInfo>,
    meta: HashMap<String, Vec<u8>>,
    jobs: BTreeMap<JobId, Job>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl State {
    fn apply(&mut self, op: Op) {
        match op {
            Op::PutInode(i) => {
                self.inodes.insert(i.id, i);
            }
            Op::DeleteInode(id) => {
                self.inodes.remove(&id);
            }
            Op::PutEdge {
                parent,
                name,
                child,
            } => {
                self.edges.insert((parent, name), child);
            }
            Op::DeleteEdge { parent, name } => {
                self.edges.remove(&(parent, name));
            }
            Op::PutMount(m) => {
                self.mounts.insert(m.path().to_owned(), m);
            }
            Op::DeleteMount(path) => {
                self.mounts.remove(&path);
            }
            Op::PutMeta(k, v) => {
                self.meta.insert(k, v);
            }
            Op::DeleteMeta(k) => {
                self.meta.remove(&k);
            }
            Op::PutJob(j) => {
                self.jobs.insert(j.id, j);
            }
            Op::DeleteJob(id) => {
                self.jobs.remove(&id);
            }
        }
    }
}

impl MetaStore for MemoryStore {
    fn inode(&self, id: InodeId) -> StoreResult<Option<Inode>> {
        Ok(self.state.read().expect("lock").inodes.get(&id).cloned())
    }

    fn child(&self, parent: InodeId, name: &str) -> StoreResult<Option<InodeId>> {
        let state = self.state.read().expect("lock");
        Ok(state.edges.get(&(parent, name.to_owned())).copied())
    }

    fn children(
        &self,
        parent: InodeId,
        start_after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(String, InodeId)>> {
        use std::ops::Bound;
        let state = self.state.read().expect("lock");
        let lower = match start_after {
            Some(name) => Bound::Excluded((parent, name.to_owned())),
            None => Bound::Included((parent, String::new())),
        };
        Ok(state
            .edges
            .range((lower, Bound::Unbounded))
            .take_while(|((p, _), _)| *p == parent)
            .take(limit)
            .map(|((_, name), id)| (name.clone(), *id))
            .collect())
    }

    fn mounts(&self) -> StoreResult<Vec<MountInfo>> {
        Ok(self
            .state
            .read()
            .expect("lock")
            .mounts
            .values()
            .cloned()
            .collect())
    }

    fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.state.read().expect("lock").meta.get(key).cloned())
    }

    fn job(&self, id: JobId) -> StoreResult<Option<Job>> {
        Ok(self.state.read().expect("lock").jobs.get(&id).cloned())
    }

    fn jobs(&self, after: Option<JobId>, limit: usize) -> StoreResult<Vec<Job>> {
        use std::ops::Bound;
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let state = self.state.read().expect("lock");
        Ok(state
            .jobs
            .range((lower, Bound::Unbounded))
            .take(limit)
            .map(|(_, j)| j.clone())
            .collect())
    }

    fn write(&self, ops: Vec<Op>) -> StoreResult<()> {
        let mut state = self.state.write().expect("lock");
        for op in ops {
            state.apply(op);
        }
        Ok(())
    }

    fn export(&self) -> StoreResult<Vec<Op>> {
        let state = self.state.read().expect("lock");
        let mut ops: Vec<Op> = state.inodes.values().cloned().map(Op::PutInode).collect();
        ops.extend(
            state
                .edges
                .iter()
                .map(|((parent, name), child)| Op::PutEdge {
                    parent: *parent,
                    name: name.clone(),
                    child: *child,
                }),
        );
        ops.extend(state.mounts.values().cloned().map(Op::PutMount));
        ops.extend(
            state
                .meta
                .iter()
                .map(|(k, v)| Op::PutMeta(k.clone(), v.clone())),
        );
        ops.extend(state.jobs.values().cloned().map(Op::PutJob));
        Ok(ops)
    }

    fn replace_all(&self, ops: Vec<Op>) -> StoreResult<()> {
        let mut fresh = State::default();
        for op in ops {
            fresh.apply(op);
        }
        *self.state.write().expect("lock") = fresh;
        Ok(())
    }
}
