//! The real `aws-sdk-kms` client against an in-process server: every operation p11kms serves,
//! every KeyId form, and every documented error, as an SDK user sees them.

mod api_support;
mod common;
mod sdk;

use aws_sdk_kms::error::ProvideErrorMetadata;
use sdk::code;

use std::collections::HashSet;
use std::fmt::Debug;

use api_support::{server, ALLOWED_ALIAS, REGION};
use aws_sdk_kms::operation::decrypt::DecryptError;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{
    DataKeyPairSpec, DataKeySpec, EncryptionAlgorithmSpec, KeyAgreementAlgorithmSpec, KeyMetadata,
    KeySpec, KeyState, KeyUsageType, MacAlgorithmSpec, MessageType, OriginType,
    SigningAlgorithmSpec, Tag,
};
use aws_sdk_kms::Client;
use common::dev_credentials;
use sha2::Digest as _;

/// The dev principal, exactly as a user pastes it from `serve`'s output.
fn client() -> Client {
    let (id, secret) = dev_credentials();
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

fn ctx(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
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

fn arn_of(id: &str) -> String {
    format!("arn:aws:kms:{REGION}:111122223333:key/{id}")
}

fn alias_arn(alias: &str) -> String {
    format!("arn:aws:kms:{REGION}:111122223333:{alias}")
}

#[tokio::test]
async fn seed_flow_data_key_with_context() {
    let c = client();
    let (id, arn) = new_key(&c).await;
    let purpose = ctx(&[("purpose", "test"), ("tenant", "t-1")]);
    let dk = c
        .generate_data_key_without_plaintext()
        .key_id(&id)
        .key_spec(DataKeySpec::Aes256)
        .set_encryption_context(Some(purpose.clone()))
        .send()
        .await
        .expect("generate data key without plaintext");
    assert_eq!(dk.key_id(), Some(arn.as_str()));
    let blob = dk.ciphertext_blob().expect("blob").clone();

    let d = c
        .decrypt()
        .ciphertext_blob(blob.clone())
        .set_encryption_context(Some(purpose))
        .send()
        .await
        .expect("decrypt with the same context");
    assert_eq!(d.plaintext().expect("plaintext").as_ref().len(), 32);
    assert_eq!(d.key_id(), Some(arn.as_str()));
    assert_eq!(
        d.encryption_algorithm().map(|a| a.as_str()),
        Some("SYMMETRIC_DEFAULT")
    );

    let err = c
        .decrypt()
        .ciphertext_blob(blob.clone())
        .set_encryption_context(Some(ctx(&[("purpose", "other"), ("tenant", "t-1")])))
        .send()
        .await
        .expect_err("another context");
    assert!(
        matches!(
            err.into_service_error(),
            DecryptError::InvalidCiphertextException(_)
        ),
        "typed SDK error"
    );
    let no_ctx = c.decrypt().ciphertext_blob(blob).send().await;
    assert_eq!(code(no_ctx), "InvalidCiphertextException");
}

#[tokio::test]
async fn every_key_id_form() {
    let c = client();
    let (id, arn) = new_key(&c).await;
    let alias = "alias/sdk-forms";
    c.create_alias()
        .alias_name(alias)
        .target_key_id(&id)
        .send()
        .await
        .expect("create alias");
    let forms = [id.clone(), arn.clone(), alias.to_string(), alias_arn(alias)];
    let (_, other_arn) = new_key(&c).await;
    for form in &forms {
        let m = c
            .describe_key()
            .key_id(form)
            .send()
            .await
            .expect("describe")
            .key_metadata
            .expect("metadata");
        assert_eq!(m.key_id, id, "{form}");

        let e = c
            .encrypt()
            .key_id(form)
            .plaintext(Blob::new(b"hello".to_vec()))
            .send()
            .await
            .expect("encrypt");
        assert_eq!(e.key_id(), Some(arn.as_str()), "{form}");
        let blob = e.ciphertext_blob().expect("blob").clone();

        let d = c
            .decrypt()
            .key_id(form)
            .ciphertext_blob(blob.clone())
            .send()
            .await
            .expect("decrypt with KeyId");
        assert_eq!(d.plaintext().expect("pt").as_ref(), b"hello");

        let r = c
            .re_encrypt()
            .ciphertext_blob(blob)
            .source_key_id(form)
            .destination_key_id(form)
            .send()
            .await
            .expect("re-encrypt");
        assert_eq!(r.source_key_id(), Some(arn.as_str()));
        assert_eq!(r.key_id(), Some(arn.as_str()));

        let g = c
            .generate_data_key()
            .key_id(form)
            .number_of_bytes(24)
            .send()
            .await
            .expect("generate data key");
        assert_eq!(g.key_id(), Some(arn.as_str()));
        assert_eq!(g.plaintext().expect("pt").as_ref().len(), 24);

        let w = c
            .generate_data_key_without_plaintext()
            .key_id(form)
            .key_spec(DataKeySpec::Aes128)
            .send()
            .await
            .expect("generate data key without plaintext");
        assert_eq!(w.key_id(), Some(arn.as_str()));

        // A blob of another key, with this KeyId: IncorrectKeyException.
        let foreign = c
            .encrypt()
            .key_id(&other_arn)
            .plaintext(Blob::new(b"x".to_vec()))
            .send()
            .await
            .expect("encrypt other")
            .ciphertext_blob
            .expect("blob");
        let r = c
            .decrypt()
            .key_id(form)
            .ciphertext_blob(foreign)
            .send()
            .await;
        assert_eq!(code(r), "IncorrectKeyException", "{form}");
    }
    // Key-only operations take the id and the key ARN, never an alias.
    for form in [&id, &arn] {
        c.enable_key().key_id(form).send().await.expect("enable");
    }
    for form in [alias.to_string(), alias_arn(alias)] {
        assert_eq!(
            code(c.enable_key().key_id(&form).send().await),
            "NotFoundException"
        );
        assert_eq!(
            code(c.disable_key().key_id(&form).send().await),
            "NotFoundException"
        );
    }
}

#[tokio::test]
async fn key_lifecycle_and_states() {
    let c = client();
    let created = c
        .create_key()
        .description("lifecycle test")
        .tags(
            Tag::builder()
                .tag_key("team")
                .tag_value("core")
                .build()
                .expect("tag"),
        )
        .send()
        .await
        .expect("create")
        .key_metadata
        .expect("metadata");
    assert_eq!(created.description(), Some("lifecycle test"));
    assert_eq!(created.key_state(), Some(&KeyState::Enabled));
    assert!(created.enabled());
    assert_eq!(created.aws_account_id(), Some("111122223333"));
    assert!(created.creation_date().is_some());
    assert_eq!(
        created.key_spec().map(|s| s.as_str()),
        Some("SYMMETRIC_DEFAULT")
    );
    let id = created.key_id;
    let encrypt = |c: Client, id: String| async move {
        c.encrypt()
            .key_id(id)
            .plaintext(Blob::new(b"p".to_vec()))
            .send()
            .await
    };

    c.disable_key().key_id(&id).send().await.expect("disable");
    let m = c.describe_key().key_id(&id).send().await.expect("describe");
    let m = m.key_metadata.expect("metadata");
    assert_eq!(m.key_state(), Some(&KeyState::Disabled));
    assert!(!m.enabled());
    assert_eq!(
        code(encrypt(c.clone(), id.clone()).await),
        "DisabledException"
    );
    c.enable_key().key_id(&id).send().await.expect("enable");
    encrypt(c.clone(), id.clone()).await.expect("encrypt again");

    assert_eq!(
        code(
            c.schedule_key_deletion()
                .key_id(&id)
                .pending_window_in_days(3)
                .send()
                .await
        ),
        "ValidationException"
    );
    let s = c
        .schedule_key_deletion()
        .key_id(&id)
        .pending_window_in_days(7)
        .send()
        .await
        .expect("schedule deletion");
    assert_eq!(s.key_id(), Some(arn_of(&id).as_str()));
    assert_eq!(s.key_state(), Some(&KeyState::PendingDeletion));
    assert_eq!(s.pending_window_in_days(), Some(7));
    assert!(s.deletion_date().is_some());
    assert_eq!(
        code(encrypt(c.clone(), id.clone()).await),
        "KMSInvalidStateException"
    );
    assert_eq!(
        code(c.schedule_key_deletion().key_id(&id).send().await),
        "KMSInvalidStateException"
    );
    assert_eq!(
        code(c.enable_key().key_id(&id).send().await),
        "KMSInvalidStateException"
    );
    let m = c.describe_key().key_id(&id).send().await.expect("describe");
    let m = m.key_metadata.expect("metadata");
    assert_eq!(m.key_state(), Some(&KeyState::PendingDeletion));
    assert!(m.deletion_date().is_some());

    let cancel = c
        .cancel_key_deletion()
        .key_id(&id)
        .send()
        .await
        .expect("cancel");
    assert_eq!(cancel.key_id(), Some(arn_of(&id).as_str()));
    let m = c.describe_key().key_id(&id).send().await.expect("describe");
    assert_eq!(
        m.key_metadata.expect("metadata").key_state(),
        Some(&KeyState::Disabled),
        "CancelKeyDeletion leaves the key disabled, as in AWS"
    );
    assert_eq!(
        code(c.cancel_key_deletion().key_id(&id).send().await),
        "KMSInvalidStateException"
    );
    c.enable_key().key_id(&id).send().await.expect("enable");
    encrypt(c.clone(), id).await.expect("usable again");
}

#[tokio::test]
async fn aliases() {
    let c = client();
    let (k1, _) = new_key(&c).await;
    let (k2, arn2) = new_key(&c).await;
    let name = "alias/sdk-aliases";
    c.create_alias()
        .alias_name(name)
        .target_key_id(&k1)
        .send()
        .await
        .expect("create alias");
    assert_eq!(
        code(
            c.create_alias()
                .alias_name(name)
                .target_key_id(&k2)
                .send()
                .await
        ),
        "AlreadyExistsException"
    );
    for bad in ["alias/aws/reserved", "no-prefix", "alias/"] {
        assert_eq!(
            code(
                c.create_alias()
                    .alias_name(bad)
                    .target_key_id(&k1)
                    .send()
                    .await
            ),
            "InvalidAliasNameException",
            "{bad}"
        );
    }
    assert_eq!(
        code(
            c.create_alias()
                .alias_name("alias/sdk-by-alias")
                .target_key_id(name)
                .send()
                .await
        ),
        "NotFoundException",
        "alias targets are key ids or key ARNs"
    );

    let listed = c
        .list_aliases()
        .key_id(&k1)
        .send()
        .await
        .expect("list aliases");
    let entry = listed
        .aliases()
        .iter()
        .find(|a| a.alias_name() == Some(name))
        .expect("listed");
    assert_eq!(entry.target_key_id(), Some(k1.as_str()));
    assert_eq!(entry.alias_arn(), Some(alias_arn(name).as_str()));
    assert!(entry.creation_date().is_some());

    c.update_alias()
        .alias_name(name)
        .target_key_id(&arn2)
        .send()
        .await
        .expect("update alias");
    let m = c
        .describe_key()
        .key_id(name)
        .send()
        .await
        .expect("describe");
    assert_eq!(m.key_metadata.expect("metadata").key_id, k2);
    assert_eq!(
        code(
            c.update_alias()
                .alias_name("alias/sdk-missing")
                .target_key_id(&k1)
                .send()
                .await
        ),
        "NotFoundException"
    );

    c.delete_alias()
        .alias_name(name)
        .send()
        .await
        .expect("delete alias");
    assert_eq!(
        code(c.describe_key().key_id(name).send().await),
        "NotFoundException"
    );
    assert_eq!(
        code(c.delete_alias().alias_name(name).send().await),
        "NotFoundException"
    );
    // The name is free again.
    c.create_alias()
        .alias_name(name)
        .target_key_id(&k2)
        .send()
        .await
        .expect("re-create alias");
}

#[tokio::test]
async fn listing_and_markers() {
    let c = client();
    let mut mine = HashSet::new();
    for i in 0..3 {
        let (id, _) = new_key(&c).await;
        c.create_alias()
            .alias_name(format!("alias/sdk-list-{i}"))
            .target_key_id(&id)
            .send()
            .await
            .expect("alias");
        mine.insert(id);
    }
    let mut seen = HashSet::new();
    let mut marker = None;
    let mut pages = 0;
    loop {
        let page = c
            .list_keys()
            .limit(2)
            .set_marker(marker.take())
            .send()
            .await
            .expect("list keys");
        pages += 1;
        assert!(page.keys().len() <= 2);
        for k in page.keys() {
            let id = k.key_id().expect("id").to_owned();
            assert_eq!(k.key_arn(), Some(arn_of(&id).as_str()));
            assert!(seen.insert(id), "no key twice");
        }
        if !page.truncated() {
            assert!(page.next_marker().is_none());
            break;
        }
        marker = Some(page.next_marker().expect("marker").to_owned());
    }
    assert!(pages >= 2);
    assert!(mine.is_subset(&seen));

    // The SDK paginator drives the same markers.
    let mut names = Vec::new();
    let mut stream = c.list_aliases().limit(1).into_paginator().send();
    while let Some(page) = stream.next().await {
        for a in page.expect("page").aliases() {
            names.push(a.alias_name().expect("name").to_owned());
        }
    }
    for i in 0..3 {
        assert!(names.contains(&format!("alias/sdk-list-{i}")));
    }

    assert_eq!(
        code(c.list_keys().marker("not-a-marker").send().await),
        "InvalidMarkerException"
    );
    assert_eq!(
        code(c.list_aliases().marker("bad marker!").send().await),
        "InvalidMarkerException"
    );
    assert_eq!(
        code(c.list_keys().limit(0).send().await),
        "ValidationException"
    );
    assert_eq!(
        code(c.list_aliases().limit(1001).send().await),
        "ValidationException"
    );
}

#[tokio::test]
async fn crypto_validation_and_errors() {
    let c = client();
    let (id, _) = new_key(&c).await;
    let enc = |pt: Vec<u8>| c.encrypt().key_id(&id).plaintext(Blob::new(pt)).send();
    assert_eq!(code(enc(Vec::new()).await), "ValidationException");
    assert_eq!(code(enc(vec![1; 4097]).await), "ValidationException");
    enc(vec![1; 4096]).await.expect("4096 bytes is the limit");

    assert_eq!(
        code(c.encrypt().plaintext(Blob::new(b"x".to_vec())).send().await),
        "ValidationException",
        "missing KeyId"
    );
    for missing in [
        "00000000-0000-4000-8000-000000000000".to_string(),
        arn_of("00000000-0000-4000-8000-000000000000"),
        "alias/sdk-nope".into(),
        "not-a-key".into(),
        "arn:aws:kms:eu-west-1:111122223333:key/00000000-0000-4000-8000-000000000000".into(),
    ] {
        assert_eq!(
            code(
                c.encrypt()
                    .key_id(&missing)
                    .plaintext(Blob::new(b"x".to_vec()))
                    .send()
                    .await
            ),
            "NotFoundException",
            "{missing}"
        );
    }
    assert_eq!(
        code(
            c.encrypt()
                .key_id(&id)
                .plaintext(Blob::new(b"x".to_vec()))
                .encryption_algorithm(aws_sdk_kms::types::EncryptionAlgorithmSpec::RsaesOaepSha256)
                .send()
                .await
        ),
        "InvalidKeyUsageException"
    );

    let gdk = || c.generate_data_key().key_id(&id);
    assert_eq!(code(gdk().send().await), "ValidationException");
    assert_eq!(
        code(
            gdk()
                .key_spec(DataKeySpec::Aes256)
                .number_of_bytes(32)
                .send()
                .await
        ),
        "ValidationException"
    );
    assert_eq!(
        code(gdk().number_of_bytes(1025).send().await),
        "ValidationException"
    );
    assert_eq!(
        code(gdk().number_of_bytes(0).send().await),
        "ValidationException"
    );
    assert_eq!(
        code(
            gdk()
                .key_spec(DataKeySpec::Aes256)
                .grant_tokens("")
                .send()
                .await
        ),
        "ValidationException"
    );

    for garbage in [vec![0u8; 10], vec![2u8; 200], vec![0xffu8; 6144]] {
        assert_eq!(
            code(c.decrypt().ciphertext_blob(Blob::new(garbage)).send().await),
            "InvalidCiphertextException"
        );
    }
    // Longer than the model's 6144 bytes: the model's ValidationException.
    assert_eq!(
        code(
            c.decrypt()
                .ciphertext_blob(Blob::new(vec![1u8; 6145]))
                .send()
                .await
        ),
        "ValidationException"
    );
    assert_eq!(code(c.decrypt().send().await), "ValidationException");

    // Tampering with any byte is caught.
    let blob = enc(b"secret".to_vec())
        .await
        .expect("encrypt")
        .ciphertext_blob
        .expect("blob");
    let mut bytes = blob.into_inner();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert_eq!(
        code(c.decrypt().ciphertext_blob(Blob::new(bytes)).send().await),
        "InvalidCiphertextException"
    );
}

#[tokio::test]
async fn dry_run() {
    let c = client();
    let (id, _) = new_key(&c).await;
    let blob = c
        .encrypt()
        .key_id(&id)
        .plaintext(Blob::new(b"d".to_vec()))
        .send()
        .await
        .expect("encrypt")
        .ciphertext_blob
        .expect("blob");
    assert_eq!(
        code(
            c.encrypt()
                .key_id(&id)
                .plaintext(Blob::new(b"d".to_vec()))
                .dry_run(true)
                .send()
                .await
        ),
        "DryRunOperationException"
    );
    assert_eq!(
        code(
            c.decrypt()
                .ciphertext_blob(blob.clone())
                .dry_run(true)
                .send()
                .await
        ),
        "DryRunOperationException"
    );
    assert_eq!(
        code(
            c.generate_data_key()
                .key_id(&id)
                .key_spec(DataKeySpec::Aes256)
                .dry_run(true)
                .send()
                .await
        ),
        "DryRunOperationException"
    );
    assert_eq!(
        code(
            c.re_encrypt()
                .ciphertext_blob(blob.clone())
                .destination_key_id(&id)
                .dry_run(true)
                .send()
                .await
        ),
        "DryRunOperationException"
    );
    // A dry run that would fail reports the real error instead.
    assert_eq!(
        code(
            c.decrypt()
                .ciphertext_blob(blob)
                .encryption_context("k", "v")
                .dry_run(true)
                .send()
                .await
        ),
        "InvalidCiphertextException"
    );
}

#[tokio::test]
async fn re_encrypt_between_keys_and_contexts() {
    let c = client();
    let (k1, arn1) = new_key(&c).await;
    let (k2, arn2) = new_key(&c).await;
    let a = ctx(&[("stage", "a")]);
    let b = ctx(&[("stage", "b")]);
    let blob = c
        .encrypt()
        .key_id(&k1)
        .plaintext(Blob::new(b"moving".to_vec()))
        .set_encryption_context(Some(a.clone()))
        .send()
        .await
        .expect("encrypt")
        .ciphertext_blob
        .expect("blob");
    let r = c
        .re_encrypt()
        .ciphertext_blob(blob.clone())
        .set_source_encryption_context(Some(a.clone()))
        .destination_key_id(&k2)
        .set_destination_encryption_context(Some(b.clone()))
        .send()
        .await
        .expect("re-encrypt");
    assert_eq!(r.source_key_id(), Some(arn1.as_str()));
    assert_eq!(r.key_id(), Some(arn2.as_str()));
    let moved = r.ciphertext_blob.expect("blob");
    let d = c
        .decrypt()
        .ciphertext_blob(moved.clone())
        .set_encryption_context(Some(b))
        .send()
        .await
        .expect("decrypt moved");
    assert_eq!(d.plaintext().expect("pt").as_ref(), b"moving");
    assert_eq!(d.key_id(), Some(arn2.as_str()));
    assert_eq!(
        code(
            c.decrypt()
                .ciphertext_blob(moved)
                .set_encryption_context(Some(a.clone()))
                .send()
                .await
        ),
        "InvalidCiphertextException"
    );
    assert_eq!(
        code(
            c.re_encrypt()
                .ciphertext_blob(blob.clone())
                .destination_key_id(&k2)
                .send()
                .await
        ),
        "InvalidCiphertextException",
        "wrong source context"
    );
    assert_eq!(
        code(
            c.re_encrypt()
                .ciphertext_blob(blob)
                .set_source_encryption_context(Some(a))
                .source_key_id(&k2)
                .destination_key_id(&k2)
                .send()
                .await
        ),
        "IncorrectKeyException"
    );
}

#[tokio::test]
async fn generate_random() {
    let c = client();
    let a = c
        .generate_random()
        .number_of_bytes(32)
        .send()
        .await
        .expect("random");
    let b = c
        .generate_random()
        .number_of_bytes(32)
        .send()
        .await
        .expect("random");
    let (a, b) = (a.plaintext.expect("a"), b.plaintext.expect("b"));
    assert_eq!(a.as_ref().len(), 32);
    assert_ne!(a, b);
    for n in [0, 1025] {
        assert_eq!(
            code(c.generate_random().number_of_bytes(n).send().await),
            "ValidationException"
        );
    }
    assert_eq!(
        code(c.generate_random().send().await),
        "ValidationException"
    );
    // Results sealed to a Nitro enclave: refused, never answered in plaintext.
    let recipient = aws_sdk_kms::types::RecipientInfo::builder()
        .attestation_document(Blob::new(vec![1, 2, 3]))
        .key_encryption_algorithm(aws_sdk_kms::types::KeyEncryptionMechanism::RsaesOaepSha256)
        .build();
    assert_eq!(
        code(
            c.generate_random()
                .number_of_bytes(8)
                .recipient(recipient)
                .send()
                .await
        ),
        "UnsupportedOperationException"
    );
}

#[tokio::test]
async fn create_key_limits() {
    let c = client();
    // A usage the (default) symmetric spec does not have, and a pair AWS does not offer.
    assert_eq!(
        code(
            c.create_key()
                .key_usage(KeyUsageType::SignVerify)
                .send()
                .await
        ),
        "ValidationException",
        "SIGN_VERIFY is not a usage of SYMMETRIC_DEFAULT keys"
    );
    assert_eq!(
        code(
            c.create_key()
                .key_spec(KeySpec::Hmac256)
                .key_usage(KeyUsageType::EncryptDecrypt)
                .send()
                .await
        ),
        "ValidationException"
    );
    assert_eq!(
        code(
            c.create_key()
                .key_spec(KeySpec::EccNistP256)
                .key_usage(KeyUsageType::EncryptDecrypt)
                .send()
                .await
        ),
        "ValidationException"
    );
    // Real AWS specs no PKCS#11 token offers.
    for spec in [KeySpec::Sm2, KeySpec::MlDsa65] {
        assert_eq!(
            code(
                c.create_key()
                    .key_spec(spec.clone())
                    .key_usage(KeyUsageType::SignVerify)
                    .send()
                    .await
            ),
            "UnsupportedOperationException",
            "{spec:?}"
        );
    }
    // Imported key material: symmetric encryption keys only (tests/import.rs has the rest).
    assert_eq!(
        code(
            c.create_key()
                .origin(OriginType::External)
                .key_spec(KeySpec::Hmac256)
                .key_usage(KeyUsageType::GenerateVerifyMac)
                .send()
                .await
        ),
        "UnsupportedOperationException"
    );
    assert_eq!(
        code(c.create_key().origin(OriginType::AwsCloudhsm).send().await),
        "UnsupportedOperationException"
    );
    // Multi-Region keys are served (tests/api_multiregion.rs), but not with imported
    // key material.
    assert_eq!(
        code(
            c.create_key()
                .multi_region(true)
                .origin(OriginType::External)
                .send()
                .await
        ),
        "UnsupportedOperationException"
    );
    assert_eq!(
        code(
            c.create_key()
                .tags(
                    Tag::builder()
                        .tag_key("")
                        .tag_value("v")
                        .build()
                        .expect("tag")
                )
                .send()
                .await
        ),
        "ValidationException",
        "an empty tag key breaks the model's length constraint"
    );
    assert_eq!(
        code(
            c.create_key()
                .tags(
                    Tag::builder()
                        .tag_key("aws:reserved")
                        .tag_value("v")
                        .build()
                        .expect("tag")
                )
                .send()
                .await
        ),
        "TagException"
    );
    assert_eq!(
        code(c.create_key().description("d".repeat(8193)).send().await),
        "ValidationException"
    );
    let m = c
        .create_key()
        .key_usage(KeyUsageType::EncryptDecrypt)
        .key_spec(KeySpec::SymmetricDefault)
        .origin(OriginType::AwsKms)
        .policy(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"}]}"#,
        )
        .send()
        .await
        .expect("explicit defaults")
        .key_metadata
        .expect("metadata");
    assert_eq!(m.key_manager().map(|k| k.as_str()), Some("CUSTOMER"));
    assert_eq!(m.origin().map(|o| o.as_str()), Some("AWS_KMS"));
    assert_eq!(m.multi_region(), Some(false));
}

#[tokio::test]
async fn decrypt_of_a_deleted_key_is_not_found() {
    let c = client();
    let (id, _) = new_key(&c).await;
    let blob = c
        .encrypt()
        .key_id(&id)
        .plaintext(Blob::new(b"gone".to_vec()))
        .send()
        .await
        .expect("encrypt")
        .ciphertext_blob
        .expect("blob");
    c.schedule_key_deletion()
        .key_id(&id)
        .pending_window_in_days(7)
        .send()
        .await
        .expect("schedule");
    assert_eq!(
        code(c.decrypt().ciphertext_blob(blob.clone()).send().await),
        "KMSInvalidStateException"
    );
    // Let the sweeper run as if the window had passed.
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        + 8 * 86_400_000;
    let swept = common::kms().sweep_deletions_at(later).expect("sweep");
    assert!(swept.iter().any(|k| k.to_string() == id));
    assert_eq!(
        code(c.decrypt().ciphertext_blob(blob).send().await),
        "NotFoundException"
    );
    assert_eq!(
        code(c.describe_key().key_id(&id).send().await),
        "NotFoundException"
    );
}

#[tokio::test]
async fn unsupported_operations_answer_by_name() {
    let c = client();
    let (id, _) = new_key(&c).await;
    assert_eq!(
        code(c.describe_custom_key_stores().send().await),
        "UnsupportedOperationException"
    );
    assert_eq!(
        code(c.get_key_last_usage().key_id(&id).send().await),
        "UnsupportedOperationException"
    );
}

#[tokio::test]
async fn authentication_failures_reach_the_sdk_by_name() {
    let (id, _) = dev_credentials();
    let wrong_secret = sdk::client(&server().endpoint, REGION, &id, "not-the-secret", None);
    assert_eq!(
        code(wrong_secret.list_keys().send().await),
        "InvalidSignatureException"
    );
    let unknown = sdk::client(
        &server().endpoint,
        REGION,
        "AKIAUNKNOWNKEY000001",
        "whatever",
        None,
    );
    assert_eq!(
        code(unknown.list_keys().send().await),
        "UnrecognizedClientException"
    );
}

#[tokio::test]
async fn restricted_principal() {
    let admin = client();
    let r = restricted_client();
    let (allowed, allowed_arn) = new_key(&admin).await;
    let (other, other_arn) = new_key(&admin).await;
    admin
        .create_alias()
        .alias_name(ALLOWED_ALIAS)
        .target_key_id(&allowed)
        .send()
        .await
        .expect("alias");

    // Allowed action on the allowed key, by every form.
    for form in [
        allowed.clone(),
        allowed_arn.clone(),
        ALLOWED_ALIAS.to_string(),
    ] {
        r.encrypt()
            .key_id(&form)
            .plaintext(Blob::new(b"ok".to_vec()))
            .send()
            .await
            .expect("allowed encrypt");
    }
    let blob = r
        .generate_data_key()
        .key_id(ALLOWED_ALIAS)
        .key_spec(DataKeySpec::Aes256)
        .send()
        .await
        .expect("allowed data key")
        .ciphertext_blob
        .expect("blob");
    r.decrypt()
        .ciphertext_blob(blob)
        .send()
        .await
        .expect("allowed decrypt");

    // Another key: denied, naming principal, action and key.
    let err = r
        .encrypt()
        .key_id(&other)
        .plaintext(Blob::new(b"no".to_vec()))
        .send()
        .await
        .expect_err("other key");
    let se = err.into_service_error();
    assert_eq!(se.code(), Some("AccessDeniedException"));
    let msg = se.message().expect("message");
    assert!(
        msg.contains(api_support::RESTRICTED_ARN)
            && msg.contains("kms:Encrypt")
            && msg.contains(&other_arn),
        "{msg}"
    );
    let foreign = admin
        .encrypt()
        .key_id(&other)
        .plaintext(Blob::new(b"x".to_vec()))
        .send()
        .await
        .expect("admin encrypt")
        .ciphertext_blob
        .expect("blob");
    assert_eq!(
        code(r.decrypt().ciphertext_blob(foreign).send().await),
        "AccessDeniedException",
        "the key named by the blob is what counts"
    );
    // Actions outside the list.
    assert_eq!(code(r.create_key().send().await), "AccessDeniedException");
    assert_eq!(code(r.list_keys().send().await), "AccessDeniedException");
    assert_eq!(
        code(
            r.generate_data_key_without_plaintext()
                .key_id(ALLOWED_ALIAS)
                .key_spec(DataKeySpec::Aes256)
                .send()
                .await
        ),
        "AccessDeniedException"
    );
    assert_eq!(
        code(r.disable_key().key_id(&allowed).send().await),
        "AccessDeniedException"
    );

    // The allowed alias follows its target.
    admin
        .update_alias()
        .alias_name(ALLOWED_ALIAS)
        .target_key_id(&other)
        .send()
        .await
        .expect("retarget");
    r.describe_key()
        .key_id(&other)
        .send()
        .await
        .expect("now allowed");
    assert_eq!(
        code(r.describe_key().key_id(&allowed).send().await),
        "AccessDeniedException"
    );
    admin
        .update_alias()
        .alias_name(ALLOWED_ALIAS)
        .target_key_id(&allowed)
        .send()
        .await
        .expect("restore");
}

#[tokio::test]
async fn over_tls() {
    let (id, secret) = dev_credentials();
    let tls = api_support::tls_server();
    // By IP (the certificate names 127.0.0.1) and by name.
    for endpoint in [
        tls.endpoint.clone(),
        format!("https://localhost:{}", tls.addr.port()),
    ] {
        let c = sdk::client(&endpoint, REGION, &id, &secret, Some(api_support::ca_pem()));
        let (key, _) = new_key(&c).await;
        let blob = c
            .encrypt()
            .key_id(&key)
            .plaintext(Blob::new(b"over tls".to_vec()))
            .send()
            .await
            .expect("encrypt over tls")
            .ciphertext_blob
            .expect("blob");
        let d = c
            .decrypt()
            .ciphertext_blob(blob)
            .send()
            .await
            .expect("decrypt over tls");
        assert_eq!(d.plaintext().expect("pt").as_ref(), b"over tls");
    }
    // A client that does not trust our CA fails the handshake, not the request.
    let untrusting = sdk::client(&tls.endpoint, REGION, &id, &secret, None);
    assert!(untrusting.list_keys().send().await.is_err());
}

// ---- Asymmetric and HMAC keys --------------------------------------------------------------

/// CreateKey of `spec` for `usage`; `None`, said visibly, when the server answers that this
/// token cannot make such a key (UnsupportedOperationException). Any other failure fails.
async fn create_or_skip(
    c: &Client,
    test: &str,
    spec: KeySpec,
    usage: KeyUsageType,
) -> Option<KeyMetadata> {
    match c
        .create_key()
        .key_spec(spec.clone())
        .key_usage(usage.clone())
        .send()
        .await
    {
        Ok(out) => Some(out.key_metadata.expect("metadata")),
        Err(e) if e.code() == Some("UnsupportedOperationException") => {
            common::skip(
                test,
                &format!(
                    "CreateKey {} {}: UnsupportedOperationException: {}",
                    spec.as_str(),
                    usage.as_str(),
                    e.message().unwrap_or("")
                ),
            );
            None
        }
        Err(e) => panic!("CreateKey {} {}: {e:?}", spec.as_str(), usage.as_str()),
    }
}

async fn create(c: &Client, spec: KeySpec, usage: KeyUsageType) -> KeyMetadata {
    c.create_key()
        .key_spec(spec.clone())
        .key_usage(usage.clone())
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateKey {} {}: {e:?}", spec.as_str(), usage.as_str()))
        .key_metadata
        .expect("metadata")
}

/// The names of a list of SDK enum values, sorted (AWS does not promise an order).
fn names<T: AsRef<str>>(v: &[T]) -> Vec<String> {
    let mut n: Vec<String> = v.iter().map(|x| x.as_ref().to_owned()).collect();
    n.sort();
    n
}

/// What KeyMetadata says a key can do, as the SDK parsed it.
#[derive(Debug, PartialEq)]
struct Offers {
    encryption: Vec<String>,
    signing: Vec<String>,
    mac: Vec<String>,
    key_agreement: Vec<String>,
}

impl Offers {
    fn of(m: &KeyMetadata) -> Self {
        Offers {
            encryption: names(m.encryption_algorithms()),
            signing: names(m.signing_algorithms()),
            mac: names(m.mac_algorithms()),
            key_agreement: names(m.key_agreement_algorithms()),
        }
    }

    /// The lists AWS gives a key of `spec` for `usage` (KMS Developer Guide, key spec
    /// reference).
    fn expected(spec: &KeySpec, usage: &KeyUsageType) -> Self {
        use SigningAlgorithmSpec as S;
        let mut o = Offers {
            encryption: vec![],
            signing: vec![],
            mac: vec![],
            key_agreement: vec![],
        };
        match (spec, usage) {
            (KeySpec::Rsa2048, KeyUsageType::EncryptDecrypt) => {
                o.encryption = names(&[
                    EncryptionAlgorithmSpec::RsaesOaepSha1,
                    EncryptionAlgorithmSpec::RsaesOaepSha256,
                ])
            }
            (KeySpec::Rsa2048, KeyUsageType::SignVerify) => {
                o.signing = names(&[
                    S::RsassaPssSha256,
                    S::RsassaPssSha384,
                    S::RsassaPssSha512,
                    S::RsassaPkcs1V15Sha256,
                    S::RsassaPkcs1V15Sha384,
                    S::RsassaPkcs1V15Sha512,
                ])
            }
            (KeySpec::EccNistP256, KeyUsageType::SignVerify) => {
                o.signing = names(&[S::EcdsaSha256])
            }
            (KeySpec::EccNistP256, KeyUsageType::KeyAgreement) => {
                o.key_agreement = names(&[KeyAgreementAlgorithmSpec::Ecdh])
            }
            (KeySpec::EccNistEdwards25519, KeyUsageType::SignVerify) => {
                o.signing = names(&[S::Ed25519Sha512, S::Ed25519PhSha512])
            }
            (KeySpec::Hmac256, KeyUsageType::GenerateVerifyMac) => {
                o.mac = names(&[MacAlgorithmSpec::HmacSha256])
            }
            other => panic!("no expectation for {other:?}"),
        }
        o
    }
}

/// Every family through CreateKey, DescribeKey and GetPublicKey: the specs, usages and
/// algorithm lists AWS gives, parsed by the SDK into its own enums (an `Unknown(..)` variant
/// would not compare equal to the known names checked here), and public keys that
/// independent libraries read.
#[tokio::test]
#[allow(deprecated)] // CustomerMasterKeySpec: deprecated by AWS, still sent and parsed.
async fn asymmetric_and_hmac_key_metadata_and_public_keys() {
    use aws_sdk_kms::types::CustomerMasterKeySpec;
    const TEST: &str = "asymmetric_and_hmac_key_metadata_and_public_keys";
    let c = client();
    let families = [
        (KeySpec::Rsa2048, KeyUsageType::SignVerify),
        (KeySpec::Rsa2048, KeyUsageType::EncryptDecrypt),
        (KeySpec::EccNistP256, KeyUsageType::SignVerify),
        (KeySpec::EccNistP256, KeyUsageType::KeyAgreement),
        (KeySpec::EccNistEdwards25519, KeyUsageType::SignVerify),
        (KeySpec::Hmac256, KeyUsageType::GenerateVerifyMac),
    ];
    for (spec, usage) in families {
        let what = format!("{} {}", spec.as_str(), usage.as_str());
        let Some(created) = create_or_skip(&c, TEST, spec.clone(), usage.clone()).await else {
            continue;
        };
        let described = c
            .describe_key()
            .key_id(&created.key_id)
            .send()
            .await
            .expect("describe")
            .key_metadata
            .expect("metadata");
        for m in [&created, &described] {
            assert_eq!(m.key_spec(), Some(&spec), "{what}");
            assert_eq!(m.key_usage(), Some(&usage), "{what}");
            // The deprecated mirror of KeySpec: the same value where its enum has one
            // (it has no ECC_NIST_EDWARDS25519), else absent; never an Unknown(..).
            let cmk_spec = m.customer_master_key_spec();
            if CustomerMasterKeySpec::values().contains(&spec.as_str()) {
                assert_eq!(
                    cmk_spec,
                    Some(&CustomerMasterKeySpec::from(spec.as_str())),
                    "{what}"
                );
            } else {
                assert_eq!(cmk_spec, None, "{what}");
            }
            assert_eq!(m.key_state(), Some(&KeyState::Enabled));
            assert_eq!(m.origin(), Some(&OriginType::AwsKms));
            assert_eq!(Offers::of(m), Offers::expected(&spec, &usage), "{what}");
        }

        let pk = c.get_public_key().key_id(&created.key_id).send().await;
        if spec == KeySpec::Hmac256 {
            assert_eq!(code(pk), "UnsupportedOperationException", "{what}");
            continue;
        }
        let pk = pk.expect("get public key");
        assert_eq!(pk.key_id(), created.arn());
        assert_eq!(pk.key_spec(), Some(&spec), "{what}");
        assert_eq!(pk.key_usage(), Some(&usage), "{what}");
        assert_eq!(
            pk.customer_master_key_spec(),
            created.customer_master_key_spec(),
            "{what}"
        );
        let offers = Offers {
            encryption: names(pk.encryption_algorithms()),
            signing: names(pk.signing_algorithms()),
            mac: vec![],
            key_agreement: names(pk.key_agreement_algorithms()),
        };
        assert_eq!(offers, Offers::expected(&spec, &usage), "{what}");
        let spki = pk.public_key().expect("public key").as_ref();
        spki_of(&spec, spki);
    }
    // The deprecated member still creates keys.
    let m = c
        .create_key()
        .customer_master_key_spec(CustomerMasterKeySpec::EccNistP256)
        .key_usage(KeyUsageType::SignVerify)
        .send()
        .await
        .expect("CustomerMasterKeySpec")
        .key_metadata
        .expect("metadata");
    assert_eq!(m.key_spec(), Some(&KeySpec::EccNistP256));
    // KeyUsage defaults to ENCRYPT_DECRYPT, which RSA keys have.
    let m = c
        .create_key()
        .key_spec(KeySpec::Rsa2048)
        .send()
        .await
        .expect("RSA_2048 without KeyUsage")
        .key_metadata
        .expect("metadata");
    assert_eq!(m.key_usage(), Some(&KeyUsageType::EncryptDecrypt));
    // Symmetric keys have no public key either.
    let (sym, _) = new_key(&c).await;
    assert_eq!(
        code(c.get_public_key().key_id(&sym).send().await),
        "UnsupportedOperationException"
    );
}

/// Parses a SubjectPublicKeyInfo of `spec` with an independent library (panics if it does
/// not parse as that kind of key).
fn spki_of(spec: &KeySpec, spki: &[u8]) {
    use p256::pkcs8::DecodePublicKey as _;
    match spec {
        KeySpec::Rsa2048 => {
            use rsa::traits::PublicKeyParts as _;
            let k = rsa::RsaPublicKey::from_public_key_der(spki).expect("RSA SPKI");
            assert_eq!(k.size(), 256);
        }
        KeySpec::EccNistP256 => {
            p256::PublicKey::from_public_key_der(spki).expect("P-256 SPKI");
        }
        KeySpec::EccNistEdwards25519 => {
            ed25519_dalek::VerifyingKey::from_public_key_der(spki).expect("Ed25519 SPKI");
        }
        other => panic!("no parser for {other:?}"),
    }
}

async fn public_key(c: &Client, key: &str) -> Vec<u8> {
    c.get_public_key()
        .key_id(key)
        .send()
        .await
        .expect("get public key")
        .public_key
        .expect("public key")
        .into_inner()
}

async fn sign(
    c: &Client,
    key: &str,
    alg: &SigningAlgorithmSpec,
    mtype: MessageType,
    message: &[u8],
) -> Vec<u8> {
    let out = c
        .sign()
        .key_id(key)
        .signing_algorithm(alg.clone())
        .message_type(mtype.clone())
        .message(Blob::new(message.to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("sign {} {}: {e:?}", alg.as_str(), mtype.as_str()));
    assert_eq!(out.signing_algorithm(), Some(alg));
    assert_eq!(out.key_id(), Some(arn_of(key).as_str()));
    out.signature.expect("signature").into_inner()
}

/// Verify through the SDK: `Ok(())` when valid, else the typed error.
async fn verify(
    c: &Client,
    key: &str,
    alg: &SigningAlgorithmSpec,
    mtype: MessageType,
    message: &[u8],
    signature: &[u8],
) -> Result<(), aws_sdk_kms::operation::verify::VerifyError> {
    match c
        .verify()
        .key_id(key)
        .signing_algorithm(alg.clone())
        .message_type(mtype)
        .message(Blob::new(message.to_vec()))
        .signature(Blob::new(signature.to_vec()))
        .send()
        .await
    {
        Ok(out) => {
            assert!(out.signature_valid(), "a valid answer says SignatureValid");
            assert_eq!(out.signing_algorithm(), Some(alg));
            assert_eq!(out.key_id(), Some(arn_of(key).as_str()));
            Ok(())
        }
        Err(e) => Err(e.into_service_error()),
    }
}

fn is_invalid_signature(r: Result<(), aws_sdk_kms::operation::verify::VerifyError>) -> bool {
    matches!(
        r,
        Err(aws_sdk_kms::operation::verify::VerifyError::KmsInvalidSignatureException(_))
    )
}

fn digest_of(alg: &SigningAlgorithmSpec, message: &[u8]) -> Vec<u8> {
    let name = alg.as_str();
    if name.ends_with("SHA_256") {
        sha2::Sha256::digest(message).to_vec()
    } else if name.ends_with("SHA_384") {
        sha2::Sha384::digest(message).to_vec()
    } else {
        assert!(name.ends_with("SHA_512"), "{name}");
        sha2::Sha512::digest(message).to_vec()
    }
}

/// RSA: every algorithm the key lists, RAW and DIGEST, through the SDK and checked by the
/// `rsa` crate (PSS with salt length = digest length, PKCS #1 v1.5); a changed message or
/// signature is the SDK's KmsInvalidSignatureException.
#[tokio::test]
async fn sign_and_verify_rsa() {
    use rsa::pkcs8::DecodePublicKey as _;
    let c = client();
    let key = create(&c, KeySpec::Rsa2048, KeyUsageType::SignVerify).await;
    let id = key.key_id.clone();
    let pk = rsa::RsaPublicKey::from_public_key_der(&public_key(&c, &id).await).expect("SPKI");
    let message = b"to be signed by the token".to_vec();
    assert_eq!(key.signing_algorithms().len(), 6);
    for alg in key.signing_algorithms() {
        let name = alg.as_str();
        let digest = digest_of(alg, &message);
        let raw = sign(&c, &id, alg, MessageType::Raw, &message).await;
        let over_digest = sign(&c, &id, alg, MessageType::Digest, &digest).await;
        assert_eq!(raw.len(), 256, "{name}");
        for sig in [&raw, &over_digest] {
            let checked = match (name.starts_with("RSASSA_PSS_"), digest.len()) {
                (true, 32) => pk.verify(rsa::Pss::new::<rsa::sha2::Sha256>(), &digest, sig),
                (true, 48) => pk.verify(rsa::Pss::new::<rsa::sha2::Sha384>(), &digest, sig),
                (true, _) => pk.verify(rsa::Pss::new::<rsa::sha2::Sha512>(), &digest, sig),
                (false, 32) => {
                    pk.verify(rsa::Pkcs1v15Sign::new::<rsa::sha2::Sha256>(), &digest, sig)
                }
                (false, 48) => {
                    pk.verify(rsa::Pkcs1v15Sign::new::<rsa::sha2::Sha384>(), &digest, sig)
                }
                (false, _) => {
                    pk.verify(rsa::Pkcs1v15Sign::new::<rsa::sha2::Sha512>(), &digest, sig)
                }
            };
            checked.unwrap_or_else(|e| panic!("{name}: the rsa crate rejects it: {e}"));
            // Either form of the message verifies either signature.
            verify(&c, &id, alg, MessageType::Raw, &message, sig)
                .await
                .unwrap_or_else(|e| panic!("{name} RAW: {e:?}"));
            verify(&c, &id, alg, MessageType::Digest, &digest, sig)
                .await
                .unwrap_or_else(|e| panic!("{name} DIGEST: {e:?}"));
        }
        if name.starts_with("RSASSA_PKCS1_V1_5_") {
            assert_eq!(raw, over_digest, "{name} is deterministic");
        } else {
            assert_ne!(raw, over_digest, "{name} is randomized (salted)");
        }
        let mut changed = message.clone();
        changed[0] ^= 1;
        assert!(
            is_invalid_signature(verify(&c, &id, alg, MessageType::Raw, &changed, &raw).await),
            "{name}: changed message"
        );
        let mut bad = raw.clone();
        bad[100] ^= 0x40;
        assert!(
            is_invalid_signature(verify(&c, &id, alg, MessageType::Raw, &message, &bad).await),
            "{name}: changed signature"
        );
        // A digest of the wrong length is refused before anything is signed.
        assert_eq!(
            code(
                c.sign()
                    .key_id(&id)
                    .signing_algorithm(alg.clone())
                    .message_type(MessageType::Digest)
                    .message(Blob::new(vec![1; 20]))
                    .send()
                    .await
            ),
            "ValidationException",
            "{name}"
        );
    }
    // A PSS signature is not a PKCS #1 v1.5 one.
    let pss = sign(
        &c,
        &id,
        &SigningAlgorithmSpec::RsassaPssSha256,
        MessageType::Raw,
        &message,
    )
    .await;
    assert!(is_invalid_signature(
        verify(
            &c,
            &id,
            &SigningAlgorithmSpec::RsassaPkcs1V15Sha256,
            MessageType::Raw,
            &message,
            &pss
        )
        .await
    ));
    // An algorithm of another key type.
    let wrong = c
        .sign()
        .key_id(&id)
        .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
        .message(Blob::new(message.clone()))
        .send()
        .await
        .expect_err("ECDSA with an RSA key");
    assert!(
        matches!(
            wrong.into_service_error(),
            aws_sdk_kms::operation::sign::SignError::InvalidKeyUsageException(_)
        ),
        "typed SDK error"
    );
    assert_eq!(
        code(
            c.sign()
                .key_id(&id)
                .signing_algorithm(SigningAlgorithmSpec::RsassaPssSha256)
                .message(Blob::new(vec![0; 4097]))
                .send()
                .await
        ),
        "ValidationException",
        "RAW messages are at most 4096 bytes"
    );
}

/// ECDSA P-256 (DER signatures, checked by the `p256` crate) and Ed25519 (checked by
/// `ed25519-dalek`), RAW and DIGEST where the algorithm takes them.
#[tokio::test]
async fn sign_and_verify_ecc() {
    use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
    use p256::ecdsa::signature::Verifier as _;
    use p256::pkcs8::DecodePublicKey as _;
    const TEST: &str = "sign_and_verify_ecc";
    let c = client();
    let message = b"an ECC signature".to_vec();

    let key = create(&c, KeySpec::EccNistP256, KeyUsageType::SignVerify).await;
    let id = key.key_id.clone();
    let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&public_key(&c, &id).await)
        .expect("P-256 SPKI");
    let alg = SigningAlgorithmSpec::EcdsaSha256;
    let digest = sha2::Sha256::digest(&message).to_vec();
    let raw = sign(&c, &id, &alg, MessageType::Raw, &message).await;
    let over_digest = sign(&c, &id, &alg, MessageType::Digest, &digest).await;
    for sig in [&raw, &over_digest] {
        let s = p256::ecdsa::Signature::from_der(sig).expect("a DER ECDSA signature");
        vk.verify(&message, &s).expect("p256 verifies RAW");
        vk.verify_prehash(&digest, &s)
            .expect("p256 verifies DIGEST");
        verify(&c, &id, &alg, MessageType::Raw, &message, sig)
            .await
            .expect("verify RAW");
        verify(&c, &id, &alg, MessageType::Digest, &digest, sig)
            .await
            .expect("verify DIGEST");
    }
    assert!(is_invalid_signature(
        verify(&c, &id, &alg, MessageType::Raw, b"another message", &raw).await
    ));
    // Not DER at all, and a well-formed signature of another message.
    assert!(is_invalid_signature(
        verify(
            &c,
            &id,
            &alg,
            MessageType::Raw,
            &message,
            &[0x30, 0x02, 0x01]
        )
        .await
    ));
    let other = sign(&c, &id, &alg, MessageType::Raw, b"another message").await;
    assert!(is_invalid_signature(
        verify(&c, &id, &alg, MessageType::Raw, &message, &other).await
    ));
    assert_eq!(
        code(
            c.sign()
                .key_id(&id)
                .signing_algorithm(SigningAlgorithmSpec::EcdsaSha384)
                .message(Blob::new(message.clone()))
                .send()
                .await
        ),
        "InvalidKeyUsageException",
        "a P-256 key signs with ECDSA_SHA_256 only"
    );

    let Some(ed) = create_or_skip(
        &c,
        TEST,
        KeySpec::EccNistEdwards25519,
        KeyUsageType::SignVerify,
    )
    .await
    else {
        return;
    };
    let id = ed.key_id.clone();
    let vk = ed25519_dalek::VerifyingKey::from_public_key_der(&public_key(&c, &id).await)
        .expect("Ed25519 SPKI");
    let alg = SigningAlgorithmSpec::Ed25519Sha512;
    let sig = sign(&c, &id, &alg, MessageType::Raw, &message).await;
    let again = sign(&c, &id, &alg, MessageType::Raw, &message).await;
    assert_eq!(sig, again, "Ed25519 is deterministic");
    let s = ed25519_dalek::Signature::from_slice(&sig).expect("64 bytes");
    vk.verify_strict(&message, &s)
        .expect("ed25519-dalek verifies");
    verify(&c, &id, &alg, MessageType::Raw, &message, &sig)
        .await
        .expect("verify");
    assert!(is_invalid_signature(
        verify(&c, &id, &alg, MessageType::Raw, b"changed", &sig).await
    ));
    // ED25519_SHA_512 signs the message itself; ED25519_PH_SHA_512 a SHA-512 digest.
    assert_eq!(
        code(
            c.sign()
                .key_id(&id)
                .signing_algorithm(alg.clone())
                .message_type(MessageType::Digest)
                .message(Blob::new(sha2::Sha512::digest(&message).to_vec()))
                .send()
                .await
        ),
        "ValidationException"
    );
    let ph = SigningAlgorithmSpec::Ed25519PhSha512;
    let digest = sha2::Sha512::digest(&message).to_vec();
    match c
        .sign()
        .key_id(&id)
        .signing_algorithm(ph.clone())
        .message_type(MessageType::Digest)
        .message(Blob::new(digest.clone()))
        .send()
        .await
    {
        Ok(out) => {
            let sig = out.signature.expect("signature").into_inner();
            verify(&c, &id, &ph, MessageType::Digest, &digest, &sig)
                .await
                .expect("verify Ed25519ph");
            assert!(is_invalid_signature(
                verify(&c, &id, &alg, MessageType::Raw, &message, &sig).await
            ));
        }
        Err(e) if e.code() == Some("UnsupportedOperationException") => common::skip(
            TEST,
            &format!(
                "Sign ED25519_PH_SHA_512: UnsupportedOperationException: {}",
                e.message().unwrap_or("")
            ),
        ),
        Err(e) => panic!("Sign ED25519_PH_SHA_512: {e:?}"),
    }
}

/// Sign and Verify name the key by alias name and alias ARN; the answers name the key ARN.
#[tokio::test]
async fn sign_with_alias_name_and_alias_arn() {
    let c = client();
    let key = create(&c, KeySpec::EccNistP256, KeyUsageType::SignVerify).await;
    let alias = "alias/sdk-signer";
    c.create_alias()
        .alias_name(alias)
        .target_key_id(&key.key_id)
        .send()
        .await
        .expect("alias");
    let alg = SigningAlgorithmSpec::EcdsaSha256;
    for form in [alias.to_string(), alias_arn(alias)] {
        let out = c
            .sign()
            .key_id(&form)
            .signing_algorithm(alg.clone())
            .message(Blob::new(b"by alias".to_vec()))
            .send()
            .await
            .expect("sign by alias");
        assert_eq!(out.key_id(), key.arn(), "{form}");
        let sig = out.signature.expect("signature");
        let v = c
            .verify()
            .key_id(&form)
            .signing_algorithm(alg.clone())
            .message(Blob::new(b"by alias".to_vec()))
            .signature(sig.clone())
            .send()
            .await
            .expect("verify by alias");
        assert!(v.signature_valid());
        assert_eq!(v.key_id(), key.arn());
        // The same signature under the key's own id.
        verify(
            &c,
            &key.key_id,
            &alg,
            MessageType::Raw,
            b"by alias",
            sig.as_ref(),
        )
        .await
        .expect("verify by id");
    }
    assert_eq!(
        code(
            c.sign()
                .key_id("alias/sdk-signer-missing")
                .signing_algorithm(alg)
                .message(Blob::new(b"x".to_vec()))
                .send()
                .await
        ),
        "NotFoundException"
    );
}

/// GenerateMac / VerifyMac for every HMAC spec; a changed message or MAC is the SDK's
/// KmsInvalidMacException.
#[tokio::test]
async fn generate_and_verify_mac() {
    use aws_sdk_kms::operation::verify_mac::VerifyMacError;
    let c = client();
    for (spec, alg, len) in [
        (KeySpec::Hmac224, MacAlgorithmSpec::HmacSha224, 28),
        (KeySpec::Hmac256, MacAlgorithmSpec::HmacSha256, 32),
        (KeySpec::Hmac384, MacAlgorithmSpec::HmacSha384, 48),
        (KeySpec::Hmac512, MacAlgorithmSpec::HmacSha512, 64),
    ] {
        let key = create(&c, spec.clone(), KeyUsageType::GenerateVerifyMac).await;
        assert_eq!(key.mac_algorithms(), std::slice::from_ref(&alg));
        let id = key.key_id.clone();
        let mac = |m: &'static [u8]| {
            c.generate_mac()
                .key_id(&id)
                .mac_algorithm(alg.clone())
                .message(Blob::new(m.to_vec()))
                .send()
        };
        let out = mac(b"message").await.expect("generate mac");
        assert_eq!(out.mac_algorithm(), Some(&alg));
        assert_eq!(out.key_id(), key.arn());
        let tag = out.mac.expect("mac").into_inner();
        assert_eq!(tag.len(), len, "{spec:?}");
        let again = mac(b"message").await.expect("again").mac.expect("mac");
        assert_eq!(again.as_ref(), tag.as_slice(), "HMAC is deterministic");
        let other = mac(b"messagf").await.expect("other").mac.expect("mac");
        assert_ne!(other.as_ref(), tag.as_slice());

        let check = |m: &'static [u8], t: Vec<u8>| {
            c.verify_mac()
                .key_id(&id)
                .mac_algorithm(alg.clone())
                .message(Blob::new(m.to_vec()))
                .mac(Blob::new(t))
                .send()
        };
        let ok = check(b"message", tag.clone()).await.expect("verify mac");
        assert!(ok.mac_valid());
        assert_eq!(ok.mac_algorithm(), Some(&alg));
        let e = check(b"messagf", tag.clone())
            .await
            .expect_err("changed message");
        assert!(
            matches!(
                e.into_service_error(),
                VerifyMacError::KmsInvalidMacException(_)
            ),
            "typed SDK error"
        );
        let mut bad = tag.clone();
        bad[len - 1] ^= 1;
        let e = check(b"message", bad).await.expect_err("changed mac");
        assert!(matches!(
            e.into_service_error(),
            VerifyMacError::KmsInvalidMacException(_)
        ));
        let e = check(b"message", tag[..len - 1].to_vec())
            .await
            .expect_err("shortened mac");
        assert!(matches!(
            e.into_service_error(),
            VerifyMacError::KmsInvalidMacException(_)
        ));
    }
    let key = create(&c, KeySpec::Hmac256, KeyUsageType::GenerateVerifyMac).await;
    assert_eq!(
        code(
            c.generate_mac()
                .key_id(&key.key_id)
                .mac_algorithm(MacAlgorithmSpec::HmacSha512)
                .message(Blob::new(b"m".to_vec()))
                .send()
                .await
        ),
        "InvalidKeyUsageException",
        "an HMAC_256 key MACs with HMAC_SHA_256 only"
    );
}

