//! Open files and directories by file handle. Handles carry the FUSE
//! process's generation in their top bits, so a handle an earlier process
//! of this mount handed out (the kernel keeps those across a takeover) is
//! told from one of ours.

use super::passthrough::Backing;
use super::scratch::Rewrite;
use crate::client::{FileReader, FileWriter};
use fuser::{FileHandle, FileType, INodeNo};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// File handles are numbered from `generation << FH_GENERATION_SHIFT`.
const FH_GENERATION_SHIFT: u32 = 40;

pub(super) enum Handle {
    Read {
        reader: Box<FileReader>,
        /// Reused for every read of this handle.
        buf: Vec<u8>,
        /// Passthrough: the kernel reads this leased file itself.
        _backing: Option<Arc<Backing>>,
    },
    Write(Option<Box<FileWriter>>),
    /// An existing file open for writing: one scratch copy per inode,
    /// shared by every handle that writes it.
    Rewrite(Arc<Mutex<Rewrite>>),
    Dir {
        path: String,
        entries: Vec<(u64, FileType, String)>,
        cursor: String,
        done: bool,
    },
}

impl Handle {
    pub fn dir(path: String) -> Self {
        Handle::Dir {
            path,
            entries: Vec::new(),
            cursor: String::new(),
            done: false,
        }
    }

    pub fn read(reader: FileReader, backing: Option<Arc<Backing>>) -> Self {
        Handle::Read {
            reader: Box::new(reader),
            buf: Vec::new(),
            _backing: backing,
        }
    }
}

/// The open handles of this FUSE process.
pub(super) struct Handles {
    /// FUSE processes that served this mount before this one.
    generation: u64,
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Mutex<Handle>>>>,
    /// The inode each open [`Handle::Write`] or [`Handle::Rewrite`]
    /// writes, by handle.
    writing: Mutex<HashMap<u64, INodeNo>>,
    /// The scratch copy of each inode being rewritten, while a handle
    /// holds it.
    rewrites: Mutex<HashMap<u64, Weak<Mutex<Rewrite>>>>,
}

impl Handles {
    pub fn new(generation: u64) -> Self {
        Self {
            generation,
            next: AtomicU64::new((generation << FH_GENERATION_SHIFT) + 1),
            open: Mutex::new(HashMap::new()),
            writing: Mutex::new(HashMap::new()),
            rewrites: Mutex::new(HashMap::new()),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether `fh` was handed out by an earlier FUSE process of this mount.
    pub fn inherited(&self, fh: FileHandle) -> bool {
        fh.0 >> FH_GENERATION_SHIFT < self.generation
    }

    pub fn get(&self, fh: FileHandle) -> Option<Arc<Mutex<Handle>>> {
        self.open.lock().expect("handles").get(&fh.0).cloned()
    }

    pub fn add(&self, h: Handle) -> FileHandle {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.open
            .lock()
            .expect("handles")
            .insert(fh, Arc::new(Mutex::new(h)));
        FileHandle(fh)
    }

    /// The handle `fh`, made by `make` if there is none yet (an inherited
    /// handle opened again; two threads racing here share one).
    pub fn get_or_insert(&self, fh: FileHandle, made: Handle) -> Arc<Mutex<Handle>> {
        self.open
            .lock()
            .expect("handles")
            .entry(fh.0)
            .or_insert_with(|| Arc::new(Mutex::new(made)))
            .clone()
    }

    /// A handle that writes `ino`.
    pub fn add_writing(&self, h: Handle, ino: INodeNo) -> FileHandle {
        let fh = self.add(h);
        self.writing.lock().expect("writing").insert(fh.0, ino);
        fh
    }

    pub fn remove(&self, fh: FileHandle) -> Option<Arc<Mutex<Handle>>> {
        self.writing.lock().expect("writing").remove(&fh.0);
        self.open.lock().expect("handles").remove(&fh.0)
    }

    /// The scratch copy of `ino` while a handle rewrites it.
    pub fn rewrite_of(&self, ino: INodeNo) -> Option<Arc<Mutex<Rewrite>>> {
        let mut rewrites = self.rewrites.lock().expect("rewrites");
        let live = rewrites.get(&ino.0)?.upgrade();
        if live.is_none() {
            rewrites.remove(&ino.0);
        }
        live
    }

    /// The scratch copy of `ino`: the one other handles share, else
    /// `made` (made without the lock held; a racing maker's copy wins).
    pub fn share_rewrite(&self, ino: INodeNo, made: Rewrite) -> Arc<Mutex<Rewrite>> {
        let mut rewrites = self.rewrites.lock().expect("rewrites");
        if let Some(live) = rewrites.get(&ino.0).and_then(Weak::upgrade) {
            return live;
        }
        let made = Arc::new(Mutex::new(made));
        rewrites.insert(ino.0, Arc::downgrade(&made));
        made
    }

    /// The handles writing `ino`.
    pub fn writing(&self, ino: INodeNo) -> Vec<Arc<Mutex<Handle>>> {
        let fhs: Vec<u64> = self
            .writing
            .lock()
            .expect("writing")
            .iter()
            .filter_map(|(fh, i)| (*i == ino).then_some(*fh))
            .collect();
        fhs.into_iter()
            .filter_map(|fh| self.get(FileHandle(fh)))
            .collect()
    }

    /// Bytes written so far, when `fh` is a file being written.
    pub fn being_written(&self, fh: Option<FileHandle>) -> Option<u64> {
        let h = self.get(fh?)?;
        let h = h.lock().expect("handle");
        match &*h {
            Handle::Write(Some(w)) => Some(w.written()),
            _ => None,
        }
    }
}
