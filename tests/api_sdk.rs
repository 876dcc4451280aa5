//! The real `aws-sdk-kms` client against an in-process server: every operation p11kms serves,
//! every KeyId form, and every documented error, as an SDK user sees them.

mod api_support;
mod common;
mod sdk;

use std::collections::HashSet;
use std::fmt::Debug;

use api_support::{server, ALLOWED_ALIAS, REGION};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::operation::decrypt::DecryptError;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeyState, Tag};
use aws_sdk_kms::Client;
use common::dev_credentials;

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

/// The AWS error code of a failed call (what SDK users match on).
fn code<T: Debug, E: ProvideErrorMetadata + Debug>(
    r: Result<T, SdkError<E, aws_sdk_kms::config::http::HttpResponse>>,
) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => match e.code() {
            Some(c) => c.to_owned(),
            None => panic!("no error code in {e:?}"),
        },
    }
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

    for garbage in [
        vec![0u8; 10],
        vec![2u8; 200],
        vec![0xffu8; 6144],
        vec![1u8; 6145],
    ] {
        assert_eq!(
            code(c.decrypt().ciphertext_blob(Blob::new(garbage)).send().await),
            "InvalidCiphertextException"
        );
    }
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
    use aws_sdk_kms::types::{KeySpec, KeyUsageType, OriginType};
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
    assert_eq!(
        code(c.create_key().origin(OriginType::External).send().await),
        "UnsupportedOperationException"
    );
    assert_eq!(
        code(c.create_key().multi_region(true).send().await),
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
        .policy(r#"{"Version":"2012-10-17","Statement":[]}"#)
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
        code(c.get_key_policy().key_id(&id).send().await),
        "UnsupportedOperationException"
    );
    assert_eq!(
        code(c.enable_key_rotation().key_id(&id).send().await),
        "UnsupportedOperationException"
    );
    assert_eq!(
        code(c.list_grants().key_id(&id).send().await),
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
