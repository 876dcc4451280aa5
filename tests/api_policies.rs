//! Key policies and identity policies, enforced, through the real `aws-sdk-kms` client with
//! several credentials on one server: the seed's two-component separation, delegation to the
//! account, explicit deny, the lockout safety check, conditions on the request, and use of a
//! key by a principal of another account (by key ARN only).

mod api_support;
mod common;
mod sdk;

use sdk::code;
mod server_process;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use api_support::REGION;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::types::DataKeySpec;
use aws_sdk_kms::Client;
use common::dev_credentials;
use p11kms::api::auth::{Credentials, PolicyAuthorizer};
use p11kms::api::ServerSettings;
use p11kms::config::{Credential, Secret, SecretSource};

const ACCOUNT: &str = "111122223333";
const PARTNER_ACCOUNT: &str = "444455556666";

/// A principal of the test server: (access key id, ARN, identity policy).
struct Who {
    id: &'static str,
    arn: &'static str,
    identity: Option<&'static str>,
}

const CREATOR: Who = Who {
    id: "AKIACREATOR000000001",
    arn: "arn:aws:iam::111122223333:user/creator",
    identity: None,
};
const READER: Who = Who {
    id: "AKIAREADER0000000001",
    arn: "arn:aws:iam::111122223333:user/reader",
    identity: None,
};
/// Its identity policy allows Decrypt and DescribeKey on every key, nothing else.
const DECRYPTER: Who = Who {
    id: "AKIADECRYPTER0000001",
    arn: "arn:aws:iam::111122223333:user/decrypter",
    identity: Some(
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow",
            "Action":["kms:Decrypt","kms:DescribeKey"],"Resource":"*"}]}"#,
    ),
};
/// An administrator of the partner account (no identity limits).
const PARTNER: Who = Who {
    id: "AKIAPARTNER000000001",
    arn: "arn:aws:iam::444455556666:user/partner",
    identity: None,
};
/// A partner-account user whose identity policy allows only DescribeKey.
const PARTNER_VIEWER: Who = Who {
    id: "AKIAPARTNERVIEW00001",
    arn: "arn:aws:iam::444455556666:user/viewer",
    identity: Some(
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow",
            "Action":"kms:DescribeKey","Resource":"arn:aws:kms:*:111122223333:key/*"}]}"#,
    ),
};
const SECRET: &str = "policy-tests/secret";

struct Server {
    endpoint: String,
}

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let fx = common::fixture();
        let mut creds = fx.config.server.credentials.clone();
        for w in [&CREATOR, &READER, &DECRYPTER, &PARTNER, &PARTNER_VIEWER] {
            creds.push(Credential {
                access_key_id: w.id.into(),
                secret: SecretSource::Inline(Secret::new(SECRET.into())),
                principal: w.arn.into(),
                allow_actions: None,
                allow_keys: None,
                identity_policy: w.identity.map(str::to_owned),
            });
        }
        let settings = ServerSettings {
            regions: p11kms::api::Regions::List(vec![fx.config.region.clone()]),
            ci_account: None,
            credentials: Credentials::from_config(&creds).expect("credentials"),
            authorizer: Arc::new(PolicyAuthorizer),
            // The rest as every in-process test server has them.
            ..api_support::settings(None)
        };
        let (addr, _) = api_support::spawn(settings, std::future::pending());
        Server {
            endpoint: format!("http://{addr}"),
        }
    })
}

fn admin() -> Client {
    let (id, secret) = dev_credentials();
    sdk::client(&server().endpoint, REGION, &id, &secret, None)
}

fn as_(w: &Who) -> Client {
    sdk::client(&server().endpoint, REGION, w.id, SECRET, None)
}

fn dev_arn() -> String {
    format!("arn:aws:iam::{ACCOUNT}:user/dev")
}

fn message<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(
    r: Result<T, SdkError<E, aws_sdk_kms::config::http::HttpResponse>>,
) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.message().unwrap_or_default().to_owned(),
    }
}

fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A key made by the admin with `policy` (None: the default); returns (id, ARN).
async fn key_with(policy: Option<&str>) -> (String, String) {
    let m = admin()
        .create_key()
        .set_policy(policy.map(str::to_owned))
        .send()
        .await
        .expect("create key")
        .key_metadata
        .expect("metadata");
    (m.key_id, m.arn.expect("arn"))
}

