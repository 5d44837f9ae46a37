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
use super::{access, routes};
use crate::auth::session::LastSession;

/// What the server knows of a connection.
#[derive(Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    pub tls: Option<&'static str>,
    /// The listener that accepted it.
    pub listener: Listener,
    /// What is worked out once for the connection and used by each of its requests.
    pub local: Arc<PerConnection>,
}

/// The per-connection part of the request path: what does not change from one request of a
/// connection to the next is worked out once, at the handshake.
pub struct PerConnection {
    peer: IpAddr,
    /// Whether the peer is one of `[server] trusted_proxies` (only then is its
    /// `X-Forwarded-For` read).
    pub peer_trusted: bool,
    /// The peer's address as an `X-Forwarded-For` value: what the upstream is told for every
    /// request whose client is the peer itself (all of them, unless the peer is a proxy).
    peer_forwarded_for: http::HeaderValue,
    /// The last session id presented on the connection, and its key.
    pub last_session: LastSession,
}

impl PerConnection {
    fn new(app: &App, peer: IpAddr) -> Self {
        Self {
            peer,
            peer_trusted: is_trusted(&app.cfg.server.trusted_proxies, peer),
            peer_forwarded_for: crate::proxy::forwarded_for(peer),
            last_session: LastSession::default(),
        }
    }

    /// The `X-Forwarded-For` value for a request whose client is `client`.
    pub fn forwarded_for(&self, client: IpAddr) -> http::HeaderValue {
        if client == self.peer {
            self.peer_forwarded_for.clone()
        } else {
            crate::proxy::forwarded_for(client)
        }
    }

    /// The client address of a request with these headers on this connection
    /// ([`client_ip`]; the peer itself unless it is a trusted proxy).
    pub fn client_ip(&self, app: &App, headers: &http::HeaderMap) -> IpAddr {
        if self.peer_trusted {
            client_ip(&app.cfg.server.trusted_proxies, self.peer, headers)
        } else {
            self.peer
        }
    }
}

/// tokengate's TLS listeners: the public one, and the console's own when `[console] listen`
/// is set (the web console and the admin API, and nothing else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Public,
    Console,
}

/// The request's client address and TLS version, as the handlers use them.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub ip: IpAddr,
    pub tls: Option<&'static str>,
}

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

/// The client address recorded for a request whose forwarded chain could not be read: in no
/// trusted network and no login range, one shared limiter key, `0.0.0.0` in the history.
pub const UNIDENTIFIED_CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// The client's address: the socket's peer, or, when the peer is a trusted proxy, the
/// nearest address in `X-Forwarded-For` that is not a trusted proxy. Each proxy appends the
/// address it received the request from, so only the entries on the right were written by
/// proxies we trust: the header is walked right to left, trusted proxies are skipped, and the
/// first other entry is the client. An entry that cannot be read (empty, `unknown`, garbage)
/// ends the walk as an unidentified client ([`UNIDENTIFIED_CLIENT`]): whatever stands left
/// of it was written by someone we do not trust. When every entry is a trusted proxy, the
/// leftmost is the client.
pub fn client_ip(
    trusted_proxies: &[ipnet::IpNet],
    peer: IpAddr,
    headers: &http::HeaderMap,
) -> IpAddr {
    let trusted = |ip: &IpAddr| is_trusted(trusted_proxies, *ip);
    if !trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    // Several header lines are one list, in order (RFC 9110 §5.3).
    for line in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = line.to_str() else {
            return UNIDENTIFIED_CLIENT;
        };
        for hop in text.rsplit(',') {
            match parse_hop(hop) {
                Some(ip) if trusted(&ip) => client = ip,
                Some(ip) => return ip,
                None => return UNIDENTIFIED_CLIENT,
            }
        }
    }
    client
}

/// Whether `ip` is one of the trusted proxies (`[server] trusted_proxies`).
pub fn is_trusted(trusted_proxies: &[ipnet::IpNet], ip: IpAddr) -> bool {
    trusted_proxies.iter().any(|n| n.contains(&ip))
}

/// One `X-Forwarded-For` entry: an address, or an address with a port as some load balancers
/// write it (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim_matches([' ', '\t']);
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .filter(|ip| !ip.is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_client_is_the_nearest_untrusted_hop_and_a_malformed_hop_is_unidentified() {
        let trusted: Vec<ipnet::IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let outsider: IpAddr = "192.0.2.99".parse().unwrap();
        let unknown = UNIDENTIFIED_CLIENT.to_string();
        // (X-Forwarded-For lines, peer, the client address)
        let table: &[(&[&str], IpAddr, &str)] = &[
            // An untrusted peer: its headers mean nothing.
            (&["203.0.113.7"], outsider, "192.0.2.99"),
            (&[], outsider, "192.0.2.99"),
            // A trusted peer with no header: the peer is the client.
            (&[], peer, "127.0.0.1"),
            (&["203.0.113.7"], peer, "203.0.113.7"),
            (&["203.0.113.7, 198.51.100.50"], peer, "198.51.100.50"),
            (&["198.51.100.50, 10.1.2.3"], peer, "198.51.100.50"),
            (&["198.51.100.50,10.1.2.3,10.9.9.9"], peer, "198.51.100.50"),
            // Every hop trusted: the leftmost is the client.
            (&["10.1.2.3, 10.4.5.6"], peer, "10.1.2.3"),
            // Several lines are one list, in order.
            (&["203.0.113.7", "198.51.100.50"], peer, "198.51.100.50"),
            (&["198.51.100.50", "10.1.2.3"], peer, "198.51.100.50"),
            // Forged entries left of a malformed one are never reached.
            (&["203.0.113.7, x, 198.51.100.50"], peer, "198.51.100.50"),
            (&["203.0.113.7,,198.51.100.50"], peer, "198.51.100.50"),
            (&["203.0.113.7, x"], peer, &unknown),
            (&["203.0.113.7,"], peer, &unknown),
            (&["203.0.113.7, unknown, 10.1.2.3"], peer, &unknown),
            (&["203.0.113.7, 999.0.0.1"], peer, &unknown),
            (&[""], peer, &unknown),
            (&["0.0.0.0"], peer, &unknown),
            (&["203.0.113.7", "garbage"], peer, &unknown),
            // Ports as some load balancers write them.
            (&["198.51.100.50:4711"], peer, "198.51.100.50"),
            (&["[2001:db8::1]:4711, 10.1.2.3"], peer, "2001:db8::1"),
            (&["2001:db8::2"], peer, "2001:db8::2"),
            (&["  198.51.100.50\t"], peer, "198.51.100.50"),
        ];
        for (lines, peer, want) in table {
            let mut h = http::HeaderMap::new();
            for l in *lines {
                h.append("x-forwarded-for", HeaderValue::from_str(l).unwrap());
            }
            assert_eq!(
                client_ip(&trusted, *peer, &h).to_string(),
                *want,
                "{lines:?} from {peer}"
            );
        }
        // A value that is not text ends the walk too.
        let mut h = http::HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.7, \xff").unwrap(),
        );
        assert_eq!(client_ip(&trusted, peer, &h), UNIDENTIFIED_CLIENT);
    }
}
