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

mod backend;
mod claims;
mod generation;
mod grants;
#[cfg(test)]
mod memory;
mod relist;
mod replicas;
mod sweep;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

pub use backend::{BackingKeys, RecordBackend};
pub use claims::{ClaimLabel, Rotated};
use generation::Stamp;
pub use grants::GrantWrite;

use crate::error::{KmsError, Result};
use crate::hsm::{CmkHandle, DataHandle, Token};
use crate::kms::grant::GrantId;
use crate::kms::keyref::{AliasKey, KeyId};
use crate::kms::records::{
    AliasRecord, GrantRecord, KeyRecord, Record, RecordLabel, Subject, APPLICATION,
};
use crate::sync;

/// A full re-list happens at least this often even when the stamp says nothing changed, or
/// [`SAFETY_NET_FACTOR`] times as long as the last re-list took, whichever is longer (so the
/// safety net costs at most 1% of a core however large the token grows).
pub const FULL_REFRESH_EVERY: Duration = Duration::from_secs(60);
const SAFETY_NET_FACTOR: u32 = 100;

/// A key as the request path needs it.
#[derive(Debug, Clone)]
pub struct KeyEntry<H = CmkHandle> {
    pub record: KeyRecord,
    /// Token handles of the backing keys by version, each proven genuine when it was bound.
    pub cmks: BTreeMap<u32, H>,
    /// Versions without a usable backing key, and why (missing, or refused: see
    /// [`Lookup::Refused`]). Answered as `KeyUnavailableException` without a token search.
    pub unbound: BTreeMap<u32, String>,
}

/// The in-memory view of the token's metadata (`O`: a record object's handle, `H`: a backing
/// key's).
#[derive(Debug)]
pub struct Snapshot<O = DataHandle, H = CmkHandle> {
    pub keys: BTreeMap<KeyId, KeyEntry<H>>,
    pub aliases: BTreeMap<AliasKey, AliasRecord>,
    /// Live grants (no tombstone) by grant id.
    pub grants: BTreeMap<GrantId, GrantRecord>,
    /// The ids of each key's live grants.
    pub grants_by_key: BTreeMap<KeyId, BTreeSet<GrantId>>,
    key_meta: HashMap<KeyId, (RecordLabel, Vec<O>)>,
    alias_meta: HashMap<AliasKey, (RecordLabel, Vec<O>, bool)>,
    /// Every grant with a record object (live or tombstone): its newest label and objects.
    grant_meta: HashMap<GrantId, (RecordLabel, Vec<O>)>,
    /// Every key id with at least one record object in the token, readable or not: its
    /// backing keys are never orphans.
    claimed: HashSet<KeyId>,
    /// The replicas of multi-Region keys by (key id, region): each one's own record (see
    /// [`Snapshot::replica_entry`]). A replica record of the key record's own region (left by
    /// an UpdatePrimaryRegion that stopped half-way) is not one.
    pub replicas: BTreeMap<(KeyId, String), KeyRecord>,
    /// Every replica with a record object (live or not): its newest label and objects.
    replica_meta: HashMap<(KeyId, String), (RecordLabel, Vec<O>)>,
}

impl<O, H> Default for Snapshot<O, H> {
    fn default() -> Self {
        Snapshot {
            keys: BTreeMap::new(),
            aliases: BTreeMap::new(),
            grants: BTreeMap::new(),
            grants_by_key: BTreeMap::new(),
            key_meta: HashMap::new(),
            alias_meta: HashMap::new(),
            grant_meta: HashMap::new(),
            claimed: HashSet::new(),
            replicas: BTreeMap::new(),
            replica_meta: HashMap::new(),
        }
    }
}

impl<O, H> Snapshot<O, H> {
    /// Aliases that point at `id`, in name order.
    pub fn aliases_of(&self, id: KeyId) -> impl Iterator<Item = (&AliasKey, &AliasRecord)> {
        self.aliases
            .iter()
            .filter(move |(_, a)| a.target == Some(id))
    }

    /// The live grants of key `id`, in grant id order.
    pub fn grants_of(&self, id: KeyId) -> impl Iterator<Item = &GrantRecord> {
        self.grants_by_key
            .get(&id)
            .into_iter()
            .flatten()
            .filter_map(|g| self.grants.get(g))
    }

