//! The version of an object as one value: what the master records for a
//! file, what a block fetched from the under-storage must come from.

use std::fmt;

/// Length, mtime and the store's own identity of the content (ETag, or
/// inode number and change time). Written `length:mtime_ms:version`; the
/// two-part form of earlier releases (`length:mtime_ms`) still parses, with
/// no version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint {
    pub length: u64,
    pub mtime_ms: u64,
    pub version: String,
}

impl Fingerprint {
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, ':');
        let length = parts.next()?.parse().ok()?;
        let mtime_ms = parts.next()?.parse().ok()?;
        let version = parts.next().unwrap_or_default().to_owned();
        Some(Self {
            length,
            mtime_ms,
            version,
        })
    }

    /// Whether `now` is the same content as `self`. A fingerprint recorded
    /// without a version (an earlier release) matches on length and mtime.
    pub fn same_content(&self, now: &Fingerprint) -> bool {
        self.length == now.length
            && self.mtime_ms == now.mtime_ms
            && (self.version.is_empty() || self.version == now.version)
    }
}

/// A local file's identity as its version: inode number and change time
/// (`<ino>.<seconds>.<nanoseconds>`), which `touch -r` cannot put back.
pub fn local_version(ino: u64, ctime_s: i64, ctime_ns: i64) -> String {
    format!("{ino}.{ctime_s}.{ctime_ns}")
}

/// The change time a version ends with, in milliseconds, where the store
/// says one (a local file's or special file's version); `None` for ETags.
pub fn change_time_ms(version: &str) -> Option<u64> {
    let tail = version.rsplit(':').next()?;
    let mut parts = tail.split('.');
    let (_ino, s, ns) = (
        parts.next()?.parse::<u64>().ok()?,
        parts.next()?.parse::<u64>().ok()?,
        parts.next()?.parse::<u64>().ok()?,
    );
    parts.next().is_none().then(|| s * 1000 + ns / 1_000_000)
}

/// How a symbolic link's target is kept as its version: the target is the
/// link's content, so a new target is a new version.
pub const LINK_VERSION_PREFIX: &str = "link:";

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.length, self.mtime_ms, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_round_trip_and_old_ones_still_match() {
        let f = Fingerprint {
            length: 10,
            mtime_ms: 20,
            version: "\"abc:1\"".into(),
        };
        assert_eq!(Fingerprint::parse(&f.to_string()), Some(f.clone()));
        let old = Fingerprint::parse("10:20").unwrap();
        assert!(
            old.same_content(&f),
            "a versionless record matches by length and mtime"
        );
        assert!(!f.same_content(&Fingerprint {
            version: "x".into(),
            ..f.clone()
        }));
        assert!(!f.same_content(&Fingerprint {
            length: 11,
            ..f.clone()
        }));
        assert_eq!(Fingerprint::parse("junk"), None);
        assert_eq!(
            change_time_ms(&local_version(7, 1_700_000_000, 250_000_000)),
            Some(1_700_000_000_250)
        );
        assert_eq!(change_time_ms("node:fifo:0:7.5.0"), Some(5000));
        assert_eq!(change_time_ms("\"etag-1.2.3\""), None);
        assert_eq!(change_time_ms("link:a.b"), None);
    }
}
