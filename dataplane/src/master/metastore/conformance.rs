//! The behaviour every [`MetaStore`] must show. Each implementation's tests
//! call [`run_all`] with a factory of fresh, empty stores.

use super::{Inode, InodeKind, MetaStore, MountInfo, Op, PersistState};
use crate::master::records::{Job, JobKind, JobProgress, JobSpec, JobState};
use weir_api::{MountSpec, WriteType};

pub fn inode(id: u64, parent: u64, name: &str, kind: InodeKind) -> Inode {
    Inode {
        id,
        parent,
        name: name.to_owned(),
        kind,
        length: 0,
        block_size: 64 << 20,
        completed: true,
        mode: 0o644,
        owner: "root".into(),
        group: "root".into(),
        mtime_ms: 1,
        pinned: false,
        ttl_ms: None,
        replication_min: 0,
        persist: PersistState::Persisted,
        synced_ms: None,
        ufs_fingerprint: None,
    }
}

fn mount(path: &str) -> MountInfo {
    MountInfo {
        spec: MountSpec {
            path: path.into(),
            ufs_uri: format!("s3://bucket{path}"),
            read_only: true,
            write_type: WriteType::CacheThrough,
            sync: weir_api::SyncPolicy::Interval(std::time::Duration::from_secs(60)),
            options: [("endpoint".to_owned(), "http://127.0.0.1:9000".to_owned())].into(),
            credential_files: [("secret".to_owned(), "/etc/weir/secrets/s3".to_owned())].into(),
        },
        mount_id: 7,
    }
}

fn link(store: &dyn MetaStore, i: Inode) {
    store
        .write(vec![
            Op::PutEdge {
                parent: i.parent,
                name: i.name.clone(),
                child: i.id,
            },
            Op::PutInode(i),
        ])
        .expect("write");
}

pub fn run_all<S: MetaStore>(make: impl Fn() -> S) {
    empty_store_has_nothing(&make());
    inodes_and_edges_round_trip(&make());
    updates_and_deletes_are_visible_at_once(&make());
    children_are_paged_in_name_order_per_parent(&make());
    mounts_and_meta(&make());
    batches_apply_every_op(&make());
    jobs_are_kept_in_id_order(&make());
    export_and_replace_all_round_trip(&make(), &make());
}

fn empty_store_has_nothing(s: &dyn MetaStore) {
    assert_eq!(s.inode(1).unwrap(), None);
    assert_eq!(s.child(1, "a").unwrap(), None);
    assert!(s.children(1, None, 10).unwrap().is_empty());
    assert!(s.mounts().unwrap().is_empty());
    assert_eq!(s.meta("next_id").unwrap(), None);
    assert!(s.jobs(None, 10).unwrap().is_empty());
}

fn inodes_and_edges_round_trip(s: &dyn MetaStore) {
    let root = inode(1, 0, "", InodeKind::Directory);
    s.write(vec![Op::PutInode(root.clone())]).unwrap();
    let f = Inode {
        length: 12345,
        ttl_ms: Some(9),
        ..inode(2, 1, "données é.bin", InodeKind::File)
    };
    link(s, f.clone());
    assert_eq!(s.inode(1).unwrap(), Some(root));
    assert_eq!(s.inode(2).unwrap(), Some(f));
    assert_eq!(s.child(1, "données é.bin").unwrap(), Some(2));
    assert_eq!(s.child(1, "données").unwrap(), None);
    assert_eq!(s.child(2, "données é.bin").unwrap(), None);
}

fn updates_and_deletes_are_visible_at_once(s: &dyn MetaStore) {
    link(s, inode(5, 1, "f", InodeKind::File));
    // Read first so that a cache, if any, holds the old values.
    assert_eq!(s.inode(5).unwrap().unwrap().length, 0);
    assert_eq!(s.child(1, "f").unwrap(), Some(5));
    s.write(vec![Op::PutInode(Inode {
        length: 7,
        pinned: true,
        ..inode(5, 1, "f", InodeKind::File)
    })])
    .unwrap();
    let got = s.inode(5).unwrap().unwrap();
    assert_eq!((got.length, got.pinned), (7, true));
    s.write(vec![
        Op::DeleteEdge {
            parent: 1,
            name: "f".into(),
        },
        Op::DeleteInode(5),
    ])
    .unwrap();
    assert_eq!(s.inode(5).unwrap(), None);
    assert_eq!(s.child(1, "f").unwrap(), None);
    // Re-created under the same name with a new id.
    link(s, inode(6, 1, "f", InodeKind::File));
    assert_eq!(s.child(1, "f").unwrap(), Some(6));
}

