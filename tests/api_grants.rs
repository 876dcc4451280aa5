//! Grants through the real `aws-sdk-kms` client against the in-process server: every grant
//! operation's happy path, its main AWS errors, and who may retire a grant.

mod api_support;
mod common;
mod sdk;

use sdk::code;

use api_support::{server, REGION, RESTRICTED_ARN};
use aws_sdk_kms::types::{GrantConstraints, GrantOperation, KeySpec, KeyUsageType};
use aws_sdk_kms::Client;

const DEV_ARN: &str = "arn:aws:iam::111122223333:user/dev";

fn client() -> Client {
    let (id, secret) = common::dev_credentials();
    sdk::client(&server().endpoint, REGION, &id, &secret, None)
}

fn restricted_client() -> Client {
    sdk::client(
        &server().endpoint,
        REGION,
        api_support::RESTRICTED_ID,
        api_support::RESTRICTED_SECRET,
        None,
    )
}

async fn new_key(c: &Client) -> (String, String) {
    let m = c
        .create_key()
        .send()
        .await
        .expect("create key")
        .key_metadata
        .expect("metadata");
    (m.key_id, m.arn.expect("arn"))
}

fn user(name: &str) -> String {
    format!("arn:aws:iam::111122223333:user/{name}")
}

#[tokio::test]
async fn every_grant_operation_through_the_sdk() {
    let c = client();
    let (id, arn) = new_key(&c).await;
    let reader = user("sdk-reader");
    let retirer = user(&format!("sdk-retirer-{}", &id[..8]));
    let created = c
        .create_grant()
        .key_id(&arn)
        .grantee_principal(&reader)
        .retiring_principal(&retirer)
        .operations(GrantOperation::Decrypt)
        .operations(GrantOperation::GenerateDataKeyWithoutPlaintext)
        .constraints(
            GrantConstraints::builder()
                .encryption_context_subset("purpose", "read")
                .build(),
        )
        .name("sdk-grant")
        .send()
        .await
        .expect("create grant");
    let grant_id = created.grant_id().expect("GrantId").to_owned();
    let token = created.grant_token().expect("GrantToken").to_owned();
    assert_eq!(grant_id.len(), 64);

    // The same Name and parameters: the same grant.
    let again = c
        .create_grant()
        .key_id(&id)
        .grantee_principal(&reader)
        .retiring_principal(&retirer)
        .operations(GrantOperation::GenerateDataKeyWithoutPlaintext)
        .operations(GrantOperation::Decrypt)
        .constraints(
            GrantConstraints::builder()
                .encryption_context_subset("purpose", "read")
                .build(),
        )
        .name("sdk-grant")
        .send()
        .await
        .expect("create grant again");
    assert_eq!(again.grant_id(), Some(grant_id.as_str()));

    let second = c
        .create_grant()
        .key_id(&id)
        .grantee_principal(user("sdk-other"))
        .retiring_principal(&retirer)
        .operations(GrantOperation::Encrypt)
        .send()
        .await
        .expect("second grant");
    let third = c
        .create_grant()
        .key_id(&id)
        .grantee_principal(user("sdk-other"))
        .operations(GrantOperation::DescribeKey)
        .send()
        .await
        .expect("third grant");

    // ListGrants, a page at a time.
    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let page = c
            .list_grants()
            .key_id(&id)
            .limit(1)
            .set_marker(marker.clone())
            .send()
            .await
            .expect("list grants");
        assert!(page.grants().len() <= 1);
        seen.extend(page.grants().iter().cloned());
        if !page.truncated() {
            break;
        }
        marker = page.next_marker().map(str::to_owned);
        assert!(seen.len() < 10);
    }
    assert_eq!(seen.len(), 3);
    let g = seen
        .iter()
        .find(|g| g.grant_id() == Some(grant_id.as_str()))
        .expect("the first grant");
    assert_eq!(g.key_id(), Some(arn.as_str()));
    assert_eq!(g.name(), Some("sdk-grant"));
    assert_eq!(g.grantee_principal(), Some(reader.as_str()));
    assert_eq!(g.retiring_principal(), Some(retirer.as_str()));
    assert_eq!(g.issuing_account(), Some("arn:aws:iam::111122223333:root"));
    assert!(g.creation_date().is_some());
    let ops = g.operations();
    assert!(ops.contains(&GrantOperation::Decrypt));
    assert!(ops.contains(&GrantOperation::GenerateDataKeyWithoutPlaintext));
    let constraints = g.constraints().expect("Constraints");
    assert_eq!(
        constraints
            .encryption_context_subset()
            .and_then(|m| m.get("purpose"))
            .map(String::as_str),
        Some("read")
    );
    assert!(constraints.encryption_context_equals().is_none());
    let filtered = c
        .list_grants()
        .key_id(&id)
        .grantee_principal(user("sdk-other"))
        .send()
        .await
        .unwrap();
    assert_eq!(filtered.grants().len(), 2);
    let by_id = c
        .list_grants()
        .key_id(&id)
        .grant_id(&grant_id)
        .send()
        .await
        .unwrap();
    assert_eq!(by_id.grants().len(), 1);

    // ListRetirableGrants.
    let retirable = c
        .list_retirable_grants()
        .retiring_principal(&retirer)
        .send()
        .await
        .expect("list retirable grants");
    assert_eq!(retirable.grants().len(), 2);
    assert!(!retirable.truncated());

    // RetireGrant by token; by key ARN and grant id; RevokeGrant.
    c.retire_grant()
        .grant_token(&token)
        .send()
        .await
        .expect("retire by token");
    c.retire_grant()
        .key_id(&arn)
        .grant_id(second.grant_id().unwrap())
        .send()
        .await
        .expect("retire by key ARN and grant id");
    c.revoke_grant()
        .key_id(&id)
        .grant_id(third.grant_id().unwrap())
        .send()
        .await
        .expect("revoke");
    let left = c.list_grants().key_id(&id).send().await.unwrap();
    assert!(left.grants().is_empty());
    assert!(!left.truncated());
}

