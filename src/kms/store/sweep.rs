//! Destruction: keys past their deletion date, orphaned backing keys, and re-binding a
//! backing key whose handle went stale. Each re-reads the token before it destroys anything.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::{BackingKeys, RecordBackend, Store, WriterState, SAFETY_NET_FACTOR};
use crate::error::Result;
use crate::hsm::Lookup;
use crate::kms::grant::GrantId;
use crate::kms::keyref::{AliasKey, KeyId};
use crate::kms::records::{
    cmk_id, cmk_label, parse_cmk_label, AliasRecord, KeyRecord, Record, RecordLabel, Subject,
    APPLICATION, CMK_LABEL_PREFIX,
};

/// The record objects of one key found in the token: its own, and its grants'.
struct TokenRecords<O> {
    records: Vec<O>,
    newest: Option<KeyRecord>,
    /// Every object of the key's grants (live or tombstones), oldest version first.
    grants: Vec<(GrantId, RecordLabel, O)>,
    /// The key's replica record objects and their regions (multi-Region keys).
    replicas: Vec<(String, O)>,
}

/// An unreferenced CMK is destroyed only after it has stayed unreferenced this long, so a
/// CreateKey in progress in another process is never swept.
const ORPHAN_GRACE: Duration = Duration::from_secs(600);

/// How often the periodic upkeep scans the token's CMKs for orphans (a scan reads every CMK's
/// label), or [`SAFETY_NET_FACTOR`] times as long as the last scan took if that is longer.
/// Orphans are destroyed between one and about one and a half grace periods after they appear.
const ORPHAN_SCAN_EVERY: Duration = Duration::from_secs(300);
/// The first periodic orphan scan of a process waits this long, so that it does not add to
/// the work of start-up (a process must live a grace period anyway to destroy an orphan).
const FIRST_ORPHAN_SCAN: Duration = Duration::from_secs(60);

/// The first periodic orphan scan runs [`FIRST_ORPHAN_SCAN`] after the store opens.
pub(super) fn schedule_first_scan<O>(w: &mut WriterState<O>) {
    w.last_orphan_scan = Instant::now().checked_sub(ORPHAN_SCAN_EVERY - FIRST_ORPHAN_SCAN);
}

impl<R: RecordBackend, K: BackingKeys> Store<R, K> {
    /// Every record object of key `id` in the token now, read afresh (not from the snapshot
    /// or the value cache), the newest readable record among them, and the objects of the
    /// key's grants (a grant's label names the grant, not its key: its value says which key,
    /// read once per label as on every re-list).
    fn token_records_of(
        &self,
        w: &mut WriterState<R::Object>,
        id: &KeyId,
    ) -> Result<TokenRecords<R::Object>> {
        let mut handles = Vec::new();
        let mut best: Option<(RecordLabel, KeyRecord)> = None;
        let mut grants = Vec::new();
        let mut replicas = Vec::new();
        for stored in self.records.list(APPLICATION, false)? {
            let handle = stored.object;
            let Some(label) = RecordLabel::parse(&stored.label) else {
                continue;
            };
            if let Subject::Replica(region, of) = &label.subject {
                if of == id {
                    replicas.push((region.clone(), handle));
                }
                continue;
            }
            if let Subject::Grant(g) = &label.subject {
                let record = match w.seen.get(&stored.label) {
                    Some(r) => Some(r.clone()),
                    None => self.records.read(handle)?.and_then(|v| Record::decode(&v)),
                };
                if let Some(Record::GrantV1(r)) = record {
                    if r.key_id == *id && r.grant_id == *g {
                        w.seen.insert(stored.label.clone(), Record::GrantV1(r));
                        grants.push((*g, label, handle));
                    }
                }
                continue;
            }
            if label.subject != Subject::Key(*id) {
                continue;
            }
            handles.push(handle);
            let Some(value) = self.records.read(handle)? else {
                continue;
            };
            if let Some(Record::KeyV1(r)) = Record::decode(&value) {
                if r.id == *id && best.as_ref().is_none_or(|(b, _)| label.rank() > b.rank()) {
                    best = Some((label, r));
                }
            }
        }
        grants.sort_by(|a, b| a.1.rank().cmp(&b.1.rank()));
        Ok(TokenRecords {
            records: handles,
            newest: best.map(|(_, r)| r),
            grants,
            replicas,
        })
    }

