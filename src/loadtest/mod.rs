//! `tokengate loadtest`: the load tool ops run against the auth path before putting tokengate in
//! front of an API. `setup` creates synthetic users through the admin API, `cleanup` removes
//! them, and `run` drives one scenario over a fixed number of keep-alive HTTP/1.1 connections
//! over TLS, recording every latency in an HDR histogram (`report`).
//!
//! The tool only talks to the target it is given; it stops by itself at the end of the
//! duration, and every request has a timeout.

pub mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};

use report::{Recorder, Summary};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "invalid target URL '{0}': use https://host:port (or http://host:port for --scenario plain)"
    )]
    Target(String),
    #[error("{0} sends credentials: its target must be https://")]
    PlainHttp(String),
    #[error("cannot read the CA file {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the admin API answered {status}: {body}")]
    Admin { status: StatusCode, body: String },
    #[error("request failed: {0}")]
    Request(String),
    #[error("users file {path}: {reason}")]
    UsersFile { path: String, reason: String },
    #[error("scenario {0} needs load-test users: run `tokengate loadtest setup` first")]
    NoUsers(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot write {path}: {reason}")]
    Output { path: String, reason: String },
}

/// Where the target is and how to trust it.
#[derive(Clone)]
pub struct Target {
    pub uri: Uri,
    pub addr: SocketAddr,
    pub server_name: ServerName<'static>,
    pub host_header: String,
    /// `None` for an `http://` target: an upstream measured directly, without credentials.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    pub async fn new(url: &str, ca: Option<&Path>, insecure: bool) -> Result<Self, LoadError> {
        let uri: Uri = url.parse().map_err(|_| LoadError::Target(url.into()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(LoadError::Target(url.into())),
        };
        let host = uri
            .host()
            .ok_or_else(|| LoadError::Target(url.into()))?
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host_for_lookup = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let addr = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::lookup_host((host_for_lookup.as_str(), port)),
        )
        .await
        .map_err(|_| LoadError::Connect {
            addr: url.into(),
            reason: "name lookup timed out".into(),
        })?
        .map_err(|e| LoadError::Connect {
            addr: url.into(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| LoadError::Target(url.into()))?;
        let server_name = ServerName::try_from(host_for_lookup.clone())
            .map_err(|_| LoadError::Target(url.into()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let mut tls = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth()
        } else {
            let roots = crate::tls::client_roots(ca).map_err(|reason| LoadError::Ca {
                // Only a given file can fail.
                path: ca.map(|p| p.display().to_string()).unwrap_or_default(),
                reason,
            })?;
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            host_header: uri.authority().map(|a| a.to_string()).unwrap_or(host),
            uri,
            addr,
            server_name,
            tls: https.then(|| Arc::new(tls)),
        })
    }
}

/// `--insecure`: accepts any certificate (and says so loudly, in `main`).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One keep-alive HTTP/1.1 connection over TLS.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Conn {
    pub async fn open(t: &Target) -> Result<Self, LoadError> {
        let err = |reason: String| LoadError::Connect {
            addr: t.addr.to_string(),
            reason,
        };
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(t.addr).await?;
            tcp.set_nodelay(true)?;
            Ok::<_, std::io::Error>(tcp)
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| err("timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        let Some(tls) = &t.tls else {
            return Self::handshake(tcp).await.map_err(err);
        };
        let tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_rustls::TlsConnector::from(tls.clone()).connect(t.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| err("TLS handshake timed out".into()))?
        .map_err(|e| err(e.to_string()))?;
        Self::handshake(tls).await.map_err(err)
    }

    async fn handshake<T>(io: T) -> Result<Self, String>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = tokio::time::timeout(
            CONNECT_TIMEOUT,
            hyper::client::conn::http1::handshake(TokioIo::new(io)),
        )
        .await
        .map_err(|_| "HTTP handshake timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { sender })
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String> {
        let exchange = async {
            self.sender.ready().await.map_err(|e| e.to_string())?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| "timeout".to_owned())?
    }
}

fn request(
    t: &Target,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", &t.host_header);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body)).expect("valid request")
}

fn basic(user: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
    )
}

fn xml_escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

fn soap_login_body(user: &str, secret: &str) -> Bytes {
    Bytes::from(format!(
        r#"<se:Envelope xmlns:se="http://schemas.xmlsoap.org/soap/envelope/"><se:Body><login xmlns="urn:partner.soap.sforce.com"><username>{}</username><password>{}</password></login></se:Body></se:Envelope>"#,
        xml_escape(user),
        xml_escape(secret)
    ))
}

