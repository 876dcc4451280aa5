//! The metadata store: key and alias records kept in the token, cached in memory.
//!
//! The token is the single source of truth. Reads on a request path only touch the in-memory
//! snapshot. Other processes' changes are picked up by [`Store::refresh`] (at open, then every
//! `metadata_refresh`), which is cheap when nothing changed:
//!
//! - **Change detector.** One `CKO_DATA` object, the *generation object*, carries a stamp in its
//!   label (`p11kms:generation:<counter>:<writer>`). Every write (by any process) ends by
//!   relabelling it with the next counter. A refresh reads that one label (one
//!   `C_GetAttributeValue` on a known handle, whatever the size of the token) and re-lists the
//!   token only when the stamp differs from the one its snapshot was built at.
//! - **Re-listing** finds every p11kms data object and reads the value of an object only the
//!   first time its label is seen (record objects are immutable). It also runs every
//!   [`FULL_REFRESH_EVERY`] whatever the stamp says, as a safety net for a writer that died
//!   between its record and its stamp.
//! - **Lost stamps.** Relabelling is a blind write: two processes bumping at the same moment
//!   may write the same counter, and one stamp is lost. Each writer remembers its last stamp;
//!   its next refresh (or a read-back right after the write) notices a different stamp with a
//!   counter not above its own and bumps again, so the others re-list. Worst case, a change is
//!   seen after two refresh intervals; a short-lived writer (a CLI command) that collides and
//!   exits is covered by the periodic re-list.
//! - **Finding it.** The generation object has its own `CKA_APPLICATION`, so finding it does
//!   not read the records; at open its stamp is read *before* the records are listed, so the
//!   snapshot is known current from the start. Two processes opening a brand-new token at
//!   once may each create one: whoever looks last keeps the one with the smallest (random,
//!   immutable) value, destroys the other and bumps the survivor; a process watching a
//!   destroyed one gets a stale handle at its next refresh and looks again.
//!
//! Writes in one process are serialised by the writer lock, and each is decided there: the
//! caller's rule (does the alias exist? may this key change state?) runs against the snapshot
//! under that lock, and the snapshot is updated before the lock is released, so of two
//! concurrent CreateAlias calls for one name exactly one succeeds. The rules themselves are
//! plain functions: no token call and no callback into the service runs under a snapshot
//! lock, and the snapshot is only ever written with the writer lock held.
//!
//! Nothing is destroyed on the strength of the snapshot alone: before a key past its deletion
//! date or an orphaned backing key is destroyed, the token's record objects are read again.
//!
//! Crash safety: a change writes a complete new record object before it destroys the old
//! ones, then bumps the stamp. A crash at any point leaves the old record (new one not
//! created), or both (the newer one wins and the older is swept at the next refresh), with or
//! without the stamp. CreateKey generates the CMK before its record: a crash between leaves an
//! unreferenced CMK that no operation can see, swept after a grace period.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::error::{KmsError, Result};
use crate::hsm::{CmkAttributes, CmkHandle, CmkLookup, DataHandle, DataObject, ListedCmk, Token};
use crate::kms::keyref::{AliasName, KeyId};
use crate::kms::records::{
    cmk_id, cmk_label, parse_cmk_label, AliasRecord, KeyRecord, Record, RecordLabel, Subject,
    APPLICATION, CMK_LABEL_PREFIX,
};
use crate::sync;

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

/// A full re-list happens at least this often even when the stamp says nothing changed, or
/// [`SAFETY_NET_FACTOR`] times as long as the last re-list took, whichever is longer (so the
/// safety net costs at most 1% of a core however large the token grows).
pub const FULL_REFRESH_EVERY: Duration = Duration::from_secs(60);
const SAFETY_NET_FACTOR: u32 = 100;

/// Label prefix of the generation object (not a record: `RecordLabel::parse` ignores it).
const GENERATION_PREFIX: &str = "p11kms:generation:";
/// `CKA_APPLICATION` of the generation object: its own, so that finding it does not list
/// (or cost reading) the records.
const GENERATION_APPLICATION: &str = "p11kms-generation";

