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
    #[error("the data directory is not empty; restore only into an empty data directory")]
    NotEmpty,
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

/// Writes a snapshot of `store` to `path` (atomically: a temporary file, then a rename).
pub fn backup(store: &dyn Store, path: &Path) -> Result<u64, BackupError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file_err = |reason: String| BackupError::File {
        path: path.display().to_string(),
        reason,
    };
    let tmp = path.with_extension("partial");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| file_err(e.to_string()))?;
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
            Line::Record { k, v, .. } if !ended => {
                decode(&k)?;
                decode(&v)?;
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
