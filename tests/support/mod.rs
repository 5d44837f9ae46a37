//! Shared test harness: a recording upstream on loopback, the real tokengate server booted
//! in-process on `127.0.0.1:0` with real TLS, and an HTTPS client that trusts only the
//! server's own certificate.

pub mod js;
pub mod pebble;
pub mod postgres;
pub mod process;
pub mod real_smtp;
pub mod smtp;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpListener;

use tokengate::admin::NewUser;
use tokengate::config::{Config, OAuthClient};
use tokengate::server::Server;

pub const CLIENT_ID: &str = "test-client";
pub const CLIENT_SECRET: &str = "test-client-secret";
pub const PASSWORD: &str = "Passw0rd";

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A plain HTTP/1.1 upstream on loopback that records every request and answers by path:
/// - `/echo-body`: the request body back;
/// - `/slow`: after 5 s;
/// - `/large?bytes=N`: N bytes of a known pattern ([`pattern`]);
/// - `/error`: 500 with a JSON error;
/// - `/chunked`: a chunked answer in several frames;
/// - `/stream-in`: reads the body frame by frame, counting bytes in [`Upstream::streamed_in`]
///   as they arrive, then echoes it;
/// - `/stream-out`: sends a first frame, then waits for [`Upstream::release_out`] before the
///   rest;
/// - `/set-cookies`: tries to set tokengate's console cookie and turn HSTS off;
/// - `/close`: answers with `Connection: close`;
/// - anything else: a small Salesforce-shaped query result.
///
/// Each answer also names a hop-by-hop header the proxy must remove.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Recorded>>>,
    /// TCP connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// TCP connections open now.
    pub open: Arc<std::sync::atomic::AtomicUsize>,
    /// Bytes of `/stream-in` bodies received so far.
    pub streamed_in: Arc<std::sync::atomic::AtomicUsize>,
    /// Lets a `/stream-out` answer send the rest of its body.
    pub release_out: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// What the upstream's behaviours share.
#[derive(Clone)]
struct UpstreamState {
    rec: Arc<Mutex<Vec<Recorded>>>,
    streamed_in: Arc<std::sync::atomic::AtomicUsize>,
    release_out: Arc<tokio::sync::Notify>,
}

