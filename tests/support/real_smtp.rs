//! A real SMTP server for the tests that exercise the transport itself: aiosmtpd from PyPI
//! (pinned in `tests/support/requirements.txt`) in one of tokengate's three security modes —
//! plaintext, STARTTLS, or implicit TLS — with AUTH when asked, behind a certificate of a
//! private CA made here.
//!
//! It runs in the tests' own Python virtual environment, `tests/.venv` (git-ignored): a system
//! Python may be "externally managed" (PEP 668, Debian's) and refuse `pip install`, and may have
//! no pip at all. `.ci/run` makes the environment and installs the pinned packages; a developer's
//! first run does the same here, once, each step under a deadline.
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

/// The tests' virtual environment (`.ci/run` makes the same one).
fn venv() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/.venv"))
}

/// The virtual environment's interpreter, the one the server runs on.
fn python() -> PathBuf {
    venv().join("bin/python")
}

/// Runs one setup command under `timeout` (its process group killed past it); panics with
/// `hint` and the command's output when it fails.
fn setup_step(cmd: Command, timeout: Duration, hint: &str) {
    let what = format!("{cmd:?}");
    let (out, killed) = super::process::run_bounded(cmd, None, timeout);
    assert!(
        out.status.success() && !killed,
        "{what} failed{}: {hint}\n{}{}",
        if killed {
            format!(" (killed after {timeout:?})")
        } else {
            String::new()
        },
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes the virtual environment and installs the pinned packages into it, once per test
/// binary, when its interpreter cannot `import aiosmtpd`.
fn ensure_installed() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let have = || {
            let mut check = Command::new(python());
            check.args(["-c", "import aiosmtpd"]);
            python().exists() && {
                let (out, killed) =
                    super::process::run_bounded(check, None, Duration::from_secs(60));
                !killed && out.status.success()
            }
        };
        if have() {
            return;
        }
        if !python().exists() {
            let mut make = Command::new("python3");
            make.args(["-m", "venv"]).arg(venv());
            setup_step(
                make,
                Duration::from_secs(120),
                "the mail tests need python3 with its venv module (Debian: apt-get install \
                 python3-venv; .ci/run does it)",
            );
        }
        let req = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/requirements.txt"
        );
        let mut pip = Command::new(python());
        pip.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            req,
        ]);
        setup_step(
            pip,
            Duration::from_secs(600),
            "installing the pinned aiosmtpd needs access to PyPI",
        );
        assert!(have(), "aiosmtpd is not importable after its install");
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
        let mut cmd = Command::new(python());
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
            .expect("the virtual environment's python starts");
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
