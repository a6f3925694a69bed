//! The namespace's commands, one behaviour per test, through the state
//! machine that applies them.

use super::*;
use crate::master::command::UfsEntry;
use crate::master::metastore::MemoryStore;
use crate::master::state::ReplicatedState;
use std::collections::BTreeMap;
use weir_api::{MountSpec, SyncPolicy, WriteType};

/// The replicated state, read as its namespace.
pub(super) struct Ns(ReplicatedState);

impl std::ops::Deref for Ns {
    type Target = Namespace;

    fn deref(&self) -> &Namespace {
        self.0.namespace()
    }
}

impl Ns {
    pub(super) fn apply(&self, cmd: &Command, extra: Vec<Op>) -> FsResult<Reply> {
        self.0.apply(cmd, extra)
    }
}

pub(super) fn ns() -> Ns {
    Ns(ReplicatedState::open(Arc::new(MemoryStore::new())).unwrap())
}

pub(super) fn stamp() -> Stamp {
    Stamp {
        owner: "alice".into(),
        group: "data".into(),
        mode: 0o755,
        now_ms: 1000,
    }
}

pub(super) fn p(s: &str) -> WeirPath {
    WeirPath::parse(s).unwrap()
}

#[test]
fn seeded_ids_start_far_up_and_are_seeded_once() {
    let ns = ns();
    assert!(!ns.ids_seeded().unwrap());
    let seed = random_id_seed();
    assert!((SEEDED_IDS_FLOOR..(1 << 39)).contains(&seed));
    ns.apply(&Command::SeedInodeIds { start: seed }, vec![])
        .unwrap();
    assert!(ns.ids_seeded().unwrap());
    let create = |path: &str| match ns
        .apply(
            &Command::CreateDirectory {
                path: path.into(),
                recursive: false,
                stamp: stamp(),
            },
            vec![],
        )
        .unwrap()
    {
        Reply::Inode(i) => i.id,
        other => panic!("{other:?}"),
    };
    assert_eq!(create("/a"), seed);
    let mounted = ns
        .apply(
            &Command::Mount(MountSpec {
                path: "/m".into(),
                ufs_uri: "local:///tmp".into(),
                read_only: true,
                write_type: WriteType::CacheThrough,
                sync: SyncPolicy::Never,
                options: Default::default(),
                credential_files: Default::default(),
            }),
            vec![],
        )
        .unwrap();
    assert_eq!(
        mounted,
        Reply::Mounted { mount_id: seed },
        "mount ids are seeded too"
    );
    // A second seed (another leader's) changes nothing.
    ns.apply(
        &Command::SeedInodeIds {
            start: SEEDED_IDS_FLOOR + 7,
        },
        vec![],
    )
    .unwrap();
    assert_eq!(
        create("/b"),
        seed + 2,
        "the mount's directory took seed + 1"
    );
}

#[test]
fn path_of_an_id_follows_renames_and_forgets_deleted_inodes() {
    let ns = ns();
    let mkdir = |path: &str| match ns
        .apply(
            &Command::CreateDirectory {
                path: path.into(),
                recursive: true,
                stamp: stamp(),
            },
            vec![],
        )
        .unwrap()
    {
        Reply::Inode(i) => i.id,
        other => panic!("{other:?}"),
    };
    let deep = mkdir("/a/b/c");
    assert_eq!(ns.path_of(deep).unwrap(), Some(p("/a/b/c")));
    assert_eq!(ns.path_of(ROOT_ID).unwrap(), Some(WeirPath::root()));
    ns.apply(
        &Command::Rename {
            src: "/a/b".into(),
            dst: "/a/z".into(),
            now_ms: 2,
        },
        vec![],
    )
    .unwrap();
    assert_eq!(ns.path_of(deep).unwrap(), Some(p("/a/z/c")));
    ns.apply(
        &Command::Delete {
            path: "/a".into(),
            recursive: true,
        },
        vec![],
    )
    .unwrap();
    assert_eq!(ns.path_of(deep).unwrap(), None);
    assert_eq!(ns.path_of(9_999).unwrap(), None);
}

pub(super) fn mkdir(ns: &Ns, path: &str, recursive: bool) -> FsResult<Reply> {
    ns.apply(
        &Command::CreateDirectory {
            path: path.into(),
            recursive,
            stamp: stamp(),
        },
        vec![],
    )
}

