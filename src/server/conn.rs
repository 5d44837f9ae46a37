//! A connection's life: the accept loop, the per-address cap, the TLS handshake, the protocol
//! (by ALPN when the client offered one), and the deadlines that keep a connection from
//! holding a slot without using it.
//!
//! Deadlines, on top of hyper's header read timeout:
//! - the first request must start within `header_read_timeout` of the handshake, or the
//!   connection is dropped (protocol detection has no timer of its own: a client that sends
//!   nothing, or only the HTTP/2 preface, would otherwise hold its slot for ever);
//! - a connection with no request in flight and none started for `idle_timeout` (checked every
//!   `idle_timeout`, so closed within twice that) is closed gracefully (HTTP/2 with a GOAWAY),
//!   and dropped if it has not closed within `header_read_timeout`; HTTP/2 keep-alive pings
//!   find dead peers sooner. On HTTP/1.1, hyper's header read timeout also runs between
//!   requests, so a keep-alive connection ends at the sooner of the two;
//! - when the server stops, connections are asked to close and dropped after
//!   `drain_timeout`.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::App;
use super::peer::{Conn, Listener, PerConnection, is_trusted};
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
            .timer(TokioTimer::new())
            // The slowloris guard: headers must arrive within this time.
            .header_read_timeout(s.header_read_timeout)
            .max_buf_size(s.max_header_bytes);
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

/// Accepts connections until `stop` changes, then lets open ones finish (bounded by
/// `drain_timeout`).
pub async fn accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
    side: Listener,
) {
    let max = app.cfg.server.max_connections;
    let connections = Arc::new(Semaphore::new(max));
    let per_address = Arc::new(PerAddress {
        open: DashMap::new(),
        max: app.cfg.server.max_connections_per_ip,
    });
    let builders = Arc::new(builders(&app));
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
        local: Arc::new(PerConnection::new(&app, peer.ip())),
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
    let service = {
        let (app, activity) = (app.clone(), activity.clone());
        service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            let app = app.clone();
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
            let conn = conn.clone();
            async move {
                // Boxed: the request's future (up to 4 KiB, `routes`) would otherwise be copied
                // again by each wrapper that holds it on its way into hyper's slot.
                let handling = Box::pin(routes::handle(app, req, conn));
                let r = access::scope(handling, request_id, line).await;
                drop(in_flight);
                Ok::<_, Infallible>(r)
            }
        })
    };
    let connection = builder.serve_connection(TokioIo::new(tls), service);
    let mut connection = std::pin::pin!(connection);

    // The first request must start by the header timeout; after that, a quiet spell of
    // `idle_timeout` ends the connection. The alarm first rings at the sooner of the two, so a
    // short `idle_timeout` is kept from the first request on.
    let opened = tokio::time::Instant::now();
    let alarm = tokio::time::sleep(s.header_read_timeout.min(s.idle_timeout));
    let mut alarm = std::pin::pin!(alarm);
    let mut seen = 0u64;
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
                let started = activity.started.load(Ordering::Relaxed);
                if started == 0 {
                    let deadline = opened + s.header_read_timeout;
                    if tokio::time::Instant::now() < deadline {
                        alarm.as_mut().reset(deadline);
                        continue;
                    }
                    // Nothing asked yet: nothing to finish gracefully.
                    tracing::debug!(%peer, "no request within the header timeout; connection dropped");
                    return;
                }
                if activity.active.load(Ordering::Relaxed) == 0 && started == seen {
                    tracing::debug!(%peer, requests = started, "idle connection closed");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                    // Nothing is in flight: the close needs no more than a header's time.
                    alarm.as_mut().reset(tokio::time::Instant::now() + s.header_read_timeout);
                } else {
                    seen = started;
                    alarm.as_mut().reset(tokio::time::Instant::now() + s.idle_timeout);
                }
            }
            _ = stop.changed(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
                alarm.as_mut().reset(tokio::time::Instant::now() + s.drain_timeout);
            }
        }
    }
}
