//! The operations on the wire: `X-Amz-Target` names, JSON bodies, authorization, and the call
//! into [`Kms`]. Runs where `api::request` puts it: inline on a runtime worker for the fast
//! operations, on the blocking pool for the rest (everything here may touch the token).

use serde::de::DeserializeOwned;
use serde::Serialize;
use zeroize::Zeroizing;

use super::auth::{denied, Authorizer, Principal, Query, Resource};
use super::error::ApiError;
use super::facts::{Asked, Facts, Peer};
use crate::error::Result;
use crate::kms::records::KeyRecord;
use crate::kms::types::{
    AliasRequest, Bytes, CreateGrantRequest, CreateKeyRequest, DecryptRequest,
    DeleteImportedKeyMaterialRequest, DeriveSharedSecretRequest, EnableKeyRotationRequest,
    EncryptRequest, GenerateDataKeyPairRequest, GenerateDataKeyRequest, GenerateMacRequest,
    GetKeyPolicyRequest, GetParametersForImportRequest, ImportKeyMaterialRequest, KeyIdRequest,
    ListGrantsRequest, ListKeyPoliciesRequest, ListKeyRotationsRequest, ListRequest,
    ListResourceTagsRequest, PutKeyPolicyRequest, ReEncryptRequest, ReplicateKeyRequest,
    RetireGrantRequest, RevokeGrantRequest, ScheduleKeyDeletionRequest, SignRequest,
    TagResourceRequest, UntagResourceRequest, UpdateKeyDescriptionRequest,
    UpdatePrimaryRegionRequest, VerifyMacRequest, VerifyRequest,
};
use crate::kms::{AliasName, ArnScope, Forms, KeyId, KeySelector, Kms, PolicyDocument};

/// The `X-Amz-Target` prefix of AWS KMS (its internal service name).
pub const TARGET_PREFIX: &str = "TrentService.";

/// Every operation of the AWS KMS API (as in the API Reference and the SDK models).
pub const AWS_OPERATIONS: [&str; 56] = [
    "CancelKeyDeletion",
    "ConnectCustomKeyStore",
    "CreateAlias",
    "CreateCustomKeyStore",
    "CreateGrant",
    "CreateKey",
    "Decapsulate",
    "Decrypt",
    "DeleteAlias",
    "DeleteCustomKeyStore",
    "DeleteImportedKeyMaterial",
    "DeriveSharedSecret",
    "DescribeCustomKeyStores",
    "DescribeKey",
    "DisableKey",
    "DisableKeyRotation",
    "DisconnectCustomKeyStore",
    "EnableKey",
    "EnableKeyRotation",
    "Encapsulate",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateMac",
    "GenerateRandom",
    "GetKeyLastUsage",
    "GetKeyPolicy",
    "GetKeyRotationStatus",
    "GetParametersForImport",
    "GetPublicKey",
    "ImportKeyMaterial",
    "ListAliases",
    "ListGrants",
    "ListKeyPolicies",
    "ListKeyRotations",
    "ListKeys",
    "ListResourceTags",
    "ListRetirableGrants",
    "PutKeyPolicy",
    "ReEncrypt",
    "ReplicateKey",
    "RetireGrant",
    "RevokeGrant",
    "RotateKeyOnDemand",
    "ScheduleKeyDeletion",
    "Sign",
    "TagResource",
    "UntagResource",
    "UpdateAlias",
    "UpdateCustomKeyStore",
    "UpdateKeyDescription",
    "UpdatePrimaryRegion",
    "Verify",
    "VerifyMac",
];

/// Room for the largest secret-bearing response (4096-byte plaintext as base64 plus fields),
/// so serializing never reallocates and leaves unzeroized copies behind.
const RESPONSE_CAPACITY: usize = 16 * 1024;
/// Parse error messages are cut here (they may quote part of the request).
const MAX_MESSAGE: usize = 300;

macro_rules! ops {
    ($($name:ident),* $(,)?) => {
        /// The operations p11kms serves.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Op { $($name),* }

        impl Op {
            pub const ALL: &'static [Op] = &[$(Op::$name),*];

            /// The operation's place in [`Op::ALL`].
            pub fn index(self) -> usize {
                self as usize
            }

            /// The AWS operation name (`X-Amz-Target` suffix).
            pub fn name(self) -> &'static str {
                match self { $(Op::$name => stringify!($name)),* }
            }

            /// The IAM action, e.g. `kms:Encrypt` (ReEncrypt checks two, see [`execute`]).
            pub fn action(self) -> &'static str {
                match self { $(Op::$name => concat!("kms:", stringify!($name))),* }
            }
        }
    };
}

ops!(
    CreateKey,
    DescribeKey,
    ListKeys,
    EnableKey,
    DisableKey,
    ScheduleKeyDeletion,
    CancelKeyDeletion,
    CreateAlias,
    UpdateAlias,
    DeleteAlias,
    ListAliases,
    Encrypt,
    Decrypt,
    ReEncrypt,
    GenerateDataKey,
    GenerateDataKeyWithoutPlaintext,
    GenerateRandom,
    Sign,
    Verify,
    GetPublicKey,
    GenerateMac,
    VerifyMac,
    DeriveSharedSecret,
    GenerateDataKeyPair,
    GenerateDataKeyPairWithoutPlaintext,
    GetKeyPolicy,
    PutKeyPolicy,
    ListKeyPolicies,
    TagResource,
    UntagResource,
    ListResourceTags,
    UpdateKeyDescription,
    CreateGrant,
    ListGrants,
    ListRetirableGrants,
    RetireGrant,
    RevokeGrant,
    GetParametersForImport,
    ImportKeyMaterial,
    DeleteImportedKeyMaterial,
    ReplicateKey,
    UpdatePrimaryRegion,
    EnableKeyRotation,
    DisableKeyRotation,
    GetKeyRotationStatus,
    RotateKeyOnDemand,
    ListKeyRotations,
);

