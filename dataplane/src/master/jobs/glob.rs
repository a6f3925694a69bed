//! Shell-style globs over namespace paths, for jobs whose targets name
//! many files at once (`/d/**/*.parquet`).

/// Whether `pattern` is a glob rather than a plain path.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// The longest leading run of plain components of a glob: the directory
/// its matches are searched below.
pub fn glob_base(pattern: &str) -> String {
    let mut base = String::new();
    for part in pattern.split('/').filter(|p| !p.is_empty()) {
        if is_glob(part) {
            break;
        }
        base.push('/');
        base.push_str(part);
    }
    if base.is_empty() { "/".into() } else { base }
}

/// Shell-style match of a whole path: `*` and `?` stay inside one path
/// component, `**` crosses components, `[abc]` / `[a-z]` / `[!x]` classes.
pub fn glob_matches(pattern: &str, path: &str) -> bool {
    fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
        // Returns (matched, length of the class including brackets).
        let mut i = 1;
        let negate = matches!(p.get(1), Some(b'!') | Some(b'^'));
        if negate {
            i += 1;
        }
        let mut hit = false;
        let start = i;
        while i < p.len() && (p[i] != b']' || i == start) {
            if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
                hit |= p[i] <= c && c <= p[i + 2];
                i += 3;
            } else {
                hit |= p[i] == c;
                i += 1;
            }
        }
        (i < p.len()).then_some((hit != negate, i + 1))
    }
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => {
                let rest = &p[2..];
                (0..=s.len()).any(|k| go(rest, &s[k..]))
            }
            Some(b'*') => {
                let rest = &p[1..];
                let mut k = 0;
                loop {
                    if go(rest, &s[k..]) {
                        return true;
                    }
                    if k == s.len() || s[k] == b'/' {
                        return false;
                    }
                    k += 1;
                }
            }
            Some(b'?') => !s.is_empty() && s[0] != b'/' && go(&p[1..], &s[1..]),
            Some(b'[') => match (s.first(), class(p, *s.first().unwrap_or(&0))) {
                (Some(&c), Some((true, len))) if c != b'/' => go(&p[len..], &s[1..]),
                (_, None) => !s.is_empty() && s[0] == b'[' && go(&p[1..], &s[1..]),
                _ => false,
            },
            Some(&c) => s.first() == Some(&c) && go(&p[1..], &s[1..]),
        }
    }
    go(pattern.as_bytes(), path.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob_matches("/d/*.csv", "/d/a.csv"));
        assert!(!glob_matches("/d/*.csv", "/d/x/a.csv"));
        assert!(glob_matches("/d/**/*.csv", "/d/x/y/a.csv"));
        assert!(glob_matches("/d/part-?", "/d/part-7"));
        assert!(!glob_matches("/d/part-?", "/d/part-10"));
        assert!(glob_matches("/d/[ab]*", "/d/beta"));
        assert!(!glob_matches("/d/[!ab]*", "/d/beta"));
        assert!(glob_matches("/d/f[0-9]", "/d/f5"));
        assert!(!glob_matches("/d/f[0-9]", "/d/fx"));
        assert_eq!(glob_base("/d/x/*.csv"), "/d/x");
        assert_eq!(glob_base("/*/a"), "/");
        assert!(is_glob("/a/*") && !is_glob("/a/b"));
    }
}