fn children_are_paged_in_name_order_per_parent(s: &dyn MetaStore) {
    // Parents 1 and 256 differ only in one byte of their big-endian key
    // prefix: a listing must never run into a neighbour's children.
    for (parent, count) in [(1u64, 250u64), (256, 3), (2, 1)] {
        for n in 0..count {
            link(
                s,
                inode(
                    parent * 1000 + n,
                    parent,
                    &format!("n{n:04}"),
                    InodeKind::File,
                ),
            );
        }
    }
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = s.children(1, cursor.as_deref(), 100).unwrap();
        assert!(page.len() <= 100);
        if page.is_empty() {
            break;
        }
        cursor = Some(page.last().unwrap().0.clone());
        all.extend(page);
    }
    let names: Vec<_> = all.iter().map(|(n, _)| n.clone()).collect();
    let expected: Vec<_> = (0..250).map(|n| format!("n{n:04}")).collect();
    assert_eq!(names, expected);
    assert_eq!(all[7].1, 1007);
    assert_eq!(s.children(256, None, 10).unwrap().len(), 3);
    assert_eq!(s.children(2, Some("n0000"), 10).unwrap(), vec![]);
    assert_eq!(
        s.children(1, Some("n0248"), 10).unwrap(),
        vec![("n0249".to_owned(), 1249)]
    );
    assert_eq!(s.children(1, Some("zzz"), 10).unwrap(), vec![]);
    assert_eq!(s.children(3, None, 10).unwrap(), vec![]);
}

fn mounts_and_meta(s: &dyn MetaStore) {
    s.write(vec![Op::PutMount(mount("/b")), Op::PutMount(mount("/a"))])
        .unwrap();
    let paths: Vec<_> = s
        .mounts()
        .unwrap()
        .into_iter()
        .map(|m| m.spec.path)
        .collect();
    assert_eq!(paths, ["/a", "/b"]);
    assert_eq!(s.mounts().unwrap()[0], mount("/a"));
    s.write(vec![
        Op::DeleteMount("/a".into()),
        Op::PutMeta("next_id".into(), vec![1, 2]),
    ])
    .unwrap();
    assert_eq!(s.mounts().unwrap(), vec![mount("/b")]);
    assert_eq!(s.meta("next_id").unwrap(), Some(vec![1, 2]));
    s.write(vec![Op::PutMeta("next_id".into(), vec![3])])
        .unwrap();
    assert_eq!(s.meta("next_id").unwrap(), Some(vec![3]));
    s.write(vec![Op::DeleteMeta("next_id".into())]).unwrap();
    assert_eq!(s.meta("next_id").unwrap(), None);
}

fn batches_apply_every_op(s: &dyn MetaStore) {
    let ops: Vec<Op> = (10..60)
        .flat_map(|id| {
            let i = inode(id, 1, &format!("b{id}"), InodeKind::File);
            [
                Op::PutEdge {
                    parent: 1,
                    name: i.name.clone(),
                    child: id,
                },
                Op::PutInode(i),
            ]
        })
        .chain([Op::PutMeta("applied".into(), vec![9])])
        .collect();
    s.write(ops).unwrap();
    assert_eq!(s.children(1, None, 1000).unwrap().len(), 50);
    assert!(s.inode(59).unwrap().is_some());
    assert_eq!(s.meta("applied").unwrap(), Some(vec![9]));
}

pub fn job(id: u64, path: &str) -> Job {
    Job {
        id,
        spec: JobSpec {
            kind: JobKind::Load,
            paths: vec![path.to_owned()],
            replicas: 2,
            parallelism: 0,
            bandwidth: 0,
            load_metadata: true,
            load_what_fits: false,
        },
        state: JobState::Pending,
        progress: JobProgress::default(),
        message: None,
        submitted_ms: id * 10,
        started_ms: None,
        finished_ms: None,
    }
}

