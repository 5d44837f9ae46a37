//! A load run: the scenarios, the plan that turns one into jobs over connections, the progress
//! line, and the workers (one per connection) that send the traffic and record what came back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;

use super::LoadError;
use super::report::{Recorder, Summary};
use super::target::{Conn, Target, basic, login_session, request, short, soap_login_body};
use super::users::{LOADTEST_DOMAIN, LoadUser, random_alnum};

/// What a run sends (`--scenario`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Cold SOAP logins (the argon2 path).
    LoginSoap,
    /// Cold OAuth password-grant logins (the argon2 path).
    LoginOauth,
    /// HTTP Basic on every request, one user's credentials per connection (the
    /// verified-credential cache path).
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

/// How a run is driven (the `loadtest run` options).
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

/// The kind of traffic one connection sends: a scenario is one job, or two side by side.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Job {
    LoginSoap,
    LoginOauth,
    Basic,
    Session,
    Flood,
    Plain,
}

/// Runs a scenario to its end and returns one summary per traffic kind (two for `mixed`). With
/// several targets (replicas on one database), connection `i` goes to target `i mod n`.
pub async fn run(
    targets: &[Target],
    opts: RunOptions,
) -> Result<Vec<(String, Summary)>, LoadError> {
    if targets.is_empty() {
        return Err(LoadError::Invalid("no --target".into()));
    }
    if targets.len() > 64 {
        return Err(LoadError::Invalid("at most 64 targets".into()));
    }
    if targets.iter().any(|t| t.tls.is_none()) && opts.scenario != Scenario::Plain {
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
    let seconds = opts.duration.as_secs().max(1) as usize + 1;
    let ctx = Arc::new(RunContext {
        targets: targets.to_vec(),
        users: opts.users,
        path: opts.path,
        oauth: opts.oauth_client,
        duration: opts.duration,
        interval: opts
            .rate
            .map(|r| Duration::from_secs_f64(total_conns as f64 / r.max(0.001))),
        barrier: tokio::sync::Barrier::new(total_conns),
        stride: total_conns,
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });

    let progress = opts.progress.then(|| {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            while !ctx.stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let n = ctx.done.load(Ordering::Relaxed);
                eprint!(
                    "\r[{:>4}s] {n} requests, {}/s now, {} errors   ",
                    started.elapsed().as_secs(),
                    n - last,
                    ctx.failed.load(Ordering::Relaxed)
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
            let worker = Worker {
                ctx: ctx.clone(),
                job,
                index: worker_index,
            };
            worker_index += 1;
            tasks.push(tokio::spawn(async move {
                let mut rec = Recorder::new(seconds);
                worker.run(&mut rec).await;
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
    ctx.stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    Ok(out)
}

/// What every worker of a run shares.
struct RunContext {
    /// Where the connections go, spread round-robin.
    targets: Vec<Target>,
    users: Vec<LoadUser>,
    /// The proxied call of the basic, session and plain jobs.
    path: String,
    /// OAuth client id and secret (login-oauth).
    oauth: Option<(String, String)>,
    duration: Duration,
    /// Time between one connection's requests in a paced run (`--rate`); None: unpaced.
    interval: Option<Duration>,
    /// Every connection starts the clock together, after its unmeasured warm-up.
    barrier: tokio::sync::Barrier,
    /// The number of connections in the run: each login connection steps through the users
    /// by this much (a Basic or session connection keeps its one user).
    stride: usize,
    /// Answers received and requests that failed, for the progress line.
    done: AtomicU64,
    failed: AtomicU64,
    /// Set when the run is over (ends the progress line; workers also stop at their deadline).
    stop: AtomicBool,
}

/// One connection of a run.
struct Worker {
    ctx: Arc<RunContext>,
    job: Job,
    /// The connection's number across the whole run: where it starts in the users.
    index: usize,
}

impl Worker {
    /// This connection's target.
    fn target(&self) -> &Target {
        &self.ctx.targets[self.index % self.ctx.targets.len()]
    }

    /// Warms up, waits for every other connection, then sends this job's requests until the
    /// run's duration is over, recording each answer's latency and status (or the error) in
    /// `rec`.
    async fn run(self, rec: &mut Recorder) {
        let ctx = &*self.ctx;
        let (t, users) = (self.target(), ctx.users.as_slice());
        let (mut conn, mut session) = self.warm_up(rec).await;
        let mut n = self.index;
        ctx.barrier.wait().await;
        let started = Instant::now();
        let deadline = started + ctx.duration;
        // Paced runs measure from the intended send time, so a slow server cannot hide its delay
        // by slowing the sender (coordinated omission).
        let mut next = Instant::now();
        while Instant::now() < deadline && !ctx.stop.load(Ordering::Relaxed) {
            if ctx.interval.is_some() && next > Instant::now() {
                tokio::time::sleep_until(next.into()).await;
            }
            let intended = if ctx.interval.is_some() {
                next
            } else {
                Instant::now()
            };
            if let Some(iv) = ctx.interval {
                next += iv;
            }
            if conn.is_none() {
                match Conn::open(t).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        rec.error(&short(&e.to_string()));
                        ctx.failed.fetch_add(1, Ordering::Relaxed);
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
            // Each login connection walks its own slice of the users (index, index +
            // connections, ...), so no two connections send the same credentials at once: the
            // server would answer such identical logins with one shared verification and the run
            // would not be cold. A Basic connection keeps its one user's credentials, as an
            // integration's connection does (and a session connection its session).
            if self.job != Job::Basic {
                n = n.wrapping_add(ctx.stride);
            }
            if self.job == Job::Session && session.is_none() {
                match login_session(t, c, user.expect("checked")).await {
                    Ok(sid) => session = Some(sid),
                    Err(e) => {
                        rec.error(&e);
                        ctx.failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            let req = self.next_request(user, session.as_deref(), n);
            match c.send(req).await {
                Ok((status, _)) => {
                    let second = started.elapsed().as_secs() as usize;
                    rec.record(second, intended.elapsed(), status.as_u16());
                    ctx.done.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    rec.error(&short(&e));
                    ctx.failed.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                }
            }
        }
    }

    /// The unmeasured work before the clock starts; the connection (and session) it leaves open.
    async fn warm_up(&self, rec: &mut Recorder) -> (Option<Conn>, Option<String>) {
        let ctx = &*self.ctx;
        let (t, users) = (self.target(), ctx.users.as_slice());
        let mut conn: Option<Conn> = None;
        let mut session: Option<String> = None;
        // Session workers log in before the clock starts, so the run measures the proxied calls
        // and a flood running beside them (`mixed`) cannot keep them from starting.
        if self.job == Job::Session {
            let u = &users[self.index % users.len()];
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
                ctx.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Basic workers likewise send their credentials once before the clock starts: the first
        // call is a cold login (argon2, measured by `login-soap`), and the run measures the calls
        // that follow, as `session` measures the calls after its login.
        if self.job == Job::Basic && !users.is_empty() {
            let u = &users[self.index % users.len()];
            if conn.is_none() {
                conn = Conn::open(t).await.ok();
            }
            if let Some(c) = conn.as_mut() {
                let auth = basic(&u.username, &u.secret);
                let req = request(
                    t,
                    Method::GET,
                    &ctx.path,
                    &[("authorization", &auth)],
                    Bytes::new(),
                );
                if c.send(req).await.is_err() {
                    conn = None;
                }
            }
        }
        (conn, session)
    }

    /// This job's next request. `n` is the worker's position in the users, which also varies
    /// the flood's usernames.
    fn next_request(
        &self,
        user: Option<&LoadUser>,
        session: Option<&str>,
        n: usize,
    ) -> Request<Full<Bytes>> {
        let ctx = &*self.ctx;
        let (t, path) = (self.target(), ctx.path.as_str());
        match self.job {
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
                let (id, secret) = ctx.oauth.as_ref().expect("checked");
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
                let sid = session.unwrap_or_default();
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
        }
    }
}