/// The bytes `/large` answers with: byte `i` is `i % 251`.
pub fn pattern(n: usize) -> Bytes {
    (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

impl Upstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = UpstreamState {
            rec: Arc::default(),
            streamed_in: Arc::default(),
            release_out: Arc::new(tokio::sync::Notify::new()),
        };
        let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let accepted = connections.clone();
        let open: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let live = open.clone();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let state = shared.clone();
                let live = live.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(upstream_answer(req, state).await) }
                    });
                    let mut b = hyper::server::conn::http1::Builder::new();
                    b.timer(TokioTimer::new());
                    let _ = b.serve_connection(TokioIo::new(tcp), svc).await;
                    live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            seen: state.rec,
            connections,
            open,
            streamed_in: state.streamed_in,
            release_out: state.release_out,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests for `path` have arrived (recorded before they are answered).
    pub fn arrived(&self, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.uri.split('?').next() == Some(path))
            .count()
    }

    pub fn last(&self) -> Recorded {
        self.requests().pop().expect("the upstream saw a request")
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

async fn upstream_answer(req: Request<Incoming>, state: UpstreamState) -> Response<UpBody> {
    let (parts, mut body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let body = if path == "/stream-in" {
        // Frame by frame, so a test sees bytes arrive before the client has sent them all.
        let mut all = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map(|f| f.into_data()) {
                let data = data.unwrap_or_default();
                state
                    .streamed_in
                    .fetch_add(data.len(), std::sync::atomic::Ordering::SeqCst);
                all.extend_from_slice(&data);
            } else {
                break;
            }
        }
        Bytes::from(all)
    } else {
        body.collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default()
    };
    state.rec.lock().unwrap().push(Recorded {
        method: parts.method,
        uri: parts.uri.to_string(),
        version: parts.version,
        headers: parts.headers,
        body: body.clone(),
    });
    let full = |b: Bytes| Full::new(b).boxed();
    let mut status = StatusCode::OK;
    let out: UpBody = match path.as_str() {
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            full(QUERY_RESULT.into())
        }
        // An answer after the given number of milliseconds.
        p if p.starts_with("/delay/") => {
            let ms = p["/delay/".len()..].parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(QUERY_RESULT.into())
        }
        // Ten chunks, one every 300 ms: a body that streams for three seconds.
        "/drip" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
            tokio::spawn(async move {
                for i in 0..10u8 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if tx.send(Bytes::from(vec![b'0' + i; 100])).await.is_err() {
                        return;
                    }
                }
            });
            ChannelBody(rx).boxed()
        }
        "/echo-body" | "/stream-in" => full(body),
        "/large" => {
            let n = parts
                .uri
                .query()
                .and_then(|q| q.strip_prefix("bytes="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(1 << 20);
            full(pattern(n))
        }
        "/error" => {
            status = StatusCode::INTERNAL_SERVER_ERROR;
            full(Bytes::from_static(
                br#"[{"message":"upstream failure","errorCode":"UNKNOWN_EXCEPTION"}]"#,
            ))
        }
        "/chunked" | "/stream-out" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
            let release = (path == "/stream-out").then(|| state.release_out.clone());
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first,")).await;
                if let Some(r) = release {
                    r.notified().await;
                }
                for part in [&b"second,"[..], b"third"] {
                    let _ = tx.send(Bytes::from_static(part)).await;
                }
            });
            ChannelBody(rx).boxed()
        }
        _ => full(QUERY_RESULT.into()),
    };
    let mut b = Response::builder().status(status);
    if path == "/set-cookies" {
        b = b
            .header(
                "set-cookie",
                "__Host-tg_console=planted; Path=/; Secure; HttpOnly",
            )
            .header("set-cookie", "app=1; Path=/")
            .header("strict-transport-security", "max-age=0");
    }
    b.header("content-type", "application/json;charset=UTF-8")
        .header(
            "connection",
            if path == "/close" {
                "close"
            } else {
                "keep-alive, x-upstream-hop"
            },
        )
        .header("x-upstream-hop", "must not reach the client")
        .body(out)
        .unwrap()
}

const QUERY_RESULT: &[u8] = br#"{"totalSize":1,"done":true,"records":[{"attributes":{"type":"Account"},"Id":"001000000000001AAA","Name":"Acme"}]}"#;

/// A body fed chunk by chunk from a channel, with no length known in advance.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|c| c.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// A tokengate server under test.
pub struct TestServer {
    pub server: Option<Server>,
    pub dir: Arc<tempfile::TempDir>,
    pub cfg: Config,
    pub addr: SocketAddr,
    pub origin: String,
    pub ca: PathBuf,
}

/// Points the server's mail at an SMTP sink on loopback (plaintext, as a local relay).
pub fn mail_to(cfg: &mut Config, sink: &smtp::SmtpSink, brand: &str) {
    cfg.mail.transport = tokengate::config::MailTransport::Smtp {
        host: "127.0.0.1".into(),
        port: sink.addr.port(),
        security: tokengate::config::SmtpSecurity::None,
        credentials: None,
        ca: None,
    };
    cfg.mail.timeout = Duration::from_secs(2);
    cfg.mail.from = format!("{brand} <noreply@tokengate.test>").parse().unwrap();
    cfg.mail.brand = brand.into();
    cfg.mail.compliance_retry_interval = Duration::from_millis(300);
}

/// Whether this run keeps test servers' records on PostgreSQL (`TOKENGATE_TEST_STORE=postgres`).
pub fn on_postgres() -> bool {
    std::env::var("TOKENGATE_TEST_STORE").as_deref() == Ok("postgres")
}

/// The `[store]` lines that put a configuration file on a fresh database when the run is on
/// PostgreSQL (nothing otherwise): for tests that run the real binary.
pub fn store_backend_toml() -> String {
    if on_postgres() {
        format!(
            "backend = \"postgres\"\nurl = \"{}\"\n",
            postgres::cluster().database()
        )
    } else {
        String::new()
    }
}

