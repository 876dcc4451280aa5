//! The library's operations against a real token (SoftHSM, or Kryoptic with
//! `P11KMS_TEST_TOKEN=kryoptic`): every operation, its errors, and the custody and integrity
//! properties the service promises.

mod common;

use std::collections::HashSet;

use p11kms::kms::types::*;
use p11kms::kms::{AliasName, KeyId};
use p11kms::KmsError;

fn kms() -> &'static p11kms::kms::Kms {
    common::kms()
}

fn ctx(pairs: &[(&str, &str)]) -> Option<ContextMap> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn gdk(key: &str, context: Option<ContextMap>) -> GenerateDataKeyResponse {
    kms()
        .generate_data_key(GenerateDataKeyRequest {
            key_id: Some(key.into()),
            key_spec: Some("AES_256".into()),
            encryption_context: context,
            ..Default::default()
        })
        .expect("generate data key")
}

fn decrypt(blob: &[u8], context: Option<ContextMap>) -> Result<DecryptResponse, KmsError> {
    kms().decrypt(DecryptRequest {
        ciphertext_blob: Some(Bytes(blob.to_vec())),
        encryption_context: context,
        ..Default::default()
    })
}

fn name(e: KmsError) -> &'static str {
    e.aws_name()
}

fn describe(key: &str) -> Result<KeyMetadata, KmsError> {
    kms()
        .describe_key(KeyIdRequest {
            key_id: Some(key.into()),
            ..Default::default()
        })
        .map(|r| r.key_metadata)
}

fn key_req(key: &str) -> KeyIdRequest {
    KeyIdRequest {
        key_id: Some(key.into()),
        ..Default::default()
    }
}

#[test]
fn seed_flow_without_plaintext_then_decrypt() {
    let key = common::new_key();
    let c = ctx(&[("purpose", "test"), ("tenant", "Acme")]);
    let r = kms()
        .generate_data_key_without_plaintext(GenerateDataKeyRequest {
            key_id: Some(key.clone().into()),
            key_spec: Some("AES_256".into()),
            encryption_context: c.clone(),
            ..Default::default()
        })
        .unwrap();
    let arn = kms().scope().key_arn(&key.parse().unwrap());
    assert_eq!(r.key_id, arn);
    assert_eq!(r.ciphertext_blob.0.len(), 66 + 32 + 16);
    let d = decrypt(&r.ciphertext_blob.0, c).unwrap();
    assert_eq!(d.plaintext.0.len(), 32);
    assert_eq!(d.key_id, arn);
    assert_eq!(d.encryption_algorithm, "SYMMETRIC_DEFAULT");
    // Another context, or none: InvalidCiphertextException.
    for other in [
        None,
        ctx(&[("purpose", "test")]),
        ctx(&[("purpose", "Test"), ("tenant", "Acme")]),
        ctx(&[("Purpose", "test"), ("tenant", "Acme")]),
        ctx(&[("purpose", "test"), ("tenant", "Acme"), ("x", "")]),
    ] {
        assert_eq!(
            name(decrypt(&r.ciphertext_blob.0, other).unwrap_err()),
            "InvalidCiphertextException"
        );
    }
}