impl Op {
    /// The operation an `X-Amz-Target` value names. Real AWS operations that p11kms does not
    /// serve are `UnsupportedOperationException`; anything else is unknown.
    pub fn from_target(target: Option<&str>) -> Result<Op, ApiError> {
        let Some(target) = target else {
            return Err(ApiError::unknown_operation(
                "Missing X-Amz-Target header (expected TrentService.<Operation>)",
            ));
        };
        let name = target.strip_prefix(TARGET_PREFIX).ok_or_else(|| {
            ApiError::unknown_operation(format!(
                "Unknown target {}: expected TrentService.<Operation>",
                clip(target)
            ))
        })?;
        if let Some(op) = Op::ALL.iter().find(|op| op.name() == name) {
            return Ok(*op);
        }
        if AWS_OPERATIONS.contains(&name) {
            return Err(ApiError::from(crate::error::KmsError::unsupported(
                format!("{name} is not supported by p11kms yet (see docs/compatibility.md)"),
            )));
        }
        Err(ApiError::unknown_operation(format!(
            "Unknown operation {}",
            clip(name)
        )))
    }
}

/// A successful answer: AWS sends an empty 200 body for operations without output.
pub enum Reply {
    Empty,
    /// The JSON body; zeroized when dropped (it may hold plaintext).
    Json(Zeroizing<Vec<u8>>),
}

/// One verified caller, with what it takes to authorize it.
pub struct Caller<'a> {
    pub kms: &'a Kms,
    pub authorizer: &'a dyn Authorizer,
    pub principal: &'a Principal,
    pub peer: Peer,
    /// The region the request was signed for and the principal's account: where its key ids
    /// and alias names resolve, and where the keys and aliases it creates belong.
    pub scope: ArnScope,
    /// Whether the server serves a region (ReplicateKey's and UpdatePrimaryRegion's target).
    pub serves: &'a (dyn Fn(&str) -> bool + Sync),
    /// The keys this request is authorized on, noted for its log line (and metrics, audit).
    pub keys: &'a super::completion::KeysSeen,
}

/// The alias a `KeyId` member names as written (`kms:RequestAlias`), if it names one.
fn request_alias(key_id: &Option<KeySelector>) -> Option<&str> {
    match key_id {
        Some(KeySelector::Named(s)) => {
            if s.starts_with(AliasName::PREFIX) {
                Some(s.as_str())
            } else if s.starts_with("arn:") {
                s.find(":alias/").map(|i| &s[i + 1..])
            } else {
                None
            }
        }
        _ => None,
    }
}