fn jobs_are_kept_in_id_order(s: &dyn MetaStore) {
    // Ids past 255 catch stores that order keys as text or little-endian.
    let ids = [300u64, 2, 256, 1, 40];
    s.write(
        ids.iter()
            .map(|&id| Op::PutJob(job(id, &format!("/d{id}"))))
            .collect(),
    )
    .unwrap();
    let all: Vec<u64> = s.jobs(None, 100).unwrap().iter().map(|j| j.id).collect();
    assert_eq!(all, [1, 2, 40, 256, 300]);
    let page: Vec<u64> = s.jobs(Some(2), 2).unwrap().iter().map(|j| j.id).collect();
    assert_eq!(page, [40, 256]);
    assert!(s.jobs(Some(300), 10).unwrap().is_empty());
    assert_eq!(s.job(256).unwrap(), Some(job(256, "/d256")));
    let mut running = job(40, "/d40");
    running.state = JobState::Running;
    running.progress.bytes_done = 7;
    running
        .progress
        .record_failure(3, "/d40/x".into(), "not found".into());
    s.write(vec![Op::PutJob(running.clone()), Op::DeleteJob(2)])
        .unwrap();
    assert_eq!(s.job(40).unwrap(), Some(running));
    assert_eq!(s.job(2).unwrap(), None);
    assert_eq!(s.job(3).unwrap(), None);
    assert_eq!(s.jobs(None, 100).unwrap().len(), 4);
}

fn export_and_replace_all_round_trip(source: &dyn MetaStore, target: &dyn MetaStore) {
    source
        .write(vec![Op::PutInode(inode(1, 0, "", InodeKind::Directory))])
        .unwrap();
    link(source, inode(2, 1, "x", InodeKind::Directory));
    link(source, inode(3, 2, "y", InodeKind::File));
    source
        .write(vec![
            Op::PutMount(mount("/x")),
            Op::PutMeta("k".into(), vec![4]),
            Op::PutJob(job(5, "/x")),
        ])
        .unwrap();

    link(target, inode(99, 1, "stale", InodeKind::File));
    target
        .write(vec![
            Op::PutMount(mount("/stale")),
            Op::PutMeta("old".into(), vec![1]),
            Op::PutJob(job(9, "/stale")),
        ])
        .unwrap();
    assert!(
        target.inode(99).unwrap().is_some(),
        "cached before the replace"
    );

    target.replace_all(source.export().unwrap()).unwrap();
    assert_eq!(target.inode(99).unwrap(), None);
    assert_eq!(target.child(1, "stale").unwrap(), None);
    assert_eq!(target.meta("old").unwrap(), None);
    assert_eq!(target.mounts().unwrap(), vec![mount("/x")]);
    assert_eq!(target.child(2, "y").unwrap(), Some(3));
    assert_eq!(target.inode(3).unwrap(), source.inode(3).unwrap());
    assert_eq!(target.meta("k").unwrap(), Some(vec![4]));
    assert_eq!(target.job(9).unwrap(), None);
    assert_eq!(target.jobs(None, 10).unwrap(), vec![job(5, "/x")]);
    let mut a = source.export().unwrap();
    let mut b = target.export().unwrap();
    let key = |op: &Op| format!("{op:?}");
    a.sort_by_key(key);
    b.sort_by_key(key);
    assert_eq!(a, b);
}

#[cfg(test)]
mod tests {
    use super::run_all;
    use crate::master::metastore::{MemoryStore, RocksStore};

    #[test]
    fn memory_store_conforms() {
        run_all(MemoryStore::new);
    }

    #[test]
    fn rocks_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let counter = std::sync::atomic::AtomicU32::new(0);
        run_all(|| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            RocksStore::open(&dir.path().join(n.to_string()), 64).unwrap()
        });
    }

    #[test]
    fn rocks_store_survives_reopen_and_checkpoints() {
        use crate::master::metastore::{MetaStore, Op};
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RocksStore::open(&dir.path().join("db"), 8).unwrap();
            super::link(&s, super::inode(2, 1, "kept", super::InodeKind::File));
            s.write(vec![Op::PutMeta("applied".into(), vec![5])])
                .unwrap();
            s.checkpoint(&dir.path().join("snap")).unwrap();
        }
        let reopened = RocksStore::open(&dir.path().join("db"), 8).unwrap();
        assert_eq!(reopened.child(1, "kept").unwrap(), Some(2));
        let snap = RocksStore::open(&dir.path().join("snap"), 8).unwrap();
        assert_eq!(snap.meta("applied").unwrap(), Some(vec![5]));
    }
}