pub(super) fn touch(ns: &Ns, path: &str) -> FsResult<Reply> {
    ns.apply(
        &Command::CreateFile {
            path: path.into(),
            recursive: false,
            block_size: 1 << 20,
            stamp: stamp(),
        },
        vec![],
    )?;
    ns.apply(
        &Command::CompleteFile {
            path: path.into(),
            length: 5,
            now_ms: 2000,
        },
        vec![],
    )
}

pub(super) fn mount(ns: &Ns, path: &str, read_only: bool) -> FsResult<Reply> {
    ns.apply(
        &Command::Mount(MountSpec {
            path: path.into(),
            ufs_uri: "s3://bucket/prefix".into(),
            read_only,
            write_type: WriteType::CacheThrough,
            sync: SyncPolicy::Never,
            options: BTreeMap::new(),
            credential_files: BTreeMap::new(),
        }),
        vec![],
    )
}

#[test]
fn creates_nested_files_and_counts_inodes() {
    let ns = ns();
    assert!(matches!(
        mkdir(&ns, "/a/b", false),
        Err(FsError::NotFound(_))
    ));
    mkdir(&ns, "/a/b", true).unwrap();
    touch(&ns, "/a/b/f").unwrap();
    let f = ns.get(&p("/a/b/f")).unwrap();
    assert_eq!(
        (f.length, f.completed, f.owner.as_str()),
        (5, true, "alice")
    );
    assert_eq!(ns.inode_count().unwrap(), 4);
    assert!(matches!(
        touch(&ns, "/a/b/f"),
        Err(FsError::AlreadyExists(_))
    ));
    assert!(matches!(
        mkdir(&ns, "/a", false),
        Err(FsError::AlreadyExists(_))
    ));
    assert!(
        mkdir(&ns, "/a", true).is_ok(),
        "recursive mkdir of an existing dir is fine"
    );
}

#[test]
fn bad_requests_get_the_right_error() {
    let ns = ns();
    touch(&ns, "/file").unwrap();
    assert!(matches!(
        touch(&ns, "/file/child"),
        Err(FsError::FailedPrecondition(_))
    ));
    assert!(matches!(
        touch(&ns, "relative"),
        Err(FsError::InvalidArgument(_))
    ));
    assert!(matches!(
        touch(&ns, "/a/../b"),
        Err(FsError::InvalidArgument(_))
    ));
    assert!(matches!(
        touch(&ns, "/a\0"),
        Err(FsError::InvalidArgument(_))
    ));
    assert!(matches!(
        touch(&ns, "//x"),
        Err(FsError::InvalidArgument(_))
    ));
    let done = ns.apply(
        &Command::CompleteFile {
            path: "/file".into(),
            length: 1,
            now_ms: 1,
        },
        vec![],
    );
    assert!(
        matches!(done, Err(FsError::FailedPrecondition(_))),
        "completing twice"
    );
    mkdir(&ns, "/d/e", true).unwrap();
    let del = ns.apply(
        &Command::Delete {
            path: "/d".into(),
            recursive: false,
        },
        vec![],
    );
    assert!(
        matches!(del, Err(FsError::FailedPrecondition(_))),
        "non-recursive delete of a non-empty dir"
    );
    let del = ns.apply(
        &Command::Delete {
            path: "/missing".into(),
            recursive: true,
        },
        vec![],
    );
    assert!(matches!(del, Err(FsError::NotFound(_))));
    let del = ns.apply(
        &Command::Delete {
            path: "/".into(),
            recursive: true,
        },
        vec![],
    );
    assert!(matches!(del, Err(FsError::InvalidArgument(_))));
    let mv = ns.apply(
        &Command::Rename {
            src: "/d".into(),
            dst: "/d/e/f".into(),
            now_ms: 1,
        },
        vec![],
    );
    assert!(
        matches!(mv, Err(FsError::InvalidArgument(_))),
        "rename of a dir into itself"
    );
    let unmount = ns.apply(
        &Command::Unmount {
            path: "/nothing".into(),
        },
        vec![],
    );
    assert!(matches!(unmount, Err(FsError::NotFound(_))));
    let bad_block = ns.apply(
        &Command::CreateFile {
            path: "/z".into(),
            recursive: false,
            block_size: 0,
            stamp: stamp(),
        },
        vec![],
    );
    assert!(matches!(bad_block, Err(FsError::InvalidArgument(_))));
}

