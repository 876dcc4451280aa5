//! Aliases: CreateAlias, UpdateAlias, DeleteAlias, ListAliases. Every change is decided
//! under the store's writer lock (exactly one of two concurrent CreateAlias calls wins).

use std::ops::Bound;

use super::super::domain::KeyState;
use super::super::records::AliasRecord;
use super::super::store::Snapshot;
use super::super::types::*;
use super::super::{AliasKey, AliasName, ArnScope, Forms, KeyId, Kms};
use super::{check_limit, now_ms, required, secs, unavailable_state};
use crate::error::{KmsError, Result};

impl Kms {
    /// The owner an alias of a caller in `scope` has: `None` for the service's own region
    /// and account (records then read the same to earlier versions).
    pub(crate) fn owner(&self, scope: Option<&ArnScope>) -> Option<ArnScope> {
        scope.filter(|s| **s != self.scope).cloned()
    }

    /// The alias `name` of a caller in `scope` (`None`: the service's own).
    pub(crate) fn alias_key(&self, scope: Option<&ArnScope>, name: AliasName) -> AliasKey {
        AliasKey {
            owner: self.owner(scope),
            name,
        }
    }

    /// `arn:aws:kms:<region>:<account>:alias/<name>` of an alias, in its own scope.
    pub fn alias_arn(&self, alias: &AliasKey) -> String {
        alias
            .owner
            .as_ref()
            .unwrap_or(&self.scope)
            .alias_arn(&alias.name)
    }

    /// The target of CreateAlias/UpdateAlias: a key id or ARN of the alias's own scope (the
    /// key's state is checked when the alias is written, see [`check_alias_target`]).
    fn alias_target(&self, target: Option<KeySelector>, alias: &AliasKey) -> Result<KeyId> {
        let scope = alias.owner.as_ref().unwrap_or(&self.scope).clone();
        self.resolve_key_for(&required(target, "targetKeyId")?, Forms::KeyOnly, &scope)
    }

    fn alias_not_found(&self, alias: &AliasKey) -> KmsError {
        KmsError::not_found(format!("Alias {} is not found.", self.alias_arn(alias)))
    }

    /// An alias may point at a key of its own region and account that exists and is neither
    /// pending deletion nor unknown, as the snapshot has it when the alias is written.
    fn check_alias_target(&self, snap: &Snapshot, target: KeyId, alias: &AliasKey) -> Result<()> {
        let scope = alias.owner.as_ref().unwrap_or(&self.scope);
        let arn = scope.key_arn(&target);
        match self.entry_in(snap, &target, &scope.region).as_ref() {
            None => Err(KmsError::not_found(format!("Key '{arn}' does not exist"))),
            Some(e) if !self.in_scope(&e.record, scope) => {
                Err(KmsError::not_found(format!("Key '{arn}' does not exist")))
            }
            Some(e) => match e.record.state {
                KeyState::PendingDeletion | KeyState::PendingReplicaDeletion => Err(
                    KmsError::invalid_state(format!("{arn} is pending deletion.")),
                ),
                KeyState::Unknown => Err(unavailable_state(&arn)),
                KeyState::Enabled | KeyState::Disabled | KeyState::PendingImport => Ok(()),
            },
        }
    }

    /// CreateAlias.
    pub fn create_alias(&self, req: AliasRequest) -> Result<()> {
        let name = AliasName::parse(&required(req.alias_name, "aliasName")?)?;
        let alias = self.alias_key(req.scope.as_ref(), name);
        let target = self.alias_target(req.target_key_id, &alias)?;
        let now = now_ms();
        self.store.put_alias(&alias, |snap, current| {
            if current.is_some() {
                return Err(KmsError::already_exists(format!(
                    "An alias with the name {} already exists",
                    self.alias_arn(&alias)
                )));
            }
            self.check_alias_target(snap, target, &alias)?;
            Ok(AliasRecord {
                name: alias.name.to_string(),
                target: Some(target),
                created_ms: now,
                updated_ms: now,
                owner: alias.owner.clone(),
            })
        })
    }

    /// UpdateAlias.
    pub fn update_alias(&self, req: AliasRequest) -> Result<()> {
        self.update_alias_expecting(req, None).map(|_| ())
    }

    /// UpdateAlias, if the alias still points at `expected` (when given; `Ok(false)`
    /// otherwise, nothing changed): the caller authorized the change against that target.
    pub fn update_alias_expecting(
        &self,
        req: AliasRequest,
        expected: Option<KeyId>,
    ) -> Result<bool> {
        let name = AliasName::parse(&required(req.alias_name, "aliasName")?)?;
        let alias = self.alias_key(req.scope.as_ref(), name);
        let target = self.alias_target(req.target_key_id, &alias)?;
        self.change_alias(&alias, expected, |snap, current| {
            self.check_alias_target(snap, target, &alias)?;
            Ok(AliasRecord {
                target: Some(target),
                updated_ms: now_ms(),
                ..current.clone()
            })
        })
    }

