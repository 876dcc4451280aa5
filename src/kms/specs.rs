//! What each `KeySpec` is: the usages AWS allows it, the algorithms it lists in KeyMetadata,
//! and the kind of token object that backs it. One table, read by CreateKey, DescribeKey and
//! every operation that checks a key's usage or an algorithm.

use super::domain::{
    DataKeyPairSpec, EncryptionAlgorithm, KeyAgreementAlgorithm, KeySpec, KeyUsage, MacAlgorithm,
    SigningAlgorithm,
};
use crate::der::{Curve, Hash};
use crate::error::{KmsError, Result};
use crate::hsm::{BackingKind, PairKind, PrivateUsage, SignScheme};

/// The algorithms a key lists in its KeyMetadata (empty lists are absent on the wire).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Algorithms {
    pub encryption: Vec<EncryptionAlgorithm>,
    pub signing: Vec<SigningAlgorithm>,
    pub mac: Vec<MacAlgorithm>,
    pub key_agreement: Vec<KeyAgreementAlgorithm>,
}

/// An algorithm list as KeyMetadata carries it: absent when empty.
pub(crate) fn listed<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

/// The key pair of an asymmetric spec (none for symmetric and HMAC specs, and for the AWS
/// specs p11kms does not serve).
pub(crate) fn pair_kind(spec: KeySpec) -> Option<PairKind> {
    Some(match spec {
        KeySpec::Rsa2048 => PairKind::Rsa { bits: 2048 },
        KeySpec::Rsa3072 => PairKind::Rsa { bits: 3072 },
        KeySpec::Rsa4096 => PairKind::Rsa { bits: 4096 },
        KeySpec::EccNistP256 => PairKind::Ec(Curve::P256),
        KeySpec::EccNistP384 => PairKind::Ec(Curve::P384),
        KeySpec::EccNistP521 => PairKind::Ec(Curve::P521),
        KeySpec::EccSecgP256k1 => PairKind::Ec(Curve::Secp256k1),
        KeySpec::EccNistEdwards25519 => PairKind::Ed25519,
        _ => return None,
    })
}

/// The key pair of a data key pair spec.
pub(crate) fn data_pair_kind(spec: DataKeyPairSpec) -> Option<PairKind> {
    Some(match spec {
        DataKeyPairSpec::Rsa2048 => PairKind::Rsa { bits: 2048 },
        DataKeyPairSpec::Rsa3072 => PairKind::Rsa { bits: 3072 },
        DataKeyPairSpec::Rsa4096 => PairKind::Rsa { bits: 4096 },
        DataKeyPairSpec::EccNistP256 => PairKind::Ec(Curve::P256),
        DataKeyPairSpec::EccNistP384 => PairKind::Ec(Curve::P384),
        DataKeyPairSpec::EccNistP521 => PairKind::Ec(Curve::P521),
        DataKeyPairSpec::EccSecgP256k1 => PairKind::Ec(Curve::Secp256k1),
        DataKeyPairSpec::EccNistEdwards25519 => PairKind::Ed25519,
        DataKeyPairSpec::Sm2 => return None,
    })
}

/// The HMAC of an HMAC spec, and its key length in bytes.
pub(crate) fn hmac(spec: KeySpec) -> Option<(MacAlgorithm, usize)> {
    Some(match spec {
        KeySpec::Hmac224 => (MacAlgorithm::HmacSha224, 28),
        KeySpec::Hmac256 => (MacAlgorithm::HmacSha256, 32),
        KeySpec::Hmac384 => (MacAlgorithm::HmacSha384, 48),
        KeySpec::Hmac512 => (MacAlgorithm::HmacSha512, 64),
        _ => return None,
    })
}

/// The deprecated `CustomerMasterKeySpec` of a key: its spec, where that enum has it. The
/// enum stopped growing when KeySpec replaced it: it has no ECC_NIST_EDWARDS25519 and no
/// ML-DSA, so SDKs parse those values as unknown; such keys carry no CustomerMasterKeySpec.
pub(crate) fn customer_master_key_spec(spec: KeySpec) -> Option<KeySpec> {
    match spec {
        KeySpec::EccNistEdwards25519 | KeySpec::MlDsa44 | KeySpec::MlDsa65 | KeySpec::MlDsa87 => {
            None
        }
        s => Some(s),
    }
}

