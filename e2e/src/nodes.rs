//! The nodes of the test bed as a test sees them: their names, and each
//! node's own view of the file system. The first node is this machine;
//! node N lives in mount and network namespaces of its own (see
//! `e2e/README.md`, "More nodes"), whose files a test reads through
//! `/proc/<pid>/root` of a process inside them (its kubelet).

use crate::Bed;
use std::path::PathBuf;

/// The first node's name: this machine.
pub const FIRST_NODE: &str = "weir-node";

impl Bed {
    /// The names of the cluster's nodes, the first one first.
    pub fn node_names(&self) -> crate::Result<Vec<String>> {
        let out = self.kubectl(&["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"])?;
        let mut names: Vec<String> = out.split_whitespace().map(str::to_owned).collect();
        names.sort_by_key(|n| (n != FIRST_NODE, n.len(), n.clone()));
        Ok(names)
    }

    /// Where `node`'s own root directory is seen from this machine: `/`
    /// for the first node, its kubelet's root for another.
    pub fn node_root(&self, node: &str) -> PathBuf {
        if node == FIRST_NODE {
            return PathBuf::from("/");
        }
        let pid = std::fs::read_to_string(self.lab.join(format!("pids/{node}-kubelet.pid")))
            .unwrap_or_default();
        PathBuf::from(format!("/proc/{}/root", pid.trim()))
    }

    /// `path` (absolute) as `node` sees it.
    pub fn on_node(&self, node: &str, path: &str) -> PathBuf {
        self.node_root(node).join(path.trim_start_matches('/'))
    }

    /// The mount table of `node`'s mount namespace.
    pub fn node_mounts(&self, node: &str) -> String {
        let table = if node == FIRST_NODE {
            PathBuf::from("/proc/self/mountinfo")
        } else {
            self.node_root(node)
                .parent()
                .expect("/proc/<pid>")
                .join("mountinfo")
        };
        std::fs::read_to_string(table).unwrap_or_default()
    }

    /// Every node's mount table, one after another.
    pub fn all_node_mounts(&self) -> crate::Result<String> {
        Ok(self
            .node_names()?
            .iter()
            .map(|n| self.node_mounts(n))
            .collect::<Vec<_>>()
            .join("\n"))
    }
}
