//! Namespace paths: absolute, normalised, and free of anything that could
//! escape a mount (`..`, NUL, empty components).

use std::fmt;

/// Longest path the namespace accepts, in bytes (Linux's PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest single component, in bytes (Linux's NAME_MAX).
pub const MAX_NAME_BYTES: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path {0:?} is not absolute")]
    NotAbsolute(String),
    #[error("path {path:?} has an empty component at byte {at}")]
    EmptyComponent { path: String, at: usize },
    #[error("path {0:?} contains `.` or `..`")]
    DotComponent(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path is {len} bytes long; the limit is {MAX_PATH_BYTES}")]
    TooLong { len: usize },
    #[error("path component {name:?} is {len} bytes long; the limit is {MAX_NAME_BYTES}")]
    NameTooLong { name: String, len: usize },
}

/// A validated absolute path in the Weir namespace. `/` is the root; every
/// other path is `/`-separated components with no trailing slash.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WeirPath(String);

impl WeirPath {
    pub fn root() -> Self {
        Self("/".to_owned())
    }

    /// Validates `raw`. A single trailing slash is accepted and dropped, since
    /// users type `/data/` as often as `/data`; anything else irregular is an
    /// error rather than silently rewritten, so two spellings never name two
    /// different inodes.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        if raw.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong { len: raw.len() });
        }
        if raw.contains('\0') {
            return Err(PathError::Nul(raw.to_owned()));
        }
        let Some(rest) = raw.strip_prefix('/') else {
            return Err(PathError::NotAbsolute(raw.to_owned()));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() {
            return Ok(Self::root());
        }
        let mut offset = 1;
        for name in rest.split('/') {
            if name.is_empty() {
                return Err(PathError::EmptyComponent {
                    path: raw.to_owned(),
                    at: offset,
                });
            }
            if name == "." || name == ".." {
                return Err(PathError::DotComponent(raw.to_owned()));
            }
            if name.len() > MAX_NAME_BYTES {
                return Err(PathError::NameTooLong {
                    name: name.to_owned(),
                    len: name.len(),
                });
            }
            offset += name.len() + 1;
        }
        Ok(Self(format!("/{rest}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// Components from the root down; empty for the root.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }

    /// The last component, or `None` for the root.
    pub fn name(&self) -> Option<&str> {
        if self.is_root() {
            None
        } else {
            self.0.rsplit('/').next()
        }
    }

    /// The parent directory, or `None` for the root.
    pub fn parent(&self) -> Option<WeirPath> {
        if self.is_root() {
            return None;
        }
        let cut = self.0.rfind('/').unwrap_or(0);
        Some(if cut == 0 {
            Self::root()
        } else {
            Self(self.0[..cut].to_owned())
        })
    }

    /// `self` joined with one validated component.
    pub fn child(&self, name: &str) -> Result<WeirPath, PathError> {
        if name.contains('/') {
            return Err(PathError::EmptyComponent {
                path: name.to_owned(),
                at: 0,
            });
        }
        let joined = if self.is_root() {
            format!("/{name}")
        } else {
            format!("{}/{name}", self.0)
        };
        Self::parse(&joined)
    }

    /// True when `self` is `ancestor` or lies below it.
    pub fn starts_with(&self, ancestor: &WeirPath) -> bool {
        ancestor.is_root()
            || self.0 == ancestor.0
            || (self.0.starts_with(&ancestor.0) && self.0.as_bytes()[ancestor.0.len()] == b'/')
    }

    /// The part of `self` below `ancestor`, without a leading slash; `None`
    /// when `self` is not under `ancestor`.
    pub fn strip_prefix(&self, ancestor: &WeirPath) -> Option<&str> {
        if !self.starts_with(ancestor) {
            return None;
        }
        if ancestor.is_root() {
            return Some(&self.0[1..]);
        }
        Some(self.0[ancestor.0.len()..].trim_start_matches('/'))
    }
}

impl fmt::Display for WeirPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for WeirPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::str::FromStr for WeirPath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_normal_paths() {
        assert_eq!(WeirPath::parse("/").unwrap(), WeirPath::root());
        assert_eq!(WeirPath::parse("/a/b").unwrap().as_str(), "/a/b");
        assert_eq!(WeirPath::parse("/a/b/").unwrap().as_str(), "/a/b");
        assert_eq!(WeirPath::parse("/a/..b/c.").unwrap().as_str(), "/a/..b/c.");
    }

    #[test]
    fn rejects_bad_paths_with_the_reason() {
        assert!(matches!(
            WeirPath::parse("a/b"),
            Err(PathError::NotAbsolute(_))
        ));
        assert!(matches!(
            WeirPath::parse(""),
            Err(PathError::NotAbsolute(_))
        ));
        assert!(matches!(
            WeirPath::parse("/a//b"),
            Err(PathError::EmptyComponent { at: 3, .. })
        ));
        assert!(matches!(
            WeirPath::parse("/a/../b"),
            Err(PathError::DotComponent(_))
        ));
        assert!(matches!(
            WeirPath::parse("/a/./b"),
            Err(PathError::DotComponent(_))
        ));
        assert!(matches!(WeirPath::parse("/a\0b"), Err(PathError::Nul(_))));
        assert!(matches!(
            WeirPath::parse(&format!("/{}", "x".repeat(256))),
            Err(PathError::NameTooLong { len: 256, .. })
        ));
        assert!(matches!(
            WeirPath::parse(&"/x".repeat(2049)),
            Err(PathError::TooLong { len: 4098 })
        ));
    }

    #[test]
    fn navigates_the_tree() {
        let p = WeirPath::parse("/data/train/x.bin").unwrap();
        assert_eq!(p.name(), Some("x.bin"));
        assert_eq!(p.parent().unwrap().as_str(), "/data/train");
        assert_eq!(
            WeirPath::parse("/a").unwrap().parent(),
            Some(WeirPath::root())
        );
        assert_eq!(WeirPath::root().parent(), None);
        assert_eq!(
            p.components().collect::<Vec<_>>(),
            ["data", "train", "x.bin"]
        );
        assert_eq!(WeirPath::root().child("a").unwrap().as_str(), "/a");
        assert!(WeirPath::root().child("a/b").is_err());
        assert!(WeirPath::root().child("..").is_err());
        let data = WeirPath::parse("/data").unwrap();
        assert!(p.starts_with(&data));
        assert!(!WeirPath::parse("/database").unwrap().starts_with(&data));
        assert_eq!(p.strip_prefix(&data), Some("train/x.bin"));
        assert_eq!(data.strip_prefix(&data), Some(""));
        assert_eq!(p.strip_prefix(&WeirPath::root()), Some("data/train/x.bin"));
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(raw in "\\PC{0,64}") {
            if let Ok(p) = WeirPath::parse(&raw) {
                prop_assert_eq!(WeirPath::parse(p.as_str()).unwrap(), p.clone());
                prop_assert!(!p.components().any(|c| c == ".." || c == "." || c.is_empty()));
            }
        }

        #[test]
        fn parent_and_child_are_inverse(names in proptest::collection::vec("[a-z0-9._-]{1,12}", 1..6)) {
            prop_assume!(names.iter().all(|n| n != "." && n != ".."));
            let mut p = WeirPath::root();
            for n in &names {
                p = p.child(n).unwrap();
            }
            prop_assert_eq!(p.name(), names.last().map(String::as_str));
            let parent = p.parent().unwrap();
            prop_assert_eq!(parent.child(names.last().unwrap()).unwrap(), p);
        }
    }
}
