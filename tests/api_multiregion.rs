//! Multi-Region keys through the real `aws-sdk-kms` client, with clients of several regions on
//! one server: CreateKey MultiRegion, ReplicateKey, UpdatePrimaryRegion, DescribeKey's
//! MultiRegionConfiguration, ciphertexts that open in every region that has the key, and the
//! per-region state, policy, tags, aliases and deletion rules.

mod api_support;
mod common;
mod sdk;

use sdk::code;

use std::sync::{Arc, OnceLock};

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyState, KeyUsageType, MultiRegionKeyType, Tag};
use aws_sdk_kms::Client;
use common::dev_credentials;
use p11kms::api::auth::{Credentials, PolicyAuthorizer};
use p11kms::api::{Regions, ServerSettings};

const HOME: &str = "us-east-2";
const OTHER: &str = "eu-west-1";
const THIRD: &str = "ap-southeast-2";

fn endpoint() -> &'static str {
    static S: OnceLock<String> = OnceLock::new();
    S.get_or_init(|| {
        let fx = common::fixture();
        let settings = ServerSettings {
            regions: Regions::List(vec![HOME.into(), OTHER.into(), THIRD.into()]),
            ci_account: None,
            credentials: Credentials::from_config(&fx.config.server.credentials).expect("creds"),
            authorizer: Arc::new(PolicyAuthorizer),
            // The rest as every in-process test server has them.
            ..api_support::settings(None)
        };
        let (addr, _) = api_support::spawn(settings, std::future::pending());
        format!("http://{addr}")
    })
}

fn client_in(region: &str) -> Client {
    let (id, secret) = dev_credentials();
    sdk::client(endpoint(), region, &id, &secret, None)
}

async fn create_mrk(c: &Client) -> String {
    let m = c
        .create_key()
        .multi_region(true)
        .description("primary")
        .send()
        .await
        .expect("create multi-Region key")
        .key_metadata
        .expect("metadata");
    assert!(m.multi_region() == Some(true));
    m.key_id().to_owned()
}

async fn replicate(c: &Client, id: &str, region: &str) -> aws_sdk_kms::types::KeyMetadata {
    c.replicate_key()
        .key_id(id)
        .replica_region(region)
        .send()
        .await
        .expect("replicate")
        .replica_key_metadata
        .expect("replica metadata")
}

/// A multi-Region key of `spec` for `usage` made in `home`'s region and replicated to OTHER.
async fn replicated_pair(
    home: &Client,
    spec: KeySpec,
    usage: KeyUsageType,
) -> aws_sdk_kms::types::KeyMetadata {
    let m = home
        .create_key()
        .multi_region(true)
        .key_spec(spec)
        .key_usage(usage)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    replicate(home, m.key_id(), OTHER).await;
    m
}

async fn state(c: &Client, id: &str) -> KeyState {
    c.describe_key()
        .key_id(id)
        .send()
        .await
        .expect("describe")
        .key_metadata
        .expect("metadata")
        .key_state()
        .cloned()
        .expect("state")
}

