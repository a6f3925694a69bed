//! Hard links in the namespace: one inode under several names, through
//! every command that adds, moves or removes a name.

use super::tests::{Ns, mkdir, ns, p, touch};
use crate::master::command::{Command, FsError, FsResult, Reply, UfsEntry};
use crate::path::WeirPath;

fn link(ns: &Ns, src: &str, dst: &str) -> FsResult<Reply> {
    ns.apply(
        &Command::Link {
            src: src.into(),
            dst: dst.into(),
        },
        vec![],
    )
}

fn delete(ns: &Ns, path: &str, recursive: bool) -> FsResult<Reply> {
    ns.apply(
        &Command::Delete {
            path: path.into(),
            recursive,
        },
        vec![],
    )
}

fn rename(ns: &Ns, src: &str, dst: &str) -> FsResult<Reply> {
    ns.apply(
        &Command::Rename {
            src: src.into(),
            dst: dst.into(),
            now_ms: 3000,
        },
        vec![],
    )
}

/// The names of the inode at `path`, as a listing of each directory
/// shows them, and its link count.
fn names(ns: &Ns, dirs: &[&str], id: u64) -> (Vec<String>, u32) {
    let mut out = Vec::new();
    for dir in dirs {
        for i in ns.list(&p(dir), None, 100).unwrap() {
            if i.id == id {
                out.push(
                    WeirPath::parse(dir)
                        .unwrap()
                        .child(&i.name)
                        .unwrap()
                        .to_string(),
                );
            }
        }
    }
    out.sort();
    let count = ns
        .link_count(&ns.store().inode(id).unwrap().unwrap())
        .unwrap();
    (out, count)
}

/// Directories /d and /e, and the file /d/a under `names` too; its id
/// and the inode count then.
fn linked(ns: &Ns, names: &[&str]) -> (u64, u64) {
    mkdir(ns, "/d", false).unwrap();
    mkdir(ns, "/e", false).unwrap();
    touch(ns, "/d/a").unwrap();
    for name in names {
        link(ns, "/d/a", name).unwrap();
    }
    (ns.get(&p("/d/a")).unwrap().id, ns.inode_count().unwrap())
}

#[test]
fn a_link_is_another_name_of_the_same_inode() {
    let ns = ns();
    let (id, count) = linked(&ns, &[]);
    link(&ns, "/d/a", "/d/b").unwrap();
    link(&ns, "/d/b", "/e/c").unwrap();
    assert_eq!(ns.get(&p("/e/c")).unwrap().id, id);
    assert_eq!(ns.inode_count().unwrap(), count, "no inode is made");
    assert_eq!(
        names(&ns, &["/d", "/e"], id),
        (vec!["/d/a".into(), "/d/b".into(), "/e/c".into()], 3)
    );
    // An attribute set through one name shows through every name.
    ns.apply(
        &Command::SetAttribute {
            path: "/e/c".into(),
            update: crate::master::command::AttrUpdate {
                mode: Some(0o600),
                ..Default::default()
            },
        },
        vec![],
    )
    .unwrap();
    assert_eq!(ns.get(&p("/d/a")).unwrap().mode, 0o600);
    assert_eq!(ns.path_of(id).unwrap(), Some(p("/d/a")));
}

#[test]
fn links_are_refused_where_posix_refuses_them() {
    let ns = ns();
    mkdir(&ns, "/d", false).unwrap();
    touch(&ns, "/d/a").unwrap();
    touch(&ns, "/d/taken").unwrap();
    assert!(matches!(
        link(&ns, "/d", "/x"),
        Err(FsError::FailedPrecondition(m)) if m.contains("directory")
    ));
    assert!(matches!(
        link(&ns, "/d/a", "/d/taken"),
        Err(FsError::AlreadyExists(_))
    ));
    assert!(matches!(
        link(&ns, "/d/missing", "/d/b"),
        Err(FsError::NotFound(_))
    ));
    assert!(matches!(
        link(&ns, "/d/a", "/nowhere/b"),
        Err(FsError::NotFound(_))
    ));
    assert!(matches!(
        link(&ns, "/d/a", "/d/taken/b"),
        Err(FsError::FailedPrecondition(_))
    ));
}