/// The configuration every test starts from: loopback, ephemeral port, the given upstream.
/// With `TOKENGATE_TEST_STORE=postgres`, every test server keeps its records in a fresh
/// database of the test cluster instead of sled (the whole suite then runs on PostgreSQL).
pub fn test_config(dir: &Path, upstream: &str) -> Config {
    let mut cfg = Config::defaults();
    if on_postgres() {
        // Blocks briefly (psql), on whatever runtime the test has.
        let url = postgres::cluster().database();
        cfg.store.backend =
            tokengate::config::Backend::Postgres(Box::new(tokengate::config::PostgresConfig {
                connect: url.parse().expect("a PostgreSQL URL"),
                tls: tokengate::config::PgTls::Disable,
                ca: None,
                pool_size: 8,
                timeout: Duration::from_secs(2),
                max_staleness: Duration::from_secs(5),
            }));
    }
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.store.path = dir.to_owned();
    cfg.store.cache_capacity_bytes = 8 << 20;
    cfg.upstream.url = upstream.parse().unwrap();
    cfg.upstream.response_timeout = Duration::from_secs(2);
    cfg.upstream.connect_timeout = Duration::from_secs(2);
    // Tests that count failures do not wait out the delay; `failures_are_answered_after_the_failure_delay`
    // pins it down.
    cfg.limits.failure_delay = Duration::ZERO;
    // The console's second factor is off for the tests that sign admins in with a password;
    // tests/it/mfa.rs turns it on (the shipped default, "admins", is pinned there too).
    cfg.console.mfa = tokengate::mfa::Policy::Off;
    cfg.oauth_clients = vec![OAuthClient::new(CLIENT_ID, CLIENT_SECRET)];
    cfg
}

impl TestServer {
    pub async fn start(upstream: &str) -> Self {
        Self::start_with(upstream, |_| {}).await
    }

    pub async fn start_with(upstream: &str, tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut cfg = test_config(dir.path(), upstream);
        tweak(&mut cfg);
        Self::boot(dir, cfg).await
    }

    async fn boot(dir: Arc<tempfile::TempDir>, cfg: Config) -> Self {
        // Shutdown waits for the store to close, but a blocking task of the previous server
        // (a history write) may still finish on another thread: give the lock a moment.
        let mut tries = 0;
        let server = loop {
            match Server::start(cfg.clone()).await {
                Err(tokengate::server::ServerError::Store(
                    tokengate::store::StoreError::Locked { .. },
                )) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => break other.expect("server starts"),
            }
        };
        Self {
            addr: server.addr,
            origin: server.origin.clone(),
            ca: server.cert.cert.clone(),
            server: Some(server),
            dir,
            cfg,
        }
    }

