//! The login history: every attempt is recorded off the request path through a bounded queue
//! (a full queue drops the row and counts it; a login never waits for the history), written in
//! batches, and pruned by age and count. A batch the store refuses (a database that is down) is
//! tried again until it is written; meanwhile the queue fills, and what does not fit is counted
//! as dropped. Shutdown waits for the queue at most a bounded time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::HistoryConfig;
use crate::domain::Outcome;
use crate::store::{HistoryRow, Store};

pub struct History {
    tx: mpsc::Sender<HistoryRow>,
    /// Rows queued or being written: zero once every recorded row is in the store.
    unwritten: Arc<AtomicUsize>,
    dropped: AtomicU64,
}

const BATCH: usize = 512;
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Backoff between attempts to write a refused batch.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl History {
    /// Starts the writer; the task ends when the `History` is dropped.
    pub fn start(
        store: Arc<dyn Store>,
        cfg: &HistoryConfig,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<HistoryRow>(cfg.queue);
        let (max_age, max_rows, audit_age) = (cfg.max_age, cfg.max_rows, cfg.audit_max_age);
        let unwritten = Arc::new(AtomicUsize::new(0));
        let written_back = unwritten.clone();
        let task = tokio::spawn(async move {
            let mut prune = tokio::time::interval(PRUNE_EVERY);
            let mut buf = Vec::with_capacity(BATCH);
            loop {
                tokio::select! {
                    n = rx.recv_many(&mut buf, BATCH) => {
                        if n == 0 {
                            return;
                        }
                        let rows = Arc::new(std::mem::take(&mut buf));
                        let mut retry = RETRY_FIRST;
                        loop {
                            let (s, batch) = (store.clone(), rows.clone());
                            let written =
                                tokio::task::spawn_blocking(move || s.history_append(&batch)).await;
                            match written {
                                Ok(Ok(())) => break,
                                Ok(Err(e)) => tracing::error!(error = %e, rows = n, "could not write login history rows; retrying"),
                                Err(_) => tracing::error!(rows = n, "the login history writer failed; retrying"),
                            }
                            tokio::time::sleep(retry).await;
                            retry = (retry * 2).min(RETRY_MAX);
                        }
                        written_back.fetch_sub(n, Ordering::AcqRel);
                    }
                    _ = prune.tick(), if store.leader() => {
                        let cutoff = (crate::now_secs().saturating_sub(max_age.as_secs())) * 1000;
                        let s = store.clone();
                        match tokio::task::spawn_blocking(move || s.history_prune(cutoff, max_rows)).await {
                            Ok(Ok(n)) if n > 0 => tracing::debug!(removed = n, "pruned login history"),
                            Ok(Err(e)) => tracing::error!(error = %e, "could not prune login history"),
                            _ => {}
                        }
                        // Refresh token families that ended, on the same pass.
                        let s = store.clone();
                        match tokio::task::spawn_blocking(move || s.refresh_prune(crate::now_secs())).await {
                            Ok(Ok(n)) if n > 0 => tracing::debug!(removed = n, "pruned ended refresh token families"),
                            Ok(Err(e)) => tracing::error!(error = %e, "could not prune refresh token families"),
                            _ => {}
                        }
                        let cutoff = (crate::now_secs().saturating_sub(audit_age.as_secs())) * 1000;
                        let s = store.clone();
                        match tokio::task::spawn_blocking(move || s.audit_prune(cutoff)).await {
                            Ok(Ok(n)) if n > 0 => tracing::info!(removed = n, "pruned the audit trail"),
                            Ok(Err(e)) => tracing::error!(error = %e, "could not prune the audit trail"),
                            _ => {}
                        }
                    }
                }
            }
        });
        (
            Arc::new(Self {
                tx,
                unwritten,
                dropped: AtomicU64::new(0),
            }),
            task,
        )
    }

    /// Queues a row; never waits. A full queue drops the row and counts it.
    pub fn record(&self, row: HistoryRow) {
        // Counted before the send, so the writer never takes away a row not yet counted.
        self.unwritten.fetch_add(1, Ordering::AcqRel);
        if self.tx.try_send(row).is_err() {
            self.unwritten.fetch_sub(1, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Rows queued or being written.
    pub fn pending(&self) -> usize {
        self.unwritten.load(Ordering::Acquire)
    }

    /// Waits (bounded) until the queue is written out.
    pub async fn drain(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.pending() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The history's timestamps are the clock's milliseconds (kept here for its callers).
pub use crate::clock::now_ms;

/// `--since` / `since=`: an RFC 3339 time (`2026-11-28T10:00:00Z`) or a duration ago (`1h`).
pub fn parse_since(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return t
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as u64);
    }
    let ago = humantime::parse_duration(s).ok()?;
    Some(now_ms().saturating_sub(ago.as_millis() as u64))
}

/// A history filter from the parameters the CLI, the admin API and the console share; empty
/// values mean "any". Errors are sentences for the caller.
pub fn filter(
    user: Option<&str>,
    since: Option<&str>,
    outcome: Option<&str>,
    limit: usize,
) -> Result<crate::store::HistoryFilter, String> {
    fn nonempty(v: Option<&str>) -> Option<&str> {
        v.map(str::trim).filter(|v| !v.is_empty())
    }
    let since_ms = match nonempty(since) {
        Some(s) => Some(parse_since(s).ok_or_else(|| {
            format!("since: '{s}' is neither an RFC 3339 time nor a duration such as 1h")
        })?),
        None => None,
    };
    let outcome = nonempty(outcome);
    if let Some(o) = outcome
        && Outcome::parse(o).is_none()
    {
        return Err(format!("outcome: '{o}' is not a known outcome"));
    }
    Ok(crate::store::HistoryFilter {
        user: nonempty(user).map(crate::domain::canonical_username),
        since_ms,
        outcome: outcome.map(str::to_owned),
        limit,
    })
}

pub const CSV_HEADER: &str =
    "time,username,user_id,source_ip,dialect,api_version,client,tls,outcome,reason,token";

/// RFC 4180 CSV, one row per attempt, with a header line.
pub fn to_csv(rows: &[HistoryRow], with_reason: bool) -> String {
    let header: Vec<&str> = CSV_HEADER.split(',').collect();
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    csv_table(
        &header,
        rows.iter().map(|r| {
            vec![
                format_ms(r.at_ms),
                r.username.clone(),
                o(&r.user_id),
                r.source_ip.clone(),
                r.dialect.clone(),
                o(&r.api_version),
                o(&r.client),
                o(&r.tls),
                r.outcome.clone(),
                if with_reason {
                    o(&r.reason)
                } else {
                    String::new()
                },
                o(&r.token),
            ]
        }),
    )
}

/// RFC 4180 CSV (CRLF line ends) with a header line: the login history's and the audit
/// trail's exports. Cells starting with a formula character (OWASP's list: = + - @ tab CR) are
/// prefixed so spreadsheets do not run them; the `csv` crate quotes what RFC 4180 needs quoted.
pub fn csv_table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    fn defuse(s: &str) -> std::borrow::Cow<'_, str> {
        if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            format!("'{s}").into()
        } else {
            s.into()
        }
    }
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    // Writing to memory fails only on a bug in the writer.
    let _ = w.write_record(header.iter().map(|c| defuse(c).into_owned()));
    for row in rows {
        let _ = w.write_record(row.iter().map(|c| defuse(c).into_owned()));
    }
    let bytes = w.into_inner().unwrap_or_default();
    String::from_utf8(bytes).unwrap_or_default()
}

