//! The condition keys of one request (`kms:EncryptionContext:<key>`, `aws:SourceIp`, ...),
//! as policies ask for them.
//!
//! [`Facts`] borrows what the request already parsed and computes each key only when a
//! policy condition asks for it: a request whose policies have no conditions costs nothing
//! here. Which keys exist is listed in docs/authorization.md.

use std::borrow::Cow;
use std::net::IpAddr;

use super::auth::Principal;
use crate::kms::domain::GrantOperation;
use crate::kms::records::KeyRecord;
use crate::kms::types::ContextMap;
use crate::kms::{AwsEnum, ConditionContext, EncryptionContext, KeyId, Kms};

/// Where a request came from.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The TCP peer's address (`aws:SourceIp`).
    pub ip: Option<IpAddr>,
    /// Over TLS (`aws:SecureTransport`).
    pub tls: bool,
}

/// What an operation's request says that conditions may ask about (all optional).
#[derive(Debug, Default, Clone, Copy)]
pub struct Asked<'a> {
    /// The encryption context of the request (for ReEncrypt: of the side authorized).
    pub encryption_context: Option<&'a ContextMap>,
    /// `kms:EncryptionAlgorithm`.
    pub encryption_algorithm: Option<&'a str>,
    /// `kms:SigningAlgorithm`.
    pub signing_algorithm: Option<&'a str>,
    /// `kms:MacAlgorithm`.
    pub mac_algorithm: Option<&'a str>,
    /// The `KeyId` member as written, when it named an alias (`kms:RequestAlias`).
    pub request_alias: Option<&'a str>,
    /// CreateKey: the spec, usage and origin asked for (the key's own otherwise).
    pub key_spec: Option<&'a str>,
    /// CreateKey: `kms:KeyUsage`.
    pub key_usage: Option<&'a str>,
    /// CreateKey: `kms:KeyOrigin`.
    pub key_origin: Option<&'a str>,
    /// CreateKey: `kms:MultiRegion` (the key's own otherwise).
    pub multi_region: Option<bool>,
    /// ReplicateKey: `kms:ReplicaRegion`.
    pub replica_region: Option<&'a str>,
    /// UpdatePrimaryRegion: `kms:PrimaryRegion`.
    pub primary_region: Option<&'a str>,
    /// CreateKey / TagResource: the tags of the request.
    pub request_tags: Option<&'a [(String, String)]>,
    /// UntagResource: the tag keys of the request (values unused).
    pub tag_keys: Option<&'a [(String, String)]>,
    /// CreateGrant.
    pub grant_operations: Option<&'a [String]>,
    /// CreateGrant: `kms:GranteePrincipal`.
    pub grantee_principal: Option<&'a str>,
    /// CreateGrant: `kms:RetiringPrincipal`.
    pub retiring_principal: Option<&'a str>,
    /// CreateGrant: `kms:GrantConstraintType`.
    pub grant_constraint_type: Option<&'a str>,
    /// CreateGrant: the new grant's constraints (a grant that allows CreateGrant allows only
    /// equally strict or stricter ones).
    pub grant_constraints: Option<&'a crate::kms::types::GrantConstraints>,
    /// GetParametersForImport: `kms:WrappingAlgorithm`.
    pub wrapping_algorithm: Option<&'a str>,
    /// GetParametersForImport: `kms:WrappingKeySpec`.
    pub wrapping_key_spec: Option<&'a str>,
    /// ImportKeyMaterial: `kms:ExpirationModel`.
    pub expiration_model: Option<&'a str>,
    /// The grant tokens of the request.
    pub grant_tokens: Option<&'a [String]>,
    /// The grant operation this request performs (grants are asked only when set).
    pub grant_operation: Option<&'a str>,
    /// EnableKeyRotation: `kms:RotationPeriodInDays`, when the request names a period.
    pub rotation_period_in_days: Option<&'a str>,
}

/// One request's condition keys, for one resource.
pub struct Facts<'a> {
    /// The service (aliases of the key, the principal's account).
    pub kms: &'a Kms,
    /// Who asks.
    pub principal: &'a Principal,
    /// Where from.
    pub peer: Peer,
    /// Seconds since the Unix epoch (`aws:CurrentTime`, `aws:EpochTime`).
    pub now: i64,
    /// The key the request acts on, if any.
    pub key: Option<&'a KeyRecord>,
    /// What the request says.
    pub asked: Asked<'a>,
}