/// The seed's separation: the admin keeps the key, the creator may only make sealed data
/// keys, the reader may only decrypt, and only with the right encryption context.
fn two_component_policy() -> String {
    format!(
        r#"{{
  "Version": "2012-10-17",
  "Statement": [
    {{"Sid": "Admin", "Effect": "Allow", "Principal": {{"AWS": "{admin}"}},
      "Action": "kms:*", "Resource": "*"}},
    {{"Sid": "Creator", "Effect": "Allow", "Principal": {{"AWS": "{creator}"}},
      "Action": "kms:GenerateDataKeyWithoutPlaintext", "Resource": "*"}},
    {{"Sid": "Reader", "Effect": "Allow", "Principal": {{"AWS": "{reader}"}},
      "Action": "kms:Decrypt", "Resource": "*",
      "Condition": {{"StringEquals": {{"kms:EncryptionContext:purpose": "containers"}}}}}}
  ]
}}"#,
        admin = dev_arn(),
        creator = CREATOR.arn,
        reader = READER.arn,
    )
}

#[tokio::test]
async fn the_seeds_two_components_are_kept_apart_by_a_key_policy() {
    let (id, _) = key_with(Some(&two_component_policy())).await;
    let purpose = ctx(&[("purpose", "containers")]);
    let creator = as_(&CREATOR);
    let reader = as_(&READER);

    let blob = creator
        .generate_data_key_without_plaintext()
        .key_id(&id)
        .key_spec(DataKeySpec::Aes256)
        .set_encryption_context(Some(purpose.clone()))
        .send()
        .await
        .expect("the creator makes a sealed data key")
        .ciphertext_blob
        .expect("blob");

    // The creator never sees a plaintext key: neither Decrypt nor GenerateDataKey.
    let denied = creator
        .decrypt()
        .ciphertext_blob(blob.clone())
        .set_encryption_context(Some(purpose.clone()))
        .send()
        .await;
    let m = message(denied);
    assert!(
        m.contains(CREATOR.arn) && m.contains("kms:Decrypt"),
        "AWS's wording names principal and action: {m}"
    );
    assert_eq!(
        code(
            creator
                .generate_data_key()
                .key_id(&id)
                .key_spec(DataKeySpec::Aes256)
                .send()
                .await
        ),
        "AccessDeniedException"
    );

    // The reader decrypts with the right context only.
    let plain = reader
        .decrypt()
        .ciphertext_blob(blob.clone())
        .set_encryption_context(Some(purpose.clone()))
        .send()
        .await
        .expect("the reader decrypts with purpose=containers");
    assert_eq!(plain.plaintext.expect("plaintext").as_ref().len(), 32);
    assert_eq!(
        code(
            reader
                .decrypt()
                .ciphertext_blob(blob.clone())
                .set_encryption_context(Some(ctx(&[("purpose", "other")])))
                .send()
                .await
        ),
        "AccessDeniedException",
        "another context fails the policy's condition before the ciphertext is opened"
    );
    assert_eq!(
        code(reader.decrypt().ciphertext_blob(blob.clone()).send().await),
        "AccessDeniedException",
        "no context: the condition key is absent"
    );
    assert_eq!(
        code(
            reader
                .generate_data_key_without_plaintext()
                .key_id(&id)
                .key_spec(DataKeySpec::Aes256)
                .send()
                .await
        ),
        "AccessDeniedException"
    );
    // Neither may read or change the policy; the admin may.
    assert_eq!(
        code(reader.get_key_policy().key_id(&id).send().await),
        "AccessDeniedException"
    );
    let got = admin()
        .get_key_policy()
        .key_id(&id)
        .send()
        .await
        .expect("get policy");
    assert_eq!(got.policy(), Some(two_component_policy().as_str()));
    assert_eq!(got.policy_name(), Some("default"));
}

