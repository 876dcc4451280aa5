//! Multi-Region keys: ReplicateKey, UpdatePrimaryRegion, and the rules that make a key id
//! name one key per region (its primary or a replica) over one token.
//!
//! A multi-Region key has an `mrk-` id (`KeyId::new_multi_region`). Its key record is the
//! primary's, in the primary's region (always written explicitly); each replica is a record
//! of its own (`store/replicas.rs`). Every region's key uses the same backing keys in the
//! token (labelled by the key id), so a ciphertext made in one region opens in every region
//! that has the key, and the material's versions are the key record's for all of them. What
//! is per region: state, description, policy, tags, aliases, deletion.

use super::super::domain::KeyState;
use super::super::records::KeyRecord;
use super::super::store::{Change, KeyEntry, Snapshot};
use super::super::types::*;
use super::super::{ArnScope, Forms, KeyId, Kms};
use super::policies::{checked_key_policy, LockoutCheck};
use super::tags::{check_description, merged_tags};
use super::{now_ms, required, unavailable_state, DAY_MS};
use crate::error::{KmsError, Result};

/// What a region name looks like to AWS (`RegionType`: `^([a-z]+-){2,3}\d+$`, 1 to 32
/// characters), or p11kms's own region names (`local`): lowercase letters, digits, dashes.
pub(crate) fn check_region(r: &str, member: &str) -> Result<()> {
    if r.is_empty()
        || r.len() > 32
        || !r
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(KmsError::validation(format!(
            "1 validation error detected: Value '{r}' at '{member}' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: ^([a-z]+-){{2,3}}\\d+$"
        )));
    }
    Ok(())
}

impl Kms {
    /// The key `id` names in `region`: the primary's entry if the key record is of that
    /// region, else the replica's there (a single-Region key only in its own region).
    pub(crate) fn entry_in(&self, snap: &Snapshot, id: &KeyId, region: &str) -> Option<KeyEntry> {
        let e = snap.keys.get(id)?;
        if self.region_of(&e.record) == region {
            return Some(e.clone());
        }
        if id.is_multi_region() {
            return snap.replica_entry(id, region);
        }
        None
    }

    /// The record of the key `id` names in `region` (NotFoundException if none).
    pub fn key_record_in(&self, id: KeyId, region: &str) -> Result<KeyRecord> {
        let snap = self.store.read();
        self.entry_in(&snap, &id, region)
            .map(|e| e.record)
            .ok_or_else(|| {
                KmsError::not_found(format!(
                    "Key '{}' does not exist",
                    ArnScope::new(region, &self.scope.account).key_arn(&id)
                ))
            })
    }

    /// The ARN of the key a ciphertext was opened under (`named`: as the request resolved it;
    /// a multi-Region key's in the region it was resolved in).
    pub(crate) fn opened_key_arn(&self, id: KeyId, named: Option<&KeySelector>) -> String {
        let snap = self.store.read();
        let entry = match named {
            Some(KeySelector::ResolvedIn(_, region)) => self.entry_in(&snap, &id, region),
            _ if id.is_multi_region() => self.entry_in(&snap, &id, &self.scope.region),
            _ => snap.keys.get(&id).cloned(),
        };
        entry.map_or_else(|| self.scope.key_arn(&id), |e| self.key_arn(&e.record))
    }

    /// Whether `record` is a replica's (not the key record's).
    pub(crate) fn is_replica(&self, record: &KeyRecord) -> bool {
        record.id.is_multi_region()
            && self
                .store
                .read()
                .keys
                .get(&record.id)
                .is_some_and(|p| p.record.region != record.region)
    }

    /// Changes the record of the key `entry` is (the key record, or a replica's), as
    /// [`crate::kms::store::Store::update_key`] does.
    pub(crate) fn update_entry(
        &self,
        entry: &KeyEntry,
        rule: impl FnOnce(&KeyEntry) -> Result<Change>,
        then: impl FnOnce(&KeyEntry) -> Result<()>,
    ) -> Result<KeyEntry> {
        if self.is_replica(&entry.record) {
            let region = self.region_of(&entry.record).to_owned();
            self.store
                .update_replica(&entry.record.id, &region, rule, then)
        } else {
            self.store.update_key(&entry.record.id, rule, then)
        }
    }

    /// Whether the backing keys of key `id` are to be usable in the token: it is Enabled in
    /// some region.
    pub(crate) fn usable_in_token(&self, id: &KeyId) -> bool {
        self.store.read().enabled_anywhere(id)
    }

