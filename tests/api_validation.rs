//! The service model's constraints on the wire (`src/api/validate.rs`): a value that breaks
//! one (length, range, pattern, enum, required) is a `ValidationException` in AWS's words,
//! checked before authorization and before any rule of the operation; a member of the wrong
//! JSON type is a `SerializationException` first. Sent through the real `aws-sdk-kms` (which
//! checks nothing of this on the client) and, for what no SDK can send, as signed raw HTTP.
//! Also `DryRun` on every operation the model gives it.

mod api_support;
mod common;
mod sdk;
mod wire;

use std::time::SystemTime;

use api_support::{server, REGION};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{
    DataKeyPairSpec, DataKeySpec, KeyAgreementAlgorithmSpec, KeySpec, KeyUsageType,
    MacAlgorithmSpec, SigningAlgorithmSpec, Tag,
};
use aws_sdk_kms::Client;
use common::dev_credentials;
use wire::{raw, request_bytes, signed_headers, Resp, JSON};

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

/// The AWS error code and message of a failed call.
fn error<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(
    r: Result<T, SdkError<E, aws_sdk_kms::config::http::HttpResponse>>,
) -> (String, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => (
            e.code()
                .unwrap_or_else(|| panic!("no code in {e:?}"))
                .to_owned(),
            e.message().unwrap_or_default().to_owned(),
        ),
    }
}

fn validation<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(
    r: Result<T, SdkError<E, aws_sdk_kms::config::http::HttpResponse>>,
) -> String {
    let (code, message) = error(r);
    assert_eq!(code, "ValidationException", "{message}");
    message
}

/// A correctly signed raw KMS call from the dev principal.
fn call(target: &str, body: &[u8]) -> Resp {
    let addr = server().addr;
    let (id, secret) = dev_credentials();
    let h = signed_headers(
        addr,
        Some(target),
        Some(JSON),
        body,
        (&id, &secret),
        SystemTime::now(),
        REGION,
    );
    raw(addr, &request_bytes(addr, "POST", "/", &h, body))
}

async fn new_key(c: &Client) -> String {
    c.create_key()
        .send()
        .await
        .expect("create key")
        .key_metadata
        .expect("metadata")
        .key_id
}

