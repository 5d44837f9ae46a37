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

/// Pebble, its DNS, and the files they were started with.
pub struct Pebble {
    children: Vec<Child>,
    dir: tempfile::TempDir,
    listen: SocketAddr,
    management: SocketAddr,
}

impl Pebble {
    /// Starts Pebble with its validator dialing `tls_port` on 127.0.0.1. `None` (after a loud
    /// message) when Pebble is not installed and `TOKENGATE_REQUIRE_PEBBLE` is unset.
    pub fn start(tls_port: u16) -> Option<Self> {
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
        let config = serde_json::json!({
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
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).unwrap();

        let log = |name: &str| {
            std::fs::File::create(dir.path().join(name)).expect("a log file in the temporary dir")
        };
        let mut children = Vec::new();
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
        children.push(dns_child);
        let pebble_child = Command::new(pebble)
            .arg("-config")
            .arg(dir.path().join("pebble.json"))
            .args(["-dnsserver", &dns_at.to_string()])
            // Validate for real, at once; never reject a good nonce (rustls-acme does not
            // retry badNonce, and a random 5 % failure would only slow the test by a backoff).
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("pebble starts");
        children.push(pebble_child);
        let mut p = Self {
            children,
            dir,
            listen,
            management,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        for at in [listen, management, dns_mgmt] {
            while std::net::TcpStream::connect_timeout(&at, Duration::from_millis(200)).is_err() {
                if Instant::now() > deadline {
                    let logs = p.logs();
                    p.kill();
                    panic!("pebble did not listen on {at} within {START_TIMEOUT:?}:\n{logs}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(p)
    }

    /// The ACME directory URL.
    pub fn directory(&self) -> String {
        format!("https://{}/dir", self.listen)
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
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.kill();
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

/// An address on 127.0.0.1 whose port was free a moment ago.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
}
