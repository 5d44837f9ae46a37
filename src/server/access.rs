//! Request ids and the access log: what an operator needs to follow one request through
//! tokengate's logs, the upstream's and a load balancer's.
//!
//! - **Request id.** Every request gets one ([`RequestIds::choose`]): the `X-Request-Id` a
//!   trusted proxy (`[server] trusted_proxies`) sent, when it is sane (1 to
//!   [`MAX_REQUEST_ID`] visible ASCII characters, one header line); otherwise one made here
//!   from a per-process random prefix and a counter (no random call per request). It replaces
//!   whatever the client sent on the request, so the upstream sees tokengate's choice
//!   (`proxy::sanitise` keeps it), it is set on every response, refusals included, and it is
//!   kept in the request's task-local context, so every log line written while the request
//!   is handled carries it (the log formatter adds it).
//! - **Access log.** One `INFO` event per request on the target [`TARGET`], emitted when the
//!   response body has been sent (or dropped): method, path (never the query string, which
//!   may hold an `oauth_token`), status, bytes in (the declared `Content-Length`) and out (the
//!   response body as sent), duration, dialect, the authenticated user's id, the token the
//!   credential carried ("default" or a named token's name; none for a password alone or a
//!   session made without one), the client address and the request id. No header, query string or credential is ever part of it.
//!   The user id is noted by `server::caller` into a task-local slot ([`note_session`],
//!   [`note_user`]) that lives in the request's future: no allocation, no lock.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::HeaderValue;
use http::{HeaderMap, Method, Response, Uri};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::auth::session::Session;
use crate::auth::{AuthError, Verified};
use crate::store::User;
use crate::wire::{Body, BodyError};

/// The tracing target of the access log, for operators' filters (`RUST_LOG`, `[log] level`).
pub const TARGET: &str = "tokengate::access";

pub use crate::proxy::sanitise::X_REQUEST_ID;

/// The longest request id taken from a trusted proxy (AWS's trace ids and UUIDs fit well).
pub const MAX_REQUEST_ID: usize = 128;

/// Where request ids come from in this process.
pub struct RequestIds {
    /// 16 hex digits from the OS's random generator, once per process: ids from several
    /// replicas (or restarts) do not collide.
    prefix: [u8; 16],
    next: AtomicU64,
    /// Which generator of the process this is (from 1): the owner of a thread's block
    /// ([`RequestIds::next_number`]). Not its address, which a later generator may reuse.
    serial: u64,
}

