//! Keep-alive HTTP/1.1 connections to the upstream, driven by the request that uses them.
//!
//! A general-purpose pooled client (hyper-util's) runs every connection as a task of its own,
//! so each forwarded call hops between two tasks — often two threads — and back: a wake-up, a
//! channel and a context switch each way. On the proxy's hot path that hop cost more than the
//! authentication did. Here the request's own task polls the connection: while waiting for the
//! response head ([`Pool::send`]) and then from the response body ([`PooledBody`]), which hands
//! the connection back to the pool once the body has been read to its end.
//!
//! The response head must arrive by the deadline the caller gives [`Pool::send`] (the
//! upstream's `response_timeout`). Each connection keeps one timer for it, moved forward for
//! every request it carries: tokio moves a registered timer to a later deadline with one atomic
//! update, where a timer made per request is a registration and a removal under the timer
//! wheel's lock. A connect or a wait for a free connection is bounded by the same deadline.
//!
//! Idle connections are kept in a list per worker thread: a call takes the newest of its own
//! thread's, another thread's when its own has none, and gives the connection back to its own
//! thread's list, so the two sides of a call do not write to a lock every core shares.
//!
//! Bounds: at most `max_connections` connections open at once, idle or busy (a request that
//! finds none free waits up to the connect timeout, then fails); at most `max_idle` idle ones
//! (each thread's list holds its share),
//! none reused or kept open after `idle_timeout` (the server sweeps them, [`Pool::sweep`]); a
//! response body that sends nothing for `body_idle_timeout` is aborted, on both sides. A
//! connection
//! the upstream closed while idle is noticed when it is taken (it has already read EOF) and
//! dropped; a request that could not be written at all is retried once on a fresh connection
//! (RFC 9110 §9.2.2: a request never sent is safe to send again, whatever its method).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;

use crate::wire::Body;

/// Why an upstream call failed before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    #[error("connecting to the upstream timed out")]
    ConnectTimeout,
    #[error("every upstream connection is in use")]
    Saturated,
    #[error("no response head by the deadline")]
    Timeout,
    #[error("the upstream connection failed: {0}")]
    Http(#[from] hyper::Error),
}

// `Sync` because response bodies are `BoxBody`s, which are.
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send + Sync>>;

/// One upstream connection: the request side and the future that performs its I/O.
struct Conn {
    sender: http1::SendRequest<Body>,
    /// `None` once the connection has ended: dropping it fails any request still queued on
    /// it, so nobody waits for an answer that cannot come.
    driver: Option<Driver>,
    /// Its place among the `max_connections`, given back when it closes.
    _place: tokio::sync::OwnedSemaphorePermit,
    /// The deadline of the request in flight (module docs). Between requests it still runs
    /// to the last one's deadline, and may wake that request's task once, for nothing.
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// The runtime whose reactor and timers its socket and deadline are registered with: the
    /// only one that takes it from the pool ([`Pool::checkout`]).
    runtime: tokio::runtime::Id,
}

impl Conn {
    /// Polls the connection's I/O; true when the connection has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let pending = match &mut self.driver {
            Some(d) => d.as_mut().poll(cx).is_pending(),
            None => false,
        };
        if !pending {
            self.driver = None;
        }
        !pending
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Where and how to connect.
pub struct Endpoint {
    /// `host:port` as `TcpStream::connect` resolves it.
    pub host: String,
    pub port: u16,
    /// TLS to the upstream (an `https` URL): the client configuration and the name to verify.
    pub tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    pub connect_timeout: Duration,
}

/// The pool's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_idle: usize,
    pub idle_timeout: Duration,
    pub body_idle_timeout: Duration,
    /// Requests come from several runtimes (`[server] workers = "per-core"`): an idle
    /// connection goes only to the runtime that made it ([`Pool::checkout`]).
    pub per_runtime: bool,
}

/// One thread's list of idle connections, on cache lines of its own.
#[repr(align(128))]
struct Shard {
    idle: Mutex<Vec<Idle>>,
    /// Its share of `max_idle`.
    max: usize,
}

