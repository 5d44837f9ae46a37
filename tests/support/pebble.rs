//! A private ACME CA for the `[tls] acme` tests: Debian's `pebble` (Let's Encrypt's test ACME
//! server) with `pebble-challtestsrv` as its DNS, both on loopback on free ports, with their
//! configuration and Pebble's own HTTPS certificate (made here with rcgen) in a temporary
//! directory.
//!
//! Pebble's validator really validates (`PEBBLE_VA_ALWAYS_VALID=0`): it resolves the order's
//! names through the challenge test server, which answers every A query with 127.0.0.1 (its
//! default) and no AAAA, and dials `tlsPort` there — the port of the tokengate under test — with
//! the `acme-tls/1` ALPN (RFC 8737). No network is needed.
//!
//! Pebble is found on PATH or in /usr/bin. When it is missing the tests skip, loudly, unless
//! `TOKENGATE_REQUIRE_PEBBLE` is set (as `.ci/run` does), when they fail. Every wait has a
//! timeout; both processes are killed when the [`Pebble`] is dropped.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long Pebble and its DNS may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How many sets of free ports to try when another process takes one between its pick and
/// Pebble's bind (the ports are picked free, then released for Pebble to bind).
const START_ATTEMPTS: u32 = 5;

/// Pebble, its DNS, and the files they were started with.
pub struct Pebble {
    /// The DNS server, then Pebble (`None` while stopped by [`Pebble::stop_ca`]).
    dns: Child,
    ca: Option<Child>,
    program: PathBuf,
    dns_at: SocketAddr,
    dir: tempfile::TempDir,
    listen: SocketAddr,
    management: SocketAddr,
}

impl Pebble {
    /// Starts Pebble with its validator dialing `tls_port` on 127.0.0.1. `None` (after a loud
    /// message) when Pebble is not installed and `TOKENGATE_REQUIRE_PEBBLE` is unset.
    pub fn start(tls_port: u16) -> Option<Self> {
        Self::start_with(tls_port, None)
    }

    /// [`Pebble::start`], issuing certificates valid for `validity` (Pebble's
    /// `certificateValidityPeriod`, whole seconds) instead of its default five years.
    pub fn start_with(tls_port: u16, validity: Option<Duration>) -> Option<Self> {
        let (Some(pebble), Some(dns)) = (find("pebble"), find("pebble-challtestsrv")) else {
            if std::env::var_os("TOKENGATE_REQUIRE_PEBBLE").is_some() {
                panic!(
                    "pebble is not installed and TOKENGATE_REQUIRE_PEBBLE is set: apt-get install pebble"
                );
            }
            eprintln!(
                "\n!!! SKIPPED: pebble is not installed (apt-get install pebble); the ACME tests did not run !!!\n"
            );
            return None;
        };
        let mut attempt = 1;
        loop {
            match Self::try_start(&pebble, &dns, tls_port, validity) {
                Ok(p) => return Some(p),
                Err(logs)
                    if attempt < START_ATTEMPTS && logs.contains("address already in use") =>
                {
                    eprintln!("pebble: a port was taken before it bound it; trying other ports");
                    attempt += 1;
                }
                Err(logs) => panic!("pebble did not start:\n{logs}"),
            }
        }
    }

    /// One start on fresh ports; `Err` with both processes' logs (and both killed) when either
    /// did not listen in time or exited.
    fn try_start(
        pebble: &Path,
        dns: &Path,
        tls_port: u16,
        validity: Option<Duration>,
    ) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (listen, management, dns_at, dns_mgmt, http) = (
            free_addr(),
            free_addr(),
            free_addr(),
            free_addr(),
            free_addr(),
        );