#[tokio::test]
async fn the_default_policy_delegates_to_identity_policies() {
    let (id, arn) = key_with(None).await;
    let policy = admin()
        .get_key_policy()
        .key_id(&id)
        .send()
        .await
        .expect("default policy")
        .policy
        .expect("text");
    let doc: serde_json::Value = serde_json::from_str(&policy).expect("json");
    assert_eq!(
        doc["Statement"][0]["Principal"]["AWS"],
        format!("arn:aws:iam::{ACCOUNT}:root")
    );
    assert_eq!(doc["Statement"][0]["Action"], "kms:*");
    let names = admin()
        .list_key_policies()
        .key_id(&arn)
        .send()
        .await
        .expect("list policies");
    assert_eq!(names.policy_names(), ["default"]);
    assert!(!names.truncated());

    // The decrypter's identity policy allows Decrypt and DescribeKey only.
    let blob = admin()
        .encrypt()
        .key_id(&id)
        .plaintext(aws_sdk_kms::primitives::Blob::new(b"delegated".to_vec()))
        .send()
        .await
        .expect("encrypt")
        .ciphertext_blob
        .expect("blob");
    let d = as_(&DECRYPTER);
    let plain = d
        .decrypt()
        .ciphertext_blob(blob)
        .send()
        .await
        .expect("the account's root delegates Decrypt to the identity policy");
    assert_eq!(plain.plaintext.expect("pt").as_ref(), b"delegated");
    assert_eq!(
        code(
            d.encrypt()
                .key_id(&id)
                .plaintext(aws_sdk_kms::primitives::Blob::new(b"x".to_vec()))
                .send()
                .await
        ),
        "AccessDeniedException"
    );
    let m = message(d.create_key().send().await);
    assert!(m.contains("no identity-based policy allows"), "{m}");
}

#[tokio::test]
async fn an_explicit_deny_wins_over_every_allow() {
    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[
            {{"Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::{ACCOUNT}:root"}},"Action":"kms:*","Resource":"*"}},
            {{"Effect":"Allow","Principal":{{"AWS":"{dev}"}},"Action":"kms:*","Resource":"*"}},
            {{"Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*",
              "Condition":{{"StringNotEquals":{{"kms:EncryptionContext:tier":"gold"}}}}}}
        ]}}"#,
        dev = dev_arn()
    );
    let (id, _) = key_with(Some(&policy)).await;
    let c = admin();
    let seal = |tier: &'static str| {
        let c = c.clone();
        let id = id.clone();
        async move {
            c.encrypt()
                .key_id(&id)
                .plaintext(aws_sdk_kms::primitives::Blob::new(b"x".to_vec()))
                .set_encryption_context(Some(ctx(&[("tier", tier)])))
                .send()
                .await
                .expect("encrypt")
                .ciphertext_blob
                .expect("blob")
        }
    };
    let gold = seal("gold").await;
    let silver = seal("silver").await;
    c.decrypt()
        .ciphertext_blob(gold)
        .set_encryption_context(Some(ctx(&[("tier", "gold")])))
        .send()
        .await
        .expect("gold is not denied");
    let m = message(
        c.decrypt()
            .ciphertext_blob(silver)
            .set_encryption_context(Some(ctx(&[("tier", "silver")])))
            .send()
            .await,
    );
    assert!(m.contains("explicit deny"), "{m}");
}

#[tokio::test]
async fn malformed_policies_and_the_lockout_safety_check() {
    let (id, _) = key_with(None).await;
    let c = admin();
    for bad in [
        "not json",
        r#"{"Version":"2012-10-17"}"#,
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Maybe","Principal":"*","Action":"kms:*","Resource":"*"}]}"#,
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}"#,
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"StringFuzzy":{"aws:SourceIp":"x"}}}]}"#,
    ] {
        assert_eq!(
            code(c.put_key_policy().key_id(&id).policy(bad).send().await),
            "MalformedPolicyDocumentException",
            "{bad}"
        );
        assert_eq!(
            code(c.create_key().policy(bad).send().await),
            "MalformedPolicyDocumentException",
            "{bad}"
        );
    }
    let too_big = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"{}","Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}}]}}"#,
        "a".repeat(33 * 1024)
    );
    assert_ne!(
        code(c.put_key_policy().key_id(&id).policy(too_big).send().await),
        "",
        "over 32 KB is refused"
    );

    // A policy that would leave the writer unable to change it again.
    let locks_out = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"{}"}},"Action":"kms:Decrypt","Resource":"*"}}]}}"#,
        READER.arn
    );
    let m = message(
        c.put_key_policy()
            .key_id(&id)
            .policy(&locks_out)
            .send()
            .await,
    );
    assert!(
        m.contains("will not allow you to update the key policy"),
        "{m}"
    );
    assert_eq!(
        code(c.create_key().policy(&locks_out).send().await),
        "MalformedPolicyDocumentException"
    );
    // With the bypass flag it is stored, and the admin is locked out, as at AWS.
    c.put_key_policy()
        .key_id(&id)
        .policy(&locks_out)
        .bypass_policy_lockout_safety_check(true)
        .send()
        .await
        .expect("bypassed");
    assert_eq!(
        code(
            c.put_key_policy()
                .key_id(&id)
                .policy(two_component_policy())
                .send()
                .await
        ),
        "AccessDeniedException"
    );
    assert_eq!(
        code(c.describe_key().key_id(&id).send().await),
        "AccessDeniedException"
    );
    // The one principal it names still decrypts nothing it may not: its policy is in force.
    assert_eq!(
        code(
            as_(&READER)
                .encrypt()
                .key_id(&id)
                .plaintext(aws_sdk_kms::primitives::Blob::new(b"x".to_vec()))
                .send()
                .await
        ),
        "AccessDeniedException"
    );
}