/// Load-test users as `setup` writes them (the file is readable by its owner only).
#[derive(Serialize, Deserialize)]
pub struct UsersFile {
    pub target: String,
    pub users: Vec<LoadUser>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct LoadUser {
    pub username: String,
    /// Password with the token appended.
    pub secret: String,
}

impl UsersFile {
    pub fn read(path: &Path) -> Result<Self, LoadError> {
        let err = |reason: String| LoadError::UsersFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))
    }

    /// Writes the file readable by its owner only (it holds credentials).
    pub fn write(&self, path: &Path) -> Result<(), LoadError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let err = |reason: String| LoadError::UsersFile {
            path: path.display().to_string(),
            reason,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| err(e.to_string()))?;
        f.write_all(
            serde_json::to_string_pretty(self)
                .expect("serialisable")
                .as_bytes(),
        )
        .map_err(|e| err(e.to_string()))
    }
}

fn random_alnum(len: usize) -> String {
    const A: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let rng = ring::rand::SystemRandom::new();
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let buf: [u8; 64] = ring::rand::generate(&rng)
            .expect("the OS random generator works")
            .expose();
        for b in buf {
            if b < 248 && out.len() < len {
                out.push(A[(b % 62) as usize] as char);
            }
        }
    }
    out
}

pub const LOADTEST_DOMAIN: &str = "loadtest.invalid";

/// Logs the admin in once (SOAP) and returns an `Authorization` value for the admin API, so
/// the many admin calls of a setup or cleanup are session calls, not logins.
async fn admin_auth(t: &Target, admin_user: &str, admin_secret: &str) -> Result<String, LoadError> {
    if t.tls.is_none() {
        return Err(LoadError::PlainHttp("the admin login".into()));
    }
    let mut conn = Conn::open(t).await?;
    let user = LoadUser {
        username: admin_user.to_owned(),
        secret: admin_secret.to_owned(),
    };
    match login_session(t, &mut conn, &user).await {
        Ok(sid) => Ok(format!("Bearer {sid}")),
        Err(e) => Err(LoadError::Admin {
            status: StatusCode::UNAUTHORIZED,
            body: format!(
                "the admin could not log in ({e}); check --admin and TOKENGATE_ADMIN_SECRET"
            ),
        }),
    }
}

