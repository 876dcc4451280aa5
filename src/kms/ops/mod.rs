//! The operations, as in the AWS KMS API Reference: validation first (a bad request changes
//! nothing), then the state rules, then the token. One file per family: keys, aliases,
//! cryptography, grants; the shared rules are here.

mod aliases;
mod asymmetric;
mod crypto;
mod grants;
mod import;
mod keys;
mod multiregion;
mod policies;
mod rotation;
mod tags;

pub(crate) use policies::PolicyCache;
pub use policies::{LockoutCheck, DEFAULT_POLICY_NAME};
pub use rotation::{DEFAULT_ROTATION_PERIOD_DAYS, MAX_ON_DEMAND_ROTATIONS};

use std::time::{SystemTime, UNIX_EPOCH};

use super::domain::{AwsEnum, EncryptionAlgorithm, KeyState};
use super::keyref::KeySelector;
use super::store::KeyEntry;
use super::types::ContextMap;
use super::{ArnScope, EncryptionContext, Forms, KeyId, KeyRef, Kms};
use crate::error::{KmsError, Result};

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Milliseconds as AWS's timestamps: seconds, as a JSON number.
fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// A missing required member, worded as AWS words it.
fn required<T>(v: Option<T>, member: &str) -> Result<T> {
    super::validation::required(v, member)
}

fn check_grant_tokens(tokens: &Option<Vec<String>>) -> Result<()> {
    if let Some(t) = tokens {
        use super::validation::{error, rule, Shown, Violation};
        let shown = || Shown::Value(format!("[{}]", t.join(", ")));
        if t.len() > 10 {
            return Err(error(&[Violation::new(
                "grantTokens",
                shown(),
                rule::max_length(10),
            )]));
        }
        if t.iter().any(|g| g.is_empty() || g.chars().count() > 8192) {
            return Err(error(&[Violation::new(
                "grantTokens",
                shown(),
                rule::each(&[rule::max_length(8192), rule::min_length(1)]),
            )]));
        }
    }
    Ok(())
}

fn context(c: Option<ContextMap>) -> Result<EncryptionContext> {
    c.map_or_else(|| Ok(EncryptionContext::empty()), EncryptionContext::new)
}

/// The encryption algorithm of a request to a symmetric key: SYMMETRIC_DEFAULT (also when
/// absent); the asymmetric names are a usage error, anything else a validation error.
fn symmetric_algorithm(a: &Option<String>, member: &str) -> Result<EncryptionAlgorithm> {
    let Some(text) = a.as_deref() else {
        return Ok(EncryptionAlgorithm::SymmetricDefault);
    };
    match EncryptionAlgorithm::parse(text, member)? {
        EncryptionAlgorithm::SymmetricDefault => Ok(EncryptionAlgorithm::SymmetricDefault),
        other => Err(KmsError::invalid_key_usage(format!(
            "{member} {other} is not valid for a symmetric key"
        ))),
    }
}

fn check_limit(limit: Option<i64>, default: usize) -> Result<usize> {
    match limit {
        None => Ok(default),
        Some(l) => {
            super::validation::range("limit", l, 1, 1000)?;
            Ok(l as usize)
        }
    }
}

/// `Recipient` asks for the result sealed to a Nitro enclave and no plaintext in the
/// response. Ignoring it like other unknown members would hand out the very plaintext the
/// caller meant to keep off the wire, so it is refused.
fn refuse_recipient(recipient: &Option<serde::de::IgnoredAny>) -> Result<()> {
    match recipient {
        None => Ok(()),
        Some(_) => Err(KmsError::unsupported(
            "Recipient (Nitro Enclaves attestation) is not supported by p11kms",
        )),
    }
}

fn dry_run(flag: Option<bool>) -> Result<()> {
    if flag == Some(true) {
        Err(KmsError::dry_run_succeeded(
            "The request would have succeeded, but the DryRun option is set.",
        ))
    } else {
        Ok(())
    }
}