/// Re-listing looks CMKs up one search each up to this many new ones, else lists them all.
const CMK_SEARCHES: usize = 4;

/// A generation stamp: (counter, writer tag).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    counter: u64,
    writer: String,
}

impl Stamp {
    fn parse(label: &str) -> Option<Stamp> {
        let (counter, writer) = label.strip_prefix(GENERATION_PREFIX)?.split_once(':')?;
        Some(Stamp {
            counter: counter.parse().ok()?,
            writer: writer.to_owned(),
        })
    }

    fn format(&self) -> String {
        format!("{GENERATION_PREFIX}{:020}:{}", self.counter, self.writer)
    }
}

/// A key as the request path needs it.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub record: KeyRecord,
    /// Token handles of the backing keys by version, each proven genuine when it was bound.
    pub cmks: BTreeMap<u32, CmkHandle>,
    /// Versions without a usable backing key, and why (missing, or refused: see
    /// [`CmkLookup::Refused`]). Answered as `KeyUnavailableException` without a token search.
    pub unbound: BTreeMap<u32, String>,
}

/// The in-memory view of the token's metadata.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub keys: BTreeMap<KeyId, KeyEntry>,
    pub aliases: BTreeMap<AliasName, AliasRecord>,
    key_meta: HashMap<KeyId, (RecordLabel, Vec<DataHandle>)>,
    alias_meta: HashMap<AliasName, (RecordLabel, Vec<DataHandle>, bool)>,
    /// Every key id with at least one record object in the token, readable or not: its
    /// backing keys are never orphans.
    claimed: HashSet<KeyId>,
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
    token: Arc<Token>,
    snapshot: RwLock<Snapshot>,
    /// Serialises this process's writes and refreshes (reads never take it). Every write of
    /// the snapshot happens with it held.
    writer: Mutex<WriterState>,
    writer_tag: String,
}

#[derive(Default)]
struct WriterState {
    /// Parsed record values by object label: objects never change, so one read is enough.
    seen: HashMap<String, Record>,
    /// When each unreferenced CMK label was first seen unreferenced.
    orphans: HashMap<String, Instant>,
    last_orphan_scan: Option<Instant>,
    /// The generation object watched (None: none yet, every refresh re-lists).
    generation: Option<DataHandle>,
    /// The stamp the snapshot is known to include every change up to (None: unknown).
    current: Option<String>,
    /// This process's last stamp, until a higher counter shows it was not lost.
    my_stamp: Option<Stamp>,
    last_full: Option<Instant>,
    /// How long the last re-list took.
    last_full_took: Duration,
    /// How long the last orphan scan took.
    last_orphan_took: Duration,
    /// The token refused to relabel the generation object: always re-list.
    no_detector: bool,
    /// `CKA_DERIVE` of each CMK as read by the first load, for the start-up reconcile.
    initial_derive: HashMap<(KeyId, u32), bool>,
}

/// What a record rule decided (see [`Store::update_key`]).
pub enum Change {
    /// Write this record.
    Write(KeyRecord),
    /// Nothing to do.
    Keep,
}

impl Store {
    /// Loads every record from the token.
    pub fn open(token: Arc<Token>) -> Result<Store> {
        let mut tag = [0u8; 4];
        token.random_fill(&mut tag)?;
        let store = Store {
            token,
            snapshot: RwLock::new(Snapshot::default()),
            writer: Mutex::new(WriterState::default()),
            writer_tag: tag.iter().map(|b| format!("{b:02x}")).collect(),
        };
        {
            let mut w = store.lock_writer();
            let stamp = store.locate_generation(&mut w)?;
            store.relist(&mut w, stamp)?;
            w.last_orphan_scan = Instant::now().checked_sub(ORPHAN_SCAN_EVERY - FIRST_ORPHAN_SCAN);
        }
        Ok(store)
    }

    /// `CKA_DERIVE` of each (key, version)'s CMK as the first load read it (once; empty after).
    pub fn take_initial_derive(&self) -> HashMap<(KeyId, u32), bool> {
        std::mem::take(&mut self.lock_writer().initial_derive)
    }

