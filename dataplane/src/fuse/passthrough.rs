//! Reads that bypass the data path. A file whose every block this
//! machine's worker holds in one data file is handed to the kernel as a
//! passthrough file, which the kernel then reads itself; reads of other
//! files that fall inside one local block are answered from the worker's
//! file on the calling FUSE thread. Both go through the client's one
//! short-circuit path ([`crate::client::short_circuit`]).

use super::fs::WeirFuse;
use crate::client::short_circuit::read_leased;
use crate::client::{FileReader, LocalFile};
use fuser::{BackingId, FileHandle, ReplyData, ReplyOpen};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

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

impl WeirFuse {
    /// The inode's passthrough backing: the one its open files share, or a
    /// new one over the file leased from this machine's worker.
    pub(super) fn backing(
        &self,
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
        let local = self.rt.block_on(self.fs.lease_local_file(reader))?;
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
                self.passthrough.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    /// Answers a read from a local block file if the range lies in one;
    /// hands the reply back otherwise.
    pub(super) fn read_local(
        &self,
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
                self.rt.block_on(local.get(index, &block))
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
