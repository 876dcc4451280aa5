//! Re-listing the records: the newest version of each subject, superseded versions swept,
//! new backing keys bound once the token proves them genuine.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use super::backend::Stored;
use super::{BackingKeys, KeyEntry, RecordBackend, Snapshot, Store, WriterState};
use crate::error::Result;
use crate::hsm::{BackingKind, CmkAttributes, Listed, Lookup};
use crate::kms::grant::GrantId;
use crate::kms::keyref::{AliasKey, KeyId};
use crate::kms::records::{
    cmk_id, cmk_label, parse_cmk_label, AliasRecord, GrantRecord, KeyRecord, Record, RecordLabel,
    Subject, APPLICATION, CMK_LABEL_PREFIX,
};

/// Re-listing looks CMKs up one search each up to this many new ones, else lists them all.
const CMK_SEARCHES: usize = 4;

/// Every object holding a version of one subject's record, and the newest among them.
struct Versions<R, O> {
    best: RecordLabel,
    record: R,
    objs: Vec<(RecordLabel, O)>,
}

impl<R, O> Versions<R, O> {
    fn offer<S>(
        slot: std::collections::hash_map::Entry<'_, S, Versions<R, O>>,
        label: RecordLabel,
        record: R,
        handle: O,
    ) {
        use std::collections::hash_map::Entry;
        match slot {
            Entry::Vacant(v) => {
                v.insert(Versions {
                    best: label.clone(),
                    record,
                    objs: vec![(label, handle)],
                });
            }
            Entry::Occupied(mut o) => {
                let v = o.get_mut();
                if label.rank() > v.best.rank() {
                    v.best = label.clone();
                    v.record = record;
                }
                v.objs.push((label, handle));
            }
        }
    }
}

