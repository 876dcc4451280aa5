//! The metadata store: key and alias records kept in the token, cached in memory.
//!
//! The token is the single source of truth. Reads on a request path only touch the in-memory
//! snapshot; [`Store::refresh`] (started at open and then every `metadata_refresh`) re-reads the
//! token's object list, reading the value of an object only the first time its label is seen
//! (record objects are immutable), so other processes' changes appear within one interval.
//!
//! Crash safety: a change writes a complete new record object before it destroys the old
//! ones. A crash at any point leaves the old record (new one not created), or both (the newer
//! one wins and the older is swept at the next refresh). CreateKey generates the CMK before
//! its record: a crash between leaves an unreferenced CMK that no operation can see, swept
//! after a grace period.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use crate::error::{KmsError, Result};
use crate::hsm::{CmkHandle, DataHandle, Token};
use crate::kms::keyref::{AliasName, KeyId};
use crate::kms::records::{
    AliasRecord, KeyRecord, Record, RecordLabel, Subject, APPLICATION, CMK_LABEL_PREFIX,
};

/// An unreferenced CMK is destroyed only after it has stayed unreferenced this long, so a
/// CreateKey in progress in another process is never swept.
const ORPHAN_GRACE: Duration = Duration::from_secs(600);

/// A key as the request path needs it.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub record: KeyRecord,
    /// Token handles of the backing keys by version.
    pub cmks: BTreeMap<u32, CmkHandle>,
}

/// The in-memory view of the token's metadata.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub keys: BTreeMap<KeyId, KeyEntry>,
    pub aliases: BTreeMap<AliasName, AliasRecord>,
    key_meta: HashMap<KeyId, (RecordLabel, Vec<DataHandle>)>,
    alias_meta: HashMap<AliasName, (RecordLabel, Vec<DataHandle>, bool)>,
}

impl Snapshot {
    /// Aliases that point at `id`, in name order.
    pub fn aliases_of(&self, id: KeyId) -> impl Iterator<Item = (&AliasName, &AliasRecord)> {
        self.aliases
            .iter()
            .filter(move |(_, a)| a.target == Some(id))
    }
}

/// Every object holding a version of one subject's record, and the newest among them.
struct Versions<R> {
    best: RecordLabel,
    record: R,
    objs: Vec<(RecordLabel, DataHandle)>,
}

impl<R> Versions<R> {
    fn offer<K>(
        slot: std::collections::hash_map::Entry<'_, K, Versions<R>>,
        label: RecordLabel,
        record: R,
        handle: DataHandle,
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

pub struct Store {
    token: std::sync::Arc<Token>,
    snapshot: RwLock<Snapshot>,
    /// Serialises this process's writes and refreshes (reads never take it).
    writer: Mutex<WriterState>,
    writer_tag: String,
}

#[derive(Default)]
struct WriterState {
    /// Parsed record values by object label: objects never change, so one read is enough.
    seen: HashMap<String, Record>,
    /// When each unreferenced CMK label was first seen unreferenced.
    orphans: HashMap<String, Instant>,
}

impl Store {
    /// Loads every record from the token.
    pub fn open(token: std::sync::Arc<Token>) -> Result<Store> {
        let mut tag = [0u8; 4];
        token.random_fill(&mut tag)?;
        let store = Store {
            token,
            snapshot: RwLock::new(Snapshot::default()),
            writer: Mutex::new(WriterState::default()),
            writer_tag: tag.iter().map(|b| format!("{b:02x}")).collect(),
        };
        store.refresh()?;
        Ok(store)
    }

    pub fn read(&self) -> Result<RwLockReadGuard<'_, Snapshot>> {
        self.snapshot
            .read()
            .map_err(|_| KmsError::Internal("metadata cache poisoned".into()))
    }

    fn lock_writer(&self) -> Result<std::sync::MutexGuard<'_, WriterState>> {
        self.writer
            .lock()
            .map_err(|_| KmsError::Internal("metadata writer poisoned".into()))
    }

