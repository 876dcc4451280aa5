//! The AWS KMS wire API: `p11kms serve`.
//!
//! An HTTP/1.1 server (hyper on tokio, optional TLS via rustls) that speaks the AWS JSON 1.1
//! protocol of KMS (`POST /`, `X-Amz-Target: TrentService.<Operation>`), authenticates with
//! SigV4 ([`sigv4`]), authorizes ([`auth`]) and calls [`Kms`]. Only this module knows HTTP.
//!
//! - [`serve`]: the CLI entry point (opens the token, binds, prints, serves until a signal).
//! - [`run`]: the server over an open [`Kms`] and a bound listener (tests, embedding).

pub mod audit;
pub mod auth;
mod body;
mod completion;
mod conns;
pub(crate) mod error;
pub mod facts;
mod floor;
mod healthcheck;
mod metrics;
pub(crate) mod operations;
mod request;
mod response;
mod server;
pub(crate) mod sigv4;
mod validate;

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{Config, ConfigSource};
use crate::error::{KmsError, Result};
use crate::kms::Kms;
use auth::{Authorizer, Credentials, PolicyAuthorizer};

pub use floor::serve_http_floor;
pub use healthcheck::healthcheck;
pub use response::AMZ_JSON;
pub use sigv4::Regions;

/// Everything the server needs besides the [`Kms`] and the listener.
pub struct ServerSettings {
    /// Regions SigV4 scopes may name (each is served with its own keys and aliases).
    pub regions: sigv4::Regions,
    /// CI mode (`serve --ci`): the account every request acts in, as its root; any access
    /// key id is accepted and no secret is verified. `None`: the configured credentials.
    pub ci_account: Option<String>,
    /// Accepted access keys (secrets already read).
    pub credentials: Credentials,
    /// Decides which actions and keys each principal may use.
    pub authorizer: Arc<dyn Authorizer>,
    /// Larger request bodies are answered 413.
    pub max_body_bytes: usize,
    /// Open connections at most (the longest-idle one makes room for a new one).
    pub max_connections: usize,
    /// Open connections from one IP address at most.
    pub max_connections_per_source: Option<usize>,
    /// Serve TLS with this configuration; `None` is plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Re-read other processes' metadata before every request (`metadata_refresh_ms = 0`).
    pub refresh_every_request: bool,
    /// Concurrent token operations; `None` = the token's session pool size.
    pub blocking_limit: Option<usize>,
    /// Where `GET /metrics` is served.
    pub metrics: MetricsEndpoint,
    /// The audit trail requests are recorded in (`None`: not recorded).
    pub audit: Option<Arc<crate::audit::AuditLog>>,
}

/// Where `GET /metrics` (Prometheus text format, no authentication) is served.
#[derive(Debug)]
pub enum MetricsEndpoint {
    /// Not at all (`metrics = false`): nothing is counted either.
    Off,
    /// On the KMS listener, beside `/healthz` (the default).
    Main,
    /// On a listener of its own (`metrics_listen`), plain HTTP, `/metrics` and `/healthz`
    /// only; the KMS listener answers 404 there.
    Own(std::net::TcpListener),
}

