//! Open files and directories by file handle. Handles carry the FUSE
//! process's generation in their top bits, so a handle an earlier process
//! of this mount handed out (the kernel keeps those across a takeover) is
//! told from one of ours and opened again here.

use super::fs::WeirFuse;
use crate::client::{FileReader, FileWriter};
use crate::proto::master as pb;
use fuser::{FileAttr, FileHandle, FileType, INodeNo};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// File handles are numbered from `generation << FH_GENERATION_SHIFT`.
pub(super) const FH_GENERATION_SHIFT: u32 = 40;

pub(super) enum Handle {
    Read {
        reader: Box<FileReader>,
        /// Reused for every read of this handle.
        buf: Vec<u8>,
        /// Passthrough: the kernel reads this leased block file itself.
        _backing: Option<Arc<super::passthrough::Backing>>,
    },
    Write(Option<Box<FileWriter>>),
    Dir {
        path: String,
        entries: Vec<(u64, FileType, String)>,
        cursor: String,
        done: bool,
    },
}

impl WeirFuse {
    /// Whether `fh` was handed out by an earlier FUSE process of this mount.
    pub(super) fn inherited(&self, fh: FileHandle) -> bool {
        fh.0 >> FH_GENERATION_SHIFT < self.generation
    }

    /// The handle `fh`; one an earlier FUSE process opened is opened again
    /// here (a file for reading, a directory listed from its start), so
    /// applications keep reading through a takeover. A file it was writing
    /// is lost with it: that handle stays unknown (EBADF).
    pub(super) fn handle_or_inherited(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        dir: bool,
    ) -> Option<Arc<Mutex<Handle>>> {
        if let Some(h) = self.handle(fh) {
            return Some(h);
        }
        if !self.inherited(fh) {
            return None;
        }
        let path = self.path_of(ino)?;
        let handle = if dir {
            Handle::Dir {
                path,
                entries: Vec::new(),
                cursor: String::new(),
                done: false,
            }
        } else {
            let reader = self.rt.block_on(self.fs.open(&path)).ok()?;
            Handle::Read {
                reader: Box::new(reader),
                buf: Vec::new(),
                _backing: None,
            }
        };
        tracing::debug!(fh = fh.0, ino = ino.0, "reopened an inherited handle");
        let mut handles = self.handles.lock().expect("handles");
        Some(
            handles
                .entry(fh.0)
                .or_insert_with(|| Arc::new(Mutex::new(handle)))
                .clone(),
        )
    }

    pub(super) fn handle(&self, fh: FileHandle) -> Option<Arc<Mutex<Handle>>> {
        self.handles.lock().expect("handles").get(&fh.0).cloned()
    }

    pub(super) fn add_handle(&self, h: Handle) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .expect("handles")
            .insert(fh, Arc::new(Mutex::new(h)));
        FileHandle(fh)
    }

    /// Bytes written so far, when `fh` is a file being written.
    pub(super) fn being_written(&self, fh: Option<FileHandle>) -> Option<u64> {
        let h = self.handle(fh?)?;
        let h = h.lock().expect("handle");
        match &*h {
            Handle::Write(Some(w)) => Some(w.written()),
            _ => None,
        }
    }

    /// A file being written: its size is what has been written so far.
    pub(super) fn attr_written(&self, ino: INodeNo, written: u64) -> FileAttr {
        let mut attr = self.attr(&pb::FileInfo {
            length: written,
            mode: 0o644,
            ..Default::default()
        });
        attr.ino = ino;
        attr
    }
}