/// The state rule for using a key in a cryptographic operation.
pub(super) fn check_usable(entry: &KeyEntry, arn: &str) -> Result<()> {
    match entry.record.state {
        // Imported material past its ValidTo is unusable at once, before the upkeep deletes it.
        KeyState::Enabled
            if entry
                .record
                .import
                .as_ref()
                .and_then(|i| i.valid_to_ms)
                .is_some_and(|t| t <= now_ms()) =>
        {
            Err(KmsError::invalid_state(format!(
                "{arn} is pending import: its key material expired."
            )))
        }
        KeyState::Enabled => Ok(()),
        KeyState::Disabled => Err(KmsError::disabled(format!("{arn} is disabled."))),
        KeyState::PendingDeletion | KeyState::PendingReplicaDeletion => Err(
            KmsError::invalid_state(format!("{arn} is pending deletion.")),
        ),
        KeyState::PendingImport => {
            Err(KmsError::invalid_state(format!("{arn} is pending import.")))
        }
        KeyState::Unknown => Err(unavailable_state(arn)),
    }
}

/// The account of a KMS ARN in `region` (`arn:aws:kms:<region>:<account>:...`); `None` for
/// anything else (an ARN of another region then fails to parse as a key reference).
fn split_kms_arn<'a>(s: &'a str, region: &str) -> Option<&'a str> {
    let rest = s.strip_prefix("arn:aws:kms:")?;
    let (r, rest) = rest.split_once(':')?;
    let (account, _) = rest.split_once(':')?;
    (r == region && account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()))
        .then_some(account)
}

/// A key whose record this version cannot fully read (see [`KeyState::Unknown`]).
fn unavailable_state(arn: &str) -> KmsError {
    KmsError::invalid_state(format!(
        "{arn} is unavailable: its record was written by a newer version of p11kms or is \
         damaged; this version neither uses nor changes it"
    ))
}

impl Kms {
    /// Resolves a `KeyId` parameter to the key it names (following an alias).
    pub(super) fn resolve(&self, key: &KeySelector, forms: Forms) -> Result<(KeyId, KeyEntry)> {
        let (named, region) = match key {
            KeySelector::Resolved(id) => (KeyRef::Id(*id), None),
            KeySelector::ResolvedIn(id, r) => (KeyRef::Id(*id), Some(r.as_str())),
            KeySelector::Named(s) => (KeyRef::parse(s, &self.scope, forms)?, None),
        };
        let snap = self.store.read();
        let id = match named {
            KeyRef::Id(id) => id,
            KeyRef::Alias(a) => match snap
                .aliases
                .get(&super::AliasKey::own(a.clone()))
                .and_then(|r| r.target)
            {
                Some(id) => id,
                None => {
                    return Err(KmsError::not_found(format!(
                        "Alias {} is not found.",
                        self.scope.alias_arn(&a)
                    )))
                }
            },
        };
        // A multi-Region key is the one of the region named (the service's own if none).
        let found = if id.is_multi_region() {
            self.entry_in(&snap, &id, region.unwrap_or(&self.scope.region))
        } else {
            snap.keys.get(&id).cloned()
        };
        match found {
            Some(e) => Ok((id, e)),
            None => Err(KmsError::not_found(format!(
                "Key '{}' does not exist",
                ArnScope::new(region.unwrap_or(&self.scope.region), &self.scope.account)
                    .key_arn(&id)
            ))),
        }
    }

    /// The record of the key `id` (NotFoundException if there is none).
    pub fn key_record(&self, id: KeyId) -> Result<super::records::KeyRecord> {
        self.store
            .read()
            .keys
            .get(&id)
            .map(|e| e.record.clone())
            .ok_or_else(|| {
                KmsError::not_found(format!("Key '{}' does not exist", self.scope.key_arn(&id)))
            })
    }