/// Milliseconds since the epoch as RFC 3339 with milliseconds.
pub fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_times_and_durations() {
        assert_eq!(parse_since("1970-01-01T00:00:01Z"), Some(1000));
        let an_hour_ago = parse_since("1h").unwrap();
        assert!(now_ms() - an_hour_ago >= 3_600_000);
        assert!(parse_since("yesterday-ish").is_none());
    }

    #[test]
    fn csv_quotes_and_defuses_cells() {
        let row = HistoryRow {
            at_ms: 0,
            username: "a,\"b\"".into(),
            user_id: None,
            source_ip: "127.0.0.1".into(),
            dialect: "soap".into(),
            api_version: Some("59.0".into()),
            client: Some("=cmd()".into()),
            tls: None,
            outcome: "bad_credentials".into(),
            reason: Some("wrong token".into()),
            token: None,
        };
        let csv = to_csv(std::slice::from_ref(&row), true);
        let line = csv.lines().nth(1).unwrap();
        assert!(line.contains("\"a,\"\"b\"\"\""), "{line}");
        assert!(line.contains("'=cmd()"), "{line}");
        for lead in ["\t=cmd()", "\r=cmd()", "@SUM(A1)", "+1", "-1"] {
            let r = HistoryRow {
                client: Some(lead.into()),
                ..row.clone()
            };
            let csv = to_csv(&[r], true);
            assert!(csv.contains(&format!("'{lead}")), "{lead:?}: {csv}");
        }
        assert!(line.ends_with("bad_credentials,wrong token,"));
        let named = HistoryRow {
            outcome: "success".into(),
            reason: None,
            token: Some("dataloader".into()),
            ..row.clone()
        };
        assert!(
            to_csv(&[named], true)
                .lines()
                .nth(1)
                .unwrap()
                .ends_with("success,,dataloader")
        );
        assert!(
            to_csv(&[row], false)
                .lines()
                .nth(1)
                .unwrap()
                .ends_with("bad_credentials,,")
        );
    }
}
