//! The Node.js dependencies the real-client tests share (`tests/js`: jsforce, playwright-core
//! and axe-core, locked by `package-lock.json`). `.ci/run` installs them before the tests;
//! a developer's first `cargo test` installs them here, once: an exclusive lock on a file next
//! to them keeps two test binaries, or two tests of one, from running `npm ci` over each other.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The packages `package.json` pins, as installed.
const PINNED: [(&str, &str); 3] = [
    ("axe-core", "4.14.1"),
    ("jsforce", "3.10.16"),
    ("playwright-core", "1.64.1"),
];

pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

fn installed(package: &str) -> Option<String> {
    let manifest = dir()
        .join("node_modules")
        .join(package)
        .join("package.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(manifest).ok()?).ok()?;
    v["version"].as_str().map(str::to_owned)
}

fn complete() -> bool {
    PINNED
        .iter()
        .all(|(p, v)| installed(p).as_deref() == Some(*v))
}

/// `tests/js`, with its pinned dependencies installed. Fails (never skips) when Node.js or
/// npm is missing or the registry cannot be reached.
pub fn node_modules() -> PathBuf {
    if complete() {
        return dir();
    }
    let lock = std::fs::File::create(dir().join(".install.lock")).expect("the install lock file");
    lock.lock().expect("the install lock");
    // Another test may have installed them while this one waited.
    if !complete() {
        let mut npm = std::process::Command::new("npm");
        npm.args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir());
        let (out, killed) = super::process::run_bounded(npm, None, Duration::from_secs(600));
        assert!(
            out.status.success() && !killed,
            "`npm ci` in {} failed{}; the Node tests need Node.js >= 18 and npm with registry \
             access (.ci/run installs them)\n{}",
            dir().display(),
            if killed { " (killed after 600 s)" } else { "" },
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(complete(), "npm ci did not install {PINNED:?}");
    }
    dir()
}