async fn decrypt_rsa(
    c: &Client,
    key: &str,
    alg: &EncryptionAlgorithmSpec,
    blob: Vec<u8>,
) -> Result<Vec<u8>, aws_sdk_kms::operation::decrypt::DecryptError> {
    match c
        .decrypt()
        .key_id(key)
        .encryption_algorithm(alg.clone())
        .ciphertext_blob(Blob::new(blob))
        .send()
        .await
    {
        Ok(d) => {
            assert_eq!(d.encryption_algorithm(), Some(alg));
            assert_eq!(d.key_id(), Some(arn_of(key).as_str()));
            Ok(d.plaintext.expect("plaintext").into_inner())
        }
        Err(e) => Err(e.into_service_error()),
    }
}

/// RSAES-OAEP with `alg` through the SDK under a new RSA_2048 key: the round trip at AWS's
/// plaintext limit (`max` bytes) and one byte over, a tampered ciphertext, no encryption
/// context, no Decrypt without KeyId, and ReEncrypt to a symmetric key and back. Returns
/// the key id and a ciphertext of b"oaep".
async fn oaep_round_trips(
    c: &Client,
    alg: EncryptionAlgorithmSpec,
    max: usize,
) -> (String, Vec<u8>) {
    let name = alg.as_str();
    let key = create(c, KeySpec::Rsa2048, KeyUsageType::EncryptDecrypt).await;
    let id = key.key_id.clone();
    let encrypt = |pt: Vec<u8>| {
        c.encrypt()
            .key_id(&id)
            .encryption_algorithm(alg.clone())
            .plaintext(Blob::new(pt))
            .send()
    };
    let plaintext: Vec<u8> = (0..max).map(|i| i as u8).collect();
    let e = encrypt(plaintext.clone())
        .await
        .unwrap_or_else(|e| panic!("encrypt {name}: {e:?}"));
    assert_eq!(e.encryption_algorithm(), Some(&alg));
    assert_eq!(e.key_id(), key.arn());
    let blob = e.ciphertext_blob.expect("blob").into_inner();
    assert_eq!(blob.len(), 256, "the raw RSA output, as at AWS");
    let again = encrypt(plaintext.clone()).await.expect("encrypt again");
    assert_ne!(
        again.ciphertext_blob.expect("blob").as_ref(),
        blob,
        "OAEP is randomized"
    );
    let d = decrypt_rsa(c, &id, &alg, blob.clone())
        .await
        .unwrap_or_else(|e| panic!("decrypt {name}: {e:?}"));
    assert_eq!(d, plaintext);
    assert_eq!(
        code(encrypt(vec![7; max + 1]).await),
        "ValidationException",
        "{name}: {max} bytes is the limit"
    );
    let mut tampered = blob.clone();
    tampered[10] ^= 1;
    let err = decrypt_rsa(c, &id, &alg, tampered)
        .await
        .expect_err("tampered");
    assert!(
        matches!(err, DecryptError::InvalidCiphertextException(_)),
        "{name} tampered: {err:?}"
    );
    // Asymmetric keys take no encryption context; the ciphertext names no key.
    assert_eq!(
        code(
            c.encrypt()
                .key_id(&id)
                .encryption_algorithm(alg.clone())
                .encryption_context("k", "v")
                .plaintext(Blob::new(b"x".to_vec()))
                .send()
                .await
        ),
        "ValidationException"
    );
    assert_eq!(
        code(
            c.decrypt()
                .encryption_algorithm(alg.clone())
                .ciphertext_blob(Blob::new(blob))
                .send()
                .await
        ),
        "ValidationException",
        "KeyId is required for an RSA ciphertext"
    );

    // ReEncrypt from the RSA key to a symmetric key and back.
    let (sym, sym_arn) = new_key(c).await;
    let blob = encrypt(b"oaep".to_vec())
        .await
        .expect("encrypt")
        .ciphertext_blob
        .expect("blob");
    let r = c
        .re_encrypt()
        .ciphertext_blob(blob.clone())
        .source_key_id(&id)
        .source_encryption_algorithm(alg.clone())
        .destination_key_id(&sym)
        .send()
        .await
        .unwrap_or_else(|e| panic!("re-encrypt {name} to symmetric: {e:?}"));
    assert_eq!(r.source_key_id(), key.arn());
    assert_eq!(r.key_id(), Some(sym_arn.as_str()));
    assert_eq!(r.source_encryption_algorithm(), Some(&alg));
    let r = c
        .re_encrypt()
        .ciphertext_blob(r.ciphertext_blob.expect("blob"))
        .destination_key_id(&id)
        .destination_encryption_algorithm(alg.clone())
        .send()
        .await
        .unwrap_or_else(|e| panic!("re-encrypt symmetric to {name}: {e:?}"));
    assert_eq!(r.destination_encryption_algorithm(), Some(&alg));
    let d = decrypt_rsa(c, &id, &alg, r.ciphertext_blob.expect("blob").into_inner())
        .await
        .expect("decrypt after the round trip");
    assert_eq!(d, b"oaep");
    (id, blob.into_inner())
}