/// Aligned so that the reference count each response body takes (`PooledBody`) sits on a
/// cache line apart from the fields every call reads.
#[repr(align(128))]
pub struct Pool {
    /// Idle connections, one list per worker thread (`crate::stripe`): a thread takes from
    /// and returns to its own, and takes from another's only when its own has none. One list
    /// for all was a lock and a cache line that both cores wrote twice per call.
    shards: Box<[Shard]>,
    places: Arc<tokio::sync::Semaphore>,
    limits: Limits,
    endpoint: Endpoint,
}

impl Pool {
    pub fn new(endpoint: Endpoint, limits: Limits) -> Arc<Self> {
        // A list per core, each with a share of `max_idle` (at least one: never more lists
        // than `max_idle`).
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let n = cores.min(limits.max_idle).max(1);
        let shards = (0..n)
            .map(|i| Shard {
                idle: Mutex::new(Vec::new()),
                max: limits.max_idle / n + usize::from(i < limits.max_idle % n),
            })
            .collect();
        Arc::new(Self {
            shards,
            places: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
            limits,
            endpoint,
        })
    }

    /// This thread's list first, then the others in turn.
    fn shards_from_here(&self) -> impl Iterator<Item = &Shard> {
        let n = self.shards.len();
        let home = crate::stripe::of_thread() % n;
        (0..n).map(move |k| &self.shards[(home + k) % n])
    }

