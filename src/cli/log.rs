//! Where a server's log goes: standard error, through one bounded buffer that a thread of its
//! own flushes every [`FLUSH_EVERY`] (and that flushes itself whenever it fills up).
//!
//! A server writes a line per request (the access log). Written straight to standard error,
//! each line would be a system call on the request's thread; handed to a writer thread one by
//! one, each would be an allocation and, as that thread sleeps between lines, a wake-up. Here
//! a line is a copy into the buffer under an uncontended lock, and the system calls are one
//! per buffer-full or per tick. The cost: a line reaches standard error up to [`FLUSH_EVERY`]
//! late, and a crash loses at most that much of the log.

use std::io::{BufWriter, Stderr, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How often the buffer is written out when it has not filled up.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// The buffer's size: once full, the next line writes it out first.
const BUFFER_BYTES: usize = 64 * 1024;

type Shared = Arc<Mutex<BufWriter<Stderr>>>;

/// The writer the log formatter is given: each line locks the buffer once.
pub struct Writer(Shared);

/// The buffer, locked for one line.
pub struct Line<'a>(MutexGuard<'a, BufWriter<Stderr>>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Writer {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line(self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl std::io::Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // The flushing thread's work: a line must not cost a system call.
        Ok(())
    }
}

/// Writes out what is buffered, and stops the flushing thread, when dropped: keep it until
/// the process exits.
pub struct Flusher {
    writer: Shared,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The buffered standard error and the thread that flushes it.
pub fn buffered_stderr() -> (Writer, Flusher) {
    let writer: Shared = Arc::new(Mutex::new(BufWriter::with_capacity(
        BUFFER_BYTES,
        std::io::stderr(),
    )));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (writer, stop) = (writer.clone(), stop.clone());
        std::thread::Builder::new()
            .name("tokengate-log".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::park_timeout(FLUSH_EVERY);
                    flush(&writer);
                }
            })
            .ok()
    };
    (
        Writer(writer.clone()),
        Flusher {
            writer,
            stop,
            thread,
        },
    )
}

fn flush(writer: &Shared) {
    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
    if !w.buffer().is_empty() {
        // Nowhere to report a failure to write the log.
        let _ = w.flush();
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        flush(&self.writer);
    }
}

/// The log format with the id of the request being handled added to each line written while
/// it is (`server::access::current_request_id`): `"request_id":"…"` first in a JSON line,
/// ` request_id=…` at the end of a text line. Lines outside a request are written as they are.
pub struct WithRequestId<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for WithRequestId<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        // The access line names its request itself (and is written when the response body
        // ends, where no request is current).
        let id = match event.metadata().target() {
            tokengate::server::access::TARGET => None,
            _ => tokengate::server::access::current_request_id(),
        };
        let Some(id) = id else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0
            .format_event(ctx, format::Writer::new(&mut line), event)?;
        if let Some(rest) = line.strip_prefix('{') {
            let id = serde_json::to_string(&id).map_err(|_| std::fmt::Error)?;
            write!(writer, "{{\"request_id\":{id},{rest}")
        } else {
            let body = line.strip_suffix('\n').unwrap_or(&line);
            writeln!(writer, "{body} request_id={id}")
        }
    }
}