/// Creates `n` load-test users through the admin API and writes their credentials.
pub async fn setup(
    t: &Target,
    admin_user: &str,
    admin_secret: &str,
    n: usize,
    token_length: usize,
    users_file: &Path,
) -> Result<usize, LoadError> {
    let admin = admin_auth(t, admin_user, admin_secret).await?;
    let run = format!("{:x}", crate::now_secs());
    let users: Vec<LoadUser> = (0..n)
        .map(|i| LoadUser {
            username: format!("lt-{run}-{i}@{LOADTEST_DOMAIN}"),
            // Letters and digits: any password policy accepts it.
            secret: String::new(),
        })
        .collect();
    // A few connections in parallel: each creation hashes a password on the server.
    let workers = 4.min(n.max(1));
    let chunks: Vec<Vec<(usize, LoadUser)>> = (0..workers)
        .map(|w| {
            users
                .iter()
                .cloned()
                .enumerate()
                .filter(|(i, _)| i % workers == w)
                .collect()
        })
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let (t, admin) = (t.clone(), admin.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&t).await?;
            let mut made = Vec::new();
            for (i, mut u) in chunk {
                let password = format!("{}7", random_alnum(15));
                let token = random_alnum(token_length);
                let body = serde_json::json!({
                    "username": u.username, "email": u.username, "password": password,
                    "loadtest": true, "token": token, "full_name": format!("Load test user {i}"),
                });
                let req = request(
                    &t,
                    Method::POST,
                    "/tokengate/v1/admin/users",
                    &[
                        ("authorization", &admin),
                        ("content-type", "application/json"),
                    ],
                    Bytes::from(body.to_string()),
                );
                let (status, body) = conn.send(req).await.map_err(LoadError::Request)?;
                if status != StatusCode::CREATED {
                    return Err(LoadError::Admin {
                        status,
                        body: String::from_utf8_lossy(&body).chars().take(300).collect(),
                    });
                }
                u.secret = format!("{password}{token}");
                made.push(u);
            }
            Ok::<_, LoadError>(made)
        }));
    }
    let mut all = Vec::with_capacity(n);
    let mut first_error = None;
    for task in tasks {
        match task.await.map_err(|e| LoadError::Request(e.to_string()))? {
            Ok(made) => all.extend(made),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    // Write what was made even on error, so cleanup and runs can use it.
    UsersFile {
        target: t.uri.to_string(),
        users: all,
    }
    .write(users_file)?;
    match first_error {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

/// Deletes every load-test user on the target.
pub async fn cleanup(t: &Target, admin_user: &str, admin_secret: &str) -> Result<usize, LoadError> {
    let admin = admin_auth(t, admin_user, admin_secret).await?;
    let mut conn = Conn::open(t).await?;
    let (status, body) = conn
        .send(request(
            t,
            Method::GET,
            "/tokengate/v1/admin/users",
            &[("authorization", &admin)],
            Bytes::new(),
        ))
        .await
        .map_err(LoadError::Request)?;
    if status != StatusCode::OK {
        return Err(LoadError::Admin {
            status,
            body: String::from_utf8_lossy(&body).chars().take(300).collect(),
        });
    }
    let list: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| LoadError::Request(e.to_string()))?;
    let names: Vec<String> = list["users"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|u| u["loadtest"] == true)
                .filter_map(|u| u["username"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for name in &names {
        let path = format!("/tokengate/v1/admin/users/{}", name.replace('@', "%40"));
        let (status, body) = conn
            .send(request(
                t,
                Method::DELETE,
                &path,
                &[("authorization", &admin)],
                Bytes::new(),
            ))
            .await
            .map_err(LoadError::Request)?;
        if status != StatusCode::OK {
            return Err(LoadError::Admin {
                status,
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            });
        }
    }
    Ok(names.len())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Cold SOAP logins (the argon2 path).
    LoginSoap,
    /// Cold OAuth password-grant logins (the argon2 path).
    LoginOauth,
    /// HTTP Basic on every request (the verified-credential cache path).
    Basic,
    /// One login per connection, then proxied calls with the session.
    Session,
    /// Random wrong credentials and unknown users.
    Flood,
    /// Session traffic on half the connections while a flood runs on the other half.
    Mixed,
    /// No credentials at all (a proxy without authentication, for comparison).
    Plain,
}

pub struct RunOptions {
    pub scenario: Scenario,
    pub connections: usize,
    pub duration: Duration,
    /// Total requests per second across all connections; None: as fast as possible.
    pub rate: Option<f64>,
    pub path: String,
    pub users: Vec<LoadUser>,
    pub oauth_client: Option<(String, String)>,
    /// Print a progress line every second.
    pub progress: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Job {
    LoginSoap,
    LoginOauth,
    Basic,
    Session,
    Flood,
    Plain,
}

/// Runs a scenario to its end and returns one summary per traffic kind (two for `mixed`).
pub async fn run(t: &Target, opts: RunOptions) -> Result<Vec<(String, Summary)>, LoadError> {
    if t.tls.is_none() && opts.scenario != Scenario::Plain {
        return Err(LoadError::PlainHttp(
            format!("--scenario {:?}", opts.scenario).to_lowercase(),
        ));
    }
    let needs_users = !matches!(opts.scenario, Scenario::Flood | Scenario::Plain);
    if needs_users && opts.users.is_empty() {
        return Err(LoadError::NoUsers(
            format!("{:?}", opts.scenario).to_lowercase(),
        ));
    }
    if opts.scenario == Scenario::LoginOauth && opts.oauth_client.is_none() {
        return Err(LoadError::Invalid(
            "login-oauth needs --client-id and TOKENGATE_LOADTEST_CLIENT_SECRET".into(),
        ));
    }
    if opts.connections == 0 || opts.connections > 10_000 {
        return Err(LoadError::Invalid(
            "--connections must be 1 to 10000".into(),
        ));
    }
    let plan: Vec<(String, Job, usize)> = match opts.scenario {
        Scenario::LoginSoap => vec![("login-soap".into(), Job::LoginSoap, opts.connections)],
        Scenario::LoginOauth => vec![("login-oauth".into(), Job::LoginOauth, opts.connections)],
        Scenario::Basic => vec![("basic".into(), Job::Basic, opts.connections)],
        Scenario::Session => vec![("session".into(), Job::Session, opts.connections)],
        Scenario::Flood => vec![("flood".into(), Job::Flood, opts.connections)],
        Scenario::Plain => vec![("plain".into(), Job::Plain, opts.connections)],
        Scenario::Mixed => {
            let half = (opts.connections / 2).max(1);
            vec![
                ("session".into(), Job::Session, half),
                (
                    "flood".into(),
                    Job::Flood,
                    opts.connections.saturating_sub(half).max(1),
                ),
            ]
        }
    };
    let total_conns: usize = plan.iter().map(|p| p.2).sum();
    if needs_users && opts.users.len() < total_conns && opts.progress {
        eprintln!(
            "tokengate: note: {} users for {total_conns} connections: some connections share credentials",
            opts.users.len()
        );
    }
    let started = Instant::now();
    let barrier = Arc::new(tokio::sync::Barrier::new(total_conns));
    let seconds = opts.duration.as_secs().max(1) as usize + 1;
    let duration = opts.duration;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let interval = opts
        .rate
        .map(|r| Duration::from_secs_f64(total_conns as f64 / r.max(0.001)));
    let users = Arc::new(opts.users);
    let path = Arc::new(opts.path);
    let oauth = Arc::new(opts.oauth_client);

    let progress = opts.progress.then(|| {
        let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let n = done.load(Ordering::Relaxed);
                eprint!(
                    "\r[{:>4}s] {n} requests, {}/s now, {} errors   ",
                    started.elapsed().as_secs(),
                    n - last,
                    failed.load(Ordering::Relaxed)
                );
                last = n;
            }
            eprintln!();
        })
    });

    let mut groups = Vec::new();
    let mut worker_index = 0usize;
    for (name, job, conns) in plan {
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let w = worker_index;
            worker_index += 1;
            let (t, users, path, oauth) = (t.clone(), users.clone(), path.clone(), oauth.clone());
            let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                let mut rec = Recorder::new(seconds);
                worker(
                    &t,
                    job,
                    w,
                    &users,
                    &path,
                    &oauth,
                    duration,
                    interval,
                    &barrier,
                    total_conns,
                    &mut rec,
                    &done,
                    &failed,
                    &stop,
                )
                .await;
                rec
            }));
        }
        groups.push((name, tasks));
    }
    let mut out = Vec::new();
    for (name, tasks) in groups {
        let mut merged = Recorder::new(seconds);
        for task in tasks {
            if let Ok(rec) = task.await {
                merged.merge(&rec);
            }
        }
        out.push((
            name,
            merged.summary(
                started
                    .elapsed()
                    .min(opts.duration.max(Duration::from_millis(1))),
            ),
        ));
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    t: &Target,
    job: Job,
    index: usize,
    users: &[LoadUser],
    path: &str,
    oauth: &Option<(String, String)>,
    duration: Duration,
    interval: Option<Duration>,
    barrier: &tokio::sync::Barrier,
    stride: usize,
    rec: &mut Recorder,
    done: &AtomicU64,
    failed: &AtomicU64,
    stop: &AtomicBool,
) {
    let mut conn: Option<Conn> = None;
    let mut session: Option<String> = None;
    let mut n = index;
    // Session workers log in before the clock starts, so the run measures the proxied calls
    // and a flood running beside them (`mixed`) cannot keep them from starting.
    if job == Job::Session {
        let u = &users[n % users.len()];
        for _ in 0..40 {
            let opened = match conn.take() {
                Some(c) => Ok(c),
                None => Conn::open(t).await,
            };
            let Ok(mut c) = opened else {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            };
            match login_session(t, &mut c, u).await {
                Ok(sid) => {
                    session = Some(sid);
                    conn = Some(c);
                    break;
                }
                Err(_) => {
                    conn = Some(c);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        if session.is_none() {
            rec.error("session login failed");
            failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Basic workers likewise send each of their credentials once before the clock starts: the
    // first call per credential is a cold login (argon2, measured by `login-soap`), and the
    // run measures the calls that follow, as `session` measures the calls after its login.
    if job == Job::Basic && !users.is_empty() {
        for u in users
            .iter()
            .skip(index % users.len())
            .step_by(stride.max(1))
        {
            if conn.is_none() {
                conn = Conn::open(t).await.ok();
            }
            let Some(c) = conn.as_mut() else { break };
            let auth = basic(&u.username, &u.secret);
            let req = request(
                t,
                Method::GET,
                path,
                &[("authorization", &auth)],
                Bytes::new(),
            );
            if c.send(req).await.is_err() {
                conn = None;
            }
        }
    }
    barrier.wait().await;
    let started = Instant::now();
    let deadline = started + duration;
    // Paced runs measure from the intended send time, so a slow server cannot hide its delay
    // by slowing the sender (coordinated omission).
    let mut next = Instant::now();
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        if interval.is_some() && next > Instant::now() {
            tokio::time::sleep_until(next.into()).await;
        }
        let intended = if interval.is_some() {
            next
        } else {
            Instant::now()
        };
        if let Some(iv) = interval {
            next += iv;
        }
        if conn.is_none() {
            match Conn::open(t).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    rec.error(&short(&e.to_string()));
                    failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            session = None;
        }
        let c = conn.as_mut().expect("connected");
        let user = if users.is_empty() {
            None
        } else {
            Some(&users[n % users.len()])
        };
        // Each connection walks its own slice of the users (index, index + connections, ...),
        // so no two connections send the same credentials at once: the server would answer
        // such identical logins with one shared verification and the run would not be cold.
        n = n.wrapping_add(stride);
        if job == Job::Session && session.is_none() {
            match login_session(t, c, user.expect("checked")).await {
                Ok(sid) => session = Some(sid),
                Err(e) => {
                    rec.error(&e);
                    failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let req = match job {
            Job::LoginSoap => {
                let u = user.expect("checked");
                request(
                    t,
                    Method::POST,
                    "/services/Soap/u/59.0",
                    &[("content-type", "text/xml")],
                    soap_login_body(&u.username, &u.secret),
                )
            }
            Job::LoginOauth => {
                let u = user.expect("checked");
                let (id, secret) = oauth.as_ref().expect("checked");
                let form = serde_urlencoded::to_string([
                    ("grant_type", "password"),
                    ("client_id", id),
                    ("client_secret", secret),
                    ("username", &u.username),
                    ("password", &u.secret),
                ])
                .expect("encodable");
                request(
                    t,
                    Method::POST,
                    "/services/oauth2/token",
                    &[("content-type", "application/x-www-form-urlencoded")],
                    Bytes::from(form),
                )
            }
            Job::Basic => {
                let u = user.expect("checked");
                request(
                    t,
                    Method::GET,
                    path,
                    &[("authorization", &basic(&u.username, &u.secret))],
                    Bytes::new(),
                )
            }
            Job::Session => {
                let sid = session.as_deref().unwrap_or_default();
                request(
                    t,
                    Method::GET,
                    path,
                    &[("authorization", &format!("Bearer {sid}"))],
                    Bytes::new(),
                )
            }
            Job::Plain => request(t, Method::GET, path, &[], Bytes::new()),
            Job::Flood => {
                // Alternate unknown users and wrong secrets for known-looking names.
                let user = format!("flood-{}-{}@{LOADTEST_DOMAIN}", random_alnum(6), n % 1000);
                let secret = random_alnum(32);
                request(
                    t,
                    Method::POST,
                    "/services/Soap/u/59.0",
                    &[("content-type", "text/xml")],
                    soap_login_body(&user, &secret),
                )
            }
        };
        match c.send(req).await {
            Ok((status, _)) => {
                let second = started.elapsed().as_secs() as usize;
                rec.record(second, intended.elapsed(), status.as_u16());
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                rec.error(&short(&e));
                failed.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
}

/// A SOAP login on `c`; the session id.
async fn login_session(t: &Target, c: &mut Conn, u: &LoadUser) -> Result<String, String> {
    let req = request(
        t,
        Method::POST,
        "/services/Soap/u/59.0",
        &[("content-type", "text/xml")],
        soap_login_body(&u.username, &u.secret),
    );
    match c.send(req).await {
        Ok((StatusCode::OK, body)) => String::from_utf8_lossy(&body)
            .split_once("<sessionId>")
            .and_then(|(_, r)| r.split_once("</sessionId>"))
            .map(|(s, _)| s.to_owned())
            .ok_or_else(|| "login answer without a sessionId".to_owned()),
        Ok((status, _)) => Err(format!("login {status}")),
        Err(e) => Err(short(&e)),
    }
}

fn short(e: &str) -> String {
    e.chars().take(80).collect()
}

/// Default users file.
pub fn default_users_file() -> PathBuf {
    PathBuf::from("tokengate-loadtest-users.json")
}