impl ServerSettings {
    /// Settings from the configuration: reads every credential secret and the TLS files now,
    /// so mistakes fail start-up rather than requests.
    pub fn from_config(config: &Config) -> Result<ServerSettings> {
        let s = &config.server;
        let tls = match (&s.tls_cert, &s.tls_key) {
            (Some(cert), Some(key)) => Some(tls_config(cert, key)?),
            (None, None) => None,
            _ => {
                return Err(KmsError::config(
                    "server.tls_cert and server.tls_key must be set together",
                ))
            }
        };
        for c in &s.credentials {
            for a in c.allow_actions.iter().flatten() {
                if !known_action(a) {
                    tracing::warn!(
                        access_key_id = %c.access_key_id,
                        action = %a,
                        "a credential allows an action that matches no operation p11kms serves"
                    );
                }
            }
        }
        Ok(ServerSettings {
            regions: match &config.regions {
                crate::config::RegionSet::Any => sigv4::Regions::Any,
                crate::config::RegionSet::Only(l) => sigv4::Regions::List(l.clone()),
            },
            ci_account: None,
            credentials: Credentials::from_config(&s.credentials)?,
            authorizer: Arc::new(PolicyAuthorizer),
            max_body_bytes: s.max_body_bytes,
            max_connections: s.max_connections,
            max_connections_per_source: s.max_connections_per_source,
            tls,
            refresh_every_request: config.metadata_refresh.is_zero(),
            blocking_limit: None,
            // A listener of its own is bound by `serve`, with the main one.
            metrics: if s.metrics {
                MetricsEndpoint::Main
            } else {
                MetricsEndpoint::Off
            },
            // Opened by `serve` once the token is.
            audit: None,
        })
    }
}

fn known_action(a: &str) -> bool {
    a == "*"
        || a.eq_ignore_ascii_case("kms:*")
        || ["kms:ReEncryptFrom", "kms:ReEncryptTo"]
            .into_iter()
            .chain(
                operations::Op::ALL
                    .iter()
                    .filter(|op| **op != operations::Op::ReEncrypt)
                    .map(|op| op.action()),
            )
            .any(|k| k.eq_ignore_ascii_case(a))
}

/// Serves the KMS API on `listener` until `shutdown` completes, then stops accepting and
/// drains in-flight requests (at most 30 s).
pub async fn run<F>(
    kms: Arc<Kms>,
    settings: ServerSettings,
    listener: TcpListener,
    shutdown: F,
) -> Result<()>
where
    F: Future<Output = ()> + Send,
{
    server::run(kms, settings, listener, shutdown).await
}

/// `p11kms serve`: opens the token, starts metadata upkeep, binds `listen_override` or
/// `config.server.listen`, prints the paste-able environment and `listening on <addr>`, and
/// serves until SIGTERM/SIGINT.
pub fn serve(
    config: &Config,
    listen_override: Option<&str>,
    ci: bool,
    seed: Option<&std::path::Path>,
) -> Result<()> {
    // Before any secret is in memory: no core dumps, not dumpable.
    let hardened = crate::process::harden();
    // Secrets and TLS files first: cheap failures before the token is opened.
    let mut settings = ServerSettings::from_config(config)?;
    if ci {
        settings.ci_account = Some(ci_account(config)?);
        settings.regions = sigv4::Regions::Any;
    }
    if settings.credentials.is_empty() && !ci {
        tracing::warn!(
            "no credentials are configured; every request will be refused (run `p11kms init` \
             for the embedded dev credential)"
        );
    }
    let kms = Arc::new(crate::app::open(config)?);
    // Every secret is read: nothing may find them in the environment any more (children,
    // /proc/<pid>/environ, a later bug that logs the environment).
    for name in config.secret_env_names() {
        crate::process::wipe_env(name);
    }
    // Every connection takes two descriptors (its socket and the duplicate admission closes
    // it by): shed connections before the descriptor limit.
    let fd_room = usize::try_from(hardened.open_files.saturating_sub(64) / 2).unwrap_or(usize::MAX);
    settings.max_connections = settings.max_connections.min(fd_room.max(16));
    if hardened.not_dumpable && hardened.no_core_files {
        tracing::info!(
            max_connections = settings.max_connections,
            "{}",
            hardened.describe()
        );
    } else {
        tracing::warn!(
            max_connections = settings.max_connections,
            "{}: memory of this process may reach a core file or a debugger",
            hardened.describe()
        );
    }
    let json_logs = config.server.log_format == crate::config::LogFormat::Json;
    log_custody(&kms, json_logs);
    if let Some(file) = seed {
        let account = settings
            .ci_account
            .clone()
            .unwrap_or_else(|| config.account.clone());
        let r = crate::seed::seed_file(&kms, file, &account, &config.region)?;
        notice(
            json_logs,
            &format!(
                "seeded from {}: {} keys created, {} existed, {} aliases created",
                file.display(),
                r.created.len(),
                r.existing.len(),
                r.aliases.len()
            ),
        );
    }
    // With refresh on every request, upkeep still has deletions and orphans to sweep.
    let upkeep = if config.metadata_refresh.is_zero() {
        Duration::from_secs(1)
    } else {
        config.metadata_refresh
    };
    Kms::spawn_maintenance(&kms, upkeep);
    let audit = crate::audit::open(&config.audit, kms.token())?.map(Arc::new);
    if let Some(a) = &audit {
        notice(
            json_logs,
            &format!(
                "audit trail in {} (stream {})",
                a.dir().display(),
                a.stream()
            ),
        );
    }
    settings.audit = audit.clone();
    let runtime = server_runtime()?;
    let listen = listen_override.unwrap_or(&config.server.listen);
    if let (true, Some(at)) = (config.server.metrics, &config.server.metrics_listen) {
        let l = std::net::TcpListener::bind(at.as_str())
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| {
                KmsError::config(format!("cannot listen on {at} (metrics_listen): {e}"))
            })?;
        if let Ok(a) = l.local_addr() {
            notice(json_logs, &format!("metrics on http://{a}/metrics"));
        }
        settings.metrics = MetricsEndpoint::Own(l);
    }
    runtime.block_on(async {
        let (listener, addr) = bind(listen).await?;
        if ci && !addr.ip().is_loopback() {
            return Err(KmsError::config(format!(
                "--ci accepts any credentials, so it serves only on a loopback address; \
                 {addr} is not one (use --listen 127.0.0.1:4599)"
            )));
        }
        print_banner(config, &settings, addr);
        run(kms, settings, listener, shutdown_signal()).await
    })?;
    // Blocking tasks still finishing after the drain timeout are not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    // The closing checkpoint, once no request can add a record.
    if let Some(a) = audit {
        a.close();
    }
    Ok(())
}

