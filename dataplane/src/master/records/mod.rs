//! The records the master replicates and keeps in its metadata store:
//! inodes, mount-table entries and jobs. Everything above (the store, the
//! state machine, the services) speaks in these types.

pub mod inode;
pub mod job;
pub mod mount;

pub use inode::{Inode, InodeId, InodeKind, PersistState, ROOT_ID};
pub use job::{
    Checkpoint, FailedFile, Job, JobId, JobKind, JobProgress, JobSpec, JobState, MAX_FAILED_LISTED,
    MAX_RETAINED_FINISHED,
};
pub use mount::MountInfo;
