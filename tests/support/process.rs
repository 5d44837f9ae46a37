//! Running the real `tokengate` binary: one-shot commands, and `serve` as a child process whose
//! standard error is collected (for log assertions) and whose address is read from its banner.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

/// How long any command a test runs may take before it is killed, with its children.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `cmd` with `stdin` as its input to its end, or kills it and everything it started
/// (its own process group) after `timeout`; then the output, and whether it was killed.
/// Blocking: on a runtime, call it from `block_in_place` or `spawn_blocking`.
pub fn run_bounded(mut cmd: Command, stdin: Option<&str>, timeout: Duration) -> (Output, bool) {
    use std::io::Read as _;
    use std::os::unix::process::CommandExt as _;
    let what = format!("{cmd:?}");
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e} (is it installed and on PATH?)"));
    if let Some(input) = stdin {
        let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    }
    drop(child.stdin.take());
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let mut killed = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            // The whole group: a browser or npm leaves children behind otherwise.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            killed = true;
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    (output, killed)
}

/// Runs one tokengate command with `stdin` as its input (killed after [`COMMAND_TIMEOUT`]).
pub fn run(config: &Path, args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let (out, killed) = run_bounded(cmd, stdin, COMMAND_TIMEOUT);
    assert!(
        !killed,
        "tokengate {args:?} did not finish in {COMMAND_TIMEOUT:?}"
    );
    out
}

/// `user add NAME --show-token` with the password on stdin; returns the token.
pub fn add_user(config: &Path, name: &str, password: &str, admin: bool) -> String {
    let email = format!("{}@example.com", name.replace('@', "."));
    let mut args = vec![
        "user",
        "add",
        name,
        "--email",
        &email,
        "--password-stdin",
        "--show-token",
    ];
    if admin {
        args.push("--admin");
    }
    let o = run(config, &args, Some(&format!("{password}\n")), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

pub struct Serve {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
    /// Reads the child's standard error until it closes (the child exited).
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Serve {
    pub fn start(config: &Path, extra_args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(extra_args)
            .arg("--config")
            .arg(config)
            .arg("serve");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log: Arc<Mutex<String>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("tokengate: listening on ") {
                    let _ = tx.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("the server did not start: {}", log.lock().unwrap()))
            .parse()
            .unwrap();
        Self {
            child,
            addr,
            log,
            reader: Some(reader),
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits (bounded) for the process to exit; its status.
    pub fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(started.elapsed() < within, "the server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and a clean exit; the whole log (its reader has read to the end).
    pub fn stop(mut self) -> String {
        self.signal("TERM");
        let status = self.wait(Duration::from_secs(30));
        assert!(status.success(), "exit status {status}: {}", self.log());
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the log reader ends with the process");
        }
        self.log()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}
