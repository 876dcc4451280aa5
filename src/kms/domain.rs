//! What a KMS key is, as enums with the AWS names: key specs, usages, origins, states and
//! algorithms. Requests carry these as strings (an unknown value is AWS's
//! `ValidationException`, not a parse failure): [`AwsEnum::parse`] turns them into values
//! here, with AWS's wording; responses and records carry the enums themselves.

use serde::{Deserialize, Serialize, Serializer};

use crate::error::{KmsError, Result};

/// An enum of the AWS KMS API: its values and their names.
pub trait AwsEnum: Sized + Copy + 'static {
    /// Every value, in the order the API Reference lists them.
    const ALL: &'static [Self];
    /// The AWS name of the value.
    fn as_str(self) -> &'static str;

    /// The value named `text`, or AWS's `ValidationException` for `member` (its lower camel
    /// case name, e.g. `keySpec`), listing the values the member allows.
    fn parse(text: &str, member: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|v| v.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                KmsError::validation(format!(
                    "1 validation error detected: Value '{text}' at '{member}' failed to satisfy \
                     constraint: Member must satisfy enum value set: [{}]",
                    names.join(", ")
                ))
            })
    }
}

macro_rules! aws_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $aws:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[doc = concat!("`", $aws, "`")] #[serde(rename = $aws)] $variant),*
        }

        impl AwsEnum for $name {
            const ALL: &'static [Self] = &[$($name::$variant),*];
            fn as_str(self) -> &'static str {
                match self { $($name::$variant => $aws),* }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// Compares with an AWS name (`spec == "SYMMETRIC_DEFAULT"`).
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

aws_enum!(
    /// `KeySpec` (and the deprecated `CustomerMasterKeySpec`), as the API lists them.
    KeySpec {
        Rsa2048 = "RSA_2048",
        Rsa3072 = "RSA_3072",
        Rsa4096 = "RSA_4096",
        EccNistP256 = "ECC_NIST_P256",
        EccNistP384 = "ECC_NIST_P384",
        EccNistP521 = "ECC_NIST_P521",
        EccSecgP256k1 = "ECC_SECG_P256K1",
        SymmetricDefault = "SYMMETRIC_DEFAULT",
        Hmac224 = "HMAC_224",
        Hmac256 = "HMAC_256",
        Hmac384 = "HMAC_384",
        Hmac512 = "HMAC_512",
        Sm2 = "SM2",
        MlDsa44 = "ML_DSA_44",
        MlDsa65 = "ML_DSA_65",
        MlDsa87 = "ML_DSA_87",
        EccNistEdwards25519 = "ECC_NIST_EDWARDS25519",
    }
);

aws_enum!(
    /// `KeyUsage`.
    KeyUsage {
        SignVerify = "SIGN_VERIFY",
        EncryptDecrypt = "ENCRYPT_DECRYPT",
        GenerateVerifyMac = "GENERATE_VERIFY_MAC",
        KeyAgreement = "KEY_AGREEMENT",
    }
);

aws_enum!(
    /// `Origin`: where the key material came from.
    Origin {
        AwsCloudhsm = "AWS_CLOUDHSM",
        External = "EXTERNAL",
        AwsKms = "AWS_KMS",
        ExternalKeyStore = "EXTERNAL_KEY_STORE",
    }
);

aws_enum!(
    /// `KeyManager`: every key here is the customer's.
    KeyManager {
        Aws = "AWS",
        Customer = "CUSTOMER",
    }
);

aws_enum!(
    /// `EncryptionAlgorithm`.
    EncryptionAlgorithm {
        SymmetricDefault = "SYMMETRIC_DEFAULT",
        RsaesOaepSha1 = "RSAES_OAEP_SHA_1",
        RsaesOaepSha256 = "RSAES_OAEP_SHA_256",
        Sm2pke = "SM2PKE",
    }
);

aws_enum!(
    /// `SigningAlgorithmSpec` (Sign, Verify; `SigningAlgorithms` of asymmetric signing keys).
    SigningAlgorithm {
        RsassaPssSha256 = "RSASSA_PSS_SHA_256",
        RsassaPssSha384 = "RSASSA_PSS_SHA_384",
        RsassaPssSha512 = "RSASSA_PSS_SHA_512",
        RsassaPkcs1V15Sha256 = "RSASSA_PKCS1_V1_5_SHA_256",
        RsassaPkcs1V15Sha384 = "RSASSA_PKCS1_V1_5_SHA_384",
        RsassaPkcs1V15Sha512 = "RSASSA_PKCS1_V1_5_SHA_512",
        EcdsaSha256 = "ECDSA_SHA_256",
        EcdsaSha384 = "ECDSA_SHA_384",
        EcdsaSha512 = "ECDSA_SHA_512",
        Sm2dsa = "SM2DSA",
        MlDsaShake256 = "ML_DSA_SHAKE_256",
        Ed25519Sha512 = "ED25519_SHA_512",
        Ed25519PhSha512 = "ED25519_PH_SHA_512",
    }
);

aws_enum!(
    /// `MacAlgorithmSpec` (GenerateMac, VerifyMac; `MacAlgorithms` of HMAC keys).
    MacAlgorithm {
        HmacSha224 = "HMAC_SHA_224",
        HmacSha256 = "HMAC_SHA_256",
        HmacSha384 = "HMAC_SHA_384",
        HmacSha512 = "HMAC_SHA_512",
    }
);

aws_enum!(
    /// `KeyAgreementAlgorithmSpec` (DeriveSharedSecret; `KeyAgreementAlgorithms` of key
    /// agreement keys).
    KeyAgreementAlgorithm {
        Ecdh = "ECDH",
    }
);

aws_enum!(
    /// `MessageType` of Sign and Verify.
    MessageType {
        Raw = "RAW",
        Digest = "DIGEST",
        ExternalMu = "EXTERNAL_MU",
    }
);

aws_enum!(
    /// `DataKeyPairSpec` of GenerateDataKeyPair(WithoutPlaintext).
    DataKeyPairSpec {
        Rsa2048 = "RSA_2048",
        Rsa3072 = "RSA_3072",
        Rsa4096 = "RSA_4096",
        EccNistP256 = "ECC_NIST_P256",
        EccNistP384 = "ECC_NIST_P384",
        EccNistP521 = "ECC_NIST_P521",
        EccSecgP256k1 = "ECC_SECG_P256K1",
        Sm2 = "SM2",
        EccNistEdwards25519 = "ECC_NIST_EDWARDS25519",
    }
);

aws_enum!(
    /// `DataKeySpec` of GenerateDataKey(WithoutPlaintext).
    DataKeySpec {
        Aes256 = "AES_256",
        Aes128 = "AES_128",
    }
);

impl DataKeySpec {
    /// The data key's length in bytes.
    pub fn bytes(self) -> usize {
        match self {
            DataKeySpec::Aes256 => 32,
            DataKeySpec::Aes128 => 16,
        }
    }
}

aws_enum!(
    /// `GrantOperation`: what a grant may allow (CreateGrant's `Operations`). Every value AWS
    /// lists; which of them a key can take depends on its spec and usage
    /// (`kms::grant::operations_for`).
    GrantOperation {
        Decrypt = "Decrypt",
        Encrypt = "Encrypt",
        GenerateDataKey = "GenerateDataKey",
        GenerateDataKeyWithoutPlaintext = "GenerateDataKeyWithoutPlaintext",
        ReEncryptFrom = "ReEncryptFrom",
        ReEncryptTo = "ReEncryptTo",
        Sign = "Sign",
        Verify = "Verify",
        GetPublicKey = "GetPublicKey",
        CreateGrant = "CreateGrant",
        RetireGrant = "RetireGrant",
        DescribeKey = "DescribeKey",
        GenerateDataKeyPair = "GenerateDataKeyPair",
        GenerateDataKeyPairWithoutPlaintext = "GenerateDataKeyPairWithoutPlaintext",
        GenerateMac = "GenerateMac",
        VerifyMac = "VerifyMac",
        DeriveSharedSecret = "DeriveSharedSecret",
        Decapsulate = "Decapsulate",
        Encapsulate = "Encapsulate",
    }
);

aws_enum!(
    /// `AlgorithmSpec`: how key material for import is wrapped (GetParametersForImport's
    /// `WrappingAlgorithm`).
    WrappingAlgorithm {
        RsaesPkcs1V15 = "RSAES_PKCS1_V1_5",
        RsaesOaepSha1 = "RSAES_OAEP_SHA_1",
        RsaesOaepSha256 = "RSAES_OAEP_SHA_256",
        RsaAesKeyWrapSha1 = "RSA_AES_KEY_WRAP_SHA_1",
        RsaAesKeyWrapSha256 = "RSA_AES_KEY_WRAP_SHA_256",
        Sm2pke = "SM2PKE",
    }
);

aws_enum!(
    /// `WrappingKeySpec` of GetParametersForImport.
    WrappingKeySpec {
        Rsa2048 = "RSA_2048",
        Rsa3072 = "RSA_3072",
        Rsa4096 = "RSA_4096",
        Sm2 = "SM2",
    }
);

aws_enum!(
    /// `ExpirationModelType`: whether imported key material expires.
    ExpirationModel {
        KeyMaterialExpires = "KEY_MATERIAL_EXPIRES",
        KeyMaterialDoesNotExpire = "KEY_MATERIAL_DOES_NOT_EXPIRE",
    }
);

aws_enum!(
    /// `ImportType` of ImportKeyMaterial.
    ImportType {
        NewKeyMaterial = "NEW_KEY_MATERIAL",
        ExistingKeyMaterial = "EXISTING_KEY_MATERIAL",
    }
);

/// The lifecycle state of a KMS key, named as AWS names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum KeyState {
    /// `Enabled`: usable.
    Enabled,
    /// `Disabled`: kept, refused for use until enabled.
    Disabled,
    /// `PendingDeletion`: refused for use, destroyed at its deletion date unless cancelled.
    PendingDeletion,
    /// `PendingImport`: a key with imported key material (`Origin=EXTERNAL`) that has none:
    /// not yet imported, deleted, or expired. Refused for use until material is imported.
    PendingImport,
    /// `PendingReplicaDeletion`: a multi-Region primary key scheduled for deletion while it
    /// has replicas; its waiting period starts when the last replica is deleted.
    PendingReplicaDeletion,
    /// A record this version cannot fully read: a state or field written by a newer p11kms
    /// (during a rolling upgrade), or damaged. The key is kept, with its backing keys, but
    /// nothing here uses or changes it; AWS calls such a key `Unavailable`. Never written to
    /// a record.
    #[serde(other)]
    Unknown,
}

