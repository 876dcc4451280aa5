//! Key custody on the fixture's token (SoftHSM or Kryoptic): which sealing path each token gets,
//! proof by the token layer's call counters that GenerateDataKeyWithoutPlaintext on a token that
//! can wrap never draws key bytes from the RNG nor seals them with `C_Encrypt`, blobs crossing
//! between the two paths, `require_in_token_sealing`, `CKA_DERIVE_TEMPLATE`, and stale handles
//! left by another process.

mod common;
mod sdk;
mod server_process;

use std::sync::Arc;

use common::TokenKind;

use p11kms::hsm::{ExposedDerivation, Token};
use p11kms::kms::types::*;
use p11kms::kms::{Kms, SealingPath, SealingPolicy, Settings};

const GCM_IV: u64 = 12;

/// A service of its own over the fixture's token: its own `Token`, so its call counters count
/// only what this test does.
fn service(sealing: SealingPolicy) -> (Kms, Arc<Token>) {
    let token = common::fresh_token(2);
    let kms = Kms::new(
        Arc::clone(&token),
        Settings {
            sealing,
            ..Settings::new(common::kms().scope().clone())
        },
    )
    .expect("open service");
    (kms, token)
}

fn without_plaintext(kms: &Kms, key: &str, bytes: i64) -> Vec<u8> {
    kms.generate_data_key_without_plaintext(GenerateDataKeyRequest {
        key_id: Some(key.into()),
        number_of_bytes: Some(bytes),
        encryption_context: Some([("purpose".to_string(), "custody".to_string())].into()),
        ..Default::default()
    })
    .expect("GenerateDataKeyWithoutPlaintext")
    .ciphertext_blob
    .0
}

fn decrypt(kms: &Kms, blob: &[u8]) -> Vec<u8> {
    kms.decrypt(DecryptRequest {
        ciphertext_blob: Some(Bytes(blob.to_vec())),
        encryption_context: Some([("purpose".to_string(), "custody".to_string())].into()),
        ..Default::default()
    })
    .expect("decrypt")
    .plaintext
    .0
    .to_vec()
}

/// Each token gets the path its capabilities allow, and the probe agrees with the mechanism
/// list: Kryoptic seals in the token, SoftHSM (no GCM wrap) on the host.
#[test]
fn each_token_gets_the_path_it_can_do() {
    let kms = common::kms();
    let caps = kms.token().capabilities();
    match common::token_kind() {
        TokenKind::Kryoptic => {
            assert!(caps.gcm_wrap());
            assert_eq!(
                caps.in_token_data_keys,
                Some(p11kms::hsm::InTokenDataKeys::AnyLength)
            );
            assert_eq!(kms.sealing_path(), SealingPath::Token);
        }
        TokenKind::SoftHsm => {
            assert!(!caps.gcm_wrap());
            assert_eq!(caps.in_token_data_keys, None);
            let why = caps.in_token_sealing_missing.as_deref().unwrap();
            assert!(why.contains("CKF_WRAP"), "{why}");
            assert_eq!(kms.sealing_path(), SealingPath::Host);
        }
    }
    let custody = kms.custody();
    assert_eq!(custody.data_keys_without_plaintext, kms.sealing_path());
    assert!(custody.host_exposure_micros.is_some());
    assert!(caps.gcm_caller_iv);
    // New keys derive with SP 800-108 (KDF id 2) where it works, else CBC_ENCRYPT_DATA (id 1);
    // the id is in every blob.
    use p11kms::hsm::Kdf;
    assert!(caps.kdfs.contains(&Kdf::AesCbcEncryptData));
    let want = match common::token_kind() {
        TokenKind::Kryoptic => Kdf::Sp800108CounterCmac,
        TokenKind::SoftHsm => Kdf::AesCbcEncryptData,
    };
    assert_eq!(caps.kdf, Some(want));
    let blob = without_plaintext(kms, &common::new_key(), 32);
    assert_eq!(blob[21], want.id());
}