/// The usages AWS allows a key spec (empty: a spec p11kms does not serve).
pub(crate) fn usages(spec: KeySpec) -> &'static [KeyUsage] {
    use KeyUsage::*;
    match spec {
        KeySpec::SymmetricDefault => &[EncryptDecrypt],
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => &[EncryptDecrypt, SignVerify],
        KeySpec::EccNistP256 | KeySpec::EccNistP384 | KeySpec::EccNistP521 => {
            &[SignVerify, KeyAgreement]
        }
        KeySpec::EccSecgP256k1 | KeySpec::EccNistEdwards25519 => &[SignVerify],
        KeySpec::Hmac224 | KeySpec::Hmac256 | KeySpec::Hmac384 | KeySpec::Hmac512 => {
            &[GenerateVerifyMac]
        }
        KeySpec::Sm2 | KeySpec::MlDsa44 | KeySpec::MlDsa65 | KeySpec::MlDsa87 => &[],
    }
}

/// What backs a key of `spec` and `usage` in the token, or why such a key cannot be.
pub(crate) fn backing_kind(spec: KeySpec, usage: KeyUsage) -> Result<BackingKind> {
    if matches!(
        spec,
        KeySpec::Sm2 | KeySpec::MlDsa44 | KeySpec::MlDsa65 | KeySpec::MlDsa87
    ) {
        return Err(KmsError::unsupported(format!(
            "KeySpec {spec} is not supported by p11kms: PKCS#11 tokens have no mechanism for it"
        )));
    }
    if !usages(spec).contains(&usage) {
        return Err(KmsError::validation(format!(
            "KeyUsage {usage} is not compatible with KeySpec {spec}"
        )));
    }
    if spec == KeySpec::SymmetricDefault {
        return Ok(BackingKind::Derive);
    }
    if let Some((_, bytes)) = hmac(spec) {
        return Ok(BackingKind::Hmac { bytes });
    }
    let pair = pair_kind(spec).ok_or_else(|| KmsError::unsupported(format!("KeySpec {spec}")))?;
    let usage = match usage {
        KeyUsage::SignVerify => PrivateUsage::Sign,
        KeyUsage::EncryptDecrypt => PrivateUsage::Decrypt,
        KeyUsage::KeyAgreement => PrivateUsage::Derive,
        KeyUsage::GenerateVerifyMac => {
            return Err(KmsError::validation(format!(
                "KeyUsage {usage} is not compatible with KeySpec {spec}"
            )))
        }
    };
    Ok(BackingKind::Private { pair, usage })
}

/// The algorithms a key of `spec` and `usage` lists, as AWS lists them.
pub(crate) fn algorithms(spec: KeySpec, usage: KeyUsage) -> Algorithms {
    use SigningAlgorithm::*;
    let mut a = Algorithms::default();
    match (spec, usage) {
        (KeySpec::SymmetricDefault, _) => {
            a.encryption = vec![EncryptionAlgorithm::SymmetricDefault]
        }
        (KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096, KeyUsage::EncryptDecrypt) => {
            a.encryption = vec![
                EncryptionAlgorithm::RsaesOaepSha1,
                EncryptionAlgorithm::RsaesOaepSha256,
            ]
        }
        (KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096, _) => {
            a.signing = vec![
                RsassaPssSha256,
                RsassaPssSha384,
                RsassaPssSha512,
                RsassaPkcs1V15Sha256,
                RsassaPkcs1V15Sha384,
                RsassaPkcs1V15Sha512,
            ]
        }
        (_, KeyUsage::KeyAgreement) => a.key_agreement = vec![KeyAgreementAlgorithm::Ecdh],
        (KeySpec::EccNistP256 | KeySpec::EccSecgP256k1, _) => a.signing = vec![EcdsaSha256],
        (KeySpec::EccNistP384, _) => a.signing = vec![EcdsaSha384],
        (KeySpec::EccNistP521, _) => a.signing = vec![EcdsaSha512],
        (KeySpec::EccNistEdwards25519, _) => a.signing = vec![Ed25519Sha512, Ed25519PhSha512],
        (s, _) => {
            if let Some((mac, _)) = hmac(s) {
                a.mac = vec![mac];
            }
        }
    }
    a
}

