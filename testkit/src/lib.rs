//! What several of Weir's test suites need and nothing else does: free
//! ports, a real S3-compatible server (moto) with a bucket, child
//! processes that are stopped however a test ends, and reproducible test
//! bytes. Blocking calls only, so sync and async tests share them.

mod process;
mod s3;

pub use process::ChildGuard;
pub use s3::{S3Server, moto_server, s3_credentials};

use std::net::TcpListener;

/// A port nothing listens on at `host` right now.
pub fn free_port(host: &str) -> u16 {
    TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A free port on 127.0.0.1.
pub fn free_local_port() -> u16 {
    free_port("127.0.0.1")
}

/// Reproducible bytes that differ per seed (xorshift), for test files.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_bytes_repeat_per_seed_and_differ_between_seeds() {
        assert_eq!(bytes(64, 1), bytes(64, 1));
        assert_ne!(bytes(64, 1), bytes(64, 2));
        assert_eq!(bytes(10, 3).len(), 10);
    }

    #[test]
    fn a_free_port_can_be_bound() {
        let port = free_local_port();
        TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    }
}