    /// Stops the server and starts a new one on the same data directory (a restart).
    pub async fn restart(mut self) -> Self {
        self.server.take().unwrap().shutdown().await;
        let (dir, cfg) = (self.dir.clone(), self.cfg.clone());
        Self::boot(dir, cfg).await
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    pub fn app(&self) -> &tokengate::server::App {
        &self.server.as_ref().unwrap().app
    }

    /// Creates a user and returns the security token. This is fixture setup, made in-process
    /// on purpose: the user is the precondition of a test, not the state change under test
    /// (user creation through the CLI and the admin API has tests of its own, in cli.rs and
    /// tokens.rs), and a CLI process per user would multiply the run time of the suite, which
    /// creates hundreds of users; every change a test exercises goes through the CLI or the API.
    pub async fn add_user(&self, username: &str) -> String {
        self.add_user_with(username, PASSWORD, false).await
    }

    pub async fn add_user_with(&self, username: &str, password: &str, admin: bool) -> String {
        let users = self.app().users.clone();
        let (username, password) = (username.to_owned(), password.to_owned());
        tokio::task::spawn_blocking(move || {
            users
                .add(NewUser {
                    email: format!("{}@example.com", username.replace('@', ".")),
                    username,
                    full_name: "Test User".into(),
                    admin,
                    password,
                    ..Default::default()
                })
                .expect("user created")
                .1
        })
        .await
        .unwrap()
    }

    /// Waits (at most 10 s) until every login recorded so far is in the store's history.
    pub async fn history_written(&self) {
        let history = &self.app().history;
        history.drain(Duration::from_secs(10)).await;
        assert_eq!(history.pending(), 0, "the history writer fell behind");
    }

    /// This server's metrics exposition, as its `/metrics` endpoint serves it.
    pub fn metrics(&self) -> String {
        let app = self.app();
        app.metrics.render(&app.gauges())
    }

    pub fn client(&self) -> HttpsClient {
        HttpsClient::new(&self.ca, self.addr, false)
    }

    pub fn h2_client(&self) -> HttpsClient {
        HttpsClient::new(&self.ca, self.addr, true)
    }

    /// Logs in over SOAP and returns the session id.
    pub async fn soap_login(&self, username: &str, secret: &str) -> String {
        let r = self
            .client()
            .post(
                "/services/Soap/u/59.0",
                "text/xml",
                soap_login_body(username, secret),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        extract(&r.text(), "sessionId").expect("a sessionId")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            // Best effort when a test panics before stopping: abort the listener task.
            drop(s);
        }
    }
}

pub fn soap_login_body(username: &str, secret: &str) -> String {
    format!(
        r#"<se:Envelope xmlns:se="http://schemas.xmlsoap.org/soap/envelope/"><se:Header/><se:Body><login xmlns="urn:partner.soap.sforce.com"><username>{}</username><password>{}</password></login></se:Body></se:Envelope>"#,
        xml_escape(username),
        xml_escape(secret)
    )
}

pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The text of the first `<tag>…</tag>`.
pub fn extract(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].to_owned())
}

pub fn basic(username: &str, secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}"))
    )
}

/// A response read in full.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub version: http::Version,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn client_tls(ca: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

pub type ClientBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

pub fn empty_body() -> ClientBody {
    Full::new(Bytes::new()).boxed()
}

/// An HTTPS client trusting only the server's certificate (not the environment's CA bundle).
pub struct HttpsClient {
    client: Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        ClientBody,
    >,
    base: String,
}