#[tokio::test]
async fn a_replica_shares_the_key_and_decrypts_what_the_primary_encrypted() {
    let home = client_in(HOME);
    let other = client_in(OTHER);
    let id = create_mrk(&home).await;
    assert!(
        id.starts_with("mrk-") && id.len() == 36 && id[4..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    // Not in the other region until replicated.
    assert_eq!(
        code(other.describe_key().key_id(&id).send().await),
        "NotFoundException"
    );
    let blob = home
        .encrypt()
        .key_id(&id)
        .plaintext(Blob::new(b"from home".to_vec()))
        .encryption_context("k", "v")
        .send()
        .await
        .expect("encrypt")
        .ciphertext_blob
        .expect("blob");
    assert_eq!(
        code(
            other
                .decrypt()
                .ciphertext_blob(blob.clone())
                .encryption_context("k", "v")
                .send()
                .await
        ),
        "NotFoundException",
        "no key in the other region yet"
    );

    let replica = other
        .replicate_key()
        .key_id(format!("arn:aws:kms:{HOME}:111122223333:key/{id}"))
        .replica_region(OTHER)
        .description("replica")
        .tags(
            Tag::builder()
                .tag_key("team")
                .tag_value("eu")
                .build()
                .unwrap(),
        )
        .send()
        .await;
    // ReplicateKey is called in the primary's region: in another one the primary's ARN is
    // not found.
    assert_eq!(code(replica), "NotFoundException");
    let r = home
        .replicate_key()
        .key_id(&id)
        .replica_region(OTHER)
        .description("replica")
        .tags(
            Tag::builder()
                .tag_key("team")
                .tag_value("eu")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("replicate");
    let rm = r.replica_key_metadata().expect("metadata");
    assert_eq!(rm.key_id(), id);
    assert_eq!(
        rm.arn(),
        Some(format!("arn:aws:kms:{OTHER}:111122223333:key/{id}").as_str())
    );
    assert_eq!(rm.description(), Some("replica"));
    assert_eq!(rm.key_state(), Some(&KeyState::Enabled));
    let cfg = rm.multi_region_configuration().expect("configuration");
    assert_eq!(
        cfg.multi_region_key_type(),
        Some(&MultiRegionKeyType::Replica)
    );
    assert_eq!(cfg.primary_key().and_then(|p| p.region()), Some(HOME));
    assert_eq!(
        cfg.replica_keys()
            .iter()
            .filter_map(|k| k.region())
            .collect::<Vec<_>>(),
        [OTHER]
    );
    assert!(r.replica_policy().is_some_and(|p| p.contains("kms:*")));
    assert_eq!(r.replica_tags().len(), 1);

    // Both regions describe the one key, each its own.
    let pm = home
        .describe_key()
        .key_id(&id)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    assert_eq!(pm.description(), Some("primary"));
    let pcfg = pm.multi_region_configuration().expect("configuration");
    assert_eq!(
        pcfg.multi_region_key_type(),
        Some(&MultiRegionKeyType::Primary)
    );
    assert_eq!(
        pcfg.primary_key().and_then(|p| p.arn()),
        Some(format!("arn:aws:kms:{HOME}:111122223333:key/{id}").as_str())
    );
    assert_eq!(
        pcfg.replica_keys()
            .iter()
            .filter_map(|k| k.arn())
            .collect::<Vec<_>>(),
        [format!("arn:aws:kms:{OTHER}:111122223333:key/{id}")]
    );
    let om = other
        .describe_key()
        .key_id(&id)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    assert_eq!(om.description(), Some("replica"));

    // A ciphertext of one region opens in the other, both ways, with or without the KeyId.
    let plain = other
        .decrypt()
        .ciphertext_blob(blob.clone())
        .encryption_context("k", "v")
        .send()
        .await
        .expect("decrypt in the replica's region");
    assert_eq!(plain.plaintext().unwrap().as_ref(), b"from home");
    assert_eq!(
        plain.key_id(),
        Some(format!("arn:aws:kms:{OTHER}:111122223333:key/{id}").as_str())
    );
    let plain = other
        .decrypt()
        .key_id(&id)
        .ciphertext_blob(blob)
        .encryption_context("k", "v")
        .send()
        .await
        .expect("decrypt naming the key");
    assert_eq!(plain.plaintext().unwrap().as_ref(), b"from home");
    let dk = other
        .generate_data_key()
        .key_id(&id)
        .number_of_bytes(32)
        .send()
        .await
        .expect("data key in the replica's region");
    let back = home
        .decrypt()
        .ciphertext_blob(dk.ciphertext_blob().unwrap().clone())
        .send()
        .await
        .expect("the primary opens it");
    assert_eq!(back.plaintext(), dk.plaintext());
    let wp = other
        .generate_data_key_without_plaintext()
        .key_id(&id)
        .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
        .send()
        .await
        .expect("without plaintext");
    let re = home
        .re_encrypt()
        .ciphertext_blob(wp.ciphertext_blob().unwrap().clone())
        .destination_key_id(&id)
        .send()
        .await
        .expect("re-encrypt in the primary's region");
    assert!(re.ciphertext_blob().is_some());

    // Listed per region: the replica in its region, the primary in its own.
    let listed = |c: Client| async move {
        c.list_keys()
            .limit(1000)
            .send()
            .await
            .unwrap()
            .keys()
            .iter()
            .filter_map(|k| k.key_arn().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let in_other = listed(other.clone()).await;
    assert!(in_other.contains(&format!("arn:aws:kms:{OTHER}:111122223333:key/{id}")));
    let in_home = listed(home.clone()).await;
    assert!(in_home.contains(&format!("arn:aws:kms:{HOME}:111122223333:key/{id}")));
    assert!(!in_home.iter().any(|a| a.contains(OTHER)));

    // Replicating again into the same region, into the primary's, from a replica, a
    // single-Region key, a region not served, a malformed one.
    assert_eq!(
        code(
            home.replicate_key()
                .key_id(&id)
                .replica_region(OTHER)
                .send()
                .await
        ),
        "AlreadyExistsException"
    );
    assert_eq!(
        code(
            home.replicate_key()
                .key_id(&id)
                .replica_region(HOME)
                .send()
                .await
        ),
        "ValidationException"
    );
    assert_eq!(
        code(
            other
                .replicate_key()
                .key_id(&id)
                .replica_region(THIRD)
                .send()
                .await
        ),
        "UnsupportedOperationException"
    );
    let single = home
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    assert_eq!(single.multi_region(), Some(false));
    assert!(single.multi_region_configuration().is_none());
    assert_eq!(
        code(
            home.replicate_key()
                .key_id(single.key_id())
                .replica_region(OTHER)
                .send()
                .await
        ),
        "UnsupportedOperationException"
    );
    assert_eq!(
        code(
            home.replicate_key()
                .key_id(&id)
                .replica_region("ap-south-1")
                .send()
                .await
        ),
        "UnsupportedOperationException"
    );
    assert_eq!(
        code(
            home.replicate_key()
                .key_id(&id)
                .replica_region("Nowhere!")
                .send()
                .await
        ),
        "ValidationException"
    );
    // The same 16 bytes in UUID form are not the key.
    let hex = &id[4..];
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    assert_eq!(
        code(home.describe_key().key_id(uuid).send().await),
        "NotFoundException"
    );
}

#[tokio::test]
async fn each_region_has_its_own_state_tags_policy_and_aliases() {
    let home = client_in(HOME);
    let other = client_in(OTHER);
    let id = create_mrk(&home).await;
    replicate(&home, &id, OTHER).await;

    // Disabling the replica leaves the primary usable, and the other way round.
    other.disable_key().key_id(&id).send().await.unwrap();
    assert_eq!(state(&other, &id).await, KeyState::Disabled);
    assert_eq!(state(&home, &id).await, KeyState::Enabled);
    let blob = home
        .encrypt()
        .key_id(&id)
        .plaintext(Blob::new(b"x".to_vec()))
        .send()
        .await
        .expect("the primary still encrypts")
        .ciphertext_blob
        .unwrap();
    assert_eq!(
        code(other.decrypt().ciphertext_blob(blob.clone()).send().await),
        "DisabledException"
    );
    home.disable_key().key_id(&id).send().await.unwrap();
    other.enable_key().key_id(&id).send().await.unwrap();
    assert_eq!(
        code(home.decrypt().ciphertext_blob(blob.clone()).send().await),
        "DisabledException"
    );
    let plain = other
        .decrypt()
        .ciphertext_blob(blob.clone())
        .send()
        .await
        .expect(
            "the replica decrypts while the primary is disabled (the backing key stays usable)",
        );
    assert_eq!(plain.plaintext().unwrap().as_ref(), b"x");
    home.enable_key().key_id(&id).send().await.unwrap();

    // Tags and descriptions per region.
    other
        .tag_resource()
        .key_id(&id)
        .tags(
            Tag::builder()
                .tag_key("where")
                .tag_value("eu")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    other
        .update_key_description()
        .key_id(&id)
        .description("eu copy")
        .send()
        .await
        .unwrap();
    let tags = |c: Client| {
        let id = id.clone();
        async move {
            c.list_resource_tags()
                .key_id(id)
                .send()
                .await
                .unwrap()
                .tags()
                .iter()
                .map(|t| t.tag_key().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(tags(other.clone()).await, ["where"]);
    assert!(tags(home.clone()).await.is_empty());

    // A policy on the replica that denies Decrypt there only.
    let policy = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
        {"Effect":"Deny","Principal":{"AWS":"*"},"Action":"kms:Decrypt","Resource":"*"}]}"#;
    other
        .put_key_policy()
        .key_id(&id)
        .policy(policy)
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(other.decrypt().ciphertext_blob(blob.clone()).send().await),
        "AccessDeniedException"
    );
    home.decrypt()
        .ciphertext_blob(blob.clone())
        .send()
        .await
        .expect("the primary's policy is its own");
    let got = home
        .get_key_policy()
        .key_id(&id)
        .send()
        .await
        .unwrap()
        .policy
        .unwrap();
    assert!(!got.contains("Deny"));

    // One alias name in each region, each naming its region's key.
    let name = format!("alias/mrk-{}", &id[4..12]);
    home.create_alias()
        .alias_name(&name)
        .target_key_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(other.describe_key().key_id(&name).send().await),
        "NotFoundException"
    );
    other
        .create_alias()
        .alias_name(&name)
        .target_key_id(&id)
        .send()
        .await
        .unwrap();
    let d = other
        .describe_key()
        .key_id(&name)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    assert_eq!(d.description(), Some("eu copy"));
    let e = home
        .encrypt()
        .key_id(&name)
        .plaintext(Blob::new(b"y".to_vec()))
        .send()
        .await
        .unwrap();
    assert!(e.key_id().is_some_and(|k| k.contains(HOME)));

    // Grants are refused on multi-Region keys (documented).
    assert_eq!(
        code(
            home.create_grant()
                .key_id(&id)
                .grantee_principal("arn:aws:iam::111122223333:user/g")
                .operations(aws_sdk_kms::types::GrantOperation::Decrypt)
                .send()
                .await
        ),
        "UnsupportedOperationException"
    );
}

#[tokio::test]
async fn asymmetric_and_hmac_keys_are_multi_region_too() {
    let home = client_in(HOME);
    let other = client_in(OTHER);
    let sign = replicated_pair(&home, KeySpec::EccNistP256, KeyUsageType::SignVerify).await;
    let sig = home
        .sign()
        .key_id(sign.key_id())
        .message(Blob::new(b"m".to_vec()))
        .signing_algorithm(aws_sdk_kms::types::SigningAlgorithmSpec::EcdsaSha256)
        .send()
        .await
        .unwrap()
        .signature
        .unwrap();
    let ok = other
        .verify()
        .key_id(sign.key_id())
        .message(Blob::new(b"m".to_vec()))
        .signature(sig)
        .signing_algorithm(aws_sdk_kms::types::SigningAlgorithmSpec::EcdsaSha256)
        .send()
        .await
        .expect("the replica verifies the primary's signature");
    assert!(ok.signature_valid());
    let pk_home = home
        .get_public_key()
        .key_id(sign.key_id())
        .send()
        .await
        .unwrap();
    let pk_other = other
        .get_public_key()
        .key_id(sign.key_id())
        .send()
        .await
        .unwrap();
    assert_eq!(pk_home.public_key(), pk_other.public_key());

    let mac = replicated_pair(&home, KeySpec::Hmac256, KeyUsageType::GenerateVerifyMac).await;
    let tag = other
        .generate_mac()
        .key_id(mac.key_id())
        .message(Blob::new(b"m".to_vec()))
        .mac_algorithm(aws_sdk_kms::types::MacAlgorithmSpec::HmacSha256)
        .send()
        .await
        .unwrap()
        .mac
        .unwrap();
    let v = home
        .verify_mac()
        .key_id(mac.key_id())
        .message(Blob::new(b"m".to_vec()))
        .mac(tag)
        .mac_algorithm(aws_sdk_kms::types::MacAlgorithmSpec::HmacSha256)
        .send()
        .await
        .unwrap();
    assert!(v.mac_valid());

    // Imported key material is not offered for multi-Region keys (documented).
    assert_eq!(
        code(
            home.create_key()
                .multi_region(true)
                .origin(aws_sdk_kms::types::OriginType::External)
                .send()
                .await
        ),
        "UnsupportedOperationException"
    );
}

#[tokio::test]
async fn the_primary_region_moves() {
    let home = client_in(HOME);
    let other = client_in(OTHER);
    let third = client_in(THIRD);
    let id = create_mrk(&home).await;
    replicate(&home, &id, OTHER).await;
    replicate(&home, &id, THIRD).await;
    other
        .update_key_description()
        .key_id(&id)
        .description("eu")
        .send()
        .await
        .unwrap();
    let blob = third
        .encrypt()
        .key_id(&id)
        .plaintext(Blob::new(b"z".to_vec()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap();

    // Only the primary, in its region, moves it; to a region with a replica.
    assert_eq!(
        code(
            other
                .update_primary_region()
                .key_id(&id)
                .primary_region(THIRD)
                .send()
                .await
        ),
        "UnsupportedOperationException"
    );
    let nope = home.create_key().multi_region(true).send().await.unwrap();
    assert_eq!(
        code(
            home.update_primary_region()
                .key_id(nope.key_metadata().unwrap().key_id())
                .primary_region(OTHER)
                .send()
                .await
        ),
        "NotFoundException"
    );
    home.update_primary_region()
        .key_id(&id)
        .primary_region(OTHER)
        .send()
        .await
        .expect("update primary region");

    for c in [&home, &other, &third] {
        let m = c
            .describe_key()
            .key_id(&id)
            .send()
            .await
            .unwrap()
            .key_metadata
            .unwrap();
        let cfg = m.multi_region_configuration().unwrap();
        assert_eq!(cfg.primary_key().and_then(|p| p.region()), Some(OTHER));
        let mut replicas: Vec<&str> = cfg
            .replica_keys()
            .iter()
            .filter_map(|k| k.region())
            .collect();
        replicas.sort();
        assert_eq!(replicas, [THIRD, HOME]);
    }
    let m = other.describe_key().key_id(&id).send().await.unwrap();
    let m = m.key_metadata().unwrap();
    assert_eq!(
        m.multi_region_configuration()
            .unwrap()
            .multi_region_key_type(),
        Some(&MultiRegionKeyType::Primary)
    );
    // Each region's own fields stayed with it.
    assert_eq!(m.description(), Some("eu"));
    let h = home.describe_key().key_id(&id).send().await.unwrap();
    assert_eq!(h.key_metadata().unwrap().description(), Some("primary"));
    // The key still opens everywhere; now only the new primary replicates.
    for c in [&home, &other, &third] {
        let p = c
            .decrypt()
            .ciphertext_blob(blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(p.plaintext().unwrap().as_ref(), b"z");
    }
    assert_eq!(
        code(
            home.replicate_key()
                .key_id(&id)
                .replica_region(THIRD)
                .send()
                .await
        ),
        "UnsupportedOperationException"
    );
    assert_eq!(
        code(
            other
                .replicate_key()
                .key_id(&id)
                .replica_region(HOME)
                .send()
                .await
        ),
        "AlreadyExistsException"
    );
}

#[tokio::test]
async fn a_primary_with_replicas_waits_for_their_deletion() {
    let home = client_in(HOME);
    let other = client_in(OTHER);
    let id = create_mrk(&home).await;
    replicate(&home, &id, OTHER).await;
    let blob = home
        .encrypt()
        .key_id(&id)
        .plaintext(Blob::new(b"w".to_vec()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap();

    let s = home
        .schedule_key_deletion()
        .key_id(&id)
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    assert_eq!(s.key_state(), Some(&KeyState::PendingReplicaDeletion));
    assert_eq!(state(&home, &id).await, KeyState::PendingReplicaDeletion);
    // The replica is untouched and still works; the primary does not.
    assert_eq!(state(&other, &id).await, KeyState::Enabled);
    other
        .decrypt()
        .ciphertext_blob(blob.clone())
        .send()
        .await
        .expect("the replica decrypts");
    assert_eq!(
        code(home.decrypt().ciphertext_blob(blob.clone()).send().await),
        "KMSInvalidStateException"
    );
    assert_eq!(
        code(
            home.replicate_key()
                .key_id(&id)
                .replica_region(THIRD)
                .send()
                .await
        ),
        "KMSInvalidStateException"
    );
    // Cancelling brings it back Disabled, as for any key.
    home.cancel_key_deletion().key_id(&id).send().await.unwrap();
    assert_eq!(state(&home, &id).await, KeyState::Disabled);
    home.enable_key().key_id(&id).send().await.unwrap();

    // The replica scheduled for deletion: its own state, the primary's untouched.
    let s = other
        .schedule_key_deletion()
        .key_id(&id)
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    assert_eq!(s.key_state(), Some(&KeyState::PendingDeletion));
    assert_eq!(state(&home, &id).await, KeyState::Enabled);
    home.decrypt()
        .ciphertext_blob(blob)
        .send()
        .await
        .expect("the primary still decrypts");
}

#[tokio::test]
async fn policies_see_the_multi_region_condition_keys() {
    let home = client_in(HOME);
    let other = client_in(OTHER);
    let id = create_mrk(&home).await;
    // Encrypt is denied on replicas only, by kms:MultiRegionKeyType; Decrypt on multi-Region
    // keys by kms:MultiRegion (so this key cannot decrypt anywhere).
    let policy = r#"{"Version":"2012-10-17","Statement":[
        {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
        {"Effect":"Deny","Principal":{"AWS":"*"},"Action":"kms:Encrypt","Resource":"*",
         "Condition":{"StringEquals":{"kms:MultiRegionKeyType":"REPLICA"}}},
        {"Effect":"Deny","Principal":{"AWS":"*"},"Action":"kms:Decrypt","Resource":"*",
         "Condition":{"Bool":{"kms:MultiRegion":"true"}}}]}"#;
    home.put_key_policy()
        .key_id(&id)
        .policy(policy)
        .send()
        .await
        .unwrap();
    other
        .replicate_key()
        .key_id(format!("arn:aws:kms:{HOME}:111122223333:key/{id}"))
        .replica_region(OTHER)
        .send()
        .await
        .expect_err("called in the replica's region: the primary is not there");
    home.replicate_key()
        .key_id(&id)
        .replica_region(OTHER)
        .policy(policy)
        .send()
        .await
        .expect("replicate with a policy");
    let blob = home
        .encrypt()
        .key_id(&id)
        .plaintext(Blob::new(b"p".to_vec()))
        .send()
        .await
        .expect("the primary encrypts")
        .ciphertext_blob
        .unwrap();
    assert_eq!(
        code(
            other
                .encrypt()
                .key_id(&id)
                .plaintext(Blob::new(b"p".to_vec()))
                .send()
                .await
        ),
        "AccessDeniedException"
    );
    assert_eq!(
        code(home.decrypt().ciphertext_blob(blob).send().await),
        "AccessDeniedException"
    );
}

#[tokio::test]
async fn a_replica_of_a_disabled_primary_is_enabled_and_works() {
    let home = client_in(HOME);
    let third = client_in(THIRD);
    let id = create_mrk(&home).await;
    let blob = home
        .encrypt()
        .key_id(&id)
        .plaintext(Blob::new(b"d".to_vec()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap();
    home.disable_key().key_id(&id).send().await.unwrap();
    let m = replicate(&home, &id, THIRD).await;
    assert_eq!(m.key_state(), Some(&KeyState::Enabled), "as at AWS");
    let p = third
        .decrypt()
        .ciphertext_blob(blob.clone())
        .send()
        .await
        .expect("the replica decrypts: the backing key is usable again");
    assert_eq!(p.plaintext().unwrap().as_ref(), b"d");
    assert_eq!(
        code(home.decrypt().ciphertext_blob(blob).send().await),
        "DisabledException"
    );
    // Disabled everywhere: the backing key is off in the token, and on again once enabled.
    third.disable_key().key_id(&id).send().await.unwrap();
    home.enable_key().key_id(&id).send().await.unwrap();
    home.encrypt()
        .key_id(&id)
        .plaintext(Blob::new(b"e".to_vec()))
        .send()
        .await
        .expect("enabled again");
}

#[tokio::test]
async fn policies_see_the_target_regions() {
    let home = client_in(HOME);
    let id = create_mrk(&home).await;
    // Replication only to OTHER, and the primary may move only to THIRD.
    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[
        {{"Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::111122223333:root"}},"Action":"kms:*","Resource":"*"}},
        {{"Effect":"Deny","Principal":{{"AWS":"*"}},"Action":"kms:ReplicateKey","Resource":"*",
         "Condition":{{"StringNotEquals":{{"kms:ReplicaRegion":"{OTHER}"}}}}}},
        {{"Effect":"Deny","Principal":{{"AWS":"*"}},"Action":"kms:UpdatePrimaryRegion","Resource":"*",
         "Condition":{{"StringNotEquals":{{"kms:PrimaryRegion":"{THIRD}"}}}}}}]}}"#
    );
    home.put_key_policy()
        .key_id(&id)
        .policy(&policy)
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(
            home.replicate_key()
                .key_id(&id)
                .replica_region(THIRD)
                .send()
                .await
        ),
        "AccessDeniedException"
    );
    replicate(&home, &id, OTHER).await;
    assert_eq!(
        code(
            home.update_primary_region()
                .key_id(&id)
                .primary_region(OTHER)
                .send()
                .await
        ),
        "AccessDeniedException"
    );
    // A policy given to ReplicateKey that would lock the caller out is refused, after the key
    // is known to be a multi-Region primary.
    let single = home.create_key().send().await.unwrap();
    let lockout = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/nobody"},"Action":"kms:*","Resource":"*"}]}"#;
    assert_eq!(
        code(
            home.replicate_key()
                .key_id(single.key_metadata().unwrap().key_id())
                .replica_region(OTHER)
                .policy(lockout)
                .send()
                .await
        ),
        "UnsupportedOperationException"
    );
    let second = create_mrk(&home).await;
    assert_eq!(
        code(
            home.replicate_key()
                .key_id(&second)
                .replica_region(OTHER)
                .policy(lockout)
                .send()
                .await
        ),
        "MalformedPolicyDocumentException"
    );
}

/// A rotation of the primary is its replicas' too (they share the key material in the
/// token): new ciphertexts in the replica's region carry the new key material id, old ones
/// still open there. Rotation is managed on the primary: a replica refuses it.
#[tokio::test]
async fn a_rotation_of_the_primary_is_every_replicas() {
    let home = client_in(HOME);
    let other = client_in(OTHER);
    let id = create_mrk(&home).await;
    replicate(&home, &id, OTHER).await;
    let material = |c: Client, id: String| async move {
        let out = c
            .generate_data_key_without_plaintext()
            .key_id(&id)
            .number_of_bytes(32)
            .send()
            .await
            .expect("data key");
        (
            out.key_material_id().expect("KeyMaterialId").to_owned(),
            out.ciphertext_blob.expect("blob"),
        )
    };
    let (before, old_blob) = material(other.clone(), id.clone()).await;
    assert_eq!(
        code(other.enable_key_rotation().key_id(&id).send().await),
        "UnsupportedOperationException",
        "EnableKeyRotation on a replica"
    );
    assert_eq!(
        code(other.rotate_key_on_demand().key_id(&id).send().await),
        "UnsupportedOperationException",
        "RotateKeyOnDemand on a replica"
    );
    home.rotate_key_on_demand()
        .key_id(&id)
        .send()
        .await
        .expect("rotate on the primary");
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        + 60_000;
    let done = common::kms().rotate_due_at(soon).expect("upkeep rotates");
    assert!(
        done.iter().any(|(k, v)| k.to_string() == id && *v == 2),
        "{done:?}"
    );
    let (after, _) = material(other.clone(), id.clone()).await;
    assert_ne!(before, after, "the replica seals with the new key material");
    let described = other
        .describe_key()
        .key_id(&id)
        .send()
        .await
        .expect("describe replica")
        .key_metadata
        .expect("metadata");
    assert_eq!(described.current_key_material_id(), Some(after.as_str()));
    let opened = home
        .decrypt()
        .ciphertext_blob(old_blob)
        .send()
        .await
        .expect("an old replica ciphertext opens at the primary");
    assert_eq!(opened.key_material_id(), Some(before.as_str()));
    let rotations = other
        .list_key_rotations()
        .key_id(&id)
        .send()
        .await
        .expect("the replica lists its primary's rotations");
    assert_eq!(rotations.rotations().len(), 1);
}