#[test]
fn failed_commands_change_nothing_but_still_record_extra_ops() {
    let ns = ns();
    touch(&ns, "/f").unwrap();
    let before = ns.store().export().unwrap().len();
    let r = ns.apply(
        &Command::Delete {
            path: "/nope".into(),
            recursive: false,
        },
        vec![Op::PutMeta("applied".into(), vec![7])],
    );
    assert!(r.is_err());
    assert_eq!(ns.store().meta("applied").unwrap(), Some(vec![7]));
    assert_eq!(ns.store().export().unwrap().len(), before + 1);
}

#[test]
fn delete_and_rename_move_whole_subtrees() {
    let ns = ns();
    mkdir(&ns, "/x/y", true).unwrap();
    touch(&ns, "/x/y/f").unwrap();
    ns.apply(
        &Command::Rename {
            src: "/x".into(),
            dst: "/z".into(),
            now_ms: 5,
        },
        vec![],
    )
    .unwrap();
    assert!(ns.lookup(&p("/x")).unwrap().is_none());
    assert_eq!(ns.get(&p("/z/y/f")).unwrap().length, 5);
    let r = ns
        .apply(
            &Command::Delete {
                path: "/z".into(),
                recursive: true,
            },
            vec![],
        )
        .unwrap();
    assert_eq!(r, Reply::Deleted { inodes: 3 });
    assert_eq!(ns.inode_count().unwrap(), 1);
    assert!(ns.store().children(ROOT_ID, None, 10).unwrap().is_empty());
}

#[test]
fn mounts_guard_their_paths() {
    let ns = ns();
    mount(&ns, "/data/s3", true).unwrap();
    assert!(matches!(
        mount(&ns, "/data/s3", true),
        Err(FsError::AlreadyExists(_))
    ));
    assert!(matches!(
        mount(&ns, "/data/s3/inner", true),
        Err(FsError::FailedPrecondition(_))
    ));
    assert!(matches!(
        mount(&ns, "/data", true),
        Err(FsError::FailedPrecondition(_))
    ));
    assert!(matches!(
        touch(&ns, "/data/s3/new"),
        Err(FsError::ReadOnly(_))
    ));
    let del = ns.apply(
        &Command::Delete {
            path: "/data".into(),
            recursive: true,
        },
        vec![],
    );
    assert!(matches!(del, Err(FsError::FailedPrecondition(_))));
    let bad = ns.apply(
        &Command::Mount(MountSpec {
            path: "/evil".into(),
            ufs_uri: "s3://bucket/../other".into(),
            read_only: true,
            write_type: WriteType::MustCache,
            sync: SyncPolicy::Never,
            options: BTreeMap::new(),
            credential_files: BTreeMap::new(),
        }),
        vec![],
    );
    assert!(matches!(bad, Err(FsError::InvalidArgument(_))));
    assert_eq!(
        ns.mount_of(&p("/data/s3/a/b")).unwrap().unwrap().spec.path,
        "/data/s3"
    );
    assert!(ns.mount_of(&p("/data/s")).unwrap().is_none());
    ns.apply(
        &Command::Unmount {
            path: "/data/s3".into(),
        },
        vec![],
    )
    .unwrap();
    assert!(ns.mounts().unwrap().is_empty());
    assert!(ns.lookup(&p("/data/s3")).unwrap().is_none());
}