    /// Puts a live grant into both indexes.
    fn index_grant(&mut self, g: GrantRecord) {
        self.grants_by_key
            .entry(g.key_id)
            .or_default()
            .insert(g.grant_id);
        self.grants.insert(g.grant_id, g);
    }

    /// Takes a grant out of both indexes.
    fn unindex_grant(&mut self, id: &GrantId) {
        if let Some(g) = self.grants.remove(id) {
            if let Some(set) = self.grants_by_key.get_mut(&g.key_id) {
                set.remove(id);
                if set.is_empty() {
                    self.grants_by_key.remove(&g.key_id);
                }
            }
        }
    }
}

/// The metadata store over its record backend `R` and backing keys `K` (both the token,
/// except in unit tests).
pub struct Store<R: RecordBackend = Arc<Token>, K: BackingKeys = Arc<Token>> {
    records: R,
    keys: K,
    snapshot: RwLock<Snapshot<R::Object, K::Key>>,
    /// Serialises this process's writes and refreshes (reads never take it). Every write of
    /// the snapshot happens with it held.
    writer: Mutex<WriterState<R::Object>>,
    writer_tag: String,
    /// Refreshes and re-lists, for metrics (atomics: read without the writer lock).
    counts: StoreCounts,
}

#[derive(Default)]
struct StoreCounts {
    /// Unix ms at the end of the last successful refresh or re-list (0: none yet).
    last_refresh_unix_ms: AtomicU64,
    refresh_failures: AtomicU64,
    relists: crate::latency::Histogram,
}

/// The metadata store's refresh numbers at one moment (for metrics).
#[derive(Debug, Clone)]
pub struct StoreStats {
    /// When this process last caught up with the token's records (Unix ms; `None`: never).
    pub last_refresh_unix_ms: Option<u64>,
    /// Refreshes that failed (the next round retries).
    pub refresh_failures: u64,
    /// How long full re-lists of the records took.
    pub relists: crate::latency::Snapshot,
}

struct WriterState<O> {
    /// Parsed record values by object label: objects never change, so one read is enough.
    seen: HashMap<String, Record>,
    /// When each unreferenced CMK label was first seen unreferenced.
    orphans: HashMap<String, Instant>,
    last_orphan_scan: Option<Instant>,
    /// The generation object watched (None: none yet, every refresh re-lists).
    generation: Option<O>,
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

impl<O> Default for WriterState<O> {
    fn default() -> Self {
        WriterState {
            seen: HashMap::new(),
            orphans: HashMap::new(),
            last_orphan_scan: None,
            generation: None,
            current: None,
            my_stamp: None,
            last_full: None,
            last_full_took: Duration::ZERO,
            last_orphan_took: Duration::ZERO,
            no_detector: false,
            initial_derive: HashMap::new(),
        }
    }
}

/// What a record rule decided (see [`Store::update_key`]). Made once per write and moved
/// straight into it: the size of the record is no concern.
#[allow(clippy::large_enum_variant)]
pub enum Change {
    /// Write this record.
    Write(KeyRecord),
    /// Nothing to do.
    Keep,
}

impl<R: RecordBackend, K: BackingKeys> Store<R, K> {
    /// Loads every record.
    pub fn open(records: R, keys: K) -> Result<Store<R, K>> {
        // Four random bytes name this writer (they break ties between processes).
        let mut tag = [0u8; 4];
        records.random(&mut tag)?;
        let store = Store {
            records,
            keys,
            snapshot: RwLock::new(Snapshot::default()),
            writer: Mutex::new(WriterState::default()),
            writer_tag: tag.iter().map(|b| format!("{b:02x}")).collect(),
            counts: StoreCounts::default(),
        };
        {
            let mut w = store.lock_writer();
            store.probe_relabel(&mut w)?;
            let stamp = store.locate_generation(&mut w)?;
            store.relist(&mut w, stamp)?;
            sweep::schedule_first_scan(&mut w);
        }
        Ok(store)
    }

    /// `CKA_DERIVE` of each (key, version)'s CMK as the first load read it (once; empty after).
    pub fn take_initial_derive(&self) -> HashMap<(KeyId, u32), bool> {
        std::mem::take(&mut self.lock_writer().initial_derive)
    }

    /// The snapshot, for reading. Hold the guard only to look or clone: never across a token
    /// call or a call into the store.
    pub fn read(&self) -> RwLockReadGuard<'_, Snapshot<R::Object, K::Key>> {
        sync::read(&self.snapshot)
    }

