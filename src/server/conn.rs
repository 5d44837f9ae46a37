//! A connection's life: the accept loop, the per-address cap, the TLS handshake, the protocol
//! (by ALPN when the client offered one), and the deadlines that keep a connection from
//! holding a slot without using it.
//!
//! Deadlines, all kept by one alarm per connection that rings every
//! `min(header_read_timeout, idle_timeout)` (the tick):
//! - the first request must start within `header_read_timeout` of the handshake, or the
//!   connection is dropped (protocol detection has no timer of its own: a client that sends
//!   nothing, or only the HTTP/2 preface, would otherwise hold its slot for ever);
//! - on HTTP/1.1, every request's head must arrive within `header_read_timeout` of the moment
//!   hyper started waiting for it (hyper's header read timeout, the slowloris guard). hyper
//!   asks its timer for a new sleep per request; [`HeaderClock`] answers with a deadline that
//!   is checked whenever the connection is polled and registers no timer of its own: the
//!   alarm's tick is what wakes a connection that has gone silent, so a head that is late is
//!   cut off within one tick of its deadline. This saves a timer registration, its removal and
//!   the clock reads of tokio's timer wheel on every keep-alive request. Between requests the
//!   same deadline runs, so a keep-alive connection ends at the sooner of it and the idle
//!   close;
//! - a connection with no request in flight and none started for `idle_timeout` (seen at two
//!   ticks at least `idle_timeout` apart, so closed within `idle_timeout` plus two ticks) is
//!   closed gracefully (HTTP/2 with a GOAWAY), and dropped if it has not closed within
//!   `header_read_timeout`; HTTP/2 keep-alive pings find dead peers sooner;
//! - when the server stops, connections are asked to close and dropped after
//!   `drain_timeout`.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use dashmap::DashMap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::App;
use super::peer::{Conn, Listener, PerConnection, is_trusted};
use super::reuse::Reuse;
use super::{access, routes};
// Where the fuzz targets have always found them.
pub use super::peer::{UNIDENTIFIED_CLIENT, client_ip};

/// Open connections per client address (IPv6 by /64), bounded by
/// `[server] max_connections_per_ip`. Trusted proxies (`[server] trusted_proxies`) are not
/// counted here.
struct PerAddress {
    open: DashMap<IpAddr, usize>,
    max: usize,
}

/// One connection's place in [`PerAddress`], given back on drop.
struct AddressSlot {
    table: Arc<PerAddress>,
    key: IpAddr,
}

impl PerAddress {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let key = crate::limit::ip_key(ip);
        let mut n = self.open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: self.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.table.open.remove_if_mut(&self.key, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

/// Requests on one connection: how many are being handled, and how many ever started.
#[derive(Default)]
struct Activity {
    active: AtomicUsize,
    started: AtomicU64,
}

/// A request being handled, counted in [`Activity`] until it is dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(a: &Arc<Activity>) -> Self {
        a.active.fetch_add(1, Ordering::Relaxed);
        a.started.fetch_add(1, Ordering::Relaxed);
        Self(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// hyper's timer for HTTP/1.1 connections: each sleep is a deadline checked when hyper polls
/// it, with no wake-up of its own. Sound only because every connection it serves is polled by
/// [`serve`], whose alarm wakes the connection's task at least every `header_read_timeout`
/// (module docs); hyper uses an HTTP/1.1 server connection's timer for the header read timeout
/// alone. HTTP/2 keeps tokio's timer: its keep-alive pings must fire on their own.
#[derive(Clone, Copy, Debug)]
struct HeaderClock;

/// A [`HeaderClock`] sleep.
struct Deadline(std::time::Instant);

impl Future for Deadline {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<()> {
        // No waker is kept: `serve`'s alarm polls the connection again within a tick.
        if std::time::Instant::now() >= self.0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl hyper::rt::Sleep for Deadline {}

impl hyper::rt::Timer for HeaderClock {
    fn sleep(&self, duration: Duration) -> std::pin::Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(std::time::Instant::now() + duration)
    }

    fn sleep_until(
        &self,
        deadline: std::time::Instant,
    ) -> std::pin::Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadline(deadline))
    }
}

/// A response body that keeps its request counted in [`Activity`] until it ends. A struct
/// beside the body, not another box around it: hyper takes the service's body type as it is.
struct Answer {
    body: access::Logged,
    _in_flight: InFlight,
}

impl hyper::body::Body for Answer {
    type Data = bytes::Bytes;
    type Error = crate::wire::BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The three protocol builders: both (no ALPN, the preface decides), HTTP/1.1 only and
/// HTTP/2 only (what ALPN negotiated).
struct Builders {
    auto: auto::Builder<TokioExecutor>,
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

fn builders(app: &App) -> Builders {
    let s = &app.cfg.server;
    let make = || {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(HeaderClock)
            // The slowloris guard: headers must arrive within this time (kept with the alarm
            // of `serve`, see `HeaderClock`).
            .header_read_timeout(s.header_read_timeout)
            .max_buf_size(s.max_header_bytes)
            // Every connection here is TLS. Given a head and a body as two slices, rustls
            // gathers them into a list it allocates per write, then seals them into one record
            // anyway; hyper's own write buffer, reused for the connection's life, costs a copy
            // of the body and no allocation.
            .writev(false);
        b.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(s.max_concurrent_streams)
            .max_header_list_size(s.max_header_bytes as u32)
            .keep_alive_interval(Some((s.idle_timeout / 2).max(Duration::from_secs(1))))
            .keep_alive_timeout(Duration::from_secs(20));
        b
    };
    Builders {
        auto: make(),
        http1: make().http1_only(),
        http2: make().http2_only(),
    }
}

/// What every loop accepting on one listening address shares: the bounds on open connections
/// (`max_connections` in all, `max_connections_per_ip` per client address) and the protocol
/// builders.
#[derive(Clone)]
struct Admission {
    connections: Arc<Semaphore>,
    per_address: Arc<PerAddress>,
    builders: Arc<Builders>,
}

impl Admission {
    fn new(app: &App) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(app.cfg.server.max_connections)),
            per_address: Arc::new(PerAddress {
                open: DashMap::new(),
                max: app.cfg.server.max_connections_per_ip,
            }),
            builders: Arc::new(builders(app)),
        }
    }
}

/// Accepts connections until `stop` changes, then lets open ones finish (bounded by
/// `drain_timeout`).
pub async fn accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    stop: watch::Receiver<bool>,
    side: Listener,
) {
    let admission = Admission::new(&app);
    accept_on(listener, app, stop, side, admission).await;
}

