//! Random command sequences: the tree stays consistent, and the RocksDB
//! and in-memory stores end in the same state.

use super::*;
use crate::master::command::{AttrUpdate, UfsEntry};
use crate::master::metastore::{MemoryStore, RocksStore};
use crate::master::state::ReplicatedState;
use proptest::prelude::*;
use std::collections::BTreeMap;
use weir_api::{MountSpec, SyncPolicy, WriteType};

fn path_strategy() -> impl Strategy<Value = String> {
    // Mostly valid paths over a tiny alphabet (so commands collide),
    // sometimes raw junk.
    prop_oneof![
        4 => proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..4)
            .prop_map(|v| format!("/{}", v.join("/"))),
        1 => "\\PC{0,12}",
        1 => Just("/a/../b".to_owned()),
    ]
}

fn command_strategy() -> impl Strategy<Value = Command> {
    let stamp = Stamp {
        owner: "u".into(),
        group: "g".into(),
        mode: 0o755,
        now_ms: 1,
    };
    prop_oneof![
        (path_strategy(), any::<bool>()).prop_map({
            let stamp = stamp.clone();
            move |(path, recursive)| Command::CreateDirectory {
                path,
                recursive,
                stamp: stamp.clone(),
            }
        }),
        (path_strategy(), any::<bool>()).prop_map(move |(path, recursive)| {
            Command::CreateFile {
                path,
                recursive,
                block_size: 4096,
                stamp: stamp.clone(),
            }
        }),
        (path_strategy(), 0u64..10_000).prop_map(|(path, length)| Command::CompleteFile {
            path,
            length,
            now_ms: 2
        }),
        (path_strategy(), any::<bool>())
            .prop_map(|(path, recursive)| Command::Delete { path, recursive }),
        (path_strategy(), path_strategy()).prop_map(|(src, dst)| Command::Rename {
            src,
            dst,
            now_ms: 3
        }),
        (path_strategy(), any::<bool>()).prop_map(|(path, pinned)| Command::SetAttribute {
            path,
            update: AttrUpdate {
                pinned: Some(pinned),
                ..AttrUpdate::default()
            }
        }),
        path_strategy().prop_map(|path| Command::Mount(MountSpec {
            path,
            ufs_uri: "s3://bucket/x".into(),
            read_only: false,
            write_type: WriteType::MustCache,
            sync: SyncPolicy::Never,
            options: BTreeMap::new(),
            credential_files: BTreeMap::new(),
        })),
        path_strategy().prop_map(|path| Command::Unmount { path }),
        (
            path_strategy(),
            proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("..")], 0..3)
        )
            .prop_map(|(dir, names)| Command::LoadVersionedListing {
                dir,
                entries: names
                    .iter()
                    .map(|n| UfsEntry {
                        name: (*n).into(),
                        is_dir: n == &"a",
                        length: 1,
                        mtime_ms: 1,
                        version: String::new(),
                        mode: None,
                        uid: None,
                        gid: None,
                        link: None,
                    })
                    .collect(),
                vanished: vec!["b".into()],
                complete: true,
                now_ms: 4,
            }),
    ]
}

/// Every edge names an inode whose parent and name agree; every inode
/// but the root is reachable by exactly one edge; the count is exact.
fn check_invariants(ns: &Namespace) {
    let ops = ns.store().export().unwrap();
    let mut inodes = BTreeMap::new();
    let mut edges = Vec::new();
    for op in ops {
        match op {
            Op::PutInode(i) => {
                inodes.insert(i.id, i);
            }
            Op::PutEdge {
                parent,
                name,
                child,
            } => edges.push((parent, name, child)),
            _ => {}
        }
    }
    assert!(inodes.contains_key(&ROOT_ID));
    let mut linked = std::collections::BTreeSet::new();
    for (parent, name, child) in &edges {
        let c = inodes.get(child).expect("edge to a missing inode");
        assert_eq!(
            (&c.parent, &c.name),
            (parent, name),
            "edge and inode disagree"
        );
        assert!(
            inodes
                .get(parent)
                .expect("edge from a missing parent")
                .is_dir(),
            "parent is a file"
        );
        assert!(linked.insert(*child), "inode {child} linked twice");
    }
    assert_eq!(linked.len() + 1, inodes.len(), "orphan inodes");
    assert_eq!(ns.inode_count().unwrap(), inodes.len() as u64);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_commands_keep_the_tree_consistent(cmds in proptest::collection::vec(command_strategy(), 1..40)) {
        let state = ReplicatedState::open(Arc::new(MemoryStore::new())).unwrap();
        for cmd in &cmds {
            let _ = state.apply(cmd, vec![]);
            check_invariants(state.namespace());
        }
    }

    #[test]
    fn memory_and_rocks_agree(cmds in proptest::collection::vec(command_strategy(), 1..25)) {
        let dir = tempfile::tempdir().unwrap();
        let mem = ReplicatedState::open(Arc::new(MemoryStore::new())).unwrap();
        let rocks = ReplicatedState::open(Arc::new(RocksStore::open(dir.path(), 16).unwrap())).unwrap();
        for cmd in &cmds {
            prop_assert_eq!(mem.apply(cmd, vec![]), rocks.apply(cmd, vec![]));
        }
        let key = |op: &Op| format!("{op:?}");
        let (mut a, mut b) = (mem.namespace().store().export().unwrap(), rocks.namespace().store().export().unwrap());
        a.sort_by_key(key);
        b.sort_by_key(key);
        prop_assert_eq!(a, b);
    }
}