/// The account of CI mode: P11KMS_ACCOUNT, else `account` of the configuration.
pub fn ci_account(config: &Config) -> Result<String> {
    match std::env::var("P11KMS_ACCOUNT") {
        Ok(a) if a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()) => Ok(a),
        Ok(a) => Err(KmsError::config(format!(
            "P11KMS_ACCOUNT must be 12 digits, not {a:?}"
        ))),
        Err(_) => Ok(config.account.clone()),
    }
}

/// The async runtime `serve` (and the benchmark's floor server) runs on.
fn server_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("p11kms-http")
        .build()
        .map_err(|e| KmsError::io(format!("cannot start the async runtime: {e}")))
}

/// Binds `listen`; returns the listener and the address it got.
async fn bind(listen: &str) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| KmsError::config(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| KmsError::io(format!("cannot read the bound address: {e}")))?;
    Ok((listener, addr))
}

/// A start-up line for the operator: `p11kms: <line>` on stderr, or, when the log is JSON
/// (where a plain line would break the log shipper), an `info` event of `p11kms::startup`.
fn notice(json_logs: bool, line: &str) {
    if json_logs {
        tracing::info!(target: "p11kms::startup", "{line}");
    } else {
        let _ = writeln!(std::io::stderr(), "p11kms: {line}");
    }
}

/// States on stderr, one line per operation, which PKCS#11 path it takes and where its
/// plaintext exists (docs/key-custody.md).
fn log_custody(kms: &Kms, json_logs: bool) {
    let custody = kms.custody();
    notice(
        json_logs,
        &format!(
            "custody: token {:?}: data keys without plaintext sealed on the {} path{}",
            custody.token_label,
            custody.data_keys_without_plaintext.as_str(),
            if custody.in_token_sealing_required {
                " (required)"
            } else {
                ""
            }
        ),
    );
    for line in custody.lines() {
        notice(json_logs, &format!("custody: {line}"));
    }
}

