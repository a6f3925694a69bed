//! Turns per file between the calls that decide from its persist state
//! what the under-storage must see (rename, delete) and the one that
//! changes that state (marking it persisted). Decided on a state that
//! changes under it, a rename would move the name in Weir alone while the
//! object stays under the old name, so the next listing takes the file
//! away; a delete would leave the object behind, to come back.

use crate::master::metastore::{Inode, PersistState};
use crate::master::records::InodeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

#[derive(Debug, Default)]
pub(super) struct Turns(Mutex<HashMap<InodeId, Arc<tokio::sync::Mutex<()>>>>);

/// One file's turn; the next caller waits until it is dropped.
pub(super) struct Turn<'a> {
    turns: &'a Turns,
    id: InodeId,
    _held: OwnedMutexGuard<()>,
}

impl Turns {
    /// The turn of `inode`, when its persist state can still change (a
    /// file not yet persisted); `None` when it cannot.
    pub(super) async fn of(&self, inode: &Inode) -> Option<Turn<'_>> {
        if inode.is_dir() || inode.persist == PersistState::Persisted {
            return None;
        }
        Some(self.take(inode.id).await)
    }

    async fn take(&self, id: InodeId) -> Turn<'_> {
        let lock = self.0.lock().expect("turns").entry(id).or_default().clone();
        Turn {
            turns: self,
            id,
            _held: lock.lock_owned().await,
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut map = self.turns.0.lock().expect("turns");
        // The map's and this turn's: nobody waits for it.
        if map.get(&self.id).is_some_and(|l| Arc::strong_count(l) == 2) {
            map.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_file_is_had_by_one_caller_at_a_time() {
        let turns = Arc::new(Turns::default());
        let first = turns.take(7).await;
        // Another file does not wait.
        drop(turns.take(8).await);
        let waiting = {
            let turns = turns.clone();
            tokio::spawn(async move {
                let _turn = turns.take(7).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the second caller waits");
        drop(first);
        waiting.await.unwrap();
        assert!(turns.0.lock().unwrap().is_empty(), "nothing is kept");
    }
}