impl RequestIds {
    pub fn new() -> Result<Self, ring::error::Unspecified> {
        use ring::rand::SecureRandom as _;
        let mut raw = [0u8; 8];
        ring::rand::SystemRandom::new().fill(&mut raw)?;
        let mut prefix = [0u8; 16];
        for (i, b) in raw.iter().enumerate() {
            prefix[2 * i] = HEX[usize::from(b >> 4)];
            prefix[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        static SERIALS: AtomicU64 = AtomicU64::new(1);
        Ok(Self {
            prefix,
            next: AtomicU64::new(1),
            serial: SERIALS.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The request's id: a trusted proxy's, when sane, or a new one.
    pub fn choose(&self, trusted_peer: bool, headers: &HeaderMap) -> HeaderValue {
        if trusted_peer {
            let mut sent = headers.get_all(&X_REQUEST_ID).iter();
            if let (Some(v), None) = (sent.next(), sent.next())
                && sane(v.as_bytes())
            {
                return v.clone();
            }
        }
        self.generate()
    }

    /// The next counter value. Each thread takes a block of [`ID_BLOCK`] numbers from the
    /// shared counter and counts through it alone: an atomic add on a counter every worker
    /// thread shares moves its cache line between cores on every request. Ids stay unique;
    /// they are no longer in arrival order across threads (they never were a clock).
    fn next_number(&self) -> u64 {
        thread_local! {
            /// (the generator's serial, next, end): whose block this thread holds.
            static BLOCK: std::cell::Cell<(u64, u64, u64)> = const { std::cell::Cell::new((0, 0, 0)) };
        }
        let me = self.serial;
        BLOCK.with(|b| {
            let (owner, mut next, mut end) = b.get();
            if owner != me || next == end {
                next = self.next.fetch_add(ID_BLOCK, Ordering::Relaxed);
                end = next + ID_BLOCK;
            }
            b.set((me, next + 1, end));
            next
        })
    }

    /// `PREFIX-COUNTER`, both hex: one relaxed add, and a write into this thread's chunk of
    /// bytes ([`ID_CHUNK`], shared by reference count with the ids cut from it). A new chunk
    /// is allocated only when the current one is full while one of its ids is still in use
    /// (under load, about once per chunk: 32 to 50 ids; never on a connection's calls one
    /// after another, where each id is gone before the next is made). An id keeps its chunk
    /// alive until the request's access-log line is written: at most [`ID_CHUNK`] bytes per
    /// request in flight, beside the tens of KiB of its connection's buffers.
    fn generate(&self) -> HeaderValue {
        thread_local! {
            static CHUNK: RefCell<BytesMut> = RefCell::new(BytesMut::new());
        }
        let n = self.next_number();
        let mut buf = [0u8; ID_LEN];
        buf[..16].copy_from_slice(&self.prefix);
        buf[16] = b'-';
        let mut rest = &mut buf[17..];
        let room = rest.len();
        // 16 hex digits always fit a u64.
        let _ = write!(rest, "{n:x}");
        let len = 17 + room - rest.len();
        let id = &buf[..len];
        let id = CHUNK.with_borrow_mut(|chunk| {
            if chunk.capacity() < id.len() {
                // Takes the chunk back in place when none of its ids is left, else a new one.
                chunk.reserve(ID_CHUNK);
            }
            chunk.extend_from_slice(id);
            chunk.split().freeze()
        });
        HeaderValue::from_maybe_shared(id).expect("hex digits and a dash are a valid value")
    }
}

const ID_LEN: usize = 16 + 1 + 16;

/// The bytes of a thread's chunk of request ids (not [`ID_BLOCK`], its numbers): room for 32
/// of the longest.
const ID_CHUNK: usize = 32 * ID_LEN;

/// How many request numbers a thread takes from the shared counter at a time
/// ([`RequestIds::next_number`]).
const ID_BLOCK: u64 = 1024;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A request id worth keeping: 1 to [`MAX_REQUEST_ID`] visible ASCII characters (no spaces,
/// no controls), so it cannot break a log line or smuggle anything into one.
pub fn sane(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len()) && id.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Whose request it was, as `server::caller` established it.
enum Who {
    Session(Arc<Session>),
    /// The user, and the name of the token the password came with.
    User(Arc<User>, Option<&'static str>, Option<Arc<str>>),
}

impl Who {
    fn id(&self) -> &str {
        match self {
            Who::Session(s) => &s.user_id,
            Who::User(u, ..) => &u.id,
        }
    }

    fn token(&self) -> Option<&str> {
        match self {
            Who::Session(s) => s.token.as_deref(),
            Who::User(_, fixed, named) => fixed.or(named.as_deref()),
        }
    }
}

/// What the request's own future knows about it (see [`scope`]): its id, for every log line
/// written while it is handled, and its authenticated user, for the access line.
struct Current {
    request_id: HeaderValue,
    caller: RefCell<Option<Who>>,
}

tokio::task_local! {
    static CURRENT: Current;
}

/// Notes the session a request was authenticated by, for the access log.
pub fn note_session(s: &Arc<Session>) {
    let _ = CURRENT.try_with(|c| *c.caller.borrow_mut() = Some(Who::Session(s.clone())));
}

/// Notes the user a request was authenticated as (a password, a console sign-in).
pub fn note_user(u: &Arc<User>) {
    let _ = CURRENT.try_with(|c| *c.caller.borrow_mut() = Some(Who::User(u.clone(), None, None)));
}

/// Notes the user a login verified and the token it presented.
pub fn note_login(u: &Arc<User>, token: &crate::auth::TokenUsed) {
    let who = match token {
        crate::auth::TokenUsed::None => Who::User(u.clone(), None, None),
        crate::auth::TokenUsed::Default => {
            Who::User(u.clone(), Some(crate::store::DEFAULT_TOKEN_NAME), None)
        }
        crate::auth::TokenUsed::Named { name, .. } => {
            Who::User(u.clone(), None, Some(name.clone()))
        }
    };
    let _ = CURRENT.try_with(|c| *c.caller.borrow_mut() = Some(who));
}

/// The id of the request being handled on this task, if any: the log formatter adds it to
/// every line. A task-local rather than a tracing span: a span per request, entered on every
/// poll, cost a fifth of the session path's CPU; this costs a look-up per log line.
pub fn current_request_id() -> Option<String> {
    CURRENT
        .try_with(|c| c.request_id.to_str().unwrap_or_default().to_owned())
        .ok()
}

/// One request's access-log line, filled in as the request goes and written when its
/// response body is done.
pub struct Line {
    method: Method,
    /// The request target as received (its query string is never logged).
    uri: Uri,
    client: IpAddr,
    request_id: HeaderValue,
    bytes_in: Option<u64>,
    started: Instant,
    status: u16,
    user: Option<Who>,
    bytes_out: u64,
}

impl Line {
    pub fn start<B: HttpBody>(
        req: &http::Request<B>,
        client: IpAddr,
        request_id: &HeaderValue,
    ) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            client,
            request_id: request_id.clone(),
            bytes_in: req.body().size_hint().exact(),
            started: Instant::now(),
            status: 0,
            user: None,
            bytes_out: 0,
        }
    }

    fn emit(&self) {
        let path = self.uri.path();
        tracing::info!(
            target: TARGET,
            method = %self.method,
            path,
            status = self.status,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            duration_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            dialect = dialect(path),
            user_id = self.user.as_ref().map(Who::id),
            token = self.user.as_ref().and_then(Who::token),
            client = %self.client,
            request_id = self.request_id.to_str().unwrap_or_default(),
            "request"
        );
    }
}

/// Whether the access log is written at all: on in the configuration and wanted by the
/// tracing filter (checked once per request; a disabled callsite costs one load).
pub fn wanted(configured: bool) -> bool {
    configured && tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// The dialect a path is answered in, as the access log names it.
fn dialect(path: &str) -> &'static str {
    if path.starts_with("/services/Soap/") {
        "soap"
    } else if path.starts_with("/services/oauth2/") {
        "oauth"
    } else if path.starts_with("/services/async/") {
        "bulk"
    } else if path.starts_with("/id/") {
        "identity"
    } else if super::target::is_console(path) {
        "console"
    } else if path == "/tokengate" || path.starts_with("/tokengate/") {
        "api"
    } else {
        "rest"
    }
}

/// Runs a request's handling with the slot [`note_session`] and [`note_user`] write to, and
/// finishes its response: the request id set on it, the access line (if any) handed to the
/// body, which writes it once sent.
pub async fn scope(
    handling: impl Future<Output = Response<Body>>,
    request_id: HeaderValue,
    line: Option<Line>,
) -> Response<Logged> {
    let current = Current {
        request_id: request_id.clone(),
        caller: RefCell::new(None),
    };
    CURRENT
        .scope(current, async move {
            let mut resp = handling.await;
            resp.headers_mut().insert(X_REQUEST_ID, request_id);
            let line = line.map(|mut l| {
                l.status = resp.status().as_u16();
                l.user = CURRENT.with(|c| c.caller.borrow_mut().take());
                l
            });
            resp.map(|inner| Logged { inner, line })
        })
        .await
}

/// A response body that counts what it sends and writes the access line when it ends or is
/// dropped (a client that goes away mid-body still gets its line, with what was sent).
pub struct Logged {
    inner: Body,
    line: Option<Line>,
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(f))), Some(line)) = (&frame, this.line.as_mut())
            && let Some(data) = f.data_ref()
        {
            line.bytes_out += data.len() as u64;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            line.emit();
        }
    }
}

/// Logs a login's outcome, and notes a verified one's user and token for the access line.
pub(crate) fn log_login(
    dialect: &str,
    username: &str,
    result: &Result<Verified, AuthError>,
    client: Option<&str>,
) {
    match result {
        Ok(v) => {
            note_login(&v.user, &v.token);
            tracing::info!(
            dialect,
            user = %v.user.username,
            client,
            superseded_token = v.superseded,
            token = v.token.name(),
            "login succeeded"
            )
        }
        Err(AuthError::Rejected(r)) => tracing::info!(
            dialect,
            user = %username.chars().take(80).collect::<String>(),
            reason = r.as_str(),
            client,
            "login failed"
        ),
        Err(e) => tracing::warn!(dialect, error = %e, "login could not be checked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxys_id_is_kept_only_when_sane_and_trusted_and_others_are_made_here() {
        let ids = RequestIds::new().unwrap();
        let with = |values: &[&[u8]]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(&X_REQUEST_ID, HeaderValue::from_bytes(v).unwrap());
            }
            h
        };
        let kept = with(&[b"lb-4711"]);
        assert_eq!(ids.choose(true, &kept), "lb-4711");
        // An untrusted peer's id is never taken.
        assert_ne!(ids.choose(false, &kept), "lb-4711");
        let long = vec![b'a'; MAX_REQUEST_ID + 1];
        let exact = vec![b'a'; MAX_REQUEST_ID];
        assert_eq!(ids.choose(true, &with(&[&exact])).len(), MAX_REQUEST_ID);
        for bad in [
            with(&[b""]),
            with(&[b"two words"]),
            with(&[b"tab\there"]),
            with(&[b"caf\xc3\xa9"]),
            with(&[&long]),
            with(&[b"one", b"two"]),
        ] {
            let chosen = ids.choose(true, &bad);
            assert!(
                bad.get_all(&X_REQUEST_ID).iter().all(|v| v != chosen),
                "{bad:?} was kept"
            );
            assert!(sane(chosen.as_bytes()));
        }
        // Made here: the process's prefix and a counter, never twice the same.
        let (a, b) = (ids.generate(), ids.generate());
        assert_ne!(a, b);
        let (pa, ca) = a.to_str().unwrap().split_once('-').unwrap();
        let (pb, _) = b.to_str().unwrap().split_once('-').unwrap();
        assert_eq!(pa, pb);
        assert_eq!(pa.len(), 16);
        assert!(u64::from_str_radix(ca, 16).is_ok());
        // Another process (another RequestIds) has another prefix.
        let other = RequestIds::new().unwrap().generate();
        assert_ne!(other.to_str().unwrap().split_once('-').unwrap().0, pa);
    }

