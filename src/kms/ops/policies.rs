//! Key policies: GetKeyPolicy, PutKeyPolicy, ListKeyPolicies, and the compiled policy of
//! each key that authorization evaluates.
//!
//! A key's policy is kept as text in its record (`None`: AWS's default key policy for the
//! key's account, which delegates to identity policies). It is parsed and compiled once per
//! change and cached here by key id; a request only compares the cached text with the
//! record's (a `memcmp`) and evaluates.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::super::policy::{PolicyDocument, PolicyKind};
use super::super::records::KeyRecord;
use super::super::store::{Change, KeyEntry};
use super::super::types::{
    GetKeyPolicyRequest, GetKeyPolicyResponse, ListKeyPoliciesRequest, ListKeyPoliciesResponse,
    PutKeyPolicyRequest,
};
use super::super::{Forms, KeyId, Kms};
use super::{check_limit, required, unavailable_state};
use crate::error::{KmsError, Result};
use crate::sync;

/// The one policy name AWS KMS has.
pub const DEFAULT_POLICY_NAME: &str = "default";
/// The cache is cleared when it grows past this many keys (keys deleted long ago).
const MAX_CACHED: usize = 100_000;

/// Asked of a new key policy before it is stored, unless the request sets
/// `BypassPolicyLockoutSafetyCheck`: may the principal writing it still call PutKeyPolicy
/// under it? (AWS's lockout safety check; the caller's identity is the wire layer's.)
pub type LockoutCheck<'a> = &'a (dyn Fn(&PolicyDocument) -> bool + Sync);

/// AWS's message when the safety check fails.
pub(crate) const LOCKOUT_MESSAGE: &str =
    "The new key policy will not allow you to update the key policy in the future.";

/// Compiled key policies by key id, and the default policy per account.
#[derive(Default)]
pub(crate) struct PolicyCache {
    by_key: RwLock<HashMap<KeyId, Arc<PolicyDocument>>>,
    defaults: RwLock<HashMap<String, Arc<PolicyDocument>>>,
}

impl PolicyCache {
    fn default_for(&self, account: &str) -> Arc<PolicyDocument> {
        if let Some(p) = sync::read(&self.defaults).get(account) {
            return Arc::clone(p);
        }
        let p = Arc::new(PolicyDocument::default_key_policy(account));
        sync::write(&self.defaults).insert(account.to_owned(), Arc::clone(&p));
        p
    }

    fn compiled(&self, id: KeyId, text: &str) -> Result<Arc<PolicyDocument>> {
        if let Some(p) = sync::read(&self.by_key).get(&id) {
            if p.text() == text {
                return Ok(Arc::clone(p));
            }
        }
        // A stored policy that no longer parses (damage, or a newer writer's language) is
        // refused by authorization: fail closed, never fall back to the default.
        let p = Arc::new(PolicyDocument::parse(text, PolicyKind::Key).map_err(|e| {
            KmsError::access_denied(format!(
                "the key policy of key {id} cannot be read ({e}); every request on the key is \
                 denied until a readable policy is put"
            ))
        })?);
        let mut map = sync::write(&self.by_key);
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(id, Arc::clone(&p));
        Ok(p)
    }
}

/// A new policy's text, parsed: `MalformedPolicyDocumentException` with the reason.
pub(crate) fn parse_key_policy(text: &str) -> Result<PolicyDocument> {
    if text.is_empty() || text.len() > PolicyDocument::MAX_BYTES {
        return Err(KmsError::validation(format!(
            "Policy must be between 1 and {} characters long",
            PolicyDocument::MAX_BYTES
        )));
    }
    PolicyDocument::parse(text, PolicyKind::Key)
        .map_err(|e| KmsError::malformed_policy(e.to_string()))
}

/// A parsed new policy that passed the safety check (unless bypassed).
pub(crate) fn checked_key_policy(
    text: &str,
    bypass: bool,
    lockout: Option<LockoutCheck<'_>>,
) -> Result<PolicyDocument> {
    let doc = parse_key_policy(text)?;
    if !bypass && lockout.is_some_and(|may_still_put| !may_still_put(&doc)) {
        return Err(KmsError::malformed_policy(LOCKOUT_MESSAGE));
    }
    Ok(doc)
}

fn check_policy_name(name: &Option<String>) -> Result<()> {
    let Some(n) = name else { return Ok(()) };
    if n.is_empty() || n.len() > 128 || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(KmsError::validation(
            "PolicyName must be 1 to 128 word characters ([\\w]+)",
        ));
    }
    if n != DEFAULT_POLICY_NAME {
        return Err(KmsError::not_found(format!(
            "No such policy exists: {n} (the only key policy name is {DEFAULT_POLICY_NAME})"
        )));
    }
    Ok(())
}

impl Kms {
    /// The compiled policy that governs a key now.
    pub fn key_policy(&self, record: &KeyRecord) -> Result<Arc<PolicyDocument>> {
        match &record.policy {
            None => Ok(self.policies.default_for(&self.account_of(record))),
            Some(text) => self.policies.compiled(record.id, text),
        }
    }