#[tokio::test]
async fn grant_errors_as_aws_names_them() {
    let c = client();
    let (id, arn) = new_key(&c).await;
    let reader = user("err-reader");
    let sign = c
        .create_key()
        .key_spec(KeySpec::EccNistP256)
        .key_usage(KeyUsageType::SignVerify)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id;

    // ValidationException: an operation the key does not support, a constraint it cannot
    // take, no operations.
    assert_eq!(
        code(
            c.create_grant()
                .key_id(&id)
                .grantee_principal(&reader)
                .operations(GrantOperation::Sign)
                .send()
                .await
        ),
        "ValidationException"
    );
    assert_eq!(
        code(
            c.create_grant()
                .key_id(&sign)
                .grantee_principal(&reader)
                .operations(GrantOperation::Sign)
                .constraints(
                    GrantConstraints::builder()
                        .encryption_context_equals("a", "b")
                        .build()
                )
                .send()
                .await
        ),
        "ValidationException"
    );
    assert_eq!(
        code(
            c.create_grant()
                .key_id(&id)
                .grantee_principal(&reader)
                .send()
                .await
        ),
        "ValidationException"
    );
    // NotFoundException: no such key; an alias where a key id or ARN is needed.
    assert_eq!(
        code(
            c.create_grant()
                .key_id("1234abcd-12ab-34cd-56ef-1234567890ab")
                .grantee_principal(&reader)
                .operations(GrantOperation::Decrypt)
                .send()
                .await
        ),
        "NotFoundException"
    );
    assert_eq!(
        code(
            c.create_grant()
                .key_id("alias/whatever")
                .grantee_principal(&reader)
                .operations(GrantOperation::Decrypt)
                .send()
                .await
        ),
        "NotFoundException"
    );
    assert_eq!(
        code(
            c.create_grant()
                .key_id(&id)
                .grantee_principal("not-an-arn")
                .operations(GrantOperation::Decrypt)
                .send()
                .await
        ),
        "InvalidArnException"
    );
    // DryRunOperationException, and nothing was made.
    assert_eq!(
        code(
            c.create_grant()
                .key_id(&id)
                .grantee_principal(&reader)
                .operations(GrantOperation::Decrypt)
                .dry_run(true)
                .send()
                .await
        ),
        "DryRunOperationException"
    );
    assert!(c
        .list_grants()
        .key_id(&id)
        .send()
        .await
        .unwrap()
        .grants()
        .is_empty());
    let g = c
        .create_grant()
        .key_id(&id)
        .grantee_principal(&reader)
        .operations(GrantOperation::Decrypt)
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(
            c.revoke_grant()
                .key_id(&id)
                .grant_id(g.grant_id().unwrap())
                .dry_run(true)
                .send()
                .await
        ),
        "DryRunOperationException"
    );
    assert_eq!(
        code(
            c.retire_grant()
                .grant_token(g.grant_token().unwrap())
                .dry_run(true)
                .send()
                .await
        ),
        "DryRunOperationException"
    );
    // InvalidGrantTokenException, InvalidGrantIdException, NotFoundException.
    assert_eq!(
        code(
            c.retire_grant()
                .grant_token("not-a-grant-token")
                .send()
                .await
        ),
        "InvalidGrantTokenException"
    );
    assert_eq!(
        code(c.retire_grant().key_id(&arn).grant_id("short").send().await),
        "InvalidGrantIdException"
    );
    assert_eq!(
        code(
            c.revoke_grant()
                .key_id(&id)
                .grant_id("0".repeat(64))
                .send()
                .await
        ),
        "NotFoundException"
    );
    // InvalidMarkerException; a Limit out of range.
    assert_eq!(
        code(c.list_grants().key_id(&id).marker("nope").send().await),
        "InvalidMarkerException"
    );
    assert_eq!(
        code(c.list_grants().key_id(&id).limit(101).send().await),
        "ValidationException"
    );
    assert_eq!(
        code(
            c.list_retirable_grants()
                .retiring_principal(DEV_ARN)
                .marker("nope")
                .send()
                .await
        ),
        "InvalidMarkerException"
    );
    // The grant is still there after all of that.
    let left = c.list_grants().key_id(&id).send().await.unwrap();
    assert_eq!(left.grants().len(), 1);
}