#[tokio::test]
async fn rsa_oaep_sha_1_encrypt_and_decrypt() {
    oaep_round_trips(&client(), EncryptionAlgorithmSpec::RsaesOaepSha1, 214).await;
}

/// As for SHA-1; and neither hash decrypts the other's ciphertext, and a ciphertext made by
/// the `rsa` crate from the public key decrypts.
#[tokio::test]
async fn rsa_oaep_sha_256_encrypt_and_decrypt() {
    use rsa::pkcs8::DecodePublicKey as _;
    let c = client();
    let sha256 = EncryptionAlgorithmSpec::RsaesOaepSha256;
    let sha1 = EncryptionAlgorithmSpec::RsaesOaepSha1;
    let (id, blob) = oaep_round_trips(&c, sha256.clone(), 190).await;
    let err = decrypt_rsa(&c, &id, &sha1, blob).await.expect_err("SHA-1");
    assert!(
        matches!(err, DecryptError::InvalidCiphertextException(_)),
        "a SHA-256 ciphertext decrypted as SHA-1: {err:?}"
    );
    let blob = c
        .encrypt()
        .key_id(&id)
        .encryption_algorithm(sha1)
        .plaintext(Blob::new(b"sha-1".to_vec()))
        .send()
        .await
        .expect("encrypt SHA-1")
        .ciphertext_blob
        .expect("blob")
        .into_inner();
    let err = decrypt_rsa(&c, &id, &sha256, blob)
        .await
        .expect_err("SHA-256");
    assert!(
        matches!(err, DecryptError::InvalidCiphertextException(_)),
        "a SHA-1 ciphertext decrypted as SHA-256: {err:?}"
    );

    let pk = rsa::RsaPublicKey::from_public_key_der(&public_key(&c, &id).await).expect("SPKI");
    let theirs = pk
        .encrypt(
            &mut rand::rngs::OsRng,
            rsa::Oaep::new::<rsa::sha2::Sha256>(),
            b"from the rsa crate",
        )
        .expect("rsa encrypt");
    let d = decrypt_rsa(&c, &id, &sha256, theirs)
        .await
        .expect("decrypt what the rsa crate encrypted");
    assert_eq!(d, b"from the rsa crate");
}