#[tokio::test]
async fn conditions_on_the_connection() {
    let policy = |cidr: &str| {
        format!(
            r#"{{"Version":"2012-10-17","Statement":[
            {{"Effect":"Allow","Principal":{{"AWS":"{dev}"}},"NotAction":"kms:Encrypt","Resource":"*"}},
            {{"Effect":"Allow","Principal":{{"AWS":"{dev}"}},"Action":"kms:Encrypt","Resource":"*",
              "Condition":{{"IpAddress":{{"aws:SourceIp":"{cidr}"}},"Bool":{{"aws:SecureTransport":"false"}}}}}}
        ]}}"#,
            dev = dev_arn()
        )
    };
    let (here, _) = key_with(Some(&policy("127.0.0.0/8"))).await;
    let (elsewhere, _) = key_with(Some(&policy("10.0.0.0/8"))).await;
    let c = admin();
    let enc = |id: String| {
        let c = c.clone();
        async move {
            c.encrypt()
                .key_id(id)
                .plaintext(aws_sdk_kms::primitives::Blob::new(b"x".to_vec()))
                .send()
                .await
        }
    };
    enc(here).await.expect("from 127.0.0.1 over plain HTTP");
    assert_eq!(code(enc(elsewhere).await), "AccessDeniedException");
}

#[tokio::test]
async fn another_account_uses_a_key_by_arn_when_both_policies_allow() {
    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[
            {{"Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::{ACCOUNT}:root"}},"Action":"kms:*","Resource":"*"}},
            {{"Effect":"Allow","Principal":{{"AWS":"{PARTNER_ACCOUNT}"}},
              "Action":["kms:Encrypt","kms:Decrypt","kms:DescribeKey"],"Resource":"*"}}
        ]}}"#
    );
    let (id, arn) = key_with(Some(&policy)).await;
    let partner = as_(&PARTNER);
    let described = partner
        .describe_key()
        .key_id(&arn)
        .send()
        .await
        .expect("by key ARN")
        .key_metadata
        .expect("metadata");
    assert_eq!(described.aws_account_id(), Some(ACCOUNT));
    assert_eq!(
        code(partner.describe_key().key_id(&id).send().await),
        "NotFoundException",
        "a bare key id resolves in the caller's own account only"
    );
    let blob = partner
        .encrypt()
        .key_id(&arn)
        .plaintext(aws_sdk_kms::primitives::Blob::new(b"shared".to_vec()))
        .send()
        .await
        .expect("encrypt by ARN")
        .ciphertext_blob
        .expect("blob");
    let plain = partner
        .decrypt()
        .ciphertext_blob(blob)
        .send()
        .await
        .expect("decrypt");
    assert_eq!(plain.plaintext.expect("pt").as_ref(), b"shared");
    assert_eq!(
        code(partner.disable_key().key_id(&arn).send().await),
        "AccessDeniedException",
        "the key policy gives the partner three actions only"
    );
    // The viewer's own identity policy allows DescribeKey only.
    let viewer = as_(&PARTNER_VIEWER);
    viewer
        .describe_key()
        .key_id(&arn)
        .send()
        .await
        .expect("viewer describes");
    assert_eq!(
        code(
            viewer
                .encrypt()
                .key_id(&arn)
                .plaintext(aws_sdk_kms::primitives::Blob::new(b"x".to_vec()))
                .send()
                .await
        ),
        "AccessDeniedException",
        "cross-account use needs the caller's identity policy too"
    );

    // Keys the partner creates are its account's: listed for it, not for the admin.
    let own = partner
        .create_key()
        .send()
        .await
        .expect("partner creates")
        .key_metadata
        .expect("metadata");
    assert_eq!(own.aws_account_id(), Some(PARTNER_ACCOUNT));
    assert!(own
        .arn()
        .is_some_and(|a| a.contains(&format!(":{PARTNER_ACCOUNT}:key/"))));
    let listed = |c: Client| async move {
        let mut ids = Vec::new();
        let mut marker = None;
        loop {
            let page = c
                .list_keys()
                .set_marker(marker)
                .limit(1000)
                .send()
                .await
                .expect("list");
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
    };
    let partners = listed(partner.clone()).await;
    assert!(partners.contains(&own.key_id) && !partners.contains(&id));
    let admins = listed(admin()).await;
    assert!(admins.contains(&id) && !admins.contains(&own.key_id));
    // The partner's key has the default policy of the partner's account.
    assert_eq!(
        code(
            admin()
                .describe_key()
                .key_id(own.arn().expect("arn"))
                .send()
                .await
        ),
        "AccessDeniedException"
    );
    assert_eq!(
        code(admin().describe_key().key_id(&own.key_id).send().await),
        "NotFoundException"
    );
}