    /// `MultiRegionConfiguration` of a multi-Region key's record (`None` for others).
    pub(crate) fn multi_region_configuration(
        &self,
        r: &KeyRecord,
    ) -> Option<MultiRegionConfiguration> {
        if !r.id.is_multi_region() {
            return None;
        }
        let snap = self.store.read();
        let primary = snap.keys.get(&r.id)?;
        let primary_region = self.region_of(&primary.record).to_owned();
        let replica_keys = snap
            .replica_regions(&r.id)
            .into_iter()
            .filter_map(|region| {
                let e = snap.replica_entry(&r.id, &region)?;
                Some(MultiRegionKey {
                    arn: self.key_arn(&e.record),
                    region,
                })
            })
            .collect();
        Some(MultiRegionConfiguration {
            multi_region_key_type: if self.region_of(r) == primary_region {
                "PRIMARY"
            } else {
                "REPLICA"
            },
            primary_key: MultiRegionKey {
                arn: self.key_arn(&primary.record),
                region: primary_region,
            },
            replica_keys,
        })
    }

    /// The key a ReplicateKey or UpdatePrimaryRegion names: a multi-Region primary key.
    fn primary_named(&self, key: &KeySelector, op: &str) -> Result<KeyEntry> {
        let (id, entry) = self.resolve(key, Forms::KeyOnly)?;
        let arn = self.key_arn(&entry.record);
        if !id.is_multi_region() {
            return Err(KmsError::unsupported(format!(
                "{arn} is not a multi-Region key: {op} takes a multi-Region primary key"
            )));
        }
        if self.is_replica(&entry.record) {
            return Err(KmsError::unsupported(format!(
                "{arn} is a multi-Region replica key: {op} takes the multi-Region primary key \
                 (in its Region)"
            )));
        }
        if entry.record.state == KeyState::Unknown {
            return Err(unavailable_state(&arn));
        }
        Ok(entry)
    }

    /// ReplicateKey: a replica of a multi-Region primary key in another region, with its own
    /// policy (the default unless given), description and tags (none unless given), Enabled.
    /// Made at once: it never shows AWS's transient `Creating` state.
    pub fn replicate_key(
        &self,
        req: ReplicateKeyRequest,
        lockout: Option<LockoutCheck<'_>>,
    ) -> Result<ReplicateKeyResponse> {
        let key = required(req.key_id, "keyId")?;
        let region = required(req.replica_region, "replicaRegion")?;
        check_region(&region, "replicaRegion")?;
        if let Some(d) = &req.description {
            check_description(d)?;
        }
        let tags = merged_tags(&[], req.tags.as_deref().unwrap_or_default())?;
        let primary = self.primary_named(&key, "ReplicateKey")?;
        if let Some(text) = &req.policy {
            checked_key_policy(
                text,
                req.bypass_policy_lockout_safety_check == Some(true),
                lockout,
            )?;
        }
        let id = primary.record.id;
        let arn = self.key_arn(&primary.record);
        // As at AWS: a replica is Enabled whatever its primary's state, in the primary's
        // account.
        let record = KeyRecord {
            created_ms: now_ms(),
            state: KeyState::Enabled,
            description: req.description.unwrap_or_default(),
            deletion_ms: None,
            pending_window_days: None,
            tags,
            policy: req.policy,
            region: Some(region.clone()),
            ..primary.record.clone()
        };
        self.store.put_replica(record, |snap| {
            let Some(now) = snap.keys.get(&id) else {
                return Err(KmsError::not_found(format!("Key '{arn}' does not exist")));
            };
            match now.record.state {
                KeyState::Enabled | KeyState::Disabled | KeyState::PendingImport => {}
                KeyState::PendingDeletion | KeyState::PendingReplicaDeletion => {
                    return Err(KmsError::invalid_state(format!(
                        "{arn} is pending deletion."
                    )))
                }
                KeyState::Unknown => return Err(unavailable_state(&arn)),
            }
            if self.region_of(&now.record) == region {
                return Err(KmsError::validation(format!(
                    "ReplicaRegion {region} is the primary key's Region: a replica must be in \
                     another Region"
                )));
            }
            if snap.replicas.contains_key(&(id, region.clone())) {
                return Err(KmsError::already_exists(format!(
                    "{arn} already has a replica in {region}"
                )));
            }
            Ok(())
        })?;
        let replica = self.key_record_in(id, &region)?;
        // A disabled primary's backing keys are off in the token: the new replica is Enabled.
        // (A crash before this is repaired by the reconcile at the next open.)
        if let Some(entry) = self.store.key(&id) {
            let left = self.apply_token_state(&entry);
            self.finish_token_state(&id, &left.rebind);
            if let Some(e) = left.failed {
                tracing::warn!(
                    key_id = %id,
                    error = e.message(),
                    "the replica is written, but the token's attributes could not be updated; \
                     every process reconciles them when it opens the token"
                );
            }
        }
        let policy = match &replica.policy {
            Some(p) => p.clone(),
            None => self.key_policy(&replica)?.text().to_owned(),
        };
        Ok(ReplicateKeyResponse {
            replica_policy: policy,
            replica_tags: replica
                .tags
                .iter()
                .map(|(k, v)| Tag {
                    tag_key: k.clone(),
                    tag_value: v.clone(),
                })
                .collect(),
            replica_key_metadata: self.metadata(&replica),
        })
    }