    /// DeleteAlias.
    pub fn delete_alias(&self, req: AliasRequest) -> Result<()> {
        self.delete_alias_expecting(req, None).map(|_| ())
    }

    /// DeleteAlias, if the alias still points at `expected` (see
    /// [`Kms::update_alias_expecting`]).
    pub fn delete_alias_expecting(
        &self,
        req: AliasRequest,
        expected: Option<KeyId>,
    ) -> Result<bool> {
        let name = AliasName::parse(&required(req.alias_name, "aliasName")?)?;
        let alias = self.alias_key(req.scope.as_ref(), name);
        self.change_alias(&alias, expected, |_, current| {
            Ok(AliasRecord {
                target: None,
                updated_ms: now_ms(),
                ..current.clone()
            })
        })
    }

    /// Rewrites an existing alias as `make` says, if it still points at `expected` (when
    /// given); `Ok(false)` when it has moved (nothing written).
    fn change_alias(
        &self,
        name: &AliasKey,
        expected: Option<KeyId>,
        make: impl FnOnce(&Snapshot, &AliasRecord) -> Result<AliasRecord>,
    ) -> Result<bool> {
        let mut moved = false;
        let r = self.store.put_alias(name, |snap, current| {
            let current = current.ok_or_else(|| self.alias_not_found(name))?;
            if expected.is_some_and(|e| current.target != Some(e)) {
                moved = true;
                return Err(self.alias_not_found(name));
            }
            make(snap, current)
        });
        match r {
            Err(_) if moved => Ok(false),
            r => r.map(|()| true),
        }
    }

    /// The names of the aliases that point at `id` now (`kms:ResourceAliases`).
    pub fn aliases_of_key(&self, id: KeyId) -> Vec<String> {
        self.store
            .read()
            .aliases_of(id)
            .map(|(n, _)| n.name.as_str().to_owned())
            .collect()
    }

    /// The aliases of key `id` in `region` (a multi-Region key has aliases in each region).
    pub fn aliases_of_key_in(&self, id: KeyId, region: &str) -> Vec<String> {
        self.store
            .read()
            .aliases_of(id)
            .filter(|(n, _)| {
                n.owner
                    .as_ref()
                    .map_or(self.scope.region.as_str(), |o| o.region.as_str())
                    == region
            })
            .map(|(n, _)| n.name.as_str().to_owned())
            .collect()
    }

    /// The key an alias points at now, if the alias exists.
    pub fn alias_target_of(&self, alias: &str) -> Result<Option<KeyId>> {
        self.alias_target_in(None, alias)
    }

    /// The key the alias `alias` of a caller in `scope` points at now, if it exists.
    pub fn alias_target_in(&self, scope: Option<&ArnScope>, alias: &str) -> Result<Option<KeyId>> {
        let key = self.alias_key(scope, AliasName::parse(alias)?);
        Ok(self.store.read().aliases.get(&key).and_then(|a| a.target))
    }

    /// ListAliases of the caller's region and account (of every key, or of `KeyId`).
    pub fn list_aliases(&self, req: ListRequest) -> Result<ListAliasesResponse> {
        let limit = check_limit(req.limit, 100)?;
        let owner = self.owner(req.scope.as_ref());
        let scope = owner.clone().unwrap_or_else(|| self.scope.clone());
        let key = match req.key_id {
            Some(k) => Some(self.resolve_key_for(&k, Forms::KeyOnly, &scope)?),
            None => None,
        };
        let start = match &req.marker {
            None => Bound::Included(AliasKey {
                owner: owner.clone(),
                name: AliasName::lowest(),
            }),
            Some(m) => Bound::Excluded(AliasKey {
                owner: owner.clone(),
                name: AliasName::parse(m)
                    .map_err(|_| KmsError::invalid_marker(format!("Invalid marker {m}")))?,
            }),
        };
        let snap = self.store.read();
        let mut iter = snap
            .aliases
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.owner == owner)
            .filter(|(_, a)| key.is_none() || a.target == key)
            .filter_map(|(n, a)| a.target.map(|t| (n, a, t)));
        let aliases: Vec<AliasListEntry> = iter
            .by_ref()
            .take(limit)
            .map(|(n, a, t)| AliasListEntry {
                alias_name: n.name.to_string(),
                alias_arn: scope.alias_arn(&n.name),
                target_key_id: t.to_string(),
                creation_date: secs(a.created_ms),
                last_updated_date: secs(a.updated_ms),
            })
            .collect();
        let truncated = iter.next().is_some();
        Ok(ListAliasesResponse {
            next_marker: truncated
                .then(|| aliases.last().map(|a| a.alias_name.clone()))
                .flatten(),
            aliases,
            truncated,
        })
    }
}
