//! Reads that bypass the data path. A file whose every block this
//! machine's worker holds in one data file is handed to the kernel as a
//! passthrough file, which the kernel then reads itself; reads of other
//! files that fall inside one local block are answered from the worker's
//! file on the calling FUSE thread. Both go through the client's one
//! short-circuit path ([`crate::client::short_circuit`]).

use crate::client::short_circuit::read_leased;
use crate::client::{FileReader, FileSystem, LocalBlocks, LocalFile};
use fuser::{BackingId, FileHandle, ReplyData, ReplyOpen};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// A file as this machine's worker keeps it (every block leased, in one
/// file holding exactly its bytes), registered with the kernel for
/// passthrough reads. The kernel keeps one backing file per inode while any
/// passthrough open of it lasts and fails (EIO) an open that names another,
/// so every open of an inode shares one of these until the last is released.
pub(super) struct Backing {
    pub id: BackingId,
    _file: LocalFile,
}

thread_local! {
    /// Each FUSE thread's read buffer.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The local reads of this mount.
pub(super) struct LocalReads {
    /// Whether the kernel does passthrough (INIT granted it, and no open
    /// was refused since); shared with the code that tells the fd holder.
    passthrough: Arc<AtomicBool>,
    /// Per open file: its blocks held by a worker on this machine.
    local: Mutex<HashMap<u64, Arc<LocalBlocks>>>,
    /// Inode number -> its passthrough backing, while an open holds it.
    backings: Mutex<HashMap<u64, Weak<Backing>>>,
}

impl LocalReads {
    pub fn new(passthrough: Arc<AtomicBool>) -> Self {
        Self {
            passthrough,
            local: Mutex::new(HashMap::new()),
            backings: Mutex::new(HashMap::new()),
        }
    }

    pub fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    pub fn set_passthrough(&self, on: bool) {
        self.passthrough.store(on, Ordering::Relaxed);
    }

    /// The inode's passthrough backing: the one its open files share, or a
    /// new one over the file leased from this machine's worker.
    pub fn backing(
        &self,
        rt: &tokio::runtime::Handle,
        fs: &FileSystem,
        ino: u64,
        reader: &FileReader,
        reply: &ReplyOpen,
    ) -> Option<Arc<Backing>> {
        let shared =
            |backings: &HashMap<u64, Weak<Backing>>| backings.get(&ino).and_then(Weak::upgrade);
        if let Some(b) = shared(&self.backings.lock().expect("backings")) {
            return Some(b);
        }
        // The lease is a round trip to the worker: taken without the lock,
        // so opens of other files do not wait for it.
        let local = rt.block_on(fs.lease_local_file(reader.blocks(), reader.len()))?;
        // Registered under the lock, so two first opens racing here end up
        // with one backing (the loser's lease is released).
        let mut backings = self.backings.lock().expect("backings");
        if let Some(b) = shared(&backings) {
            return Some(b);
        }
        match reply.open_backing(&local.file) {
            Ok(id) => {
                let backing = Arc::new(Backing { id, _file: local });
                backings.insert(ino, Arc::downgrade(&backing));
                Some(backing)
            }
            Err(e) => {
                tracing::info!(error = %e, "passthrough refused; reading through the daemon");
                self.set_passthrough(false);
                None
            }
        }
    }

    /// Answers reads of the open file `fh` from local blocks from now on.
    pub fn track(&self, fh: FileHandle, blocks: Arc<LocalBlocks>) {
        self.local.lock().expect("local").insert(fh.0, blocks);
    }

    /// The open file `fh` (of inode `ino`) is closed.
    pub fn closed(&self, fh: FileHandle, ino: u64, had_backing: bool) {
        self.local.lock().expect("local").remove(&fh.0);
        if had_backing {
            let mut backings = self.backings.lock().expect("backings");
            if backings.get(&ino).is_some_and(|b| b.strong_count() <= 1) {
                backings.remove(&ino);
            }
        }
    }

    /// Answers a read from a local block file if the range lies in one;
    /// hands the reply back otherwise.
    pub fn read(
        &self,
        rt: &tokio::runtime::Handle,
        fh: FileHandle,
        offset: u64,
        size: u32,
        reply: ReplyData,
    ) -> Option<ReplyData> {
        let Some(local) = self.local.lock().expect("local").get(&fh.0).cloned() else {
            return Some(reply);
        };
        let Some((index, within, n)) = local.locate(offset, u64::from(size)) else {
            return Some(reply);
        };
        let leased = match local.known(index) {
            Some(known) => known,
            None => {
                let Some(block) = local.block(index).cloned() else {
                    return Some(reply);
                };
                rt.block_on(local.get(index, &block))
            }
        };
        let Some(leased) = leased else {
            return Some(reply);
        };
        READ_BUF.with_borrow_mut(|buf| {
            if buf.len() < n as usize {
                buf.resize(n as usize, 0);
            }
            let buf = &mut buf[..n as usize];
            if read_leased(&local, index, &leased, within, buf) {
                reply.data(buf);
                None
            } else {
                Some(reply)
            }
        })
    }
}
