//! Request bodies: the body type handlers see ([`ReqBody`]), reading the bodies tokengate must
//! look at (logins, SOAP envelopes, forms, JSON) under size, time and memory bounds, and what
//! happens to a body a handler answered without reading.
//!
//! Bounds: a body is read within `body_read_timeout`, at most `limit` bytes as sent and
//! `limit` bytes once gzip-decoded (WSC and Beatbox compress their envelopes); and every byte
//! held in memory is counted in one [`Budget`] shared by all requests
//! (`[server] max_buffered_body_bytes`), so many large bodies at once are refused (503) instead
//! of exhausting memory. Bodies that are only forwarded are streamed, never read here.
//!
//! A refusal sent before the body arrived (a POST with an expired session, say) must not leave
//! a dead keep-alive connection behind: HTTP/1.1 would read the unread body as the next
//! request, so hyper closes the connection, and a client that reuses it at once (jsforce
//! logging in again after `INVALID_SESSION_ID`) gets "socket hang up". A body a handler drops
//! unread comes back to the connection's handler ([`Leftover`]), which drains a bounded
//! remainder (64 KiB within 1 s) to keep the connection, or else announces `Connection: close`.

use std::io::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::CONTENT_ENCODING;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request body did not arrive in time")]
    Timeout,
    #[error("the request body could not be read")]
    Io,
    #[error("the gzip request body is corrupt")]
    BadGzip,
    #[error("content encoding '{0}' is not supported (use gzip or none)")]
    UnsupportedEncoding(String),
    /// The memory for request bodies is spent: retry shortly.
    #[error("the server holds too many request bodies; retry shortly")]
    Busy,
}

