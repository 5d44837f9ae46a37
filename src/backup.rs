//! Backup and restore of a data directory: a consistent snapshot of every collection (users,
//! sessions, lockouts, settings, history, the server key) as JSON lines, and its restoration
//! into an empty data directory.
//!
//! The file holds password hashes, token hashes and the server key: it is written with mode
//! 0600 and must be protected like the data directory itself. A header line and an end line
//! with the record count let a restore refuse a truncated or foreign file before writing.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

const FORMAT: &str = "tokengate-backup";
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0} is not a tokengate backup (or a truncated one)")]
    Format(String),
    #[error(
        "the store is not empty (it holds records, or, on PostgreSQL, the server key a replica \
         made when it started on the database); restore only into an empty data directory or \
         database"
    )]
    NotEmpty,
    #[error("the password hash of user '{user}' is not acceptable: {why}")]
    Hash { user: String, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Header {
        format: String,
        version: u32,
        created: u64,
    },
    Record {
        c: String,
        k: String,
        v: String,
    },
    End {
        end: bool,
        records: u64,
    },
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A fresh temporary file next to `path`, created exclusively (`O_EXCL`: never a file that
/// already existed, whoever made it) with mode 0600 under a random name.
fn create_temporary(path: &Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rng = ring::rand::SystemRandom::new();
    loop {
        let nonce = ring::rand::generate::<[u8; 8]>(&rng)
            .map_err(|_| std::io::Error::other("the OS random generator failed"))?
            .expose();
        let tmp_name = format!(
            ".{name}.{}.partial",
            nonce.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let tmp = dir.map_or_else(|| tmp_name.clone().into(), |d| d.join(&tmp_name));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes a snapshot of `store` to `path` atomically: a fresh 0600 temporary file in the same
/// directory, written and synced, then renamed over `path` (and the directory synced, so the
/// rename survives a crash).
pub fn backup(store: &dyn Store, path: &Path) -> Result<u64, BackupError> {
    let file_err = |reason: String| BackupError::File {
        path: path.display().to_string(),
        reason,
    };
    let (tmp, f) = create_temporary(path).map_err(|e| file_err(e.to_string()))?;
    // The temporary file goes away on every failure below.
    struct Cleanup<'a>(Option<&'a Path>);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            if let Some(p) = self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let mut cleanup = Cleanup(Some(&tmp));
    let mut w = BufWriter::new(f);
    let line = |l: &Line, w: &mut BufWriter<std::fs::File>| -> std::io::Result<()> {
        serde_json::to_writer(&mut *w, l)?;
        w.write_all(b"\n")
    };
    line(
        &Line::Header {
            format: FORMAT.into(),
            version: VERSION,
            created: crate::now_secs(),
        },
        &mut w,
    )
    .map_err(|e| file_err(e.to_string()))?;
    let n = store.export(&mut |c, k, v| {
        line(
            &Line::Record {
                c: c.to_owned(),
                k: b64().encode(k),
                v: b64().encode(v),
            },
            &mut w,
        )
    })?;
    line(
        &Line::End {
            end: true,
            records: n,
        },
        &mut w,
    )
    .map_err(|e| file_err(e.to_string()))?;
    let f = w.into_inner().map_err(|e| file_err(e.to_string()))?;
    f.sync_all().map_err(|e| file_err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(e.to_string()))?;
    cleanup.0 = None;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| file_err(e.to_string()))?;
    Ok(n)
}

/// Restores a backup into an empty store; the file is checked in full before anything is
/// written.
pub fn restore(store: &dyn Store, path: &Path) -> Result<u64, BackupError> {
    let name = path.display().to_string();
    let open = || {
        std::fs::File::open(path)
            .map(std::io::BufReader::new)
            .map_err(|e| BackupError::File {
                path: name.clone(),
                reason: e.to_string(),
            })
    };
    if !store.is_empty()? {
        return Err(BackupError::NotEmpty);
    }
    let bad = || BackupError::Format(name.clone());
    let decode = |s: &str| b64().decode(s).map_err(|_| bad());
    // Pass 1: header, well-formed records, end line with the right count.
    let mut lines = open()?.lines();
    match lines
        .next()
        .and_then(Result::ok)
        .and_then(|l| serde_json::from_str::<Line>(&l).ok())
    {
        Some(Line::Header {
            format, version, ..
        }) if format == FORMAT && version == VERSION => {}
        _ => return Err(bad()),
    }
    let mut count = 0u64;
    let mut ended = false;
    for l in lines {
        let l = l.map_err(|_| bad())?;
        match serde_json::from_str::<Line>(&l).map_err(|_| bad())? {
            Line::Record { c, k, v } if !ended => {
                decode(&k)?;
                let value = decode(&v)?;
                // A stored password hash sets the cost of verifying it: one with parameters
                // beyond tokengate's bounds would make a login take gigabytes or minutes.
                if c == "users" {
                    let user = crate::store::User::decode(&value).map_err(|_| bad())?;
                    crate::secret::check_stored_hash(&user.password_hash).map_err(|why| {
                        BackupError::Hash {
                            user: user.username.chars().take(80).collect(),
                            why,
                        }
                    })?;
                }
                count += 1;
            }
            Line::End { records, .. } if !ended && records == count => ended = true,
            _ => return Err(bad()),
        }
    }
    if !ended {
        return Err(bad());
    }
    // Pass 2: write.
    for l in open()?.lines().skip(1) {
        if let Line::Record { c, k, v } =
            serde_json::from_str::<Line>(&l.map_err(|_| bad())?).map_err(|_| bad())?
        {
            store.import(&c, &decode(&k)?, &decode(&v)?)?;
        }
    }
    store.flush()?;
    Ok(count)
}
