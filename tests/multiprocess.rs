//! Several processes over one token: changes made by one are seen by the others.

mod common;

use std::sync::{Mutex, MutexGuard};

use p11kms::kms::types::*;

/// One test at a time: the duplicate generation object must settle on a token no other test
/// of this binary is changing meanwhile (they would race to settle it too).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn run(args: &[&str]) -> serde_json::Value {
    let out = common::p11kms_cmd()
        .arg("--json")
        .args(args)
        .output()
        .expect("run p11kms");
    assert!(
        out.status.success(),
        "p11kms {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn run_err(args: &[&str]) -> String {
    let out = common::p11kms_cmd()
        .args(args)
        .output()
        .expect("run p11kms");
    assert!(!out.status.success(), "p11kms {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn other_processes_see_keys_aliases_and_states() {
    let _g = serial();
    let kms = common::kms();
    // Made here, seen by another process.
    let key = common::new_key();
    let alias = format!("alias/mp-{}", &key[..8]);
    kms.create_alias(AliasRequest {
        scope: None,
        alias_name: Some(alias.clone()),
        target_key_id: Some(key.clone().into()),
    })
    .unwrap();
    let d = run(&["key", "describe", &alias]);
    assert_eq!(d["KeyMetadata"]["KeyId"], key.as_str());
    assert_eq!(d["KeyMetadata"]["KeyState"], "Enabled");

    // Changed by another process, seen here after a refresh.
    run(&["key", "disable", &key]);
    kms.refresh().unwrap();
    let e = kms
        .generate_data_key(GenerateDataKeyRequest {
            key_id: Some(alias.clone().into()),
            key_spec: Some("AES_256".into()),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.aws_name(), "DisabledException");
    run(&["key", "enable", &key]);

    let created = run(&["key", "create", "--description", "from the CLI"]);
    let other = created["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    run(&["alias", "update", &alias, &other]);
    kms.refresh().unwrap();
    let m = kms
        .describe_key(common::key_req(&alias))
        .unwrap()
        .key_metadata;
    assert_eq!(m.key_id, other);
    assert_eq!(m.description, "from the CLI");

    // A blob made here opens in another process, and the other way round.
    let blob = kms
        .generate_data_key(GenerateDataKeyRequest {
            key_id: Some(key.clone().into()),
            key_spec: Some("AES_256".into()),
            encryption_context: Some([("a".to_string(), "b".to_string())].into()),
            ..Default::default()
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let blob_file = dir.path().join("blob.b64");
    std::fs::write(&blob_file, base64_encode(&blob.ciphertext_blob.0)).unwrap();
    let out = run(&[
        "decrypt",
        "--blob-file",
        blob_file.to_str().unwrap(),
        "--context",
        "a=b",
    ]);
    assert_eq!(out["Plaintext"], base64_encode(blob.plaintext.as_slice()));
    let err = run_err(&["decrypt", "--blob-file", blob_file.to_str().unwrap()]);
    assert!(err.contains("InvalidCiphertextException"), "{err}");

    // Deletion scheduled elsewhere is seen here.
    run(&["key", "schedule-deletion", &other, "--days", "7"]);
    kms.refresh().unwrap();
    assert_eq!(
        kms.describe_key(common::key_req(&other))
            .unwrap()
            .key_metadata
            .key_state,
        "PendingDeletion"
    );
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The CLI and the library agree on a second, independent open of the token.
#[test]
fn a_second_open_in_process_agrees() {
    let _g = serial();
    let key = common::new_key();
    let fresh = common::fresh_kms();
    assert_eq!(
        fresh
            .describe_key(common::key_req(&key))
            .unwrap()
            .key_metadata
            .key_id,
        key
    );
}

/// Two processes that each created a generation object at the same moment (simulated here by
/// adding a second one): the next process to look keeps one, and changes still reach
/// everybody, including the process whose object was destroyed.
#[test]
fn a_duplicate_generation_object_is_settled() {
    let _g = serial();
    let kms = common::kms();
    // The smallest possible value: every process keeps this one.
    kms.token()
        .create_data(
            "p11kms-generation",
            "p11kms:generation:00000000000000000001:00000000",
            &[0u8; 16],
        )
        .expect("second generation object");
    let other = common::fresh_kms();
    // The process that looked kept exactly one: the smallest value, the planted one.
    let left = kms
        .token()
        .list_data_values("p11kms-generation")
        .expect("generation objects");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].1, [0u8; 16]);
    let made_there = other
        .create_key(Default::default())
        .expect("create key")
        .key_metadata
        .key_id;
    kms.refresh().expect("refresh");
    kms.describe_key(common::key_req(&made_there))
        .expect("seen by the process whose generation object was destroyed");
    let made_here = common::new_key();
    other.refresh().expect("refresh");
    other
        .describe_key(common::key_req(&made_here))
        .expect("seen by the other process");
}

/// Asymmetric and HMAC keys across processes: a key made here signs, MACs and decrypts in
/// another `p11kms` process (its own login, its own binding of the private key), and what
/// that process makes verifies here; a key disabled there is refused here by the token.
#[test]
fn asymmetric_and_hmac_keys_work_across_processes() {
    let _g = serial();
    let kms = common::kms();
    let create = |spec: &str, usage: &str| {
        kms.create_key(CreateKeyRequest {
            key_spec: Some(spec.into()),
            key_usage: Some(usage.into()),
            ..Default::default()
        })
        .expect("create key")
        .key_metadata
        .key_id
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let msg = dir.path().join("message");
    std::fs::write(&msg, b"signed by another process").unwrap();
    let msg_arg = msg.to_str().unwrap();

    let ecc = create("ECC_NIST_P256", "SIGN_VERIFY");
    let signed = run(&[
        "sign",
        "--key",
        &ecc,
        "--algorithm",
        "ECDSA_SHA_256",
        "--in",
        msg_arg,
    ]);
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(signed["Signature"].as_str().expect("Signature"))
        .expect("base64");
    let v = kms
        .verify(VerifyRequest {
            key_id: Some(ecc.as_str().into()),
            message: Some(SecretBytes(b"signed by another process".to_vec().into())),
            signature: Some(Bytes(sig)),
            signing_algorithm: Some("ECDSA_SHA_256".into()),
            ..Default::default()
        })
        .expect("a signature made by another process verifies here");
    assert!(v.signature_valid);

    let hmac = create("HMAC_256", "GENERATE_VERIFY_MAC");
    let mac = run(&[
        "mac",
        "generate",
        "--key",
        &hmac,
        "--algorithm",
        "HMAC_SHA_256",
        "--in",
        msg_arg,
    ]);
    let mac = base64::engine::general_purpose::STANDARD
        .decode(mac["Mac"].as_str().expect("Mac"))
        .expect("base64");
    kms.verify_mac(VerifyMacRequest {
        key_id: Some(hmac.as_str().into()),
        message: Some(SecretBytes(b"signed by another process".to_vec().into())),
        mac: Some(Bytes(mac)),
        mac_algorithm: Some("HMAC_SHA_256".into()),
        ..Default::default()
    })
    .expect("a MAC made by another process verifies here");

    // Disabled there: the token refuses it here at once, and this process says why.
    run(&["key", "disable", &ecc]);
    let e = kms
        .sign(SignRequest {
            key_id: Some(ecc.as_str().into()),
            message: Some(SecretBytes(b"m".to_vec().into())),
            signing_algorithm: Some("ECDSA_SHA_256".into()),
            ..Default::default()
        })
        .map(|_| ())
        .expect_err("disabled in another process");
    assert_eq!(e.aws_name(), "DisabledException");
    let err = run_err(&[
        "sign",
        "--key",
        &ecc,
        "--algorithm",
        "ECDSA_SHA_256",
        "--in",
        msg_arg,
    ]);
    assert!(err.contains("DisabledException"), "{err}");
}