/// Listening sockets on one address, one per worker thread (`[server] workers = "per-core"`):
/// each has `SO_REUSEPORT`, so the kernel spreads new connections over them.
pub fn bind_per_core(
    addr: std::net::SocketAddr,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    // `SO_REUSEPORT` lets any socket of the same user join a port: a second server started on
    // this address by mistake would share its connections instead of failing. A plain bind
    // first fails as a server on a taken address should.
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    let mut listeners = Vec::with_capacity(workers);
    // Port 0: the first socket picks the port, the others join it.
    let mut at = addr;
    for _ in 0..workers {
        let socket = match at {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(at)?;
        let listener = socket.listen(1024)?;
        at = listener.local_addr()?;
        listeners.push(listener.into_std()?);
    }
    Ok(listeners)
}

/// Serves `listeners` (from [`bind_per_core`]) with one thread each, each running a
/// single-threaded runtime that owns the connections it accepts. Answers once every thread
/// listens (or with the first one's failure: the start fails rather than serve on fewer
/// cores than it says); the returned task ends when every thread has drained its connections
/// after `stop`. The bounds are shared: the threads together hold at most `max_connections`,
/// one address at most `max_connections_per_ip`.
pub async fn serve_per_core(
    listeners: Vec<std::net::TcpListener>,
    app: Arc<App>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let admission = Admission::new(&app);
    let mut threads = Vec::with_capacity(listeners.len());
    let mut listening = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.into_iter().enumerate() {
        let (app, stop, admission) = (app.clone(), stop.clone(), admission.clone());
        let (ready, ready_rx) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
        let thread = std::thread::Builder::new()
            .name(format!("tokengate-worker-{i}"))
            .spawn(move || {
                // Made on its own thread: a runtime may not be dropped on an async one.
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => {
                            let _ = ready.send(Ok(()));
                            accept_on(l, app, stop, Listener::Public, admission).await;
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                });
                // Dropping the runtime here ends what the drain left running on it.
            })?;
        threads.push(thread);
        listening.push(ready_rx);
    }
    // A failure returns before the threads are joined: they end when `stop`'s sender, which
    // the failed start drops, goes.
    for ready in listening {
        ready
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("a worker ended before listening")))?;
    }
    Ok(tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    }))
}

async fn accept_on(
    listener: TcpListener,
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
    side: Listener,
    admission: Admission,
) {
    let max = app.cfg.server.max_connections;
    let Admission {
        connections,
        per_address,
        builders,
    } = admission;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing new connection");
            continue;
        };
        // A trusted proxy carries many clients on its connections: only `max_connections`
        // bounds it (the clients behind it are told apart per request, by `client_ip`).
        let slot = if is_trusted(&app.cfg.server.trusted_proxies, peer.ip()) {
            None
        } else {
            let Some(slot) = per_address.take(peer.ip()) else {
                tracing::warn!(%peer, "per-address connection limit reached; closing new connection");
                continue;
            };
            Some(slot)
        };
        let _ = tcp.set_nodelay(true);
        let (app, builders, stop) = (app.clone(), builders.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _slot = slot;
            serve(app, builders, tcp, peer, stop, side).await;
        });
    }
    drop(listener);
    // Every connection gives its permit back when it ends: all of them back means all done.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(app.cfg.server.drain_timeout, connections.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within the drain timeout");
    }
}

