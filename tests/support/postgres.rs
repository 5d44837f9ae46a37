//! A real, private PostgreSQL for the tests of the PostgreSQL store: one cluster per test
//! process, made by `initdb` in a temporary directory on first use ([`cluster`]), listening on
//! 127.0.0.1 only, on a free port, with trust authentication for the `postgres` user. Each test
//! takes a fresh, empty database of its own ([`Cluster::database`]). Outage tests stop a server
//! and start it again ([`Cluster::stop`], [`Cluster::start`]) on a cluster of their own
//! ([`Cluster::private`]): the shared one is never stopped, as tests run side by side.
//!
//! The programs (`initdb`, `pg_ctl`, `postgres`, `psql`, `pg_dump`) are found on PATH, else in the newest
//! `/usr/lib/postgresql/*/bin/`; when there are none, the tests fail and say to install Debian's
//! `postgresql` — they never skip. `initdb` refuses to run as root: as root, the server and its
//! tools run as the `postgres` user, through `runuser`.
//!
//! A static is never dropped, so the cleanup is a watchdog's: a small shell started with the
//! cluster, reading its standard input, a pipe whose other end only the test process holds. When
//! the test process exits — however it exits, killed too — the pipe closes, and the watchdog
//! stops the server (fast shutdown) and removes the temporary directory.
//!
//! Everything here blocks: from an async test, call it in `block_in_place` or `spawn_blocking`.

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::process::run_bounded;

/// The programs the cluster is run with, all from one directory.
const PROGRAMS: [&str; 5] = ["initdb", "pg_ctl", "postgres", "psql", "pg_dump"];

/// How long the server may take to start, to stop, or to answer once started.
const SERVER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long any other command (`initdb`, `psql`, `pg_dump`, `id`, `chown`) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How many free ports to try when another process takes the port between its pick and the
/// server's bind.
const PORT_ATTEMPTS: u32 = 5;

/// The watchdog (`sh -c`; `$1` the temporary directory, the rest the `pg_ctl` command). Its
/// standard input is a pipe only the test process writes to: end of file means the test process
/// is gone, and nothing else closes it.
const WATCHDOG: &str = r#"
trap '' HUP INT
dir=$1
shift
while read -r _; do :; done
if [ -f "$dir/data/postmaster.pid" ]; then
  "$@" stop -D "$dir/data" -m fast -w -t 30 || "$@" stop -D "$dir/data" -m immediate -w -t 30
fi
rm -rf "$dir"
"#;

/// A private PostgreSQL server and its temporary directory.
pub struct Cluster {
    /// The directory of [`PROGRAMS`].
    bin: PathBuf,
    /// The temporary directory: the data directory (`data`), the server's log and its socket.
    dir: PathBuf,
    port: u16,
    /// Whether the server and its tools run as the `postgres` user (the tests run as root).
    as_postgres: bool,
    /// One stop or start at a time.
    server: Mutex<()>,
    /// The number in the next database's name.
    next_database: AtomicU32,
    /// Whether the server takes TCP connections only with TLS ([`Cluster::require_tls`]).
    tls: std::sync::atomic::AtomicBool,
    /// The watchdog; its standard input closes with the test process (or when the cluster
    /// fails to boot and is dropped), and it cleans up.
    _watchdog: Child,
}

/// One private PostgreSQL cluster per test process, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::boot)
}

impl Cluster {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A fresh, empty database (unique name) and its URL:
    /// `postgres://postgres@127.0.0.1:PORT/NAME?sslmode=disable`.
    pub fn database(&self) -> String {
        let name = format!(
            "tokengate_test_{}",
            self.next_database.fetch_add(1, Ordering::Relaxed)
        );
        // From template0, which nobody may connect to: concurrent creations never find their
        // template in use, and the new database is empty whatever was done to template1.
        self.psql(
            &self.url("postgres"),
            &format!("CREATE DATABASE {name} TEMPLATE template0"),
        )
        .unwrap_or_else(|e| panic!("cannot create the database {name}: {e}"));
        self.url(&name)
    }