    /// A key's entry as the snapshot has it.
    pub fn key(&self, id: &KeyId) -> Option<KeyEntry<K::Key>> {
        self.read().keys.get(id).cloned()
    }

    /// Refresh and re-list numbers (no lock).
    pub fn stats(&self) -> StoreStats {
        let last = self.counts.last_refresh_unix_ms.load(Ordering::Relaxed);
        StoreStats {
            last_refresh_unix_ms: (last != 0).then_some(last),
            refresh_failures: self.counts.refresh_failures.load(Ordering::Relaxed),
            relists: self.counts.relists.snapshot(),
        }
    }

    /// Notes that the snapshot has just caught up with the token.
    fn caught_up(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.counts
            .last_refresh_unix_ms
            .store(now.max(1), Ordering::Relaxed);
    }

    /// Whether the snapshot can be read now (a readiness check: nothing holds it for long).
    pub fn responsive(&self) -> bool {
        sync::readable(&self.snapshot)
    }

    fn lock_writer(&self) -> MutexGuard<'_, WriterState<R::Object>> {
        sync::lock(&self.writer)
    }

    /// Only with the writer lock held (the `_w` argument proves it).
    fn write_snapshot(
        &self,
        _w: &mut WriterState<R::Object>,
    ) -> RwLockWriteGuard<'_, Snapshot<R::Object, K::Key>> {
        sync::write(&self.snapshot)
    }
    fn write_record(&self, label: &RecordLabel, record: &Record) -> Result<R::Object> {
        self.records
            .create(APPLICATION, &label.format(), &record.encode())
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
    fn write_key(&self, w: &mut WriterState<R::Object>, entry: KeyEntry<K::Key>) -> Result<()> {
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
                let _ = self.records.destroy(h);
            }
        }
        Ok(())
    }

    /// Records a new key (CreateKey: its backing key already exists in the token).
    pub fn put_key(&self, record: KeyRecord, cmks: BTreeMap<u32, K::Key>) -> Result<()> {
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
        rule: impl FnOnce(&KeyEntry<K::Key>) -> Result<Change>,
        then: impl FnOnce(&KeyEntry<K::Key>) -> Result<()>,
    ) -> Result<KeyEntry<K::Key>> {
        let mut w = self.lock_writer();
        let current = self
            .key(id)
            .ok_or_else(|| KmsError::not_found(format!("Key '{id}' does not exist")))?;
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

    /// Changes a key's record *and* its backing keys (key material imported, or deleted),
    /// decided by `rule` against the key as it is now, with this process's other writes held
    /// off. `rule` may make token calls (the token never takes the writer lock) but must not
    /// call into the store; it returns the new entry, or `None` for no change. A failed
    /// record write is returned, and `rule`'s token work is then the caller's to undo.
    pub fn replace_key(
        &self,
        id: &KeyId,
        rule: impl FnOnce(&KeyEntry<K::Key>) -> Result<Option<KeyEntry<K::Key>>>,
    ) -> Result<KeyEntry<K::Key>> {
        let mut w = self.lock_writer();
        let current = self
            .key(id)
            .ok_or_else(|| KmsError::not_found(format!("Key '{id}' does not exist")))?;
        let Some(entry) = rule(&current)? else {
            return Ok(current);
        };
        self.write_key(&mut w, entry.clone())?;
        self.announce(&mut w);
        Ok(entry)
    }

    /// Runs `f` on a key's entry with this process's writes held off (for token state that
    /// must follow the records, such as healing `CKA_DERIVE`). `f` must not call the store.
    pub fn with_key<T>(&self, id: &KeyId, f: impl FnOnce(Option<&KeyEntry<K::Key>>) -> T) -> T {
        let _w = self.lock_writer();
        let entry = self.key(id);
        f(entry.as_ref())
    }

    /// Writes an alias record (`target: None`: a tombstone, then gone). Writer lock held.
    fn write_alias(
        &self,
        w: &mut WriterState<R::Object>,
        name: &AliasKey,
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
                let _ = self.records.destroy(h);
            }
        }
        // A tombstone has done its job once the older versions are gone.
        if !live {
            self.records.destroy(handle)?;
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
        name: &AliasKey,
        rule: impl FnOnce(&Snapshot<R::Object, K::Key>, Option<&AliasRecord>) -> Result<AliasRecord>,
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
}
