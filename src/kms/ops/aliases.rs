//! Aliases: CreateAlias, UpdateAlias, DeleteAlias, ListAliases. Every change is decided
//! under the store's writer lock (exactly one of two concurrent CreateAlias calls wins).

use std::ops::Bound;

use super::super::domain::KeyState;
use super::super::records::AliasRecord;
use super::super::store::Snapshot;
use super::super::types::*;
use super::super::{AliasName, Forms, KeyId, Kms};
use super::{check_limit, now_ms, required, secs, unavailable_state};
use crate::error::{KmsError, Result};

impl Kms {
    /// The target of CreateAlias/UpdateAlias: a key id or ARN (the key's state is checked
    /// when the alias is written, see [`check_alias_target`]).
    fn alias_target(&self, target: Option<KeySelector>) -> Result<KeyId> {
        Ok(self
            .resolve(&required(target, "targetKeyId")?, Forms::KeyOnly)?
            .0)
    }

    fn alias_not_found(&self, name: &AliasName) -> KmsError {
        KmsError::not_found(format!(
            "Alias {} is not found.",
            self.scope.alias_arn(name)
        ))
    }

    /// An alias may point at a key that exists and is neither pending deletion nor unknown,
    /// as the snapshot has it when the alias is written.
    fn check_alias_target(&self, snap: &Snapshot, target: KeyId) -> Result<()> {
        let arn = self.scope.key_arn(&target);
        match snap.keys.get(&target).map(|e| e.record.state) {
            None => Err(KmsError::not_found(format!("Key '{arn}' does not exist"))),
            Some(KeyState::PendingDeletion) => Err(KmsError::invalid_state(format!(
                "{arn} is pending deletion."
            ))),
            Some(KeyState::Unknown) => Err(unavailable_state(&arn)),
            Some(KeyState::Enabled | KeyState::Disabled | KeyState::PendingImport) => Ok(()),
        }
    }

    /// CreateAlias.
    pub fn create_alias(&self, req: AliasRequest) -> Result<()> {
        let name = AliasName::parse(&required(req.alias_name, "aliasName")?)?;
        let target = self.alias_target(req.target_key_id)?;
        let now = now_ms();
        self.store.put_alias(&name, |snap, current| {
            if current.is_some() {
                return Err(KmsError::already_exists(format!(
                    "An alias with the name {} already exists",
                    self.scope.alias_arn(&name)
                )));
            }
            self.check_alias_target(snap, target)?;
            Ok(AliasRecord {
                name: name.to_string(),
                target: Some(target),
                created_ms: now,
                updated_ms: now,
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
        let target = self.alias_target(req.target_key_id)?;
        self.change_alias(&name, expected, |snap, current| {
            self.check_alias_target(snap, target)?;
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
        self.change_alias(&name, expected, |_, current| {
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
        name: &AliasName,
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
            .map(|(n, _)| n.as_str().to_owned())
            .collect()
    }

    /// The key an alias points at now, if the alias exists.
    pub fn alias_target_of(&self, alias: &str) -> Result<Option<KeyId>> {
        let name = AliasName::parse(alias)?;
        Ok(self.store.read().aliases.get(&name).and_then(|a| a.target))
    }

    /// ListAliases (of every key, or of `KeyId`).
    pub fn list_aliases(&self, req: ListRequest) -> Result<ListAliasesResponse> {
        let limit = check_limit(req.limit, 100)?;
        let key = match req.key_id {
            Some(k) => Some(self.resolve(&k, Forms::KeyOnly)?.0),
            None => None,
        };
        let start = match &req.marker {
            None => Bound::Unbounded,
            Some(m) => Bound::Excluded(
                AliasName::parse(m)
                    .map_err(|_| KmsError::invalid_marker(format!("Invalid marker {m}")))?,
            ),
        };
        let snap = self.store.read();
        let mut iter = snap
            .aliases
            .range((start, Bound::Unbounded))
            .filter(|(_, a)| key.is_none() || a.target == key)
            .filter_map(|(n, a)| a.target.map(|t| (n, a, t)));
        let aliases: Vec<AliasListEntry> = iter
            .by_ref()
            .take(limit)
            .map(|(n, a, t)| AliasListEntry {
                alias_name: n.to_string(),
                alias_arn: self.scope.alias_arn(n),
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
