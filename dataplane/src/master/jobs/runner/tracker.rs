//! A running job's progress, shared by its block tasks and its reporter,
//! with the checkpoint a new leader resumes from.

use super::JobRunner;
use super::walk::Target;
use crate::master::records::JobProgress;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// What the running job reports; shared by its block tasks and reporter.
#[derive(Debug)]
pub(super) struct Tracker {
    pub progress: JobProgress,
    /// Files finished past the checkpoint, by walk position: their bytes
    /// when done, `None` when failed.
    pub finished: BTreeMap<u64, Option<u64>>,
    pub changed: bool,
}

impl Tracker {
    pub fn finish(&mut self, index: u64, bytes: u64, failure: Option<(String, String)>) {
        let outcome = match failure {
            None => {
                self.progress.files_done += 1;
                self.progress.bytes_done += bytes;
                Some(bytes)
            }
            Some((path, reason)) => {
                self.progress.record_failure(index, path, reason);
                None
            }
        };
        self.finished.insert(index, outcome);
        // Move the checkpoint over the finished run at its front.
        let cp = &mut self.progress.checkpoint;
        while let Some(outcome) = self.finished.remove(&cp.cursor) {
            match outcome {
                Some(bytes) => {
                    cp.files_done += 1;
                    cp.bytes_done += bytes;
                }
                None => cp.failed_count += 1,
            }
            cp.cursor += 1;
        }
        self.changed = true;
    }
}

impl JobRunner {
    /// Records the walked target's totals; returns where scheduling starts
    /// (the checkpoint of an earlier leader, if any).
    pub(super) fn plan_totals(
        &self,
        tracker: &Mutex<Tracker>,
        files: &[Target],
        skipped: u64,
    ) -> u64 {
        let mut t = tracker.lock().expect("tracker");
        let p = &mut t.progress;
        p.planned = true;
        p.files_total = files.len() as u64;
        p.bytes_total = files.iter().map(|f| f.inode.length).sum();
        p.files_skipped = skipped;
        t.changed = true;
        t.progress.checkpoint.cursor.min(files.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> Tracker {
        Tracker {
            progress: JobProgress::default(),
            finished: BTreeMap::new(),
            changed: false,
        }
    }

    #[test]
    fn the_checkpoint_covers_only_the_finished_front_of_the_walk() {
        let mut t = tracker();
        t.finish(1, 10, None);
        t.finish(3, 30, None);
        assert_eq!(t.progress.checkpoint.cursor, 0, "file 0 is not finished");
        assert_eq!((t.progress.files_done, t.progress.bytes_done), (2, 40));
        t.finish(0, 1, Some(("/a/0".into(), "gone".into())));
        let cp = t.progress.checkpoint.clone();
        assert_eq!(
            (cp.cursor, cp.files_done, cp.bytes_done, cp.failed_count),
            (2, 1, 10, 1)
        );
        t.finish(2, 20, None);
        assert_eq!(t.progress.checkpoint.cursor, 4);
        assert_eq!(t.progress.checkpoint.bytes_done, 60);

        // A new leader starts at the checkpoint with its counts: file 4,
        // done but past it, is counted again when it is redone.
        t.finish(5, 50, None);
        let resumed = t.progress.resume();
        assert_eq!((resumed.files_done, resumed.bytes_done), (3, 60));
        assert_eq!(resumed.failed.len(), 1);
        assert!(t.changed);
    }
}
