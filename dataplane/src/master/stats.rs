//! Cache statistics for the admin report: bytes held in cache per mount.
//! Off the read path: it walks every cached block's file up to its mount.

use super::command::FsResult;
use super::metastore::{InodeId, ROOT_ID};
use super::namespace::Namespace;
use crate::block;
use crate::path::WeirPath;
use std::collections::BTreeMap;

/// Bytes of `blocks` held in cache, summed per mount path. Each block is
/// attributed by walking its file's parents up to a mount point (walks
/// are memoised per directory).
pub fn cached_bytes_per_mount(ns: &Namespace, blocks: &[u64]) -> FsResult<BTreeMap<String, u64>> {
    let mut mount_of_dir: BTreeMap<InodeId, Option<String>> = BTreeMap::new();
    for m in ns.mounts()?.iter() {
        if let Some(i) = ns.lookup(&WeirPath::parse(m.path())?)? {
            mount_of_dir.insert(i.id, Some(m.path().to_owned()));
        }
    }
    mount_of_dir.entry(ROOT_ID).or_insert(None);
    let mut totals = BTreeMap::new();
    for &block in blocks {
        let Some(file) = ns.store().inode(block::file_of(block))? else {
            continue;
        };
        let index = block::index_of(block);
        let offset = index * file.block_size;
        if file.is_dir() || offset >= file.length {
            continue;
        }
        let len = file.block_size.min(file.length - offset);
        let mut trail = Vec::new();
        let mut dir = file.parent;
        let mount = loop {
            if let Some(found) = mount_of_dir.get(&dir) {
                break found.clone();
            }
            trail.push(dir);
            match ns.store().inode(dir)? {
                Some(d) => dir = d.parent,
                None => break None,
            }
        };
        for d in trail {
            mount_of_dir.insert(d, mount.clone());
        }
        if let Some(m) = mount {
            *totals.entry(m).or_insert(0) += len;
        }
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{DEFAULT_BLOCK_SIZE, block_id};
    use crate::master::command::{Command, Stamp, UfsEntry};
    use crate::master::metastore::MemoryStore;
    use crate::master::state::ReplicatedState;
    use std::sync::Arc;
    use weir_api::{MountSpec, WriteType};

    fn mount(ns: &ReplicatedState, path: &str) {
        let spec = MountSpec {
            path: path.into(),
            ufs_uri: "s3://bucket/x".into(),
            read_only: false,
            write_type: WriteType::MustCache,
            ..MountSpec::default()
        };
        ns.apply(&Command::Mount(spec), vec![]).unwrap();
    }

    fn touch(ns: &ReplicatedState, path: &str) {
        let stamp = Stamp {
            owner: "u".into(),
            group: "g".into(),
            mode: 0o644,
            now_ms: 1,
        };
        let create = Command::CreateFile {
            path: path.into(),
            recursive: false,
            block_size: DEFAULT_BLOCK_SIZE,
            stamp,
        };
        ns.apply(&create, vec![]).unwrap();
        let complete = Command::CompleteFile {
            path: path.into(),
            length: 1,
            now_ms: 1,
        };
        ns.apply(&complete, vec![]).unwrap();
    }

    #[test]
    fn cached_bytes_are_attributed_to_their_mounts() {
        let ns = ReplicatedState::open(Arc::new(MemoryStore::new())).unwrap();
        mount(&ns, "/m");
        let entry = |name: &str, length| UfsEntry {
            name: name.into(),
            is_dir: false,
            length,
            mtime_ms: 1,
            version: String::new(),
            mode: None,
            uid: None,
            gid: None,
            link: None,
        };
        let cmd = Command::LoadVersionedListing {
            dir: "/m".into(),
            entries: vec![entry("big", DEFAULT_BLOCK_SIZE + 10), entry("small", 5)],
            vanished: vec![],
            complete: true,
            now_ms: 1,
        };
        ns.apply(&cmd, vec![]).unwrap();
        touch(&ns, "/outside");
        let id = |path: &str| {
            let path = WeirPath::parse(path).unwrap();
            ns.namespace().get(&path).unwrap().id
        };
        let (big, small, outside) = (id("/m/big"), id("/m/small"), id("/outside"));
        let blocks = [
            block_id(big, 0),
            block_id(big, 1),
            block_id(small, 0),
            block_id(outside, 0),
            block_id(big, 9),
        ];
        let totals = cached_bytes_per_mount(ns.namespace(), &blocks).unwrap();
        assert_eq!(totals.get("/m"), Some(&(DEFAULT_BLOCK_SIZE + 10 + 5)));
        assert_eq!(totals.len(), 1, "files outside mounts count nowhere");
    }
}
