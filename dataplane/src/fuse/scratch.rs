//! The scratch copy of a file being rewritten: an unnamed temporary file
//! (removed by the kernel when the last handle closes it) that takes
//! writes at any offset, and knows whether it differs from what was last
//! committed.

use std::os::unix::fs::FileExt;

pub(super) struct Rewrite {
    /// The namespace path the copy becomes the new version of.
    pub path: String,
    scratch: std::fs::File,
    len: u64,
    /// Changed since it was seeded or last committed.
    dirty: bool,
}

impl Rewrite {
    /// An empty copy for `path`, in the system's temporary directory.
    pub fn new(path: &str) -> std::io::Result<Self> {
        Ok(Rewrite {
            path: path.to_owned(),
            scratch: tempfile::tempfile()?,
            len: 0,
            dirty: false,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Marks the copy as differing from the committed file.
    pub fn changed(&mut self) {
        self.dirty = true;
    }

    /// Marks the copy as what the file now is.
    pub fn committed(&mut self) {
        self.dirty = false;
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min(self.len.saturating_sub(offset) as usize);
        let mut done = 0;
        while done < want {
            match self
                .scratch
                .read_at(&mut buf[done..want], offset + done as u64)?
            {
                0 => break,
                n => done += n,
            }
        }
        Ok(done)
    }

    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.scratch.write_all_at(data, offset)?;
        self.len = self.len.max(offset + data.len() as u64);
        self.dirty = true;
        Ok(())
    }

    /// At least `len` bytes long: zeros past the end.
    pub fn grow_to(&mut self, len: u64) -> std::io::Result<()> {
        if len > self.len {
            self.set_len(len)?;
        }
        Ok(())
    }

    pub fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.scratch.set_len(len)?;
        self.dirty |= len != self.len;
        self.len = len;
        Ok(())
    }
}