    /// Destroys a key for good, if the token still says it is due: its records are read
    /// again from the token first (another process may have cancelled the deletion since this
    /// snapshot was made), and `due` decides on what they say now. Then its aliases, grants,
    /// backing keys and records go, in that order, so a crash half-way leaves a record that
    /// the next sweep finishes. Returns whether the key was destroyed. Every destruction is
    /// logged.
    pub fn destroy_key_if(&self, id: &KeyId, due: impl FnOnce(&KeyRecord) -> bool) -> Result<bool> {
        let mut w = self.lock_writer();
        let TokenRecords {
            records: record_objects,
            newest,
            grants,
            replicas,
        } = self.token_records_of(&mut w, id)?;
        let Some(record) = newest.filter(|r| due(r)) else {
            return Ok(false);
        };
        // A multi-Region key's record (and its backing keys) stays while a replica of another
        // region is in the token: those regions still have the key.
        if replicas
            .iter()
            .any(|(r, _)| record.region.as_deref() != Some(r.as_str()))
        {
            return Ok(false);
        }
        let (aliases, cmks) = {
            let snap = self.read();
            let aliases: Vec<(AliasKey, AliasRecord)> = snap
                .aliases_of(*id)
                .map(|(n, a)| (n.clone(), a.clone()))
                .collect();
            (aliases, snap.keys.get(id).map(|e| e.cmks.clone()))
        };
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
        // Its grants, each grant's oldest object first, so that a crash half-way leaves at
        // worst a tombstone (or the key record, and the next sweep finishes).
        let mut gone_grants = HashSet::new();
        for (g, _, h) in &grants {
            self.records.destroy(*h)?;
            gone_grants.insert(*g);
        }
        {
            let mut snap = self.write_snapshot(&mut w);
            let indexed: Vec<GrantId> = snap.grants_of(*id).map(|g| g.grant_id).collect();
            for g in indexed.iter().chain(gone_grants.iter()) {
                snap.unindex_grant(g);
                snap.grant_meta.remove(g);
            }
        }
        if !gone_grants.is_empty() {
            tracing::info!(
                key_id = %id,
                grants = gone_grants.len(),
                "destroyed the grants of a key past its deletion date"
            );
        }
        for v in &record.versions {
            let label = cmk_label(id, v.version);
            // The bound handle, and anything else under the label (the key is going).
            let mut handles = self.keys.find_all(&label)?;
            if let Some(h) = cmks.as_ref().and_then(|m| m.get(&v.version)) {
                if !handles.contains(h) {
                    handles.push(*h);
                }
            }
            for h in handles {
                self.keys.destroy(h)?;
                tracing::warn!(
                    target: "p11kms::custody",
                    key_id = %id,
                    label,
                    "destroyed a backing key: its key was scheduled for deletion and is past its \
                     deletion date"
                );
            }
        }
        // A leftover replica record of the key record's own region (an UpdatePrimaryRegion
        // stopped half-way) goes before the key record that makes it one.
        for (_, h) in replicas {
            self.records.destroy(h)?;
        }
        for h in record_objects {
            self.records.destroy(h)?;
        }
        let old = {
            let mut snap = self.write_snapshot(&mut w);
            snap.replica_meta.retain(|(k, _), _| k != id);
            snap.replicas.retain(|(k, _), _| k != id);
            snap.key_meta.remove(id);
            snap.claimed.remove(id);
            snap.keys.remove(id)
        };
        drop(old);
        self.announce(&mut w);
        Ok(true)
    }