impl Caller<'_> {
    fn account(&self) -> &str {
        &self.scope.account
    }

    /// Authorizes `action` on `resource` (`key`: the key record behind it, for conditions).
    fn ask(
        &self,
        action: &str,
        resource: Resource<'_>,
        key: Option<&KeyRecord>,
        asked: Asked<'_>,
    ) -> Result<()> {
        // Every key a request is authorized on is noted for its log line (metrics, audit).
        if let Some(r) = key {
            self.keys.note(self.kms.key_arn(r));
        }
        let facts = Facts {
            kms: self.kms,
            principal: self.principal,
            peer: self.peer,
            now: time::OffsetDateTime::now_utc().unix_timestamp(),
            key,
            asked,
        };
        self.authorizer.authorize(
            &Query {
                principal: self.principal,
                action,
                resource,
                facts: &facts,
            },
            self.kms,
        )
    }

    /// An action on no key in particular (identity policy, `Resource: "*"`).
    fn action(&self, action: &str, asked: Asked<'_>) -> Result<()> {
        self.ask(action, Resource::Any, None, asked)
    }

    /// An action on the key `id` (already resolved).
    fn on_key(&self, action: &str, id: KeyId, asked: Asked<'_>) -> Result<KeyRecord> {
        let record = self.kms.key_record(id)?;
        self.ask(action, Resource::Key(&record), Some(&record), asked)?;
        Ok(record)
    }

    /// A `KeyId` member, in the forms the operation takes: resolved in the caller's account
    /// (a key of another account only by its ARN), authorized, and passed on resolved, so an
    /// alias moved meanwhile cannot switch keys under us and nothing parses the member again.
    fn key(
        &self,
        action: &str,
        key_id: &mut Option<KeySelector>,
        forms: Forms,
        asked: Asked<'_>,
    ) -> Result<()> {
        let Some(k) = key_id.as_ref() else {
            // The operation reports the missing member, once the caller may call it at all.
            return self.action(action, asked);
        };
        let (selector, record) = self.kms.resolve_selector_for(k, forms, &self.scope)?;
        let alias = request_alias(key_id).map(str::to_owned);
        let asked = Asked {
            request_alias: alias.as_deref(),
            ..asked
        };
        self.ask(action, Resource::Key(&record), Some(&record), asked)?;
        *key_id = Some(selector);
        Ok(())
    }

    /// The alias itself (CreateAlias, UpdateAlias, DeleteAlias): the principal must be
    /// allowed on the alias ARN, whatever it points at.
    fn alias_name(&self, action: &str, alias: Option<&str>) -> Result<()> {
        let Some(a) = alias else {
            return self.action(action, Asked::default());
        };
        let alias = self.kms.alias_key(Some(&self.scope), AliasName::parse(a)?);
        self.ask(action, Resource::Alias(&alias), None, Asked::default())
    }

    /// The alias itself and the key it points at now (UpdateAlias, DeleteAlias). Returns that
    /// key, so the change can be made only if the alias still points there
    /// ([`Kms::update_alias_expecting`]); `None` when there is nothing to hold it to.
    fn alias_and_target(&self, action: &str, alias: Option<&str>) -> Result<Option<KeyId>> {
        self.alias_name(action, alias)?;
        let Some(a) = alias else { return Ok(None) };
        // A missing alias is the operation's NotFoundException (the name was authorized).
        let Some(current) = self.kms.alias_target_in(Some(&self.scope), a)? else {
            return Ok(None);
        };
        // A target that does not exist (a crash's leftover) is asked about as a key of the
        // service's account under the default policy: administrators may clean it up, a
        // principal limited to other keys may not.
        let record = if current.is_multi_region() {
            // A multi-Region key's alias names the key of its own region.
            self.kms.key_record_in(current, &self.scope.region)
        } else {
            self.kms.key_record(current)
        }
        .unwrap_or_else(|_| KeyRecord::missing(current));
        self.ask(
            action,
            Resource::Key(&record),
            Some(&record),
            Asked::default(),
        )?;
        Ok(Some(current))
    }

    /// The key a ciphertext names; for a ciphertext that names none (raw RSA output), the
    /// `KeyId` member, which the operation then requires.
    fn blob(
        &self,
        action: &str,
        blob: Option<&Bytes>,
        key_id: &mut Option<KeySelector>,
        asked: Asked<'_>,
    ) -> Result<()> {
        let Some(b) = blob else {
            return self.action(action, asked);
        };
        match Kms::blob_key_id(&b.0) {
            // A multi-Region key's ciphertext opens under the key of the caller's region (the
            // same key material in every region that has it).
            Ok(id) if id.is_multi_region() && key_id.is_none() => {
                match self.kms.key_record_in(id, &self.scope.region) {
                    Ok(record) => self.ask(action, Resource::Key(&record), Some(&record), asked)?,
                    // No key of this region: the operation answers NotFoundException.
                    Err(_) => self.action(action, asked)?,
                }
                *key_id = Some(KeySelector::ResolvedIn(id, self.scope.region.clone()));
                Ok(())
            }
            Ok(id) if id.is_multi_region() => self.key(action, key_id, Forms::Any, asked),
            // A blob naming a key that does not exist is the operation's to answer.
            Ok(id) => match self.kms.key_record(id) {
                Ok(record) => self.ask(action, Resource::Key(&record), Some(&record), asked),
                Err(_) => self.action(action, asked),
            },
            // No key to authorize on: the operation answers (a foreign or damaged ciphertext,
            // or an RSA ciphertext without its KeyId), and nothing is opened.
            Err(_) if key_id.is_none() => self.action(action, asked),
            Err(_) => self.key(action, key_id, Forms::Any, asked),
        }
    }

    /// Whether the caller may still call PutKeyPolicy on a key under `policy` (the lockout
    /// safety check). The key itself does not exist yet for CreateKey: asked as for a key of
    /// the caller's account.
    fn may_put_policy(&self, policy: &PolicyDocument, key_arn: &str) -> bool {
        let facts = Facts {
            kms: self.kms,
            principal: self.principal,
            peer: self.peer,
            now: time::OffsetDateTime::now_utc().unix_timestamp(),
            key: None,
            asked: Asked::default(),
        };
        let out = policy.evaluate(&crate::kms::PolicyRequest {
            principal_arn: &self.principal.arn,
            principal_account: self.account(),
            action: "kms:PutKeyPolicy",
            resource: key_arn,
            context: &facts,
        });
        !out.deny
            && (out.allow_direct
                || (out.allow_account
                    && self.authorizer.identity_allows(
                        &Query {
                            principal: self.principal,
                            action: "kms:PutKeyPolicy",
                            resource: Resource::Any,
                            facts: &facts,
                        },
                        self.kms,
                    )))
    }
}

fn ctx(c: &Option<crate::kms::types::ContextMap>) -> Option<&crate::kms::types::ContextMap> {
    c.as_ref()
}

/// A region the server does not serve, as a ReplicateKey or UpdatePrimaryRegion target:
/// `UnsupportedOperationException` (a malformed name is the operation's ValidationException).
fn unserved_region(c: &Caller, region: Option<&str>, member: &str) -> Result<()> {
    match region {
        Some(r) if super::sigv4::is_region_name(r) && !(c.serves)(r) => {
            Err(crate::error::KmsError::unsupported(format!(
                "{member} {r} is not a Region this p11kms server serves"
            )))
        }
        _ => Ok(()),
    }
}

