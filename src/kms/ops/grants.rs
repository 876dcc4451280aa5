//! Grants: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant, and what
//! the authorization layer asks of grants ([`Kms::grant_allows`], [`Kms::grant`],
//! [`Kms::grants_of_grantee`], [`Kms::grant_to_retire`]). The pure rules are in
//! `kms/grant.rs`; every change is decided under the store's writer lock.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::Ordering;

use super::super::domain::{GrantOperation, KeyState};
use super::super::grant::{
    account_root_arn, check_constraints, check_name, check_operations, check_principal, make_token,
    parse_token, parse_tokens, GrantConstraint, GrantId, GrantSecret, GrantView, ParsedToken,
    MAX_GRANT_TOKEN_CHARS, SECRET_LEN,
};
use super::super::records::GrantRecord;
use super::super::store::GrantWrite;
use super::super::types::*;
use super::super::{EncryptionContext, Forms, KeyId, Kms};
use super::{check_grant_tokens, dry_run, now_ms, required, secs, unavailable_state};
use crate::error::{KmsError, Result};

/// ListGrants and ListRetirableGrants: `Limit` 1 to 100, 50 by default (as AWS documents).
fn grant_list_limit(limit: Option<i64>) -> Result<usize> {
    match limit {
        None => Ok(50),
        Some(l) => {
            crate::kms::validation::range("limit", l, 1, 100)?;
            Ok(l as usize)
        }
    }
}

/// A paging marker of the grant lists: the last grant id of the page before.
fn grant_marker(marker: &Option<String>) -> Result<Bound<GrantId>> {
    match marker {
        None => Ok(Bound::Unbounded),
        Some(m) => GrantId::parse(m)
            .map(Bound::Excluded)
            .ok_or_else(|| KmsError::invalid_marker(format!("Invalid marker {}", clip(m)))),
    }
}