/// The grant decides who retires it: its retiring principal or a grantee it allows
/// RetireGrant, whatever their own permissions; anyone else needs the issuing account and
/// the permission. The restricted principal may not call CreateGrant, ListGrants,
/// RevokeGrant at all.
#[tokio::test]
async fn who_may_retire_a_grant() {
    let c = client();
    let r = restricted_client();
    let (id, _) = new_key(&c).await;
    let make = |grantee: &str, retiring: Option<&str>, ops: &[GrantOperation]| {
        let mut b = c
            .create_grant()
            .key_id(&id)
            .grantee_principal(grantee)
            .set_retiring_principal(retiring.map(str::to_owned));
        for o in ops {
            b = b.operations(o.clone());
        }
        b.send()
    };
    let as_retiring = make(&user("x"), Some(RESTRICTED_ARN), &[GrantOperation::Decrypt])
        .await
        .unwrap();
    let as_grantee = make(
        RESTRICTED_ARN,
        None,
        &[GrantOperation::Decrypt, GrantOperation::RetireGrant],
    )
    .await
    .unwrap();
    let neither = make(RESTRICTED_ARN, None, &[GrantOperation::Decrypt])
        .await
        .unwrap();

    r.retire_grant()
        .grant_token(as_retiring.grant_token().unwrap())
        .send()
        .await
        .expect("the retiring principal retires");
    r.retire_grant()
        .grant_token(as_grantee.grant_token().unwrap())
        .send()
        .await
        .expect("a grantee allowed RetireGrant retires");
    // Same account, but without kms:RetireGrant on the key.
    assert_eq!(
        code(
            r.retire_grant()
                .grant_token(neither.grant_token().unwrap())
                .send()
                .await
        ),
        "AccessDeniedException"
    );
    // The issuing account's principal with the permission (dev: every action).
    c.retire_grant()
        .grant_token(neither.grant_token().unwrap())
        .send()
        .await
        .expect("the issuing account retires");
    for e in [
        code(
            r.create_grant()
                .key_id(&id)
                .grantee_principal(RESTRICTED_ARN)
                .operations(GrantOperation::Decrypt)
                .send()
                .await,
        ),
        code(r.list_grants().key_id(&id).send().await),
        code(
            r.revoke_grant()
                .key_id(&id)
                .grant_id("0".repeat(64))
                .send()
                .await,
        ),
    ] {
        assert_eq!(e, "AccessDeniedException");
    }
}