#[tokio::test]
async fn each_constraint_kind_through_the_sdk() {
    let c = client();
    let key = new_key(&c).await;

    // Pattern: a value the model forbids is a ValidationException, not InvalidAliasName.
    assert_eq!(
        validation(
            c.create_alias()
                .alias_name("alias/a;b")
                .target_key_id(&key)
                .send()
                .await
        ),
        "1 validation error detected: Value 'alias/a;b' at 'aliasName' failed to satisfy \
         constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"
    );
    // A value the model allows but KMS does not keeps its specific exception.
    let (code, _) = error(
        c.create_alias()
            .alias_name("alias/aws/mine")
            .target_key_id(&key)
            .send()
            .await,
    );
    assert_eq!(code, "InvalidAliasNameException");

    // Length of a string (characters).
    assert_eq!(
        validation(c.describe_key().key_id("k".repeat(2049)).send().await),
        format!(
            "1 validation error detected: Value '{}' at 'keyId' failed to satisfy constraint: \
             Member must have length less than or equal to 2048",
            "k".repeat(2049)
        )
    );
    // Range of a number, both ends.
    assert_eq!(
        validation(c.generate_random().number_of_bytes(0).send().await),
        "1 validation error detected: Value '0' at 'numberOfBytes' failed to satisfy \
         constraint: Member must have value greater than or equal to 1"
    );
    assert_eq!(
        validation(c.generate_random().number_of_bytes(1025).send().await),
        "1 validation error detected: Value '1025' at 'numberOfBytes' failed to satisfy \
         constraint: Member must have value less than or equal to 1024"
    );
    assert_eq!(
        validation(c.list_keys().limit(1001).send().await),
        "1 validation error detected: Value '1001' at 'limit' failed to satisfy constraint: \
         Member must have value less than or equal to 1000"
    );
    // Length of a blob (bytes), its value never quoted.
    assert_eq!(
        validation(
            c.encrypt()
                .key_id(&key)
                .plaintext(Blob::new(vec![1u8; 4097]))
                .send()
                .await
        ),
        "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: \
         Member must have length less than or equal to 4096"
    );
    // An enum value outside the set: the model's values, in the model's order.
    assert_eq!(
        validation(
            c.generate_mac()
                .key_id(&key)
                .message(Blob::new(b"m".to_vec()))
                .mac_algorithm(MacAlgorithmSpec::from("INVALID"))
                .send()
                .await
        ),
        "1 validation error detected: Value 'INVALID' at 'macAlgorithm' failed to satisfy \
         constraint: Member must satisfy enum value set: [HMAC_SHA_224, HMAC_SHA_256, \
         HMAC_SHA_384, HMAC_SHA_512]"
    );
    let m = validation(c.create_key().key_spec(KeySpec::from("NOPE")).send().await);
    assert!(
        m.starts_with(
            "1 validation error detected: Value 'NOPE' at 'keySpec' failed to satisfy \
             constraint: Member must satisfy enum value set: [RSA_2048, "
        ),
        "{m}"
    );
    // Nested: the tags of a list of structures are named tags.N.member.
    assert_eq!(
        validation(
            c.create_key()
                .tags(
                    Tag::builder()
                        .tag_key("ok")
                        .tag_value("v")
                        .build()
                        .expect("tag")
                )
                .tags(
                    Tag::builder()
                        .tag_key("t".repeat(129))
                        .tag_value("v")
                        .build()
                        .expect("tag")
                )
                .send()
                .await
        ),
        format!(
            "1 validation error detected: Value '{}' at 'tags.2.member.tagKey' failed to \
             satisfy constraint: Member must have length less than or equal to 128",
            "t".repeat(129)
        )
    );
    // A list's size and its elements' rules.
    let mut enc = c.encrypt().key_id(&key).plaintext(Blob::new(b"p".to_vec()));
    for i in 0..11 {
        enc = enc.grant_tokens(format!("t{i}"));
    }
    assert_eq!(
        validation(enc.send().await),
        "1 validation error detected: Value '[t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10]' at \
         'grantTokens' failed to satisfy constraint: Member must have length less than or \
         equal to 10"
    );
    assert_eq!(
        validation(
            c.encrypt()
                .key_id(&key)
                .plaintext(Blob::new(b"p".to_vec()))
                .grant_tokens("")
                .send()
                .await
        ),
        "1 validation error detected: Value '[]' at 'grantTokens' failed to satisfy \
         constraint: Member must satisfy constraint: [Member must have length less than or \
         equal to 8192, Member must have length greater than or equal to 1]"
    );
    // Several errors at once, in the model's member order.
    assert_eq!(
        validation(
            c.generate_data_key()
                .key_id(&key)
                .number_of_bytes(2000)
                .key_spec(DataKeySpec::from("AES_512"))
                .send()
                .await
        ),
        "2 validation errors detected: Value '2000' at 'numberOfBytes' failed to satisfy \
         constraint: Member must have value less than or equal to 1024; Value 'AES_512' at \
         'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, \
         AES_128]"
    );
}

#[tokio::test]
async fn the_model_comes_before_authorization_and_existence() {
    // The restricted principal may not CreateKey at all, yet a bad value is what it hears.
    let r = restricted_client();
    validation(
        r.create_key()
            .key_usage(KeyUsageType::from("NOPE"))
            .send()
            .await,
    );
    let (code, _) = error(r.create_key().send().await);
    assert_eq!(code, "AccessDeniedException");
    // A key that does not exist, named by a value too long to be a key.
    let c = client();
    validation(c.enable_key().key_id("x".repeat(2049)).send().await);
    let (code, _) = error(c.enable_key().key_id("x".repeat(2048)).send().await);
    assert_eq!(code, "NotFoundException");
}