fn clip(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

fn grant_not_found(id: &GrantId) -> KmsError {
    KmsError::not_found(format!("Grant {id} does not exist"))
}

/// Whether grant `g` lets `grantee_arn` call `op` with context `ctx` (see
/// [`GrantView::allows`]; the same rule without cloning the record).
fn record_allows(
    g: &GrantRecord,
    grantee_arn: &str,
    op: GrantOperation,
    ctx: Option<&BTreeMap<String, String>>,
) -> bool {
    g.grantee_principal == grantee_arn
        && g.operations.contains(&op)
        && (super::super::grant::unconstrained(op)
            || g.constraint.as_ref().is_none_or(|c| c.allows(ctx)))
}

/// The parameters a retried CreateGrant with the same `Name` must repeat to get the same
/// grant back (AWS: "a CreateGrant request with identical parameters").
fn same_parameters(a: &GrantRecord, b: &GrantRecord) -> bool {
    a.key_id == b.key_id
        && a.name == b.name
        && a.grantee_principal == b.grantee_principal
        && a.retiring_principal == b.retiring_principal
        && a.operations == b.operations
        && a.constraint == b.constraint
        && a.issuing_account == b.issuing_account
}

impl Kms {
    /// How many live grants a key may have (default [`super::super::MAX_GRANTS_PER_KEY`],
    /// AWS's quota). For tests, and for tokens that cannot hold that many objects.
    pub fn set_grants_per_key_limit(&self, limit: usize) {
        self.grant_limit.store(limit, Ordering::Relaxed);
    }

    fn list_entry(&self, g: &GrantRecord) -> GrantListEntry {
        let constraints = g.constraint.as_ref().map(|c| match c {
            GrantConstraint::EncryptionContextEquals(m) => GrantConstraints {
                encryption_context_equals: Some(m.clone()),
                ..Default::default()
            },
            GrantConstraint::EncryptionContextSubset(m) => GrantConstraints {
                encryption_context_subset: Some(m.clone()),
                ..Default::default()
            },
        });
        GrantListEntry {
            key_id: self.scope.key_arn(&g.key_id),
            grant_id: g.grant_id.to_string(),
            name: g.name.clone(),
            creation_date: secs(g.created_ms),
            grantee_principal: g.grantee_principal.clone(),
            retiring_principal: g.retiring_principal.clone(),
            issuing_account: account_root_arn(&g.issuing_account),
            operations: g.operations.clone(),
            constraints,
        }
    }

    /// CreateGrant, issued by a principal of `issuing_account` (the wire layer takes it from
    /// the caller's ARN). With a `Name`, a retry with the same parameters on the same key
    /// returns the existing grant's id (and a new token for it) instead of a second grant.
    pub fn create_grant(
        &self,
        req: CreateGrantRequest,
        issuing_account: &str,
    ) -> Result<CreateGrantResponse> {
        let key = required(req.key_id, "keyId")?;
        let constraints = req.constraints.unwrap_or_default();
        if req.grantee_service_principal.is_some()
            || req.retiring_service_principal.is_some()
            || constraints.source_arn.is_some()
        {
            return Err(KmsError::unsupported(
                "AWS service principals (GranteeServicePrincipal, RetiringServicePrincipal, \
                 the SourceArn constraint) are not supported by p11kms",
            ));
        }
        let grantee = required(req.grantee_principal, "granteePrincipal")?;
        check_principal(&grantee, "granteePrincipal")?;
        if let Some(r) = &req.retiring_principal {
            check_principal(r, "retiringPrincipal")?;
        }
        let operations = required(req.operations, "operations")?;
        if let Some(n) = &req.name {
            check_name(n)?;
        }
        check_grant_tokens(&req.grant_tokens)?;
        let constraint = check_constraints(
            constraints.encryption_context_equals,
            constraints.encryption_context_subset,
        )?;
        if issuing_account.is_empty() {
            return Err(KmsError::internal("CreateGrant without an issuing account"));
        }
        let (id, entry) = self.resolve(&key, Forms::KeyOnly)?;
        if id.is_multi_region() {
            // Grants are kept by key id, and a multi-Region key's id names a key in every
            // region that has it: a grant would reach them all.
            return Err(KmsError::unsupported(format!(
                "{} is a multi-Region key: grants on multi-Region keys are not supported by                  p11kms",
                self.key_arn(&entry.record)
            )));
        }
        let operations = check_operations(
            &operations,
            entry.record.spec,
            entry.record.usage,
            constraint.as_ref(),
        )?;
        // The grant id, its token secret and this call's token salt, in one token call.
        let mut random = [0u8; 32 + SECRET_LEN + 16];
        self.token.random_fill(&mut random)?;
        let mut grant_id = [0u8; 32];
        grant_id.copy_from_slice(&random[..32]);
        let secret = GrantSecret(random[32..32 + SECRET_LEN].to_vec().into());
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&random[32 + SECRET_LEN..]);
        random.fill(0);
        let candidate = GrantRecord {
            grant_id: GrantId::from_bytes(grant_id),
            key_id: id,
            name: req.name,
            grantee_principal: grantee,
            retiring_principal: req.retiring_principal,
            operations,
            constraint,
            issuing_account: issuing_account.to_owned(),
            created_ms: now_ms(),
            token_secret: secret,
            deleted_ms: None,
        };
        let limit = self.grant_limit.load(Ordering::Relaxed);
        let arn = self.scope.key_arn(&id);
        let dry = req.dry_run;
        let written = self.store.put_grant(|snap| {
            let Some(e) = snap.keys.get(&id) else {
                return Err(KmsError::not_found(format!("Key '{arn}' does not exist")));
            };
            match e.record.state {
                KeyState::Enabled | KeyState::Disabled | KeyState::PendingImport => {}
                KeyState::PendingDeletion | KeyState::PendingReplicaDeletion => {
                    return Err(KmsError::invalid_state(format!(
                        "{arn} is pending deletion."
                    )))
                }
                KeyState::Unknown => return Err(unavailable_state(&arn)),
            }
            if candidate.name.is_some() {
                if let Some(existing) = snap.grants_of(id).find(|g| same_parameters(g, &candidate))
                {
                    dry_run(dry)?;
                    return Ok(GrantWrite::Existing(existing.clone()));
                }
            }
            let count = snap.grants_by_key.get(&id).map_or(0, |s| s.len());
            if count >= limit {
                return Err(KmsError::limit_exceeded(format!(
                    "{arn} has {count} grants: a key can have at most {limit}"
                )));
            }
            dry_run(dry)?;
            Ok(GrantWrite::New(candidate))
        })?;
        let record = match written {
            GrantWrite::New(r) | GrantWrite::Existing(r) => r,
        };
        Ok(CreateGrantResponse {
            grant_token: make_token(&record.grant_id, &record.token_secret.0, salt),
            grant_id: record.grant_id.to_string(),
        })
    }

    /// ListGrants: the live grants of one key (in any state), in grant id order, filtered by
    /// `GrantId` and `GranteePrincipal`.
    pub fn list_grants(&self, req: ListGrantsRequest) -> Result<ListGrantsResponse> {
        let limit = grant_list_limit(req.limit)?;
        if req.grantee_service_principal.is_some() {
            return Err(KmsError::unsupported(
                "GranteeServicePrincipal (AWS service principals) is not supported by p11kms",
            ));
        }
        let key = required(req.key_id, "keyId")?;
        let only = req
            .grant_id
            .as_deref()
            .map(GrantId::parse_member)
            .transpose()?;
        let start = grant_marker(&req.marker)?;
        let (id, _) = self.resolve(&key, Forms::KeyOnly)?;
        let snap = self.store.read();
        let Some(ids) = snap.grants_by_key.get(&id) else {
            return Ok(ListGrantsResponse {
                grants: Vec::new(),
                next_marker: None,
                truncated: false,
            });
        };
        let mut iter = ids
            .range((start, Bound::Unbounded))
            .filter(|g| only.is_none_or(|o| o == **g))
            .filter_map(|g| snap.grants.get(g))
            .filter(|g| !g.unreadable())
            .filter(|g| {
                req.grantee_principal
                    .as_ref()
                    .is_none_or(|p| *p == g.grantee_principal)
            });
        let page: Vec<&GrantRecord> = iter.by_ref().take(limit).collect();
        let truncated = iter.next().is_some();
        Ok(ListGrantsResponse {
            next_marker: truncated
                .then(|| page.last().map(|g| g.grant_id.to_string()))
                .flatten(),
            grants: page.into_iter().map(|g| self.list_entry(g)).collect(),
            truncated,
        })
    }

    /// ListRetirableGrants: every live grant whose retiring principal is `RetiringPrincipal`,
    /// across keys, in grant id order.
    pub fn list_retirable_grants(
        &self,
        req: ListRetirableGrantsRequest,
    ) -> Result<ListGrantsResponse> {
        let limit = grant_list_limit(req.limit)?;
        if req.retiring_service_principal.is_some() {
            return Err(KmsError::unsupported(
                "RetiringServicePrincipal (AWS service principals) is not supported by p11kms",
            ));
        }
        let principal = required(req.retiring_principal, "retiringPrincipal")?;
        check_principal(&principal, "retiringPrincipal")?;
        let start = grant_marker(&req.marker)?;
        let snap = self.store.read();
        let mut iter = snap
            .grants
            .range((start, Bound::Unbounded))
            .map(|(_, g)| g)
            .filter(|g| g.retiring_principal.as_deref() == Some(principal.as_str()));
        let page: Vec<&GrantRecord> = iter.by_ref().take(limit).collect();
        let truncated = iter.next().is_some();
        Ok(ListGrantsResponse {
            next_marker: truncated
                .then(|| page.last().map(|g| g.grant_id.to_string()))
                .flatten(),
            grants: page.into_iter().map(|g| self.list_entry(g)).collect(),
            truncated,
        })
    }

    /// The live grant a token names, looking once more after a refresh if this process's
    /// snapshot does not know it yet (one generation stamp read when nothing changed): a
    /// grant token takes effect at once, also for grants another process created.
    fn grant_named_by(&self, token: &ParsedToken) -> Option<GrantRecord> {
        if let Some(g) = self.store.read().grants.get(&token.grant_id) {
            return Some(g.clone());
        }
        if let Err(e) = self.refresh() {
            tracing::warn!(
                error = e.message(),
                "could not refresh the metadata for a grant token"
            );
            return None;
        }
        self.store.read().grants.get(&token.grant_id).cloned()
    }

    /// The grant a RetireGrant request names, for the wire layer to decide whether the caller
    /// may retire it ([`GrantView::retirable_by`], or the issuing account's permission):
    /// by `GrantToken` (malformed, or not this grant's: `InvalidGrantTokenException`; naming
    /// no live grant: `NotFoundException`), or by `KeyId` (key id or key ARN) and `GrantId`
    /// (malformed: `InvalidGrantIdException`; no such grant on the key:
    /// `NotFoundException`). A token with `KeyId`/`GrantId` too must name the same grant.
    pub fn grant_to_retire(&self, req: &RetireGrantRequest) -> Result<GrantView> {
        let named_id = req
            .grant_id
            .as_deref()
            .map(GrantId::parse_member)
            .transpose()?;
        let named_key = match &req.key_id {
            Some(k) => Some(self.resolve(k, Forms::KeyOnly)?.0),
            None => None,
        };
        let Some(token) = &req.grant_token else {
            let (Some(gid), Some(key)) = (named_id, named_key) else {
                return Err(KmsError::validation(
                    "RetireGrant needs a GrantToken, or a KeyId and a GrantId",
                ));
            };
            return self
                .grant(key, &gid.to_string())
                .ok_or_else(|| grant_not_found(&gid));
        };
        crate::kms::validation::length(
            "grantToken",
            crate::kms::validation::Shown::Value(token.clone()),
            token.chars().count(),
            1,
            MAX_GRANT_TOKEN_CHARS,
        )?;
        let parsed = parse_token(token)
            .ok_or_else(|| KmsError::invalid_grant_token("The grant token is not valid"))?;
        let g = self
            .grant_named_by(&parsed)
            .ok_or_else(|| grant_not_found(&parsed.grant_id))?;
        if !parsed.verify(&g.token_secret.0) {
            return Err(KmsError::invalid_grant_token(
                "The grant token is not valid",
            ));
        }
        if named_id.is_some_and(|i| i != g.grant_id) || named_key.is_some_and(|k| k != g.key_id) {
            return Err(KmsError::validation(
                "The GrantToken and the KeyId or GrantId name different grants",
            ));
        }
        Ok(g.view())
    }

    /// RetireGrant (who may call it is the wire layer's decision, see
    /// [`Kms::grant_to_retire`]).
    pub fn retire_grant(&self, req: RetireGrantRequest) -> Result<()> {
        let target = self.grant_to_retire(&req)?;
        self.delete_grant(target.key_id, &target.grant_id, req.dry_run)
    }

    /// RevokeGrant: `KeyId` (key id or key ARN) and `GrantId`.
    pub fn revoke_grant(&self, req: RevokeGrantRequest) -> Result<()> {
        let key = required(req.key_id, "keyId")?;
        let gid = GrantId::parse_member(&required(req.grant_id, "grantId")?)?;
        let (id, _) = self.resolve(&key, Forms::KeyOnly)?;
        self.delete_grant(id, &gid, req.dry_run)
    }

    fn delete_grant(&self, key: KeyId, gid: &GrantId, dry: Option<bool>) -> Result<()> {
        self.store.delete_grant(gid, now_ms(), |current| {
            if current.is_none_or(|g| g.key_id != key) {
                return Err(grant_not_found(gid));
            }
            dry_run(dry)
        })?;
        Ok(())
    }

    /// Whether a grant allows `grantee_arn` to call `operation` on `key` with encryption
    /// context `context` (`None`: the operation takes none): some live grant on the key names
    /// the caller as its grantee (exact ARN), lists the operation, and its constraint holds
    /// (EncryptionContextEquals: the same pairs; EncryptionContextSubset: the grant's pairs
    /// within the request's; constraint keys compared without regard to case, values exactly,
    /// as AWS does; a constrained grant allows no operation without a context; constraints do
    /// not apply to DescribeKey, RetireGrant and CreateGrant).
    ///
    /// Grants this process has seen count (other processes' within one refresh interval).
    /// `grant_tokens` make a new grant count at once: if a token (at most 10 looked at, each
    /// bounded; a malformed one is ignored) names a grant this snapshot does not know, the
    /// metadata is refreshed once, which costs one stamp read when nothing changed, and the
    /// grants are looked at again. The rule that a grantee's CreateGrant must carry an equal
    /// or stricter constraint is the caller's (see [`Kms::grants_of_grantee`]).
    pub fn grant_allows(
        &self,
        key: KeyId,
        grantee_arn: &str,
        operation: GrantOperation,
        context: Option<&EncryptionContext>,
        grant_tokens: &[String],
    ) -> bool {
        let ctx = context.map(EncryptionContext::as_map);
        let allowed = |snap: &super::super::store::Snapshot| {
            snap.grants_of(key)
                .any(|g| record_allows(g, grantee_arn, operation, ctx))
        };
        if allowed(&self.store.read()) {
            return true;
        }
        if !self.tokens_name_unknown_grants(grant_tokens) {
            return false;
        }
        if let Err(e) = self.refresh() {
            tracing::warn!(
                error = e.message(),
                "could not refresh the metadata for a grant token"
            );
            return false;
        }
        allowed(&self.store.read())
    }

    /// Whether some well-formed token of `grant_tokens` names a grant this snapshot lacks.
    fn tokens_name_unknown_grants(&self, grant_tokens: &[String]) -> bool {
        let tokens = parse_tokens(grant_tokens);
        if tokens.is_empty() {
            return false;
        }
        let snap = self.store.read();
        tokens
            .iter()
            .any(|t| !snap.grants.contains_key(&t.grant_id))
    }

    /// The live grants on `key` whose grantee is `grantee_arn` (refreshed first, once, if a
    /// token names a grant this snapshot lacks, as in [`Kms::grant_allows`]): for rules that
    /// need the grants themselves, e.g. AWS's "a grantee's CreateGrant needs an equally
    /// strict constraint" or the `kms:GrantOperations` condition.
    pub fn grants_of_grantee(
        &self,
        key: KeyId,
        grantee_arn: &str,
        grant_tokens: &[String],
    ) -> Vec<GrantView> {
        if self.tokens_name_unknown_grants(grant_tokens) {
            if let Err(e) = self.refresh() {
                tracing::warn!(
                    error = e.message(),
                    "could not refresh the metadata for a grant token"
                );
            }
        }
        self.store
            .read()
            .grants_of(key)
            .filter(|g| g.grantee_principal == grantee_arn)
            .map(GrantRecord::view)
            .collect()
    }

    /// Whether a grant of `grantee_arn` on `key` lets it create a grant of `operations` with
    /// `constraint`: the parent grant lists CreateGrant and every one of `operations`, and the
    /// new constraint is equally strict or stricter than the parent's (AWS's rule for
    /// "Granting CreateGrant permission"). Grant tokens count as in [`Kms::grant_allows`].
    pub fn grant_allows_create_grant(
        &self,
        key: KeyId,
        grantee_arn: &str,
        operations: &[GrantOperation],
        constraint: Option<&GrantConstraint>,
        grant_tokens: &[String],
    ) -> bool {
        self.grants_of_grantee(key, grantee_arn, grant_tokens)
            .iter()
            .any(|g| {
                g.operations.contains(&GrantOperation::CreateGrant)
                    && operations.iter().all(|o| g.operations.contains(o))
                    && super::super::grant::constraint_at_least_as_strict(
                        constraint,
                        g.constraint.as_ref(),
                    )
            })
    }

    /// A live grant on `key`, by its grant id (as the snapshot has it).
    pub fn grant(&self, key: KeyId, grant_id: &str) -> Option<GrantView> {
        let gid = GrantId::parse(grant_id)?;
        self.store
            .read()
            .grants
            .get(&gid)
            .filter(|g| g.key_id == key)
            .map(GrantRecord::view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_limits_and_markers() {
        assert_eq!(grant_list_limit(None).unwrap(), 50);
        assert_eq!(grant_list_limit(Some(100)).unwrap(), 100);
        for bad in [0, 101, -1] {
            assert_eq!(
                grant_list_limit(Some(bad)).unwrap_err().aws_name(),
                "ValidationException"
            );
        }
        assert_eq!(grant_marker(&None).unwrap(), Bound::Unbounded);
        let id = GrantId::from_bytes([4; 32]);
        assert_eq!(
            grant_marker(&Some(id.to_string())).unwrap(),
            Bound::Excluded(id)
        );
        assert_eq!(
            grant_marker(&Some("x".into())).unwrap_err().aws_name(),
            "InvalidMarkerException"
        );
    }

    fn grant(name: Option<&str>) -> GrantRecord {
        GrantRecord {
            grant_id: GrantId::from_bytes([1; 32]),
            key_id: "1234abcd-12ab-34cd-56ef-1234567890ab".parse().unwrap(),
            name: name.map(Into::into),
            grantee_principal: "arn:aws:iam::111122223333:user/a".into(),
            retiring_principal: None,
            operations: vec![GrantOperation::Decrypt],
            constraint: None,
            issuing_account: "111122223333".into(),
            created_ms: 1,
            token_secret: GrantSecret(vec![1; 32].into()),
            deleted_ms: None,
        }
    }

    /// A retry with a `Name` gets the grant back only if it repeats every parameter; the
    /// grant id, secret and time are the new call's own and do not count.
    #[test]
    fn name_idempotence_needs_identical_parameters() {
        let a = grant(Some("n"));
        let retry = GrantRecord {
            grant_id: GrantId::from_bytes([2; 32]),
            created_ms: 2,
            token_secret: GrantSecret(vec![2; 32].into()),
            ..a.clone()
        };
        assert!(same_parameters(&a, &retry));
        let differs = [
            GrantRecord {
                name: Some("m".into()),
                ..retry.clone()
            },
            GrantRecord {
                grantee_principal: "arn:aws:iam::111122223333:user/b".into(),
                ..retry.clone()
            },
            GrantRecord {
                retiring_principal: Some("arn:aws:iam::111122223333:user/a".into()),
                ..retry.clone()
            },
            GrantRecord {
                operations: vec![GrantOperation::Decrypt, GrantOperation::Encrypt],
                ..retry.clone()
            },
            GrantRecord {
                constraint: Some(GrantConstraint::EncryptionContextSubset(
                    [("k".to_string(), "v".to_string())].into(),
                )),
                ..retry.clone()
            },
            GrantRecord {
                issuing_account: "444455556666".into(),
                ..retry.clone()
            },
        ];
        for d in differs {
            assert!(!same_parameters(&a, &d), "{d:?}");
        }
    }

    #[test]
    fn a_record_allows_as_its_view_does() {
        let mut g = grant(None);
        g.constraint = Some(GrantConstraint::EncryptionContextEquals(
            [("k".to_string(), "v".to_string())].into(),
        ));
        g.operations = vec![GrantOperation::Decrypt, GrantOperation::DescribeKey];
        let me = "arn:aws:iam::111122223333:user/a";
        let ctx: BTreeMap<String, String> = [("K".to_string(), "v".to_string())].into();
        for (op, c) in [
            (GrantOperation::Decrypt, Some(&ctx)),
            (GrantOperation::Decrypt, None),
            (GrantOperation::DescribeKey, None),
            (GrantOperation::Encrypt, Some(&ctx)),
        ] {
            assert_eq!(
                record_allows(&g, me, op, c),
                g.view().allows(me, op, c),
                "{op} {c:?}"
            );
        }
        assert!(record_allows(&g, me, GrantOperation::Decrypt, Some(&ctx)));
        assert!(!record_allows(&g, me, GrantOperation::Decrypt, None));
    }
}