    /// Stops the server (fast shutdown) and waits until it is down — for outage tests;
    /// [`Cluster::start`] brings it back on the same port and data.
    pub fn stop(&self) {
        let _one = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.running() {
            return;
        }
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "-t"])
            .arg(SERVER_TIMEOUT.as_secs().to_string());
        let (out, killed) = run_bounded(cmd, None, SERVER_TIMEOUT + Duration::from_secs(10));
        assert!(
            !killed && out.status.success(),
            "pg_ctl stop {}: {}\nserver log:\n{}",
            if killed { "timed out" } else { "failed" },
            both(&out),
            self.log_since(0)
        );
    }

    /// Starts the server again after [`Cluster::stop`], on the same port and data, and waits
    /// until it answers.
    pub fn start(&self) {
        let _one = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        if self.running() {
            return;
        }
        if let Err(e) = self.try_start() {
            panic!("the PostgreSQL server did not start again: {e}");
        }
    }

    /// Freezes the server (SIGSTOP to the postmaster, then to every process it started): its
    /// connections stay open and nothing answers, as with a hung or cut-off database — for
    /// outage tests on a [`Cluster::private`]; [`Cluster::resume`] lets it go on.
    pub fn pause(&self) {
        let postmaster = self.postmaster();
        let children = children_of(postmaster);
        signal(&[postmaster], "STOP");
        signal(&children, "STOP");
    }

    /// Lets a [`Cluster::pause`]d server go on.
    pub fn resume(&self) {
        let postmaster = self.postmaster();
        signal(&children_of(postmaster), "CONT");
        signal(&[postmaster], "CONT");
    }

    /// The postmaster's process id (the first line of `postmaster.pid`).
    fn postmaster(&self) -> u32 {
        let pidfile = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .expect("a running server has a postmaster.pid");
        pidfile
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("a process id on postmaster.pid's first line")
    }

    /// Runs `sql` (one or more statements) with `psql -c` in the database at `url`: its output,
    /// unaligned and without headers (`"1"` for `select 1`), or psql's error.
    pub fn psql(&self, url: &str, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(self.bin.join("psql"));
        scrub_env(&mut cmd);
        cmd.env("PGCONNECT_TIMEOUT", "10").args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ]);
        let (out, killed) = run_bounded(cmd, None, COMMAND_TIMEOUT);
        if killed {
            Err(format!("psql timed out after {COMMAND_TIMEOUT:?}"))
        } else if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
        } else {
            Err(both(&out))
        }
    }

    /// The whole database at `url` as `pg_dump` writes it (schema and every row, as SQL text,
    /// `bytea` in hex): what a search for stored secrets scans on PostgreSQL.
    pub fn dump(&self, url: &str) -> Result<String, String> {
        let mut cmd = Command::new(self.bin.join("pg_dump"));
        scrub_env(&mut cmd);
        cmd.env("PGCONNECT_TIMEOUT", "10")
            .args(["--no-owner", "--no-privileges", "-d", url]);
        let (out, killed) = run_bounded(cmd, None, COMMAND_TIMEOUT);
        if killed {
            Err(format!("pg_dump timed out after {COMMAND_TIMEOUT:?}"))
        } else if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(both(&out))
        }
    }

    /// Makes the cluster: the programs, a temporary directory under its watchdog, `initdb`,
    /// and the server started on a free port.
    /// Serves TLS with the given certificate and key (PEM), and refuses TCP connections without
    /// it (every `host` line of `pg_hba.conf` becomes `hostssl`); restarts the server.
    pub fn require_tls(&self, cert_pem: &str, key_pem: &str) {
        let data = self.data();
        std::fs::write(data.join("server.crt"), cert_pem).expect("server.crt");
        std::fs::write(data.join("server.key"), key_pem).expect("server.key");
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("server.key is private");
        if self.as_postgres {
            let mut chown = Command::new("chown");
            chown
                .arg("postgres:")
                .arg(data.join("server.crt"))
                .arg(data.join("server.key"));
            output(chown);
        }
        let hba = data.join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        let rules: String = rules
            .lines()
            .map(|l| match l.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        std::fs::write(&hba, rules).expect("pg_hba.conf written");
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| {
                f.write_all(
                    b"\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
                )
            })
            .expect("TLS settings appended to postgresql.conf");
        self.tls.store(true, Ordering::Relaxed);
        self.stop();
        self.start();
    }

    /// A cluster of the caller's own (for an outage test), stopped and removed when dropped.
    pub fn private() -> Self {
        Self::boot()
    }

    fn boot() -> Self {
        let bin = bin_dir();
        let mut id = Command::new("id");
        id.arg("-u");
        let as_postgres = output(id) == "0";
        if as_postgres {
            let mut id = Command::new("id");
            id.args(["-u", "postgres"]);
            let (out, _) = run_bounded(id, None, COMMAND_TIMEOUT);
            assert!(
                out.status.success(),
                "the tests run as root, so PostgreSQL must run as the `postgres` user, and there \
                 is none: install Debian's `postgresql` package (apt-get install postgresql), \
                 which creates it"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("tokengate-pg-")
            .tempdir()
            .expect("a temporary directory for PostgreSQL")
            .keep();
        let mut pg_ctl: Vec<OsString> = Vec::new();
        if as_postgres {
            pg_ctl.extend(["runuser", "-u", "postgres", "--"].map(OsString::from));
        }
        pg_ctl.push(bin.join("pg_ctl").into());
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("tokengate-pg-watchdog")
            .arg(&dir)
            .args(&pg_ctl)
            .current_dir("/")
            // Its own process group: a Ctrl-C for the tests does not stop the cleanup.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the PostgreSQL watchdog (sh): {e}"));
        let mut cluster = Self {
            bin,
            dir,
            port: 0,
            as_postgres,
            server: Mutex::new(()),
            next_database: AtomicU32::new(0),
            tls: std::sync::atomic::AtomicBool::new(false),
            _watchdog: watchdog,
        };
        cluster.init();
        for attempt in 1..=PORT_ATTEMPTS {
            cluster.port = free_port();
            let from = cluster.log_len();
            match cluster.try_start() {
                Ok(()) => return cluster,
                Err(_)
                    if attempt < PORT_ATTEMPTS
                        && cluster.log_since(from).contains("could not bind") => {}
                Err(e) => panic!("the PostgreSQL server did not start: {e}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `initdb`, and the settings of a private server for tests.
    fn init(&self) {
        if self.as_postgres {
            let mut chown = Command::new("chown");
            chown.arg("postgres:").arg(&self.dir);
            output(chown);
        }
        let mut initdb = self.server_command("initdb");
        initdb
            .arg("-D")
            .arg(self.data())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            // The C locale whatever the environment's: UTF8 fits it, and sorting is bytewise.
            .arg("--no-locale")
            // Nothing to make durable for a test.
            .arg("--no-sync");
        output(initdb);
        let quoted = |p: &Path| {
            format!(
                "'{}'",
                p.display()
                    .to_string()
                    .replace('\\', "\\\\")
                    .replace('\'', "''")
            )
        };
        let settings = format!(
            "\n# tokengate's tests: a private server on loopback, fast rather than durable.\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = {}\n\
             fsync = off\n\
             max_connections = 200\n\
             shared_buffers = 16MB\n",
            quoted(&self.dir)
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.data().join("postgresql.conf"))
            .and_then(|mut f| f.write_all(settings.as_bytes()))
            .expect("the test settings appended to postgresql.conf");
    }

    /// `pg_ctl start` on [`Cluster::port`], then waits until a query over TCP is answered.
    fn try_start(&self) -> Result<(), String> {
        let from = self.log_len();
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log())
            .arg("-p")
            .arg(self.bin.join("postgres"))
            .args(["-o", &format!("-p {}", self.port), "-w", "-t"])
            .arg(SERVER_TIMEOUT.as_secs().to_string());
        let (out, killed) = run_bounded(cmd, None, SERVER_TIMEOUT + Duration::from_secs(10));
        if killed || !out.status.success() {
            return Err(format!(
                "pg_ctl start {}: {}\nserver log:\n{}",
                if killed { "timed out" } else { "failed" },
                both(&out),
                self.log_since(from)
            ));
        }
        let deadline = Instant::now() + SERVER_TIMEOUT;
        loop {
            match self.psql(&self.url("postgres"), "select 1") {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "no answer on port {} within {SERVER_TIMEOUT:?}: {e}\nserver log:\n{}",
                        self.port,
                        self.log_since(from)
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Whether the server runs (`pg_ctl status`: 0 running, 3 not).
    fn running(&self) -> bool {
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("status").arg("-D").arg(self.data());
        let (out, killed) = run_bounded(cmd, None, COMMAND_TIMEOUT);
        match out.status.code() {
            Some(0) if !killed => true,
            Some(3) if !killed => false,
            _ => panic!("pg_ctl status: {}", both(&out)),
        }
    }

    /// A program of [`PROGRAMS`] that runs as the server's user, in the temporary directory.
    fn server_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        };
        // Not the tests' working directory, which the `postgres` user may not be able to read.
        cmd.current_dir(&self.dir);
        scrub_env(&mut cmd);
        cmd
    }

    fn url(&self, database: &str) -> String {
        let mode = if self.tls.load(Ordering::Relaxed) {
            "require"
        } else {
            "disable"
        };
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode={mode}",
            self.port
        )
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn log_len(&self) -> usize {
        std::fs::read(self.log()).map_or(0, |l| l.len())
    }

    /// The server's log from byte `from` on.
    fn log_since(&self, from: usize) -> String {
        let log = std::fs::read(self.log()).unwrap_or_default();
        String::from_utf8_lossy(log.get(from..).unwrap_or_default()).into_owned()
    }
}

/// The directory of [`PROGRAMS`]: where `initdb`, `pg_ctl` or `postgres` on PATH are (as found,
/// or with links resolved: Debian keeps them in `/usr/lib/postgresql/N/bin/`), else the newest
/// `/usr/lib/postgresql/*/bin/`.
fn bin_dir() -> PathBuf {
    let path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let mut candidates = Vec::new();
    for program in ["initdb", "pg_ctl", "postgres"] {
        if let Some(found) = path.iter().map(|d| d.join(program)).find(|p| executable(p)) {
            candidates.extend(found.parent().map(Path::to_owned));
            if let Ok(real) = found.canonicalize() {
                candidates.extend(real.parent().map(Path::to_owned));
            }
        }
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: Vec<u32> = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|n| n.parse().ok())
                .collect::<Option<_>>()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| executable(&bin.join("initdb")))
        .max();
    candidates.extend(newest.map(|(_, bin)| bin));
    candidates
        .into_iter()
        .find(|dir| PROGRAMS.iter().all(|p| executable(&dir.join(p))))
        .unwrap_or_else(|| {
            panic!(
                "the PostgreSQL tests need a real PostgreSQL server ({}) on PATH or in \
                 /usr/lib/postgresql/*/bin/, and there is none: install Debian's `postgresql` \
                 package (apt-get install postgresql)",
                PROGRAMS.join(", ")
            )
        })
}

fn executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// Without the environment's `PG*` variables (`PGHOST`, `PGOPTIONS`, `PGDATA`, …), which would
/// point the programs elsewhere or change their sessions.
fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

/// Runs `cmd` (bounded) and returns its standard output, trimmed; panics with its output when
/// it fails.
fn output(cmd: Command) -> String {
    let what = format!("{cmd:?}");
    let (out, killed) = run_bounded(cmd, None, COMMAND_TIMEOUT);
    assert!(!killed, "{what} did not finish in {COMMAND_TIMEOUT:?}");
    assert!(out.status.success(), "{what} failed: {}", both(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A command's standard output and error, for a message.
fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The processes whose parent is `parent` (from /proc: the field after the command name in
/// `/proc/PID/stat` is the state, then the parent's id).
fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            children.push(pid);
        }
    }
    children
}

fn signal(pids: &[u32], sig: &str) {
    if pids.is_empty() {
        return;
    }
    let mut kill = Command::new("kill");
    kill.arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string));
    // A backend may have exited since it was listed: kill then fails for it alone.
    let _ = run_bounded(kill, None, COMMAND_TIMEOUT);
}