#[test]
fn what_no_sdk_sends() {
    // A missing required member.
    let r = call("DescribeKey", b"{}");
    assert_eq!(
        r.assert_error(400, "ValidationException"),
        "1 validation error detected: Value null at 'keyId' failed to satisfy constraint: \
         Member must not be null"
    );
    let r = call("TagResource", br#"{"KeyId":"k","Tags":[{"TagKey":"a"}]}"#);
    assert_eq!(
        r.assert_error(400, "ValidationException"),
        "1 validation error detected: Value null at 'tags.1.member.tagValue' failed to satisfy \
         constraint: Member must not be null"
    );
    // A wrong JSON type wins over a broken constraint, as at AWS.
    call("GenerateDataKey", br#"{"KeyId":"","NumberOfBytes":"32"}"#)
        .assert_error(400, "SerializationException");
    // Members of features p11kms does not serve are still checked against the model.
    let r = call(
        "Decrypt",
        br#"{"CiphertextBlob":"AA==","Recipient":{"KeyEncryptionAlgorithm":"RSA"}}"#,
    );
    assert_eq!(
        r.assert_error(400, "ValidationException"),
        "1 validation error detected: Value 'RSA' at 'recipient.keyEncryptionAlgorithm' failed \
         to satisfy constraint: Member must satisfy enum value set: [RSAES_OAEP_SHA_256]"
    );
    // An operation p11kms does not serve yet is answered as such.
    call("CreateCustomKeyStore", br#"{"CustomKeyStoreName":"x"}"#)
        .assert_error(400, "UnsupportedOperationException");
    // Unknown members are ignored.
    let r = call("ListKeys", br#"{"Limit":1,"NoSuchMember":{"x":[1,2]}}"#);
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
}

const DRY: &str = "The request would have succeeded, but the DryRun option is set.";

fn dry<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(
    op: &str,
    r: Result<T, SdkError<E, aws_sdk_kms::config::http::HttpResponse>>,
) {
    let (code, message) = error(r);
    assert_eq!(code, "DryRunOperationException", "{op}: {message}");
    assert_eq!(message, DRY, "{op}");
}

/// Every operation whose input has `DryRun` in the service model answers a dry run so.
#[tokio::test]
async fn dry_run_on_every_operation_that_has_it() {
    let c = client();
    let sym = new_key(&c).await;
    let create = |spec: KeySpec, usage: KeyUsageType| {
        let c = c.clone();
        async move {
            c.create_key()
                .key_spec(spec)
                .key_usage(usage)
                .send()
                .await
                .expect("create key")
                .key_metadata
                .expect("metadata")
                .key_id
        }
    };
    let ecc = create(KeySpec::EccNistP256, KeyUsageType::SignVerify).await;
    let ecdh = create(KeySpec::EccNistP256, KeyUsageType::KeyAgreement).await;
    let hmac = create(KeySpec::Hmac256, KeyUsageType::GenerateVerifyMac).await;
    let blob = c
        .encrypt()
        .key_id(&sym)
        .plaintext(Blob::new(b"p".to_vec()))
        .send()
        .await
        .expect("encrypt")
        .ciphertext_blob
        .expect("blob");
    let msg = Blob::new(b"message".to_vec());
    let sig = c
        .sign()
        .key_id(&ecc)
        .message(msg.clone())
        .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
        .send()
        .await
        .expect("sign")
        .signature
        .expect("signature");
    let mac = c
        .generate_mac()
        .key_id(&hmac)
        .message(msg.clone())
        .mac_algorithm(MacAlgorithmSpec::HmacSha256)
        .send()
        .await
        .expect("mac")
        .mac
        .expect("mac");
    let peer = c
        .get_public_key()
        .key_id(&ecdh)
        .send()
        .await
        .expect("public key")
        .public_key
        .expect("public key");
    let grantee = "arn:aws:iam::111122223333:user/dry";
    let grant = c
        .create_grant()
        .key_id(&sym)
        .grantee_principal(grantee)
        .retiring_principal(grantee)
        .operations(aws_sdk_kms::types::GrantOperation::Decrypt)
        .send()
        .await
        .expect("grant");
    let grant_id = grant.grant_id.expect("grant id");

    dry(
        "Encrypt",
        c.encrypt()
            .key_id(&sym)
            .plaintext(Blob::new(b"p".to_vec()))
            .dry_run(true)
            .send()
            .await,
    );
    dry(
        "Decrypt",
        c.decrypt()
            .ciphertext_blob(blob.clone())
            .dry_run(true)
            .send()
            .await,
    );
    dry(
        "ReEncrypt",
        c.re_encrypt()
            .ciphertext_blob(blob.clone())
            .destination_key_id(&sym)
            .dry_run(true)
            .send()
            .await,
    );
    dry(
        "GenerateDataKey",
        c.generate_data_key()
            .key_id(&sym)
            .key_spec(DataKeySpec::Aes256)
            .dry_run(true)
            .send()
            .await,
    );
    dry(
        "GenerateDataKeyWithoutPlaintext",
        c.generate_data_key_without_plaintext()
            .key_id(&sym)
            .number_of_bytes(16)
            .dry_run(true)
            .send()
            .await,
    );
    dry(
        "GenerateDataKeyPair",
        c.generate_data_key_pair()
            .key_id(&sym)
            .key_pair_spec(DataKeyPairSpec::EccNistP256)
            .dry_run(true)
            .send()
            .await,
    );
    dry(
        "GenerateDataKeyPairWithoutPlaintext",
        c.generate_data_key_pair_without_plaintext()
            .key_id(&sym)
            .key_pair_spec(DataKeyPairSpec::EccNistP256)
            .dry_run(true)
            .send()
            .await,
    );
    dry(
        "Sign",
        c.sign()
            .key_id(&ecc)
            .message(msg.clone())
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .dry_run(true)
            .send()
            .await,
    );
    dry(
        "Verify",
        c.verify()
            .key_id(&ecc)
            .message(msg.clone())
            .signature(sig)
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .dry_run(true)
            .send()
            .await,
    );
    dry(
        "GenerateMac",
        c.generate_mac()
            .key_id(&hmac)
            .message(msg.clone())
            .mac_algorithm(MacAlgorithmSpec::HmacSha256)
            .dry_run(true)
            .send()
            .await,
    );
    dry(
        "VerifyMac",
        c.verify_mac()
            .key_id(&hmac)
            .message(msg.clone())
            .mac(mac)
            .mac_algorithm(MacAlgorithmSpec::HmacSha256)
            .dry_run(true)
            .send()
            .await,
    );
    dry(
        "DeriveSharedSecret",
        c.derive_shared_secret()
            .key_id(&ecdh)
            .key_agreement_algorithm(KeyAgreementAlgorithmSpec::Ecdh)
            .public_key(peer)
            .dry_run(true)
            .send()
            .await,
    );
    dry(
        "CreateGrant",
        c.create_grant()
            .key_id(&sym)
            .grantee_principal(grantee)
            .operations(aws_sdk_kms::types::GrantOperation::Encrypt)
            .dry_run(true)
            .send()
            .await,
    );
    dry(
        "RetireGrant",
        c.retire_grant()
            .key_id(&sym)
            .grant_id(&grant_id)
            .dry_run(true)
            .send()
            .await,
    );
    dry(
        "RevokeGrant",
        c.revoke_grant()
            .key_id(&sym)
            .grant_id(&grant_id)
            .dry_run(true)
            .send()
            .await,
    );
    // Nothing was done: the grant is still there and can be revoked for real.
    c.revoke_grant()
        .key_id(&sym)
        .grant_id(&grant_id)
        .send()
        .await
        .expect("revoke");
}
