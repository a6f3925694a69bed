//! What several of Weir's test suites need and nothing else does: free
//! ports, a real S3-compatible server (moto) with a bucket, child
//! processes that are stopped however a test ends, and reproducible test
//! bytes. Blocking calls only, so sync and async tests share them.

mod process;
mod s3;

pub use process::ChildGuard;
pub use s3::{S3Server, moto_server, s3_credentials};

use std::net::TcpListener;

/// A port nothing listens on at `host` right now, taken below the
/// kernel's ephemeral range: a port from inside it can be taken as the
/// source port of any outgoing connection before the server binds it.
pub fn free_port(host: &str) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = ephemeral_low().clamp(12_000, 65_535);
    let span = low - 10_000;
    let start = (std::process::id() * 7919) % span;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 10_000 + (start + step * 97) % span;
        if TcpListener::bind((host, port as u16)).is_ok() {
            return port as u16;
        }
    }
    TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The first port the kernel hands out for outgoing connections.
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
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
        assert!(
            u32::from(port) < ephemeral_low(),
            "{port} is outside the ephemeral range"
        );
        TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
        assert_ne!(
            free_local_port(),
            port,
            "successive calls hand out other ports"
        );
    }
}