    /// Sends `req` and waits for the response head until `deadline`; the body streams from
    /// the returned response and gives the connection back when it ends.
    #[allow(
        clippy::manual_async_fn,
        reason = "an `async fn` keeps its arguments twice (as arguments and as locals), and this future is copied on every forwarded call"
    )]
    pub fn send(
        self: &Arc<Self>,
        req: Request<Body>,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Result<Response<PooledBody>, PoolError>> {
        async move {
            // The connect path (TCP, TLS handshake) is rare and its future is large (~4 KiB);
            // boxed, it stays out of every forwarded call's future, which hyper moves per request.
            let (conn, reused) = match self.checkout().await {
                Some(c) => (c, true),
                None => (Box::pin(self.connect_by(deadline)).await?, false),
            };
            match exchange(conn, req, deadline).await {
                Ok((resp, conn)) => Ok(self.wrap(resp, conn)),
                // A reused connection that died before the request was written: once more, fresh.
                Err(Failed::NotSent(req, _)) if reused => {
                    Box::pin(self.retry(*req, deadline)).await
                }
                Err(Failed::NotSent(_, e) | Failed::Sent(e)) => Err(e.into()),
                Err(Failed::Late) => Err(PoolError::Timeout),
            }
        }
    }

    /// The one retry of a request that was never sent, on a new connection.
    async fn retry(
        self: &Arc<Self>,
        req: Request<Body>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<PooledBody>, PoolError> {
        let conn = self.connect_by(deadline).await?;
        match exchange(conn, req, deadline).await {
            Ok((resp, conn)) => Ok(self.wrap(resp, conn)),
            Err(Failed::NotSent(_, e) | Failed::Sent(e)) => Err(e.into()),
            Err(Failed::Late) => Err(PoolError::Timeout),
        }
    }

    /// [`Pool::connect`], given up at the request's deadline.
    async fn connect_by(&self, deadline: tokio::time::Instant) -> Result<Conn, PoolError> {
        tokio::time::timeout_at(deadline, self.connect())
            .await
            .unwrap_or(Err(PoolError::Timeout))
    }

    fn wrap(self: &Arc<Self>, resp: Response<Incoming>, conn: Conn) -> Response<PooledBody> {
        resp.map(|inner| PooledBody {
            inner,
            conn: Some(conn),
            pool: self.clone(),
            quiet: None,
        })
    }

    /// The most recently used idle connection of this runtime that is still open and ready,
    /// from this thread's list if it has one. With `[server] workers = "per-core"` each worker
    /// thread has a runtime of its own, and a connection is only taken by the runtime that
    /// made it: its socket is registered with that runtime's reactor and its deadline with
    /// that runtime's timers, so another worker would be woken through a second thread, and
    /// would fail once the first has stopped.
    async fn checkout(&self) -> Option<Conn> {
        // One runtime (the default) needs no look-up of which one this is.
        let here = self
            .limits
            .per_runtime
            .then(|| tokio::runtime::Handle::current().id());
        for shard in self.shards_from_here() {
            while let Some(mut conn) = self.take_idle(shard, here) {
                // One poll lets the connection read a close (EOF) or finish its keep-alive
                // bookkeeping; then the sender says whether a request can go.
                let usable = std::future::poll_fn(|cx| {
                    if conn.drive(cx) {
                        return Poll::Ready(false);
                    }
                    Poll::Ready(matches!(conn.sender.poll_ready(cx), Poll::Ready(Ok(()))))
                })
                .await;
                if usable {
                    return Some(conn);
                }
            }
        }
        None
    }

    /// The newest idle connection of `shard` for the runtime `here` (any, for `None`), after
    /// closing the shard's expired ones.
    fn take_idle(&self, shard: &Shard, here: Option<tokio::runtime::Id>) -> Option<Conn> {
        let (taken, expired) = {
            let mut idle = shard.idle.lock().unwrap_or_else(|p| p.into_inner());
            let expired = self.take_expired(&mut idle);
            // Newest last.
            let taken = match here {
                None => idle.pop(),
                Some(here) => idle
                    .iter()
                    .rposition(|i| i.conn.runtime == here)
                    .map(|at| idle.remove(at)),
            };
            (taken, expired)
        };
        // Closed outside the lock.
        drop(expired);
        taken.map(|i| i.conn)
    }

    /// The idle connections past `idle_timeout`, taken out of the list.
    fn take_expired(&self, idle: &mut Vec<Idle>) -> Vec<Idle> {
        // Oldest first in the vector: the expired ones are at the front.
        let expired = idle
            .iter()
            .take_while(|i| i.since.elapsed() >= self.limits.idle_timeout)
            .count();
        idle.drain(..expired).collect()
    }

    /// Closes the idle connections past `idle_timeout`. Taking a connection does this too;
    /// this is for a quiet proxy, which would otherwise hold them open.
    pub fn sweep(&self) {
        for shard in self.shards.iter() {
            let expired = {
                let mut idle = shard.idle.lock().unwrap_or_else(|p| p.into_inner());
                self.take_expired(&mut idle)
            };
            drop(expired);
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        self.limits.idle_timeout
    }

    /// Keeps `conn` for the next call: in this thread's list, or another's when this one is
    /// full (the lists' shares add up to `max_idle`); closed when all are.
    fn checkin(&self, conn: Conn) {
        if conn.driver.is_none() || conn.sender.is_closed() {
            return;
        }
        let mut conn = Some(conn);
        for shard in self.shards_from_here() {
            let mut idle = shard.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < shard.max
                && let Some(conn) = conn.take()
            {
                idle.push(Idle {
                    conn,
                    since: Instant::now(),
                });
                return;
            }
        }
    }

    async fn connect(&self) -> Result<Conn, PoolError> {
        let e = &self.endpoint;
        let place = match tokio::time::timeout(
            e.connect_timeout,
            self.places.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(p)) => p,
            _ => return Err(PoolError::Saturated),
        };
        tokio::time::timeout(e.connect_timeout, async {
            let tcp = tokio::net::TcpStream::connect((e.host.as_str(), e.port))
                .await
                .map_err(|err| PoolError::Connect(err.to_string()))?;
            let _ = tcp.set_nodelay(true);
            match &e.tls {
                None => handshake(tcp, place, true).await,
                Some((tls, name)) => {
                    let stream = tls
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|err| PoolError::Connect(err.to_string()))?;
                    handshake(stream, place, false).await
                }
            }
        })
        .await
        .map_err(|_| PoolError::ConnectTimeout)?
    }
}

/// `vectored`: hand a request's head and body to `io` as separate slices. Plain TCP writes
/// them with one `writev`; rustls would gather them into a list it allocates per write (and
/// seal them into one record anyway), so over TLS hyper copies them into its reused buffer.
async fn handshake<T>(
    io: T,
    place: tokio::sync::OwnedSemaphorePermit,
    vectored: bool,
) -> Result<Conn, PoolError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .writev(vectored)
        .handshake(TokioIo::new(io))
        .await?;
    Ok(Conn {
        sender,
        driver: Some(Box::pin(conn)),
        _place: place,
        // Set to each request's deadline before it is polled.
        deadline: Box::pin(tokio::time::sleep(Duration::ZERO)),
        runtime: tokio::runtime::Handle::current().id(),
    })
}