impl KeyState {
    /// The AWS name (`Unavailable` for [`KeyState::Unknown`]).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
            KeyState::PendingImport => "PendingImport",
            KeyState::PendingReplicaDeletion => "PendingReplicaDeletion",
            KeyState::Unknown => "Unavailable",
        }
    }
}

impl Serialize for KeyState {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Compares with an AWS name (`state == "Enabled"`).
impl PartialEq<&str> for KeyState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

aws_enum!(
    /// `RotationType` of a completed rotation (ListKeyRotations).
    RotationType {
        Automatic = "AUTOMATIC",
        OnDemand = "ON_DEMAND",
    }
);

aws_enum!(
    /// `IncludeKeyMaterial` of ListKeyRotations.
    IncludeKeyMaterial {
        AllKeyMaterial = "ALL_KEY_MATERIAL",
        RotationsOnly = "ROTATIONS_ONLY",
    }
);

aws_enum!(
    /// `KeyMaterialState` of a ListKeyRotations entry.
    KeyMaterialState {
        NonCurrent = "NON_CURRENT",
        Current = "CURRENT",
        PendingRotation = "PENDING_ROTATION",
        PendingMultiRegionImportAndRotation = "PENDING_MULTI_REGION_IMPORT_AND_ROTATION",
    }
);

aws_enum!(
    /// `ImportState` of a ListKeyRotations entry (keys with imported key material).
    ImportState {
        Imported = "IMPORTED",
        PendingImport = "PENDING_IMPORT",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<E>()
    where
        E: AwsEnum + Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let mut names: Vec<&str> = E::ALL.iter().map(|e| e.as_str()).collect();
        for e in E::ALL {
            let json = serde_json::to_string(e).unwrap();
            assert_eq!(json, format!("\"{}\"", e.as_str()));
            assert_eq!(&serde_json::from_str::<E>(&json).unwrap(), e);
            assert_eq!(&E::parse(e.as_str(), "member").unwrap(), e);
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), E::ALL.len(), "an AWS name twice");
    }