/// The proof the issue asks for. On a token that can wrap, a batch of WithoutPlaintext calls
/// makes one `C_GenerateKey` and one `C_WrapKey` each, no `C_Encrypt`, and draws exactly one
/// 12-byte IV each from `C_GenerateRandom`: not one key byte comes from the RNG. On a token
/// that cannot, the counters show the host path instead.
#[test]
fn without_plaintext_key_bytes_never_come_from_the_rng_where_the_token_can_wrap() {
    let key = common::new_key();
    let (kms, token) = service(SealingPolicy::Auto);
    // The first call derives the epoch key (and draws its nonce): outside the counted batch.
    without_plaintext(&kms, &key, 32);
    let lengths: Vec<i64> = [1, 16, 32, 33, 64, 1000, 1024]
        .into_iter()
        .cycle()
        .take(21)
        .collect();
    let n = lengths.len() as u64;
    let key_bytes: u64 = lengths.iter().map(|l| *l as u64).sum();
    let before = token.stats();
    let blobs: Vec<Vec<u8>> = lengths
        .iter()
        .map(|l| without_plaintext(&kms, &key, *l))
        .collect();
    let d = token.stats().since(&before);
    match kms.sealing_path() {
        SealingPath::Token => {
            assert_eq!(d.encrypt_calls, 0, "{d:?}");
            assert_eq!(d.random_calls, n, "one IV per call: {d:?}");
            assert_eq!(d.random_bytes, n * GCM_IV, "IV bytes only: {d:?}");
            assert_eq!(d.generate_key_calls, n, "{d:?}");
            assert_eq!(d.wrap_calls, n, "{d:?}");
            assert_eq!(d.derive_calls, 0, "{d:?}");
        }
        SealingPath::Host => {
            assert_eq!(d.encrypt_calls, n, "{d:?}");
            assert_eq!(d.random_bytes, key_bytes + n * GCM_IV, "{d:?}");
            assert_eq!(d.wrap_calls + d.generate_key_calls, 0, "{d:?}");
        }
    }
    // Either way the blobs have the one format and open to keys of the asked length.
    for (blob, len) in blobs.iter().zip(&lengths) {
        assert_eq!(blob.len(), 66 + *len as usize + 16);
        assert_eq!(blob[0], 1);
        assert_eq!(decrypt(common::kms(), blob).len(), *len as usize);
    }
}

/// GenerateDataKeyPairWithoutPlaintext on a token that wraps private keys with AES-GCM
/// (Kryoptic) never reads the private key into this process: the counters show the pair
/// generated and wrapped, no private value read, nothing sealed with `C_Encrypt`. Elsewhere
/// (SoftHSM) the host path reads it once per pair. Either way Decrypt opens the blob to a
/// PKCS#8 of the returned public key.
#[test]
fn without_plaintext_private_keys_never_enter_the_host_where_the_token_can_wrap() {
    let key = common::new_key();
    let (kms, token) = service(SealingPolicy::Auto);
    let pair = |kms: &Kms| {
        kms.generate_data_key_pair_without_plaintext(GenerateDataKeyPairRequest {
            key_id: Some(key.as_str().into()),
            key_pair_spec: Some("ECC_NIST_P256".into()),
            encryption_context: Some([("purpose".to_string(), "custody".to_string())].into()),
            ..Default::default()
        })
        .expect("GenerateDataKeyPairWithoutPlaintext")
    };
    // The first call derives the epoch key: outside the counted batch.
    pair(&kms);
    let n = 5u64;
    let before = token.stats();
    let made: Vec<_> = (0..n).map(|_| pair(&kms)).collect();
    let d = token.stats().since(&before);
    let in_token =
        kms.sealing_path() == SealingPath::Token && token.capabilities().private_key_gcm_wrap;
    assert_eq!(
        in_token,
        common::token_kind() == TokenKind::Kryoptic,
        "Kryoptic wraps private keys with AES-GCM, SoftHSM cannot"
    );
    if in_token {
        assert_eq!(d.private_value_reads, 0, "{d:?}");
        assert_eq!(d.encrypt_calls, 0, "{d:?}");
        // One wrap per pair, and one more for each pair dropped because the token wrote
        // its scalar short (1 in 256 on P-256).
        assert!((n..=2 * n).contains(&d.wrap_calls), "{d:?}");
        assert_eq!(d.random_bytes, n * GCM_IV, "IV bytes only: {d:?}");
    } else {
        assert_eq!(d.private_value_reads, n, "{d:?}");
        assert_eq!(d.encrypt_calls, n, "{d:?}");
        assert_eq!(d.wrap_calls, 0, "{d:?}");
    }
    for r in made {
        let pkcs8 = decrypt(common::kms(), &r.private_key_ciphertext_blob.0);
        use p256::pkcs8::{DecodePrivateKey, EncodePublicKey};
        let sk = p256::SecretKey::from_pkcs8_der(&pkcs8).expect("a P-256 PKCS#8");
        let spki = sk.public_key().to_public_key_der().expect("SPKI");
        assert_eq!(spki.as_bytes(), r.public_key.0.as_slice());
    }
}