impl Facts<'_> {
    /// Whether one of the key's grants allows this request's grant operation (never for a
    /// request that performs none).
    pub fn granted(&self, kms: &Kms, key: KeyId, grantee: &str) -> bool {
        let Some(op) = self
            .asked
            .grant_operation
            .and_then(|name| GrantOperation::ALL.iter().find(|o| o.as_str() == name))
        else {
            return false;
        };
        if *op == GrantOperation::CreateGrant {
            return self.granted_create_grant(kms, key, grantee);
        }
        // A context the operation would refuse anyway allows nothing constrained.
        let ctx = self
            .asked
            .encryption_context
            .and_then(|m| EncryptionContext::new(m.clone()).ok());
        kms.grant_allows(
            key,
            grantee,
            *op,
            ctx.as_ref(),
            self.asked.grant_tokens.unwrap_or(&[]),
        )
    }
}

impl Facts<'_> {
    /// CreateGrant through a grant: the new grant's operations and constraint must be within
    /// what the caller's grant allows (values CreateGrant itself would refuse allow nothing).
    fn granted_create_grant(&self, kms: &Kms, key: KeyId, grantee: &str) -> bool {
        let Some(names) = self.asked.grant_operations else {
            return false;
        };
        let Ok(ops) = names
            .iter()
            .map(|n| GrantOperation::parse(n, "operations"))
            .collect::<Result<Vec<_>, _>>()
        else {
            return false;
        };
        let c = self.asked.grant_constraints;
        let Ok(constraint) = crate::kms::grant::check_constraints(
            c.and_then(|c| c.encryption_context_equals.clone()),
            c.and_then(|c| c.encryption_context_subset.clone()),
        ) else {
            return false;
        };
        kms.grant_allows_create_grant(
            key,
            grantee,
            &ops,
            constraint.as_ref(),
            self.asked.grant_tokens.unwrap_or(&[]),
        )
    }
}

fn one(s: &str) -> Option<Vec<Cow<'_, str>>> {
    Some(vec![Cow::Borrowed(s)])
}

fn owned(s: String) -> Option<Vec<Cow<'static, str>>> {
    Some(vec![Cow::Owned(s)])
}

/// `prefix` (lowercase) at the start of `key`, compared without case; the rest as given.
fn suffix<'k>(key: &'k str, prefix: &str) -> Option<&'k str> {
    let head = key.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &key[prefix.len()..])
}