    #[test]
    fn names_round_trip_through_serde_and_parse() {
        round_trip::<KeySpec>();
        round_trip::<KeyUsage>();
        round_trip::<Origin>();
        round_trip::<KeyManager>();
        round_trip::<EncryptionAlgorithm>();
        round_trip::<SigningAlgorithm>();
        round_trip::<MacAlgorithm>();
        round_trip::<DataKeySpec>();
        round_trip::<KeyAgreementAlgorithm>();
        round_trip::<MessageType>();
        round_trip::<DataKeyPairSpec>();
        round_trip::<GrantOperation>();
        round_trip::<WrappingAlgorithm>();
        round_trip::<WrappingKeySpec>();
        round_trip::<ExpirationModel>();
        round_trip::<ImportType>();
        for s in [
            KeyState::Enabled,
            KeyState::Disabled,
            KeyState::PendingDeletion,
            KeyState::PendingImport,
        ] {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<KeyState>(&json).unwrap(), s);
        }
        assert_eq!(
            serde_json::from_str::<KeyState>("\"SomeFutureState\"").unwrap(),
            KeyState::Unknown
        );
        assert_eq!(
            serde_json::to_string(&KeyState::Unknown).unwrap(),
            "\"Unavailable\""
        );
    }

    #[test]
    fn unknown_values_are_validation_errors_in_aws_words() {
        let e = KeyUsage::parse("NOPE", "keyUsage").unwrap_err();
        assert_eq!(e.aws_name(), "ValidationException");
        assert_eq!(
            e.message(),
            "1 validation error detected: Value 'NOPE' at 'keyUsage' failed to satisfy \
             constraint: Member must satisfy enum value set: [SIGN_VERIFY, ENCRYPT_DECRYPT, \
             GENERATE_VERIFY_MAC, KEY_AGREEMENT]"
        );
        assert_eq!(
            DataKeySpec::parse("AES_128", "keySpec").unwrap().bytes(),
            16
        );
    }
}