enum Failed {
    /// The request was not written; it comes back for a retry.
    NotSent(Box<Request<Body>>, hyper::Error),
    Sent(hyper::Error),
    /// No response head by the deadline; the connection, mid-exchange, is dropped.
    Late,
}

/// Sends one request on `conn`, polling the connection in this task until the head arrives
/// or `deadline` passes.
#[allow(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps its arguments twice (as arguments and as locals), and this future is copied on every forwarded call"
)]
fn exchange(
    mut conn: Conn,
    req: Request<Body>,
    deadline: tokio::time::Instant,
) -> impl Future<Output = Result<(Response<Incoming>, Conn), Failed>> {
    async move {
        conn.deadline.as_mut().reset(deadline);
        let mut answer = std::pin::pin!(conn.sender.try_send_request(req));
        let mut ended = false;
        let result = std::future::poll_fn(|cx| {
            if !ended {
                ended = conn.drive(cx);
            }
            match answer.as_mut().poll(cx) {
                Poll::Ready(r) => Poll::Ready(Some(r)),
                _ if conn.deadline.as_mut().poll(cx).is_ready() => Poll::Ready(None),
                // The connection ended without answering and is dropped: hyper fails the queued
                // request, so the answer is ready on the next poll.
                Poll::Pending if ended => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match result {
            Some(Ok(resp)) => Ok((resp, conn)),
            Some(Err(mut e)) => match e.take_message() {
                Some(req) => Err(Failed::NotSent(Box::new(req), e.into_error())),
                None => Err(Failed::Sent(e.into_error())),
            },
            None => Err(Failed::Late),
        }
    }
}

/// The upstream's response body; polling it also drives its connection, which goes back to
/// the pool when the body has been read to its end (or was empty).
pub struct PooledBody {
    inner: Incoming,
    conn: Option<Conn>,
    pool: Arc<Pool>,
    /// Armed while the body waits for the upstream (made on the first wait, so a body that is
    /// already there costs no timer).
    quiet: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The upstream sent nothing for `body_idle_timeout` in the middle of a response body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0:?} in the middle of a response")]
pub struct BodyStalled(Duration);

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = crate::wire::BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(conn) = &mut this.conn
            && conn.drive(cx)
        {
            // Ended: whatever the body still holds was read already, or it fails below.
            this.conn = None;
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        let idle = this.pool.limits.body_idle_timeout;
        match &frame {
            Poll::Pending => {
                let quiet = this
                    .quiet
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if quiet.as_mut().poll(cx).is_ready() {
                    // Abort: the client's response fails (hyper resets it), and the upstream
                    // connection, mid-message, is closed rather than reused.
                    this.conn = None;
                    tracing::warn!(?idle, "upstream response body stalled; aborted");
                    return Poll::Ready(Some(Err(Box::new(BodyStalled(idle)))));
                }
            }
            Poll::Ready(Some(Ok(_))) => {
                if let Some(quiet) = &mut this.quiet {
                    quiet.as_mut().reset(tokio::time::Instant::now() + idle);
                }
            }
            Poll::Ready(None) => {
                if let Some(conn) = this.conn.take() {
                    this.pool.checkin(conn);
                }
            }
            Poll::Ready(Some(Err(_))) => {}
        }
        frame.map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304, Content-Length: 0) is never polled; a body dropped
        // half-read leaves the connection mid-message, so it is closed instead.
        if self.inner.is_end_stream()
            && let Some(conn) = self.conn.take()
        {
            self.pool.checkin(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_lists_share_max_idle_and_each_can_hold_one() {
        for max_idle in [0, 1, 2, 3, 7, 256] {
            let pool = Pool::new(
                Endpoint {
                    host: "127.0.0.1".into(),
                    port: 9,
                    tls: None,
                    connect_timeout: Duration::from_secs(1),
                },
                Limits {
                    max_connections: 8,
                    max_idle,
                    idle_timeout: Duration::from_secs(1),
                    body_idle_timeout: Duration::from_secs(1),
                    per_runtime: false,
                },
            );
            let shares: Vec<usize> = pool.shards.iter().map(|s| s.max).collect();
            assert_eq!(shares.iter().sum::<usize>(), max_idle, "{shares:?}");
            assert!(
                max_idle == 0 || shares.iter().all(|m| *m >= 1),
                "a list that can hold nothing: {shares:?}"
            );
        }
    }
}
