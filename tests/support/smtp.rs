//! A real SMTP server on loopback (RFC 5321, plaintext, no extensions) that records what it
//! accepts (and, apart, each message whose data it refused), and can be told to refuse a recipient, refuse all data, hang, or hold its reply to
//! a message it received until the test releases it (to kill the sender at that instant).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One accepted message: envelope and raw data (dot-unstuffed).
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

impl Mail {
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next()?;
        let prefix = format!("{}:", name.to_ascii_lowercase());
        head.split("\r\n")
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_owned())
    }

    /// The data with quoted-printable soft breaks and `=3D` undone, for text assertions.
    pub fn text(&self) -> String {
        self.data.replace("=\r\n", "").replace("=3D", "=")
    }

    /// Every MIME part's content, decoded whatever its transfer encoding (quoted-printable,
    /// base64, 7bit), text and HTML alike: what a mail client would show.
    pub fn decoded_parts(&self) -> Vec<String> {
        let message = mail_parser::MessageParser::default()
            .parse(self.data.as_bytes())
            .expect("a MIME message");
        message
            .parts
            .iter()
            .filter_map(|p| match &p.body {
                mail_parser::PartType::Text(t) | mail_parser::PartType::Html(t) => {
                    Some(t.to_string())
                }
                mail_parser::PartType::Binary(b) | mail_parser::PartType::InlineBinary(b) => {
                    Some(String::from_utf8_lossy(b).into_owned())
                }
                _ => None,
            })
            .collect()
    }

    /// Whether `needle` appears in the message: raw, or in any decoded part.
    pub fn carries(&self, needle: &str) -> bool {
        self.data.contains(needle) || self.decoded_parts().iter().any(|p| p.contains(needle))
    }

    /// The token shown in the plain-text part ("Your new security token:" then the token).
    pub fn token(&self) -> String {
        let text = self.text();
        let at = text.find("Your new security token:").expect("a token line")
            + "Your new security token:".len();
        text[at..]
            .split_whitespace()
            .next()
            .expect("a token after the line")
            .to_owned()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Recipients answered with 550.
    pub refuse_rcpt: Vec<String>,
    /// Answer DATA with 554 after receiving it (the message is kept in [`SmtpSink::refused`]).
    pub refuse_data: bool,
    /// Accept the connection and never greet (or stop answering).
    pub hang: bool,
    /// Close connections on their next command (with `stop`: the server is gone).
    pub down: bool,
    /// Record each message in full, report [`SinkEvent::Received`], then hold the reply to it
    /// until [`SmtpSink::release`].
    pub hold_data_reply: bool,
}

/// What the sink reports as it goes, to a test that waits for an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkEvent {
    /// A message arrived in full (and was recorded); its reply is being held.
    Received,
    /// The 250 reply to a message was written.
    Replied,
}

pub struct SmtpSink {
    pub addr: SocketAddr,
    mails: Arc<Mutex<Vec<Mail>>>,
    refused: Arc<Mutex<Vec<Mail>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    events: tokio::sync::broadcast::Sender<SinkEvent>,
    release: Arc<tokio::sync::Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

/// What a session shares with the sink.
#[derive(Clone)]
struct Shared {
    mails: Arc<Mutex<Vec<Mail>>>,
    refused: Arc<Mutex<Vec<Mail>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    events: tokio::sync::broadcast::Sender<SinkEvent>,
    release: Arc<tokio::sync::Semaphore>,
}

impl SmtpSink {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Shared {
            mails: Arc::default(),
            refused: Arc::default(),
            behaviour: Arc::default(),
            events: tokio::sync::broadcast::channel(64).0,
            release: Arc::new(tokio::sync::Semaphore::new(0)),
        };
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(60), session(tcp, s)).await;
                });
            }
        });
        Self {
            addr,
            mails: shared.mails,
            refused: shared.refused,
            behaviour: shared.behaviour,
            events: shared.events,
            release: shared.release,
            task,
        }
    }

    /// Events from now on.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<SinkEvent> {
        self.events.subscribe()
    }

    /// Lets one held reply go.
    pub fn release(&self) {
        self.release.add_permits(1);
    }

    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    /// Messages received in full and answered 554 ([`Behaviour::refuse_data`]): what the
    /// sender made and was told was never accepted (its token must never work or be stored).
    pub fn refused(&self) -> Vec<Mail> {
        self.refused.lock().unwrap().clone()
    }

    /// Mails whose envelope includes `rcpt`.
    pub fn to(&self, rcpt: &str) -> Vec<Mail> {
        self.mails()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t == rcpt))
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

    /// Takes the server down: no new connections, pooled ones are closed.
    pub fn stop(&self) {
        self.behaviour.lock().unwrap().down = true;
        self.task.abort();
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn path_arg(line: &str) -> String {
    let start = line.find('<').map_or(0, |i| i + 1);
    let end = line[start..].find('>').map_or(line.len(), |i| start + i);
    line[start..end].to_owned()
}

async fn session(tcp: tokio::net::TcpStream, shared: Shared) {
    let Shared {
        mails,
        refused,
        behaviour,
        events,
        release,
    } = shared;
    // Read per command, not per connection: lettre pools connections across messages.
    let current = || behaviour.lock().unwrap().clone();
    if current().hang {
        tokio::time::sleep(Duration::from_secs(60)).await;
        return;
    }
    let (r, mut w) = tcp.into_split();
    let mut lines = BufReader::new(r);
    let mut line = String::new();
    let _ = w.write_all(b"220 sink.test ESMTP ready\r\n").await;
    let (mut from, mut to) = (String::new(), Vec::new());
    loop {
        line.clear();
        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let b = current();
        if b.down {
            return;
        }
        if b.hang {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        let cmd = line.trim_end().to_owned();
        let verb = cmd
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-sink.test\r\n250 8BITMIME\r\n",
            "HELO" => b"250 sink.test\r\n",
            "MAIL" => {
                from = path_arg(&cmd);
                to.clear();
                b"250 OK\r\n"
            }
            "RCPT" => {
                let rcpt = path_arg(&cmd);
                if b.refuse_rcpt.contains(&rcpt) {
                    b"550 mailbox unavailable\r\n"
                } else {
                    to.push(rcpt);
                    b"250 OK\r\n"
                }
            }
            "DATA" => {
                let _ = w.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await;
                let mut data = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    // RFC 5321 §4.5.2: remove one leading dot.
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                if b.refuse_data {
                    refused.lock().unwrap().push(Mail {
                        from: from.clone(),
                        to: to.clone(),
                        data,
                    });
                    b"554 transaction failed\r\n"
                } else {
                    mails.lock().unwrap().push(Mail {
                        from: from.clone(),
                        to: to.clone(),
                        data,
                    });
                    if b.hold_data_reply {
                        let _ = events.send(SinkEvent::Received);
                        let Ok(permit) = release.acquire().await else {
                            return;
                        };
                        permit.forget();
                    }
                    if w.write_all(b"250 OK queued\r\n").await.is_err() {
                        return;
                    }
                    let _ = events.send(SinkEvent::Replied);
                    continue;
                }
            }
            "RSET" | "NOOP" => b"250 OK\r\n",
            "QUIT" => {
                let _ = w.write_all(b"221 bye\r\n").await;
                return;
            }
            _ => b"502 command not implemented\r\n",
        };
        if w.write_all(reply).await.is_err() {
            return;
        }
    }
}
