//! In-process API servers for the wire tests: the fixture's `Kms` behind `p11kms::api::run` on
//! 127.0.0.1:0, each on a runtime of its own that lives as long as the test binary.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use p11kms::api::auth::{Credentials, PolicyAuthorizer};
use p11kms::api::{self, ServerSettings};
use p11kms::config::{Credential, Secret, SecretSource};

use crate::common;

pub const REGION: &str = "us-east-2";
/// A second principal, limited to a few actions on the key behind [`ALLOWED_ALIAS`].
pub const RESTRICTED_ID: &str = "AKIARESTRICTED000001";
pub const RESTRICTED_SECRET: &str = "restricted/secret+for-tests";
pub const RESTRICTED_ARN: &str = "arn:aws:iam::111122223333:user/restricted";
pub const ALLOWED_ALIAS: &str = "alias/api-restricted-allowed";
pub const RESTRICTED_ACTIONS: [&str; 4] = [
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:DescribeKey",
    "kms:GenerateDataKey",
];

pub struct Server {
    pub addr: SocketAddr,
    pub endpoint: String,
    pub max_body_bytes: usize,
}

/// The plain-HTTP server of this test binary.
pub fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| start(None))
}

/// The same service over TLS (certificate for 127.0.0.1/localhost, see [`ca_pem`]).
pub fn tls_server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tls_dir();
        let cfg =
            api::tls_config(&dir.join("server.pem"), &dir.join("server.key")).expect("tls config");
        start(Some(cfg))
    })
}

pub fn tls_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/api_support/tls")
}

/// The CA that signed the test server certificate.
pub fn ca_pem() -> Vec<u8> {
    std::fs::read(tls_dir().join("ca.pem")).expect("ca.pem")
}

/// Settings as `serve` builds them from the fixture's config, plus the restricted principal.
pub fn settings(tls: Option<Arc<rustls::ServerConfig>>) -> ServerSettings {
    let fx = common::fixture();
    let mut creds = fx.config.server.credentials.clone();
    assert_eq!(creds.len(), 1, "the fixture has the dev credential");
    creds.push(Credential {
        access_key_id: RESTRICTED_ID.into(),
        secret: SecretSource::Inline(Secret::new(RESTRICTED_SECRET.into())),
        principal: RESTRICTED_ARN.into(),
        allow_actions: Some(RESTRICTED_ACTIONS.iter().map(|s| s.to_string()).collect()),
        allow_keys: Some(vec![ALLOWED_ALIAS.into()]),
        identity_policy: None,
    });
    ServerSettings {
        regions: p11kms::api::Regions::List(vec![fx.config.region.clone()]),
        ci_account: None,
        credentials: Credentials::from_config(&creds).expect("credentials"),
        authorizer: Arc::new(PolicyAuthorizer),
        max_body_bytes: fx.config.server.max_body_bytes,
        max_connections: fx.config.server.max_connections,
        max_connections_per_source: None,
        tls,
        refresh_every_request: false,
        blocking_limit: None,
        metrics: p11kms::api::MetricsEndpoint::Main,
        audit: None,
    }
}

fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Server {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let settings = settings(tls);
    let max_body_bytes = settings.max_body_bytes;
    let (addr, _handle) = spawn(settings, std::future::pending());
    Server {
        addr,
        endpoint: format!("{scheme}://{addr}"),
        max_body_bytes,
    }
}

/// Starts `api::run` on its own thread and runtime; returns the bound address and a handle
/// that yields run's result once `shutdown` has completed and the server has drained.
pub fn spawn<F>(
    settings: ServerSettings,
    shutdown: F,
) -> (SocketAddr, std::thread::JoinHandle<p11kms::Result<()>>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let kms = Arc::clone(&common::fixture().kms);
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("addr");
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
            api::run(kms, settings, listener, shutdown).await
        })
    });
    (addr, handle)
}