    /// The snapshot, for reading. Hold the guard only to look or clone: never across a token
    /// call or a call into the store.
    pub fn read(&self) -> RwLockReadGuard<'_, Snapshot> {
        sync::read(&self.snapshot)
    }

    /// A key's entry as the snapshot has it.
    pub fn key(&self, id: &KeyId) -> Option<KeyEntry> {
        self.read().keys.get(id).cloned()
    }

    /// Whether the snapshot can be read now (a readiness check: nothing holds it for long).
    pub fn responsive(&self) -> bool {
        sync::readable(&self.snapshot)
    }

    fn lock_writer(&self) -> MutexGuard<'_, WriterState> {
        sync::lock(&self.writer)
    }

    /// Only with the writer lock held (the `_w` argument proves it).
    fn write_snapshot(&self, _w: &mut WriterState) -> RwLockWriteGuard<'_, Snapshot> {
        sync::write(&self.snapshot)
    }

    /// Picks up other processes' changes: reads the generation stamp and re-lists the token
    /// only if it moved (or the safety-net interval has passed). Returns the ids of keys whose
    /// record changed.
    pub fn refresh(&self) -> Result<Vec<KeyId>> {
        let mut w = self.lock_writer();
        let stamp = match w.generation {
            Some(g) => match self.token.data_label(g)? {
                Some(l) => Some(l),
                // Destroyed as a duplicate by another process: find the one that stays.
                None => self.locate_generation(&mut w)?,
            },
            None => self.locate_generation(&mut w)?,
        };
        let every = FULL_REFRESH_EVERY.max(w.last_full_took * SAFETY_NET_FACTOR);
        let stale = w.last_full.is_none_or(|t| t.elapsed() >= every);
        let changed = if stamp.is_none() || stamp != w.current || stale {
            self.relist(&mut w, stamp.clone())?
        } else {
            Vec::new()
        };
        // Our last stamp overwritten by a concurrent writer's (same or lower counter): bump
        // again so that processes that took theirs for the latest re-list.
        if let (Some(mine), Some(seen)) = (&w.my_stamp, stamp.as_deref().and_then(Stamp::parse)) {
            if seen.counter > mine.counter {
                w.my_stamp = None;
            } else if seen != *mine {
                self.bump(&mut w)?;
            }
        }
        Ok(changed)
    }

    /// Re-lists the token's records regardless of the stamp (start-up, tests, the safety net).
    pub fn refresh_full(&self) -> Result<Vec<KeyId>> {
        let mut w = self.lock_writer();
        let stamp = match w.generation {
            Some(g) => self.token.data_label(g)?,
            None => None,
        };
        let stamp = match stamp {
            Some(s) => Some(s),
            None => self.locate_generation(&mut w)?,
        };
        self.relist(&mut w, stamp)
    }

    /// Finds the generation object (creating it in a new token) and returns its stamp, read
    /// now: a re-list that starts after this read sees every change announced before it.
    /// Two processes may create one each at the same moment: the later of the two to look
    /// again sees both, keeps the one with the smaller (random, immutable) value, as every
    /// process would, and destroys the other; whoever watched that one gets a stale handle
    /// at its next refresh and comes here again.
    fn locate_generation(&self, w: &mut WriterState) -> Result<Option<String>> {
        if w.no_detector {
            return Ok(None);
        }
        let watched = w.generation;
        let mut found = self.token.list_data_values(GENERATION_APPLICATION)?;
        if found.is_empty() {
            let mut id = [0u8; 16];
            self.token.random_fill(&mut id)?;
            let stamp = Stamp {
                counter: 1,
                writer: self.writer_tag.clone(),
            };
            self.token
                .create_data(GENERATION_APPLICATION, &stamp.format(), &id)?;
            found = self.token.list_data_values(GENERATION_APPLICATION)?;
        }
        found.sort_by(|a, b| a.1.cmp(&b.1));
        let mut iter = found.into_iter();
        let Some((keep, _)) = iter.next() else {
            return Ok(None);
        };
        w.generation = Some(keep.handle);
        if watched != Some(keep.handle) {
            // Whatever stamp the snapshot was built at belonged to another object.
            w.current = None;
        }
        let duplicates: Vec<DataHandle> = iter.map(|(o, _)| o.handle).collect();
        if !duplicates.is_empty() {
            for h in duplicates {
                let _ = self.token.destroy_data(h);
            }
            // Processes that watched a loser may have missed stamps: make them re-list.
            self.bump_once(w)?;
        }
        Ok(self.token.data_label(keep.handle)?)
    }

    /// Re-reads the token's records (the stamp was read before, so a change that lands during
    /// the listing is seen again next time), sweeps superseded record objects and duplicate
    /// generation objects. Returns the ids of keys whose record changed.
    fn relist(&self, w: &mut WriterState, stamp_before: Option<String>) -> Result<Vec<KeyId>> {
        let started = Instant::now();
        let first_load = w.seen.is_empty() && w.last_full.is_none();
        let listed: Vec<(DataObject, Option<Vec<u8>>)> = if first_load {
            // Every value is needed: label and value in one read per object.
            self.token
                .list_data_values(APPLICATION)?
                .into_iter()
                .map(|(o, v)| (o, Some(v)))
                .collect()
        } else {
            self.token
                .list_data(APPLICATION)?
                .into_iter()
                .map(|o| (o, None))
                .collect()
        };
        let mut live_labels = HashSet::new();
        let mut claimed = HashSet::new();
        let mut keys: HashMap<KeyId, Versions<KeyRecord>> = HashMap::new();
        let mut aliases: HashMap<AliasName, Versions<AliasRecord>> = HashMap::new();
        for (obj, value) in listed {
            let Some(label) = RecordLabel::parse(&obj.label) else {
                continue;
            };
            live_labels.insert(obj.label.clone());
            if let Subject::Key(id) = &label.subject {
                // Whatever its value says: a key with a record object keeps its backing keys.
                claimed.insert(*id);
            }
            let record = match w.seen.get(&obj.label) {
                Some(r) => r.clone(),
                None => {
                    let value = match value {
                        Some(v) => v,
                        None => match self.token.read_data(obj.handle)? {
                            Some(v) => v,
                            None => continue,
                        },
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

        // CMK handles: reuse known ones; find new ones one search each if few, else list
        // them all at once (a search costs as much as listing on SoftHSM: it visits every
        // object). Every new handle is bound only once the token proves it genuine.
        let old_cmks: HashMap<KeyId, BTreeMap<u32, CmkHandle>> = {
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
        let listed_cmks: Option<HashMap<String, Vec<ListedCmk>>> =
            if first_load || missing > CMK_SEARCHES {
                let all = self.token.list_cmks_detailed(CMK_LABEL_PREFIX)?;
                if first_load {
                    w.initial_derive = all
                        .iter()
                        .filter_map(|c| parse_cmk_label(&c.label).map(|k| (k, c.derive)))
                        .collect();
                }
                let mut by_label: HashMap<String, Vec<ListedCmk>> = HashMap::new();
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
            for v in &record.versions {
                if cmks.contains_key(&v.version) {
                    continue;
                }
                let label = cmk_label(&id, v.version);
                let expected = cmk_id(&id, v.version);
                let lookup = match &listed_cmks {
                    Some(map) => {
                        lookup_listed(map.get(&label).map(Vec::as_slice), &label, &expected)
                    }
                    None => self.token.find_cmk(&label, &expected)?,
                };
                match lookup {
                    CmkLookup::Found(h) => {
                        cmks.insert(v.version, h);
                    }
                    CmkLookup::Missing => {
                        unbound.insert(
                            v.version,
                            format!("the backing key {label} is not in the token"),
                        );
                    }
                    CmkLookup::Refused(why) => {
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
        let old = {
            let mut snap = self.write_snapshot(w);
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
        w.current = stamp_before;
        // Best effort: a superseded object another process already removed is fine.
        for h in superseded {
            let _ = self.token.destroy_data(h);
        }
        Ok(changed)
    }

    /// [`Store::bump`] after a write that is already in the token: a failure here must not
    /// turn a done write into an error; other processes then see it at their safety-net
    /// re-list instead of their next refresh.
    fn announce(&self, w: &mut WriterState) {
        if let Err(e) = self.bump(w) {
            tracing::warn!(
                error = e.message(),
                "could not announce a metadata change to other processes; they will see it \
                 within {} s",
                FULL_REFRESH_EVERY.as_secs()
            );
        }
    }

    /// Announces a change: the generation stamp goes to the next counter, with our tag.
    fn bump(&self, w: &mut WriterState) -> Result<()> {
        for _ in 0..3 {
            if self.bump_once(w)? {
                return Ok(());
            }
            // The object vanished (a duplicate another process destroyed): find the one that
            // stays, then stamp that.
            self.locate_generation(w)?;
        }
        Ok(())
    }

    /// One stamp write. `Ok(false)`: the watched object has vanished.
    fn bump_once(&self, w: &mut WriterState) -> Result<bool> {
        let Some(g) = w.generation else {
            return Ok(true);
        };
        let Some(before) = self.token.data_label(g)? else {
            return Ok(false);
        };
        let next = Stamp {
            counter: Stamp::parse(&before).map_or(0, |s| s.counter) + 1,
            writer: self.writer_tag.clone(),
        };
        let label = next.format();
        match self.token.relabel_data(g, &label) {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(e) => {
                // A token that refuses to relabel data objects: no detector, so every
                // refresh re-lists (correct, only slower). Tell the operator once.
                tracing::warn!(
                    error = %e,
                    "the token refused to relabel the generation object; metadata refreshes \
                     will re-list the token every time"
                );
                w.generation = None;
                w.no_detector = true;
                w.current = None;
                return Ok(true);
            }
        }
        // Our snapshot was current up to `before` and now holds our own change.
        if w.current.as_deref() == Some(before.as_str()) {
            w.current = Some(label.clone());
        }
        w.my_stamp = Some(next.clone());
        // Read back: a concurrent bump that landed after ours replaced it with an equal
        // counter; leave a higher one so that the other writer's readers re-list too.
        if let Some(now) = self.token.data_label(g)? {
            if now != label && Stamp::parse(&now).is_none_or(|s| s.counter <= next.counter) {
                let again = Stamp {
                    counter: next.counter + 1,
                    writer: self.writer_tag.clone(),
                };
                if self.token.relabel_data(g, &again.format())? {
                    w.my_stamp = Some(again);
                }
            }
        }
        Ok(true)
    }

    fn write_record(&self, label: &RecordLabel, record: &Record) -> Result<DataHandle> {
        Ok(self
            .token
            .create_data(APPLICATION, &label.format(), &record.encode())?)
    }

    fn next_label(&self, subject: Subject, prev: Option<&RecordLabel>) -> RecordLabel {
        RecordLabel {
            subject,
            seq: prev.map_or(1, |l| l.seq + 1),
            writer: self.writer_tag.clone(),
        }
    }

    /// Writes a key's record object and puts the entry into the snapshot; destroys the
    /// versions it supersedes. Writer lock held.
    fn write_key(&self, w: &mut WriterState, entry: KeyEntry) -> Result<()> {
        let id = entry.record.id;
        let prev = self.read().key_meta.get(&id).cloned();
        let label = self.next_label(Subject::Key(id), prev.as_ref().map(|p| &p.0));
        let value = Record::KeyV1(entry.record.clone());
        let handle = self.write_record(&label, &value)?;
        w.seen.insert(label.format(), value);
        let old = {
            let mut snap = self.write_snapshot(w);
            snap.key_meta.insert(id, (label, vec![handle]));
            snap.claimed.insert(id);
            snap.keys.insert(id, entry)
        };
        drop(old);
        if let Some((_, old)) = prev {
            for h in old {
                let _ = self.token.destroy_data(h);
            }
        }
        Ok(())
    }

    /// Records a new key (CreateKey: its backing key already exists in the token).
    pub fn put_key(&self, record: KeyRecord, cmks: BTreeMap<u32, CmkHandle>) -> Result<()> {
        let mut w = self.lock_writer();
        self.write_key(
            &mut w,
            KeyEntry {
                record,
                cmks,
                unbound: BTreeMap::new(),
            },
        )?;
        self.announce(&mut w);
        Ok(())
    }

    /// Changes a key's record, decided by `rule` against the key as it is now, with every
    /// other write of this process held off meanwhile: two concurrent state changes are
    /// applied one after the other, each to the outcome of the one before. `then` runs with
    /// the new entry, still in that order (e.g. to make the token's attributes agree); its
    /// failure is logged, not returned, because the record, which every process checks, is
    /// already in force. Both must be quick and must not call into the store.
    pub fn update_key(
        &self,
        id: &KeyId,
        rule: impl FnOnce(&KeyEntry) -> Result<Change>,
        then: impl FnOnce(&KeyEntry) -> Result<()>,
    ) -> Result<KeyEntry> {
        let mut w = self.lock_writer();
        let current = self
            .key(id)
            .ok_or_else(|| KmsError::NotFound(format!("Key '{id}' does not exist")))?;
        let record = match rule(&current)? {
            Change::Keep => return Ok(current),
            Change::Write(r) => r,
        };
        let entry = KeyEntry { record, ..current };
        self.write_key(&mut w, entry.clone())?;
        if let Err(e) = then(&entry) {
            tracing::warn!(
                key_id = %id,
                error = e.message(),
                "the key's new record is written, but the token's attributes could not be \
                 updated; every process reconciles them when it opens the token"
            );
        }
        self.announce(&mut w);
        Ok(entry)
    }

    /// Runs `f` on a key's entry with this process's writes held off (for token state that
    /// must follow the records, such as healing `CKA_DERIVE`). `f` must not call the store.
    pub fn with_key<T>(&self, id: &KeyId, f: impl FnOnce(Option<&KeyEntry>) -> T) -> T {
        let _w = self.lock_writer();
        let entry = self.key(id);
        f(entry.as_ref())
    }

    /// Writes an alias record (`target: None`: a tombstone, then gone). Writer lock held.
    fn write_alias(
        &self,
        w: &mut WriterState,
        name: &AliasName,
        record: AliasRecord,
    ) -> Result<()> {
        let prev = self.read().alias_meta.get(name).cloned();
        let label = self.next_label(Subject::Alias(name.clone()), prev.as_ref().map(|p| &p.0));
        let value = Record::AliasV1(record.clone());
        let handle = self.write_record(&label, &value)?;
        w.seen.insert(label.format(), value);
        let live = record.target.is_some();
        {
            let mut snap = self.write_snapshot(w);
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
            self.write_snapshot(w).alias_meta.remove(name);
        }
        Ok(())
    }

    /// Creates, updates or (with `target: None`) deletes an alias, as `rule` decides from the
    /// snapshot and the alias as it is now (`None`: no such alias), with every other write of
    /// this process held off: of two concurrent CreateAlias calls for one name, exactly one
    /// succeeds. `rule` must be quick and must not call into the store.
    pub fn put_alias(
        &self,
        name: &AliasName,
        rule: impl FnOnce(&Snapshot, Option<&AliasRecord>) -> Result<AliasRecord>,
    ) -> Result<()> {
        let mut w = self.lock_writer();
        let record = {
            let snap = self.read();
            rule(&snap, snap.aliases.get(name))?
        };
        self.write_alias(&mut w, name, record)?;
        self.announce(&mut w);
        Ok(())
    }

    /// Every record object of key `id` in the token now, read afresh (not from the snapshot
    /// or the value cache), and the newest readable record among them.
    fn token_records_of(&self, id: &KeyId) -> Result<(Vec<DataHandle>, Option<KeyRecord>)> {
        let mut handles = Vec::new();
        let mut best: Option<(RecordLabel, KeyRecord)> = None;
        for obj in self.token.list_data(APPLICATION)? {
            let Some(label) = RecordLabel::parse(&obj.label) else {
                continue;
            };
            if label.subject != Subject::Key(*id) {
                continue;
            }
            handles.push(obj.handle);
            let Some(value) = self.token.read_data(obj.handle)? else {
                continue;
            };
            if let Some(Record::KeyV1(r)) = Record::decode(&value) {
                if r.id == *id && best.as_ref().is_none_or(|(b, _)| label.rank() > b.rank()) {
                    best = Some((label, r));
                }
            }
        }
        Ok((handles, best.map(|(_, r)| r)))
    }

    /// Destroys a key for good, if the token still says it is due: its records are read
    /// again from the token first (another process may have cancelled the deletion since this
    /// snapshot was made), and `due` decides on what they say now. Then its aliases, backing
    /// keys and records go, in that order, so a crash half-way leaves a record that the next
    /// sweep finishes. Returns whether the key was destroyed. Every destruction is logged.
    pub fn destroy_key_if(&self, id: &KeyId, due: impl FnOnce(&KeyRecord) -> bool) -> Result<bool> {
        let mut w = self.lock_writer();
        let (record_objects, newest) = self.token_records_of(id)?;
        let Some(record) = newest.filter(|r| due(r)) else {
            return Ok(false);
        };
        let (aliases, cmks) = {
            let snap = self.read();
            let aliases: Vec<(AliasName, AliasRecord)> = snap
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
        for v in &record.versions {
            let label = cmk_label(id, v.version);
            // The bound handle, and anything else under the label (the key is going).
            let mut handles = self.token.find_cmks(&label)?;
            if let Some(h) = cmks.as_ref().and_then(|m| m.get(&v.version)) {
                if !handles.contains(h) {
                    handles.push(*h);
                }
            }
            for h in handles {
                self.token.destroy_cmk(h)?;
                tracing::warn!(
                    target: "p11kms::custody",
                    key_id = %id,
                    label,
                    "destroyed a backing key: its key was scheduled for deletion and is past its \
                     deletion date"
                );
            }
        }
        for h in record_objects {
            self.token.destroy_data(h)?;
        }
        let old = {
            let mut snap = self.write_snapshot(&mut w);
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
    pub fn relocate_cmk(&self, id: &KeyId, version: u32) -> Result<CmkLookup> {
        let lookup = self
            .token
            .find_cmk(&cmk_label(id, version), &cmk_id(id, version))?;
        let mut w = self.lock_writer();
        let mut snap = self.write_snapshot(&mut w);
        if let Some(e) = snap.keys.get_mut(id) {
            match &lookup {
                CmkLookup::Found(h) => {
                    e.cmks.insert(version, *h);
                    e.unbound.remove(&version);
                }
                CmkLookup::Missing => {
                    e.cmks.remove(&version);
                    e.unbound.insert(
                        version,
                        format!(
                            "the backing key {} is not in the token",
                            cmk_label(id, version)
                        ),
                    );
                }
                CmkLookup::Refused(why) => {
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
        let cmks = self.token.list_cmks(CMK_LABEL_PREFIX)?;
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
                .token
                .list_data(APPLICATION)?
                .iter()
                .filter_map(|o| match RecordLabel::parse(&o.label)?.subject {
                    Subject::Key(id) => Some(id),
                    Subject::Alias(_) => None,
                })
                .collect();
            for (id, label, handle) in due {
                if recorded.contains(&id) {
                    continue;
                }
                self.token.destroy_cmk(handle)?;
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

/// Binds a listed CMK: exactly one object under the label, proven genuine.
fn lookup_listed(found: Option<&[ListedCmk]>, label: &str, expected: &[u8]) -> CmkLookup {
    let found: Vec<(CmkHandle, CmkAttributes)> = found
        .unwrap_or_default()
        .iter()
        .map(|c| (c.handle, c.attributes.clone()))
        .collect();
    CmkLookup::judge(label, &found, expected)
}