    /// The key a `KeyId` parameter names for a caller in `caller` (its region and account):
    /// a key id or alias names a key of that region and account only; a key or alias ARN
    /// names the key of the ARN's account (in the caller's region) wherever the caller is
    /// (cross-account use, which authorization then decides). A key of another account or
    /// region than named is not found, exactly like a key that does not exist.
    pub fn resolve_key_for(
        &self,
        key: &KeySelector,
        forms: Forms,
        caller: &super::ArnScope,
    ) -> Result<KeyId> {
        let KeySelector::Named(s) = key else {
            return self.resolve(key, forms).map(|(id, _)| id);
        };
        let account = split_kms_arn(s, &caller.region).unwrap_or(&caller.account);
        let here = super::ArnScope::new(&caller.region, account);
        match KeyRef::parse(s, &here, forms)? {
            KeyRef::Id(id) => {
                let snap = self.store.read();
                match self.entry_in(&snap, &id, &here.region) {
                    Some(e) if self.in_scope(&e.record, &here) => Ok(id),
                    _ => Err(KmsError::not_found(format!(
                        "Key '{}' does not exist",
                        here.key_arn(&id)
                    ))),
                }
            }
            KeyRef::Alias(a) => {
                let alias = self.alias_key(Some(&here), a);
                let snap = self.store.read();
                match snap.aliases.get(&alias).and_then(|r| r.target) {
                    Some(id) if self.entry_in(&snap, &id, &here.region).is_some() => Ok(id),
                    Some(id) => Err(KmsError::not_found(format!(
                        "Key '{}' does not exist",
                        here.key_arn(&id)
                    ))),
                    None => Err(KmsError::not_found(format!(
                        "Alias {} is not found.",
                        self.alias_arn(&alias)
                    ))),
                }
            }
        }
    }

    /// [`Kms::resolve_key_for`], as the selector to pass on to the operation (a multi-Region
    /// key's names its region) and the record to authorize on (the key of the caller's region).
    pub fn resolve_selector_for(
        &self,
        key: &KeySelector,
        forms: Forms,
        caller: &super::ArnScope,
    ) -> Result<(KeySelector, super::records::KeyRecord)> {
        let id = self.resolve_key_for(key, forms, caller)?;
        if id.is_multi_region() {
            let record = self.key_record_in(id, &caller.region)?;
            Ok((KeySelector::ResolvedIn(id, caller.region.clone()), record))
        } else {
            Ok((KeySelector::Resolved(id), self.key_record(id)?))
        }
    }

    /// The key a `KeyId` parameter names now, in the forms `forms` allows, without doing
    /// anything with it: callers authorize on the result, then pass it on as
    /// [`KeySelector::Resolved`].
    pub fn resolve_key_id(&self, key: &KeySelector, forms: Forms) -> Result<KeyId> {
        self.resolve(key, forms).map(|(id, _)| id)
    }

    /// The key a ciphertext blob names, from its header alone (nothing is decrypted).
    pub fn blob_key_id(blob: &[u8]) -> Result<KeyId> {
        Ok(super::blob::parse(blob)?.header.key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::types::DecryptRequest;

    #[test]
    fn grant_token_rules() {
        assert!(check_grant_tokens(&Some(vec!["g".into(); 10])).is_ok());
        assert!(check_grant_tokens(&Some(vec!["g".into(); 11])).is_err());
        assert!(check_grant_tokens(&Some(vec![String::new()])).is_err());
    }

    #[test]
    fn algorithm_rules() {
        assert!(symmetric_algorithm(&None, "x").is_ok());
        assert!(symmetric_algorithm(&Some("SYMMETRIC_DEFAULT".into()), "x").is_ok());
        assert_eq!(
            symmetric_algorithm(&Some("RSAES_OAEP_SHA_1".into()), "x")
                .unwrap_err()
                .aws_name(),
            "InvalidKeyUsageException"
        );
        assert_eq!(
            symmetric_algorithm(&Some("ROT13".into()), "x")
                .unwrap_err()
                .aws_name(),
            "ValidationException"
        );
    }

    #[test]
    fn a_recipient_is_refused_whatever_it_holds() {
        let parse = |body: &str| -> DecryptRequest { serde_json::from_str(body).unwrap() };
        assert!(refuse_recipient(&parse(r#"{"KeyId":"k"}"#).recipient).is_ok());
        assert!(refuse_recipient(&parse(r#"{"Recipient":null}"#).recipient).is_ok());
        for body in [
            r#"{"Recipient":{"AttestationDocument":"AAAA","KeyEncryptionAlgorithm":"RSAES_OAEP_SHA_256"}}"#,
            r#"{"Recipient":{}}"#,
            r#"{"Recipient":[1]}"#,
        ] {
            let e = refuse_recipient(&parse(body).recipient).unwrap_err();
            assert_eq!(e.aws_name(), "UnsupportedOperationException", "{body}");
        }
    }
}
