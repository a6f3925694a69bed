//! The file system client: what FUSE, the CLI and the workers' persister
//! use to read and write Weir. Metadata comes from the masters (through
//! [`weir_api::MasterClient`]), bytes from workers over the data path
//! ([`crate::wire`]) or, for a worker on this machine, from its data files.
//!
//! - [`fs`]: the namespace as the masters serve it, cached briefly
//! - [`reader`] / [`writer`]: reading and writing one file
//! - [`short_circuit`]: reads from a co-located worker's files
//! - [`leases`]: the read leases that keep those files in place
//! - [`workers`]: live workers, failures, connections, miss placement
//! - [`stream`]: receiving a block stream
//! - [`read_paths`]: counting which way read bytes came

pub mod error;
pub mod fs;
mod leases;
pub mod read_paths;
pub mod reader;
pub mod short_circuit;
pub mod stream;
pub mod workers;
pub mod writer;

pub use error::{ClientError, FsResult};
pub use fs::{ClientConfig, FileSystem};
pub use read_paths::{ReadCounters, ReadPath};
pub use reader::FileReader;
pub use short_circuit::{LocalBlock, LocalBlocks, LocalFile};
pub use writer::{FileWriter, Maker};
