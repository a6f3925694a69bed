//! A minimal read-only FUSE filesystem holding one file, `hello`, with the
//! content given on the command line. The test bed runs it in a privileged
//! pod to prove that FUSE mounts made in pods propagate to the host.

use clap::Parser;
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, Request,
};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

#[derive(Debug, Parser)]
struct Args {
    mount_point: PathBuf,
    #[arg(long)]
    content: String,
}

const HELLO: INodeNo = INodeNo(2);
const TTL: Duration = Duration::from_secs(1);

struct Probe {
    content: Vec<u8>,
}

fn attr(ino: INodeNo, kind: FileType, size: u64) -> FileAttr {
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm: if kind == FileType::Directory {
            0o755
        } else {
            0o444
        },
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

impl Probe {
    fn attr_of(&self, ino: INodeNo) -> Option<FileAttr> {
        match ino {
            INodeNo::ROOT => Some(attr(ino, FileType::Directory, 0)),
            HELLO => Some(attr(ino, FileType::RegularFile, self.content.len() as u64)),
            _ => None,
        }
    }
}

impl Filesystem for Probe {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == "hello" {
            reply.entry(
                &TTL,
                &self.attr_of(HELLO).expect("hello exists"),
                Generation(0),
            );
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != HELLO {
            return reply.error(Errno::ENOENT);
        }
        let start = (offset as usize).min(self.content.len());
        let end = start.saturating_add(size as usize).min(self.content.len());
        reply.data(&self.content[start..end]);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (HELLO, FileType::RegularFile, "hello"),
        ];
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.mount_point)?;
    let mut config = Config::default();
    config.mount_options.extend([
        MountOption::RO,
        MountOption::FSName("weir-e2e-probe".into()),
        MountOption::CUSTOM("allow_other".into()),
    ]);
    let fs = Probe {
        content: args.content.into_bytes(),
    };
    let session = fuser::spawn_mount(fs, &args.mount_point, &config)?;
    eprintln!("mounted {}", args.mount_point.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Dropping the session unmounts, so the host is left clean.
    drop(session);
    eprintln!("unmounted {}", args.mount_point.display());
    Ok(())
}