/// Parses the body, authorizes, runs the operation, serializes the answer.
pub fn execute(c: &Caller, op: Op, body: &[u8]) -> Result<Reply, ApiError> {
    // The model's constraints come before any rule of the operation, as at AWS.
    super::validate::check(op.name(), body)?;
    let kms = c.kms;
    let action = op.action();
    let grant_op = Some(op.name());
    match op {
        Op::CreateKey => {
            let mut req: CreateKeyRequest = parse(body)?;
            let tags: Option<Vec<(String, String)>> = req.tags.as_ref().map(|t| {
                t.iter()
                    .map(|t| (t.tag_key.clone(), t.tag_value.clone()))
                    .collect()
            });
            let spec = req
                .key_spec
                .as_deref()
                .or(req.customer_master_key_spec.as_deref())
                .unwrap_or("SYMMETRIC_DEFAULT");
            c.action(
                action,
                Asked {
                    key_spec: Some(spec),
                    key_usage: Some(req.key_usage.as_deref().unwrap_or("ENCRYPT_DECRYPT")),
                    key_origin: Some(req.origin.as_deref().unwrap_or("AWS_KMS")),
                    multi_region: Some(req.multi_region == Some(true)),
                    request_tags: tags.as_deref(),
                    ..Asked::default()
                },
            )?;
            let arn_of_new = c.scope.key_arn(&KeyId::new_random());
            req.scope = Some(c.scope.clone());
            let check = |p: &PolicyDocument| c.may_put_policy(p, &arn_of_new);
            let created = kms.create_key_checked(req, Some(&check));
            if let Ok(r) = &created {
                c.keys.note(r.key_metadata.arn.clone());
            }
            json(created)
        }
        Op::DescribeKey => {
            let mut req: KeyIdRequest = parse(body)?;
            let asked = Asked {
                grant_tokens: req.grant_tokens.as_deref(),
                grant_operation: grant_op,
                ..Asked::default()
            };
            let mut key = req.key_id.take();
            c.key(action, &mut key, Forms::Any, asked)?;
            req.key_id = key;
            json(kms.describe_key(req))
        }
        Op::ListKeys => {
            let mut req: ListRequest = parse(body)?;
            c.action(action, Asked::default())?;
            req.scope = Some(c.scope.clone());
            json(kms.list_keys(req))
        }
        Op::EnableKey | Op::DisableKey => {
            let mut req: KeyIdRequest = parse(body)?;
            let mut key = req.key_id.take();
            c.key(action, &mut key, Forms::KeyOnly, Asked::default())?;
            req.key_id = key;
            if op == Op::EnableKey {
                kms.enable_key(req)?;
            } else {
                kms.disable_key(req)?;
            }
            Ok(Reply::Empty)
        }
        Op::ScheduleKeyDeletion => {
            let mut req: ScheduleKeyDeletionRequest = parse(body)?;
            c.key(action, &mut req.key_id, Forms::KeyOnly, Asked::default())?;
            json(kms.schedule_key_deletion(req))
        }
        Op::CancelKeyDeletion => {
            let mut req: KeyIdRequest = parse(body)?;
            let mut key = req.key_id.take();
            c.key(action, &mut key, Forms::KeyOnly, Asked::default())?;
            req.key_id = key;
            json(kms.cancel_key_deletion(req))
        }
        Op::CreateAlias => {
            let mut req: AliasRequest = parse(body)?;
            // As in AWS: rights on the alias and on the key.
            c.alias_name(action, req.alias_name.as_deref())?;
            c.key(
                action,
                &mut req.target_key_id,
                Forms::KeyOnly,
                Asked::default(),
            )?;
            req.scope = Some(c.scope.clone());
            kms.create_alias(req)?;
            Ok(Reply::Empty)
        }
        Op::UpdateAlias => {
            let mut req: AliasRequest = parse(body)?;
            // As in AWS: rights on the alias, its current target and the new target; the
            // change is made only if the alias still points where it did when authorized.
            for _ in 0..ALIAS_RACE_RETRIES {
                let current = c.alias_and_target(action, req.alias_name.as_deref())?;
                c.key(
                    action,
                    &mut req.target_key_id,
                    Forms::KeyOnly,
                    Asked::default(),
                )?;
                req.scope = Some(c.scope.clone());
                if kms.update_alias_expecting(req.clone(), current)? {
                    return Ok(Reply::Empty);
                }
            }
            Err(alias_kept_moving().into())
        }
        Op::DeleteAlias => {
            let mut req: AliasRequest = parse(body)?;
            req.scope = Some(c.scope.clone());
            for _ in 0..ALIAS_RACE_RETRIES {
                let current = c.alias_and_target(action, req.alias_name.as_deref())?;
                if kms.delete_alias_expecting(req.clone(), current)? {
                    return Ok(Reply::Empty);
                }
            }
            Err(alias_kept_moving().into())
        }
        Op::ListAliases => {
            let mut req: ListRequest = parse(body)?;
            c.action(action, Asked::default())?;
            req.scope = Some(c.scope.clone());
            json(kms.list_aliases(req))
        }
        Op::Encrypt => {
            let mut req: EncryptRequest = parse(body)?;
            let asked = Asked {
                encryption_context: ctx(&req.encryption_context),
                encryption_algorithm: Some(
                    req.encryption_algorithm
                        .as_deref()
                        .unwrap_or("SYMMETRIC_DEFAULT"),
                ),
                grant_tokens: req.grant_tokens.as_deref(),
                grant_operation: grant_op,
                ..Asked::default()
            };
            let mut key = req.key_id.take();
            c.key(action, &mut key, Forms::Any, asked)?;
            req.key_id = key;
            json(kms.encrypt(req))
        }
        Op::Decrypt => {
            let mut req: DecryptRequest = parse(body)?;
            let asked = Asked {
                encryption_context: ctx(&req.encryption_context),
                encryption_algorithm: Some(
                    req.encryption_algorithm
                        .as_deref()
                        .unwrap_or("SYMMETRIC_DEFAULT"),
                ),
                grant_tokens: req.grant_tokens.as_deref(),
                grant_operation: grant_op,
                ..Asked::default()
            };
            let mut key = req.key_id.take();
            c.blob(action, req.ciphertext_blob.as_ref(), &mut key, asked)?;
            req.key_id = key;
            json(kms.decrypt(req))
        }
        Op::ReEncrypt => {
            let mut req: ReEncryptRequest = parse(body)?;
            let tokens = req.grant_tokens.clone();
            let from = Asked {
                encryption_context: ctx(&req.source_encryption_context),
                encryption_algorithm: Some(
                    req.source_encryption_algorithm
                        .as_deref()
                        .unwrap_or("SYMMETRIC_DEFAULT"),
                ),
                grant_tokens: tokens.as_deref(),
                grant_operation: Some("ReEncryptFrom"),
                ..Asked::default()
            };
            let mut source = req.source_key_id.take();
            c.blob(
                "kms:ReEncryptFrom",
                req.ciphertext_blob.as_ref(),
                &mut source,
                from,
            )?;
            req.source_key_id = source;
            let to = Asked {
                encryption_context: ctx(&req.destination_encryption_context),
                encryption_algorithm: Some(
                    req.destination_encryption_algorithm
                        .as_deref()
                        .unwrap_or("SYMMETRIC_DEFAULT"),
                ),
                grant_tokens: tokens.as_deref(),
                grant_operation: Some("ReEncryptTo"),
                ..Asked::default()
            };
            let mut dest = req.destination_key_id.take();
            c.key("kms:ReEncryptTo", &mut dest, Forms::Any, to)?;
            req.destination_key_id = dest;
            json(kms.re_encrypt(req))
        }
        Op::GenerateDataKey | Op::GenerateDataKeyWithoutPlaintext => {
            let mut req: GenerateDataKeyRequest = parse(body)?;
            let asked = Asked {
                encryption_context: ctx(&req.encryption_context),
                grant_tokens: req.grant_tokens.as_deref(),
                grant_operation: grant_op,
                ..Asked::default()
            };
            let mut key = req.key_id.take();
            c.key(action, &mut key, Forms::Any, asked)?;
            req.key_id = key;
            if op == Op::GenerateDataKey {
                json(kms.generate_data_key(req))
            } else {
                json(kms.generate_data_key_without_plaintext(req))
            }
        }
        Op::GenerateRandom => {
            let req = parse(body)?;
            c.action(action, Asked::default())?;
            json(kms.generate_random(req))
        }
        Op::Sign => {
            let mut req: SignRequest = parse(body)?;
            let asked = Asked {
                signing_algorithm: req.signing_algorithm.as_deref(),
                grant_tokens: req.grant_tokens.as_deref(),
                grant_operation: grant_op,
                ..Asked::default()
            };
            let mut key = req.key_id.take();
            c.key(action, &mut key, Forms::Any, asked)?;
            req.key_id = key;
            json(kms.sign(req))
        }
        Op::Verify => {
            let mut req: VerifyRequest = parse(body)?;
            let asked = Asked {
                signing_algorithm: req.signing_algorithm.as_deref(),
                grant_tokens: req.grant_tokens.as_deref(),
                grant_operation: grant_op,
                ..Asked::default()
            };
            let mut key = req.key_id.take();
            c.key(action, &mut key, Forms::Any, asked)?;
            req.key_id = key;
            json(kms.verify(req))
        }
        Op::GetPublicKey => {
            let mut req: KeyIdRequest = parse(body)?;
            let asked = Asked {
                grant_tokens: req.grant_tokens.as_deref(),
                grant_operation: grant_op,
                ..Asked::default()
            };
            let mut key = req.key_id.take();
            c.key(action, &mut key, Forms::Any, asked)?;
            req.key_id = key;
            json(kms.get_public_key(req))
        }
        Op::GenerateMac => {
            let mut req: GenerateMacRequest = parse(body)?;
            let asked = Asked {
                mac_algorithm: req.mac_algorithm.as_deref(),
                grant_tokens: req.grant_tokens.as_deref(),
                grant_operation: grant_op,
                ..Asked::default()
            };
            let mut key = req.key_id.take();
            c.key(action, &mut key, Forms::Any, asked)?;
            req.key_id = key;
            json(kms.generate_mac(req))
        }
        Op::VerifyMac => {
            let mut req: VerifyMacRequest = parse(body)?;
            let asked = Asked {
                mac_algorithm: req.mac_algorithm.as_deref(),
                grant_tokens: req.grant_tokens.as_deref(),
                grant_operation: grant_op,
                ..Asked::default()
            };
            let mut key = req.key_id.take();
            c.key(action, &mut key, Forms::Any, asked)?;
            req.key_id = key;
            json(kms.verify_mac(req))
        }
        Op::DeriveSharedSecret => {
            let mut req: DeriveSharedSecretRequest = parse(body)?;
            let asked = Asked {
                grant_tokens: req.grant_tokens.as_deref(),
                grant_operation: grant_op,
                ..Asked::default()
            };
            let mut key = req.key_id.take();
            c.key(action, &mut key, Forms::Any, asked)?;
            req.key_id = key;
            json(kms.derive_shared_secret(req))
        }
        Op::GenerateDataKeyPair | Op::GenerateDataKeyPairWithoutPlaintext => {
            let mut req: GenerateDataKeyPairRequest = parse(body)?;
            let asked = Asked {
                encryption_context: ctx(&req.encryption_context),
                grant_tokens: req.grant_tokens.as_deref(),
                grant_operation: grant_op,
                ..Asked::default()
            };
            let mut key = req.key_id.take();
            c.key(action, &mut key, Forms::Any, asked)?;
            req.key_id = key;
            if op == Op::GenerateDataKeyPair {
                json(kms.generate_data_key_pair(req))
            } else {
                json(kms.generate_data_key_pair_without_plaintext(req))
            }
        }
        Op::TagResource => {
            let mut req: TagResourceRequest = parse(body)?;
            let tags: Option<Vec<(String, String)>> = req.tags.as_ref().map(|t| {
                t.iter()
                    .map(|t| (t.tag_key.clone(), t.tag_value.clone()))
                    .collect()
            });
            let asked = Asked {
                request_tags: tags.as_deref(),
                ..Asked::default()
            };
            c.key(action, &mut req.key_id, Forms::KeyOnly, asked)?;
            kms.tag_resource(req)?;
            Ok(Reply::Empty)
        }
        Op::UntagResource => {
            let mut req: UntagResourceRequest = parse(body)?;
            let keys: Option<Vec<(String, String)>> = req
                .tag_keys
                .as_ref()
                .map(|k| k.iter().map(|k| (k.clone(), String::new())).collect());
            let asked = Asked {
                tag_keys: keys.as_deref(),
                ..Asked::default()
            };
            c.key(action, &mut req.key_id, Forms::KeyOnly, asked)?;
            kms.untag_resource(req)?;
            Ok(Reply::Empty)
        }
        Op::ListResourceTags => {
            let mut req: ListResourceTagsRequest = parse(body)?;
            c.key(action, &mut req.key_id, Forms::KeyOnly, Asked::default())?;
            json(kms.list_resource_tags(req))
        }
        Op::UpdateKeyDescription => {
            let mut req: UpdateKeyDescriptionRequest = parse(body)?;
            c.key(action, &mut req.key_id, Forms::KeyOnly, Asked::default())?;
            kms.update_key_description(req)?;
            Ok(Reply::Empty)
        }
        Op::GetParametersForImport => {
            let mut req: GetParametersForImportRequest = parse(body)?;
            let (alg, spec) = (
                req.wrapping_algorithm.clone(),
                req.wrapping_key_spec.clone(),
            );
            let asked = Asked {
                wrapping_algorithm: alg.as_deref(),
                wrapping_key_spec: spec.as_deref(),
                ..Asked::default()
            };
            c.key(action, &mut req.key_id, Forms::KeyOnly, asked)?;
            json(kms.get_parameters_for_import(req))
        }
        Op::ImportKeyMaterial => {
            let mut req: ImportKeyMaterialRequest = parse(body)?;
            let model = req
                .expiration_model
                .clone()
                .unwrap_or_else(|| "KEY_MATERIAL_EXPIRES".into());
            let asked = Asked {
                expiration_model: Some(&model),
                ..Asked::default()
            };
            c.key(action, &mut req.key_id, Forms::KeyOnly, asked)?;
            json(kms.import_key_material(req))
        }
        Op::DeleteImportedKeyMaterial => {
            let mut req: DeleteImportedKeyMaterialRequest = parse(body)?;
            c.key(action, &mut req.key_id, Forms::KeyOnly, Asked::default())?;
            json(kms.delete_imported_key_material(req))
        }
        Op::ReplicateKey => {
            // As in AWS: kms:ReplicateKey on the primary key, kms:CreateKey (identity policy)
            // for the replica.
            let mut req: ReplicateKeyRequest = parse(body)?;
            let region = req.replica_region.clone();
            let asked = Asked {
                replica_region: region.as_deref(),
                ..Asked::default()
            };
            c.key(action, &mut req.key_id, Forms::KeyOnly, asked)?;
            c.action("kms:CreateKey", Asked::default())?;
            unserved_region(c, req.replica_region.as_deref(), "ReplicaRegion")?;
            // The replica is in the primary's account.
            let arn = match (&req.key_id, &req.replica_region) {
                (Some(KeySelector::ResolvedIn(id, r)), Some(region)) => {
                    let account = kms.account_of(&kms.key_record_in(*id, r)?);
                    ArnScope::new(region, &account).key_arn(id)
                }
                _ => String::new(),
            };
            let check = |p: &PolicyDocument| c.may_put_policy(p, &arn);
            json(kms.replicate_key(req, Some(&check)))
        }
        Op::UpdatePrimaryRegion => {
            // As in AWS: kms:UpdatePrimaryRegion on the primary key and on the replica that
            // becomes the primary.
            let mut req: UpdatePrimaryRegionRequest = parse(body)?;
            let region = req.primary_region.clone();
            let asked = Asked {
                primary_region: region.as_deref(),
                ..Asked::default()
            };
            c.key(action, &mut req.key_id, Forms::KeyOnly, asked)?;
            unserved_region(c, req.primary_region.as_deref(), "PrimaryRegion")?;
            if let (Some(KeySelector::ResolvedIn(id, _)), Some(region)) =
                (&req.key_id, &req.primary_region)
            {
                if let Ok(replica) = kms.key_record_in(*id, region) {
                    c.ask(action, Resource::Key(&replica), Some(&replica), asked)?;
                }
            }
            kms.update_primary_region(req)?;
            Ok(Reply::Empty)
        }
        Op::EnableKeyRotation => {
            let mut req: EnableKeyRotationRequest = parse(body)?;
            let period = req.rotation_period_in_days.map(|d| d.to_string());
            let asked = Asked {
                rotation_period_in_days: period.as_deref(),
                ..Asked::default()
            };
            c.key(action, &mut req.key_id, Forms::KeyOnly, asked)?;
            kms.enable_key_rotation(req)?;
            Ok(Reply::Empty)
        }
        Op::DisableKeyRotation | Op::GetKeyRotationStatus | Op::RotateKeyOnDemand => {
            let mut req: KeyIdRequest = parse(body)?;
            let mut key = req.key_id.take();
            c.key(action, &mut key, Forms::KeyOnly, Asked::default())?;
            req.key_id = key;
            match op {
                Op::DisableKeyRotation => {
                    kms.disable_key_rotation(req)?;
                    Ok(Reply::Empty)
                }
                Op::GetKeyRotationStatus => json(kms.get_key_rotation_status(req)),
                _ => json(kms.rotate_key_on_demand(req)),
            }
        }
        Op::ListKeyRotations => {
            let mut req: ListKeyRotationsRequest = parse(body)?;
            c.key(action, &mut req.key_id, Forms::KeyOnly, Asked::default())?;
            json(kms.list_key_rotations(req))
        }
        Op::GetKeyPolicy => {
            let mut req: GetKeyPolicyRequest = parse(body)?;
            c.key(action, &mut req.key_id, Forms::KeyOnly, Asked::default())?;
            json(kms.get_key_policy(req))
        }
        Op::ListKeyPolicies => {
            let mut req: ListKeyPoliciesRequest = parse(body)?;
            c.key(action, &mut req.key_id, Forms::KeyOnly, Asked::default())?;
            json(kms.list_key_policies(req))
        }
        Op::PutKeyPolicy => {
            let mut req: PutKeyPolicyRequest = parse(body)?;
            c.key(action, &mut req.key_id, Forms::KeyOnly, Asked::default())?;
            let arn = match &req.key_id {
                Some(KeySelector::Resolved(id)) => kms.key_arn(&kms.key_record(*id)?),
                Some(KeySelector::ResolvedIn(id, region)) => {
                    kms.key_arn(&kms.key_record_in(*id, region)?)
                }
                _ => String::new(),
            };
            let check = |p: &PolicyDocument| c.may_put_policy(p, &arn);
            kms.put_key_policy(req, Some(&check))?;
            Ok(Reply::Empty)
        }
        Op::CreateGrant => {
            let mut req: CreateGrantRequest = parse(body)?;
            let constraint_type = req.constraints.as_ref().and_then(|c| {
                if c.encryption_context_equals.is_some() {
                    Some("EncryptionContextEquals")
                } else if c.encryption_context_subset.is_some() {
                    Some("EncryptionContextSubset")
                } else {
                    None
                }
            });
            let asked = Asked {
                grant_operations: req.operations.as_deref(),
                grantee_principal: req.grantee_principal.as_deref(),
                retiring_principal: req.retiring_principal.as_deref(),
                grant_constraint_type: constraint_type,
                grant_constraints: req.constraints.as_ref(),
                grant_tokens: req.grant_tokens.as_deref(),
                grant_operation: grant_op,
                ..Asked::default()
            };
            let mut key = req.key_id.take();
            c.key(action, &mut key, Forms::KeyOnly, asked)?;
            req.key_id = key;
            // The grant is issued by the caller's account.
            json(kms.create_grant(req, c.account()))
        }
        Op::ListGrants => {
            let mut req: ListGrantsRequest = parse(body)?;
            c.key(action, &mut req.key_id, Forms::KeyOnly, Asked::default())?;
            json(kms.list_grants(req))
        }
        Op::ListRetirableGrants => {
            let req = parse(body)?;
            c.action(action, Asked::default())?;
            json(kms.list_retirable_grants(req))
        }
        Op::RetireGrant => {
            let req: RetireGrantRequest = parse(body)?;
            // As AWS: the grant decides who may retire it (its retiring principal, its
            // grantee if it lists RetireGrant); else the account that created it, with
            // permission for kms:RetireGrant on the key.
            let grant = kms.grant_to_retire(&req)?;
            if !grant.retirable_by(&c.principal.arn) {
                if c.account() != grant.issuing_account {
                    return Err(denied(
                        c.principal,
                        action,
                        Some(&kms.key_arn(&kms.key_record(grant.key_id)?)),
                    )
                    .into());
                }
                c.on_key(action, grant.key_id, Asked::default())?;
            }
            kms.retire_grant(req)?;
            Ok(Reply::Empty)
        }
        Op::RevokeGrant => {
            let mut req: RevokeGrantRequest = parse(body)?;
            c.key(action, &mut req.key_id, Forms::KeyOnly, Asked::default())?;
            kms.revoke_grant(req)?;
            Ok(Reply::Empty)
        }
    }
}

