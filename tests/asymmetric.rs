//! Asymmetric and HMAC keys against a real token (SoftHSM; Kryoptic with
//! `P11KMS_TEST_TOKEN=kryoptic`), with the semantics of the AWS KMS API Reference:
//!
//! - CreateKey for every KeySpec × KeyUsage AWS allows (by `KeySpec` and by the deprecated
//!   `CustomerMasterKeySpec`) and the KeyMetadata AWS lists for each; the pairs it refuses;
//! - Sign/Verify with every algorithm, RAW and DIGEST, every signature checked by an
//!   independent implementation (RustCrypto `rsa`, `p256`, `p384`, `p521`, `k256`, and
//!   `ed25519-dalek`), and every way a signature or request can be wrong;
//! - GetPublicKey, parsed by the same crates;
//! - RSAES-OAEP Encrypt/Decrypt/ReEncrypt against the `rsa` crate, with AWS's limits;
//! - GenerateMac/VerifyMac; DeriveSharedSecret against host ECDH;
//! - GenerateDataKeyPair(WithoutPlaintext), the PKCS#8 checked against the public key;
//! - the usage errors, the key states, and the custody attributes of the keys in the token.
//!
//! What a token lacks is skipped by capability and said so (`common::skip`), decided from the
//! `UnsupportedOperationException` the library answers, which must name what is missing. On
//! SoftHSM every key spec must be there: a skip would hide a regression.
//!
//! Keys are shared between tests, one per spec and usage, made on first use (RSA-4096 takes
//! seconds to generate); tests that change a key's state make their own.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use common::TokenKind;
use p11kms::der::Curve;
use p11kms::hsm::{BackingKind, CmkHandle, CmkLookup, PairKind, PrivateUsage};
use p11kms::kms::types::*;
use p11kms::kms::{cmk_id, AwsEnum, KeyId};
use p11kms::KmsError;

use rand::rngs::OsRng;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, Pkcs1v15Sign, Pss, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256, Sha384, Sha512};

const SIGN: &str = "SIGN_VERIFY";
const ENCRYPT: &str = "ENCRYPT_DECRYPT";
const MAC: &str = "GENERATE_VERIFY_MAC";
const AGREE: &str = "KEY_AGREEMENT";

const RSA_SPECS: [&str; 3] = ["RSA_2048", "RSA_3072", "RSA_4096"];
const NIST_CURVES: [&str; 3] = ["ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521"];
const HMAC_SPECS: [&str; 4] = ["HMAC_224", "HMAC_256", "HMAC_384", "HMAC_512"];
const RSA_SIGNING: [&str; 6] = [
    "RSASSA_PSS_SHA_256",
    "RSASSA_PSS_SHA_384",
    "RSASSA_PSS_SHA_512",
    "RSASSA_PKCS1_V1_5_SHA_256",
    "RSASSA_PKCS1_V1_5_SHA_384",
    "RSASSA_PKCS1_V1_5_SHA_512",
];
const OAEP: [&str; 2] = ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"];
/// Every `SigningAlgorithmSpec` of the API.
const ALL_SIGNING: [&str; 13] = [
    "RSASSA_PSS_SHA_256",
    "RSASSA_PSS_SHA_384",
    "RSASSA_PSS_SHA_512",
    "RSASSA_PKCS1_V1_5_SHA_256",
    "RSASSA_PKCS1_V1_5_SHA_384",
    "RSASSA_PKCS1_V1_5_SHA_512",
    "ECDSA_SHA_256",
    "ECDSA_SHA_384",
    "ECDSA_SHA_512",
    "SM2DSA",
    "ML_DSA_SHAKE_256",
    "ED25519_SHA_512",
    "ED25519_PH_SHA_512",
];
const ALL_MAC: [&str; 4] = [
    "HMAC_SHA_224",
    "HMAC_SHA_256",
    "HMAC_SHA_384",
    "HMAC_SHA_512",
];

fn kms() -> &'static p11kms::kms::Kms {
    common::kms()
}

/// Held by the test that opens a second service and by the one that checks the token's usage
/// attributes through state changes: a service opening in between applies the states it
/// loaded (before the change) to the token (see `Kms::reconcile_token_state`).
fn opening_a_service() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

// ----- What AWS allows and lists -----------------------------------------------------------

/// A KeySpec × KeyUsage AWS allows, and the algorithm lists AWS gives its KeyMetadata
/// (an empty list: the field is absent).
struct Allowed {
    spec: &'static str,
    usage: &'static str,
    encryption: &'static [&'static str],
    signing: &'static [&'static str],
    mac: &'static [&'static str],
    agreement: &'static [&'static str],
}

const fn allowed(
    spec: &'static str,
    usage: &'static str,
    algs: &'static [&'static str],
) -> Allowed {
    let none: &[&str] = &[];
    let (mut encryption, mut signing, mut mac, mut agreement) = (none, none, none, none);
    match usage.as_bytes()[0] {
        b'E' => encryption = algs,
        b'S' => signing = algs,
        b'G' => mac = algs,
        _ => agreement = algs,
    }
    Allowed {
        spec,
        usage,
        encryption,
        signing,
        mac,
        agreement,
    }
}

/// Every pair AWS allows (KMS Developer Guide, "Key spec reference"; API Reference, CreateKey).
const ALLOWED: [Allowed; 19] = [
    allowed("SYMMETRIC_DEFAULT", ENCRYPT, &["SYMMETRIC_DEFAULT"]),
    allowed("RSA_2048", ENCRYPT, &OAEP),
    allowed("RSA_3072", ENCRYPT, &OAEP),
    allowed("RSA_4096", ENCRYPT, &OAEP),
    allowed("RSA_2048", SIGN, &RSA_SIGNING),
    allowed("RSA_3072", SIGN, &RSA_SIGNING),
    allowed("RSA_4096", SIGN, &RSA_SIGNING),
    allowed("ECC_NIST_P256", SIGN, &["ECDSA_SHA_256"]),
    allowed("ECC_NIST_P384", SIGN, &["ECDSA_SHA_384"]),
    allowed("ECC_NIST_P521", SIGN, &["ECDSA_SHA_512"]),
    allowed("ECC_NIST_P256", AGREE, &["ECDH"]),
    allowed("ECC_NIST_P384", AGREE, &["ECDH"]),
    allowed("ECC_NIST_P521", AGREE, &["ECDH"]),
    allowed("ECC_SECG_P256K1", SIGN, &["ECDSA_SHA_256"]),
    allowed(
        "ECC_NIST_EDWARDS25519",
        SIGN,
        &["ED25519_SHA_512", "ED25519_PH_SHA_512"],
    ),
    allowed("HMAC_224", MAC, &["HMAC_SHA_224"]),
    allowed("HMAC_256", MAC, &["HMAC_SHA_256"]),
    allowed("HMAC_384", MAC, &["HMAC_SHA_384"]),
    allowed("HMAC_512", MAC, &["HMAC_SHA_512"]),
];

/// The usages of the API, and the specs p11kms serves.
const USAGES: [&str; 4] = [SIGN, ENCRYPT, MAC, AGREE];
const SERVED_SPECS: [&str; 13] = [
    "SYMMETRIC_DEFAULT",
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "ECC_NIST_P256",
    "ECC_NIST_P384",
    "ECC_NIST_P521",
    "ECC_SECG_P256K1",
    "ECC_NIST_EDWARDS25519",
    "HMAC_224",
    "HMAC_256",
    "HMAC_384",
    "HMAC_512",
];

fn is_allowed(spec: &str, usage: &str) -> bool {
    ALLOWED.iter().any(|a| a.spec == spec && a.usage == usage)
}

// ----- Keys ------------------------------------------------------------------------------

fn create_with(
    spec: &str,
    usage: &str,
    via_customer_master_key_spec: bool,
) -> Result<KeyMetadata, KmsError> {
    let (key_spec, cmk_spec) = if via_customer_master_key_spec {
        (None, Some(spec.to_string()))
    } else {
        (Some(spec.to_string()), None)
    };
    kms()
        .create_key(CreateKeyRequest {
            key_spec,
            customer_master_key_spec: cmk_spec,
            key_usage: Some(usage.into()),
            description: Some(format!("tests/asymmetric {spec} {usage}")),
            ..Default::default()
        })
        .map(|r| r.key_metadata)
}

/// The shared key of `spec` and `usage`, made on first use (concurrent callers wait for the
/// one creation). RSA_3072 ENCRYPT_DECRYPT and RSA_4096 SIGN_VERIFY are made through
/// `CustomerMasterKeySpec`, the others through `KeySpec`, so that every RSA size is created
/// both ways without making more big keys.
fn shared(spec: &str, usage: &str) -> Result<KeyMetadata, KmsError> {
    type Cell = Arc<OnceLock<Result<KeyMetadata, KmsError>>>;
    static KEYS: OnceLock<Mutex<HashMap<(String, String), Cell>>> = OnceLock::new();
    let cell = KEYS
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry((spec.to_string(), usage.to_string()))
        .or_default()
        .clone();
    cell.get_or_init(|| {
        let via_cmk_spec = matches!((spec, usage), ("RSA_3072", ENCRYPT) | ("RSA_4096", SIGN));
        create_with(spec, usage, via_cmk_spec)
    })
    .clone()
}

/// The shared key of `spec` and `usage`, or `None` (said, with the reason) where the token
/// cannot make such keys.
fn key(test: &str, spec: &str, usage: &str) -> Option<KeyMetadata> {
    match shared(spec, usage) {
        Ok(m) => Some(m),
        Err(e) => {
            lacks(test, &format!("{spec} {usage}"), spec, &e);
            None
        }
    }
}

/// Panics unless `e` says the token cannot do `what` (UnsupportedOperationException naming
/// the missing mechanism, the token's refusal, or the spec or algorithm asked for); then
/// says the test skips it. On SoftHSM only Ed25519ph may be missing (it has every key spec).
#[track_caller]
fn lacks(test: &str, what: &str, name: &str, e: &KmsError) {
    assert_eq!(
        e.aws_name(),
        "UnsupportedOperationException",
        "{what}: not a missing capability but {e:?}"
    );
    let m = e.message();
    assert!(
        m.contains("CKM_") || m.contains("CKR_") || m.contains(name),
        "{what}: the refusal does not say what is missing: {m}"
    );
    assert!(
        common::token_kind() != TokenKind::SoftHsm || name == "ED25519_PH_SHA_512",
        "SoftHSM should offer {what}: {m}"
    );
    common::skip(test, &format!("{what}: {m}"));
}

/// The symmetric key the data-key and ReEncrypt tests seal under.
fn symmetric() -> KeyMetadata {
    shared("SYMMETRIC_DEFAULT", ENCRYPT).expect("symmetric key")
}

#[track_caller]
fn fails<T: std::fmt::Debug>(r: Result<T, KmsError>, want: &str) -> KmsError {
    match r {
        Ok(v) => panic!("expected {want}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.aws_name(), want, "{e:?}");
            e
        }
    }
}

