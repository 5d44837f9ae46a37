//! The repository stands alone: no text in it points at documents outside it (a sibling
//! directory, a design document or issue tracker the reader does not have), every path it
//! names inside the repository exists, and every section a text cites as `docs/NAME.md §N`
//! (or a document cites of itself as `§N`) is a heading of that document.

use std::path::{Path, PathBuf};

/// Directories that are not the project's own text: build output, installed packages, fuzz
/// inputs, images.
const SKIPPED_DIRS: &[&str] = &[
    ".git",
    "target",
    "node_modules",
    "tests/.venv",
    "fuzz/target",
    "fuzz/corpus",
    "fuzz/artifacts",
    "fuzz/coverage",
    "docs/screenshots",
    "tokengate-data",
    "tokengate-demo",
];

/// Generated files nobody writes by hand.
const SKIPPED_FILES: &[&str] = &[
    "Cargo.lock",
    "fuzz/Cargo.lock",
    "tests/js/package-lock.json",
];

/// Top-level directories whose paths, when a text names them, must exist.
const TREE_ROOTS: &[&str] = &[
    "docs/",
    "tests/",
    "src/",
    "benches/",
    "fuzz/",
    "config/",
    "packaging/",
    "examples/",
    "templates/",
    ".ci/",
];

/// Files some text names that exist only once a program made them.
const MADE_AT_RUN_TIME: &[&str] = &["tests/js/.install.lock"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every text file of the project, as (path relative to the root, contents).
fn texts() -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let name = path.file_name().unwrap().to_string_lossy();
            if path.is_dir() {
                if !SKIPPED_DIRS.contains(&rel.as_str()) && !SKIPPED_DIRS.contains(&&*name) {
                    walk(root, &path, out);
                }
            } else if !SKIPPED_FILES.contains(&rel.as_str())
                && let Ok(text) = std::fs::read_to_string(&path)
            {
                out.push((rel, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &root(), &mut out);
    assert!(
        out.iter().any(|(p, _)| p == "README.md") && out.len() > 50,
        "the walk found the project's files"
    );
    out
}

/// References to what only the people who wrote the text had: `../shared/...`, a design
/// document, a reference document's sections, an issue number, numbered anchors.
fn outside_references(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        // ASCII lower case keeps byte offsets, so `lower`'s indices are `line`'s.
        let lower = line.to_ascii_lowercase();
        let mut hit = |what: &str| found.push(format!("line {}: {what}: {}", n + 1, line.trim()));
        if lower.contains("../shared") || lower.contains("shared/") && lower.contains("..") {
            hit("a directory outside the repository");
        }
        if line.contains("DESIGN.md") || lower.contains("design doc") {
            hit("a design document");
        }
        if lower.contains("reference §") || lower.contains("ref §") || lower.contains("spec §") {
            hit("sections of an outside reference");
        }
        // "issue 12", "issue #12", "anchors A3": numbered items of a tracker or a document
        // the reader does not have ("issues 5 tokens", "trust anchors" pass).
        for (word, plural) in [("issue", false), ("anchor", true)] {
            for (at, _) in lower.match_indices(word) {
                if lower[..at].ends_with(|c: char| c.is_ascii_alphanumeric()) {
                    continue;
                }
                let mut rest = &line[at + word.len()..];
                if plural {
                    rest = rest.strip_prefix('s').unwrap_or(rest);
                }
                let rest = rest.strip_prefix(' ').unwrap_or(rest);
                let rest = rest.strip_prefix('#').unwrap_or(rest);
                let rest = rest.trim_start_matches(|c: char| c.is_ascii_uppercase());
                if rest.starts_with(|c: char| c.is_ascii_digit()) {
                    hit("a numbered issue or anchor");
                }
            }
        }
    }
    found
}

/// The numbers of a Markdown document's numbered headings (`## 5. Title` → "5",
/// `### 1.4 Title` → "1.4").
fn sections(doc: &str) -> Vec<String> {
    doc.lines()
        .filter(|l| l.starts_with('#'))
        .filter_map(|l| {
            let number = l.trim_start_matches('#').trim().split(' ').next()?;
            let number = number.trim_end_matches('.');
            (!number.is_empty() && number.split('.').all(|p| p.parse::<u32>().is_ok()))
                .then(|| number.to_owned())
        })
        .collect()
}

/// Section citations that do not resolve: `docs/NAME.md §N` anywhere, and `§N` alone inside a
/// document of `docs/` (its own sections). A `§` after an RFC, SOAP or other standard's name
/// is that standard's.
fn unresolved_sections(file: &str, text: &str, docs: &[(String, String)]) -> Vec<String> {
    let mut bad = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (n, line) in lines.iter().enumerate() {
        // "docs/x.md §1.4, §1.5" and "§1.1–§1.2": the later numbers are the same document's.
        let mut line_doc: Option<String> = None;
        for (at, _) in line.match_indices('§') {
            let number: String = line[at + '§'.len_utf8()..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let number = number.trim_end_matches('.').to_owned();
            let before = &line[..at];
            let cited_doc = before
                .trim_end_matches([' ', '(', '–', '-', ',', ')', ']', '`'])
                .rsplit([' ', '(', '`', '"', '['])
                .next()
                .filter(|w| w.starts_with("docs/") && w.ends_with(".md"));
            let doc = match cited_doc {
                Some(d) => d.to_owned(),
                None => {
                    // A standard's section: "RFC 9110 §7.6.1", "SOAP 1.1 §6.2", "6265bis §4.1",
                    // or "RFC" at the end of the line before and "9113 §8.2.3" on this one.
                    // The words before it, on this line or (a citation wrapped) the one above.
                    let context = match n.checked_sub(1) {
                        Some(prev) if before.trim_start_matches(['/', '!', ' ']).len() < 24 => {
                            format!("{} {before}", lines[prev])
                        }
                        _ => before.to_owned(),
                    };
                    let tail: String = {
                        let mut t: Vec<char> = context.chars().rev().take(24).collect();
                        t.reverse();
                        t.into_iter().collect()
                    };
                    let last_word = tail.trim_end().rsplit(' ').next().unwrap_or_default();
                    let standard = ["RFC", "SOAP", "bis", "ISO", "XML", "HTTP"]
                        .iter()
                        .any(|s| tail.contains(s))
                        || (last_word.len() >= 3 && last_word.chars().all(|c| c.is_ascii_digit()));
                    let continues_a_doc_citation = before.ends_with('–') || before.ends_with(", ");
                    if standard {
                        continue;
                    }
                    if let (true, Some(d)) = (continues_a_doc_citation, &line_doc) {
                        d.clone()
                    } else if file.starts_with("docs/") && file.ends_with(".md") {
                        file.to_owned()
                    } else {
                        bad.push(format!(
                            "{file}:{}: §{number} names no document: {}",
                            n + 1,
                            line.trim()
                        ));
                        continue;
                    }
                }
            };
            line_doc = Some(doc.clone());
            match docs.iter().find(|(p, _)| *p == doc) {
                None => bad.push(format!("{file}:{}: no document {doc}", n + 1)),
                Some((_, body)) if !sections(body).contains(&number) => bad.push(format!(
                    "{file}:{}: {doc} has no section {number}: {}",
                    n + 1,
                    line.trim()
                )),
                Some(_) => {}
            }
        }
    }
    bad
}

/// Repository paths a text names (`tests/it/login.rs`, `docs/architecture.md`) that do not
/// exist. Parts of URLs are not paths of this repository.
fn missing_paths(file: &str, text: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for prefix in TREE_ROOTS {
            for (at, _) in line.match_indices(prefix) {
                let before = line[..at].chars().last();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || "/._-~$".contains(c)) {
                    continue;
                }
                let path: String = line[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || "/._-".contains(*c))
                    .collect();
                let path = path.trim_end_matches(['.', '/']);
                // Only names of files (with an extension) are checked: directories and
                // patterns in prose ("tests/it/", "fuzz/corpus/<target>") vary too much.
                let has_extension = path
                    .rsplit('/')
                    .next()
                    .is_some_and(|name| name.contains('.') && !name.starts_with('.'));
                if !has_extension
                    || path.contains("..")
                    || MADE_AT_RUN_TIME.contains(&path)
                    || root().join(path).exists()
                {
                    continue;
                }
                bad.push(format!("{file}:{}: no file {path}", n + 1));
            }
        }
    }
    bad
}

