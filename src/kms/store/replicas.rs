//! Replicas of multi-Region keys: one record per (key, region) besides the key record, which
//! is the primary's and holds what every region shares (spec, usage, backing versions, KDF,
//! public key). A replica's entry is its own record laid over the key record's shared fields
//! and backing keys on every read, so a change of the shared fields (a rotation) is seen in
//! every region at once, and a replica never holds a backing key of its own.
//!
//! Crash safety (each step is one object created or destroyed):
//! - ReplicateKey writes one replica record: nothing half-done.
//! - UpdatePrimaryRegion 1. writes a replica record for the old primary's region (a copy of
//!   the primary's own fields), 2. writes the key record with the new region and the new
//!   primary's own fields (and destroys the old key record), 3. destroys the replica record
//!   of the new primary's region. A replica record of the key record's own region is never
//!   a replica (see [`Snapshot::replicas`]): after 1 the old state holds everywhere, after 2
//!   the new one; the leftover is ignored, superseded by the next replica record written
//!   for that region, and destroyed by the next UpdatePrimaryRegion or the key's deletion.
//! - Deleting a replica destroys its aliases' records (tombstones first) and its own
//!   records, never a backing key; the key record (and with it the backing keys) is destroyed
//!   only when no replica record of another region than its own is left in the token.

use super::{BackingKeys, Change, KeyEntry, RecordBackend, Snapshot, Store, WriterState};
use crate::error::{KmsError, Result};
use crate::kms::keyref::{AliasKey, KeyId};
use crate::kms::records::{AliasRecord, KeyRecord, Record, RecordLabel, Subject, APPLICATION};

/// A replica's record as its entry shows it: its own fields over the key record's.
pub fn replica_view(primary: &KeyRecord, own: &KeyRecord) -> KeyRecord {
    KeyRecord {
        id: primary.id,
        created_ms: own.created_ms,
        description: own.description.clone(),
        // A key record this version cannot read leaves nothing usable in any region.
        state: if primary.state == crate::kms::KeyState::Unknown {
            crate::kms::KeyState::Unknown
        } else {
            own.state
        },
        deletion_ms: own.deletion_ms,
        pending_window_days: own.pending_window_days,
        tags: own.tags.clone(),
        policy: own.policy.clone(),
        account: own.account.clone(),
        region: own.region.clone(),
        ..primary.clone()
    }
}

impl<O, H: Clone> Snapshot<O, H> {
    /// The replica of key `id` in `region`, as an entry: its own record over the key
    /// record's shared fields, with the key record's backing keys.
    pub fn replica_entry(&self, id: &KeyId, region: &str) -> Option<KeyEntry<H>> {
        let primary = self.keys.get(id)?;
        let own = self.replicas.get(&(*id, region.to_string()))?;
        Some(KeyEntry {
            record: replica_view(&primary.record, own),
            cmks: primary.cmks.clone(),
            unbound: primary.unbound.clone(),
        })
    }

    /// The regions of key `id`'s replicas, in order.
    pub fn replica_regions(&self, id: &KeyId) -> Vec<String> {
        self.replicas
            .range((*id, String::new())..)
            .take_while(|((k, _), _)| k == id)
            .map(|((_, r), _)| r.clone())
            .collect()
    }

    /// Whether key `id` is Enabled in some region (its primary or a replica): its backing
    /// keys are usable in the token exactly then.
    pub fn enabled_anywhere(&self, id: &KeyId) -> bool {
        use crate::kms::KeyState::Enabled;
        self.keys.get(id).is_some_and(|e| e.record.state == Enabled)
            || self
                .replicas
                .range((*id, String::new())..)
                .take_while(|((k, _), _)| k == id)
                .any(|(_, r)| r.state == Enabled)
    }
}

/// Whether a replica record of `region` is one (not a leftover of the key record's region).
pub(super) fn is_replica_of(primary: Option<&KeyRecord>, region: &str) -> bool {
    primary.is_none_or(|p| p.region.as_deref() != Some(region))
}