fn names<T: AwsEnum>(v: &Option<Vec<T>>) -> Option<Vec<&'static str>> {
    v.as_ref().map(|v| v.iter().map(|a| a.as_str()).collect())
}

/// `expected` as the optional list KeyMetadata carries: absent when empty.
fn listed(expected: &[&'static str]) -> Option<Vec<&'static str>> {
    (!expected.is_empty()).then(|| expected.to_vec())
}

/// Asserts that `m` is AWS's KeyMetadata for a new enabled key of `a`, in the library's
/// types and on the wire (JSON: the fields that do not apply are absent).
#[track_caller]
/// The deprecated CustomerMasterKeySpec of a key of `spec`: the same name, except where that
/// enum has none (it never gained ECC_NIST_EDWARDS25519), then absent.
fn deprecated_spec(spec: &str) -> Option<&str> {
    (spec != "ECC_NIST_EDWARDS25519").then_some(spec)
}

fn check_metadata(m: &KeyMetadata, a: &Allowed) {
    let what = format!("{} {}", a.spec, a.usage);
    assert_eq!(m.key_spec.as_str(), a.spec, "{what}");
    assert_eq!(
        m.customer_master_key_spec.map(|s| s.as_str()),
        deprecated_spec(a.spec),
        "{what}"
    );
    assert_eq!(m.key_usage.as_str(), a.usage, "{what}");
    assert_eq!(m.key_state.as_str(), "Enabled", "{what}");
    assert!(m.enabled, "{what}");
    assert_eq!(m.origin.as_str(), "AWS_KMS", "{what}");
    assert_eq!(m.key_manager.as_str(), "CUSTOMER", "{what}");
    assert!(!m.multi_region, "{what}");
    assert!(
        m.arn.ends_with(&format!(":key/{}", m.key_id)),
        "{what}: {}",
        m.arn
    );
    assert_eq!(
        names(&m.encryption_algorithms),
        listed(a.encryption),
        "{what}"
    );
    assert_eq!(names(&m.signing_algorithms), listed(a.signing), "{what}");
    assert_eq!(names(&m.mac_algorithms), listed(a.mac), "{what}");
    assert_eq!(
        names(&m.key_agreement_algorithms),
        listed(a.agreement),
        "{what}"
    );
    let v = serde_json::to_value(m).unwrap();
    assert_eq!(v["KeySpec"], a.spec, "{what}");
    assert_eq!(
        v.get("CustomerMasterKeySpec").and_then(|s| s.as_str()),
        deprecated_spec(a.spec),
        "{what}"
    );
    assert_eq!(v["KeyUsage"], a.usage, "{what}");
    for (field, list) in [
        ("EncryptionAlgorithms", a.encryption),
        ("SigningAlgorithms", a.signing),
        ("MacAlgorithms", a.mac),
        ("KeyAgreementAlgorithms", a.agreement),
    ] {
        if list.is_empty() {
            assert!(v.get(field).is_none(), "{what}: {field} present: {v}");
        } else {
            assert_eq!(v[field], serde_json::json!(list), "{what}: {field}");
        }
    }
}

// ----- Requests ----------------------------------------------------------------------------

fn secret(b: &[u8]) -> Option<SecretBytes> {
    Some(SecretBytes(b.to_vec().into()))
}

fn bytes(b: &[u8]) -> Option<Bytes> {
    Some(Bytes(b.to_vec()))
}

fn context(pairs: &[(&str, &str)]) -> Option<ContextMap> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn sign(key: &str, alg: &str, mtype: &str, message: &[u8]) -> Result<SignResponse, KmsError> {
    kms().sign(SignRequest {
        key_id: Some(key.into()),
        message: secret(message),
        message_type: Some(mtype.into()),
        signing_algorithm: Some(alg.into()),
        ..Default::default()
    })
}

fn verify(
    key: &str,
    alg: &str,
    mtype: &str,
    message: &[u8],
    sig: &[u8],
) -> Result<VerifyResponse, KmsError> {
    kms().verify(VerifyRequest {
        key_id: Some(key.into()),
        message: secret(message),
        message_type: Some(mtype.into()),
        signature: bytes(sig),
        signing_algorithm: Some(alg.into()),
        ..Default::default()
    })
}

fn public_key(key: &str) -> Result<GetPublicKeyResponse, KmsError> {
    kms().get_public_key(common::key_req(key))
}

fn encrypt(
    key: &str,
    alg: Option<&str>,
    plaintext: &[u8],
    ctx: Option<ContextMap>,
) -> Result<EncryptResponse, KmsError> {
    kms().encrypt(EncryptRequest {
        key_id: Some(key.into()),
        plaintext: secret(plaintext),
        encryption_algorithm: alg.map(Into::into),
        encryption_context: ctx,
        ..Default::default()
    })
}

fn decrypt(
    key: Option<&str>,
    alg: Option<&str>,
    blob: &[u8],
    ctx: Option<ContextMap>,
) -> Result<DecryptResponse, KmsError> {
    kms().decrypt(DecryptRequest {
        key_id: key.map(Into::into),
        ciphertext_blob: bytes(blob),
        encryption_algorithm: alg.map(Into::into),
        encryption_context: ctx,
        ..Default::default()
    })
}

fn generate_mac(key: &str, alg: &str, message: &[u8]) -> Result<GenerateMacResponse, KmsError> {
    kms().generate_mac(GenerateMacRequest {
        key_id: Some(key.into()),
        message: secret(message),
        mac_algorithm: Some(alg.into()),
        ..Default::default()
    })
}

fn verify_mac(
    key: &str,
    alg: &str,
    message: &[u8],
    mac: &[u8],
) -> Result<VerifyMacResponse, KmsError> {
    kms().verify_mac(VerifyMacRequest {
        key_id: Some(key.into()),
        message: secret(message),
        mac_algorithm: Some(alg.into()),
        mac: bytes(mac),
        ..Default::default()
    })
}

fn derive(key: &str, peer_spki: &[u8]) -> Result<DeriveSharedSecretResponse, KmsError> {
    kms().derive_shared_secret(DeriveSharedSecretRequest {
        key_id: Some(key.into()),
        key_agreement_algorithm: Some("ECDH".into()),
        public_key: bytes(peer_spki),
        ..Default::default()
    })
}

fn pair_request(key: &str, spec: &str, ctx: Option<ContextMap>) -> GenerateDataKeyPairRequest {
    GenerateDataKeyPairRequest {
        key_id: Some(key.into()),
        key_pair_spec: Some(spec.into()),
        encryption_context: ctx,
        ..Default::default()
    }
}

fn data_key(key: &str) -> GenerateDataKeyRequest {
    GenerateDataKeyRequest {
        key_id: Some(key.into()),
        key_spec: Some("AES_256".into()),
        ..Default::default()
    }
}

fn flip(b: &[u8], at: usize) -> Vec<u8> {
    let mut v = b.to_vec();
    v[at] ^= 0x01;
    v
}

// ----- The independent side ------------------------------------------------------------

/// The hash an algorithm names (`..._SHA_256`, `HMAC_SHA_384`, ...), over `data`.
fn hash(alg: &str, data: &[u8]) -> Vec<u8> {
    if alg.ends_with("SHA_256") {
        Sha256::digest(data).to_vec()
    } else if alg.ends_with("SHA_384") {
        Sha384::digest(data).to_vec()
    } else if alg.ends_with("SHA_512") {
        Sha512::digest(data).to_vec()
    } else {
        panic!("no hash for {alg}")
    }
}

/// A public key as the independent crates parse it.
enum HostKey {
    Rsa(RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    P521(p521::ecdsa::VerifyingKey),
    K256(k256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

fn rsa_bits(spec: &str) -> usize {
    spec.trim_start_matches("RSA_").parse().unwrap()
}

fn unparsable(spec: &str, e: &dyn std::fmt::Debug) -> ! {
    panic!("{spec}: the SPKI does not parse: {e:?}")
}

impl HostKey {
    /// Parses a DER SubjectPublicKeyInfo as a public key of `spec`, and checks that it is
    /// the canonical encoding (the crate encodes the parsed key to the same bytes).
    #[track_caller]
    fn parse(spec: &str, spki: &[u8]) -> HostKey {
        let (key, again) = match spec {
            s if s.starts_with("RSA_") => {
                let k = RsaPublicKey::from_public_key_der(spki)
                    .unwrap_or_else(|x| unparsable(spec, &x));
                assert_eq!(k.n().bits(), rsa_bits(s), "{spec}: modulus size");
                assert_eq!(k.e(), &rsa::BigUint::from(65537u32), "{spec}: exponent");
                let again = k.to_public_key_der().unwrap().as_bytes().to_vec();
                (HostKey::Rsa(k), again)
            }
            "ECC_NIST_P256" => {
                let k = p256::PublicKey::from_public_key_der(spki)
                    .unwrap_or_else(|x| unparsable(spec, &x));
                let again = k.to_public_key_der().unwrap().as_bytes().to_vec();
                (HostKey::P256(k.into()), again)
            }
            "ECC_NIST_P384" => {
                let k = p384::PublicKey::from_public_key_der(spki)
                    .unwrap_or_else(|x| unparsable(spec, &x));
                let again = k.to_public_key_der().unwrap().as_bytes().to_vec();
                (HostKey::P384(k.into()), again)
            }
            "ECC_NIST_P521" => {
                let k = p521::PublicKey::from_public_key_der(spki)
                    .unwrap_or_else(|x| unparsable(spec, &x));
                let again = k.to_public_key_der().unwrap().as_bytes().to_vec();
                let vk = p521::ecdsa::VerifyingKey::from_affine(*k.as_affine()).unwrap();
                (HostKey::P521(vk), again)
            }
            "ECC_SECG_P256K1" => {
                let k = k256::PublicKey::from_public_key_der(spki)
                    .unwrap_or_else(|x| unparsable(spec, &x));
                let again = k.to_public_key_der().unwrap().as_bytes().to_vec();
                (HostKey::K256(k.into()), again)
            }
            "ECC_NIST_EDWARDS25519" => {
                let k = ed25519_dalek::VerifyingKey::from_public_key_der(spki)
                    .unwrap_or_else(|x| unparsable(spec, &x));
                let again = k.to_public_key_der().unwrap().as_bytes().to_vec();
                (HostKey::Ed25519(k), again)
            }
            other => panic!("no public key for {other}"),
        };
        assert_eq!(again, spki, "{spec}: the SPKI is not canonical DER");
        key
    }

    /// Whether `sig` is a valid signature with `alg` over `message` (of `mtype`: for DIGEST,
    /// `message` is the digest), as the independent implementation sees it.
    fn verifies(&self, alg: &str, mtype: &str, message: &[u8], sig: &[u8]) -> bool {
        let digest = || {
            if mtype == "DIGEST" {
                message.to_vec()
            } else {
                hash(alg, message)
            }
        };
        match self {
            HostKey::Rsa(k) => {
                let scheme: Box<dyn FnOnce() -> rsa::Result<()>> = match alg {
                    "RSASSA_PSS_SHA_256" => {
                        Box::new(|| k.verify(Pss::new_with_salt::<Sha256>(32), &digest(), sig))
                    }
                    "RSASSA_PSS_SHA_384" => {
                        Box::new(|| k.verify(Pss::new_with_salt::<Sha384>(48), &digest(), sig))
                    }
                    "RSASSA_PSS_SHA_512" => {
                        Box::new(|| k.verify(Pss::new_with_salt::<Sha512>(64), &digest(), sig))
                    }
                    "RSASSA_PKCS1_V1_5_SHA_256" => {
                        Box::new(|| k.verify(Pkcs1v15Sign::new::<Sha256>(), &digest(), sig))
                    }
                    "RSASSA_PKCS1_V1_5_SHA_384" => {
                        Box::new(|| k.verify(Pkcs1v15Sign::new::<Sha384>(), &digest(), sig))
                    }
                    "RSASSA_PKCS1_V1_5_SHA_512" => {
                        Box::new(|| k.verify(Pkcs1v15Sign::new::<Sha512>(), &digest(), sig))
                    }
                    other => panic!("{other} is not an RSA algorithm"),
                };
                scheme().is_ok()
            }
            HostKey::P256(k) => {
                use p256::ecdsa::signature::hazmat::PrehashVerifier;
                p256::ecdsa::Signature::from_der(sig)
                    .is_ok_and(|s| k.verify_prehash(&digest(), &s).is_ok())
            }
            HostKey::P384(k) => {
                use p384::ecdsa::signature::hazmat::PrehashVerifier;
                p384::ecdsa::Signature::from_der(sig)
                    .is_ok_and(|s| k.verify_prehash(&digest(), &s).is_ok())
            }
            HostKey::P521(k) => {
                use p521::ecdsa::signature::hazmat::PrehashVerifier;
                p521::ecdsa::Signature::from_der(sig)
                    .is_ok_and(|s| k.verify_prehash(&digest(), &s).is_ok())
            }
            HostKey::K256(k) => {
                use k256::ecdsa::signature::hazmat::PrehashVerifier;
                // k256 accepts only low-S signatures (as Bitcoin does); ECDSA itself, and
                // AWS, accept either of (r, s) and (r, n - s).
                k256::ecdsa::Signature::from_der(sig).is_ok_and(|s| {
                    let s = s.normalize_s().unwrap_or(s);
                    k.verify_prehash(&digest(), &s).is_ok()
                })
            }
            HostKey::Ed25519(k) => {
                let Ok(s) = ed25519_dalek::Signature::from_slice(sig) else {
                    return false;
                };
                match alg {
                    "ED25519_SHA_512" => mtype == "RAW" && k.verify_strict(message, &s).is_ok(),
                    // AWS: with DIGEST, KMS still does the SHA-512 prehash of Ed25519ph,
                    // so the caller's digest is hashed once more.
                    "ED25519_PH_SHA_512" => {
                        mtype == "DIGEST"
                            && k.verify_prehashed_strict(Sha512::new_with_prefix(message), None, &s)
                                .is_ok()
                    }
                    other => panic!("{other} is not an Ed25519 algorithm"),
                }
            }
        }
    }
}

// ----- 1. CreateKey and KeyMetadata ---------------------------------------------------------

#[test]
fn create_key_every_allowed_spec_and_usage_with_the_metadata_aws_lists() {
    const TEST: &str = "create_key_every_allowed_spec_and_usage_with_the_metadata_aws_lists";
    for a in &ALLOWED {
        let Some(m) = key(TEST, a.spec, a.usage) else {
            continue;
        };
        check_metadata(&m, a);
        let described = kms()
            .describe_key(common::key_req(&m.key_id))
            .unwrap()
            .key_metadata;
        check_metadata(&described, a);
        assert_eq!(described.key_id, m.key_id);
        // The other way of naming the spec (the shared RSA_3072 and RSA_4096 keys cover the
        // two ways for their sizes between them).
        if !matches!(a.spec, "RSA_3072" | "RSA_4096") {
            let other = create_with(a.spec, a.usage, true).unwrap();
            check_metadata(&other, a);
            assert_ne!(other.key_id, m.key_id);
        }
    }
    // KeyUsage defaults to ENCRYPT_DECRYPT: right for RSA, a ValidationException for specs
    // that cannot encrypt.
    let rsa = kms()
        .create_key(CreateKeyRequest {
            key_spec: Some("RSA_2048".into()),
            ..Default::default()
        })
        .unwrap()
        .key_metadata;
    check_metadata(&rsa, &ALLOWED[1]);
    for spec in [
        "ECC_NIST_P256",
        "ECC_SECG_P256K1",
        "ECC_NIST_EDWARDS25519",
        "HMAC_256",
    ] {
        fails(
            kms().create_key(CreateKeyRequest {
                key_spec: Some(spec.into()),
                ..Default::default()
            }),
            "ValidationException",
        );
    }
}

#[test]
fn create_key_refuses_what_aws_refuses() {
    // Every served spec with every usage AWS does not allow it, by either member.
    let mut refused = 0;
    for spec in SERVED_SPECS {
        for usage in USAGES {
            if is_allowed(spec, usage) {
                continue;
            }
            for via_cmk_spec in [false, true] {
                let e = fails(
                    create_with(spec, usage, via_cmk_spec),
                    "ValidationException",
                );
                assert!(
                    e.message().contains(usage),
                    "{spec} {usage}: {}",
                    e.message()
                );
            }
            refused += 1;
        }
    }
    assert_eq!(refused, SERVED_SPECS.len() * USAGES.len() - ALLOWED.len());
    // AWS specs no PKCS#11 token offers.
    for (spec, usage) in [
        ("SM2", SIGN),
        ("SM2", ENCRYPT),
        ("SM2", AGREE),
        ("ML_DSA_44", SIGN),
        ("ML_DSA_65", SIGN),
        ("ML_DSA_87", SIGN),
    ] {
        let e = fails(
            create_with(spec, usage, false),
            "UnsupportedOperationException",
        );
        assert!(e.message().contains(spec), "{}", e.message());
    }
    // Not AWS specs or usages at all; both members at once.
    fails(create_with("RSA_1024", SIGN, false), "ValidationException");
    fails(
        create_with("ECC_NIST_P192", SIGN, true),
        "ValidationException",
    );
    fails(
        create_with("RSA_2048", "SIGN", false),
        "ValidationException",
    );
    fails(
        kms().create_key(CreateKeyRequest {
            key_spec: Some("RSA_2048".into()),
            customer_master_key_spec: Some("RSA_2048".into()),
            key_usage: Some(SIGN.into()),
            ..Default::default()
        }),
        "ValidationException",
    );
}

// ----- 2. Sign and Verify -----------------------------------------------------------------

/// Everything Sign and Verify promise, with the shared SIGN_VERIFY key of `spec`: every
/// algorithm it lists, RAW and DIGEST, checked by the independent implementation, and every
/// way a request or a signature can be wrong.
fn sign_and_verify(test: &str, spec: &str) {
    let Some(key) = key(test, spec, SIGN) else {
        return;
    };
    let id = key.key_id.as_str();
    let pk = public_key(id).unwrap();
    let host = HostKey::parse(spec, &pk.public_key.0);
    let algs: Vec<&str> = names(&key.signing_algorithms).unwrap();
    let rsa = spec.starts_with("RSA_");
    let mut signed = 0;
    for alg in &algs {
        let alg = *alg;
        let message = format!("{spec} signs with {alg}").into_bytes();
        let raw_ok = alg != "ED25519_PH_SHA_512";
        let digest_ok = alg != "ED25519_SHA_512";
        let digest = if alg == "ED25519_PH_SHA_512" {
            Sha512::digest(&message).to_vec()
        } else {
            hash(alg, &message)
        };
        // What the DIGEST form of the same signature is checked against (not for Ed25519ph,
        // which hashes the caller's digest again).
        let same_digest = alg != "ED25519_PH_SHA_512";
        for (mtype, input) in [("RAW", &message), ("DIGEST", &digest)] {
            if (mtype == "RAW" && !raw_ok) || (mtype == "DIGEST" && !digest_ok) {
                // The one form the algorithm refuses (AWS: Ed25519 RAW only, Ed25519ph
                // DIGEST only).
                fails(sign(id, alg, mtype, input), "ValidationException");
                fails(
                    verify(id, alg, mtype, input, &[1; 64]),
                    "ValidationException",
                );
                continue;
            }
            let s = match sign(id, alg, mtype, input) {
                Ok(s) => s,
                Err(e) => {
                    lacks(test, &format!("{spec} {alg} {mtype}"), alg, &e);
                    // What cannot sign cannot verify either (and accepts nothing).
                    fails(
                        verify(id, alg, mtype, input, &[1; 64]),
                        "UnsupportedOperationException",
                    );
                    continue;
                }
            };
            signed += 1;
            let sig = s.signature.0.clone();
            assert_eq!(s.key_id, key.arn);
            assert_eq!(s.signing_algorithm.as_str(), alg);
            if rsa {
                assert_eq!(sig.len(), rsa_bits(spec) / 8, "{alg}");
            }
            assert!(
                host.verifies(alg, mtype, input, &sig),
                "{spec} {alg} {mtype}: the independent verifier rejects the signature"
            );
            let v = verify(id, alg, mtype, input, &sig).unwrap();
            assert!(v.signature_valid);
            assert_eq!(v.key_id, key.arn);
            assert_eq!(v.signing_algorithm.as_str(), alg);
            // The same signature in the other form: a digest signed is the message signed.
            if same_digest && raw_ok && digest_ok {
                let (other, other_input) = match mtype {
                    "RAW" => ("DIGEST", &digest),
                    _ => ("RAW", &message),
                };
                assert!(
                    verify(id, alg, other, other_input, &sig)
                        .unwrap()
                        .signature_valid
                );
            }
            // A flipped bit (in the last byte: an RSA signature stays below the modulus).
            let bad = flip(&sig, sig.len() - 1);
            assert!(
                !host.verifies(alg, mtype, input, &bad),
                "{alg}: host accepts a flipped bit"
            );
            fails(
                verify(id, alg, mtype, input, &bad),
                "KMSInvalidSignatureException",
            );
            let bad = flip(&sig, sig.len() / 2);
            fails(
                verify(id, alg, mtype, input, &bad),
                "KMSInvalidSignatureException",
            );
            // Another message (or digest).
            let other = flip(input, 0);
            assert!(!host.verifies(alg, mtype, &other, &sig));
            fails(
                verify(id, alg, mtype, &other, &sig),
                "KMSInvalidSignatureException",
            );
            // Signatures of the wrong length.
            fails(
                verify(id, alg, mtype, input, &sig[..sig.len() - 1]),
                "KMSInvalidSignatureException",
            );
            let mut longer = sig.clone();
            longer.push(0);
            fails(
                verify(id, alg, mtype, input, &longer),
                "KMSInvalidSignatureException",
            );
            // The signature checked as another algorithm of the key.
            for other_alg in algs.iter().filter(|a| **a != alg && rsa) {
                fails(
                    verify(
                        id,
                        other_alg,
                        mtype,
                        &hash_for(other_alg, mtype, &message),
                        &sig,
                    ),
                    "KMSInvalidSignatureException",
                );
            }
            // PKCS#1 v1.5 and Ed25519 are deterministic; PSS has a random salt.
            if alg.starts_with("RSASSA_PKCS1") || alg == "ED25519_SHA_512" {
                assert_eq!(
                    sign(id, alg, mtype, input).unwrap().signature.0,
                    sig,
                    "{alg}"
                );
            }
            if alg.starts_with("RSASSA_PSS") {
                assert_ne!(
                    sign(id, alg, mtype, input).unwrap().signature.0,
                    sig,
                    "{alg}"
                );
            }
        }
        // A digest of the wrong length is refused before anything is signed.
        if digest_ok {
            for wrong in [
                &digest[..digest.len() - 1],
                &[digest.as_slice(), &[0]].concat()[..],
            ] {
                let e = fails(sign(id, alg, "DIGEST", wrong), "ValidationException");
                assert!(e.message().contains("length"), "{}", e.message());
                fails(
                    verify(id, alg, "DIGEST", wrong, &[1; 64]),
                    "ValidationException",
                );
            }
        }
    }
    assert!(signed > 0 || common::token_kind() != TokenKind::SoftHsm);
    // Ed25519ph is domain-separated from Ed25519: a pure signature over a digest is not an
    // Ed25519ph signature of that digest.
    if spec == "ECC_NIST_EDWARDS25519" {
        let digest = Sha512::digest(b"domain separation").to_vec();
        let pure = sign(id, "ED25519_SHA_512", "RAW", &digest)
            .unwrap()
            .signature
            .0;
        let r = verify(id, "ED25519_PH_SHA_512", "DIGEST", &digest, &pure);
        assert!(
            matches!(&r, Err(e) if e.aws_name() == "KMSInvalidSignatureException"
                || e.aws_name() == "UnsupportedOperationException"),
            "a pure Ed25519 signature passes as Ed25519ph: {r:?}"
        );
    }
    // RSA signatures that are not below the modulus, and ECDSA signatures that are not DER.
    if rsa {
        let alg = "RSASSA_PKCS1_V1_5_SHA_256";
        let big = vec![0xff; rsa_bits(spec) / 8];
        fails(
            verify(id, alg, "RAW", b"m", &big),
            "KMSInvalidSignatureException",
        );
    }
    if spec.starts_with("ECC_") && spec != "ECC_NIST_EDWARDS25519" {
        let alg = algs[0];
        let s = sign(id, alg, "RAW", b"m").unwrap().signature.0;
        let raw = der_ecdsa_to_raw(&s);
        fails(
            verify(id, alg, "RAW", b"m", &raw),
            "KMSInvalidSignatureException",
        );
    }
    // Message bounds: 1..=4096 bytes.
    let alg = algs[0];
    let largest = vec![0x5a; 4096];
    let s = sign(id, alg, "RAW", &largest).unwrap().signature.0;
    assert!(host.verifies(alg, "RAW", &largest, &s));
    assert!(
        verify(id, alg, "RAW", &largest, &s)
            .unwrap()
            .signature_valid
    );
    for bad in [&[][..], &[0x5a; 4097][..]] {
        let e = fails(sign(id, alg, "RAW", bad), "ValidationException");
        assert!(e.message().contains("message"), "{}", e.message());
        fails(verify(id, alg, "RAW", bad, &s), "ValidationException");
    }
    fails(verify(id, alg, "RAW", &largest, &[]), "ValidationException");
    // An algorithm the key does not list is a usage error, for Sign and Verify.
    for other in ALL_SIGNING.iter().filter(|a| !algs.contains(a)) {
        fails(sign(id, other, "RAW", b"m"), "InvalidKeyUsageException");
        fails(
            verify(id, other, "RAW", b"m", &s),
            "InvalidKeyUsageException",
        );
    }
    // Members outside their enums, or missing; DryRun.
    fails(
        sign(id, "RSASSA_PSS_SHA_1", "RAW", b"m"),
        "ValidationException",
    );
    fails(sign(id, alg, "HASHED", b"m"), "ValidationException");
    fails(
        sign(id, alg, "EXTERNAL_MU", &[0; 64]),
        "ValidationException",
    );
    fails(
        kms().sign(SignRequest {
            key_id: Some(id.into()),
            message: secret(b"m"),
            ..Default::default()
        }),
        "ValidationException",
    );
    fails(
        kms().sign(SignRequest {
            key_id: Some(id.into()),
            message: secret(b"m"),
            signing_algorithm: Some(alg.into()),
            dry_run: Some(true),
            ..Default::default()
        }),
        "DryRunOperationException",
    );
    // MessageType defaults to RAW.
    let s = kms()
        .sign(SignRequest {
            key_id: Some(id.into()),
            message: secret(b"default type"),
            signing_algorithm: Some(alg.into()),
            ..Default::default()
        })
        .unwrap();
    assert!(host.verifies(alg, "RAW", b"default type", &s.signature.0));
}

/// The input of `alg` for `message` in the form `mtype`.
fn hash_for(alg: &str, mtype: &str, message: &[u8]) -> Vec<u8> {
    if mtype == "DIGEST" {
        hash(alg, message)
    } else {
        message.to_vec()
    }
}

/// A DER ECDSA signature as r ‖ s (each as its integer's bytes, zero-padded to one length):
/// not what Verify takes.
fn der_ecdsa_to_raw(der: &[u8]) -> Vec<u8> {
    // SEQUENCE { INTEGER r, INTEGER s }, short or one-byte long lengths.
    let mut i = if der[1] & 0x80 != 0 { 3 } else { 2 };
    let mut ints = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[i], 0x02);
        let len = der[i + 1] as usize;
        let v = &der[i + 2..i + 2 + len];
        ints.push(
            v.iter()
                .skip_while(|b| **b == 0)
                .copied()
                .collect::<Vec<u8>>(),
        );
        i += 2 + len;
    }
    let n = ints.iter().map(Vec::len).max().unwrap();
    let mut out = Vec::new();
    for v in ints {
        out.extend(std::iter::repeat_n(0, n - v.len()));
        out.extend(v);
    }
    out
}

#[test]
fn sign_verify_rsa_2048() {
    sign_and_verify("sign_verify_rsa_2048", "RSA_2048");
}

#[test]
fn sign_verify_rsa_3072() {
    sign_and_verify("sign_verify_rsa_3072", "RSA_3072");
}

#[test]
fn sign_verify_rsa_4096() {
    sign_and_verify("sign_verify_rsa_4096", "RSA_4096");
}

#[test]
fn sign_verify_ecc_nist_p256() {
    sign_and_verify("sign_verify_ecc_nist_p256", "ECC_NIST_P256");
}

#[test]
fn sign_verify_ecc_nist_p384() {
    sign_and_verify("sign_verify_ecc_nist_p384", "ECC_NIST_P384");
}

#[test]
fn sign_verify_ecc_nist_p521() {
    sign_and_verify("sign_verify_ecc_nist_p521", "ECC_NIST_P521");
}

#[test]
fn sign_verify_ecc_secg_p256k1() {
    sign_and_verify("sign_verify_ecc_secg_p256k1", "ECC_SECG_P256K1");
}

#[test]
fn sign_verify_ecc_nist_edwards25519() {
    sign_and_verify("sign_verify_ecc_nist_edwards25519", "ECC_NIST_EDWARDS25519");
}

/// Sign and Verify through an alias and the key ARN, as through the key id.
#[test]
fn sign_by_alias_and_arn() {
    let Some(key) = key("sign_by_alias_and_arn", "ECC_NIST_P256", SIGN) else {
        return;
    };
    let alias = format!("alias/asymmetric-{}", &key.key_id[..8]);
    kms()
        .create_alias(AliasRequest {
            scope: None,
            alias_name: Some(alias.clone()),
            target_key_id: Some(key.key_id.as_str().into()),
        })
        .unwrap();
    let host = HostKey::parse("ECC_NIST_P256", &public_key(&alias).unwrap().public_key.0);
    for name in [alias.as_str(), key.arn.as_str()] {
        let s = sign(name, "ECDSA_SHA_256", "RAW", b"by name").unwrap();
        assert_eq!(s.key_id, key.arn);
        assert!(host.verifies("ECDSA_SHA_256", "RAW", b"by name", &s.signature.0));
        assert!(
            verify(name, "ECDSA_SHA_256", "RAW", b"by name", &s.signature.0)
                .unwrap()
                .signature_valid
        );
    }
}

// ----- 3. GetPublicKey ----------------------------------------------------------------------

#[test]
fn get_public_key_of_every_asymmetric_key() {
    const TEST: &str = "get_public_key_of_every_asymmetric_key";
    let mut seen = Vec::new();
    for a in ALLOWED
        .iter()
        .filter(|a| a.mac.is_empty() && a.spec != "SYMMETRIC_DEFAULT")
    {
        let Some(key) = key(TEST, a.spec, a.usage) else {
            continue;
        };
        let pk = public_key(&key.key_id).unwrap();
        let what = format!("{} {}", a.spec, a.usage);
        assert_eq!(pk.key_id, key.arn, "{what}");
        assert_eq!(pk.key_spec.as_str(), a.spec, "{what}");
        assert_eq!(
            pk.customer_master_key_spec.map(|s| s.as_str()),
            deprecated_spec(a.spec),
            "{what}"
        );
        assert_eq!(pk.key_usage.as_str(), a.usage, "{what}");
        assert_eq!(
            names(&pk.encryption_algorithms),
            listed(a.encryption),
            "{what}"
        );
        assert_eq!(names(&pk.signing_algorithms), listed(a.signing), "{what}");
        assert_eq!(
            names(&pk.key_agreement_algorithms),
            listed(a.agreement),
            "{what}"
        );
        let v = serde_json::to_value(&pk).unwrap();
        for (field, list) in [
            ("EncryptionAlgorithms", a.encryption),
            ("SigningAlgorithms", a.signing),
            ("KeyAgreementAlgorithms", a.agreement),
        ] {
            assert_eq!(v.get(field).is_some(), !list.is_empty(), "{what}: {field}");
        }
        HostKey::parse(a.spec, &pk.public_key.0);
        // Stable, and the key's own.
        assert_eq!(public_key(&key.key_id).unwrap().public_key, pk.public_key);
        assert!(
            !seen.contains(&pk.public_key.0),
            "{what}: a public key twice"
        );
        seen.push(pk.public_key.0);
    }
    // A P-256 key is not a P-384 or secp256k1 key to the independent parsers.
    if let Some(k) = key(TEST, "ECC_NIST_P256", SIGN) {
        let spki = public_key(&k.key_id).unwrap().public_key.0;
        assert!(p384::PublicKey::from_public_key_der(&spki).is_err());
        assert!(k256::PublicKey::from_public_key_der(&spki).is_err());
    }
    // Symmetric and HMAC keys have no public key.
    for (spec, usage) in [("SYMMETRIC_DEFAULT", ENCRYPT), ("HMAC_256", MAC)] {
        let k = shared(spec, usage).unwrap();
        fails(public_key(&k.key_id), "UnsupportedOperationException");
    }
}

// ----- 4. RSA encryption ------------------------------------------------------------------

fn oaep_for(alg: &str) -> Oaep {
    match alg {
        "RSAES_OAEP_SHA_1" => Oaep::new::<sha1::Sha1>(),
        "RSAES_OAEP_SHA_256" => Oaep::new::<Sha256>(),
        other => panic!("{other}"),
    }
}

/// AWS's largest plaintext for `alg` under an RSA key of `bits` (API Reference, Encrypt:
/// RSA_2048 214 bytes with SHA-1 and 190 with SHA-256, and so on).
fn oaep_max(bits: usize, alg: &str) -> usize {
    let h = if alg == "RSAES_OAEP_SHA_1" { 20 } else { 32 };
    bits / 8 - 2 * h - 2
}

/// Encrypt, Decrypt and ReEncrypt with `alg` under the shared RSA encryption keys of every
/// size, against the `rsa` crate.
fn rsa_oaep(test: &str, alg: &str) {
    let sym = symmetric();
    let mut keys = Vec::new();
    for spec in RSA_SPECS {
        let Some(key) = key(test, spec, ENCRYPT) else {
            continue;
        };
        let id = key.key_id.clone();
        let bits = rsa_bits(spec);
        let max = oaep_max(bits, alg);
        let spki = public_key(&id).unwrap().public_key.0;
        let HostKey::Rsa(host) = HostKey::parse(spec, &spki) else {
            unreachable!()
        };
        // The host encrypts under the public key; the token decrypts.
        for len in [1, 32, max] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let c = host.encrypt(&mut OsRng, oaep_for(alg), &plaintext).unwrap();
            let d = decrypt(Some(&id), Some(alg), &c, None).unwrap();
            assert_eq!(d.plaintext.as_slice(), plaintext, "{spec} {alg} {len}");
            assert_eq!(d.key_id, key.arn);
            assert_eq!(d.encryption_algorithm.as_str(), alg);
        }
        // The library encrypts (randomized, the modulus long); it decrypts its own.
        let plaintext = vec![0xa5; max];
        let e = encrypt(&id, Some(alg), &plaintext, None).unwrap();
        assert_eq!(e.key_id, key.arn);
        assert_eq!(e.encryption_algorithm.as_str(), alg);
        let c = e.ciphertext_blob.0;
        assert_eq!(c.len(), bits / 8, "{spec}: raw RSA output, as at AWS");
        let again = encrypt(&id, Some(alg), &plaintext, None).unwrap();
        assert_ne!(
            again.ciphertext_blob.0, c,
            "{spec} {alg}: OAEP is randomized"
        );
        assert_eq!(
            decrypt(Some(&id), Some(alg), &c, None)
                .unwrap()
                .plaintext
                .as_slice(),
            plaintext
        );
        // One byte over AWS's limit.
        let e = fails(
            encrypt(&id, Some(alg), &vec![0xa5; max + 1], None),
            "ValidationException",
        );
        assert!(e.message().contains(&max.to_string()), "{}", e.message());
        // Corrupted, truncated, too large, or decrypted with the other OAEP hash.
        for bad in [
            flip(&c, c.len() - 1),
            flip(&c, 1),
            c[..c.len() - 1].to_vec(),
            [c.as_slice(), &[0]].concat(),
            vec![0xff; c.len()],
        ] {
            fails(
                decrypt(Some(&id), Some(alg), &bad, None),
                "InvalidCiphertextException",
            );
        }
        // Decrypted with the other OAEP hash (here, so that the SHA-1 test needs only SHA-1).
        if alg == "RSAES_OAEP_SHA_256" {
            let sha1 = "RSAES_OAEP_SHA_1";
            fails(
                decrypt(Some(&id), Some(sha1), &c, None),
                "InvalidCiphertextException",
            );
            let c1 = host.encrypt(&mut OsRng, oaep_for(sha1), b"sha-1").unwrap();
            fails(
                decrypt(Some(&id), Some(alg), &c1, None),
                "InvalidCiphertextException",
            );
        }
        keys.push((spec, key, host, c, plaintext));
    }
    let Some((spec, rsa_key, _, rsa_blob, rsa_plain)) = keys.first() else {
        return;
    };
    // A ciphertext of one key does not decrypt under another key of the same size.
    if let Ok(second) = create_with(spec, ENCRYPT, false) {
        fails(
            decrypt(Some(&second.key_id), Some(alg), rsa_blob, None),
            "InvalidCiphertextException",
        );
    }
    // ReEncrypt RSA -> symmetric (with a context) -> RSA.
    let ctx = context(&[("purpose", "re-encrypt"), ("alg", alg)]);
    let r = kms()
        .re_encrypt(ReEncryptRequest {
            ciphertext_blob: bytes(rsa_blob),
            source_key_id: Some(rsa_key.key_id.as_str().into()),
            source_encryption_algorithm: Some(alg.into()),
            destination_key_id: Some(sym.key_id.as_str().into()),
            destination_encryption_context: ctx.clone(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.source_key_id, rsa_key.arn);
    assert_eq!(r.key_id, sym.arn);
    assert_eq!(r.source_encryption_algorithm.as_str(), alg);
    assert_eq!(
        r.destination_encryption_algorithm.as_str(),
        "SYMMETRIC_DEFAULT"
    );
    let sym_blob = r.ciphertext_blob.0;
    assert_eq!(
        decrypt(None, None, &sym_blob, ctx.clone())
            .unwrap()
            .plaintext
            .as_slice(),
        rsa_plain.as_slice()
    );
    fails(
        decrypt(None, None, &sym_blob, None),
        "InvalidCiphertextException",
    );
    // symmetric -> every RSA size.
    for (spec, key, ..) in &keys {
        let max = oaep_max(rsa_bits(spec), alg);
        let plaintext = vec![0x3c; max];
        let blob = encrypt(&sym.key_id, None, &plaintext, ctx.clone())
            .unwrap()
            .ciphertext_blob
            .0;
        let r = kms()
            .re_encrypt(ReEncryptRequest {
                ciphertext_blob: bytes(&blob),
                source_encryption_context: ctx.clone(),
                destination_key_id: Some(key.key_id.as_str().into()),
                destination_encryption_algorithm: Some(alg.into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(r.source_key_id, sym.arn);
        assert_eq!(r.key_id, key.arn);
        assert_eq!(r.source_encryption_algorithm.as_str(), "SYMMETRIC_DEFAULT");
        assert_eq!(r.destination_encryption_algorithm.as_str(), alg);
        assert_eq!(r.ciphertext_blob.0.len(), rsa_bits(spec) / 8);
        let d = decrypt(Some(&key.key_id), Some(alg), &r.ciphertext_blob.0, None).unwrap();
        assert_eq!(d.plaintext.as_slice(), plaintext, "{spec}");
    }
    // RSA -> RSA (first size to the last).
    if let (Some((_, src, ..)), Some((_, dst, ..))) = (keys.first(), keys.last()) {
        let r = kms()
            .re_encrypt(ReEncryptRequest {
                ciphertext_blob: bytes(rsa_blob),
                source_key_id: Some(src.key_id.as_str().into()),
                source_encryption_algorithm: Some(alg.into()),
                destination_key_id: Some(dst.key_id.as_str().into()),
                destination_encryption_algorithm: Some(alg.into()),
                ..Default::default()
            })
            .unwrap();
        let d = decrypt(Some(&dst.key_id), Some(alg), &r.ciphertext_blob.0, None).unwrap();
        assert_eq!(d.plaintext.as_slice(), rsa_plain.as_slice());
    }
}

#[test]
fn rsa_oaep_sha_1_encrypt_decrypt_re_encrypt() {
    rsa_oaep(
        "rsa_oaep_sha_1_encrypt_decrypt_re_encrypt",
        "RSAES_OAEP_SHA_1",
    );
}

#[test]
fn rsa_oaep_sha_256_encrypt_decrypt_re_encrypt() {
    rsa_oaep(
        "rsa_oaep_sha_256_encrypt_decrypt_re_encrypt",
        "RSAES_OAEP_SHA_256",
    );
}

/// The rules of RSA encryption keys that are not about the algorithm's mathematics.
#[test]
fn rsa_encryption_rules() {
    let Some(rsa_key) = key("rsa_encryption_rules", "RSA_2048", ENCRYPT) else {
        return;
    };
    let id = rsa_key.key_id.as_str();
    let alg = Some("RSAES_OAEP_SHA_1");
    let c = encrypt(id, alg, b"rules", None).unwrap().ciphertext_blob.0;
    let ctx = context(&[("a", "b")]);
    // No encryption context with asymmetric keys.
    fails(
        encrypt(id, alg, b"rules", ctx.clone()),
        "ValidationException",
    );
    fails(
        decrypt(Some(id), alg, &c, ctx.clone()),
        "ValidationException",
    );
    let sym = symmetric();
    let sym_blob = encrypt(&sym.key_id, None, b"rules", None)
        .unwrap()
        .ciphertext_blob
        .0;
    fails(
        kms().re_encrypt(ReEncryptRequest {
            ciphertext_blob: bytes(&sym_blob),
            destination_key_id: Some(id.into()),
            destination_encryption_algorithm: alg.map(Into::into),
            destination_encryption_context: ctx.clone(),
            ..Default::default()
        }),
        "ValidationException",
    );
    fails(
        kms().re_encrypt(ReEncryptRequest {
            ciphertext_blob: bytes(&c),
            source_key_id: Some(id.into()),
            source_encryption_algorithm: alg.map(Into::into),
            source_encryption_context: ctx.clone(),
            destination_key_id: Some(sym.key_id.as_str().into()),
            ..Default::default()
        }),
        "ValidationException",
    );
    // The algorithm is required with an RSA key: without it (or SYMMETRIC_DEFAULT) it is
    // a usage error.
    for a in [None, Some("SYMMETRIC_DEFAULT")] {
        fails(encrypt(id, a, b"rules", None), "InvalidKeyUsageException");
        fails(decrypt(Some(id), a, &c, None), "InvalidKeyUsageException");
        fails(
            kms().re_encrypt(ReEncryptRequest {
                ciphertext_blob: bytes(&sym_blob),
                destination_key_id: Some(id.into()),
                destination_encryption_algorithm: a.map(Into::into),
                ..Default::default()
            }),
            "InvalidKeyUsageException",
        );
    }
    fails(
        encrypt(id, Some("RSAES_OAEP_SHA_512"), b"x", None),
        "ValidationException",
    );
    fails(
        encrypt(id, Some("SM2PKE"), b"x", None),
        "InvalidKeyUsageException",
    );
    // A raw RSA ciphertext names no key: Decrypt needs the KeyId.
    fails(decrypt(None, alg, &c, None), "ValidationException");
    // RSAES algorithms with keys that are not RSA encryption keys.
    let mut others = vec![sym.clone()];
    for (spec, usage) in [
        ("RSA_2048", SIGN),
        ("ECC_NIST_P256", SIGN),
        ("ECC_NIST_P256", AGREE),
        ("HMAC_256", MAC),
    ] {
        others.extend(key("rsa_encryption_rules", spec, usage));
    }
    for other in &others {
        fails(
            encrypt(&other.key_id, alg, b"x", None),
            "InvalidKeyUsageException",
        );
        fails(
            decrypt(Some(&other.key_id), alg, &c, None),
            "InvalidKeyUsageException",
        );
    }
    // A plaintext too long for the destination of a ReEncrypt.
    let long = encrypt(&sym.key_id, None, &[1; 215], None)
        .unwrap()
        .ciphertext_blob
        .0;
    fails(
        kms().re_encrypt(ReEncryptRequest {
            ciphertext_blob: bytes(&long),
            destination_key_id: Some(id.into()),
            destination_encryption_algorithm: alg.map(Into::into),
            ..Default::default()
        }),
        "ValidationException",
    );
    // Plaintext bounds as for every Encrypt.
    fails(encrypt(id, alg, b"", None), "ValidationException");
}

// ----- 5. HMAC ------------------------------------------------------------------------------

#[test]
fn hmac_generate_and_verify_every_spec() {
    const TEST: &str = "hmac_generate_and_verify_every_spec";
    for (spec, alg) in HMAC_SPECS.iter().zip(ALL_MAC) {
        let Some(key) = key(TEST, spec, MAC) else {
            continue;
        };
        let id = key.key_id.as_str();
        let message = format!("{spec} authenticates this").into_bytes();
        let m = generate_mac(id, alg, &message).unwrap();
        assert_eq!(m.key_id, key.arn);
        assert_eq!(m.mac_algorithm.as_str(), alg);
        let mac = m.mac.0;
        assert_eq!(mac.len(), hash_len_of_mac(alg), "{alg}");
        // Deterministic, and message-dependent.
        assert_eq!(generate_mac(id, alg, &message).unwrap().mac.0, mac);
        assert_ne!(
            generate_mac(id, alg, &flip(&message, 0)).unwrap().mac.0,
            mac
        );
        let v = verify_mac(id, alg, &message, &mac).unwrap();
        assert!(v.mac_valid);
        assert_eq!(v.key_id, key.arn);
        assert_eq!(v.mac_algorithm.as_str(), alg);
        // Tampered, truncated, extended MACs; another message.
        for bad in [
            flip(&mac, 0),
            flip(&mac, mac.len() - 1),
            mac[..mac.len() - 1].to_vec(),
            [mac.as_slice(), &[0]].concat(),
        ] {
            fails(
                verify_mac(id, alg, &message, &bad),
                "KMSInvalidMacException",
            );
        }
        fails(
            verify_mac(id, alg, &flip(&message, 3), &mac),
            "KMSInvalidMacException",
        );
        // Another key of the same spec makes another MAC, and refuses this one.
        let other = create_with(spec, MAC, false).unwrap();
        let other_mac = generate_mac(&other.key_id, alg, &message).unwrap().mac.0;
        assert_ne!(other_mac, mac, "{spec}: two keys, one MAC");
        fails(
            verify_mac(&other.key_id, alg, &message, &mac),
            "KMSInvalidMacException",
        );
        // Every other HMAC algorithm is a usage error with this key.
        for wrong in ALL_MAC.iter().filter(|a| **a != alg) {
            fails(
                generate_mac(id, wrong, &message),
                "InvalidKeyUsageException",
            );
            fails(
                verify_mac(id, wrong, &message, &mac),
                "InvalidKeyUsageException",
            );
        }
        // Message bounds 1..=4096.
        let largest = vec![7; 4096];
        let big = generate_mac(id, alg, &largest).unwrap().mac.0;
        assert!(verify_mac(id, alg, &largest, &big).unwrap().mac_valid);
        for bad in [&[][..], &[7; 4097][..]] {
            fails(generate_mac(id, alg, bad), "ValidationException");
            fails(verify_mac(id, alg, bad, &mac), "ValidationException");
        }
        fails(verify_mac(id, alg, &message, &[]), "ValidationException");
        fails(
            generate_mac(id, "HMAC_SHA_1", &message),
            "ValidationException",
        );
        fails(
            kms().generate_mac(GenerateMacRequest {
                key_id: Some(id.into()),
                message: secret(&message),
                ..Default::default()
            }),
            "ValidationException",
        );
        fails(
            kms().generate_mac(GenerateMacRequest {
                key_id: Some(id.into()),
                message: secret(&message),
                mac_algorithm: Some(alg.into()),
                dry_run: Some(true),
                ..Default::default()
            }),
            "DryRunOperationException",
        );
    }
    // GenerateMac and VerifyMac with keys that are not HMAC keys.
    let mut others = vec![symmetric()];
    for (spec, usage) in [
        ("RSA_2048", SIGN),
        ("ECC_NIST_P256", SIGN),
        ("RSA_2048", ENCRYPT),
    ] {
        others.extend(key(TEST, spec, usage));
    }
    for k in &others {
        fails(
            generate_mac(&k.key_id, "HMAC_SHA_256", b"m"),
            "InvalidKeyUsageException",
        );
        fails(
            verify_mac(&k.key_id, "HMAC_SHA_256", b"m", &[0; 32]),
            "InvalidKeyUsageException",
        );
    }
}

fn hash_len_of_mac(alg: &str) -> usize {
    alg.rsplit('_').next().unwrap().parse::<usize>().unwrap() / 8
}

// ----- 6. DeriveSharedSecret ------------------------------------------------------------

/// A host key pair on the curve of `spec`: (its DER SPKI, the ECDH shared secret with the
/// public key `peer`, raw x coordinate).
fn host_ecdh(spec: &str, peer: &[u8]) -> (Vec<u8>, Vec<u8>) {
    match spec {
        "ECC_NIST_P256" => {
            let s = p256::SecretKey::random(&mut OsRng);
            let p = p256::PublicKey::from_public_key_der(peer).unwrap();
            let z = p256::ecdh::diffie_hellman(s.to_nonzero_scalar(), p.as_affine());
            let spki = s.public_key().to_public_key_der().unwrap();
            (spki.as_bytes().to_vec(), z.raw_secret_bytes().to_vec())
        }
        "ECC_NIST_P384" => {
            let s = p384::SecretKey::random(&mut OsRng);
            let p = p384::PublicKey::from_public_key_der(peer).unwrap();
            let z = p384::ecdh::diffie_hellman(s.to_nonzero_scalar(), p.as_affine());
            let spki = s.public_key().to_public_key_der().unwrap();
            (spki.as_bytes().to_vec(), z.raw_secret_bytes().to_vec())
        }
        "ECC_NIST_P521" => {
            let s = p521::SecretKey::random(&mut OsRng);
            let p = p521::PublicKey::from_public_key_der(peer).unwrap();
            let z = p521::ecdh::diffie_hellman(s.to_nonzero_scalar(), p.as_affine());
            let spki = s.public_key().to_public_key_der().unwrap();
            (spki.as_bytes().to_vec(), z.raw_secret_bytes().to_vec())
        }
        other => panic!("no ECDH on {other}"),
    }
}

#[test]
fn derive_shared_secret_matches_host_ecdh_on_every_curve() {
    const TEST: &str = "derive_shared_secret_matches_host_ecdh_on_every_curve";
    let mut public_keys = HashMap::new();
    for spec in NIST_CURVES {
        let Some(key) = key(TEST, spec, AGREE) else {
            continue;
        };
        let spki = public_key(&key.key_id).unwrap().public_key.0;
        HostKey::parse(spec, &spki);
        for _ in 0..2 {
            let (host_spki, host_secret) = host_ecdh(spec, &spki);
            let d = derive(&key.key_id, &host_spki).unwrap();
            assert_eq!(
                d.shared_secret.as_slice(),
                host_secret,
                "{spec}: the token's shared secret is not the host's"
            );
            assert_eq!(d.key_id, key.arn);
            assert_eq!(d.key_agreement_algorithm.as_str(), "ECDH");
            assert_eq!(d.key_origin.as_str(), "AWS_KMS");
            // The same peer, the same secret.
            assert_eq!(
                derive(&key.key_id, &host_spki)
                    .unwrap()
                    .shared_secret
                    .as_slice(),
                host_secret
            );
        }
        public_keys.insert(spec, (key, spki));
    }
    for (spec, (key, _)) in &public_keys {
        // A public key on another curve.
        for (other, (_, other_spki)) in public_keys.iter().filter(|(s, _)| *s != spec) {
            let e = fails(derive(&key.key_id, other_spki), "ValidationException");
            assert!(!e.message().is_empty(), "{spec} with {other}");
        }
        let (host_spki, _) = host_ecdh(spec, &public_keys[spec].1);
        // Not DER; DER that is not an SPKI; a truncated SPKI; a point not on the curve.
        let off_curve = flip(&host_spki, host_spki.len() - 1);
        for bad in [
            b"not a public key".to_vec(),
            vec![0x30, 0x03, 0x02, 0x01, 0x01],
            host_spki[..host_spki.len() - 1].to_vec(),
            off_curve,
        ] {
            fails(derive(&key.key_id, &bad), "ValidationException");
        }
        fails(derive(&key.key_id, &[]), "ValidationException");
        // An RSA public key.
        if let Some(rsa) = key_silent("RSA_2048", SIGN) {
            let rsa_spki = public_key(&rsa.key_id).unwrap().public_key.0;
            fails(derive(&key.key_id, &rsa_spki), "ValidationException");
        }
        // The algorithm member.
        for alg in [None, Some("ECDH_X963")] {
            fails(
                kms().derive_shared_secret(DeriveSharedSecretRequest {
                    key_id: Some(key.key_id.as_str().into()),
                    key_agreement_algorithm: alg.map(Into::into),
                    public_key: bytes(&host_spki),
                    ..Default::default()
                }),
                "ValidationException",
            );
        }
    }
    // Keys that are not KEY_AGREEMENT keys.
    let peer = match public_keys.get("ECC_NIST_P256") {
        Some((_, spki)) => host_ecdh("ECC_NIST_P256", spki).0,
        None => return,
    };
    let mut others = vec![symmetric()];
    for (spec, usage) in [
        ("ECC_NIST_P256", SIGN),
        ("RSA_2048", ENCRYPT),
        ("HMAC_256", MAC),
    ] {
        others.extend(key(TEST, spec, usage));
    }
    for k in &others {
        fails(derive(&k.key_id, &peer), "InvalidKeyUsageException");
    }
}

/// The shared key, or `None` without a word (for checks that only use it when it is there).
fn key_silent(spec: &str, usage: &str) -> Option<KeyMetadata> {
    shared(spec, usage).ok()
}

// ----- 7. Data key pairs --------------------------------------------------------------------

/// Checks that `pkcs8` is a PKCS#8 private key of `spec` whose public key is `spki`.
#[track_caller]
fn check_pair(spec: &str, pkcs8: &[u8], spki: &[u8]) {
    HostKey::parse(spec, spki);
    let matches = match spec {
        s if s.starts_with("RSA_") => {
            let k = RsaPrivateKey::from_pkcs8_der(pkcs8).unwrap();
            k.validate().unwrap();
            assert_eq!(k.n().bits(), rsa_bits(s));
            k.to_public_key() == RsaPublicKey::from_public_key_der(spki).unwrap()
        }
        "ECC_NIST_P256" => {
            p256::SecretKey::from_pkcs8_der(pkcs8).unwrap().public_key()
                == p256::PublicKey::from_public_key_der(spki).unwrap()
        }
        "ECC_NIST_P384" => {
            p384::SecretKey::from_pkcs8_der(pkcs8).unwrap().public_key()
                == p384::PublicKey::from_public_key_der(spki).unwrap()
        }
        "ECC_NIST_P521" => {
            p521::SecretKey::from_pkcs8_der(pkcs8).unwrap().public_key()
                == p521::PublicKey::from_public_key_der(spki).unwrap()
        }
        "ECC_SECG_P256K1" => {
            k256::SecretKey::from_pkcs8_der(pkcs8).unwrap().public_key()
                == k256::PublicKey::from_public_key_der(spki).unwrap()
        }
        "ECC_NIST_EDWARDS25519" => {
            ed25519_dalek::SigningKey::from_pkcs8_der(pkcs8)
                .unwrap()
                .verifying_key()
                == ed25519_dalek::VerifyingKey::from_public_key_der(spki).unwrap()
        }
        other => panic!("no key pair {other}"),
    };
    assert!(matches, "{spec}: the private key is not the public key's");
}

/// GenerateDataKeyPair and GenerateDataKeyPairWithoutPlaintext of `spec` under the shared
/// symmetric key, with an encryption context.
fn data_key_pair(test: &str, spec: &str) {
    let sym = symmetric();
    let ctx = context(&[("pair", spec), ("purpose", "tests")]);
    let wrong = context(&[("pair", spec), ("purpose", "other")]);
    let p = match kms().generate_data_key_pair(pair_request(&sym.key_id, spec, ctx.clone())) {
        Ok(p) => p,
        Err(e) => {
            lacks(test, &format!("GenerateDataKeyPair {spec}"), spec, &e);
            return;
        }
    };
    assert_eq!(p.key_id, sym.arn);
    assert_eq!(p.key_pair_spec.as_str(), spec);
    let pkcs8 = p
        .private_key_plaintext
        .clone()
        .expect("PrivateKeyPlaintext");
    check_pair(spec, pkcs8.as_slice(), &p.public_key.0);
    let d = decrypt(None, None, &p.private_key_ciphertext_blob.0, ctx.clone()).unwrap();
    assert_eq!(d.plaintext.as_slice(), pkcs8.as_slice(), "{spec}");
    assert_eq!(d.key_id, sym.arn);
    for c in [wrong.clone(), None] {
        fails(
            decrypt(None, None, &p.private_key_ciphertext_blob.0, c),
            "InvalidCiphertextException",
        );
    }
    let w = kms()
        .generate_data_key_pair_without_plaintext(pair_request(&sym.key_id, spec, ctx.clone()))
        .unwrap();
    assert!(w.private_key_plaintext.is_none());
    assert_eq!(w.key_id, sym.arn);
    assert_eq!(w.key_pair_spec.as_str(), spec);
    let v = serde_json::to_value(&w).unwrap();
    assert!(v.get("PrivateKeyPlaintext").is_none(), "{v}");
    assert_ne!(
        w.public_key.0, p.public_key.0,
        "{spec}: the same pair twice"
    );
    let d = decrypt(None, None, &w.private_key_ciphertext_blob.0, ctx.clone()).unwrap();
    check_pair(spec, d.plaintext.as_slice(), &w.public_key.0);
    for c in [wrong, None] {
        fails(
            decrypt(None, None, &w.private_key_ciphertext_blob.0, c),
            "InvalidCiphertextException",
        );
    }
}

#[test]
fn data_key_pairs_rsa() {
    for spec in RSA_SPECS {
        data_key_pair("data_key_pairs_rsa", spec);
    }
}

#[test]
fn data_key_pairs_ecc() {
    for spec in [
        "ECC_NIST_P256",
        "ECC_NIST_P384",
        "ECC_NIST_P521",
        "ECC_SECG_P256K1",
        "ECC_NIST_EDWARDS25519",
    ] {
        data_key_pair("data_key_pairs_ecc", spec);
    }
}

#[test]
fn data_key_pair_rules() {
    const TEST: &str = "data_key_pair_rules";
    let sym = symmetric();
    // Only under symmetric encryption keys.
    for (spec, usage) in [
        ("RSA_2048", ENCRYPT),
        ("RSA_2048", SIGN),
        ("ECC_NIST_P256", SIGN),
        ("ECC_NIST_P256", AGREE),
        ("HMAC_256", MAC),
    ] {
        let Some(k) = key(TEST, spec, usage) else {
            continue;
        };
        for pair in ["ECC_NIST_P256", "RSA_2048"] {
            fails(
                kms().generate_data_key_pair(pair_request(&k.key_id, pair, None)),
                "InvalidKeyUsageException",
            );
            fails(
                kms().generate_data_key_pair_without_plaintext(pair_request(&k.key_id, pair, None)),
                "InvalidKeyUsageException",
            );
        }
    }
    fails(
        kms().generate_data_key_pair(pair_request(&sym.key_id, "SM2", None)),
        "UnsupportedOperationException",
    );
    fails(
        kms().generate_data_key_pair_without_plaintext(pair_request(&sym.key_id, "SM2", None)),
        "UnsupportedOperationException",
    );
    for bad in ["RSA_1024", "SYMMETRIC_DEFAULT", "HMAC_256", "ML_DSA_44"] {
        fails(
            kms().generate_data_key_pair(pair_request(&sym.key_id, bad, None)),
            "ValidationException",
        );
    }
    fails(
        kms().generate_data_key_pair(GenerateDataKeyPairRequest {
            key_id: Some(sym.key_id.as_str().into()),
            ..Default::default()
        }),
        "ValidationException",
    );
    fails(
        kms().generate_data_key_pair(GenerateDataKeyPairRequest {
            key_id: Some(sym.key_id.as_str().into()),
            key_pair_spec: Some("ECC_NIST_P256".into()),
            dry_run: Some(true),
            ..Default::default()
        }),
        "DryRunOperationException",
    );
    // No context is a context too: the blob opens without one, and not with one.
    let p = kms()
        .generate_data_key_pair(pair_request(&sym.key_id, "ECC_NIST_P256", None))
        .unwrap();
    let blob = &p.private_key_ciphertext_blob.0;
    assert_eq!(
        decrypt(None, None, blob, None)
            .unwrap()
            .plaintext
            .as_slice(),
        p.private_key_plaintext.unwrap().as_slice()
    );
    fails(
        decrypt(None, None, blob, context(&[("a", "b")])),
        "InvalidCiphertextException",
    );
}

// ----- 8. Usage errors everywhere ------------------------------------------------------

#[test]
fn symmetric_only_operations_refuse_asymmetric_and_hmac_keys() {
    const TEST: &str = "symmetric_only_operations_refuse_asymmetric_and_hmac_keys";
    let sym = symmetric();
    let sym_blob = encrypt(&sym.key_id, None, b"usage", None)
        .unwrap()
        .ciphertext_blob
        .0;
    for (spec, usage) in [
        ("RSA_2048", ENCRYPT),
        ("RSA_2048", SIGN),
        ("ECC_NIST_P256", SIGN),
        ("ECC_NIST_P256", AGREE),
        ("ECC_SECG_P256K1", SIGN),
        ("ECC_NIST_EDWARDS25519", SIGN),
        ("HMAC_256", MAC),
    ] {
        let Some(k) = key(TEST, spec, usage) else {
            continue;
        };
        let id = k.key_id.as_str();
        let what = format!("{spec} {usage}");
        let e = fails(
            kms().generate_data_key(data_key(id)),
            "InvalidKeyUsageException",
        );
        assert!(e.message().contains(&k.arn), "{what}: {}", e.message());
        fails(
            kms().generate_data_key_without_plaintext(data_key(id)),
            "InvalidKeyUsageException",
        );
        if usage != ENCRYPT {
            // Symmetric encryption (no algorithm) with a key that cannot encrypt.
            fails(encrypt(id, None, b"x", None), "InvalidKeyUsageException");
            fails(
                decrypt(Some(id), None, &sym_blob, None),
                "InvalidKeyUsageException",
            );
            fails(
                kms().re_encrypt(ReEncryptRequest {
                    ciphertext_blob: bytes(&sym_blob),
                    destination_key_id: Some(id.into()),
                    ..Default::default()
                }),
                "InvalidKeyUsageException",
            );
        }
        if usage != SIGN {
            fails(
                sign(id, "ECDSA_SHA_256", "RAW", b"x"),
                "InvalidKeyUsageException",
            );
            fails(
                verify(id, "RSASSA_PSS_SHA_256", "RAW", b"x", &[1; 64]),
                "InvalidKeyUsageException",
            );
        }
    }
    // Sign and Verify with the symmetric key.
    fails(
        sign(&sym.key_id, "RSASSA_PSS_SHA_256", "RAW", b"x"),
        "InvalidKeyUsageException",
    );
    fails(
        verify(&sym.key_id, "ECDSA_SHA_256", "RAW", b"x", &[1; 64]),
        "InvalidKeyUsageException",
    );
}

// ----- 9. Key states --------------------------------------------------------------------

/// Uses `key` (its one usage); `Err` is the library's answer.
fn use_key(key: &KeyMetadata) -> Result<(), KmsError> {
    static PEER: OnceLock<Vec<u8>> = OnceLock::new();
    let id = key.key_id.as_str();
    match key.key_usage.as_str() {
        SIGN => {
            let s = sign(id, "ECDSA_SHA_256", "RAW", b"state")?;
            verify(id, "ECDSA_SHA_256", "RAW", b"state", &s.signature.0).map(drop)
        }
        MAC => {
            let m = generate_mac(id, "HMAC_SHA_256", b"state")?;
            verify_mac(id, "HMAC_SHA_256", b"state", &m.mac.0).map(drop)
        }
        AGREE => {
            let peer = PEER.get_or_init(|| {
                let s = p256::SecretKey::random(&mut OsRng);
                s.public_key()
                    .to_public_key_der()
                    .unwrap()
                    .as_bytes()
                    .to_vec()
            });
            derive(id, peer).map(drop)
        }
        _ => {
            let c = encrypt(id, Some("RSAES_OAEP_SHA_1"), b"state", None)?;
            decrypt(
                Some(id),
                Some("RSAES_OAEP_SHA_1"),
                &c.ciphertext_blob.0,
                None,
            )
            .map(drop)
        }
    }
}

fn backing_kind(spec: &str, usage: &str) -> BackingKind {
    let usage = match usage {
        SIGN => PrivateUsage::Sign,
        ENCRYPT => PrivateUsage::Decrypt,
        AGREE => PrivateUsage::Derive,
        _ => {
            let bytes = spec.trim_start_matches("HMAC_").parse::<usize>().unwrap() / 8;
            return BackingKind::Hmac { bytes };
        }
    };
    let pair = match spec {
        s if s.starts_with("RSA_") => PairKind::Rsa { bits: rsa_bits(s) },
        "ECC_NIST_P256" => PairKind::Ec(Curve::P256),
        "ECC_NIST_P384" => PairKind::Ec(Curve::P384),
        "ECC_NIST_P521" => PairKind::Ec(Curve::P521),
        "ECC_SECG_P256K1" => PairKind::Ec(Curve::Secp256k1),
        "ECC_NIST_EDWARDS25519" => PairKind::Ed25519,
        other => panic!("{other}"),
    };
    BackingKind::Private { pair, usage }
}

/// The key's object in the token, found by its label `p11kms:cmk:<id>:v1` and proven to be
/// what p11kms generated for it.
fn backing(key: &KeyMetadata) -> (CmkHandle, BackingKind) {
    let id: KeyId = key.key_id.parse().unwrap();
    let kind = backing_kind(key.key_spec.as_str(), key.key_usage.as_str());
    let label = format!("p11kms:cmk:{}:v1", key.key_id);
    match kms()
        .token()
        .find_cmk(&label, &cmk_id(&id, 1), kind)
        .unwrap()
    {
        CmkLookup::Found(h) => (h, kind),
        other => panic!("{label}: {other:?}"),
    }
}

/// Whether the token object's one usage attribute is on.
fn usage_on(key: &KeyMetadata) -> bool {
    let (h, kind) = backing(key);
    let c = kms().token().cmk_custody(h).unwrap();
    let on = match key.key_usage.as_str() {
        SIGN => c.sign,
        ENCRYPT => c.decrypt,
        AGREE => c.derive,
        _ => c.sign && c.verify,
    };
    assert_eq!(kms().token().cmk_usable(h, kind).unwrap(), on);
    on
}

#[test]
fn disabled_and_pending_deletion_keys_refuse_use() {
    const TEST: &str = "disabled_and_pending_deletion_keys_refuse_use";
    let _no_service_opens = opening_a_service();
    for (spec, usage) in [
        ("ECC_NIST_P256", SIGN),
        ("HMAC_256", MAC),
        ("ECC_NIST_P256", AGREE),
        ("RSA_2048", ENCRYPT),
    ] {
        let key = match create_with(spec, usage, false) {
            Ok(k) => k,
            Err(e) => {
                lacks(TEST, &format!("{spec} {usage}"), spec, &e);
                continue;
            }
        };
        let id = key.key_id.as_str();
        let what = format!("{spec} {usage}");
        use_key(&key).unwrap();
        assert!(usage_on(&key), "{what}");
        kms().disable_key(common::key_req(id)).unwrap();
        fails(use_key(&key), "DisabledException");
        assert!(
            !usage_on(&key),
            "{what}: the usage is still on in the token"
        );
        if usage != MAC {
            fails(public_key(id), "DisabledException");
        }
        if usage == SIGN {
            let e = fails(
                verify(
                    id,
                    "ECDSA_SHA_256",
                    "RAW",
                    b"m",
                    &[0x30, 0x06, 2, 1, 1, 2, 1, 1],
                ),
                "DisabledException",
            );
            assert!(e.message().contains(&key.arn), "{}", e.message());
        }
        assert_eq!(
            kms()
                .describe_key(common::key_req(id))
                .unwrap()
                .key_metadata
                .key_state
                .as_str(),
            "Disabled"
        );
        kms().enable_key(common::key_req(id)).unwrap();
        use_key(&key).unwrap();
        assert!(usage_on(&key), "{what}");
        kms()
            .schedule_key_deletion(ScheduleKeyDeletionRequest {
                key_id: Some(id.into()),
                pending_window_in_days: Some(7),
            })
            .unwrap();
        fails(use_key(&key), "KMSInvalidStateException");
        assert!(!usage_on(&key), "{what}");
        if usage == SIGN {
            fails(
                verify(
                    id,
                    "ECDSA_SHA_256",
                    "RAW",
                    b"m",
                    &[0x30, 0x06, 2, 1, 1, 2, 1, 1],
                ),
                "KMSInvalidStateException",
            );
        }
        // Cancelled, the key comes back disabled.
        kms().cancel_key_deletion(common::key_req(id)).unwrap();
        fails(use_key(&key), "DisabledException");
        kms().enable_key(common::key_req(id)).unwrap();
        use_key(&key).unwrap();
    }
}

// ----- 10. Custody --------------------------------------------------------------------------

/// A service opened afresh over the token (a restarted or a second process) binds every key,
/// proving its object in the token genuine, and uses it.
#[test]
fn every_key_works_in_a_restarted_service() {
    const TEST: &str = "every_key_works_in_a_restarted_service";
    let keys: Vec<KeyMetadata> = ALLOWED
        .iter()
        .filter_map(|a| key(TEST, a.spec, a.usage))
        .collect();
    let fresh = {
        let _opening = opening_a_service();
        common::fresh_kms()
    };
    let peer = p256::SecretKey::random(&mut OsRng)
        .public_key()
        .to_public_key_der()
        .unwrap()
        .as_bytes()
        .to_vec();
    for key in &keys {
        let id = key.key_id.as_str();
        let spec = key.key_spec.as_str();
        let what = format!("{spec} {}", key.key_usage.as_str());
        let used: Result<(), KmsError> = match key.key_usage.as_str() {
            SIGN => {
                let alg = names(&key.signing_algorithms).unwrap()[0];
                fresh
                    .sign(SignRequest {
                        key_id: Some(id.into()),
                        message: secret(b"restarted"),
                        signing_algorithm: Some(alg.into()),
                        ..Default::default()
                    })
                    .map(|s| {
                        let host = HostKey::parse(spec, &public_key(id).unwrap().public_key.0);
                        assert!(
                            host.verifies(alg, "RAW", b"restarted", &s.signature.0),
                            "{what}"
                        );
                    })
            }
            MAC => {
                let alg = names(&key.mac_algorithms).unwrap()[0];
                fresh
                    .generate_mac(GenerateMacRequest {
                        key_id: Some(id.into()),
                        message: secret(b"restarted"),
                        mac_algorithm: Some(alg.into()),
                        ..Default::default()
                    })
                    .map(|m| {
                        assert_eq!(m.mac.0, generate_mac(id, alg, b"restarted").unwrap().mac.0)
                    })
            }
            AGREE if spec == "ECC_NIST_P256" => fresh
                .derive_shared_secret(DeriveSharedSecretRequest {
                    key_id: Some(id.into()),
                    key_agreement_algorithm: Some("ECDH".into()),
                    public_key: bytes(&peer),
                    ..Default::default()
                })
                .map(|d| {
                    let here = derive(id, &peer).unwrap();
                    assert_eq!(d.shared_secret.as_slice(), here.shared_secret.as_slice());
                }),
            AGREE => {
                let (host_spki, _) = host_ecdh(spec, &public_key(id).unwrap().public_key.0);
                fresh
                    .derive_shared_secret(DeriveSharedSecretRequest {
                        key_id: Some(id.into()),
                        key_agreement_algorithm: Some("ECDH".into()),
                        public_key: bytes(&host_spki),
                        ..Default::default()
                    })
                    .map(drop)
            }
            _ => {
                let alg = (spec != "SYMMETRIC_DEFAULT").then_some("RSAES_OAEP_SHA_1");
                let blob = encrypt(id, alg, b"restarted", None)
                    .unwrap()
                    .ciphertext_blob;
                fresh
                    .decrypt(DecryptRequest {
                        key_id: Some(id.into()),
                        ciphertext_blob: Some(blob),
                        encryption_algorithm: alg.map(Into::into),
                        ..Default::default()
                    })
                    .map(|d| assert_eq!(d.plaintext.as_slice(), b"restarted"))
            }
        };
        if let Err(e) = used {
            panic!("{what}: a restarted service cannot use the key: {e:?}");
        }
    }
}

/// Every asymmetric and HMAC key's object in the token: sensitive, always sensitive, never
/// extractable, not extractable, no private value readable, and only its one usage.
#[test]
fn private_and_secret_keys_never_leave_the_token() {
    const TEST: &str = "private_and_secret_keys_never_leave_the_token";
    let mut checked = 0;
    for a in ALLOWED.iter().filter(|a| a.spec != "SYMMETRIC_DEFAULT") {
        let Some(key) = key(TEST, a.spec, a.usage) else {
            continue;
        };
        let what = format!("{} {}", a.spec, a.usage);
        let (h, _) = backing(&key);
        let c = kms().token().cmk_custody(h).unwrap();
        assert!(c.sensitive, "{what}: {c:?}");
        assert!(c.always_sensitive, "{what}: {c:?}");
        assert!(c.never_extractable, "{what}: {c:?}");
        assert!(!c.extractable, "{what}: {c:?}");
        assert!(!c.value_readable, "{what}: CKA_VALUE readable");
        assert!(
            !c.private_parts_readable,
            "{what}: an RSA private part readable"
        );
        let usages = (c.encrypt, c.decrypt, c.sign, c.verify, c.derive);
        let want = match a.usage {
            SIGN => (false, false, true, false, false),
            ENCRYPT => (false, true, false, false, false),
            AGREE => (false, false, false, false, true),
            _ => (false, false, true, true, false),
        };
        assert_eq!(
            usages, want,
            "{what}: (encrypt, decrypt, sign, verify, derive)"
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} keys checked");
}