impl HttpsClient {
    pub fn new(ca: &Path, addr: SocketAddr, h2: bool) -> Self {
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_tls(ca))
            .https_only();
        let connector = if h2 {
            b.enable_http2().build()
        } else {
            b.enable_http1().build()
        };
        let mut builder = Client::builder(TokioExecutor::new());
        if h2 {
            builder.http2_only(true);
        }
        Self {
            client: builder.build(connector),
            base: format!("https://127.0.0.1:{}", addr.port()),
        }
    }

    pub async fn send(&self, req: Request<ClientBody>) -> Reply {
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("the server answers within 30 s")
            .expect("request succeeds");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            version: parts.version,
            body,
        }
    }

    /// Sends and returns the response with its body unread, to read it frame by frame.
    pub async fn send_streaming(
        &self,
        req: Request<ClientBody>,
    ) -> Result<Response<Incoming>, String> {
        self.client.request(req).await.map_err(|e| e.to_string())
    }

    /// Like `send`, but a connection failure is an `Err` instead of a panic.
    pub async fn send_result(&self, req: Request<ClientBody>) -> Result<Reply, String> {
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            version: parts.version,
            body,
        })
    }

    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
    }

    pub async fn call(&self, builder: http::request::Builder, body: impl Into<Bytes>) -> Reply {
        self.send(builder.body(Full::new(body.into()).boxed()).unwrap())
            .await
    }

    /// A call to tokengate's JSON API, `/tokengate/v1/{path}`, with `authorization` and, when
    /// given, a JSON body.
    pub async fn api(
        &self,
        authorization: &str,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Reply {
        let mut b = self
            .request(method, &format!("/tokengate/v1/{path}"))
            .header("authorization", authorization);
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        self.call(b, body.map(|v| v.to_string()).unwrap_or_default())
            .await
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut b = self.request(Method::GET, path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.call(b, Bytes::new()).await
    }

    /// A GET carrying a session id as a Bearer token, as REST clients send it.
    pub async fn get_with_session(&self, path: &str, sid: &str) -> Reply {
        self.get(path, &[("authorization", &format!("Bearer {sid}"))])
            .await
    }

    pub async fn post(&self, path: &str, content_type: &str, body: impl Into<Bytes>) -> Reply {
        let b = self
            .request(Method::POST, path)
            .header("content-type", content_type);
        self.call(b, body).await
    }

    pub async fn oauth_login(&self, username: &str, secret: &str) -> Reply {
        let form = serde_urlencoded::to_string([
            ("grant_type", "password"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("username", username),
            ("password", secret),
        ])
        .unwrap();
        self.post(
            "/services/oauth2/token",
            "application/x-www-form-urlencoded",
            form,
        )
        .await
    }
}

/// An upstream that answers every request with the same raw bytes, whatever they are: for
/// responses no HTTP library would send (both Content-Length and Transfer-Encoding, an
/// unrequested 101, a body that stalls).
pub struct RawUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start(answer: &'static [u8]) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    // Read the request head, answer, then hold the connection open.
                    let mut buf = vec![0u8; 65536];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tcp.write_all(answer).await;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                });
            }
        });
        Self { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address that refuses connections for as long as the returned socket lives: bound, never
/// listening (unlike a port bound and released, nobody else can take it meanwhile).
pub fn refusing_address() -> (tokio::net::TcpSocket, SocketAddr) {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = s.local_addr().unwrap();
    (s, addr)
}

/// Whether any file under `dir` (the store, generated files, a backup) contains `needle`:
/// tokens must never be stored, in any file, in any form they were sent in.
pub fn files_hold(dir: &Path, needle: &str) -> Option<PathBuf> {
    fn walk(dir: &Path, needle: &[u8]) -> Option<PathBuf> {
        for entry in std::fs::read_dir(dir).ok()? {
            let path = entry.ok()?.path();
            if path.is_dir() {
                if let Some(found) = walk(&path, needle) {
                    return Some(found);
                }
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                return Some(path);
            }
        }
        None
    }
    walk(dir, needle.as_bytes())
}

/// A secret in every form it could take in a log: as is, base64 (standard and URL-safe, also
/// inside a Basic header), and percent-encoded.
pub fn spellings(s: &str) -> Vec<String> {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD;
    let u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let percent: String = s
        .bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect();
    let mut out = vec![s.to_owned(), b.encode(s), u.encode(s), percent];
    // A base64 string starts at another offset inside a longer one (`user:secret`); its
    // middle is the same for any prefix of the same length modulo 3.
    for pad in ["", "a", "aa"] {
        let enc = b.encode(format!("{pad}{s}"));
        let skip = pad.len() * 4 / 3 + 4;
        if enc.len() > skip + 8 {
            out.push(enc[skip..enc.len() - 4].to_owned());
        }
    }
    out.retain(|v| v.len() >= 8);
    out
}

/// Asserts `user`'s Basic credential `secret` is answered from the verification cache: a call
/// that verifies (or finds) it, then a second one that the cache-hit counter shows was a hit.
/// Run before a credential change, it makes a refusal after the change prove that the change
/// killed a cached entry, not that no entry was ever made.
pub async fn assert_basic_cached(ts: &TestServer, user: &str, secret: &str) {
    let call = async || {
        ts.client()
            .get(
                "/services/data/v59.0/",
                &[("authorization", &basic(user, secret))],
            )
            .await
            .status
    };
    assert_eq!(call().await, StatusCode::OK, "{user}: the credential works");
    let before = ts.app().auth.cache_hits();
    assert_eq!(call().await, StatusCode::OK, "{user}: the credential works");
    assert!(
        ts.app().auth.cache_hits() > before,
        "{user}: the credential is answered from the cache"
    );
}

/// A configuration file for the CLI that points at a test server's data directory, so the
/// CLI's admin commands go through that server's admin socket.
pub fn cli_config(ts: &TestServer) -> std::path::PathBuf {
    let path = ts.dir.path().join("cli.toml");
    std::fs::write(
        &path,
        format!(
            "[store]\npath = \"{}\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n",
            ts.cfg.store.path.display()
        ),
    )
    .unwrap();
    path
}

/// Runs a CLI admin command against the test server (its admin socket).
pub fn cli(ts: &TestServer, args: &[&str], stdin: Option<&str>) -> String {
    let o = tokio::task::block_in_place(|| process::run(&cli_config(ts), args, stdin, &[]));
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts the data directory holds none of `secrets`, in any spelling, once the store has
/// written everything out: tokens and passwords are stored only as keyed hashes. On PostgreSQL
/// (where the data directory holds next to nothing) the server's whole database is dumped and
/// searched too, in every spelling and as `bytea` hex.
pub fn assert_not_stored(ts: &TestServer, secrets: &[&str]) {
    ts.app().store.flush().expect("flush the store");
    let dump = database_dump(&ts.cfg);
    if on_postgres() {
        let dump = dump.as_deref().expect("a PostgreSQL test server");
        assert!(
            dump.contains("tg_users"),
            "the dump holds the store's tables"
        );
    }
    for s in secrets {
        for form in spellings(s) {
            assert!(
                files_hold(ts.dir.path(), &form).is_none(),
                "the data directory holds a secret: {:?}",
                files_hold(ts.dir.path(), &form)
            );
        }
        if let Some(dump) = &dump {
            let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
            for form in spellings(s).into_iter().chain([hex]) {
                assert!(!dump.contains(&form), "the database holds a secret");
            }
        }
    }
}

/// The text of `pg_dump` of the server's database when its store is on PostgreSQL.
fn database_dump(cfg: &Config) -> Option<String> {
    let tokengate::config::Backend::Postgres(pg) = &cfg.store.backend else {
        return None;
    };
    let host = match pg.connect.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        other => panic!("a TCP host for the test database: {other:?}"),
    };
    let url = format!(
        "postgres://{}@{host}:{}/{}?sslmode=prefer",
        pg.connect.get_user().unwrap_or("postgres"),
        pg.connect.get_ports().first().copied().unwrap_or(5432),
        pg.connect.get_dbname().expect("a database name"),
    );
    // pg_dump blocks; it talks to the database, never to the server, so on a current-thread
    // runtime it may block it for its moment.
    let dump = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
            tokio::task::block_in_place(|| postgres::cluster().dump(&url))
        }
        _ => postgres::cluster().dump(&url),
    };
    Some(dump.unwrap_or_else(|e| panic!("pg_dump of the test database: {e}")))
}