impl ConditionContext for Facts<'_> {
    fn values(&self, key: &str) -> Option<Vec<Cow<'_, str>>> {
        if let Some(k) = suffix(key, "kms:encryptioncontext:") {
            let ctx = self.asked.encryption_context?;
            // Context keys are matched exactly first; AWS compares the key in the condition
            // name without case, so a differently cased one matches too.
            return ctx
                .get(k)
                .or_else(|| {
                    ctx.iter()
                        .find(|(ck, _)| ck.eq_ignore_ascii_case(k))
                        .map(|(_, v)| v)
                })
                .and_then(|v| one(v));
        }
        if let Some(t) = suffix(key, "aws:resourcetag/") {
            let r = self.key?;
            return r
                .tags
                .iter()
                .find(|(tk, _)| tk.eq_ignore_ascii_case(t))
                .and_then(|(_, v)| one(v));
        }
        if let Some(t) = suffix(key, "aws:requesttag/") {
            return self
                .asked
                .request_tags?
                .iter()
                .find(|(tk, _)| tk.eq_ignore_ascii_case(t))
                .and_then(|(_, v)| one(v));
        }
        let key = key.to_ascii_lowercase();
        match key.as_str() {
            "kms:encryptioncontextkeys" => {
                let ctx = self.asked.encryption_context?;
                Some(ctx.keys().map(|k| Cow::Borrowed(k.as_str())).collect())
            }
            "kms:calleraccount" | "aws:principalaccount" => one(self.principal.account(self.kms)),
            "aws:principalarn" | "aws:userid" => one(&self.principal.arn),
            "aws:principaltype" => one(if self.principal.arn.contains(":assumed-role/") {
                "AssumedRole"
            } else if self.principal.arn.ends_with(":root") {
                "Account"
            } else {
                "User"
            }),
            "aws:sourceip" => owned(self.peer.ip?.to_string()),
            "aws:securetransport" => one(if self.peer.tls { "true" } else { "false" }),
            "aws:currenttime" => owned(rfc3339(self.now)),
            "aws:epochtime" => owned(self.now.to_string()),
            "kms:requestalias" => one(self.asked.request_alias?),
            "kms:resourcealiases" => {
                let r = self.key?;
                // A multi-Region key's aliases are those of its region.
                let names: Vec<Cow<'_, str>> = if r.id.is_multi_region() {
                    self.kms.aliases_of_key_in(r.id, self.kms.region_of(r))
                } else {
                    self.kms.aliases_of_key(r.id)
                }
                .into_iter()
                .map(Cow::Owned)
                .collect();
                (!names.is_empty()).then_some(names)
            }
            "kms:keyspec" => match (self.asked.key_spec, self.key) {
                (Some(s), _) => one(s),
                (None, Some(r)) => one(r.spec.as_str()),
                _ => None,
            },
            "kms:keyusage" => match (self.asked.key_usage, self.key) {
                (Some(s), _) => one(s),
                (None, Some(r)) => one(r.usage.as_str()),
                _ => None,
            },
            "kms:keyorigin" => match (self.asked.key_origin, self.key) {
                (Some(s), _) => one(s),
                (None, Some(r)) => one(r.origin().as_str()),
                _ => None,
            },
            "kms:multiregion" => match (self.asked.multi_region, self.key) {
                (Some(m), _) => one(if m { "true" } else { "false" }),
                (None, Some(r)) => one(if r.id.is_multi_region() {
                    "true"
                } else {
                    "false"
                }),
                _ => None,
            },
            "kms:replicaregion" => one(self.asked.replica_region?),
            "kms:primaryregion" => one(self.asked.primary_region?),
            "kms:multiregionkeytype" => {
                let r = self.key.filter(|r| r.id.is_multi_region())?;
                one(if self.kms.is_replica(r) {
                    "REPLICA"
                } else {
                    "PRIMARY"
                })
            }
            "kms:encryptionalgorithm" => one(self.asked.encryption_algorithm?),
            "kms:signingalgorithm" => one(self.asked.signing_algorithm?),
            "kms:macalgorithm" => one(self.asked.mac_algorithm?),
            "kms:wrappingalgorithm" => one(self.asked.wrapping_algorithm?),
            "kms:wrappingkeyspec" => one(self.asked.wrapping_key_spec?),
            "kms:expirationmodel" => one(self.asked.expiration_model?),
            "kms:rotationperiodindays" => one(self.asked.rotation_period_in_days?),
            "kms:grantoperations" => Some(
                self.asked
                    .grant_operations?
                    .iter()
                    .map(|s| Cow::Borrowed(s.as_str()))
                    .collect(),
            ),
            "kms:granteeprincipal" => one(self.asked.grantee_principal?),
            "kms:retiringprincipal" => one(self.asked.retiring_principal?),
            "kms:grantconstrainttype" => one(self.asked.grant_constraint_type?),
            // Grants are made by callers here, never by an AWS service on their behalf.
            "kms:grantisforawsresource" => self.asked.grant_operations.and_then(|_| one("false")),
            "aws:tagkeys" => Some(
                self.asked
                    .request_tags
                    .or(self.asked.tag_keys)?
                    .iter()
                    .map(|(k, _)| Cow::Borrowed(k.as_str()))
                    .collect(),
            ),
            // No AWS service calls p11kms on anyone's behalf: kms:ViaService, kms:CallerType
            // (and the other service keys) are never present.
            _ => None,
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of Unix seconds.
fn rfc3339(secs: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => crate::audit::event_time(t),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn prefixes_ignore_case_and_keep_the_rest() {
        assert_eq!(
            suffix("KMS:EncryptionContext:Purpose", "kms:encryptioncontext:"),
            Some("Purpose")
        );
        assert_eq!(
            suffix("kms:encryptioncontextkeys", "kms:encryptioncontext:"),
            None
        );
        assert_eq!(suffix("aws:Res", "aws:resourcetag/"), None);
    }
}