#[test]
fn listings_load_update_and_remove_entries() {
    let ns = ns();
    mount(&ns, "/m", false).unwrap();
    assert_eq!(ns.get(&p("/m")).unwrap().synced_ms, None);
    let entry = |name: &str, length, mtime_ms| UfsEntry {
        name: name.into(),
        is_dir: false,
        length,
        mtime_ms,
        version: String::new(),
        mode: None,
        uid: None,
        gid: None,
        link: None,
    };
    let load = |entries, vanished, complete| {
        ns.apply(
            &Command::LoadVersionedListing {
                dir: "/m".into(),
                entries,
                vanished,
                complete,
                now_ms: 99,
            },
            vec![],
        )
        .unwrap()
    };
    let r = load(vec![entry("a", 10, 1), entry("b", 20, 1)], vec![], false);
    assert_eq!(
        r,
        Reply::Loaded {
            created: 2,
            updated: 0,
            removed: 0
        }
    );
    assert_eq!(
        ns.get(&p("/m")).unwrap().synced_ms,
        None,
        "not complete yet"
    );
    let old_a = ns.get(&p("/m/a")).unwrap().id;
    let r = load(
        vec![entry("a", 11, 2), entry("b", 20, 1)],
        vec!["gone".into(), "b".into()],
        true,
    );
    assert_eq!(
        r,
        Reply::Loaded {
            created: 0,
            updated: 1,
            removed: 1
        }
    );
    let new_a = ns.get(&p("/m/a")).unwrap();
    assert_ne!(new_a.id, old_a, "changed content gets a new inode id");
    assert_eq!(new_a.length, 11);
    assert!(ns.lookup(&p("/m/b")).unwrap().is_none());
    assert_eq!(ns.get(&p("/m")).unwrap().synced_ms, Some(99));
    assert_eq!(ns.inode_count().unwrap(), 3);
    let bad = ns.apply(
        &Command::LoadVersionedListing {
            dir: "/m".into(),
            entries: vec![entry("..", 1, 1)],
            vanished: vec![],
            complete: false,
            now_ms: 1,
        },
        vec![],
    );
    assert!(matches!(bad, Err(FsError::InvalidArgument(_))));
}

#[test]
fn listed_entries_keep_the_stores_modes_and_follow_a_chmod() {
    let ns = ns();
    mount(&ns, "/m", false).unwrap();
    let entry = |name: &str, is_dir, mode| UfsEntry {
        name: name.into(),
        is_dir,
        length: if is_dir { 0 } else { 5 },
        mtime_ms: 1,
        version: "v1".into(),
        mode,
        uid: None,
        gid: None,
        link: None,
    };
    let load = |entries| {
        ns.apply(
            &Command::LoadVersionedListing {
                dir: "/m".into(),
                entries,
                vanished: vec![],
                complete: true,
                now_ms: 9,
            },
            vec![],
        )
        .unwrap()
    };
    load(vec![
        entry("secret", false, Some(0o4640)),
        entry("d", true, Some(0o750)),
        entry("object", false, None),
        entry("prefix", true, None),
    ]);
    let mode = |path: &str| ns.get(&p(path)).unwrap().mode;
    assert_eq!(mode("/m/secret"), 0o4640, "shown whole; mounts are nosuid");
    assert_eq!(mode("/m/d"), 0o750);
    assert_eq!(mode("/m/object"), 0o644, "stores without modes: readable");
    assert_eq!(mode("/m/prefix"), 0o755);
    let id = ns.get(&p("/m/secret")).unwrap().id;
    load(vec![
        entry("secret", false, Some(0o600)),
        entry("d", true, Some(0o700)),
    ]);
    assert_eq!(mode("/m/secret"), 0o600);
    assert_eq!(mode("/m/d"), 0o700);
    assert_eq!(
        ns.get(&p("/m/secret")).unwrap().id,
        id,
        "a chmod keeps the content's inode and its cached blocks"
    );
}

#[test]
fn replay_gives_the_same_tree() {
    let cmds = vec![
        Command::CreateDirectory {
            path: "/a".into(),
            recursive: true,
            stamp: stamp(),
        },
        Command::CreateFile {
            path: "/a/f".into(),
            recursive: false,
            block_size: 8,
            stamp: stamp(),
        },
        Command::CompleteFile {
            path: "/a/f".into(),
            length: 3,
            now_ms: 4,
        },
        Command::Rename {
            src: "/a/f".into(),
            dst: "/g".into(),
            now_ms: 5,
        },
        Command::Delete {
            path: "/a".into(),
            recursive: true,
        },
    ];
    let (one, two) = (ns(), ns());
    for c in &cmds {
        let _ = one.apply(c, vec![]);
        let _ = two.apply(c, vec![]);
    }
    let key = |op: &Op| format!("{op:?}");
    let (mut a, mut b) = (one.store().export().unwrap(), two.store().export().unwrap());
    a.sort_by_key(key);
    b.sort_by_key(key);
    assert_eq!(a, b);
    assert_eq!(one.get(&p("/g")).unwrap().length, 3);
}