/// DeriveSharedSecret: both sides of ECDH between two KMS keys agree, and the secret with a
/// caller's own key pair equals what the caller computes.
#[tokio::test]
async fn derive_shared_secret() {
    use p256::elliptic_curve::point::AffineCoordinates as _;
    use p256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _};
    let c = client();
    let a = create(&c, KeySpec::EccNistP256, KeyUsageType::KeyAgreement).await;
    let b = create(&c, KeySpec::EccNistP256, KeyUsageType::KeyAgreement).await;
    let derive = |key: &str, peer: Vec<u8>| {
        c.derive_shared_secret()
            .key_id(key)
            .key_agreement_algorithm(KeyAgreementAlgorithmSpec::Ecdh)
            .public_key(Blob::new(peer))
            .send()
    };
    let ab = derive(&a.key_id, public_key(&c, &b.key_id).await)
        .await
        .expect("derive a with b");
    assert_eq!(ab.key_id(), a.arn());
    assert_eq!(
        ab.key_agreement_algorithm(),
        Some(&KeyAgreementAlgorithmSpec::Ecdh)
    );
    assert_eq!(ab.key_origin(), Some(&OriginType::AwsKms));
    let ba = derive(&b.key_id, public_key(&c, &a.key_id).await)
        .await
        .expect("derive b with a");
    let ab = ab.shared_secret.expect("secret").into_inner();
    assert_eq!(ab.len(), 32, "the raw x coordinate");
    assert_eq!(ab, ba.shared_secret.expect("secret").into_inner());

    // A caller's key pair: the same secret on both sides.
    let mine = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let my_spki = mine
        .public_key()
        .to_public_key_der()
        .expect("spki")
        .as_bytes()
        .to_vec();
    let theirs = derive(&a.key_id, my_spki.clone())
        .await
        .expect("derive with my key")
        .shared_secret
        .expect("secret")
        .into_inner();
    let a_pub =
        p256::PublicKey::from_public_key_der(&public_key(&c, &a.key_id).await).expect("a's SPKI");
    let point = (a_pub.to_projective() * *mine.to_nonzero_scalar()).to_affine();
    assert_eq!(theirs, point.x().to_vec());
    assert_ne!(theirs, ab);

    // Another curve, not a key, a signing key.
    let p384 = create(&c, KeySpec::EccNistP384, KeyUsageType::KeyAgreement).await;
    assert_eq!(
        code(derive(&a.key_id, public_key(&c, &p384.key_id).await).await),
        "ValidationException"
    );
    assert_eq!(
        code(derive(&a.key_id, vec![0x30, 0x03, 0x02, 0x01, 0x00]).await),
        "ValidationException"
    );
    let signer = create(&c, KeySpec::EccNistP256, KeyUsageType::SignVerify).await;
    let e = derive(&signer.key_id, my_spki)
        .await
        .expect_err("a SIGN_VERIFY key");
    assert!(
        matches!(
            e.into_service_error(),
            aws_sdk_kms::operation::derive_shared_secret::DeriveSharedSecretError::InvalidKeyUsageException(_)
        ),
        "typed SDK error"
    );
}