    #[test]
    fn ids_made_on_many_threads_are_never_the_same() {
        // Each thread numbers from blocks of its own; more ids than a block per thread, and a
        // second generator used on the same threads in between (a block is its generator's).
        let (ids, other) = (RequestIds::new().unwrap(), RequestIds::new().unwrap());
        let made: Vec<Vec<String>> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..2 * ID_BLOCK + 7)
                            .map(|i| {
                                if i % 100 == 0 {
                                    other.generate();
                                }
                                ids.generate().to_str().unwrap().to_owned()
                            })
                            .collect()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let all: Vec<&String> = made.iter().flatten().collect();
        let distinct: std::collections::HashSet<&&String> = all.iter().collect();
        assert_eq!(distinct.len(), all.len(), "a request id was made twice");
        // A generator made after another was dropped (a server restarted in one process) may
        // sit at the same address: it does not continue the old one's block on this thread.
        let old = Box::new(RequestIds::new().unwrap());
        old.generate();
        drop(old);
        let new = Box::new(RequestIds::new().unwrap());
        let ids: Vec<String> = (0..ID_BLOCK + 1)
            .map(|_| new.generate().to_str().unwrap().to_owned())
            .collect();
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(
            distinct.len(),
            ids.len(),
            "a restarted generator repeated an id"
        );
    }

    #[test]
    fn an_id_keeps_its_value_while_later_ids_are_made() {
        // Ids share a thread's chunk of bytes. One id kept while many chunks' worth are made
        // and dropped (its chunk is left to it; the later chunks, none of whose ids is left
        // when they fill, are written again in place), then ids kept across chunks: no kept
        // id's bytes are ever written over, and no id repeats.
        let ids = RequestIds::new().unwrap();
        let first = ids.generate();
        let first_text = first.to_str().unwrap().to_owned();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 * ID_CHUNK / ID_LEN {
            assert!(seen.insert(ids.generate().to_str().unwrap().to_owned()));
        }
        let mut kept = vec![(first, first_text)];
        for i in 0..5 * ID_CHUNK / ID_LEN {
            let id = ids.generate();
            let text = id.to_str().unwrap().to_owned();
            assert!(seen.insert(text.clone()), "an id was made twice");
            if i % 10 == 0 {
                kept.push((id, text));
            }
        }
        for (id, text) in &kept {
            assert_eq!(id.to_str().unwrap(), text);
        }
        assert!(!seen.contains(&kept[0].1));
    }

    #[test]
    fn the_access_dialect_follows_the_path() {
        for (path, want) in [
            ("/services/Soap/u/59.0", "soap"),
            ("/services/oauth2/token", "oauth"),
            ("/services/async/59.0/job", "bulk"),
            ("/services/data/v59.0/sobjects", "rest"),
            ("/id/00D000000000001AAA/005000000000001AAA", "identity"),
            ("/tokengate/v1/admin/users", "api"),
            ("/tokengate/ready", "api"),
        ] {
            assert_eq!(dialect(path), want, "{path}");
        }
    }
}