async fn serve(
    app: Arc<App>,
    builders: Arc<Builders>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
    listener: Listener,
) {
    // The certificate in force at accept time (a reload swaps it for new connections).
    let acceptor = app.live().tls.clone();
    let s = &app.cfg.server;
    let tls = match tokio::time::timeout(s.tls_handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            app.metrics.tls_handshake_failed();
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            app.metrics.tls_handshake_failed();
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let session = tls.get_ref().1;
    let conn = Conn {
        peer,
        listener,
        local: Arc::new(PerConnection::new(app.clone(), peer.ip())),
        tls: session.protocol_version().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "TLS",
        }),
    };
    let builder = match session.alpn_protocol() {
        Some(b"h2") => &builders.http2,
        Some(b"http/1.1") => &builders.http1,
        // A TLS-ALPN-01 validation (`[tls] acme`): the handshake was the whole exchange
        // (RFC 8737 §3); close.
        Some(crate::acme::ACME_TLS_ALPN) => return,
        _ => &builders.auto,
    };
    let activity = Arc::new(Activity::default());
    let reuse = Reuse::new();
    let service = {
        let (app, activity) = (app.clone(), activity.clone());
        service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            let in_flight = InFlight::begin(&activity);
            // The request id, set on the request before any handler sees it (the upstream
            // gets it), in the request's task-local context (every log line about it), on the
            // response and in the access line (`access`).
            let request_id = app
                .request_ids
                .choose(conn.local.peer_trusted, req.headers());
            req.headers_mut()
                .insert(access::X_REQUEST_ID, request_id.clone());
            let line = access::wanted(app.cfg.log_access).then(|| {
                let client = conn.local.client_ip(&app, req.headers());
                access::Line::start(&req, client, &request_id)
            });
            let (conn, reuse) = (conn.clone(), reuse.clone());
            async move {
                // Boxed (in the connection's box for it, `reuse`): the request's future (up to
                // 3 KiB, `routes`) would otherwise be copied again by each wrapper that holds
                // it on its way into hyper's slot.
                let handling = reuse.hold(routes::handle(req, conn));
                let r = access::scope(handling, request_id, line).await;
                // In flight until the answer's body has been sent (or dropped): a download
                // that streams for longer than `idle_timeout` is not an idle connection.
                Ok::<_, Infallible>(r.map(|body| Answer {
                    body,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    let connection = builder.serve_connection(TokioIo::new(tls), service);
    let mut connection = std::pin::pin!(connection);

    // The first request must start by the header timeout; after that, a quiet spell of
    // `idle_timeout` ends the connection, and an HTTP/1.1 head must arrive in time
    // (`HeaderClock`). The alarm rings every tick, the sooner of the two timeouts.
    let opened = tokio::time::Instant::now();
    let tick = s.header_read_timeout.min(s.idle_timeout);
    let alarm = tokio::time::sleep(tick);
    let mut alarm = std::pin::pin!(alarm);
    // Made once: a `changed()` made on every pass would join and leave the watch's list of
    // waiters (a lock each way) at every wake-up of every request.
    let stopping = stop.changed();
    let mut stopping = std::pin::pin!(stopping);
    let mut seen = 0u64;
    // When the alarm last saw a request started or in flight.
    let mut busy_at = opened;
    let mut closing = false;
    loop {
        // Biased, the connection first: this loop runs at every wake-up of every request, and
        // the alarm and the stop signal are rarely what woke it.
        tokio::select! {
            biased;
            r = connection.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = alarm.as_mut() => {
                if closing {
                    tracing::debug!(%peer, "connection did not close in time; dropped");
                    return;
                }
                let now = tokio::time::Instant::now();
                let started = activity.started.load(Ordering::Relaxed);
                if started == 0 {
                    let deadline = opened + s.header_read_timeout;
                    if now < deadline {
                        alarm.as_mut().reset(deadline.min(now + tick));
                        continue;
                    }
                    // Nothing asked yet: nothing to finish gracefully.
                    tracing::debug!(%peer, "no request within the header timeout; connection dropped");
                    return;
                }
                if started != seen || activity.active.load(Ordering::Relaxed) != 0 {
                    seen = started;
                    busy_at = now;
                } else if now >= busy_at + s.idle_timeout {
                    tracing::debug!(%peer, requests = started, "idle connection closed");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                    // Nothing is in flight: the close needs no more than a header's time.
                    alarm.as_mut().reset(now + s.header_read_timeout);
                    continue;
                }
                alarm.as_mut().reset(now + tick);
            }
            _ = stopping.as_mut(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
                alarm.as_mut().reset(tokio::time::Instant::now() + s.drain_timeout);
            }
        }
    }
}