/// A key only the admin may use, for the grant tests.
fn admin_only_policy() -> String {
    format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"{}"}},"Action":"kms:*","Resource":"*"}}]}}"#,
        dev_arn()
    )
}

#[tokio::test]
async fn a_grant_allows_its_grantee_within_its_constraint_until_revoked() {
    let (id, _) = key_with(Some(&admin_only_policy())).await;
    let reader = as_(&READER);
    let encrypt = |ctx: Option<HashMap<String, String>>, tokens: Option<Vec<String>>| {
        let reader = reader.clone();
        let id = id.clone();
        async move {
            reader
                .encrypt()
                .key_id(&id)
                .plaintext(aws_sdk_kms::primitives::Blob::new(b"granted".to_vec()))
                .set_encryption_context(ctx)
                .set_grant_tokens(tokens)
                .send()
                .await
        }
    };
    let purpose = ctx(&[("purpose", "containers"), ("extra", "x")]);
    assert_eq!(
        code(encrypt(Some(purpose.clone()), None).await),
        "AccessDeniedException",
        "no policy names the reader"
    );
    let grant = admin()
        .create_grant()
        .key_id(&id)
        .grantee_principal(READER.arn)
        .operations(aws_sdk_kms::types::GrantOperation::Encrypt)
        .operations(aws_sdk_kms::types::GrantOperation::Decrypt)
        .constraints(
            aws_sdk_kms::types::GrantConstraints::builder()
                .encryption_context_subset("purpose", "containers")
                .build(),
        )
        .send()
        .await
        .expect("create grant");
    let token = grant.grant_token().expect("token").to_owned();
    let blob = encrypt(Some(purpose.clone()), Some(vec![token.clone()]))
        .await
        .expect("the grant allows Encrypt with the constrained context")
        .ciphertext_blob
        .expect("blob");
    assert_eq!(
        code(encrypt(Some(ctx(&[("purpose", "other")])), None).await),
        "AccessDeniedException",
        "outside the grant's constraint"
    );
    assert_eq!(
        code(encrypt(None, None).await),
        "AccessDeniedException",
        "no context at all"
    );
    assert_eq!(
        code(
            reader
                .generate_data_key()
                .key_id(&id)
                .key_spec(DataKeySpec::Aes256)
                .set_encryption_context(Some(purpose.clone()))
                .send()
                .await
        ),
        "AccessDeniedException",
        "an operation the grant does not list"
    );
    let plain = reader
        .decrypt()
        .ciphertext_blob(blob.clone())
        .set_encryption_context(Some(purpose.clone()))
        .send()
        .await
        .expect("Decrypt under the grant");
    assert_eq!(plain.plaintext.expect("pt").as_ref(), b"granted");
    admin()
        .revoke_grant()
        .key_id(&id)
        .grant_id(grant.grant_id().expect("id"))
        .send()
        .await
        .expect("revoke");
    assert_eq!(
        code(
            reader
                .decrypt()
                .ciphertext_blob(blob)
                .set_encryption_context(Some(purpose))
                .set_grant_tokens(Some(vec![token]))
                .send()
                .await
        ),
        "AccessDeniedException",
        "a revoked grant allows nothing, its token neither"
    );
}