impl<R: RecordBackend, K: BackingKeys> Store<R, K> {
    /// Writes a replica's record and puts it into the snapshot; destroys the versions it
    /// supersedes. Writer lock held.
    fn write_replica(&self, w: &mut WriterState<R::Object>, record: KeyRecord) -> Result<()> {
        let region = record
            .region
            .clone()
            .ok_or_else(|| KmsError::internal("a replica record without its region"))?;
        let at = (record.id, region.clone());
        let prev = self.read().replica_meta.get(&at).cloned();
        let label = self.next_label(
            Subject::Replica(region, record.id),
            prev.as_ref().map(|p| &p.0),
        );
        let value = Record::ReplicaV1(record.clone());
        let handle = self.write_record(&label, &value)?;
        w.seen.insert(label.format(), value);
        {
            let mut snap = self.write_snapshot(w);
            snap.replica_meta.insert(at.clone(), (label, vec![handle]));
            snap.claimed.insert(record.id);
            if is_replica_of(snap.keys.get(&record.id).map(|e| &e.record), &at.1) {
                snap.replicas.insert(at, record);
            }
        }
        if let Some((_, old)) = prev {
            for h in old {
                let _ = self.records.destroy(h);
            }
        }
        Ok(())
    }

    /// Creates a replica (ReplicateKey), as `rule` decides from the snapshot (the primary
    /// still there and replicable, no replica in that region yet), with this process's other
    /// writes held off.
    pub fn put_replica(
        &self,
        record: KeyRecord,
        rule: impl FnOnce(&Snapshot<R::Object, K::Key>) -> Result<()>,
    ) -> Result<()> {
        let mut w = self.lock_writer();
        rule(&self.read())?;
        self.write_replica(&mut w, record)?;
        self.announce(&mut w);
        Ok(())
    }

    /// Changes a replica's own record, as [`Store::update_key`] does a key's: `rule` sees the
    /// replica's entry and returns the new entry's record (only its own fields are kept);
    /// `then` runs with the new entry.
    pub fn update_replica(
        &self,
        id: &KeyId,
        region: &str,
        rule: impl FnOnce(&KeyEntry<K::Key>) -> Result<Change>,
        then: impl FnOnce(&KeyEntry<K::Key>) -> Result<()>,
    ) -> Result<KeyEntry<K::Key>> {
        let mut w = self.lock_writer();
        let current = self
            .read()
            .replica_entry(id, region)
            .ok_or_else(|| KmsError::not_found(format!("Key '{id}' does not exist")))?;
        let record = match rule(&current)? {
            Change::Keep => return Ok(current),
            Change::Write(r) => r,
        };
        let record = KeyRecord {
            region: Some(region.to_string()),
            ..record
        };
        self.write_replica(&mut w, record)?;
        let entry = self
            .read()
            .replica_entry(id, region)
            .ok_or_else(|| KmsError::internal("a replica just written is not in the snapshot"))?;
        if let Err(e) = then(&entry) {
            tracing::warn!(
                key_id = %id,
                region,
                error = e.message(),
                "the replica's new record is written, but the token's attributes could not be \
                 updated; every process reconciles them when it opens the token"
            );
        }
        self.announce(&mut w);
        Ok(entry)
    }