/// The hash of a signing algorithm, and how the token signs with it. `None`: an algorithm
/// p11kms does not serve (SM2DSA, ML-DSA).
pub(crate) fn signing(alg: SigningAlgorithm) -> Option<(Hash, SignScheme)> {
    use SigningAlgorithm::*;
    Some(match alg {
        RsassaPssSha256 => (Hash::Sha256, SignScheme::RsaPss(Hash::Sha256)),
        RsassaPssSha384 => (Hash::Sha384, SignScheme::RsaPss(Hash::Sha384)),
        RsassaPssSha512 => (Hash::Sha512, SignScheme::RsaPss(Hash::Sha512)),
        RsassaPkcs1V15Sha256 => (Hash::Sha256, SignScheme::RsaPkcs1(Hash::Sha256)),
        RsassaPkcs1V15Sha384 => (Hash::Sha384, SignScheme::RsaPkcs1(Hash::Sha384)),
        RsassaPkcs1V15Sha512 => (Hash::Sha512, SignScheme::RsaPkcs1(Hash::Sha512)),
        EcdsaSha256 => (Hash::Sha256, SignScheme::Ecdsa),
        EcdsaSha384 => (Hash::Sha384, SignScheme::Ecdsa),
        EcdsaSha512 => (Hash::Sha512, SignScheme::Ecdsa),
        Ed25519Sha512 => (Hash::Sha512, SignScheme::Ed25519),
        // Only where the token's Ed25519ph is real (`Capabilities::ed25519ph`, probed at
        // open: SoftHSM 2.6 ignores the flag and signs the digest as a pure message).
        Ed25519PhSha512 => (Hash::Sha512, SignScheme::Ed25519Ph),
        Sm2dsa | MlDsaShake256 => return None,
    })
}

/// The hash of an HMAC algorithm.
pub(crate) fn mac_hash(alg: MacAlgorithm) -> Hash {
    match alg {
        MacAlgorithm::HmacSha224 => Hash::Sha224,
        MacAlgorithm::HmacSha256 => Hash::Sha256,
        MacAlgorithm::HmacSha384 => Hash::Sha384,
        MacAlgorithm::HmacSha512 => Hash::Sha512,
    }
}

/// The OAEP hash of an RSA encryption algorithm.
pub(crate) fn oaep_hash(alg: EncryptionAlgorithm) -> Option<Hash> {
    match alg {
        EncryptionAlgorithm::RsaesOaepSha1 => Some(Hash::Sha1),
        EncryptionAlgorithm::RsaesOaepSha256 => Some(Hash::Sha256),
        _ => None,
    }
}

/// AWS's largest plaintext for RSAES-OAEP: the modulus length less 2 hash lengths less 2.
pub(crate) fn oaep_max_plaintext(bits: usize, hash: Hash) -> usize {
    (bits / 8).saturating_sub(2 * hash.len() + 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::domain::AwsEnum;

    #[test]
    fn every_served_spec_and_usage_has_a_backing_kind_and_algorithms() {
        for spec in KeySpec::ALL {
            for usage in KeyUsage::ALL {
                let kind = backing_kind(*spec, *usage);
                let allowed = usages(*spec).contains(usage);
                assert_eq!(kind.is_ok(), allowed, "{spec} {usage}");
                if allowed {
                    let a = algorithms(*spec, *usage);
                    let lists = [
                        !a.encryption.is_empty(),
                        !a.signing.is_empty(),
                        !a.mac.is_empty(),
                        !a.key_agreement.is_empty(),
                    ];
                    assert_eq!(lists.iter().filter(|l| **l).count(), 1, "{spec} {usage}");
                }
            }
        }
        assert_eq!(
            backing_kind(KeySpec::Hmac256, KeyUsage::EncryptDecrypt)
                .unwrap_err()
                .kind()
                .aws_name(),
            "ValidationException"
        );
        assert_eq!(
            backing_kind(KeySpec::Sm2, KeyUsage::SignVerify)
                .unwrap_err()
                .kind()
                .aws_name(),
            "UnsupportedOperationException"
        );
    }

    #[test]
    fn oaep_limits_are_aws_limits() {
        // AWS KMS API Reference, Encrypt: RSA_2048 190 (SHA-256) / 214 (SHA-1) bytes.
        assert_eq!(oaep_max_plaintext(2048, Hash::Sha256), 190);
        assert_eq!(oaep_max_plaintext(2048, Hash::Sha1), 214);
        assert_eq!(oaep_max_plaintext(3072, Hash::Sha256), 318);
        assert_eq!(oaep_max_plaintext(4096, Hash::Sha1), 470);
    }
}
