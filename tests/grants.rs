//! Grants against a real token (SoftHSM, or Kryoptic with `P11KMS_TEST_TOKEN=kryoptic`):
//! CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant through the library,
//! their AWS errors and limits, what a crash leaves, grants going with their key, and grant
//! tokens taking effect at once in another process.

mod common;
mod sdk;
mod server_process;

use std::collections::{BTreeMap, HashSet};

use aws_sdk_kms::error::ProvideErrorMetadata;
use p11kms::kms::types::*;
use p11kms::kms::{EncryptionContext, GrantOperation, KeyId, Kms};
use p11kms::KmsError;

const ACCOUNT: &str = "111122223333";

fn kms() -> &'static Kms {
    common::kms()
}

fn user(name: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:user/{name}")
}

fn ops(v: &[&str]) -> Option<Vec<String>> {
    Some(v.iter().map(|s| s.to_string()).collect())
}

fn ctx(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn grant_req(key: &str, grantee: &str, operations: &[&str]) -> CreateGrantRequest {
    CreateGrantRequest {
        key_id: Some(key.into()),
        grantee_principal: Some(grantee.into()),
        operations: ops(operations),
        ..Default::default()
    }
}

fn create(req: CreateGrantRequest) -> CreateGrantResponse {
    kms().create_grant(req, ACCOUNT).expect("create grant")
}

fn name<T: std::fmt::Debug>(r: Result<T, KmsError>) -> &'static str {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.aws_name(),
    }
}

fn list(key: &str) -> Vec<GrantListEntry> {
    kms()
        .list_grants(ListGrantsRequest {
            key_id: Some(key.into()),
            limit: Some(100),
            ..Default::default()
        })
        .expect("list grants")
        .grants
}

fn key_of(spec: &str, usage: &str) -> String {
    kms()
        .create_key(CreateKeyRequest {
            key_spec: Some(spec.into()),
            key_usage: Some(usage.into()),
            ..Default::default()
        })
        .expect("create key")
        .key_metadata
        .key_id
}

fn id(key: &str) -> KeyId {
    key.parse().expect("key id")
}

/// Labels of the grant objects in the token now.
fn grant_objects() -> Vec<String> {
    kms()
        .token()
        .list_data(p11kms::kms::APPLICATION)
        .expect("list data objects")
        .into_iter()
        .map(|o| o.label)
        .filter(|l| l.starts_with("p11kms:grant:"))
        .collect()
}

