//! Who is on the other end: what the server knows of a connection ([`Conn`], worked out once
//! at the handshake in [`PerConnection`]), the listener that accepted it, and the client a
//! request is for ([`Client`], [`client_ip`]: the peer, or behind a trusted proxy the address
//! it forwarded). A leaf of `server`: the connection loop (`conn`) builds these, the route
//! table (`routes`) and the handlers read them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::App;
use crate::auth::last::LastCredential;
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
    /// The server, held once per connection: a request borrows it from here rather than
    /// taking a reference of its own, a count that every worker thread would write to.
    pub app: Arc<App>,
    peer: IpAddr,
    /// Whether the peer is one of `[server] trusted_proxies` (only then is its
    /// `X-Forwarded-For` read).
    pub peer_trusted: bool,
    /// The peer's address as an `X-Forwarded-For` value: what the upstream is told for every
    /// request whose client is the peer itself (all of them, unless the peer is a proxy).
    peer_forwarded_for: http::HeaderValue,
    /// The last credential presented on the connection (a session id or Basic credentials),
    /// and its key.
    pub last_credential: LastCredential,
}

impl PerConnection {
    pub(super) fn new(app: Arc<App>, peer: IpAddr) -> Self {
        Self {
            peer,
            peer_trusted: is_trusted(&app.cfg.server.trusted_proxies, peer),
            peer_forwarded_for: crate::proxy::forwarded_for(peer),
            last_credential: LastCredential::default(),
            app,
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