    /// UpdatePrimaryRegion: the replica in `region` becomes the primary and the primary a
    /// replica, as `rule` allows from the primary's and the replica's entries now. Three
    /// steps, ordered so that a crash between any two leaves the old or the new state (see
    /// the module's documentation).
    pub fn move_primary(
        &self,
        id: &KeyId,
        region: &str,
        rule: impl FnOnce(&KeyEntry<K::Key>, &KeyEntry<K::Key>) -> Result<()>,
    ) -> Result<()> {
        let mut w = self.lock_writer();
        let (primary, replica) = {
            let snap = self.read();
            let primary = snap
                .keys
                .get(id)
                .cloned()
                .ok_or_else(|| KmsError::not_found(format!("Key '{id}' does not exist")))?;
            let replica = snap.replica_entry(id, region).ok_or_else(|| {
                KmsError::not_found(format!(
                    "Key '{id}' has no replica in {region}: the primary region must already \
                     have a replica key"
                ))
            })?;
            (primary, replica)
        };
        rule(&primary, &replica)?;
        let old_region =
            primary.record.region.clone().ok_or_else(|| {
                KmsError::internal("a multi-Region key record without its region")
            })?;
        // 1. The old primary's own fields as a replica of its region (ignored while the key
        // record still names that region).
        self.write_replica(&mut w, primary.record.clone())?;
        // 2. The key record: the new primary's own fields, the shared ones as they are.
        let own = replica.record;
        let record = KeyRecord {
            created_ms: own.created_ms,
            description: own.description,
            state: own.state,
            deletion_ms: own.deletion_ms,
            pending_window_days: own.pending_window_days,
            tags: own.tags,
            policy: own.policy,
            account: own.account,
            region: Some(region.to_string()),
            ..primary.record.clone()
        };
        self.write_key(
            &mut w,
            KeyEntry {
                record,
                ..primary.clone()
            },
        )?;
        {
            // The old region's record of step 1 is a replica now; the new region's is not.
            let mut snap = self.write_snapshot(&mut w);
            snap.replicas.remove(&(*id, region.to_string()));
            let old_own = KeyRecord {
                region: Some(old_region.clone()),
                ..primary.record.clone()
            };
            snap.replicas.insert((*id, old_region), old_own);
        }
        // 3. The new primary's replica record is a leftover now.
        let gone = self
            .write_snapshot(&mut w)
            .replica_meta
            .remove(&(*id, region.to_string()));
        if let Some((_, objs)) = gone {
            for h in objs {
                self.records.destroy(h)?;
            }
        }
        self.announce(&mut w);
        Ok(())
    }

    /// Destroys a replica for good, if the token still says it is due (its records are read
    /// again first): the aliases `alias_here` picks among the key's (its region's), then its
    /// record objects. Never a backing key: the key record and the other regions keep them.
    pub fn destroy_replica_if(
        &self,
        id: &KeyId,
        region: &str,
        due: impl FnOnce(&KeyRecord) -> bool,
        alias_here: impl Fn(&AliasKey) -> bool,
    ) -> Result<bool> {
        let mut w = self.lock_writer();
        let mut objects = Vec::new();
        let mut best: Option<(RecordLabel, KeyRecord)> = None;
        for stored in self.records.list(APPLICATION, false)? {
            let Some(label) = RecordLabel::parse(&stored.label) else {
                continue;
            };
            if label.subject != Subject::Replica(region.to_string(), *id) {
                continue;
            }
            objects.push(stored.object);
            let Some(value) = self.records.read(stored.object)? else {
                continue;
            };
            if let Some(Record::ReplicaV1(r)) = Record::decode(&value) {
                if r.id == *id && best.as_ref().is_none_or(|(b, _)| label.rank() > b.rank()) {
                    best = Some((label, r));
                }
            }
        }
        let Some((_, record)) = best.filter(|(_, r)| due(r)) else {
            return Ok(false);
        };
        let aliases: Vec<(AliasKey, AliasRecord)> = self
            .read()
            .aliases_of(*id)
            .filter(|(n, _)| alias_here(n))
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect();
        for (name, alias) in aliases {
            self.write_alias(
                &mut w,
                &name,
                AliasRecord {
                    target: None,
                    ..alias
                },
            )?;
        }
        for h in objects {
            self.records.destroy(h)?;
        }
        {
            let mut snap = self.write_snapshot(&mut w);
            let at = (*id, region.to_string());
            snap.replicas.remove(&at);
            snap.replica_meta.remove(&at);
        }
        tracing::info!(
            key_id = %id,
            region,
            created_ms = record.created_ms,
            "destroyed a replica key past its deletion date (its backing keys stay with the key)"
        );
        self.announce(&mut w);
        Ok(true)
    }
}