#[test]
fn no_text_points_outside_the_repository_and_every_citation_resolves() {
    let texts = texts();
    let docs: Vec<(String, String)> = texts
        .iter()
        .filter(|(p, _)| p.starts_with("docs/") && p.ends_with(".md"))
        .cloned()
        .collect();
    assert!(
        docs.iter()
            .any(|(p, body)| p == "docs/salesforce-protocol.md" && sections(body).len() > 20),
        "the protocol document's numbered sections are read"
    );
    let mut problems = Vec::new();
    for (file, text) in &texts {
        // This file spells out the patterns it looks for.
        if file == "tests/it/repository.rs" {
            continue;
        }
        for p in outside_references(text) {
            problems.push(format!("{file}: {p}"));
        }
        problems.extend(unresolved_sections(file, text, &docs));
        problems.extend(missing_paths(file, text));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checks_catch_what_they_are_for() {
    // Each kind of reference the repository test refuses, and words it must let pass.
    for bad in [
        "see ../shared/protocol.md",
        "as DESIGN.md says",
        "(reference §4.2)",
        "fixed in issue 12",
        "see issue #7",
        "anchors A3 and A4",
    ] {
        assert!(!outside_references(bad).is_empty(), "{bad}");
    }
    for fine in [
        "trust anchors for a private CA",
        "the path anchors relative paths",
        "a token is issued",
        "issues 5 tokens",
    ] {
        assert!(outside_references(fine).is_empty(), "{fine}");
    }
    let docs = vec![(
        "docs/p.md".to_owned(),
        "# P\n## 1. One\n### 1.4 Four\n## 5. Five\n".to_owned(),
    )];
    assert!(unresolved_sections("src/a.rs", "(docs/p.md §1.4, §5)", &docs).is_empty());
    assert!(!unresolved_sections("src/a.rs", "(docs/p.md §1.4, §6)", &docs).is_empty());
    assert!(unresolved_sections("src/a.rs", "RFC 9110 §7.6.1", &docs).is_empty());
    assert!(unresolved_sections("src/a.rs", "// RFC 9110\n// §7.6.1's names", &docs).is_empty());
    assert!(unresolved_sections("README.md", "[docs/p.md](docs/p.md) §5.", &docs).is_empty());
    assert!(!unresolved_sections("README.md", "[docs/p.md](docs/p.md) §4.", &docs).is_empty());
    assert!(!unresolved_sections("src/a.rs", "docs/p.md §1.5", &docs).is_empty());
    assert!(!unresolved_sections("src/a.rs", "docs/q.md §1", &docs).is_empty());
    assert!(!unresolved_sections("docs/p.md", "as in §3.2", &docs).is_empty());
    assert!(unresolved_sections("docs/p.md", "as in §1.4–§5", &docs).is_empty());
    assert!(!missing_paths("README.md", "see `tests/it/nothing_here.rs`").is_empty());
    assert!(missing_paths("README.md", "see `tests/it/login.rs`.").is_empty());
    assert!(missing_paths("x.md", "https://example.com/docs/guide/a.html").is_empty());
}
