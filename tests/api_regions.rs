//! Several regions on one server, and CI mode, through the real `aws-sdk-kms` client: the
//! SigV4 scope's region selects the region; keys, aliases and listings are per region and
//! their ARNs carry it; in CI mode any access key and secret are accepted, in any region.

mod api_support;
mod common;
mod sdk;

use sdk::code;

use std::sync::{Arc, OnceLock};

use aws_sdk_kms::Client;
use common::dev_credentials;
use p11kms::api::auth::{Credentials, PolicyAuthorizer};
use p11kms::api::{Regions, ServerSettings};

const HOME: &str = "us-east-2";
const OTHER: &str = "eu-west-1";

fn start(regions: Regions, ci_account: Option<&str>) -> String {
    let fx = common::fixture();
    let settings = ServerSettings {
        regions,
        ci_account: ci_account.map(str::to_owned),
        credentials: Credentials::from_config(&fx.config.server.credentials).expect("creds"),
        authorizer: Arc::new(PolicyAuthorizer),
        // The rest as every in-process test server has them.
        ..api_support::settings(None)
    };
    let (addr, _) = api_support::spawn(settings, std::future::pending());
    format!("http://{addr}")
}

fn two_regions() -> &'static str {
    static S: OnceLock<String> = OnceLock::new();
    S.get_or_init(|| start(Regions::List(vec![HOME.into(), OTHER.into()]), None))
}

fn ci() -> &'static str {
    static S: OnceLock<String> = OnceLock::new();
    S.get_or_init(|| start(Regions::Any, Some("000000000000")))
}

fn client_in(endpoint: &str, region: &str) -> Client {
    let (id, secret) = dev_credentials();
    sdk::client(endpoint, region, &id, &secret, None)
}

async fn all_keys(c: &Client) -> Vec<String> {
    let mut ids = Vec::new();
    let mut marker = None;
    loop {
        let page = c
            .list_keys()
            .set_marker(marker)
            .limit(1000)
            .send()
            .await
            .expect("list keys");
        ids.extend(
            page.keys()
                .iter()
                .filter_map(|k| k.key_id().map(str::to_owned)),
        );
        if !page.truncated() {
            return ids;
        }
        marker = page.next_marker().map(str::to_owned);
    }
}

#[tokio::test]
async fn keys_and_aliases_are_per_region() {
    let home = client_in(two_regions(), HOME);
    let other = client_in(two_regions(), OTHER);
    let m = other
        .create_key()
        .send()
        .await
        .expect("create in eu-west-1")
        .key_metadata
        .expect("metadata");
    let arn = m.arn().expect("arn").to_owned();
    assert!(arn.starts_with(&format!("arn:aws:kms:{OTHER}:")), "{arn}");
    assert!(all_keys(&other).await.contains(&m.key_id));
    assert!(!all_keys(&home).await.contains(&m.key_id));
    assert_eq!(
        code(home.describe_key().key_id(&m.key_id).send().await),
        "NotFoundException",
        "a key of another region is not found by id"
    );
    assert_eq!(
        code(home.describe_key().key_id(&arn).send().await),
        "NotFoundException",
        "nor by its ARN from another region"
    );
    // One alias name in each region, each naming its own region's key.
    let home_key = home
        .create_key()
        .send()
        .await
        .expect("create in us-east-2")
        .key_metadata
        .expect("metadata")
        .key_id;
    let name = format!("alias/regional-{}", &m.key_id[..8]);
    other
        .create_alias()
        .alias_name(&name)
        .target_key_id(&m.key_id)
        .send()
        .await
        .expect("alias in eu-west-1");
    assert_eq!(
        code(
            home.create_alias()
                .alias_name(&name)
                .target_key_id(&m.key_id)
                .send()
                .await
        ),
        "NotFoundException",
        "an alias targets a key of its own region only"
    );
    home.create_alias()
        .alias_name(&name)
        .target_key_id(&home_key)
        .send()
        .await
        .expect("the same name in us-east-2");
    let via = |c: Client| {
        let name = name.clone();
        async move {
            c.describe_key()
                .key_id(&name)
                .send()
                .await
                .expect("by alias")
                .key_metadata
                .expect("metadata")
                .key_id
        }
    };
    assert_eq!(via(other.clone()).await, m.key_id);
    assert_eq!(via(home.clone()).await, home_key);
    let listed = other
        .list_aliases()
        .send()
        .await
        .expect("list aliases")
        .aliases()
        .iter()
        .filter(|a| a.alias_name() == Some(name.as_str()))
        .map(|a| a.alias_arn().unwrap_or_default().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(listed, [format!("arn:aws:kms:{OTHER}:111122223333:{name}")]);
    // Encryption in one region, decryption in it; another region does not know the key.
    let blob = other
        .encrypt()
        .key_id(&name)
        .plaintext(aws_sdk_kms::primitives::Blob::new(b"eu".to_vec()))
        .send()
        .await
        .expect("encrypt")
        .ciphertext_blob
        .expect("blob");
    let plain = other
        .decrypt()
        .ciphertext_blob(blob)
        .send()
        .await
        .expect("decrypt in its region");
    assert_eq!(plain.plaintext.expect("pt").as_ref(), b"eu");
}

#[tokio::test]
async fn a_region_not_served_is_a_signature_error() {
    let c = client_in(two_regions(), "ap-south-1");
    assert_eq!(
        code(c.list_keys().send().await),
        "InvalidSignatureException"
    );
}

#[tokio::test]
async fn ci_mode_takes_any_credentials_in_any_region() {
    for region in ["us-east-1", "eu-central-1", "ap-southeast-2"] {
        let c = sdk::client(ci(), region, "test", "test", None);
        let m = c
            .create_key()
            .description("ci")
            .send()
            .await
            .expect("create with test/test")
            .key_metadata
            .expect("metadata");
        assert_eq!(m.aws_account_id(), Some("000000000000"));
        assert!(
            m.arn()
                .is_some_and(|a| a.starts_with(&format!("arn:aws:kms:{region}:000000000000:key/"))),
            "{:?}",
            m.arn()
        );
        let other = sdk::client(ci(), region, "AKIAANYTHING", "whatever-secret", None);
        let blob = other
            .encrypt()
            .key_id(&m.key_id)
            .plaintext(aws_sdk_kms::primitives::Blob::new(b"ci".to_vec()))
            .send()
            .await
            .expect("another dummy credential")
            .ciphertext_blob
            .expect("blob");
        let plain = c
            .decrypt()
            .ciphertext_blob(blob)
            .send()
            .await
            .expect("decrypt");
        assert_eq!(plain.plaintext.expect("pt").as_ref(), b"ci");
    }
}