    /// Binds a backing key again after the token said its handle is stale (another process
    /// re-created it, or the token was re-opened); the new object must prove itself like any.
    pub fn relocate_cmk(&self, id: &KeyId, version: u32) -> Result<Lookup<K::Key>> {
        let kind = match self.read().keys.get(id).map(|e| e.record.backing_kind()) {
            Some(k) => k?,
            None => return Ok(Lookup::Missing),
        };
        let lookup = self
            .keys
            .find(&cmk_label(id, version), &cmk_id(id, version), kind)?;
        let mut w = self.lock_writer();
        let mut snap = self.write_snapshot(&mut w);
        if let Some(e) = snap.keys.get_mut(id) {
            match &lookup {
                Lookup::Found(h) => {
                    e.cmks.insert(version, *h);
                    e.unbound.remove(&version);
                }
                Lookup::Missing => {
                    e.cmks.remove(&version);
                    e.unbound.insert(
                        version,
                        format!(
                            "the backing key {} is not in the token",
                            cmk_label(id, version)
                        ),
                    );
                }
                Lookup::Refused(why) => {
                    e.cmks.remove(&version);
                    e.unbound.insert(version, why.clone());
                }
            }
        }
        Ok(lookup)
    }

    /// Destroys CMK objects that no key record references and that have stayed so for
    /// [`ORPHAN_GRACE`] (left by a CreateKey that died between the two steps). Returns how
    /// many were destroyed, and how many are waiting out their grace.
    /// Scans at most every [`ORPHAN_SCAN_EVERY`] (the scan reads every CMK's label); calls in
    /// between return (0, 0).
    pub fn sweep_orphan_cmks(&self) -> Result<(usize, usize)> {
        {
            let w = self.lock_writer();
            let every = ORPHAN_SCAN_EVERY.max(w.last_orphan_took * SAFETY_NET_FACTOR);
            if w.last_orphan_scan.is_some_and(|t| t.elapsed() < every) {
                return Ok((0, 0));
            }
        }
        let started = Instant::now();
        let r = self.sweep_orphan_cmks_after(ORPHAN_GRACE);
        let mut w = self.lock_writer();
        w.last_orphan_scan = Some(Instant::now());
        w.last_orphan_took = started.elapsed();
        r
    }

    /// [`Store::sweep_orphan_cmks`] with another grace period (tests, `token sweep`). A CMK
    /// is an orphan only if its label is exactly ours and no record object of its key exists,
    /// readable or not; before anything is destroyed the token's records are listed again.
    pub fn sweep_orphan_cmks_after(&self, grace: Duration) -> Result<(usize, usize)> {
        let cmks = self.keys.list(CMK_LABEL_PREFIX)?;
        let mut w = self.lock_writer();
        let claimed = self.read().claimed.clone();
        let now = Instant::now();
        let mut waiting = 0;
        let mut still = HashMap::new();
        let mut due = Vec::new();
        for (label, handle) in cmks {
            // A label we cannot read as ours (a newer version's?) is not ours to destroy.
            let Some((id, _)) = parse_cmk_label(&label) else {
                continue;
            };
            if claimed.contains(&id) {
                continue;
            }
            let first = w.orphans.get(&label).copied().unwrap_or(now);
            if now.duration_since(first) >= grace {
                due.push((id, label, handle));
            } else {
                waiting += 1;
                still.insert(label, first);
            }
        }
        let mut destroyed = 0;
        if !due.is_empty() {
            let recorded: HashSet<KeyId> = self
                .records
                .list(APPLICATION, false)?
                .iter()
                .filter_map(|s| match RecordLabel::parse(&s.label)?.subject {
                    Subject::Key(id) | Subject::Replica(_, id) => Some(id),
                    Subject::Alias(_) | Subject::Grant(_) => None,
                })
                .collect();
            for (id, label, handle) in due {
                if recorded.contains(&id) {
                    continue;
                }
                self.keys.destroy(handle)?;
                destroyed += 1;
                tracing::warn!(
                    target: "p11kms::custody",
                    key_id = %id,
                    label,
                    grace_s = grace.as_secs(),
                    "destroyed an orphaned backing key: no record of its key exists in the token \
                     (a CreateKey that was interrupted before writing its record)"
                );
            }
        }
        w.orphans = still;
        Ok((destroyed, waiting))
    }
}