impl<R: RecordBackend, K: BackingKeys> Store<R, K> {
    /// Re-reads the token's records (the stamp was read before, so a change that lands during
    /// the listing is seen again next time), sweeps superseded record objects and duplicate
    /// generation objects. Returns the ids of keys whose record changed.
    pub(super) fn relist(
        &self,
        w: &mut WriterState<R::Object>,
        stamp_before: Option<String>,
    ) -> Result<Vec<KeyId>> {
        let started = Instant::now();
        let first_load = w.seen.is_empty() && w.last_full.is_none();
        // A first load needs every value: label and value in one read per object.
        let listed = self.records.list(APPLICATION, first_load)?;
        let mut live_labels = HashSet::new();
        let mut claimed = HashSet::new();
        let mut keys: HashMap<KeyId, Versions<KeyRecord, R::Object>> = HashMap::new();
        let mut aliases: HashMap<AliasKey, Versions<AliasRecord, R::Object>> = HashMap::new();
        let mut grants: HashMap<GrantId, Versions<GrantRecord, R::Object>> = HashMap::new();
        let mut replicas: HashMap<(KeyId, String), Versions<KeyRecord, R::Object>> = HashMap::new();
        for Stored {
            object: handle,
            label: obj_label,
            value,
        } in listed
        {
            let Some(label) = RecordLabel::parse(&obj_label) else {
                continue;
            };
            live_labels.insert(obj_label.clone());
            if let Subject::Key(id) | Subject::Replica(_, id) = &label.subject {
                // Whatever its value says: a key with a record object keeps its backing keys.
                claimed.insert(*id);
            }
            let record = match w.seen.get(&obj_label) {
                Some(r) => r.clone(),
                None => {
                    let value = match value {
                        Some(v) => v,
                        None => match self.records.read(handle)? {
                            Some(v) => v,
                            None => continue,
                        },
                    };
                    // Incomplete or foreign values are skipped, and re-read next time.
                    let Some(r) = Record::decode(&value) else {
                        continue;
                    };
                    w.seen.insert(obj_label.clone(), r.clone());
                    r
                }
            };
            match (&label.subject, record) {
                (Subject::Key(id), Record::KeyV1(r)) if r.id == *id => {
                    Versions::offer(keys.entry(*id), label, r, handle);
                }
                (Subject::Alias(name), Record::AliasV1(r))
                    if r.name == name.name.as_str() && r.owner == name.owner =>
                {
                    Versions::offer(aliases.entry(name.clone()), label, r, handle);
                }
                (Subject::Grant(id), Record::GrantV1(r)) if r.grant_id == *id => {
                    Versions::offer(grants.entry(*id), label, r, handle);
                }
                (Subject::Replica(region, id), Record::ReplicaV1(r))
                    if r.id == *id && r.region.as_deref() == Some(region.as_str()) =>
                {
                    let at = (*id, region.clone());
                    Versions::offer(replicas.entry(at), label, r, handle);
                }
                _ => {}
            }
        }
        w.seen.retain(|l, _| live_labels.contains(l));

        // CMK handles: reuse known ones; find new ones one search each if few, else list
        // them all at once (a search costs as much as listing on SoftHSM: it visits every
        // object). Every new handle is bound only once the token proves it genuine.
        let old_cmks: HashMap<KeyId, BTreeMap<u32, K::Key>> = {
            let snap = self.read();
            snap.keys
                .iter()
                .map(|(id, e)| (*id, e.cmks.clone()))
                .collect()
        };
        let missing: usize = keys
            .iter()
            .map(|(id, v)| {
                v.record
                    .versions
                    .iter()
                    .filter(|b| !old_cmks.get(id).is_some_and(|m| m.contains_key(&b.version)))
                    .count()
            })
            .sum();
        let listed_cmks: Option<HashMap<String, Vec<Listed<K::Key>>>> =
            if first_load || missing > CMK_SEARCHES {
                let all = self.keys.list_detailed(CMK_LABEL_PREFIX)?;
                if first_load {
                    w.initial_derive = all
                        .iter()
                        .filter_map(|c| {
                            let (id, v) = parse_cmk_label(&c.label)?;
                            let kind = keys.get(&id)?.record.backing_kind().ok()?;
                            Some(((id, v), c.attributes.usable(kind)))
                        })
                        .collect();
                }
                let mut by_label: HashMap<String, Vec<Listed<K::Key>>> = HashMap::new();
                for c in all {
                    by_label.entry(c.label.clone()).or_default().push(c);
                }
                Some(by_label)
            } else {
                None
            };
        let mut next = Snapshot {
            claimed,
            ..Snapshot::default()
        };
        let mut changed = Vec::new();
        let mut superseded = Vec::new();
        for (id, Versions { best, record, objs }) in keys {
            let mut cmks = old_cmks.get(&id).cloned().unwrap_or_default();
            let mut unbound = BTreeMap::new();
            let kind = match record.backing_kind() {
                Ok(k) => k,
                Err(e) => {
                    for v in &record.versions {
                        unbound.insert(v.version, e.message().to_string());
                    }
                    BackingKind::Derive
                }
            };
            for v in &record.versions {
                if unbound.contains_key(&v.version) {
                    continue;
                }
                if cmks.contains_key(&v.version) {
                    continue;
                }
                let label = cmk_label(&id, v.version);
                let expected = cmk_id(&id, v.version);
                let lookup = match &listed_cmks {
                    // A listing taken while another writer creates objects can miss one on
                    // some tokens: a key found missing in it is searched for once more.
                    Some(map) => match lookup_listed(
                        map.get(&label).map(Vec::as_slice),
                        &label,
                        &expected,
                        kind,
                    ) {
                        Lookup::Missing => self.keys.find(&label, &expected, kind)?,
                        found => found,
                    },
                    None => self.keys.find(&label, &expected, kind)?,
                };
                match lookup {
                    Lookup::Found(h) => {
                        cmks.insert(v.version, h);
                    }
                    Lookup::Missing => {
                        unbound.insert(
                            v.version,
                            format!("the backing key {label} is not in the token"),
                        );
                    }
                    Lookup::Refused(why) => {
                        unbound.insert(v.version, why);
                    }
                }
            }
            superseded.extend(objs.iter().filter(|(l, _)| *l != best).map(|(_, h)| *h));
            let handles = objs.into_iter().map(|(_, h)| h).collect();
            next.key_meta.insert(id, (best, handles));
            next.keys.insert(
                id,
                KeyEntry {
                    record,
                    cmks,
                    unbound,
                },
            );
        }
        for (name, Versions { best, record, objs }) in aliases {
            superseded.extend(objs.iter().filter(|(l, _)| *l != best).map(|(_, h)| *h));
            let handles = objs.into_iter().map(|(_, h)| h).collect();
            let live = record.target.is_some();
            next.alias_meta.insert(name.clone(), (best, handles, live));
            if live {
                next.aliases.insert(name, record);
            }
        }
        for (id, Versions { best, record, objs }) in grants {
            superseded.extend(objs.iter().filter(|(l, _)| *l != best).map(|(_, h)| *h));
            let handles = objs.into_iter().map(|(_, h)| h).collect();
            next.grant_meta.insert(id, (best, handles));
            // A lone tombstone is kept: destroying it on the strength of a listing that may
            // have missed the grant's own object could bring a revoked grant back.
            if record.deleted_ms.is_none() {
                next.index_grant(record);
            }
        }
        for (at, Versions { best, record, objs }) in replicas {
            superseded.extend(objs.iter().filter(|(l, _)| *l != best).map(|(_, h)| *h));
            let handles = objs.into_iter().map(|(_, h)| h).collect();
            next.replica_meta.insert(at.clone(), (best, handles));
            if super::replicas::is_replica_of(next.keys.get(&at.0).map(|e| &e.record), &at.1) {
                next.replicas.insert(at, record);
            }
        }
        let old = {
            let mut snap = self.write_snapshot(w);
            for (at, r) in &next.replicas {
                if snap.replicas.get(at) != Some(r) {
                    changed.push(at.0);
                }
            }
            changed.extend(
                snap.replicas
                    .keys()
                    .filter(|at| !next.replicas.contains_key(*at))
                    .map(|at| at.0),
            );
            for (id, e) in &next.keys {
                if snap.keys.get(id).map(|o| &o.record) != Some(&e.record) {
                    changed.push(*id);
                }
            }
            changed.extend(snap.keys.keys().filter(|id| !next.keys.contains_key(id)));
            std::mem::replace(&mut *snap, next)
        };
        drop(old);
        w.last_full = Some(Instant::now());
        w.last_full_took = started.elapsed();
        self.counts.relists.observe(w.last_full_took);
        self.caught_up();
        w.current = stamp_before;
        // Best effort: a superseded object another process already removed is fine.
        for h in superseded {
            let _ = self.records.destroy(h);
        }
        Ok(changed)
    }
}

/// Binds a listed CMK: exactly one object under the label, proven genuine.
fn lookup_listed<H: Copy>(
    found: Option<&[Listed<H>]>,
    label: &str,
    expected: &[u8],
    kind: BackingKind,
) -> Lookup<H> {
    let found: Vec<(H, CmkAttributes)> = found
        .unwrap_or_default()
        .iter()
        .map(|c| (c.handle, c.attributes.clone()))
        .collect();
    Lookup::judge(label, &found, expected, kind)
}