/// Blobs sealed in the token open on the host path and the other way round, under one key.
#[test]
fn blobs_cross_between_the_two_paths() {
    let key = common::new_key();
    let (host, _) = service(SealingPolicy::Host);
    assert_eq!(host.sealing_path(), SealingPath::Host);
    if common::token_kind() == TokenKind::SoftHsm {
        // No second path to cross to: asking for it is refused, naming what is missing.
        let e = Kms::new(
            common::fresh_token(1),
            Settings {
                sealing: SealingPolicy::Token,
                ..Settings::new(common::kms().scope().clone())
            },
        )
        .err()
        .expect("sealing = token on SoftHSM");
        assert!(e.message().contains("CKF_WRAP"), "{}", e.message());
        return;
    }
    let (token_path, _) = service(SealingPolicy::Token);
    assert_eq!(token_path.sealing_path(), SealingPath::Token);
    for len in [1, 32, 1024] {
        let sealed_in_token = without_plaintext(&token_path, &key, len);
        let sealed_on_host = without_plaintext(&host, &key, len);
        assert_eq!(sealed_in_token.len(), sealed_on_host.len());
        assert_eq!(decrypt(&host, &sealed_in_token).len(), len as usize);
        assert_eq!(decrypt(&token_path, &sealed_on_host).len(), len as usize);
    }
    // A GenerateDataKey plaintext (always host path) is what the token path's service opens.
    let dk = host
        .generate_data_key(GenerateDataKeyRequest {
            key_id: Some(key.clone().into()),
            key_spec: Some("AES_256".into()),
            encryption_context: Some([("purpose".to_string(), "custody".to_string())].into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        decrypt(&token_path, &dk.ciphertext_blob.0),
        dk.plaintext.0.to_vec()
    );
    // And ReEncrypt from one path's blob works on the other.
    let sealed_in_token = without_plaintext(&token_path, &key, 32);
    let re = host
        .re_encrypt(ReEncryptRequest {
            ciphertext_blob: Some(Bytes(sealed_in_token.clone())),
            source_encryption_context: Some(
                [("purpose".to_string(), "custody".to_string())].into(),
            ),
            destination_key_id: Some(key.clone().into()),
            destination_encryption_context: Some(
                [("purpose".to_string(), "custody".to_string())].into(),
            ),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        decrypt(&token_path, &re.ciphertext_blob.0),
        decrypt(&host, &sealed_in_token)
    );
}

/// Asks the token for a readable copy of a CMK's derived key, as someone holding the PIN could.
/// Kryoptic enforces the `CKA_DERIVE_TEMPLATE` p11kms sets on its CMKs and refuses; SoftHSM
/// 2.6.1 has no such attribute and hands out a non-sensitive key whose value can be read
/// (the residual risk docs/key-custody.md states).
#[test]
fn derive_template_on_cmks_per_token() {
    let kms = common::kms();
    let key = common::new_key();
    let id: p11kms::kms::KeyId = key.parse().unwrap();
    let token = kms.token();
    let cmk = common::cmk(token, &id, 1);
    let kdf = token.capabilities().kdf.unwrap();
    let dt = token.capabilities().derive_template;
    let outcome = token.try_exposed_derivation(cmk, kdf).unwrap();
    match common::token_kind() {
        TokenKind::Kryoptic => {
            assert!(dt.accepted && dt.enforced, "{dt:?}");
            // Measured: the template can be replaced on a modifiable key (CMKs are, so that
            // disabling can clear CKA_DERIVE), so it stops tools and mistakes, not a PIN holder.
            assert!(dt.rewritable, "{dt:?}");
            assert!(
                matches!(&outcome, ExposedDerivation::Refused(code) if code.contains("TemplateInconsistent")),
                "{outcome:?}"
            );
        }
        TokenKind::SoftHsm => {
            assert!(!dt.accepted && !dt.enforced, "{dt:?}");
            assert_eq!(outcome, ExposedDerivation::Exposed { value_read: true });
        }
    }
    // Both tokens would hand out a readable derived key without the template.
    assert!(dt.exposed_derivation_without_it, "{dt:?}");
    // The CMK is unchanged and still derives what p11kms needs.
    let c = token.cmk_custody(cmk).unwrap();
    assert!(c.sensitive && !c.extractable && c.never_extractable && !c.value_readable);
    let blob = without_plaintext(kms, &key, 32);
    assert_eq!(decrypt(kms, &blob).len(), 32);
}

/// `p11kms serve` over the fixture's token with `P11KMS_REQUIRE_IN_TOKEN_SEALING=<require>`:
/// the server once it listens, or how it exited.
fn serve(require: &str) -> Result<server_process::ServerProcess, server_process::Exited> {
    server_process::try_start(&server_process::Options {
        credentials: vec![server_process::Cred::dev()],
        env: vec![("P11KMS_REQUIRE_IN_TOKEN_SEALING".into(), require.into())],
        ..Default::default()
    })
}

/// `require_in_token_sealing`: SoftHSM cannot seal in the token, so `p11kms serve` refuses to
/// start and says which token lacks what; Kryoptic can, so it starts and logs the token path.
#[test]
fn require_in_token_sealing_at_start_up() {
    let started = serve("true");
    match common::token_kind() {
        TokenKind::SoftHsm => {
            let exited = started
                .err()
                .expect("serve should refuse to start, not serve");
            let err = &exited.stderr;
            assert_eq!(exited.status.code(), Some(1), "{err}");
            for want in [
                "require_in_token_sealing",
                "token \"p11kms\"",
                "SoftHSM",
                "CKF_WRAP",
                "Refusing to start",
            ] {
                assert!(err.contains(want), "{want:?} missing from: {err}");
            }
            assert!(!exited.stdout.contains("listening on"), "{}", exited.stdout);
        }
        TokenKind::Kryoptic => {
            let err = match started {
                Ok(server) => server.stop(),
                Err(exited) => panic!("serve did not start: {}", exited.stderr),
            };
            assert!(
                err.contains("sealed on the token path (required)"),
                "start-up log: {err}"
            );
            assert!(
                err.contains("GenerateDataKeyWithoutPlaintext: ")
                    && err.contains("plaintext: token only"),
                "start-up log: {err}"
            );
        }
    }
    // `token info` still works and says whether the requirement is met.
    let o = common::p11kms_cmd()
        .env("P11KMS_REQUIRE_IN_TOKEN_SEALING", "true")
        .args(["token", "info"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = match common::token_kind() {
        TokenKind::SoftHsm => "NOT MET",
        TokenKind::Kryoptic => "yes (met)",
    };
    assert!(text.contains(want), "{text}");
}

/// The same requirement from a configuration file, and the start-up log of an ordinary start.
#[test]
fn require_in_token_sealing_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("p11kms.toml");
    std::fs::write(
        &conf,
        format!(
            "require_in_token_sealing = true\n[token]\n{}",
            common::token_toml()
        ),
    )
    .unwrap();
    let o = common::p11kms_cmd()
        .args(["--config", conf.to_str().unwrap(), "key", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    match common::token_kind() {
        TokenKind::SoftHsm => {
            assert_eq!(o.status.code(), Some(1), "{err}");
            assert!(
                err.contains("cannot seal data keys inside the token"),
                "{err}"
            );
        }
        TokenKind::Kryoptic => assert!(o.status.success(), "{err}"),
    }
    // sealing = "host" is always possible and contradicts the requirement.
    std::fs::write(
        &conf,
        format!(
            "require_in_token_sealing = true\nsealing = \"host\"\n[token]\n{}",
            common::token_toml()
        ),
    )
    .unwrap();
    let o = common::p11kms_cmd()
        .args(["--config", conf.to_str().unwrap(), "key", "list"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("contradicts"));

    // Without the requirement the server starts on either token and logs every operation.
    let err = match serve("false") {
        Ok(server) => server.stop(),
        Err(exited) => panic!("serve did not start: {}", exited.stderr),
    };
    let custody: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("p11kms: custody: "))
        .collect();
    assert_eq!(custody.len(), 16, "{err}");
    assert!(
        custody.iter().any(|l| l.contains("GenerateDataKey: ")
            && l.contains("host memory until returned to the caller")),
        "{err}"
    );
}

/// Objects another process destroyed: their old handles read as gone on every token (Kryoptic
/// answers CKR_GENERAL_ERROR there, SoftHSM CKR_OBJECT_HANDLE_INVALID).
#[test]
fn handles_of_objects_another_process_destroyed_read_as_gone() {
    let kms = common::kms();
    let key = common::new_key();
    let alias = format!("alias/stale-{}", &key[..8]);
    kms.create_alias(AliasRequest {
        scope: None,
        alias_name: Some(alias.clone()),
        target_key_id: Some(key.into()),
    })
    .unwrap();
    let token = kms.token();
    let record = token
        .list_data(p11kms::kms::APPLICATION)
        .unwrap()
        .into_iter()
        .find(|o| o.label.contains(&alias))
        .expect("the alias record");
    assert!(token.read_data(record.handle).unwrap().is_some());
    let o = common::p11kms_cmd()
        .args(["alias", "delete", &alias])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Kryoptic, with other tests writing to the token, was once seen to still read the object
    // just after the other process's destroy returned: it must read as gone within a bound,
    // and never as an error.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while token.read_data(record.handle).unwrap().is_some() {
        assert!(
            std::time::Instant::now() < until,
            "the destroyed record still reads after 5 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    token.destroy_data(record.handle).unwrap();
    kms.refresh().unwrap();
    assert!(kms
        .describe_key(common::key_req(&alias))
        .is_err_and(|e| e.aws_name() == "NotFoundException"));
}