/// A grantee whose grant allows CreateGrant may pass on only the grant's operations, with a
/// constraint equally strict or stricter than its own (AWS: "Granting CreateGrant
/// permission").
#[tokio::test]
async fn a_grant_made_from_a_grant_is_no_wider_than_it() {
    use aws_sdk_kms::types::{GrantConstraints, GrantOperation as G};
    let (id, _) = key_with(Some(&admin_only_policy())).await;
    let parent = admin()
        .create_grant()
        .key_id(&id)
        .grantee_principal(READER.arn)
        .operations(G::CreateGrant)
        .operations(G::Decrypt)
        .operations(G::Encrypt)
        .constraints(
            GrantConstraints::builder()
                .encryption_context_subset("purpose", "containers")
                .build(),
        )
        .send()
        .await
        .expect("parent grant");
    let token = parent.grant_token().expect("token").to_owned();
    let reader = as_(&READER);
    let child = |ops: Vec<G>, c: Option<GrantConstraints>| {
        let (reader, id, token) = (reader.clone(), id.clone(), token.clone());
        async move {
            reader
                .create_grant()
                .key_id(&id)
                .grantee_principal(DECRYPTER.arn)
                .set_operations(Some(ops))
                .set_constraints(c)
                .grant_tokens(token)
                .send()
                .await
        }
    };
    let subset = |pairs: &[(&str, &str)]| {
        Some(
            GrantConstraints::builder()
                .set_encryption_context_subset(Some(ctx(pairs)))
                .build(),
        )
    };
    let equals = |pairs: &[(&str, &str)]| {
        Some(
            GrantConstraints::builder()
                .set_encryption_context_equals(Some(ctx(pairs)))
                .build(),
        )
    };
    child(vec![G::Decrypt], subset(&[("purpose", "containers")]))
        .await
        .expect("the same operations and constraint");
    child(
        vec![G::Decrypt, G::Encrypt],
        subset(&[("purpose", "containers"), ("team", "blue")]),
    )
    .await
    .expect("a stricter subset");
    child(vec![G::Decrypt], equals(&[("purpose", "containers")]))
        .await
        .expect("an Equals constraint that includes the subset");
    for (what, ops, c) in [
        ("no constraint", vec![G::Decrypt], None),
        (
            "a wider operation",
            vec![G::GenerateDataKey],
            subset(&[("purpose", "containers")]),
        ),
        (
            "another context",
            vec![G::Decrypt],
            subset(&[("purpose", "other")]),
        ),
        (
            "an Equals of other pairs",
            vec![G::Decrypt],
            equals(&[("team", "blue")]),
        ),
    ] {
        assert_eq!(code(child(ops, c).await), "AccessDeniedException", "{what}");
    }
}

/// A real second process that will not refresh by itself for 10 minutes honours a grant
/// made here at once, through its grant token; without the token it does not know it yet.
#[test]
fn another_process_honours_a_grant_token_at_once() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // The key exists before the other process starts, so it knows the key; the grant is
    // made after.
    let (id, _) = rt.block_on(key_with(Some(&admin_only_policy())));
    let reader_cred = server_process::Cred::new(READER.id, SECRET, "reader");
    let srv = server_process::start(&server_process::Options {
        credentials: vec![server_process::Cred::dev(), reader_cred.clone()],
        top: "metadata_refresh_ms = 600000".into(),
        ..Default::default()
    });
    let reader = srv.client(&reader_cred);
    let grant = rt
        .block_on(
            admin()
                .create_grant()
                .key_id(&id)
                .grantee_principal(READER.arn)
                .operations(aws_sdk_kms::types::GrantOperation::GenerateDataKeyWithoutPlaintext)
                .send(),
        )
        .expect("grant made through this process");
    // The AWS error code, or "ok".
    let gdk = |tokens: Option<Vec<String>>| -> String {
        match rt.block_on(
            reader
                .generate_data_key_without_plaintext()
                .key_id(&id)
                .key_spec(DataKeySpec::Aes256)
                .set_grant_tokens(tokens)
                .send(),
        ) {
            Ok(_) => "ok".into(),
            Err(e) => e.code().unwrap_or("no code").to_owned(),
        }
    };
    assert_eq!(
        gdk(None),
        "AccessDeniedException",
        "without its token the other process has not seen the grant"
    );
    assert_eq!(
        gdk(Some(vec![grant.grant_token().expect("token").to_owned()])),
        "ok",
        "with the grant token it is in force at once"
    );
    assert_eq!(
        gdk(None),
        "ok",
        "and once seen, it stays in force without the token"
    );
    drop(srv);
}