    /// UpdatePrimaryRegion: the replica in `PrimaryRegion` becomes the primary key and the
    /// primary a replica. Both must be Enabled or Disabled (PendingImport for imported
    /// material). Made at once: no transient `Updating` state.
    pub fn update_primary_region(&self, req: UpdatePrimaryRegionRequest) -> Result<()> {
        let key = required(req.key_id, "keyId")?;
        let region = required(req.primary_region, "primaryRegion")?;
        check_region(&region, "primaryRegion")?;
        let primary = self.primary_named(&key, "UpdatePrimaryRegion")?;
        let id = primary.record.id;
        if self.region_of(&primary.record) == region {
            return Err(KmsError::validation(format!(
                "{} is already the primary key in {region}",
                self.key_arn(&primary.record)
            )));
        }
        self.store.move_primary(&id, &region, |p, r| {
            for e in [p, r] {
                let arn = self.key_arn(&e.record);
                match e.record.state {
                    KeyState::Enabled | KeyState::Disabled | KeyState::PendingImport => {}
                    KeyState::PendingDeletion | KeyState::PendingReplicaDeletion => {
                        return Err(KmsError::invalid_state(format!(
                            "{arn} is pending deletion."
                        )))
                    }
                    KeyState::Unknown => return Err(unavailable_state(&arn)),
                }
            }
            Ok(())
        })
    }

    /// The replicas past their deletion date are destroyed (never a backing key), and a
    /// primary pending replica deletion whose last replica is gone starts its own waiting
    /// period. Returns the keys whose replica was destroyed.
    pub(crate) fn sweep_replicas_at(&self, now: i64) -> Result<Vec<(KeyId, String)>> {
        let due: Vec<(KeyId, String)> = self
            .store
            .read()
            .replicas
            .iter()
            .filter(|(_, r)| {
                r.state == KeyState::PendingDeletion && r.deletion_ms.is_some_and(|d| d <= now)
            })
            .map(|(at, _)| at.clone())
            .collect();
        let mut destroyed = Vec::new();
        for (id, region) in due {
            let gone = self.store.destroy_replica_if(
                &id,
                &region,
                |r| r.state == KeyState::PendingDeletion && r.deletion_ms.is_some_and(|d| d <= now),
                |alias| {
                    alias
                        .owner
                        .as_ref()
                        .map_or(self.scope.region.as_str(), |o| o.region.as_str())
                        == region
                },
            )?;
            if gone {
                destroyed.push((id, region));
            }
        }
        // After the replicas above are gone.
        let waiting: Vec<KeyId> = {
            let snap = self.store.read();
            snap.keys
                .iter()
                .filter(|(id, e)| {
                    e.record.state == KeyState::PendingReplicaDeletion
                        && snap.replica_regions(id).is_empty()
                })
                .map(|(id, _)| *id)
                .collect()
        };
        for id in waiting {
            self.store.update_key(
                &id,
                |e| {
                    let r = &e.record;
                    if r.state != KeyState::PendingReplicaDeletion {
                        return Ok(Change::Keep);
                    }
                    let days = r.pending_window_days.unwrap_or(30);
                    Ok(Change::Write(KeyRecord {
                        state: KeyState::PendingDeletion,
                        deletion_ms: Some(now + i64::from(days) * DAY_MS),
                        ..r.clone()
                    }))
                },
                |_| Ok(()),
            )?;
        }
        Ok(destroyed)
    }
}
