//! The documentation a user and a newcomer read: every relative link of
//! the README, `docs/` and `e2e/README.md` names a file of the repository,
//! and every `#anchor` a heading of the file it points into. No cluster.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The documents checked: the README, every page of `docs/`, the test
/// bed's README.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut docs = vec![root.join("README.md"), root.join("e2e/README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.expect("a docs entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    docs.sort();
    docs
}

/// Targets of inline links `[text](target)` outside code blocks.
fn links(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    out
}

/// The anchor a heading gets: lower case, spaces to hyphens, punctuation
/// other than hyphens and underscores dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(markdown: &str) -> Vec<String> {
    let mut in_code = false;
    markdown
        .lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                in_code = !in_code;
            }
            !in_code && l.starts_with('#')
        })
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

#[test]
fn every_relative_link_of_the_documentation_resolves_in_the_repository() {
    let root = repo();
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents(&root) {
        let text = std::fs::read_to_string(&doc).expect("a readable document");
        let dir = doc.parent().expect("a directory");
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let target = if file.is_empty() {
                doc.clone()
            } else {
                dir.join(file)
            };
            let inside = target
                .canonicalize()
                .map(|t| t.starts_with(root.canonicalize().expect("the root")))
                .unwrap_or(false);
            if !inside {
                broken.push(format!(
                    "{}: {link}: no such file in the repository",
                    doc.display()
                ));
                continue;
            }
            if !anchor.is_empty() {
                let text = std::fs::read_to_string(&target).unwrap_or_default();
                if !anchors(&text).iter().any(|a| a == anchor) {
                    broken.push(format!("{}: {link}: no heading #{anchor}", doc.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(
        checked > 20,
        "only {checked} links found: is the parser right?"
    );
}

#[test]
fn the_link_parser_finds_links_and_headings_as_written() {
    let md = "See [a](docs/a.md) and [b](b.md#x-y).\n```\n[no](code.md)\n```\n## X y\n";
    assert_eq!(links(md), ["docs/a.md", "b.md#x-y"]);
    assert_eq!(anchors(md), ["x-y"]);
    assert_eq!(
        slug("The transport's ceiling, and this machine"),
        "the-transports-ceiling-and-this-machine"
    );
}
