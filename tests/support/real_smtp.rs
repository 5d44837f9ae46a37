//! A real SMTP server for the tests that exercise the transport itself: aiosmtpd from PyPI
//! (pinned in `tests/support/requirements.txt`; `.ci/run` installs it, and so does this module
//! when it is missing) in one of tokengate's three security modes — plaintext, STARTTLS, or
//! implicit TLS — with AUTH when asked, behind a certificate of a private CA made here.
//!
//! The server prints one JSON line per accepted message; they are collected as [`Mail`]s. It
//! stops when its standard input closes, so it never outlives its test, and it is killed on
//! drop besides.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;

use super::smtp::Mail;

/// How the server secures its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    None,
    StartTls,
    Tls,
}

pub struct RealSmtp {
    pub port: u16,
    /// The private CA whose certificate the server presents (for `[mail] ca`).
    pub ca: PathBuf,
    mails: Arc<Mutex<Vec<Mail>>>,
    child: Child,
    _dir: tempfile::TempDir,
}

/// Installs the pinned packages once per test binary, when `import aiosmtpd` fails.
fn ensure_installed() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let have = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .status()
            .is_ok_and(|s| s.success());
        if !have {
            let req = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/requirements.txt"
            );
            let ok = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "-r", req])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "pip install -r {req} failed");
        }
    });
}

/// A CA and a certificate it issued for 127.0.0.1 and localhost, as PEM files in `dir`.
fn certificates(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tokengate test mail CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (ca, crt, k) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (ca, crt, k)
}

impl RealSmtp {
    /// Starts the server; `auth` makes it require AUTH with that username and password.
    pub fn start(security: Security, auth: Option<(&str, &str)>) -> Self {
        ensure_installed();
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = certificates(dir.path());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_server.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg("--security").arg(match security {
            Security::None => "none",
            Security::StartTls => "starttls",
            Security::Tls => "tls",
        });
        cmd.arg("--cert").arg(&cert).arg("--key").arg(&key);
        if let Some((u, p)) = auth {
            cmd.args(["--user", u, "--password", p]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 starts");
        let stdout = child.stdout.take().unwrap();
        let mails: Arc<Mutex<Vec<Mail>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = mails.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("listening ") {
                    let _ = tx.send(port.trim().parse::<u16>().unwrap());
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let data = base64::engine::general_purpose::STANDARD
                    .decode(v["data"].as_str().unwrap())
                    .unwrap();
                sink.lock().unwrap().push(Mail {
                    from: v["from"].as_str().unwrap_or_default().to_owned(),
                    to: v["to"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| t.as_str().unwrap().to_owned())
                        .collect(),
                    data: String::from_utf8_lossy(&data).into_owned(),
                });
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the SMTP server starts within 30 s");
        Self {
            port,
            ca,
            mails,
            child,
            _dir: dir,
        }
    }

    pub fn to(&self, rcpt: &str) -> Vec<Mail> {
        self.mails
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.to.iter().any(|t| t == rcpt))
            .cloned()
            .collect()
    }

    /// Waits (bounded) until at least `n` mails went to `rcpt`.
    pub async fn wait_for(&self, rcpt: &str, n: usize, within: Duration) -> Vec<Mail> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.to(rcpt);
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RealSmtp {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