        // Pebble's own HTTPS certificate (directory and management interface), for 127.0.0.1.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pebble under test");
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": listen.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": dir.path().join("cert.pem"),
                "privateKey": dir.path().join("key.pem"),
                "httpPort": http.port(),
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        if let Some(v) = validity {
            config["pebble"]["certificateValidityPeriod"] = v.as_secs().into();
        }
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).unwrap();

        let log = |name: &str| log_file(dir.path(), name);
        // Only the DNS server: the challenge responders are tokengate's job here.
        let dns_child = Command::new(dns)
            .args(["-dns01", &dns_at.to_string()])
            .args(["-management", &dns_mgmt.to_string()])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdin(Stdio::null())
            .stdout(log("dns.log"))
            .stderr(log("dns.err"))
            .spawn()
            .expect("pebble-challtestsrv starts");
        let mut p = Self {
            dns: dns_child,
            ca: None,
            program: pebble.to_owned(),
            dns_at,
            dir,
            listen,
            management,
        };
        let started = p
            .wait_listening(&[dns_mgmt])
            .and_then(|()| p.try_start_ca());
        match started {
            Ok(()) => Ok(p),
            Err(e) => {
                let logs = format!("{e}\n{}", p.logs());
                p.kill();
                Err(logs)
            }
        }
    }

    /// Starts Pebble itself (the DNS server is already up) and waits until it listens. Its
    /// state (accounts, orders, its root) is in memory only: a new start has none of it.
    pub fn start_ca(&mut self) {
        if let Err(e) = self.try_start_ca() {
            let logs = self.logs();
            self.kill();
            panic!("{e}:\n{logs}");
        }
    }

    fn try_start_ca(&mut self) -> Result<(), String> {
        assert!(self.ca.is_none(), "pebble is already running");
        let pebble_child = Command::new(&self.program)
            .arg("-config")
            .arg(self.dir.path().join("pebble.json"))
            .args(["-dnsserver", &self.dns_at.to_string()])
            // Validate for real, at once; never reject a good nonce (rustls-acme does not
            // retry badNonce, and a random 5 % failure would only slow the test by a backoff).
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(log_file(self.dir.path(), "pebble.log"))
            .stderr(log_file(self.dir.path(), "pebble.err"))
            .spawn()
            .expect("pebble starts");
        self.ca = Some(pebble_child);
        self.wait_listening(&[self.listen, self.management])
    }

    /// Stops Pebble itself (killed, as a crash or an outage would end it); its DNS stays up.
    pub fn stop_ca(&mut self) {
        if let Some(mut c) = self.ca.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until every address of `addrs` takes connections, and fails as soon as a process
    /// exited (a port it could not bind) or past [`START_TIMEOUT`].
    fn wait_listening(&mut self, addrs: &[SocketAddr]) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        for &at in addrs {
            while std::net::TcpStream::connect_timeout(&at, Duration::from_millis(200)).is_err() {
                self.still_running()?;
                if Instant::now() > deadline {
                    return Err(format!(
                        "pebble did not listen on {at} within {START_TIMEOUT:?}"
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // A port another process took would answer too: the processes must be alive.
        self.still_running()
    }

    /// `Err` when the DNS server or Pebble has exited.
    fn still_running(&mut self) -> Result<(), String> {
        if let Ok(Some(status)) = self.dns.try_wait() {
            return Err(format!("pebble-challtestsrv exited: {status}"));
        }
        if let Some(ca) = self.ca.as_mut()
            && let Ok(Some(status)) = ca.try_wait()
        {
            return Err(format!("pebble exited: {status}"));
        }
        Ok(())
    }

    /// The ACME directory URL.
    pub fn directory(&self) -> String {
        format!("https://{}/dir", self.listen)
    }

    /// The address of Pebble's ACME interface.
    pub fn acme_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The PEM file tokengate's ACME client trusts Pebble's HTTPS interface by.
    pub fn https_ca(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// The root Pebble signs certificates under (made anew at each start), as PEM: a client
    /// that trusts only this trusts only what Pebble issued.
    pub async fn root(&self) -> String {
        let tls = super::client_tls(&self.https_ca());
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let fetch = async {
            let tcp = tokio::net::TcpStream::connect(self.management).await?;
            let name = ServerName::IpAddress(self.management.ip().into());
            let mut s = connector.connect(name, tcp).await?;
            s.write_all(
                format!("GET /roots/0 HTTP/1.0\r\nHost: {}\r\n\r\n", self.management).as_bytes(),
            )
            .await?;
            let mut buf = Vec::new();
            // Pebble closes after the answer (HTTP/1.0); a close without close_notify is fine.
            let _ = s.read_to_end(&mut buf).await;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), fetch)
            .await
            .expect("pebble's management interface answers within 10 s")
            .expect("pebble's root is fetched");
        let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        assert!(body.contains("BEGIN CERTIFICATE"), "{body}");
        body.to_owned()
    }

    /// Orders Pebble has received so far (from its log).
    pub fn orders(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("pebble.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Added order"))
            .count()
    }

    /// Both processes' logs, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["pebble.log", "pebble.err", "dns.log", "dns.err"] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let _ = writeln!(out, "--- {name}\n{text}");
        }
        out
    }

    fn kill(&mut self) {
        self.stop_ca();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A log file in `dir`, appended to (a restarted Pebble adds to its earlier log).
fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("a log file in the temporary dir")
}

/// A "CA" that accepts TCP connections and never answers, as a stalled server or a black hole
/// behind a load balancer does. It counts the connections it accepted and those the client
/// closed (the client gave up on them).
pub struct SilentCa {
    pub addr: SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    closed: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentCa {
    pub async fn start() -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (a, c) = (accepted.clone(), closed.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    // Read (the ClientHello) and say nothing, until the client closes.
                    let mut buf = [0u8; 4096];
                    while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            accepted,
            closed,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn closed(&self) -> usize {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for SilentCa {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP relay in front of a CA that can be made to stall: while stalled, new connections are
/// accepted and never answered (a CA hanging mid-renewal); otherwise they are relayed to the
/// CA. Pebble names its resources after the `Host` it was asked by, so every request of an
/// ACME client that was given the relay's directory URL goes through the relay.
pub struct StallingRelay {
    pub addr: SocketAddr,
    stalled: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl StallingRelay {
    pub async fn start(to: SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stalled.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let stall = s.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    if stall {
                        let mut buf = [0u8; 4096];
                        while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
                    } else if let Ok(mut ca) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut ca).await;
                    }
                });
            }
        });
        Self {
            addr,
            stalled,
            task,
        }
    }

    pub fn stall(&self, stalled: bool) {
        self.stalled
            .store(stalled, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for StallingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The program on PATH, else in /usr/bin (Debian's package).
fn find(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// An address on 127.0.0.1 whose port was free a moment ago, for a listener that cannot be
/// given port 0 (Pebble must know it in advance). The port is picked at random below the
/// kernel's ephemeral range: every other listener of the suite binds port 0 and every outgoing
/// connection takes its local port from that range, so between this check and the caller's
/// bind only another `free_addr` could take it (a port 0 pick once took one here, and the
/// server then failed to start with "address already in use").
pub fn free_addr() -> SocketAddr {
    use std::hash::{BuildHasher as _, Hasher as _};
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    const FLOOR: u16 = 10_000;
    if first_ephemeral > FLOOR + 1_000 {
        for _ in 0..1_000 {
            // A fresh `RandomState` is a new random key: its hash of nothing is a random number.
            let r = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            let port = FLOOR + (r % u64::from(first_ephemeral - FLOOR)) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return SocketAddr::from(([127, 0, 0, 1], port));
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
}