/// How often an alias change is re-authorized when the alias moved meanwhile.
const ALIAS_RACE_RETRIES: usize = 3;

fn alias_kept_moving() -> crate::error::KmsError {
    crate::error::KmsError::invalid_state(
        "The alias was changed by another request while this one was being authorized; retry",
    )
}

/// JSON body → request. An empty body counts as `{}`; anything unparseable, of the wrong
/// type or with bad base64 is AWS's `SerializationException`.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() && path != "." {
            ApiError::serialization(clip(&format!("Cannot deserialize member {path}: {inner}")))
        } else {
            ApiError::serialization(clip(&format!("Malformed request body: {inner}")))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::serialization(clip(&format!("Malformed request body: {e}"))))?;
    Ok(value)
}

fn json<T: Serialize>(r: Result<T>) -> Result<Reply, ApiError> {
    let value = r?;
    let mut buf = Zeroizing::new(Vec::with_capacity(RESPONSE_CAPACITY));
    serde_json::to_writer(&mut *buf, &value)
        .map_err(|e| ApiError::internal(format!("cannot serialize the response: {e}")))?;
    Ok(Reply::Json(buf))
}

/// At most [`MAX_MESSAGE`] bytes of a client-supplied text.
fn clip(s: &str) -> String {
    super::error::clip_to(s, MAX_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::types::{DecryptRequest, GenerateDataKeyRequest};

    #[test]
    fn targets() {
        assert_eq!(
            Op::from_target(Some("TrentService.Encrypt")).unwrap(),
            Op::Encrypt
        );
        for op in Op::ALL {
            assert!(AWS_OPERATIONS.contains(&op.name()), "{op:?}");
            assert_eq!(
                Op::from_target(Some(&format!("{TARGET_PREFIX}{}", op.name()))).unwrap(),
                *op
            );
        }
        assert_eq!(Op::ReEncrypt.action(), "kms:ReEncrypt");
        let unsupported = Op::from_target(Some("TrentService.ConnectCustomKeyStore")).unwrap_err();
        assert_eq!(unsupported.name, "UnsupportedOperationException");
        for bad in [
            None,
            Some("TrentService.Nope"),
            Some("Encrypt"),
            Some("KMS.Encrypt"),
            Some(""),
        ] {
            let e = Op::from_target(bad).unwrap_err();
            assert_eq!(e.name, "UnknownOperationException", "{bad:?}");
            assert_eq!(e.status.as_u16(), 400);
        }
        let mut names = AWS_OPERATIONS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), AWS_OPERATIONS.len());
    }

    #[test]
    fn parse_errors_are_serialization_exceptions() {
        for body in [
            &b"{"[..],
            b"not json",
            b"[]",
            b"null",
            br#"{"NumberOfBytes":"32"}"#,
            br#"{"KeyId":5}"#,
            br#"{"EncryptionContext":{"a":1}}"#,
            br#"{"KeyId":"a"} trailing"#,
            br#"{"KeyId":"a","KeyId":"b"}"#,
        ] {
            let e = parse::<GenerateDataKeyRequest>(body)
                .map(|_| ())
                .unwrap_err();
            assert_eq!(e.name, "SerializationException");
            assert_eq!(e.status.as_u16(), 400);
        }
        let e = parse::<DecryptRequest>(br#"{"CiphertextBlob":"not base64!"}"#)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.name, "SerializationException");
        assert!(e.message.contains("CiphertextBlob"), "{}", e.message);
        let e = parse::<GenerateDataKeyRequest>(br#"{"NumberOfBytes":"32"}"#)
            .map(|_| ())
            .unwrap_err();
        assert!(e.message.contains("NumberOfBytes"), "{}", e.message);
    }

    #[test]
    fn lenient_where_aws_is() {
        let r: GenerateDataKeyRequest = parse(b"").unwrap();
        assert!(r.key_id.is_none());
        let r: GenerateDataKeyRequest =
            parse(br#"{"KeyId":"k","Unknown":[1,{}],"KeySpec":null}"#).unwrap();
        assert_eq!(r.key_id, Some(KeySelector::Named("k".into())));
        assert!(r.key_spec.is_none());
    }

    #[test]
    fn clip_respects_char_boundaries() {
        let s = "é".repeat(400);
        let c = clip(&s);
        assert!(c.len() <= MAX_MESSAGE + 3);
        assert!(c.ends_with("..."));
    }

    mod properties {
        use super::*;
        use crate::kms::types::*;
        use proptest::prelude::*;

        /// Some JSON-shaped text: nested values with the members the requests know.
        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(|f| serde_json::json!(f)),
                "\\PC{0,40}".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6)
                        .prop_map(serde_json::Value::from),
                    proptest::collection::btree_map(
                        prop_oneof![
                            Just("KeyId".to_string()),
                            Just("Plaintext".to_string()),
                            Just("CiphertextBlob".to_string()),
                            Just("EncryptionContext".to_string()),
                            Just("NumberOfBytes".to_string()),
                            Just("KeySpec".to_string()),
                            Just("GrantTokens".to_string()),
                            Just("Tags".to_string()),
                            Just("Limit".to_string()),
                            Just("Operations".to_string()),
                            Just("Constraints".to_string()),
                            Just("GrantToken".to_string()),
                            "\\PC{0,12}",
                        ],
                        inner,
                        0..6,
                    )
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn every_request(body: &[u8]) -> Vec<Result<(), ApiError>> {
            vec![
                parse::<CreateKeyRequest>(body).map(|_| ()),
                parse::<KeyIdRequest>(body).map(|_| ()),
                parse::<ListRequest>(body).map(|_| ()),
                parse::<AliasRequest>(body).map(|_| ()),
                parse::<EncryptRequest>(body).map(|_| ()),
                parse::<DecryptRequest>(body).map(|_| ()),
                parse::<ReEncryptRequest>(body).map(|_| ()),
                parse::<GenerateDataKeyRequest>(body).map(|_| ()),
                parse::<GenerateRandomRequest>(body).map(|_| ()),
                parse::<ScheduleKeyDeletionRequest>(body).map(|_| ()),
                parse::<CreateGrantRequest>(body).map(|_| ()),
                parse::<ListGrantsRequest>(body).map(|_| ()),
                parse::<ListRetirableGrantsRequest>(body).map(|_| ()),
                parse::<RetireGrantRequest>(body).map(|_| ()),
                parse::<RevokeGrantRequest>(body).map(|_| ()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// Any bytes: parsed, or a SerializationException (400); never a panic.
            #[test]
            fn arbitrary_bodies(body in proptest::collection::vec(any::<u8>(), 0..300)) {
                for r in every_request(&body) {
                    if let Err(e) = r {
                        prop_assert!(e.name == "SerializationException", "{}", e.name);
                        prop_assert_eq!(e.status.as_u16(), 400);
                        prop_assert!(e.message.len() <= MAX_MESSAGE + 3);
                    }
                }
            }

            /// JSON of any shape with the members requests know.
            #[test]
            fn arbitrary_json(v in json_value()) {
                let body = serde_json::to_vec(&v).unwrap_or_default();
                for r in every_request(&body) {
                    if let Err(e) = r {
                        prop_assert!(e.name == "SerializationException", "{}", e.name);
                    }
                }
            }

            /// Targets: one of the three answers, never a panic.
            #[test]
            fn arbitrary_targets(t in "\\PC{0,80}") {
                let full = format!("{TARGET_PREFIX}{t}");
                for target in [t.as_str(), full.as_str()] {
                    if let Err(e) = Op::from_target(Some(target)) {
                        prop_assert!(matches!(e.name, "UnknownOperationException" | "UnsupportedOperationException"));
                    }
                }
            }
        }
    }
}