    /// The compiled policy of the key `id` (NotFoundException if there is no such key).
    pub fn key_policy_of(&self, id: KeyId) -> Result<Arc<PolicyDocument>> {
        let entry = self.store.key(&id).ok_or_else(|| {
            KmsError::not_found(format!("Key '{}' does not exist", self.scope.key_arn(&id)))
        })?;
        self.key_policy(&entry.record)
    }

    /// GetKeyPolicy: the key's policy text (AWS's default when none was put).
    pub fn get_key_policy(&self, req: GetKeyPolicyRequest) -> Result<GetKeyPolicyResponse> {
        check_policy_name(&req.policy_name)?;
        let (_, entry) = self.resolve(required(req.key_id.as_ref(), "keyId")?, Forms::KeyOnly)?;
        let policy = match &entry.record.policy {
            Some(p) => p.clone(),
            None => self.key_policy(&entry.record)?.text().to_owned(),
        };
        Ok(GetKeyPolicyResponse {
            policy,
            policy_name: DEFAULT_POLICY_NAME.to_owned(),
        })
    }

    /// ListKeyPolicies: always `["default"]` (a key has one policy).
    pub fn list_key_policies(
        &self,
        req: ListKeyPoliciesRequest,
    ) -> Result<ListKeyPoliciesResponse> {
        check_limit(req.limit, 1000)?;
        self.resolve(required(req.key_id.as_ref(), "keyId")?, Forms::KeyOnly)?;
        if let Some(m) = &req.marker {
            return Err(KmsError::invalid_marker(format!("Invalid marker {m}")));
        }
        Ok(ListKeyPoliciesResponse {
            policy_names: vec![DEFAULT_POLICY_NAME.to_owned()],
            next_marker: None,
            truncated: false,
        })
    }

    /// PutKeyPolicy: parses and checks the new policy (`lockout`: the safety check for the
    /// writer, `None` for an operator without an identity, e.g. the CLI), then writes the
    /// key's record with it. Allowed in every key state but one this version cannot read.
    pub fn put_key_policy(
        &self,
        req: PutKeyPolicyRequest,
        lockout: Option<LockoutCheck<'_>>,
    ) -> Result<()> {
        check_policy_name(&req.policy_name)?;
        let text = required(req.policy.as_ref(), "policy")?;
        let (_, of) = self.resolve(required(req.key_id.as_ref(), "keyId")?, Forms::KeyOnly)?;
        checked_key_policy(
            text,
            req.bypass_policy_lockout_safety_check == Some(true),
            lockout,
        )?;
        self.update_entry(
            &of,
            |entry: &KeyEntry| {
                if entry.record.state == super::super::KeyState::Unknown {
                    return Err(unavailable_state(&self.key_arn(&entry.record)));
                }
                if entry.record.policy.as_deref() == Some(text.as_str()) {
                    return Ok(Change::Keep);
                }
                let mut record = entry.record.clone();
                record.policy = Some(text.clone());
                Ok(Change::Write(record))
            },
            |_| Ok(()),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names() {
        assert!(check_policy_name(&None).is_ok());
        assert!(check_policy_name(&Some("default".into())).is_ok());
        assert_eq!(
            check_policy_name(&Some("other".into()))
                .unwrap_err()
                .aws_name(),
            "NotFoundException"
        );
        for bad in ["", "a b", "x-y"] {
            assert_eq!(
                check_policy_name(&Some(bad.into())).unwrap_err().aws_name(),
                "ValidationException",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn new_policies_are_checked_unless_bypassed() {
        let text = PolicyDocument::default_key_policy("111122223333")
            .text()
            .to_owned();
        let never = |_: &PolicyDocument| false;
        let e = checked_key_policy(&text, false, Some(&never)).unwrap_err();
        assert_eq!(e.aws_name(), "MalformedPolicyDocumentException");
        assert_eq!(e.message(), LOCKOUT_MESSAGE);
        assert!(checked_key_policy(&text, true, Some(&never)).is_ok());
        assert!(checked_key_policy(&text, false, None).is_ok());
        let e = checked_key_policy("{", false, None).unwrap_err();
        assert_eq!(e.aws_name(), "MalformedPolicyDocumentException");
        let e = checked_key_policy("", false, None).unwrap_err();
        assert_eq!(e.aws_name(), "ValidationException");
    }

    #[test]
    fn the_cache_recompiles_a_changed_policy() {
        let cache = PolicyCache::default();
        let id = KeyId::new_random();
        let a = PolicyDocument::default_key_policy("111122223333")
            .text()
            .to_owned();
        let b = PolicyDocument::default_key_policy("444455556666")
            .text()
            .to_owned();
        let first = cache.compiled(id, &a).unwrap();
        assert!(Arc::ptr_eq(&first, &cache.compiled(id, &a).unwrap()));
        let second = cache.compiled(id, &b).unwrap();
        assert_eq!(second.text(), b);
        assert_eq!(
            cache.compiled(id, "not json").unwrap_err().aws_name(),
            "AccessDeniedException",
            "an unreadable stored policy fails closed"
        );
    }
}