/// The private key of a data key pair is the public key's other half (checked by
/// independent libraries), and Decrypt of the blob (with the context) gives it back.
fn check_pair(spec: &DataKeyPairSpec, pkcs8: &[u8], spki: &[u8]) {
    use p256::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
    match spec {
        DataKeyPairSpec::Rsa2048 => {
            let k = rsa::RsaPrivateKey::from_pkcs8_der(pkcs8).expect("RSA PKCS #8");
            let p = rsa::RsaPublicKey::from_public_key_der(spki).expect("RSA SPKI");
            assert_eq!(k.to_public_key(), p);
        }
        DataKeyPairSpec::EccNistP256 => {
            let k = p256::SecretKey::from_pkcs8_der(pkcs8).expect("P-256 PKCS #8");
            let p = p256::PublicKey::from_public_key_der(spki).expect("P-256 SPKI");
            assert_eq!(k.public_key(), p);
        }
        DataKeyPairSpec::EccNistEdwards25519 => {
            let k = ed25519_dalek::SigningKey::from_pkcs8_der(pkcs8).expect("Ed25519 PKCS #8");
            let p = ed25519_dalek::VerifyingKey::from_public_key_der(spki).expect("Ed25519 SPKI");
            assert_eq!(k.verifying_key(), p);
        }
        other => panic!("no check for {other:?}"),
    }
}