    fn write_snapshot(&self) -> Result<std::sync::RwLockWriteGuard<'_, Snapshot>> {
        self.snapshot
            .write()
            .map_err(|_| KmsError::Internal("metadata cache poisoned".into()))
    }

    /// Re-reads the token's records: picks up other processes' changes, sweeps superseded
    /// record objects. Returns the ids of keys whose record changed.
    pub fn refresh(&self) -> Result<Vec<KeyId>> {
        let mut w = self.lock_writer()?;
        let objects = self.token.list_data(APPLICATION)?;
        let mut live_labels = std::collections::HashSet::new();
        let mut keys: HashMap<KeyId, Versions<KeyRecord>> = HashMap::new();
        let mut aliases: HashMap<AliasName, Versions<AliasRecord>> = HashMap::new();
        for obj in objects {
            let Some(label) = RecordLabel::parse(&obj.label) else {
                continue;
            };
            live_labels.insert(obj.label.clone());
            let record = match w.seen.get(&obj.label) {
                Some(r) => r.clone(),
                None => {
                    let Some(value) = self.token.read_data(obj.handle)? else {
                        continue;
                    };
                    // Incomplete or foreign values are skipped, and re-read next time.
                    let Some(r) = Record::decode(&value) else {
                        continue;
                    };
                    w.seen.insert(obj.label.clone(), r.clone());
                    r
                }
            };
            match (&label.subject, record) {
                (Subject::Key(id), Record::KeyV1(r)) if r.id == *id => {
                    Versions::offer(keys.entry(*id), label, r, obj.handle);
                }
                (Subject::Alias(name), Record::AliasV1(r)) if r.name == name.as_str() => {
                    Versions::offer(aliases.entry(name.clone()), label, r, obj.handle);
                }
                _ => {}
            }
        }
        w.seen.retain(|l, _| live_labels.contains(l));

        // CMK handles: reuse known ones, look up only keys new to this process.
        let old_cmks: HashMap<KeyId, BTreeMap<u32, CmkHandle>> = {
            let snap = self.read()?;
            snap.keys
                .iter()
                .map(|(id, e)| (*id, e.cmks.clone()))
                .collect()
        };
        let mut next = Snapshot::default();
        let mut changed = Vec::new();
        let mut superseded = Vec::new();
        for (id, Versions { best, record, objs }) in keys {
            let mut cmks = old_cmks.get(&id).cloned().unwrap_or_default();
            for v in &record.versions {
                if let std::collections::btree_map::Entry::Vacant(slot) = cmks.entry(v.version) {
                    if let Some(h) = self.token.find_cmk(&record.cmk_label(v.version))? {
                        slot.insert(h);
                    }
                }
            }
            superseded.extend(objs.iter().filter(|(l, _)| *l != best).map(|(_, h)| *h));
            let handles = objs.into_iter().map(|(_, h)| h).collect();
            next.key_meta.insert(id, (best, handles));
            next.keys.insert(id, KeyEntry { record, cmks });
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
        {
            let mut snap = self.write_snapshot()?;
            for (id, e) in &next.keys {
                if snap.keys.get(id).map(|o| &o.record) != Some(&e.record) {
                    changed.push(*id);
                }
            }
            changed.extend(snap.keys.keys().filter(|id| !next.keys.contains_key(id)));
            *snap = next;
        }
        drop(w);
        // Best effort: a superseded object another process already removed is fine.
        for h in superseded {
            let _ = self.token.destroy_data(h);
        }
        Ok(changed)
    }

    fn write_record(&self, label: &RecordLabel, record: &Record) -> Result<DataHandle> {
        self.token
            .create_data(APPLICATION, &label.format(), &record.encode())
    }

    fn next_label(&self, subject: Subject, prev: Option<&RecordLabel>) -> RecordLabel {
        RecordLabel {
            subject,
            seq: prev.map_or(1, |l| l.seq + 1),
            writer: self.writer_tag.clone(),
        }
    }

    /// Writes a key's new record (creating the key if it is new).
    pub fn put_key(&self, record: KeyRecord, cmks: BTreeMap<u32, CmkHandle>) -> Result<()> {
        let mut w = self.lock_writer()?;
        let prev = self.read()?.key_meta.get(&record.id).cloned();
        let label = self.next_label(Subject::Key(record.id), prev.as_ref().map(|p| &p.0));
        let value = Record::KeyV1(record.clone());
        let handle = self.write_record(&label, &value)?;
        w.seen.insert(label.format(), value);
        drop(w);
        {
            let mut snap = self.write_snapshot()?;
            snap.key_meta.insert(record.id, (label, vec![handle]));
            snap.keys.insert(record.id, KeyEntry { record, cmks });
        }
        if let Some((_, old)) = prev {
            for h in old {
                let _ = self.token.destroy_data(h);
            }
        }
        Ok(())
    }

    /// Writes an alias (create or update), or with `target: None` deletes it.
    pub fn put_alias(&self, name: &AliasName, record: AliasRecord) -> Result<()> {
        let mut w = self.lock_writer()?;
        let prev = self.read()?.alias_meta.get(name).cloned();
        let label = self.next_label(Subject::Alias(name.clone()), prev.as_ref().map(|p| &p.0));
        let value = Record::AliasV1(record.clone());
        let handle = self.write_record(&label, &value)?;
        w.seen.insert(label.format(), value);
        drop(w);
        let live = record.target.is_some();
        {
            let mut snap = self.write_snapshot()?;
            snap.alias_meta
                .insert(name.clone(), (label, vec![handle], live));
            if live {
                snap.aliases.insert(name.clone(), record);
            } else {
                snap.aliases.remove(name);
            }
        }
        if let Some((_, old, _)) = prev {
            for h in old {
                let _ = self.token.destroy_data(h);
            }
        }
        // A tombstone has done its job once the older versions are gone.
        if !live {
            self.token.destroy_data(handle)?;
            self.write_snapshot()?.alias_meta.remove(name);
        }
        Ok(())
    }

    /// Removes a key for good: its aliases, backing keys, then its records (in that order, so
    /// a crash half-way leaves a record that the next sweep finishes).
    pub fn destroy_key(&self, id: &KeyId) -> Result<()> {
        let (aliases, entry, meta) = {
            let snap = self.read()?;
            let aliases: Vec<AliasName> = snap.aliases_of(*id).map(|(n, _)| n.clone()).collect();
            (
                aliases,
                snap.keys.get(id).cloned(),
                snap.key_meta.get(id).cloned(),
            )
        };
        for name in aliases {
            // Bind first: an `if let` scrutinee would hold the read guard across the write.
            let current = self.read()?.aliases.get(&name).cloned();
            if let Some(a) = current {
                self.put_alias(&name, AliasRecord { target: None, ..a })?;
            }
        }
        if let Some(entry) = entry {
            for v in &entry.record.versions {
                match entry.cmks.get(&v.version) {
                    Some(h) => self.token.destroy_cmk(*h)?,
                    None => {
                        if let Some(h) = self.token.find_cmk(&entry.record.cmk_label(v.version))? {
                            self.token.destroy_cmk(h)?;
                        }
                    }
                }
            }
        }
        let _w = self.lock_writer()?;
        if let Some((_, handles)) = meta {
            for h in handles {
                self.token.destroy_data(h)?;
            }
        }
        let mut snap = self.write_snapshot()?;
        snap.keys.remove(id);
        snap.key_meta.remove(id);
        Ok(())
    }

    /// Replaces a cached CMK handle after the token said the old one is stale.
    pub fn relocate_cmk(&self, id: &KeyId, version: u32) -> Result<Option<CmkHandle>> {
        let label = crate::kms::records::cmk_label(id, version);
        let found = self.token.find_cmk(&label)?;
        let mut snap = self.write_snapshot()?;
        if let Some(e) = snap.keys.get_mut(id) {
            match found {
                Some(h) => {
                    e.cmks.insert(version, h);
                }
                None => {
                    e.cmks.remove(&version);
                }
            }
        }
        Ok(found)
    }

    /// Destroys CMK objects that no key record references and that have stayed so for
    /// [`ORPHAN_GRACE`] (left by a CreateKey that died between the two steps). Returns how
    /// many were destroyed, and how many are waiting out their grace.
    pub fn sweep_orphan_cmks(&self) -> Result<(usize, usize)> {
        self.sweep_orphan_cmks_after(ORPHAN_GRACE)
    }

    pub fn sweep_orphan_cmks_after(&self, grace: Duration) -> Result<(usize, usize)> {
        let cmks = self.token.list_cmks(CMK_LABEL_PREFIX)?;
        let mut w = self.lock_writer()?;
        let snap = self.read()?;
        let referenced = |label: &str| {
            let Some((id, version)) = label
                .strip_prefix(CMK_LABEL_PREFIX)
                .and_then(|rest| rest.split_once(":v"))
            else {
                return false;
            };
            let (Ok(id), Ok(version)) = (id.parse::<KeyId>(), version.parse::<u32>()) else {
                return false;
            };
            snap.keys
                .get(&id)
                .is_some_and(|e| e.record.versions.iter().any(|v| v.version == version))
        };
        let now = Instant::now();
        let mut destroyed = 0;
        let mut waiting = 0;
        let mut still = HashMap::new();
        for (label, handle) in cmks {
            if referenced(&label) {
                continue;
            }
            let first = w.orphans.get(&label).copied().unwrap_or(now);
            if now.duration_since(first) >= grace {
                self.token.destroy_cmk(handle)?;
                destroyed += 1;
            } else {
                waiting += 1;
                still.insert(label, first);
            }
        }
        w.orphans = still;
        Ok((destroyed, waiting))
    }
}