/// A plain-HTTP GET (the metrics listener); the whole answer, head and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Waits (bounded) until `check` holds: the synchronisation tests use instead of sleeping.
pub async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One sample of a Prometheus exposition, by its full name with labels.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no metric {name}")) as u64
}

/// A raw TLS connection for requests no well-behaved client library would send.
pub async fn raw_tls(
    ca: &Path,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    raw_tls_alpn(ca, addr, &[b"http/1.1"]).await
}

/// A raw TLS connection offering the given ALPN protocols (none: no ALPN at all).
pub async fn raw_tls_alpn(
    ca: &Path,
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut cfg = client_tls(ca);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

/// One HTTP/1.1 keep-alive connection to a test server and nothing else: every request goes
/// over it, where a client library's pool may open another. For what a server remembers per
/// connection.
pub struct OneConnection(hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>);

impl OneConnection {
    pub async fn open(ts: &TestServer) -> Self {
        let tls = raw_tls(&ts.ca, ts.addr).await;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self(send)
    }

    /// A GET with these headers, answered on this connection (it panics if the server closed
    /// it), with the answer's body read.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> StatusCode {
        let mut req = Request::get(path).header("host", "127.0.0.1");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(http_body_util::Empty::new()).unwrap();
        let call = async {
            self.0.ready().await.expect("the connection is still open");
            let resp = self.0.send_request(req).await.expect("answered");
            let status = resp.status();
            resp.into_body().collect().await.expect("a whole body");
            status
        };
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("answered in time")
    }
}

/// Sends raw bytes over TLS and reads until the server closes or `timeout` passes.
pub async fn raw_exchange(
    ca: &Path,
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = raw_tls(ca, addr).await;
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