#[tokio::test]
async fn generate_data_key_pair_and_without_plaintext() {
    const TEST: &str = "generate_data_key_pair_and_without_plaintext";
    let c = client();
    let (sym, sym_arn) = new_key(&c).await;
    let context = ctx(&[("purpose", "key pair")]);
    for spec in [
        DataKeyPairSpec::EccNistP256,
        DataKeyPairSpec::Rsa2048,
        DataKeyPairSpec::EccNistEdwards25519,
    ] {
        let name = spec.as_str();
        let out = match c
            .generate_data_key_pair()
            .key_id(&sym)
            .key_pair_spec(spec.clone())
            .set_encryption_context(Some(context.clone()))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.code() == Some("UnsupportedOperationException") => {
                common::skip(
                    TEST,
                    &format!(
                        "GenerateDataKeyPair {name}: UnsupportedOperationException: {}",
                        e.message().unwrap_or("")
                    ),
                );
                continue;
            }
            Err(e) => panic!("GenerateDataKeyPair {name}: {e:?}"),
        };
        assert_eq!(out.key_pair_spec(), Some(&spec));
        assert_eq!(out.key_id(), Some(sym_arn.as_str()));
        let pkcs8 = out.private_key_plaintext.expect("plaintext").into_inner();
        let spki = out.public_key.expect("public key").into_inner();
        check_pair(&spec, &pkcs8, &spki);
        let blob = out.private_key_ciphertext_blob.expect("blob");
        let d = c
            .decrypt()
            .ciphertext_blob(blob.clone())
            .set_encryption_context(Some(context.clone()))
            .send()
            .await
            .expect("decrypt the private key");
        assert_eq!(d.plaintext().expect("pt").as_ref(), pkcs8, "{name}");
        assert_eq!(d.key_id(), Some(sym_arn.as_str()));
        assert_eq!(
            code(c.decrypt().ciphertext_blob(blob).send().await),
            "InvalidCiphertextException",
            "{name}: the context is bound"
        );

        let out = c
            .generate_data_key_pair_without_plaintext()
            .key_id(&sym)
            .key_pair_spec(spec.clone())
            .set_encryption_context(Some(context.clone()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GenerateDataKeyPairWithoutPlaintext {name}: {e:?}"));
        assert_eq!(out.key_pair_spec(), Some(&spec));
        assert_eq!(out.key_id(), Some(sym_arn.as_str()));
        let spki2 = out.public_key.expect("public key").into_inner();
        assert_ne!(spki2, spki, "a new pair each time");
        let d = c
            .decrypt()
            .ciphertext_blob(out.private_key_ciphertext_blob.expect("blob"))
            .set_encryption_context(Some(context.clone()))
            .send()
            .await
            .expect("decrypt the private key");
        check_pair(&spec, d.plaintext().expect("pt").as_ref(), &spki2);
    }
    // Under an asymmetric or HMAC key: the SDK's InvalidKeyUsageException.
    let hmac = create(&c, KeySpec::Hmac256, KeyUsageType::GenerateVerifyMac).await;
    let e = c
        .generate_data_key_pair()
        .key_id(&hmac.key_id)
        .key_pair_spec(DataKeyPairSpec::EccNistP256)
        .send()
        .await
        .expect_err("an HMAC key");
    assert!(
        matches!(
            e.into_service_error(),
            aws_sdk_kms::operation::generate_data_key_pair::GenerateDataKeyPairError::InvalidKeyUsageException(_)
        ),
        "typed SDK error"
    );
    assert_eq!(
        code(
            c.generate_data_key_pair_without_plaintext()
                .key_id(&sym)
                .send()
                .await
        ),
        "ValidationException",
        "KeyPairSpec is required"
    );
}

/// Each key does what its usage says and nothing else: the SDK's InvalidKeyUsageException.
#[tokio::test]
async fn usage_errors_are_invalid_key_usage() {
    use aws_sdk_kms::operation::{
        encrypt::EncryptError, generate_data_key::GenerateDataKeyError,
        generate_mac::GenerateMacError, sign::SignError, verify::VerifyError,
    };
    let c = client();
    let (sym, _) = new_key(&c).await;
    let rsa_enc = create(&c, KeySpec::Rsa2048, KeyUsageType::EncryptDecrypt)
        .await
        .key_id;
    let ecc_sign = create(&c, KeySpec::EccNistP256, KeyUsageType::SignVerify)
        .await
        .key_id;
    let hmac = create(&c, KeySpec::Hmac256, KeyUsageType::GenerateVerifyMac)
        .await
        .key_id;
    let msg = || Blob::new(b"m".to_vec());

    for key in [&sym, &rsa_enc, &hmac] {
        let e = c
            .sign()
            .key_id(key)
            .signing_algorithm(SigningAlgorithmSpec::RsassaPssSha256)
            .message(msg())
            .send()
            .await
            .expect_err("sign with a key that does not sign");
        assert!(
            matches!(
                e.into_service_error(),
                SignError::InvalidKeyUsageException(_)
            ),
            "sign with {key}"
        );
        let e = c
            .verify()
            .key_id(key)
            .signing_algorithm(SigningAlgorithmSpec::RsassaPssSha256)
            .message(msg())
            .signature(Blob::new(vec![1; 256]))
            .send()
            .await
            .expect_err("verify");
        assert!(matches!(
            e.into_service_error(),
            VerifyError::InvalidKeyUsageException(_)
        ));
    }
    for key in [&sym, &ecc_sign, &rsa_enc] {
        let e = c
            .generate_mac()
            .key_id(key)
            .mac_algorithm(MacAlgorithmSpec::HmacSha256)
            .message(msg())
            .send()
            .await
            .expect_err("mac with a key that does not mac");
        assert!(
            matches!(
                e.into_service_error(),
                GenerateMacError::InvalidKeyUsageException(_)
            ),
            "mac with {key}"
        );
    }
    for key in [&rsa_enc, &ecc_sign, &hmac] {
        let e = c
            .generate_data_key()
            .key_id(key)
            .key_spec(DataKeySpec::Aes256)
            .send()
            .await
            .expect_err("data key under a non-symmetric key");
        assert!(
            matches!(
                e.into_service_error(),
                GenerateDataKeyError::InvalidKeyUsageException(_)
            ),
            "data key under {key}"
        );
        assert_eq!(
            code(
                c.generate_data_key_without_plaintext()
                    .key_id(key)
                    .key_spec(DataKeySpec::Aes256)
                    .send()
                    .await
            ),
            "InvalidKeyUsageException"
        );
        assert_eq!(
            code(
                c.generate_data_key_pair_without_plaintext()
                    .key_id(key)
                    .key_pair_spec(DataKeyPairSpec::EccNistP256)
                    .send()
                    .await
            ),
            "InvalidKeyUsageException"
        );
    }
    // Encrypt: a signing or MAC key, and an RSA key without (or with the symmetric)
    // algorithm.
    for (key, alg) in [
        (&ecc_sign, Some(EncryptionAlgorithmSpec::RsaesOaepSha256)),
        (&hmac, None),
        (&rsa_enc, None),
        (&rsa_enc, Some(EncryptionAlgorithmSpec::SymmetricDefault)),
    ] {
        let e = c
            .encrypt()
            .key_id(key)
            .set_encryption_algorithm(alg.clone())
            .plaintext(msg())
            .send()
            .await
            .expect_err("encrypt");
        assert!(
            matches!(
                e.into_service_error(),
                EncryptError::InvalidKeyUsageException(_)
            ),
            "encrypt with {key} {alg:?}"
        );
    }
    assert_eq!(
        code(
            c.derive_shared_secret()
                .key_id(&sym)
                .key_agreement_algorithm(KeyAgreementAlgorithmSpec::Ecdh)
                .public_key(Blob::new(public_key(&c, &ecc_sign).await))
                .send()
                .await
        ),
        "InvalidKeyUsageException"
    );
    // ReEncrypt to an RSA key needs its algorithm.
    let blob = c
        .encrypt()
        .key_id(&sym)
        .plaintext(msg())
        .send()
        .await
        .expect("encrypt")
        .ciphertext_blob
        .expect("blob");
    assert_eq!(
        code(
            c.re_encrypt()
                .ciphertext_blob(blob)
                .destination_key_id(&rsa_enc)
                .send()
                .await
        ),
        "InvalidKeyUsageException"
    );
}