#[test]
fn create_list_and_paginate() {
    let key = common::new_key();
    let arn = kms().scope().key_arn(&id(&key));
    let mut made = HashSet::new();
    for i in 0..7 {
        let grantee = if i < 5 { user("reader") } else { user("other") };
        let r = create(CreateGrantRequest {
            retiring_principal: Some(user("admin")),
            name: (i == 0).then(|| "first-grant".to_string()),
            constraints: (i == 1).then(|| GrantConstraints {
                encryption_context_subset: Some(ctx(&[("purpose", "read")])),
                ..Default::default()
            }),
            ..grant_req(&arn, &grantee, &["Decrypt", "DescribeKey", "Decrypt"])
        });
        assert_eq!(r.grant_id.len(), 64);
        assert!(r.grant_id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!r.grant_token.is_empty());
        made.insert(r.grant_id);
    }
    assert_eq!(made.len(), 7);

    let all = list(&key);
    assert_eq!(all.len(), 7);
    let first = all
        .iter()
        .find(|g| g.name.as_deref() == Some("first-grant"))
        .expect("the named grant");
    assert_eq!(first.key_id, arn, "KeyId is the key ARN");
    assert_eq!(
        first.issuing_account,
        format!("arn:aws:iam::{ACCOUNT}:root")
    );
    assert_eq!(
        first.retiring_principal.as_deref(),
        Some(user("admin").as_str())
    );
    assert_eq!(
        first.operations,
        vec![GrantOperation::Decrypt, GrantOperation::DescribeKey],
        "sorted, without duplicates"
    );
    assert!(first.creation_date > 1.6e9);
    let wire = serde_json::to_value(first).unwrap();
    for member in [
        "KeyId",
        "GrantId",
        "Name",
        "CreationDate",
        "GranteePrincipal",
        "RetiringPrincipal",
        "IssuingAccount",
        "Operations",
    ] {
        assert!(wire.get(member).is_some(), "{member} in {wire}");
    }
    assert!(wire.get("Constraints").is_none());
    let constrained = all.iter().find(|g| g.constraints.is_some()).unwrap();
    let c = serde_json::to_value(constrained).unwrap();
    assert_eq!(
        c["Constraints"]["EncryptionContextSubset"]["purpose"],
        "read"
    );
    assert!(c["Constraints"].get("EncryptionContextEquals").is_none());

    // Pages of 3, in a stable order, each grant once.
    let mut seen = Vec::new();
    let mut marker = None;
    let mut pages = 0;
    loop {
        let page = kms()
            .list_grants(ListGrantsRequest {
                key_id: Some(key.clone().into()),
                limit: Some(3),
                marker: marker.clone(),
                ..Default::default()
            })
            .unwrap();
        pages += 1;
        assert!(page.grants.len() <= 3);
        seen.extend(page.grants.into_iter().map(|g| g.grant_id));
        if !page.truncated {
            assert!(page.next_marker.is_none());
            break;
        }
        marker = page.next_marker;
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), made);
    assert_eq!(seen.len(), 7);

    // Filters.
    let mine = kms()
        .list_grants(ListGrantsRequest {
            key_id: Some(key.clone().into()),
            grantee_principal: Some(user("other")),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(mine.grants.len(), 2);
    let one = kms()
        .list_grants(ListGrantsRequest {
            key_id: Some(key.clone().into()),
            grant_id: Some(first.grant_id.clone()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(one.grants.len(), 1);
    assert_eq!(one.grants[0].grant_id, first.grant_id);

    // Errors.
    let lg = |f: fn(&mut ListGrantsRequest)| {
        let mut r = ListGrantsRequest {
            key_id: Some(key.clone().into()),
            ..Default::default()
        };
        f(&mut r);
        kms().list_grants(r)
    };
    assert_eq!(
        name(lg(|r| r.marker = Some("bogus".into()))),
        "InvalidMarkerException"
    );
    assert_eq!(name(lg(|r| r.limit = Some(101))), "ValidationException");
    assert_eq!(name(lg(|r| r.limit = Some(0))), "ValidationException");
    assert_eq!(
        name(lg(|r| r.grant_id = Some("x".into()))),
        "InvalidGrantIdException"
    );
    assert_eq!(name(lg(|r| r.key_id = None)), "ValidationException");
    assert_eq!(
        name(lg(|r| r.key_id = Some("alias/none".into()))),
        "NotFoundException"
    );
    assert_eq!(
        name(lg(
            |r| r.key_id = Some(KeyId::new_random().to_string().into())
        )),
        "NotFoundException"
    );

    // ListRetirableGrants: every key's grants of that retiring principal.
    let admin = user(&format!("admin-{}", &key[..8]));
    let other_key = common::new_key();
    for k in [&key, &other_key] {
        create(CreateGrantRequest {
            retiring_principal: Some(admin.clone()),
            ..grant_req(k, &user("reader"), &["Encrypt"])
        });
    }
    let mut retirable = Vec::new();
    let mut marker = None;
    loop {
        let page = kms()
            .list_retirable_grants(ListRetirableGrantsRequest {
                retiring_principal: Some(admin.clone()),
                limit: Some(1),
                marker: marker.clone(),
                ..Default::default()
            })
            .unwrap();
        retirable.extend(page.grants);
        if !page.truncated {
            break;
        }
        marker = page.next_marker;
        assert!(retirable.len() < 5);
    }
    let keys: HashSet<String> = retirable.iter().map(|g| g.key_id.clone()).collect();
    assert_eq!(retirable.len(), 2);
    assert_eq!(keys.len(), 2);
    let lr = |p: Option<&str>, m: Option<&str>| {
        kms().list_retirable_grants(ListRetirableGrantsRequest {
            retiring_principal: p.map(Into::into),
            marker: m.map(Into::into),
            ..Default::default()
        })
    };
    assert_eq!(name(lr(None, None)), "ValidationException");
    assert_eq!(name(lr(Some("nope"), None)), "InvalidArnException");
    assert_eq!(name(lr(Some(&admin), Some("zz"))), "InvalidMarkerException");
}

#[test]
fn create_grant_refuses_what_aws_refuses() {
    let key = common::new_key();
    let sign = key_of("ECC_NIST_P256", "SIGN_VERIFY");
    let hmac = key_of("HMAC_256", "GENERATE_VERIFY_MAC");
    let reader = user("reader");
    let try_create = |req: CreateGrantRequest| kms().create_grant(req, ACCOUNT);
    let cases: Vec<(CreateGrantRequest, &str)> = vec![
        (
            CreateGrantRequest {
                key_id: None,
                ..grant_req(&key, &reader, &["Decrypt"])
            },
            "ValidationException",
        ),
        (
            CreateGrantRequest {
                grantee_principal: None,
                ..grant_req(&key, &reader, &["Decrypt"])
            },
            "ValidationException",
        ),
        (
            CreateGrantRequest {
                operations: None,
                ..grant_req(&key, &reader, &[])
            },
            "ValidationException",
        ),
        (grant_req(&key, &reader, &[]), "ValidationException"),
        (
            grant_req(&key, &reader, &["Frobnicate"]),
            "ValidationException",
        ),
        // Operations the key does not support.
        (grant_req(&key, &reader, &["Sign"]), "ValidationException"),
        (
            grant_req(&key, &reader, &["GetPublicKey"]),
            "ValidationException",
        ),
        (
            grant_req(&sign, &reader, &["Decrypt"]),
            "ValidationException",
        ),
        (
            grant_req(&sign, &reader, &["GenerateDataKey"]),
            "ValidationException",
        ),
        (grant_req(&hmac, &reader, &["Sign"]), "ValidationException"),
        (
            grant_req(&key, &reader, &["GenerateMac"]),
            "ValidationException",
        ),
        // Constraints: only on operations that take an encryption context; one kind.
        (
            CreateGrantRequest {
                constraints: Some(GrantConstraints {
                    encryption_context_equals: Some(ctx(&[("a", "b")])),
                    ..Default::default()
                }),
                ..grant_req(&sign, &reader, &["Sign"])
            },
            "ValidationException",
        ),
        (
            CreateGrantRequest {
                constraints: Some(GrantConstraints {
                    encryption_context_equals: Some(ctx(&[("a", "b")])),
                    encryption_context_subset: Some(ctx(&[("a", "b")])),
                    ..Default::default()
                }),
                ..grant_req(&key, &reader, &["Decrypt"])
            },
            "ValidationException",
        ),
        (
            CreateGrantRequest {
                constraints: Some(GrantConstraints {
                    encryption_context_subset: Some(
                        (0..9).map(|i| (format!("k{i}"), "v".to_string())).collect(),
                    ),
                    ..Default::default()
                }),
                ..grant_req(&key, &reader, &["Decrypt"])
            },
            "ValidationException",
        ),
        (
            CreateGrantRequest {
                constraints: Some(GrantConstraints {
                    source_arn: Some("arn:aws:s3:::bucket".into()),
                    ..Default::default()
                }),
                ..grant_req(&key, &reader, &["Decrypt"])
            },
            "UnsupportedOperationException",
        ),
        (
            CreateGrantRequest {
                grantee_service_principal: Some("s3.amazonaws.com".into()),
                ..grant_req(&key, &reader, &["Decrypt"])
            },
            "UnsupportedOperationException",
        ),
        // Names and principals.
        (
            CreateGrantRequest {
                name: Some("has space".into()),
                ..grant_req(&key, &reader, &["Decrypt"])
            },
            "ValidationException",
        ),
        (
            grant_req(&key, "not an arn", &["Decrypt"]),
            "ValidationException",
        ),
        (grant_req(&key, "bob", &["Decrypt"]), "InvalidArnException"),
        (
            CreateGrantRequest {
                retiring_principal: Some("arn:aws:kms:us-east-2:111122223333:key/x".into()),
                ..grant_req(&key, &reader, &["Decrypt"])
            },
            "InvalidArnException",
        ),
        (
            CreateGrantRequest {
                grant_tokens: Some(vec!["t".into(); 11]),
                ..grant_req(&key, &reader, &["Decrypt"])
            },
            "ValidationException",
        ),
        // Keys: id or ARN only.
        (
            grant_req("alias/some-alias", &reader, &["Decrypt"]),
            "NotFoundException",
        ),
        (
            grant_req(&KeyId::new_random().to_string(), &reader, &["Decrypt"]),
            "NotFoundException",
        ),
        // DryRun: it would have succeeded.
        (
            CreateGrantRequest {
                dry_run: Some(true),
                ..grant_req(&key, &reader, &["Decrypt"])
            },
            "DryRunOperationException",
        ),
    ];
    for (req, want) in cases {
        let shown = format!("{req:?}");
        assert_eq!(name(try_create(req)), want, "{shown}");
    }
    // No refused request wrote anything (a fresh open reads the token itself).
    let fresh = common::fresh_kms();
    for k in [&key, &sign, &hmac] {
        assert!(list(k).is_empty());
        let seen = fresh
            .list_grants(ListGrantsRequest {
                key_id: Some(k.as_str().into()),
                ..Default::default()
            })
            .unwrap();
        assert!(seen.grants.is_empty(), "{seen:?}");
    }

    // What each key type does take.
    create(grant_req(
        &sign,
        &reader,
        &["Sign", "Verify", "GetPublicKey", "DescribeKey"],
    ));
    create(grant_req(
        &hmac,
        &reader,
        &["GenerateMac", "VerifyMac", "RetireGrant"],
    ));
    create(CreateGrantRequest {
        constraints: Some(GrantConstraints {
            encryption_context_subset: Some(ctx(&[("a", "b")])),
            ..Default::default()
        }),
        ..grant_req(&sign, &reader, &["DescribeKey", "CreateGrant"])
    });
    create(grant_req(
        &key,
        &reader,
        &[
            "Encrypt",
            "Decrypt",
            "ReEncryptFrom",
            "ReEncryptTo",
            "GenerateDataKey",
            "GenerateDataKeyWithoutPlaintext",
            "GenerateDataKeyPair",
            "GenerateDataKeyPairWithoutPlaintext",
            "CreateGrant",
            "RetireGrant",
            "DescribeKey",
        ],
    ));
}

#[test]
fn a_name_makes_a_retry_return_the_same_grant() {
    let key = common::new_key();
    let req = CreateGrantRequest {
        name: Some("retry-me".into()),
        retiring_principal: Some(user("admin")),
        constraints: Some(GrantConstraints {
            encryption_context_equals: Some(ctx(&[("k", "v")])),
            ..Default::default()
        }),
        ..grant_req(&key, &user("reader"), &["Encrypt", "Decrypt"])
    };
    let a = create(req.clone());
    let b = create(CreateGrantRequest {
        // The same set of operations, in another order.
        operations: ops(&["Decrypt", "Encrypt"]),
        ..req.clone()
    });
    assert_eq!(a.grant_id, b.grant_id, "the same grant");
    assert_ne!(a.grant_token, b.grant_token, "a token per call");
    assert_eq!(list(&key).len(), 1);
    // A DryRun of the retry would succeed too.
    let dry = kms().create_grant(
        CreateGrantRequest {
            dry_run: Some(true),
            ..req.clone()
        },
        ACCOUNT,
    );
    assert_eq!(name(dry), "DryRunOperationException");
    // Other parameters, or no name: another grant.
    let c = create(CreateGrantRequest {
        operations: ops(&["Decrypt"]),
        ..req.clone()
    });
    let d = create(CreateGrantRequest {
        name: None,
        ..req.clone()
    });
    assert_ne!(c.grant_id, a.grant_id);
    assert_ne!(d.grant_id, a.grant_id);
    assert_eq!(list(&key).len(), 3);
    // Both tokens of the first grant are good: one retires it, the other then finds nothing.
    kms()
        .retire_grant(RetireGrantRequest {
            grant_token: Some(b.grant_token.clone()),
            ..Default::default()
        })
        .expect("retire with the second token");
    let again = kms().retire_grant(RetireGrantRequest {
        grant_token: Some(a.grant_token.clone()),
        ..Default::default()
    });
    assert_eq!(name(again), "NotFoundException");
    assert_eq!(list(&key).len(), 2);
}

#[test]
fn retire_by_token_by_id_and_revoke() {
    let key = common::new_key();
    let arn = kms().scope().key_arn(&id(&key));
    let g = |ops_: &[&str]| create(grant_req(&key, &user("reader"), ops_));
    let (a, b, c) = (g(&["Decrypt"]), g(&["Encrypt"]), g(&["DescribeKey"]));
    let ours = |all: Vec<String>| -> Vec<String> {
        let mut v: Vec<String> = all
            .into_iter()
            .filter(|l| [&a, &b, &c].iter().any(|g| l.contains(&g.grant_id)))
            .collect();
        v.sort();
        v
    };
    let objects = ours(grant_objects());
    assert_eq!(objects.len(), 3);

    // Malformed or forged tokens, unknown ids, missing members.
    let retire = |r: RetireGrantRequest| kms().retire_grant(r);
    let by_token = |t: &str| RetireGrantRequest {
        grant_token: Some(t.into()),
        ..Default::default()
    };
    assert_eq!(
        name(retire(by_token("garbage"))),
        "InvalidGrantTokenException"
    );
    assert_eq!(name(retire(by_token(""))), "ValidationException");
    assert_eq!(
        name(retire(by_token(&"a".repeat(8193)))),
        "ValidationException"
    );
    let mut forged = a.grant_token.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(
        name(retire(by_token(&forged))),
        "InvalidGrantTokenException"
    );
    assert_eq!(
        name(retire(RetireGrantRequest::default())),
        "ValidationException"
    );
    assert_eq!(
        name(retire(RetireGrantRequest {
            grant_id: Some(a.grant_id.clone()),
            ..Default::default()
        })),
        "ValidationException"
    );
    assert_eq!(
        name(retire(RetireGrantRequest {
            key_id: Some(arn.clone().into()),
            grant_id: Some("123".into()),
            ..Default::default()
        })),
        "InvalidGrantIdException"
    );
    assert_eq!(
        name(retire(RetireGrantRequest {
            key_id: Some(arn.clone().into()),
            grant_id: Some("0".repeat(64)),
            ..Default::default()
        })),
        "NotFoundException"
    );
    // A token with another grant's id beside it.
    assert_eq!(
        name(retire(RetireGrantRequest {
            grant_token: Some(a.grant_token.clone()),
            grant_id: Some(b.grant_id.clone()),
            ..Default::default()
        })),
        "ValidationException"
    );
    // DryRun: would succeed, changes nothing.
    assert_eq!(
        name(retire(RetireGrantRequest {
            dry_run: Some(true),
            ..by_token(&a.grant_token)
        })),
        "DryRunOperationException"
    );
    assert_eq!(
        name(kms().revoke_grant(RevokeGrantRequest {
            key_id: Some(key.clone().into()),
            grant_id: Some(c.grant_id.clone()),
            dry_run: Some(true),
        })),
        "DryRunOperationException"
    );
    assert_eq!(ours(grant_objects()), objects);
    assert_eq!(list(&key).len(), 3);

    // By token; by key ARN and grant id; revoked by key id and grant id.
    retire(by_token(&a.grant_token)).expect("retire by token");
    retire(RetireGrantRequest {
        key_id: Some(arn.clone().into()),
        grant_id: Some(b.grant_id.clone()),
        ..Default::default()
    })
    .expect("retire by key and grant id");
    kms()
        .revoke_grant(RevokeGrantRequest {
            key_id: Some(key.clone().into()),
            grant_id: Some(c.grant_id.clone()),
            dry_run: None,
        })
        .expect("revoke");
    assert!(list(&key).is_empty());
    let left: Vec<String> = grant_objects()
        .into_iter()
        .filter(|l| [&a, &b, &c].iter().any(|g| l.contains(&g.grant_id)))
        .collect();
    assert!(
        left.is_empty(),
        "grant and tombstone objects destroyed: {left:?}"
    );

    // Gone is gone.
    let revoke = |k: &str, g: &str| {
        kms().revoke_grant(RevokeGrantRequest {
            key_id: Some(k.into()),
            grant_id: Some(g.into()),
            dry_run: None,
        })
    };
    assert_eq!(name(revoke(&key, &c.grant_id)), "NotFoundException");
    assert_eq!(name(revoke(&key, "nope")), "InvalidGrantIdException");
    assert_eq!(name(revoke("alias/x", &c.grant_id)), "NotFoundException");
    // A grant revoked through another key is not found there.
    let other = common::new_key();
    let d = create(grant_req(&key, &user("reader"), &["Decrypt"]));
    assert_eq!(name(revoke(&other, &d.grant_id)), "NotFoundException");
    assert_eq!(list(&key).len(), 1);
    // A fresh process sees what is left.
    let fresh = common::fresh_kms();
    let seen = fresh
        .list_grants(ListGrantsRequest {
            key_id: Some(key.clone().into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(seen.grants.len(), 1);
    assert_eq!(seen.grants[0].grant_id, d.grant_id);
}

#[test]
fn key_states_and_deletion() {
    let key = common::new_key();
    kms().disable_key(common::key_req(&key)).unwrap();
    let g = create(grant_req(&key, &user("reader"), &["Decrypt"]));
    kms().enable_key(common::key_req(&key)).unwrap();
    create(grant_req(&key, &user("reader"), &["Encrypt"]));
    kms()
        .schedule_key_deletion(ScheduleKeyDeletionRequest {
            key_id: Some(key.clone().into()),
            pending_window_in_days: Some(7),
        })
        .unwrap();
    assert_eq!(
        name(kms().create_grant(grant_req(&key, &user("reader"), &["Decrypt"]), ACCOUNT)),
        "KMSInvalidStateException"
    );
    assert_eq!(list(&key).len(), 2, "listed in any state");
    let ids: Vec<String> = list(&key).into_iter().map(|g| g.grant_id).collect();
    assert!(ids.contains(&g.grant_id));

    // Past its deletion date the key goes, and its grants with it.
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 8 * 86_400_000;
    let swept = kms().sweep_deletions_at(later).unwrap();
    assert!(swept.contains(&id(&key)));
    let left: Vec<String> = grant_objects()
        .into_iter()
        .filter(|l| ids.iter().any(|g| l.contains(g)))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        name(kms().retire_grant(RetireGrantRequest {
            grant_token: Some(g.grant_token),
            ..Default::default()
        })),
        "NotFoundException"
    );
    assert!(!kms().grant_allows(
        id(&key),
        &user("reader"),
        GrantOperation::Decrypt,
        None,
        &[]
    ));
}

#[test]
fn grants_per_key_are_limited() {
    // An own service: the limit must not reach the other tests' grants.
    let own = common::fresh_kms();
    own.set_grants_per_key_limit(3);
    let key = common::new_key();
    let make = |i: usize| {
        own.create_grant(
            grant_req(&key, &user(&format!("u{i}")), &["Decrypt"]),
            ACCOUNT,
        )
    };
    own.refresh().unwrap();
    let made: Vec<CreateGrantResponse> =
        (0..3).map(|i| make(i).expect("within the limit")).collect();
    assert_eq!(name(make(3)), "LimitExceededException");
    // Retiring one makes room.
    own.retire_grant(RetireGrantRequest {
        grant_token: Some(made[0].grant_token.clone()),
        ..Default::default()
    })
    .unwrap();
    make(4).expect("room again");
    assert_eq!(name(make(5)), "LimitExceededException");
    assert_eq!(p11kms::kms::MAX_GRANTS_PER_KEY, 50_000);
}

#[test]
fn grants_allow_their_grantee_their_operations_under_their_constraints() {
    let key = common::new_key();
    let k = id(&key);
    let reader = user("allow-reader");
    create(CreateGrantRequest {
        constraints: Some(GrantConstraints {
            encryption_context_subset: Some(ctx(&[("purpose", "read")])),
            ..Default::default()
        }),
        ..grant_req(&key, &reader, &["Decrypt", "DescribeKey"])
    });
    create(CreateGrantRequest {
        constraints: Some(GrantConstraints {
            encryption_context_equals: Some(ctx(&[("tenant", "a")])),
            ..Default::default()
        }),
        ..grant_req(&key, &reader, &["GenerateDataKeyWithoutPlaintext"])
    });
    let c = |pairs: &[(&str, &str)]| EncryptionContext::new(ctx(pairs)).unwrap();
    let allows = |who: &str, op, context: Option<&EncryptionContext>| {
        kms().grant_allows(k, who, op, context, &[])
    };
    use GrantOperation as G;
    assert!(allows(
        &reader,
        G::Decrypt,
        Some(&c(&[("purpose", "read")]))
    ));
    assert!(allows(
        &reader,
        G::Decrypt,
        Some(&c(&[("Purpose", "read"), ("x", "y")]))
    ));
    assert!(!allows(
        &reader,
        G::Decrypt,
        Some(&c(&[("purpose", "write")]))
    ));
    assert!(!allows(&reader, G::Decrypt, None));
    assert!(
        allows(&reader, G::DescribeKey, None),
        "constraints do not apply"
    );
    assert!(!allows(
        &reader,
        G::Encrypt,
        Some(&c(&[("purpose", "read")]))
    ));
    assert!(!allows(
        &user("someone"),
        G::Decrypt,
        Some(&c(&[("purpose", "read")]))
    ));
    assert!(allows(
        &reader,
        G::GenerateDataKeyWithoutPlaintext,
        Some(&c(&[("tenant", "a")]))
    ));
    assert!(!allows(
        &reader,
        G::GenerateDataKeyWithoutPlaintext,
        Some(&c(&[("tenant", "a"), ("b", "c")]))
    ));
    assert!(!kms().grant_allows(KeyId::new_random(), &reader, G::DescribeKey, None, &[]));
    let view = kms()
        .grants_of_grantee(k, &reader, &[])
        .into_iter()
        .find(|g| g.operations.contains(&G::Decrypt))
        .expect("the reader's Decrypt grant");
    assert!(kms().grant(k, &view.grant_id.to_string()).is_some());
    assert!(kms()
        .grant(KeyId::new_random(), &view.grant_id.to_string())
        .is_none());
    assert!(kms().grant(k, "nope").is_none());
}

/// A second service over the token (what another process has): a grant created here
/// counts there at once when its token is presented, before any refresh, and only then.
#[test]
fn a_grant_token_takes_effect_at_once_in_another_service() {
    let other = common::fresh_kms();
    let key = common::new_key();
    let k = id(&key);
    let grantee = user("token-user");
    let g = create(grant_req(&key, &grantee, &["Encrypt"]));
    use GrantOperation as G;
    assert!(
        !other.grant_allows(k, &grantee, G::Encrypt, None, &[]),
        "not seen without a token before a refresh"
    );
    // Malformed, oversized or foreign tokens change nothing and cost no re-list.
    let junk = vec![
        "junk".to_string(),
        "x".repeat(9000),
        String::new(),
        g.grant_token[..g.grant_token.len() - 1].to_string(),
    ];
    assert!(!other.grant_allows(k, &grantee, G::Encrypt, None, &junk));
    let mut tokens = junk.clone();
    tokens.push(g.grant_token.clone());
    assert!(other.grant_allows(k, &grantee, G::Encrypt, None, &tokens));
    // Known there now, with or without its token; still only for its grantee and operation.
    assert!(other.grant_allows(k, &grantee, G::Encrypt, None, &[]));
    assert!(!other.grant_allows(
        k,
        &grantee,
        G::Decrypt,
        None,
        std::slice::from_ref(&g.grant_token)
    ));
    assert!(!other.grant_allows(
        k,
        &user("x"),
        G::Encrypt,
        None,
        std::slice::from_ref(&g.grant_token)
    ));
    // Retired there by its token: gone here after a refresh.
    other
        .retire_grant(RetireGrantRequest {
            grant_token: Some(g.grant_token.clone()),
            ..Default::default()
        })
        .unwrap();
    seen_within_refreshes(
        || {
            !kms().grant_allows(
                k,
                &grantee,
                G::Encrypt,
                None,
                std::slice::from_ref(&g.grant_token),
            )
        },
        "the retired grant is still in force here",
    );

    // A grant made in the other service: RetireGrant by its token works here at once.
    let h = other
        .create_grant(grant_req(&key, &grantee, &["Decrypt"]), ACCOUNT)
        .unwrap();
    kms()
        .retire_grant(RetireGrantRequest {
            grant_token: Some(h.grant_token),
            ..Default::default()
        })
        .expect("retired here through its token");
}

/// What a RetireGrant killed after its first step leaves (the tombstone written, the grant's
/// object not yet destroyed), planted by hand: the grant is gone for every process that opens
/// the token, and the grant's own object is swept; a grant whose value is torn is ignored.
#[test]
fn a_retire_interrupted_after_its_tombstone_leaves_the_grant_gone() {
    let key = common::new_key();
    let g = create(grant_req(&key, &user("crash"), &["Decrypt"]));
    let label = grant_objects()
        .into_iter()
        .find(|l| l.contains(&g.grant_id))
        .expect("the grant's object");
    let (prefix, _) = label.rsplit_once(':').unwrap();
    let (prefix, _) = prefix.rsplit_once(':').unwrap();
    // Its record value, read back, with `deleted_ms` set, under the next sequence number.
    let token = kms().token();
    let object = token
        .list_data_values(p11kms::kms::APPLICATION)
        .unwrap()
        .into_iter()
        .find(|(o, _)| o.label == label)
        .expect("value");
    let mut value: serde_json::Value = serde_json::from_slice(&object.1).unwrap();
    value["deleted_ms"] = serde_json::json!(1);
    let tombstone = format!("{prefix}:0000000002:ffffffff");
    token
        .create_data(
            p11kms::kms::APPLICATION,
            &tombstone,
            &serde_json::to_vec(&value).unwrap(),
        )
        .unwrap();
    // And a torn grant object with a still higher number: ignored.
    let torn = format!("{prefix}:0000000003:ffffffff");
    token
        .create_data(
            p11kms::kms::APPLICATION,
            &torn,
            b"{\"record\":\"grant_v1\",\"gr",
        )
        .unwrap();

    let fresh = common::fresh_kms();
    let listed = fresh
        .list_grants(ListGrantsRequest {
            key_id: Some(key.clone().into()),
            ..Default::default()
        })
        .unwrap();
    assert!(listed.grants.is_empty(), "{listed:?}");
    assert!(!fresh.grant_allows(id(&key), &user("crash"), GrantOperation::Decrypt, None, &[]));
    let left: Vec<String> = grant_objects()
        .into_iter()
        .filter(|l| l.contains(&g.grant_id))
        .collect();
    assert!(
        !left.contains(&label),
        "the superseded grant object is swept: {left:?}"
    );
    assert!(
        left.contains(&tombstone) && left.contains(&torn),
        "{left:?}"
    );
    assert_eq!(
        name(fresh.retire_grant(RetireGrantRequest {
            grant_token: Some(g.grant_token),
            ..Default::default()
        })),
        "NotFoundException"
    );
}

/// A real second process: `p11kms serve` that will not refresh by itself for 10 minutes.
/// It does not list a grant made here, yet retires it at once through its grant token.
#[test]
fn another_process_honours_a_grant_token_before_its_refresh() {
    let srv = server_process::start(&server_process::Options {
        credentials: vec![server_process::Cred::dev()],
        top: "metadata_refresh_ms = 600000".into(),
        ..Default::default()
    });
    let client = srv.client(&server_process::Cred::dev());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let key = common::new_key();
    let dev = user("dev");
    let g = create(CreateGrantRequest {
        retiring_principal: Some(dev.clone()),
        ..grant_req(&key, &user("somebody"), &["Decrypt"])
    });
    rt.block_on(async {
        // The server's view predates the key: it does not even know it yet.
        let e = client
            .list_grants()
            .key_id(&key)
            .send()
            .await
            .expect_err("a key made after the server's last refresh");
        assert_eq!(e.code(), Some("NotFoundException"), "{e:?}");
        client
            .retire_grant()
            .grant_token(&g.grant_token)
            .send()
            .await
            .expect("retired through its token at once");
        let listed = client
            .list_grants()
            .key_id(&key)
            .send()
            .await
            .expect("list grants after the refresh");
        assert!(listed.grants().is_empty());
        let e = client
            .retire_grant()
            .grant_token(&g.grant_token)
            .send()
            .await
            .expect_err("retired already");
        assert_eq!(e.code(), Some("NotFoundException"), "{e:?}");
    });
    seen_within_refreshes(
        || list(&key).is_empty(),
        "the retired grant is still listed here",
    );
}

/// Refreshes until `done` (at most 5 s): another process's change is seen within two
/// refreshes (a stamp lost to a concurrent writer of this test binary is re-bumped by the
/// next: docs/design.md, "Lost stamps").
fn seen_within_refreshes(done: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        kms().refresh().unwrap();
        if done() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `p11kms grant create|list|retire|revoke`, in another process over the same token.
#[test]
fn the_grant_commands_of_the_cli() {
    let key = common::new_key();
    let run = |args: &[&str]| -> serde_json::Value {
        let out = common::p11kms_cmd()
            .arg("--json")
            .args(args)
            .output()
            .expect("run p11kms");
        assert!(
            out.status.success(),
            "p11kms {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    let grantee = user("cli");
    let a = run(&[
        "grant",
        "create",
        &key,
        "--grantee",
        &grantee,
        "--operation",
        "Decrypt",
        "--operation",
        "Encrypt",
        "--context-subset",
        "purpose=cli",
        "--name",
        "cli-grant",
    ]);
    let b = run(&[
        "grant",
        "create",
        &key,
        "--grantee",
        &grantee,
        "--operation",
        "DescribeKey",
    ]);
    let listed = run(&["grant", "list", &key]);
    assert_eq!(
        listed["Grants"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    let one = run(&[
        "grant",
        "list",
        &key,
        "--grant-id",
        a["GrantId"].as_str().unwrap(),
    ]);
    assert_eq!(one["Grants"][0]["Name"], "cli-grant");
    assert_eq!(
        one["Grants"][0]["Constraints"]["EncryptionContextSubset"]["purpose"],
        "cli"
    );
    // Seen here after a refresh; the CLI's token works here at once.
    assert!(kms().grant_allows(
        id(&key),
        &grantee,
        GrantOperation::Encrypt,
        Some(&EncryptionContext::new(ctx(&[("purpose", "cli")])).unwrap()),
        &[a["GrantToken"].as_str().unwrap().to_owned()]
    ));
    run(&[
        "grant",
        "retire",
        "--token",
        a["GrantToken"].as_str().unwrap(),
    ]);
    run(&["grant", "revoke", &key, b["GrantId"].as_str().unwrap()]);
    assert_eq!(
        run(&["grant", "list", &key])["Grants"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    let out = common::p11kms_cmd()
        .args(["grant", "retire", "--token", "junk"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidGrantTokenException"));
}