/// The memory all buffered request bodies may take together.
pub struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty claim on the budget, grown as a body is read.
    pub fn claim(self: &Arc<Self>) -> Held {
        Held {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

/// Bytes of the budget held for one request's body; given back when dropped.
pub struct Held {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Held {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `n` more bytes, or fails (and takes nothing) when the budget is spent.
    fn grow(&mut self, n: usize) -> Result<(), BodyError> {
        let b = &self.budget;
        let mut used = b.used.load(Ordering::Relaxed);
        loop {
            let next = used.checked_add(n).filter(|&u| u <= b.max);
            let Some(next) = next else {
                return Err(BodyError::Busy);
            };
            match b
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.bytes += n;
                    return Ok(());
                }
                Err(now) => used = now,
            }
        }
    }
}

impl Held {
    /// This claim, moved out (for a blocking task to grow it); an empty claim stays behind.
    fn detach(&mut self) -> Held {
        Held {
            budget: self.budget.clone(),
            bytes: std::mem::take(&mut self.bytes),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Where a body dropped unread goes, for the connection's handler to drain.
pub type Leftover = Arc<Mutex<Option<Incoming>>>;

/// A request's body as handlers see it: hyper's, and for an HTTP/1 request that has one, a
/// note of whether it was read to its end (see the module docs).
pub struct ReqBody {
    /// `None` only once dropped.
    inner: Option<Incoming>,
    leftover: Option<Leftover>,
}

impl ReqBody {
    /// A body nobody needs to drain: empty, or on HTTP/2 (an unread stream is reset).
    pub fn plain(body: Incoming) -> Self {
        Self {
            inner: Some(body),
            leftover: None,
        }
    }

    /// Wraps an HTTP/1 body; returns where it lands if it is dropped unread.
    pub fn track(body: Incoming) -> (Self, Leftover) {
        let slot: Leftover = Arc::default();
        (
            Self {
                inner: Some(body),
                leftover: Some(slot.clone()),
            },
            slot,
        )
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            // Read to its end (or failed): nothing for the connection to drain.
            this.leftover = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for ReqBody {
    fn drop(&mut self) {
        if let Some(slot) = self.leftover.take()
            && let Some(body) = self.inner.take()
            && !body.is_end_stream()
        {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(body);
        }
    }
}

/// What an answered request's connection can do with a body left unread: drains up to
/// `max` bytes within `within`; true when the body ended (the connection stays usable).
pub async fn drain(body: Incoming, max: usize, within: Duration) -> bool {
    let limited = http_body_util::Limited::new(body, max);
    matches!(
        tokio::time::timeout(within, limited.collect()).await,
        Ok(Ok(_))
    )
}

/// How a body's bytes were encoded.
enum Decoding {
    Identity,
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
}

/// How far [`Reader::fill`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// The body was read to its end.
    Ended,
    /// The limit was reached and the body goes on.
    Full,
}

/// Reads a request body in steps, decoding gzip as it goes, with every byte held counted in
/// the budget.
pub struct Reader {
    body: ReqBody,
    decoding: Decoding,
    /// Identity: the bytes read. Gzip: unused (the decoder holds the output).
    raw: BytesMut,
    /// Bytes read as sent.
    raw_len: usize,
    /// Gzip: bytes read but not yet decoded (decoding stopped at a limit).
    stash: Bytes,
    held: Held,
    deadline: tokio::time::Instant,
    /// The body has no more frames.
    drained: bool,
}

/// deflate expands at most about 1032 to 1; gzip input is fed in pieces no larger than the
/// room left divided by this, so decoding never runs far past a limit.
const MAX_EXPANSION: usize = 1032;

impl Reader {
    pub fn new(
        body: ReqBody,
        headers: &HeaderMap,
        budget: &Arc<Budget>,
        timeout: Duration,
    ) -> Result<Self, BodyError> {
        let encoding = headers
            .get(CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
            .unwrap_or_default();
        let decoding = match encoding.as_str() {
            "" | "identity" => Decoding::Identity,
            "gzip" | "x-gzip" => {
                Decoding::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new())))
            }
            other => {
                return Err(BodyError::UnsupportedEncoding(
                    other.chars().take(40).collect(),
                ));
            }
        };
        Ok(Self {
            body,
            decoding,
            raw: BytesMut::new(),
            raw_len: 0,
            stash: Bytes::new(),
            held: budget.claim(),
            deadline: tokio::time::Instant::now() + timeout,
            drained: false,
        })
    }

    /// The decoded bytes so far.
    pub fn decoded(&self) -> &[u8] {
        match &self.decoding {
            Decoding::Identity => &self.raw,
            Decoding::Gzip(d) => d.get_ref(),
        }
    }

    /// Decodes stashed gzip input until it is used up or the output reaches `limit`. Input
    /// that may inflate to more than `INLINE_OUTPUT` bytes is decoded on the blocking pool
    /// (`spawn_blocking`), not on an async worker: a few kilobytes of deflate can expand a
    /// thousandfold, and inflating megabytes would hold the worker, and every connection it
    /// serves, for as long.
    async fn decode_stash(&mut self, limit: usize) -> Result<(), BodyError> {
        const INLINE_OUTPUT: usize = 256 * 1024;
        let Decoding::Gzip(d) = &mut self.decoding else {
            return Ok(());
        };
        let room = limit.saturating_sub(d.get_ref().len());
        if self.stash.len().saturating_mul(MAX_EXPANSION).min(room) <= INLINE_OUTPUT {
            return inflate(d, &mut self.stash, &mut self.held, limit);
        }
        // The decoder, its input and the budget claim go to the blocking task and come back;
        // if this request is dropped meanwhile, the task ends at `limit` and drops them.
        let Decoding::Gzip(mut d) = std::mem::replace(&mut self.decoding, Decoding::Identity)
        else {
            return Ok(());
        };
        let mut stash = std::mem::take(&mut self.stash);
        let mut held = self.held.detach();
        let (d, stash, held, result) = tokio::task::spawn_blocking(move || {
            let result = inflate(&mut d, &mut stash, &mut held, limit);
            (d, stash, held, result)
        })
        .await
        .map_err(|_| BodyError::Io)?;
        self.decoding = Decoding::Gzip(d);
        self.stash = stash;
        self.held = held;
        result
    }

    /// Reads until the body ends or `limit` bytes are reached, as sent or decoded.
    pub async fn fill(&mut self, limit: usize) -> Result<Fill, BodyError> {
        loop {
            self.decode_stash(limit).await?;
            let decoded = self.decoded().len();
            if self.drained && self.stash.is_empty() {
                if let Decoding::Gzip(d) = &mut self.decoding {
                    d.try_finish().map_err(|_| BodyError::BadGzip)?;
                }
                return Ok(Fill::Ended);
            }
            if decoded >= limit || self.raw_len >= limit {
                return Ok(Fill::Full);
            }
            let frame = tokio::time::timeout_at(self.deadline, self.body.frame())
                .await
                .map_err(|_| BodyError::Timeout)?;
            let Some(frame) = frame else {
                self.drained = true;
                continue;
            };
            let Ok(data) = frame.map_err(|_| BodyError::Io)?.into_data() else {
                continue; // trailers
            };
            self.raw_len += data.len();
            match &mut self.decoding {
                Decoding::Identity => {
                    self.held.grow(data.len())?;
                    self.raw.extend_from_slice(&data);
                }
                Decoding::Gzip(_) => {
                    // Input waiting to be decoded is held too.
                    self.held.grow(data.len())?;
                    let mut stash = BytesMut::from(std::mem::take(&mut self.stash));
                    stash.extend_from_slice(&data);
                    self.stash = stash.freeze();
                }
            }
        }
    }

    /// The whole decoded body, with its claim on the budget.
    pub fn into_bytes(self) -> (Bytes, Held) {
        let bytes = match self.decoding {
            Decoding::Identity => self.raw.freeze(),
            Decoding::Gzip(mut d) => Bytes::from(std::mem::take(d.get_mut())),
        };
        (bytes, self.held)
    }
}

/// Feeds stashed gzip input to the decoder until it is used up or the output reaches `limit`,
/// every byte of output counted in the budget as it appears.
fn inflate(
    d: &mut flate2::write::GzDecoder<Vec<u8>>,
    stash: &mut Bytes,
    held: &mut Held,
    limit: usize,
) -> Result<(), BodyError> {
    while !stash.is_empty() && d.get_ref().len() < limit {
        let before = d.get_ref().len();
        let room = limit - before;
        let piece = (room / MAX_EXPANSION).clamp(1, 4096).min(stash.len());
        let input = stash.split_to(piece);
        d.write_all(&input).map_err(|_| BodyError::BadGzip)?;
        held.grow(d.get_ref().len() - before)?;
    }
    Ok(())
}

/// Reads a whole body of at most `limit` bytes (as sent and decoded) within `timeout`.
pub async fn read(
    body: ReqBody,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
    budget: &Arc<Budget>,
) -> Result<(Bytes, Held), BodyError> {
    let mut r = Reader::new(body, headers, budget, timeout)?;
    match r.fill(limit).await? {
        Fill::Ended if r.decoded().len() <= limit => Ok(r.into_bytes()),
        _ => Err(BodyError::TooLarge(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_past_its_bound_and_is_given_back_on_drop() {
        let b = Budget::new(100);
        let mut one = b.claim();
        one.grow(60).unwrap();
        let mut two = b.claim();
        assert!(matches!(two.grow(50), Err(BodyError::Busy)));
        two.grow(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(one);
        assert_eq!(b.used(), 40);
        drop(two);
        assert_eq!(b.used(), 0);
    }
}
