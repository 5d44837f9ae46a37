//! `tokengate demo`: a zero set-up demo (self-signed certificate, built-in echo upstream, a
//! demo admin user and OAuth client) that prints how to try every login path.

use std::io::Write as _;

use tokengate::admin::{self, NewUser};
use tokengate::config::{Config, OAuthClient};
use tokengate::server::{self, Server};

use super::serve::Signals;
use super::{CliError, DemoArgs, LogFormat, init_logging};

const DEMO_USER: &str = "demo@example.com";
const DEMO_CLIENT_ID: &str = "tokengate-demo";

/// Starts the demo server, creates the demo user (or gives an existing one a new password and
/// token), prints how to log in, and runs until Ctrl-C.
pub(super) async fn demo(args: DemoArgs) -> Result<(), CliError> {
    let mut cfg = Config::defaults();
    let _log = init_logging("info", LogFormat::Text);
    let upstream = tokengate::demo::start_echo_upstream().await?;
    cfg.upstream.url = format!("http://{upstream}").parse()?;
    cfg.store.path = std::env::current_dir()?.join(&args.data_dir);
    cfg.server.listen = args
        .listen
        .parse()
        .map_err(|_| format!("--listen: '{}' is not an address", args.listen))?;
    // The demo is reached by either name of the local machine.
    cfg.server.allowed_hosts = vec!["localhost".into(), "127.0.0.1".into()];
    // Token emails become .eml files in the demo's data directory.
    cfg.mail.transport = tokengate::config::MailTransport::File {
        dir: cfg.store.path.join("mail"),
    };
    cfg.mail.brand = "tokengate demo".into();
    let client_secret = hex_secret()?;
    // Listened for before the demo prints how to reach it (see `serve`).
    let mut signals = Signals::install();
    cfg.oauth_clients = vec![OAuthClient::new(DEMO_CLIENT_ID, client_secret.clone())];
    let server = match Server::start(cfg.clone()).await {
        Ok(s) => s,
        Err(server::ServerError::Bind { .. }) => {
            // The default port is taken: any free port will do for a demo.
            cfg.server.listen = "127.0.0.1:0".parse()?;
            Server::start(cfg).await?
        }
        Err(e) => return Err(e.into()),
    };
    let users = server.app.users.clone();
    let password = server.app.secrets.generate_password()?;
    let token = tokio::task::spawn_blocking({
        let password = password.clone();
        move || -> Result<String, CliError> {
            match users.add(NewUser {
                username: DEMO_USER.into(),
                email: DEMO_USER.into(),
                full_name: "Demo User".into(),
                admin: true,
                password: password.clone(),
                ..Default::default()
            }) {
                Ok((_, token)) => Ok(token),
                Err(admin::AdminError::Store(tokengate::store::StoreError::UserExists(_))) => {
                    Ok(users.bootstrap_credentials(DEMO_USER, &password)?)
                }
                Err(e) => Err(e.into()),
            }
        }
    })
    .await??;
    print_demo(&server, &upstream, &password, &token, &client_secret);
    signals.stopped().await;
    server.shutdown().await;
    Ok(())
}

/// A random 128-bit secret in hex, for the demo OAuth client.
fn hex_secret() -> Result<String, CliError> {
    let bytes = ring::rand::generate::<[u8; 16]>(&ring::rand::SystemRandom::new())
        .map_err(|_| "the OS random generator failed")?
        .expose();
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The demo's credentials and ready-to-paste curl commands for each login path.
fn print_demo(
    server: &Server,
    upstream: &std::net::SocketAddr,
    password: &str,
    token: &str,
    client_secret: &str,
) {
    let url = &server.origin;
    let ca = server.cert.cert.display();
    let mail = server.app.cfg.store.path.join("mail").display().to_string();
    let secret = format!("{password}{token}");
    println!(
        r#"
tokengate demo is running at {url}
  upstream (built-in echo): http://{upstream}
  certificate:              {ca}

  username:        {DEMO_USER}
  password:        {password}
  security token:  {token}
  OAuth client:    client_id={DEMO_CLIENT_ID}  client_secret={client_secret}

Log in with SOAP login() (password and token appended, as Salesforce clients send it):

  curl --cacert {ca} {url}/services/Soap/u/59.0 \
    -H 'Content-Type: text/xml; charset=UTF-8' -H 'SOAPAction: login' \
    -d '<se:Envelope xmlns:se="http://schemas.xmlsoap.org/soap/envelope/"><se:Body><login xmlns="urn:partner.soap.sforce.com"><username>{DEMO_USER}</username><password>{secret}</password></login></se:Body></se:Envelope>'

Log in with the OAuth 2.0 password grant and keep the session:

  SID=$(curl -s --cacert {ca} {url}/services/oauth2/token \
    -d grant_type=password -d client_id={DEMO_CLIENT_ID} -d client_secret={client_secret} \
    --data-urlencode username={DEMO_USER} --data-urlencode password={secret} \
    | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p'); echo "$SID"

Call the upstream through tokengate with the session:

  curl --cacert {ca} -H "Authorization: Bearer $SID" '{url}/services/data/v59.0/query?q=SELECT+Id+FROM+Account'

Or with HTTP Basic on every call (legacy tools):

  curl --cacert {ca} -u '{DEMO_USER}:{secret}' {url}/services/data/v59.0/sobjects

Reset the token (self-service, with the password alone); the new one arrives by email,
written as a file into {mail}:

  curl --cacert {ca} -X POST -u '{DEMO_USER}:{password}' {url}/tokengate/v1/token/reset

Press Ctrl-C to stop."#
    );
    let _ = std::io::stdout().flush();
}
