//! The synthetic load-test users: the credentials file `setup` writes (owner-only) and `run`
//! reads, and their creation and removal through the target's admin API.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::LoadError;
use super::target::{Conn, Target, login_session, request};

/// Load-test users as `setup` writes them (the file is readable by its owner only).
#[derive(Serialize, Deserialize)]
pub struct UsersFile {
    pub target: String,
    pub users: Vec<LoadUser>,
}

/// One synthetic user's credentials.
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

/// Random letters and digits (synthetic passwords and tokens, and the flood's wrong ones).
pub(super) fn random_alnum(len: usize) -> String {
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

/// The domain of every synthetic username (`.invalid`: no mail can ever reach it).
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
        let path = user_path(name);
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

/// The admin API's path of one user: the name percent-encoded as one path segment (RFC 3986
/// §3.3), the way the console's links and the API's own clients build it.
fn user_path(name: &str) -> String {
    format!(
        "/tokengate/v1/admin/users/{}",
        crate::wire::encode_component(name)
    )
}

/// Default users file.
pub fn default_users_file() -> PathBuf {
    PathBuf::from("tokengate-loadtest-users.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_path_keeps_the_whole_name_in_one_segment() {
        assert_eq!(
            user_path("lt.1@example.com"),
            "/tokengate/v1/admin/users/lt.1%40example.com"
        );
        assert_eq!(
            user_path("a/b+c d?e#f%"),
            "/tokengate/v1/admin/users/a%2Fb%2Bc%20d%3Fe%23f%25"
        );
    }
}