/// The lines a user pastes into a shell, then `listening on`, flushed before serving.
fn print_banner(config: &Config, settings: &ServerSettings, addr: SocketAddr) {
    let mut out = std::io::stdout().lock();
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    // A wildcard bind is reachable on loopback; that is the address to paste.
    let mut shown = addr;
    if shown.ip().is_unspecified() {
        shown.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    if let Some(account) = &settings.ci_account {
        tracing::warn!(
            "*** CI MODE *** any access key id and secret are accepted and no secret is \
             verified; every request acts as arn:aws:iam::{account}:root in any region. For \
             tests only: this server listens on loopback ({addr}) and must not be exposed."
        );
        let _ = writeln!(out, "export AWS_ENDPOINT_URL={scheme}://{shown}");
        let _ = writeln!(out, "export AWS_REGION={}", config.region);
        let _ = writeln!(out, "export AWS_DEFAULT_REGION={}", config.region);
        let _ = writeln!(out, "export AWS_ACCESS_KEY_ID=test");
        let _ = writeln!(out, "export AWS_SECRET_ACCESS_KEY=test");
        let _ = writeln!(out, "listening on {addr}");
        let _ = out.flush();
        return;
    }
    let _ = writeln!(out, "export AWS_ENDPOINT_URL={scheme}://{shown}");
    let _ = writeln!(out, "export AWS_REGION={}", config.region);
    // botocore (boto3, the AWS CLI) reads only AWS_DEFAULT_REGION.
    let _ = writeln!(out, "export AWS_DEFAULT_REGION={}", config.region);
    // The one place a secret is printed: the embedded token's own generated dev credential,
    // for a local endpoint. Credentials from a config file are never shown.
    if matches!(config.source, ConfigSource::Embedded(_)) {
        if let Some((id, secret)) = settings.credentials.only() {
            let _ = writeln!(out, "export AWS_ACCESS_KEY_ID={}", shell_quote(id));
            let _ = writeln!(out, "export AWS_SECRET_ACCESS_KEY={}", shell_quote(secret));
        }
    }
    let _ = writeln!(out, "listening on {addr}");
    let _ = out.flush();
}

/// Single-quotes a value unless it is plainly safe for a shell.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-+/=.:".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let int = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = term => {},
        () = int => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

/// A rustls server configuration (ring provider, TLS 1.2/1.3, HTTP/1.1 ALPN) from PEM files.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let read = |p: &Path| {
        std::fs::read(p)
            .map_err(|e| KmsError::config(format!("cannot read TLS file {}: {e}", p.display())))
    };
    let cert_pem = read(cert)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            KmsError::config(format!(
                "TLS certificate {} is not valid PEM: {e}",
                cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(KmsError::config(format!(
            "TLS certificate {} holds no CERTIFICATE block",
            cert.display()
        )));
    }
    let key_pem = zeroize::Zeroizing::new(read(key)?);
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        KmsError::config(format!(
            "TLS key {} holds no usable private key: {e}",
            key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| KmsError::config(format!("TLS set-up failed: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| {
            KmsError::config(format!(
                "TLS certificate {} and key {} do not work together: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("AKIA0123"), "AKIA0123");
        assert_eq!(shell_quote("a/b+c="), "a/b+c=");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("a b"), "'a b'");
    }

    #[test]
    fn actions_known() {
        for a in [
            "*",
            "kms:*",
            "kms:Encrypt",
            "kms:reencryptfrom",
            "kms:ListAliases",
            "kms:CreateGrant",
            "kms:RetireGrant",
            "kms:ReplicateKey",
            "kms:UpdatePrimaryRegion",
        ] {
            assert!(known_action(a), "{a}");
        }
        for a in ["kms:ConnectCustomKeyStore", "kms:ReEncrypt", "kms:Encrpyt"] {
            assert!(!known_action(a), "{a}");
        }
    }
}