#[test]
fn generate_data_key_sizes_and_validation() {
    let key = common::new_key();
    for (spec, n, len) in [
        (Some("AES_128"), None, 16),
        (Some("AES_256"), None, 32),
        (None, Some(1), 1),
        (None, Some(1024), 1024),
    ] {
        let r = kms()
            .generate_data_key(GenerateDataKeyRequest {
                key_id: Some(key.clone().into()),
                key_spec: spec.map(Into::into),
                number_of_bytes: n,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(r.plaintext.0.len(), len);
        assert_eq!(
            decrypt(&r.ciphertext_blob.0, None).unwrap().plaintext,
            r.plaintext
        );
    }
    let bad = [
        GenerateDataKeyRequest {
            key_id: Some(key.clone().into()),
            ..Default::default()
        },
        GenerateDataKeyRequest {
            key_id: Some(key.clone().into()),
            key_spec: Some("AES_256".into()),
            number_of_bytes: Some(32),
            ..Default::default()
        },
        GenerateDataKeyRequest {
            key_id: Some(key.clone().into()),
            number_of_bytes: Some(1025),
            ..Default::default()
        },
        GenerateDataKeyRequest {
            key_spec: Some("AES_256".into()),
            ..Default::default()
        },
        GenerateDataKeyRequest {
            key_id: Some(key.clone().into()),
            key_spec: Some("AES_256".into()),
            grant_tokens: Some(vec!["g".into(); 11]),
            ..Default::default()
        },
    ];
    for req in bad {
        assert_eq!(
            name(kms().generate_data_key(req).unwrap_err()),
            "ValidationException"
        );
    }
}

#[test]
fn ten_thousand_data_keys_are_distinct() {
    let key = common::new_key();
    let mut keys = HashSet::new();
    let mut blobs = HashSet::new();
    for _ in 0..10_000 {
        let r = gdk(&key, None);
        assert!(keys.insert(r.plaintext.0.to_vec()));
        assert!(blobs.insert(r.ciphertext_blob.0));
    }
}

#[test]
fn any_flipped_bit_fails() {
    let key = common::new_key();
    let c = ctx(&[("k", "v")]);
    let blob = gdk(&key, c.clone()).ciphertext_blob.0;
    for bit in 0..blob.len() * 8 {
        let mut b = blob.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        let e = decrypt(&b, c.clone()).unwrap_err();
        // Bytes 1..17 name the key: a flip there names another (absent) key.
        let expected = if (1..17).contains(&(bit / 8)) {
            "NotFoundException"
        } else {
            "InvalidCiphertextException"
        };
        assert_eq!(e.aws_name(), expected, "bit {bit}");
    }
    // Truncated and extended blobs fail too.
    assert!(decrypt(&blob[..blob.len() - 1], c.clone()).is_err());
    let mut longer = blob.clone();
    longer.push(0);
    assert!(decrypt(&longer, c.clone()).is_err());
    assert!(decrypt(&blob, c).is_ok());
}

#[test]
fn encrypt_decrypt_and_reencrypt() {
    let a = common::new_key();
    let b = common::new_key();
    let c1 = ctx(&[("app", "one")]);
    let c2 = ctx(&[("app", "two")]);
    let e = kms()
        .encrypt(EncryptRequest {
            key_id: Some(a.clone().into()),
            plaintext: Some(SecretBytes(vec![7u8; 4096].into())),
            encryption_context: c1.clone(),
            ..Default::default()
        })
        .unwrap();
    let r = kms()
        .re_encrypt(ReEncryptRequest {
            ciphertext_blob: Some(e.ciphertext_blob.clone()),
            source_encryption_context: c1.clone(),
            destination_key_id: Some(b.clone().into()),
            destination_encryption_context: c2.clone(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.source_key_id, kms().scope().key_arn(&a.parse().unwrap()));
    assert_eq!(r.key_id, kms().scope().key_arn(&b.parse().unwrap()));
    let d = decrypt(&r.ciphertext_blob.0, c2).unwrap();
    assert_eq!(d.plaintext.0.as_slice(), &[7u8; 4096][..]);
    assert_eq!(d.key_id, r.key_id);
    // Re-encrypt with the wrong source context fails and writes nothing.
    assert_eq!(
        name(
            kms()
                .re_encrypt(ReEncryptRequest {
                    ciphertext_blob: Some(e.ciphertext_blob.clone()),
                    destination_key_id: Some(b.clone().into()),
                    ..Default::default()
                })
                .unwrap_err()
        ),
        "InvalidCiphertextException"
    );
    // Plaintext limits.
    for bad in [vec![], vec![0u8; 4097]] {
        let e = kms()
            .encrypt(EncryptRequest {
                key_id: Some(a.clone().into()),
                plaintext: Some(SecretBytes(bad.into())),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(e.aws_name(), "ValidationException");
    }
    let e = kms()
        .encrypt(EncryptRequest {
            key_id: Some(a.clone().into()),
            plaintext: Some(SecretBytes(vec![1].into())),
            encryption_algorithm: Some("RSAES_OAEP_SHA_256".into()),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.aws_name(), "InvalidKeyUsageException");
}

#[test]
fn decrypt_with_key_id_checks_the_key() {
    let a = common::new_key();
    let b = common::new_key();
    let alias = format!("alias/dk-{}", &a[..8]);
    kms()
        .create_alias(AliasRequest {
            scope: None,
            alias_name: Some(alias.clone()),
            target_key_id: Some(a.clone().into()),
        })
        .unwrap();
    let blob = gdk(&a, None).ciphertext_blob;
    let scope = kms().scope();
    let id: KeyId = a.parse().unwrap();
    for good in [
        a.clone(),
        scope.key_arn(&id),
        alias.clone(),
        scope.alias_arn(&AliasName::parse(&alias).unwrap()),
    ] {
        kms()
            .decrypt(DecryptRequest {
                ciphertext_blob: Some(blob.clone()),
                key_id: Some(good.into()),
                ..Default::default()
            })
            .unwrap();
    }
    let e = kms()
        .decrypt(DecryptRequest {
            ciphertext_blob: Some(blob.clone()),
            key_id: Some(b.into()),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.aws_name(), "IncorrectKeyException");
    assert_eq!(
        name(decrypt(&[1, 2, 3], None).unwrap_err()),
        "InvalidCiphertextException"
    );
    assert_eq!(
        name(kms().decrypt(DecryptRequest::default()).unwrap_err()),
        "ValidationException"
    );
}

#[test]
fn key_forms_and_describe() {
    let key = common::new_key();
    let id: KeyId = key.parse().unwrap();
    let scope = kms().scope();
    let alias = format!("alias/forms-{}", &key[..8]);
    kms()
        .create_alias(AliasRequest {
            scope: None,
            alias_name: Some(alias.clone()),
            target_key_id: Some(scope.key_arn(&id).into()),
        })
        .unwrap();
    let alias_arn = scope.alias_arn(&AliasName::parse(&alias).unwrap());
    for form in [
        key.clone(),
        scope.key_arn(&id),
        alias.clone(),
        alias_arn.clone(),
    ] {
        let m = describe(&form).unwrap();
        assert_eq!(m.key_id, key);
        assert_eq!(m.arn, scope.key_arn(&id));
        assert_eq!(m.aws_account_id, "111122223333");
        assert_eq!(m.key_state, "Enabled");
        assert!(m.enabled);
        assert_eq!(m.key_spec, "SYMMETRIC_DEFAULT");
        assert_eq!(m.key_usage, "ENCRYPT_DECRYPT");
        assert_eq!(m.origin, "AWS_KMS");
        assert_eq!(m.key_manager, "CUSTOMER");
        gdk(&form, None);
    }
    // Key-only operations refuse aliases.
    for form in [alias.clone(), alias_arn] {
        assert_eq!(
            name(kms().disable_key(key_req(&form)).unwrap_err()),
            "NotFoundException"
        );
    }
    for missing in [
        KeyId::new_random().to_string(),
        "alias/does-not-exist".into(),
        "garbage".into(),
        scope.key_arn(&KeyId::new_random()),
    ] {
        assert_eq!(name(describe(&missing).unwrap_err()), "NotFoundException");
    }
    assert_eq!(
        name(kms().describe_key(KeyIdRequest::default()).unwrap_err()),
        "ValidationException"
    );
}

/// A key resolved before the operation (as the API layer does once it has authorized it) is
/// used as it is: an alias that moves meanwhile does not change it, and a key gone meanwhile
/// is not found. From the wire, a `KeyId` is always the caller's text.
#[test]
fn a_resolved_key_is_used_as_resolved() {
    let (a, b) = (common::new_key(), common::new_key());
    let (id_a, id_b): (KeyId, KeyId) = (a.parse().unwrap(), b.parse().unwrap());
    let alias = format!("alias/resolved-{}", &a[..8]);
    let scope = kms().scope();
    kms()
        .create_alias(AliasRequest {
            scope: None,
            alias_name: Some(alias.clone()),
            target_key_id: Some(a.clone().into()),
        })
        .unwrap();
    let resolved = kms()
        .resolve_key_id(&alias.as_str().into(), p11kms::kms::Forms::Any)
        .unwrap();
    assert_eq!(resolved, id_a);
    kms()
        .update_alias(AliasRequest {
            scope: None,
            alias_name: Some(alias.clone()),
            target_key_id: Some(b.clone().into()),
        })
        .unwrap();
    let r = kms()
        .generate_data_key(GenerateDataKeyRequest {
            key_id: Some(KeySelector::Resolved(resolved)),
            number_of_bytes: Some(32),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.key_id, scope.key_arn(&id_a), "the alias moved to {id_b}");
    assert_eq!(
        name(
            kms()
                .describe_key(KeyIdRequest {
                    key_id: Some(KeySelector::Resolved(KeyId::new_random())),
                    ..Default::default()
                })
                .unwrap_err()
        ),
        "NotFoundException"
    );
    let wire: GenerateDataKeyRequest =
        serde_json::from_str(&format!(r#"{{"KeyId":"{a}"}}"#)).unwrap();
    assert_eq!(wire.key_id, Some(KeySelector::Named(a)));
}

#[test]
fn create_key_options() {
    let m = kms()
        .create_key(CreateKeyRequest {
            description: Some("payments".into()),
            tags: Some(vec![Tag {
                tag_key: "team".into(),
                tag_value: "core".into(),
            }]),
            ..Default::default()
        })
        .unwrap()
        .key_metadata;
    assert_eq!(m.description, "payments");
    assert_eq!(describe(&m.key_id).unwrap().description, "payments");
    for (req, err) in [
        (
            CreateKeyRequest {
                key_spec: Some("SM2".into()),
                key_usage: Some("SIGN_VERIFY".into()),
                ..Default::default()
            },
            "UnsupportedOperationException",
        ),
        (
            CreateKeyRequest {
                key_usage: Some("WRONG".into()),
                ..Default::default()
            },
            "ValidationException",
        ),
    ] {
        assert_eq!(name(kms().create_key(req).unwrap_err()), err);
    }
}

#[test]
fn cmk_is_sensitive_derive_only_and_never_extractable() {
    let key = common::new_key();
    let id: KeyId = key.parse().unwrap();
    let token = kms().token();
    let h = common::cmk(token, &id, 1);
    let c = token.cmk_custody(h).unwrap();
    assert!(c.sensitive && !c.extractable && c.always_sensitive && c.never_extractable);
    assert!(!c.value_readable, "CKA_VALUE of a CMK must not be readable");
    assert!(!c.encrypt && !c.sign, "a CMK must be derive-only");
    assert!(c.derive);
    // A disabled key is unusable at the token level too.
    kms().disable_key(key_req(&key)).unwrap();
    assert!(!token.cmk_custody(h).unwrap().derive);
    kms().enable_key(key_req(&key)).unwrap();
    assert!(token.cmk_custody(h).unwrap().derive);
}

#[test]
fn key_states() {
    let key = common::new_key();
    let blob = gdk(&key, None).ciphertext_blob;
    kms().disable_key(key_req(&key)).unwrap();
    assert_eq!(describe(&key).unwrap().key_state, "Disabled");
    assert!(!describe(&key).unwrap().enabled);
    let e = kms()
        .generate_data_key(GenerateDataKeyRequest {
            key_id: Some(key.clone().into()),
            key_spec: Some("AES_256".into()),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.aws_name(), "DisabledException");
    assert_eq!(
        name(decrypt(&blob.0, None).unwrap_err()),
        "DisabledException"
    );
    kms().disable_key(key_req(&key)).unwrap(); // idempotent
    kms().enable_key(key_req(&key)).unwrap();
    decrypt(&blob.0, None).unwrap();

    // Scheduling deletion: 7..30 days.
    for bad in [6, 31] {
        let e = kms()
            .schedule_key_deletion(ScheduleKeyDeletionRequest {
                key_id: Some(key.clone().into()),
                pending_window_in_days: Some(bad),
            })
            .unwrap_err();
        assert_eq!(e.aws_name(), "ValidationException");
    }
    assert_eq!(describe(&key).unwrap().key_state, "Enabled");
    let s = kms()
        .schedule_key_deletion(ScheduleKeyDeletionRequest {
            key_id: Some(key.clone().into()),
            pending_window_in_days: Some(7),
        })
        .unwrap();
    assert_eq!(s.key_state, "PendingDeletion");
    assert_eq!(s.pending_window_in_days, 7);
    let m = describe(&key).unwrap();
    assert_eq!(m.key_state, "PendingDeletion");
    assert!(m.deletion_date.is_some());
    assert_eq!(
        name(decrypt(&blob.0, None).unwrap_err()),
        "KMSInvalidStateException"
    );
    assert_eq!(
        name(kms().enable_key(key_req(&key)).unwrap_err()),
        "KMSInvalidStateException"
    );
    assert_eq!(
        name(
            kms()
                .schedule_key_deletion(ScheduleKeyDeletionRequest {
                    key_id: Some(key.clone().into()),
                    pending_window_in_days: None,
                })
                .unwrap_err()
        ),
        "KMSInvalidStateException"
    );
    kms().cancel_key_deletion(key_req(&key)).unwrap();
    // Cancelled deletion leaves the key Disabled, as in AWS.
    assert_eq!(describe(&key).unwrap().key_state, "Disabled");
    assert_eq!(
        name(kms().cancel_key_deletion(key_req(&key)).unwrap_err()),
        "KMSInvalidStateException"
    );
}

#[test]
fn deletion_sweeper_destroys_token_objects() {
    let key = common::new_key();
    let id: KeyId = key.parse().unwrap();
    let alias = format!("alias/doomed-{}", &key[..8]);
    kms()
        .create_alias(AliasRequest {
            scope: None,
            alias_name: Some(alias.clone()),
            target_key_id: Some(key.clone().into()),
        })
        .unwrap();
    kms()
        .schedule_key_deletion(ScheduleKeyDeletionRequest {
            key_id: Some(key.clone().into()),
            pending_window_in_days: Some(7),
        })
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Not yet due: nothing happens.
    assert!(!kms().sweep_deletions_at(now).unwrap().contains(&id));
    assert!(describe(&key).is_ok());
    let swept = kms()
        .sweep_deletions_at(now + 7 * 86_400_000 + 1000)
        .unwrap();
    assert!(swept.contains(&id));
    assert_eq!(name(describe(&key).unwrap_err()), "NotFoundException");
    assert_eq!(name(describe(&alias).unwrap_err()), "NotFoundException");
    let label = p11kms::kms::cmk_label(&id, 1);
    assert!(kms().token().find_cmks(&label).unwrap().is_empty());
    // And it stays gone after re-reading the token.
    kms().refresh().unwrap();
    assert_eq!(name(describe(&key).unwrap_err()), "NotFoundException");
}

#[test]
fn aliases() {
    let a = common::new_key();
    let b = common::new_key();
    let tag = &a[..8];
    let name1 = format!("alias/app-{tag}");
    kms()
        .create_alias(AliasRequest {
            scope: None,
            alias_name: Some(name1.clone()),
            target_key_id: Some(a.clone().into()),
        })
        .unwrap();
    let dup = kms()
        .create_alias(AliasRequest {
            scope: None,
            alias_name: Some(name1.clone()),
            target_key_id: Some(b.clone().into()),
        })
        .unwrap_err();
    assert_eq!(dup.aws_name(), "AlreadyExistsException");
    assert_eq!(describe(&name1).unwrap().key_id, a);
    for (bad, err) in [
        ("alias/aws/reserved", "InvalidAliasNameException"),
        ("noprefix", "InvalidAliasNameException"),
        ("alias/has space", "ValidationException"),
    ] {
        let e = kms()
            .create_alias(AliasRequest {
                scope: None,
                alias_name: Some(bad.into()),
                target_key_id: Some(a.clone().into()),
            })
            .unwrap_err();
        assert_eq!(e.aws_name(), err, "{bad}");
    }
    // Alias targets must be key ids or ARNs of existing keys.
    let e = kms()
        .create_alias(AliasRequest {
            scope: None,
            alias_name: Some(format!("alias/x-{tag}")),
            target_key_id: Some(name1.clone().into()),
        })
        .unwrap_err();
    assert_eq!(e.aws_name(), "NotFoundException");
    kms()
        .update_alias(AliasRequest {
            scope: None,
            alias_name: Some(name1.clone()),
            target_key_id: Some(b.clone().into()),
        })
        .unwrap();
    assert_eq!(describe(&name1).unwrap().key_id, b);
    let listed = kms()
        .list_aliases(ListRequest {
            key_id: Some(b.clone().into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(listed.aliases.len(), 1);
    assert_eq!(listed.aliases[0].alias_name, name1);
    assert_eq!(listed.aliases[0].target_key_id, b);
    assert!(listed.aliases[0].alias_arn.ends_with(&name1));
    kms()
        .delete_alias(AliasRequest {
            scope: None,
            alias_name: Some(name1.clone()),
            target_key_id: None,
        })
        .unwrap();
    assert_eq!(name(describe(&name1).unwrap_err()), "NotFoundException");
    assert_eq!(
        name(
            kms()
                .delete_alias(AliasRequest {
                    scope: None,
                    alias_name: Some(name1.clone()),
                    target_key_id: None,
                })
                .unwrap_err()
        ),
        "NotFoundException"
    );
    assert_eq!(
        name(
            kms()
                .update_alias(AliasRequest {
                    scope: None,
                    alias_name: Some(name1.clone()),
                    target_key_id: Some(a.clone().into()),
                })
                .unwrap_err()
        ),
        "NotFoundException"
    );
    // Deleted aliases stay deleted after re-reading the token (no tombstone resurrection).
    kms().refresh().unwrap();
    assert_eq!(name(describe(&name1).unwrap_err()), "NotFoundException");
    // And can be created again.
    kms()
        .create_alias(AliasRequest {
            scope: None,
            alias_name: Some(name1.clone()),
            target_key_id: Some(a.clone().into()),
        })
        .unwrap();
    kms().refresh().unwrap();
    assert_eq!(describe(&name1).unwrap().key_id, a);
}

#[test]
fn list_keys_pages() {
    for _ in 0..5 {
        common::new_key();
    }
    let all: Vec<String> = {
        let mut out = Vec::new();
        let mut marker = None;
        loop {
            let page = kms()
                .list_keys(ListRequest {
                    limit: Some(2),
                    marker: marker.clone(),
                    key_id: None,
                    ..Default::default()
                })
                .unwrap();
            assert!(page.keys.len() <= 2);
            out.extend(page.keys.iter().map(|k| k.key_id.clone()));
            if !page.truncated {
                assert!(page.next_marker.is_none());
                break;
            }
            marker = page.next_marker;
        }
        out
    };
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "no key listed twice");
    assert!(all.len() >= 5);
    for (limit, err) in [
        (Some(0), "ValidationException"),
        (Some(1001), "ValidationException"),
    ] {
        assert_eq!(
            name(
                kms()
                    .list_keys(ListRequest {
                        limit,
                        ..Default::default()
                    })
                    .unwrap_err()
            ),
            err
        );
    }
    assert_eq!(
        name(
            kms()
                .list_keys(ListRequest {
                    marker: Some("not-a-marker".into()),
                    ..Default::default()
                })
                .unwrap_err()
        ),
        "InvalidMarkerException"
    );
}

#[test]
fn generate_random_bounds() {
    let r = kms()
        .generate_random(GenerateRandomRequest {
            number_of_bytes: Some(1024),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.plaintext.0.len(), 1024);
    for bad in [None, Some(0), Some(1025)] {
        assert_eq!(
            name(
                kms()
                    .generate_random(GenerateRandomRequest {
                        number_of_bytes: bad,
                        ..Default::default()
                    })
                    .unwrap_err()
            ),
            "ValidationException"
        );
    }
}

#[test]
fn dry_run_changes_nothing() {
    let key = common::new_key();
    let e = kms()
        .generate_data_key(GenerateDataKeyRequest {
            key_id: Some(key.clone().into()),
            key_spec: Some("AES_256".into()),
            dry_run: Some(true),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.aws_name(), "DryRunOperationException");
    let blob = gdk(&key, None).ciphertext_blob;
    let e = kms()
        .decrypt(DecryptRequest {
            ciphertext_blob: Some(blob),
            dry_run: Some(true),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.aws_name(), "DryRunOperationException");
}

#[test]
fn epoch_keys_are_reused_within_their_bound_and_rotated_after() {
    use std::sync::Arc;
    // A second service over the same token with a tiny epoch bound.
    let token = common::fresh_token(2);
    let settings = p11kms::kms::Settings {
        epochs: p11kms::kms::EpochPolicy {
            max_uses: 3,
            ..Default::default()
        },
        ..p11kms::kms::Settings::new(kms().scope().clone())
    };
    let small = p11kms::kms::Kms::new(Arc::clone(&token), settings).unwrap();
    let key = common::new_key();
    small.refresh().unwrap();
    let nonces: Vec<Vec<u8>> = (0..7)
        .map(|_| {
            small
                .generate_data_key_without_plaintext(GenerateDataKeyRequest {
                    key_id: Some(key.clone().into()),
                    key_spec: Some("AES_256".into()),
                    ..Default::default()
                })
                .unwrap()
                .ciphertext_blob
                .0[22..54]
                .to_vec()
        })
        .collect();
    // Uses 1-3 share an epoch key, 4-6 the next, 7 a third.
    assert_eq!(nonces[0], nonces[2]);
    assert_ne!(nonces[2], nonces[3]);
    assert_eq!(nonces[3], nonces[5]);
    assert_ne!(nonces[5], nonces[6]);
    // Another process (here: the fixture's service) opens them by re-deriving.
    let blob = small
        .generate_data_key(GenerateDataKeyRequest {
            key_id: Some(key.clone().into()),
            key_spec: Some("AES_256".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        decrypt(&blob.ciphertext_blob.0, None).unwrap().plaintext,
        blob.plaintext
    );
}

#[test]
fn incomplete_or_newer_garbage_records_are_ignored() {
    let key = common::new_key();
    let id: KeyId = key.parse().unwrap();
    // A record object from a writer that died mid-write: a higher sequence number, but a
    // value that does not parse. The complete older record must keep winning.
    let label = format!("p11kms:key:{id}:{:010}:ffffffff", 999);
    kms()
        .token()
        .create_data("p11kms", &label, b"{\"record\":\"key_v1\",\"id\":")
        .unwrap();
    kms().refresh().unwrap();
    assert_eq!(describe(&key).unwrap().key_state, "Enabled");
    gdk(&key, None);
}

#[test]
fn token_state_is_healed_from_the_records() {
    // A crash (or a race with another process's reconcile) can leave an Enabled key's CMK
    // non-derivable in the token. The records win: the next use repairs the token.
    let key = common::new_key();
    let id: KeyId = key.parse().unwrap();
    let token = kms().token();
    let h = common::cmk(token, &id, 1);
    token
        .set_cmk_usable(h, p11kms::hsm::BackingKind::Derive, false)
        .unwrap();
    gdk(&key, None);
    assert!(token.cmk_custody(h).unwrap().derive);
}

/// The README's library example, as written there (only the configuration comes from the
/// test fixture instead of a file): the crate's curated surface is enough for the envelope
/// flow.
#[test]
fn the_readme_library_example() -> p11kms::Result<()> {
    use p11kms::types::{CreateKeyRequest, DecryptRequest, GenerateDataKeyRequest};

    let kms = p11kms::open(&common::fixture().config)?;
    let key = kms
        .create_key(CreateKeyRequest::default())?
        .key_metadata
        .key_id;
    let context = Some([("app".to_string(), "billing".to_string())].into());
    // One component seals a data key; it never sees the plaintext.
    let sealed = kms.generate_data_key_without_plaintext(GenerateDataKeyRequest {
        key_id: Some(key.into()),
        key_spec: Some("AES_256".into()),
        encryption_context: context.clone(),
        ..Default::default()
    })?;
    // Another decrypts it, with the same encryption context.
    let data_key = kms
        .decrypt(DecryptRequest {
            ciphertext_blob: Some(sealed.ciphertext_blob),
            encryption_context: context,
            ..Default::default()
        })?
        .plaintext;
    assert_eq!(data_key.as_slice().len(), 32);
    Ok(())
}

/// An asymmetric key disabled by another service over the same token (its own view of the
/// records) is refused by the token at once: the usage attribute is off. This service,
/// whose snapshot still says Enabled, re-reads the records on the refusal and answers
/// DisabledException; once enabled elsewhere it signs again.
#[test]
fn an_asymmetric_key_disabled_elsewhere_is_refused_by_the_token() {
    let here = common::fresh_kms();
    let elsewhere = common::fresh_kms();
    let key = here
        .create_key(CreateKeyRequest {
            key_spec: Some("ECC_NIST_P256".into()),
            key_usage: Some("SIGN_VERIFY".into()),
            ..Default::default()
        })
        .unwrap()
        .key_metadata
        .key_id;
    let sign = |kms: &p11kms::kms::Kms| {
        kms.sign(SignRequest {
            key_id: Some(key.as_str().into()),
            message: Some(SecretBytes(b"m".to_vec().into())),
            signing_algorithm: Some("ECDSA_SHA_256".into()),
            ..Default::default()
        })
    };
    sign(&here).expect("signs while enabled");
    elsewhere.refresh().unwrap();
    elsewhere.disable_key(common::key_req(&key)).unwrap();
    assert_eq!(name(sign(&here).unwrap_err()), "DisabledException");
    elsewhere.enable_key(common::key_req(&key)).unwrap();
    // Seen here at the next refresh (metadata_refresh_ms), as every change of another writer.
    here.refresh().unwrap();
    sign(&here).expect("signs again once enabled elsewhere");
}
