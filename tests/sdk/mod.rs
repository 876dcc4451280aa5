//! The one way the tests build an `aws-sdk-kms` client: rustls on ring (the provider the
//! server uses, so no aws-lc build), no retries (each call is one request and errors surface
//! at once), and a bound on every call so that no test hangs on a stuck server.
#![allow(dead_code)]

use std::time::Duration;

use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region, SharedHttpClient};
use aws_sdk_kms::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};

/// A call (request and answer) taking longer than this fails.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(20);

/// A client for `endpoint` in `region` signing as `id`/`secret`. Over HTTPS it trusts `ca`
/// (PEM) alone when given, else the system's roots.
pub fn client(endpoint: &str, region: &str, id: &str, secret: &str, ca: Option<Vec<u8>>) -> Client {
    let conf = aws_sdk_kms::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(id, secret, None, None, "p11kms-tests"))
        .http_client(http_client(ca))
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        )
        .build();
    Client::from_conf(conf)
}

fn http_client(ca: Option<Vec<u8>>) -> SharedHttpClient {
    let builder = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring));
    match ca {
        None => builder.build_https(),
        Some(pem) => builder
            .tls_context(
                TlsContext::builder()
                    .with_trust_store(TrustStore::empty().with_pem_certificate(pem))
                    .build()
                    .expect("tls context"),
            )
            .build_https(),
    }
}

/// The AWS error code of a call that must fail (a call that succeeds, or an error without a
/// code, fails the test).
pub fn code<T: std::fmt::Debug, E: aws_sdk_kms::error::ProvideErrorMetadata + std::fmt::Debug>(
    r: Result<T, aws_sdk_kms::error::SdkError<E, aws_sdk_kms::config::http::HttpResponse>>,
) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => match aws_sdk_kms::error::ProvideErrorMetadata::code(&e) {
            Some(c) => c.to_owned(),
            None => panic!("no error code in {e:?}"),
        },
    }
}
