//! Which way the bytes a client reads came, counted per path: straight
//! from a worker's data file on this machine (`short-circuit`), streamed
//! from a worker on this node (`local`) or on another node (`remote`), or
//! read through a worker from the under-storage because no worker held
//! them (`ufs`). Served on the client's `/metrics`, these say whether
//! locality works: a pod reading a warm dataset should move no `ufs`
//! counter, and one beside the data no `remote` one.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The way one read was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadPath {
    ShortCircuit,
    Local,
    Remote,
    Ufs,
}

impl ReadPath {
    pub const ALL: [ReadPath; 4] = [
        ReadPath::ShortCircuit,
        ReadPath::Local,
        ReadPath::Remote,
        ReadPath::Ufs,
    ];

    /// The `path` label.
    pub fn label(self) -> &'static str {
        match self {
            ReadPath::ShortCircuit => "short-circuit",
            ReadPath::Local => "local",
            ReadPath::Remote => "remote",
            ReadPath::Ufs => "ufs",
        }
    }

    /// A stream from a worker: `held` when the worker had the block
    /// cached, `same_node` when the worker runs on this client's node.
    pub fn of_stream(held: bool, same_node: bool) -> Self {
        match (held, same_node) {
            (false, _) => ReadPath::Ufs,
            (true, true) => ReadPath::Local,
            (true, false) => ReadPath::Remote,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: &'static str,
}

/// The client's counters; clones share them.
#[derive(Debug, Clone, Default)]
pub struct ReadCounters {
    bytes: Family<PathLabel, Counter>,
    reads: Family<PathLabel, Counter>,
    passthrough_opens: Counter,
}

impl ReadCounters {
    /// `bytes` were read one way.
    pub fn count(&self, path: ReadPath, bytes: usize) {
        let label = PathLabel { path: path.label() };
        self.bytes.get_or_create(&label).inc_by(bytes as u64);
        self.reads.get_or_create(&label).inc();
    }

    /// A file was handed to the kernel to read from a local worker's data
    /// file itself (FUSE passthrough): its reads never reach the client.
    pub fn count_passthrough_open(&self) {
        self.passthrough_opens.inc();
    }

    /// Bytes read one way so far.
    pub fn bytes(&self, path: ReadPath) -> u64 {
        self.bytes
            .get_or_create(&PathLabel { path: path.label() })
            .get()
    }

    pub fn register(&self, registry: &mut Registry) {
        // Every path shows from the start, at zero, so a scrape before the
        // first read already names them.
        for path in ReadPath::ALL {
            let _ = self.bytes(path);
            let _ = self.reads.get_or_create(&PathLabel { path: path.label() });
        }
        registry.register(
            "weir_client_read_bytes",
            "Bytes this client read, by the way they came",
            self.bytes.clone(),
        );
        registry.register(
            "weir_client_reads",
            "Reads this client served, by the way their bytes came",
            self.reads.clone(),
        );
        registry.register(
            "weir_client_passthrough_opens",
            "Opens handed to the kernel to read a local worker's file directly",
            self.passthrough_opens.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_told_apart_and_counted_per_path() {
        assert_eq!(ReadPath::of_stream(false, true), ReadPath::Ufs);
        assert_eq!(ReadPath::of_stream(true, true), ReadPath::Local);
        assert_eq!(ReadPath::of_stream(true, false), ReadPath::Remote);
        let c = ReadCounters::default();
        c.count(ReadPath::Remote, 10);
        c.clone().count(ReadPath::Remote, 5);
        assert_eq!(c.bytes(ReadPath::Remote), 15);
        assert_eq!(c.bytes(ReadPath::Ufs), 0);
        let mut r = Registry::default();
        c.register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(
            text.contains(r#"weir_client_read_bytes_total{path="remote"} 15"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_client_read_bytes_total{path="short-circuit"} 0"#),
            "{text}"
        );
    }
}
