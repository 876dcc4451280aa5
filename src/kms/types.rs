//! Request and response shapes of the operations, named and typed as in the AWS KMS API
//! Reference so that the wire layer (and `--json` in the CLI) can (de)serialize them directly.
//!
//! Fields a caller must send are still `Option` here: a missing one is the operation's
//! `ValidationException`, not a parse failure. Binary fields are base64 in JSON, as in AWS.
//!
//! Each type is an AWS operation's request or response, and each field the member of the
//! same name (snake case here, PascalCase on the wire): the API Reference documents them,
//! so they are not documented again one by one.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use super::domain::{
    DataKeyPairSpec, EncryptionAlgorithm, ExpirationModel, KeyAgreementAlgorithm, KeyManager,
    KeySpec, KeyState, KeyUsage, MacAlgorithm, Origin, SigningAlgorithm,
};
pub use super::keyref::{ArnScope, KeySelector};

/// Bytes that travel as base64 in JSON (ciphertext blobs).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

/// Secret bytes (plaintexts, data keys): base64 in JSON, zeroized on drop, never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(pub Zeroizing<Vec<u8>>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({})", B64.encode(&self.0))
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

impl SecretBytes {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

fn ser_b64<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&Zeroizing::new(B64.encode(bytes)))
}

fn de_b64<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<Vec<u8>>, D::Error> {
    let text = Zeroizing::new(String::deserialize(d)?);
    B64.decode(text.as_bytes())
        .map(Zeroizing::new)
        .map_err(|_| serde::de::Error::custom("invalid base64"))
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_b64(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_b64(d).map(|z| Bytes(z.to_vec()))
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_b64(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_b64(d).map(SecretBytes)
    }
}

pub type ContextMap = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub tag_key: String,
    pub tag_value: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateKeyRequest {
    pub description: Option<String>,
    pub key_usage: Option<String>,
    pub key_spec: Option<String>,
    pub customer_master_key_spec: Option<String>,
    pub origin: Option<String>,
    pub policy: Option<String>,
    pub tags: Option<Vec<Tag>>,
    pub multi_region: Option<bool>,
    pub bypass_policy_lockout_safety_check: Option<bool>,
    pub custom_key_store_id: Option<String>,
    pub xks_key_id: Option<String>,
    /// The region and account the new key belongs to: the caller's, set by the layer that
    /// knows the caller (never read from the request body); `None`: the service's own.
    #[serde(skip)]
    pub scope: Option<ArnScope>,
    /// A fixed key id (seeding, `p11kms seed`; never read from the request body); `None`: a
    /// random one. A key with this id already → `AlreadyExistsException`.
    #[serde(skip)]
    pub key_id: Option<super::KeyId>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadata {
    #[serde(rename = "AWSAccountId")]
    pub aws_account_id: String,
    pub key_id: String,
    pub arn: String,
    pub creation_date: f64,
    pub enabled: bool,
    pub description: String,
    pub key_usage: KeyUsage,
    pub key_state: KeyState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_date: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_deletion_window_in_days: Option<u32>,
    pub origin: Origin,
    /// Keys with imported material that is in the token now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_model: Option<ExpirationModel>,
    /// The same, when that material expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_to: Option<f64>,
    pub key_manager: KeyManager,
    /// The deprecated mirror of `KeySpec`, still sent by AWS; absent for the specs its
    /// enum does not have (`kms::specs::customer_master_key_spec`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_master_key_spec: Option<KeySpec>,
    pub key_spec: KeySpec,
    /// Encryption keys only (absent on the wire otherwise, as AWS omits it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_algorithms: Option<Vec<EncryptionAlgorithm>>,
    /// Asymmetric signing keys only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_algorithms: Option<Vec<SigningAlgorithm>>,
    /// HMAC keys only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_algorithms: Option<Vec<MacAlgorithm>>,
    /// Key agreement keys only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_agreement_algorithms: Option<Vec<KeyAgreementAlgorithm>>,
    pub multi_region: bool,
    /// Multi-Region keys only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multi_region_configuration: Option<MultiRegionConfiguration>,
    /// Symmetric encryption keys with key material: the current material's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_key_material_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadataResponse {
    pub key_metadata: KeyMetadata,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyIdRequest {
    pub key_id: Option<KeySelector>,
    pub grant_tokens: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListRequest {
    pub limit: Option<i64>,
    pub marker: Option<String>,
    /// ListAliases only: restrict to one key.
    pub key_id: Option<KeySelector>,
    /// The caller's region and account, set by the layer that knows the caller (never read
    /// from the request body); `None`: the service's own.
    #[serde(skip)]
    pub scope: Option<ArnScope>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyListEntry {
    pub key_id: String,
    pub key_arn: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListKeysResponse {
    pub keys: Vec<KeyListEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
    pub truncated: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasListEntry {
    pub alias_name: String,
    pub alias_arn: String,
    pub target_key_id: String,
    pub creation_date: f64,
    pub last_updated_date: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListAliasesResponse {
    pub aliases: Vec<AliasListEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
    pub truncated: bool,
}

impl ListAliasesResponse {
    /// No aliases.
    pub fn empty() -> ListAliasesResponse {
        ListAliasesResponse {
            aliases: Vec::new(),
            next_marker: None,
            truncated: false,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasRequest {
    pub alias_name: Option<String>,
    pub target_key_id: Option<KeySelector>,
    /// The caller's region and account (see [`ListRequest::scope`]).
    #[serde(skip)]
    pub scope: Option<ArnScope>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScheduleKeyDeletionRequest {
    pub key_id: Option<KeySelector>,
    pub pending_window_in_days: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScheduleKeyDeletionResponse {
    pub key_id: String,
    pub deletion_date: f64,
    pub key_state: KeyState,
    pub pending_window_in_days: u32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyIdResponse {
    pub key_id: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EncryptRequest {
    pub key_id: Option<KeySelector>,
    pub plaintext: Option<SecretBytes>,
    pub encryption_context: Option<ContextMap>,
    pub grant_tokens: Option<Vec<String>>,
    pub encryption_algorithm: Option<String>,
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EncryptResponse {
    pub ciphertext_blob: Bytes,
    pub key_id: String,
    pub encryption_algorithm: EncryptionAlgorithm,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DecryptRequest {
    pub ciphertext_blob: Option<Bytes>,
    pub encryption_context: Option<ContextMap>,
    pub grant_tokens: Option<Vec<String>>,
    pub key_id: Option<KeySelector>,
    pub encryption_algorithm: Option<String>,
    pub dry_run: Option<bool>,
    /// `Recipient` (Nitro Enclaves attestation): any value is refused (see
    /// `refuse_recipient` in the operations), so it is kept only as present or absent.
    pub recipient: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DecryptResponse {
    pub key_id: String,
    pub plaintext: SecretBytes,
    pub encryption_algorithm: EncryptionAlgorithm,
    /// Symmetric keys: the key material that opened the ciphertext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_material_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReEncryptRequest {
    pub ciphertext_blob: Option<Bytes>,
    pub source_encryption_context: Option<ContextMap>,
    pub source_key_id: Option<KeySelector>,
    pub destination_key_id: Option<KeySelector>,
    pub destination_encryption_context: Option<ContextMap>,
    pub source_encryption_algorithm: Option<String>,
    pub destination_encryption_algorithm: Option<String>,
    pub grant_tokens: Option<Vec<String>>,
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReEncryptResponse {
    pub ciphertext_blob: Bytes,
    pub source_key_id: String,
    pub key_id: String,
    pub source_encryption_algorithm: EncryptionAlgorithm,
    pub destination_encryption_algorithm: EncryptionAlgorithm,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_key_material_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_key_material_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateDataKeyRequest {
    pub key_id: Option<KeySelector>,
    pub encryption_context: Option<ContextMap>,
    pub number_of_bytes: Option<i64>,
    pub key_spec: Option<String>,
    pub grant_tokens: Option<Vec<String>>,
    pub dry_run: Option<bool>,
    /// `Recipient` (Nitro Enclaves attestation): any value is refused (see
    /// `refuse_recipient` in the operations), so it is kept only as present or absent.
    pub recipient: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateDataKeyResponse {
    pub ciphertext_blob: Bytes,
    pub plaintext: SecretBytes,
    pub key_id: String,
    pub key_material_id: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateDataKeyWithoutPlaintextResponse {
    pub ciphertext_blob: Bytes,
    pub key_id: String,
    pub key_material_id: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateRandomRequest {
    pub number_of_bytes: Option<i64>,
    pub custom_key_store_id: Option<String>,
    /// `Recipient` (Nitro Enclaves attestation): any value is refused (see
    /// `refuse_recipient` in the operations), so it is kept only as present or absent.
    pub recipient: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateRandomResponse {
    pub plaintext: SecretBytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_fields_round_trip() {
        let r: DecryptRequest =
            serde_json::from_str(r#"{"CiphertextBlob":"AQID","KeyId":"k"}"#).unwrap();
        assert_eq!(r.ciphertext_blob.unwrap().0, vec![1, 2, 3]);
        assert!(serde_json::from_str::<DecryptRequest>(r#"{"CiphertextBlob":"!!"}"#).is_err());
        let out = serde_json::to_string(&GenerateRandomResponse {
            plaintext: SecretBytes(Zeroizing::new(vec![1, 2, 3])),
        })
        .unwrap();
        assert_eq!(out, r#"{"Plaintext":"AQID"}"#);
    }

    #[test]
    fn secrets_are_not_printed() {
        let s = SecretBytes(Zeroizing::new(vec![42; 32]));
        assert!(!format!("{s:?}").contains("42"));
    }

    #[test]
    fn metadata_names_match_aws() {
        let m = KeyMetadata {
            aws_account_id: "111122223333".into(),
            key_id: "k".into(),
            arn: "a".into(),
            creation_date: 1.5,
            enabled: true,
            description: String::new(),
            key_usage: KeyUsage::EncryptDecrypt,
            key_state: KeyState::Enabled,
            deletion_date: None,
            pending_deletion_window_in_days: None,
            origin: Origin::AwsKms,
            expiration_model: None,
            valid_to: None,
            key_manager: KeyManager::Customer,
            customer_master_key_spec: Some(KeySpec::SymmetricDefault),
            key_spec: KeySpec::SymmetricDefault,
            encryption_algorithms: Some(vec![EncryptionAlgorithm::SymmetricDefault]),
            signing_algorithms: None,
            mac_algorithms: None,
            key_agreement_algorithms: None,
            multi_region: false,
            multi_region_configuration: None,
            current_key_material_id: None,
        };
        let v = serde_json::to_value(&m).unwrap();
        for k in [
            "AWSAccountId",
            "KeyId",
            "Arn",
            "CreationDate",
            "KeyState",
            "KeySpec",
            "CustomerMasterKeySpec",
            "EncryptionAlgorithms",
            "MultiRegion",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        // The enums travel under their AWS names.
        assert_eq!(v["KeyState"], "Enabled");
        assert_eq!(v["KeyUsage"], "ENCRYPT_DECRYPT");
        assert_eq!(v["Origin"], "AWS_KMS");
        assert_eq!(v["KeyManager"], "CUSTOMER");
        assert_eq!(v["EncryptionAlgorithms"][0], "SYMMETRIC_DEFAULT");
        assert!(v.get("DeletionDate").is_none());
        assert!(v.get("ExpirationModel").is_none() && v.get("ValidTo").is_none());
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SignRequest {
    pub key_id: Option<KeySelector>,
    pub message: Option<SecretBytes>,
    pub message_type: Option<String>,
    pub grant_tokens: Option<Vec<String>>,
    pub signing_algorithm: Option<String>,
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SignResponse {
    pub key_id: String,
    pub signature: Bytes,
    pub signing_algorithm: SigningAlgorithm,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VerifyRequest {
    pub key_id: Option<KeySelector>,
    pub message: Option<SecretBytes>,
    pub message_type: Option<String>,
    pub signature: Option<Bytes>,
    pub signing_algorithm: Option<String>,
    pub grant_tokens: Option<Vec<String>>,
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VerifyResponse {
    pub key_id: String,
    pub signature_valid: bool,
    pub signing_algorithm: SigningAlgorithm,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetPublicKeyResponse {
    pub key_id: String,
    pub public_key: Bytes,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_master_key_spec: Option<KeySpec>,
    pub key_spec: KeySpec,
    pub key_usage: KeyUsage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_algorithms: Option<Vec<EncryptionAlgorithm>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_algorithms: Option<Vec<SigningAlgorithm>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_agreement_algorithms: Option<Vec<KeyAgreementAlgorithm>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateMacRequest {
    pub key_id: Option<KeySelector>,
    pub message: Option<SecretBytes>,
    pub mac_algorithm: Option<String>,
    pub grant_tokens: Option<Vec<String>>,
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateMacResponse {
    pub mac: Bytes,
    pub mac_algorithm: MacAlgorithm,
    pub key_id: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VerifyMacRequest {
    pub key_id: Option<KeySelector>,
    pub message: Option<SecretBytes>,
    pub mac_algorithm: Option<String>,
    pub mac: Option<Bytes>,
    pub grant_tokens: Option<Vec<String>>,
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VerifyMacResponse {
    pub key_id: String,
    pub mac_valid: bool,
    pub mac_algorithm: MacAlgorithm,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeriveSharedSecretRequest {
    pub key_id: Option<KeySelector>,
    pub key_agreement_algorithm: Option<String>,
    pub public_key: Option<Bytes>,
    pub grant_tokens: Option<Vec<String>>,
    pub dry_run: Option<bool>,
    /// `Recipient` (Nitro Enclaves attestation): refused, as for Decrypt.
    pub recipient: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeriveSharedSecretResponse {
    pub key_id: String,
    pub shared_secret: SecretBytes,
    pub key_agreement_algorithm: KeyAgreementAlgorithm,
    pub key_origin: Origin,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateDataKeyPairRequest {
    pub key_id: Option<KeySelector>,
    pub key_pair_spec: Option<String>,
    pub encryption_context: Option<ContextMap>,
    pub grant_tokens: Option<Vec<String>>,
    pub dry_run: Option<bool>,
    /// `Recipient` (Nitro Enclaves attestation): refused, as for Decrypt.
    pub recipient: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateDataKeyPairResponse {
    pub private_key_ciphertext_blob: Bytes,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key_plaintext: Option<SecretBytes>,
    pub public_key: Bytes,
    pub key_id: String,
    pub key_pair_spec: DataKeyPairSpec,
    pub key_material_id: String,
}

/// GetKeyPolicy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetKeyPolicyRequest {
    pub key_id: Option<KeySelector>,
    /// Only `default` exists (and is assumed when absent).
    pub policy_name: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetKeyPolicyResponse {
    pub policy: String,
    pub policy_name: String,
}

/// PutKeyPolicy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutKeyPolicyRequest {
    pub key_id: Option<KeySelector>,
    pub policy_name: Option<String>,
    pub policy: Option<String>,
    pub bypass_policy_lockout_safety_check: Option<bool>,
}

/// ListKeyPolicies.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListKeyPoliciesRequest {
    pub key_id: Option<KeySelector>,
    pub limit: Option<i64>,
    pub marker: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListKeyPoliciesResponse {
    pub policy_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
    pub truncated: bool,
}

/// TagResource.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TagResourceRequest {
    pub key_id: Option<KeySelector>,
    pub tags: Option<Vec<Tag>>,
}

/// UntagResource.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UntagResourceRequest {
    pub key_id: Option<KeySelector>,
    pub tag_keys: Option<Vec<String>>,
}

/// ListResourceTags.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListResourceTagsRequest {
    pub key_id: Option<KeySelector>,
    pub limit: Option<i64>,
    pub marker: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListResourceTagsResponse {
    pub tags: Vec<Tag>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
    pub truncated: bool,
}

/// UpdateKeyDescription.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateKeyDescriptionRequest {
    pub key_id: Option<KeySelector>,
    pub description: Option<String>,
}

/// `GrantConstraints`: at most one of the two encryption context members is kept (see
/// `kms::grant::check_constraints`). `SourceArn` (AWS service principals) is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GrantConstraints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context_subset: Option<ContextMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_context_equals: Option<ContextMap>,
    #[serde(default, skip_serializing)]
    pub source_arn: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateGrantRequest {
    pub key_id: Option<KeySelector>,
    pub grantee_principal: Option<String>,
    pub retiring_principal: Option<String>,
    pub operations: Option<Vec<String>>,
    pub constraints: Option<GrantConstraints>,
    pub grant_tokens: Option<Vec<String>>,
    pub name: Option<String>,
    pub dry_run: Option<bool>,
    /// AWS service principals: refused (there are no AWS services here).
    pub grantee_service_principal: Option<String>,
    pub retiring_service_principal: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateGrantResponse {
    pub grant_token: String,
    pub grant_id: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListGrantsRequest {
    pub limit: Option<i64>,
    pub marker: Option<String>,
    pub key_id: Option<KeySelector>,
    pub grant_id: Option<String>,
    pub grantee_principal: Option<String>,
    pub grantee_service_principal: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListRetirableGrantsRequest {
    pub limit: Option<i64>,
    pub marker: Option<String>,
    pub retiring_principal: Option<String>,
    pub retiring_service_principal: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GrantListEntry {
    /// The key ARN.
    pub key_id: String,
    pub grant_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub creation_date: f64,
    pub grantee_principal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retiring_principal: Option<String>,
    /// `arn:aws:iam::<account>:root` of the account that created the grant.
    pub issuing_account: String,
    pub operations: Vec<super::domain::GrantOperation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub constraints: Option<GrantConstraints>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListGrantsResponse {
    pub grants: Vec<GrantListEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
    pub truncated: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RetireGrantRequest {
    pub grant_token: Option<String>,
    pub key_id: Option<KeySelector>,
    pub grant_id: Option<String>,
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RevokeGrantRequest {
    pub key_id: Option<KeySelector>,
    pub grant_id: Option<String>,
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetParametersForImportRequest {
    pub key_id: Option<KeySelector>,
    pub wrapping_algorithm: Option<String>,
    pub wrapping_key_spec: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetParametersForImportResponse {
    pub key_id: String,
    pub import_token: Bytes,
    pub public_key: Bytes,
    pub parameters_valid_to: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImportKeyMaterialRequest {
    pub key_id: Option<KeySelector>,
    pub import_token: Option<Bytes>,
    pub encrypted_key_material: Option<Bytes>,
    /// Seconds since the Unix epoch (a JSON number, as AWS's JSON protocol sends timestamps).
    pub valid_to: Option<f64>,
    pub expiration_model: Option<String>,
    pub import_type: Option<String>,
    pub key_material_id: Option<String>,
    pub key_material_description: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImportKeyMaterialResponse {
    pub key_id: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteImportedKeyMaterialRequest {
    pub key_id: Option<KeySelector>,
    pub key_material_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteImportedKeyMaterialResponse {
    pub key_id: String,
}

/// `MultiRegionConfiguration` of a multi-Region key's metadata.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MultiRegionConfiguration {
    /// `PRIMARY` or `REPLICA`.
    pub multi_region_key_type: &'static str,
    pub primary_key: MultiRegionKey,
    pub replica_keys: Vec<MultiRegionKey>,
}

/// A primary or replica key of a multi-Region key: its ARN and region.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MultiRegionKey {
    pub arn: String,
    pub region: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReplicateKeyRequest {
    pub key_id: Option<KeySelector>,
    pub replica_region: Option<String>,
    pub policy: Option<String>,
    pub bypass_policy_lockout_safety_check: Option<bool>,
    pub description: Option<String>,
    pub tags: Option<Vec<Tag>>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReplicateKeyResponse {
    pub replica_key_metadata: KeyMetadata,
    pub replica_policy: String,
    pub replica_tags: Vec<Tag>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdatePrimaryRegionRequest {
    pub key_id: Option<KeySelector>,
    pub primary_region: Option<String>,
}

/// EnableKeyRotation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EnableKeyRotationRequest {
    pub key_id: Option<KeySelector>,
    pub rotation_period_in_days: Option<i64>,
}

/// GetKeyRotationStatus.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetKeyRotationStatusResponse {
    pub key_rotation_enabled: bool,
    /// The key ARN.
    pub key_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_period_in_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_rotation_date: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_demand_rotation_start_date: Option<f64>,
}

/// ListKeyRotations.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListKeyRotationsRequest {
    pub key_id: Option<KeySelector>,
    pub include_key_material: Option<String>,
    pub limit: Option<i64>,
    pub marker: Option<String>,
}

/// One key material of a key (ListKeyRotations).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RotationsListEntry {
    /// The key ARN.
    pub key_id: String,
    pub key_material_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub import_state: Option<super::domain::ImportState>,
    pub key_material_state: super::domain::KeyMaterialState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_model: Option<ExpirationModel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_to: Option<f64>,
    /// Absent for the first key material.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_date: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_type: Option<super::domain::RotationType>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListKeyRotationsResponse {
    pub rotations: Vec<RotationsListEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
    pub truncated: bool,
}