#[test]
fn removing_names_keeps_the_inode_until_the_last() {
    let ns = ns();
    let (id, count) = linked(&ns, &["/d/b", "/d/c"]);
    // The record's own name goes: another name takes its place.
    assert_eq!(
        delete(&ns, "/d/a", false).unwrap(),
        Reply::Deleted { inodes: 0 }
    );
    assert!(ns.lookup(&p("/d/a")).unwrap().is_none());
    assert_eq!(
        names(&ns, &["/d"], id),
        (vec!["/d/b".into(), "/d/c".into()], 2)
    );
    assert_eq!(ns.path_of(id).unwrap(), Some(p("/d/b")));
    // Another name goes.
    assert_eq!(
        delete(&ns, "/d/c", false).unwrap(),
        Reply::Deleted { inodes: 0 }
    );
    assert_eq!(names(&ns, &["/d"], id), (vec!["/d/b".into()], 1));
    assert_eq!(ns.inode_count().unwrap(), count);
    // The last.
    assert_eq!(
        delete(&ns, "/d/b", false).unwrap(),
        Reply::Deleted { inodes: 1 }
    );
    assert!(ns.store().inode(id).unwrap().is_none());
    assert_eq!(ns.inode_count().unwrap(), count - 1);
    assert_eq!(ns.store().meta(&format!("names/{id}")).unwrap(), None);
}

#[test]
fn a_directory_holding_several_names_of_one_file_goes_whole() {
    let ns = ns();
    let (id, count) = linked(&ns, &["/d/b", "/e/c"]);
    // Both names in /d go; the one in /e keeps the inode.
    assert_eq!(
        delete(&ns, "/d", true).unwrap(),
        Reply::Deleted { inodes: 1 }
    );
    assert_eq!(names(&ns, &["/e"], id), (vec!["/e/c".into()], 1));
    assert_eq!(ns.path_of(id).unwrap(), Some(p("/e/c")));
    assert_eq!(ns.inode_count().unwrap(), count - 1);
    assert_eq!(
        delete(&ns, "/e", true).unwrap(),
        Reply::Deleted { inodes: 2 }
    );
    assert!(ns.store().inode(id).unwrap().is_none());
}

#[test]
fn renaming_a_name_moves_that_name_only() {
    let ns = ns();
    let (id, _) = linked(&ns, &["/d/b"]);
    // Not the record's own name.
    rename(&ns, "/d/b", "/e/b2").unwrap();
    assert_eq!(
        names(&ns, &["/d", "/e"], id),
        (vec!["/d/a".into(), "/e/b2".into()], 2)
    );
    assert_eq!(ns.path_of(id).unwrap(), Some(p("/d/a")));
    // The record's own name.
    rename(&ns, "/d/a", "/e/a2").unwrap();
    assert_eq!(
        names(&ns, &["/d", "/e"], id),
        (vec!["/e/a2".into(), "/e/b2".into()], 2)
    );
    assert_eq!(ns.path_of(id).unwrap(), Some(p("/e/a2")));
    delete(&ns, "/e/a2", false).unwrap();
    assert_eq!(ns.path_of(id).unwrap(), Some(p("/e/b2")));
}

#[test]
fn a_listing_changes_or_removes_one_name_of_several() {
    let ns = ns();
    super::tests::mount(&ns, "/m", false).unwrap();
    let entry = |name: &str, length, version: &str| UfsEntry {
        name: name.into(),
        is_dir: false,
        length,
        mtime_ms: 7,
        version: version.into(),
        mode: Some(0o644),
        uid: Some(0),
        gid: Some(0),
        link: None,
    };
    let load = |entries, vanished: Vec<String>| {
        ns.apply(
            &Command::LoadVersionedListing {
                dir: "/m".into(),
                entries,
                vanished,
                complete: false,
                now_ms: 9,
            },
            vec![],
        )
        .unwrap()
    };
    load(vec![entry("a", 5, "1.1.0")], vec![]);
    let id = ns.get(&p("/m/a")).unwrap().id;
    link(&ns, "/m/a", "/m/b").unwrap();
    link(&ns, "/m/a", "/m/c").unwrap();
    // The same version under every name changes nothing.
    load(
        vec![
            entry("a", 5, "1.1.0"),
            entry("b", 5, "1.1.0"),
            entry("c", 5, "1.1.0"),
        ],
        vec![],
    );
    assert_eq!(names(&ns, &["/m"], id).1, 3);
    // "b" was replaced in the store by a file of its own.
    load(vec![entry("b", 9, "2.2.0")], vec![]);
    let b = ns.get(&p("/m/b")).unwrap();
    assert_ne!(b.id, id);
    assert_eq!((b.name.as_str(), b.length), ("b", 9));
    assert_eq!(
        names(&ns, &["/m"], id),
        (vec!["/m/a".into(), "/m/c".into()], 2)
    );
    // "a", the record's own name, vanished from the store.
    load(vec![], vec!["a".into()]);
    assert_eq!(names(&ns, &["/m"], id), (vec!["/m/c".into()], 1));
    assert_eq!(ns.get(&p("/m/c")).unwrap().name, "c");
}
