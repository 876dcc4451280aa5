//! An in-memory record backend and key store, and the store's unit tests over it: the rules of
//! the store (newest record wins, superseded and orphaned objects swept, genuine-only binding,
//! the generation stamp) without a token. Two stores over one [`Memory`] are two processes
//! over one token. The token itself is tested in `tests/`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::backend::{BackingKeys, RecordBackend, Stored};
use super::GrantWrite;
use super::{Change, Store};
use crate::error::{ErrorKind, KmsError, Result};
use crate::hsm::{BackingKind, CmkAttributes, Listed, Lookup};
use crate::kms::domain::GrantOperation;
use crate::kms::grant::{GrantId, GrantSecret};
use crate::kms::keyref::{AliasKey, AliasName, KeyId};
use crate::kms::records::{
    cmk_id, cmk_label, AliasRecord, GrantRecord, KeyRecord, Record, RecordLabel, Subject,
    APPLICATION,
};

#[derive(Default)]
struct State {
    next: u64,
    /// Data objects: (application, label, value).
    objects: BTreeMap<u64, (String, String, Vec<u8>)>,
    /// Backing keys: (label, attributes).
    keys: BTreeMap<u64, (String, CmkAttributes)>,
    refuse_relabel: bool,
    /// Objects whose destruction fails (a token that refuses one call).
    refuse_destroy: std::collections::HashSet<u64>,
}

/// A token's object store, in memory.
#[derive(Default)]
pub(super) struct Memory {
    state: Mutex<State>,
    /// How many listings of the records (not of the generation object) were made.
    record_lists: AtomicUsize,
}

impl Memory {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    fn add_key(&self, label: &str, attributes: CmkAttributes) -> u64 {
        let mut s = self.state();
        s.next += 1;
        let h = s.next;
        s.keys.insert(h, (label.to_owned(), attributes));
        h
    }

    fn records_of(&self, application: &str) -> Vec<(u64, String)> {
        self.state()
            .objects
            .iter()
            .filter(|(_, (a, _, _))| a == application)
            .map(|(h, (_, l, _))| (*h, l.clone()))
            .collect()
    }

    fn key_labels(&self) -> Vec<String> {
        self.state().keys.values().map(|(l, _)| l.clone()).collect()
    }
}

impl RecordBackend for Arc<Memory> {
    type Object = u64;

    fn random(&self, buf: &mut [u8]) -> Result<()> {
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), buf);
        Ok(())
    }

    fn list(&self, application: &str, values: bool) -> Result<Vec<Stored<u64>>> {
        if application == APPLICATION {
            self.record_lists.fetch_add(1, Ordering::Relaxed);
        }
        Ok(self
            .state()
            .objects
            .iter()
            .filter(|(_, (a, _, _))| a == application)
            .map(|(h, (_, l, v))| Stored {
                object: *h,
                label: l.clone(),
                value: values.then(|| v.clone()),
            })
            .collect())
    }

    fn read(&self, o: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.state().objects.get(&o).map(|(_, _, v)| v.clone()))
    }

    fn label(&self, o: u64) -> Result<Option<String>> {
        Ok(self.state().objects.get(&o).map(|(_, l, _)| l.clone()))
    }

    fn relabel(&self, o: u64, label: &str) -> Result<bool> {
        let mut s = self.state();
        if s.refuse_relabel {
            return Err(KmsError::internal("CKR_ATTRIBUTE_READ_ONLY"));
        }
        Ok(match s.objects.get_mut(&o) {
            Some(obj) => {
                obj.1 = label.to_owned();
                true
            }
            None => false,
        })
    }

    fn create(&self, application: &str, label: &str, value: &[u8]) -> Result<u64> {
        let mut s = self.state();
        s.next += 1;
        let h = s.next;
        s.objects.insert(
            h,
            (application.to_owned(), label.to_owned(), value.to_vec()),
        );
        Ok(h)
    }

    fn destroy(&self, o: u64) -> Result<()> {
        let mut s = self.state();
        if s.refuse_destroy.contains(&o) {
            return Err(KmsError::internal("CKR_DEVICE_ERROR"));
        }
        s.objects.remove(&o);
        Ok(())
    }
}

impl BackingKeys for Arc<Memory> {
    type Key = u64;

    fn list_detailed(&self, prefix: &str) -> Result<Vec<Listed<u64>>> {
        Ok(self
            .state()
            .keys
            .iter()
            .filter(|(_, (l, _))| l.starts_with(prefix))
            .map(|(h, (l, a))| Listed {
                label: l.clone(),
                handle: *h,
                attributes: a.clone(),
            })
            .collect())
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .list_detailed(prefix)?
            .into_iter()
            .map(|c| (c.label, c.handle))
            .collect())
    }

    fn find(&self, label: &str, expected_id: &[u8], kind: BackingKind) -> Result<Lookup<u64>> {
        let found: Vec<(u64, CmkAttributes)> = self
            .state()
            .keys
            .iter()
            .filter(|(_, (l, _))| l == label)
            .map(|(h, (_, a))| (*h, a.clone()))
            .collect();
        Ok(Lookup::judge(label, &found, expected_id, kind))
    }

    fn find_all(&self, label: &str) -> Result<Vec<u64>> {
        Ok(self
            .state()
            .keys
            .iter()
            .filter(|(_, (l, _))| l == label)
            .map(|(h, _)| *h)
            .collect())
    }

    fn destroy(&self, k: u64) -> Result<()> {
        self.state().keys.remove(&k);
        Ok(())
    }
}

type MemStore = Store<Arc<Memory>, Arc<Memory>>;

fn open(m: &Arc<Memory>) -> MemStore {
    match Store::open(Arc::clone(m), Arc::clone(m)) {
        Ok(s) => s,
        Err(e) => panic!("open: {e:?}"),
    }
}

fn record(id: KeyId, description: &str) -> KeyRecord {
    KeyRecord::for_tests(id, description)
}

/// A key created the way CreateKey does it: a genuine backing key, then its record.
fn create_key(m: &Arc<Memory>, s: &MemStore, description: &str) -> KeyId {
    let id = KeyId::new_random();
    let h = m.add_key(
        &cmk_label(&id, 1),
        CmkAttributes::genuine_for_tests(&cmk_id(&id, 1)),
    );
    s.put_key(record(id, description), BTreeMap::from([(1, h)]))
        .unwrap();
    id
}

fn describe(s: &MemStore, id: &KeyId) -> Option<String> {
    s.key(id).map(|e| e.record.description)
}

#[test]
fn another_process_sees_a_change_at_its_next_refresh_and_only_then_relists() {
    let m = Arc::new(Memory::default());
    let a = open(&m);
    let b = open(&m);
    let id = create_key(&m, &a, "one");
    assert_eq!(describe(&b, &id), None);
    let before = m.record_lists.load(Ordering::Relaxed);
    assert_eq!(b.refresh().unwrap(), vec![id]);
    assert_eq!(m.record_lists.load(Ordering::Relaxed), before + 1);
    assert_eq!(describe(&b, &id).as_deref(), Some("one"));
    assert!(b.key(&id).unwrap().cmks.contains_key(&1));

    // Nothing changed: the stamp says so, and nobody lists the records.
    let before = m.record_lists.load(Ordering::Relaxed);
    assert!(b.refresh().unwrap().is_empty());
    assert!(a.refresh().unwrap().is_empty());
    assert_eq!(m.record_lists.load(Ordering::Relaxed), before);
}

#[test]
fn a_change_replaces_the_record_object_and_keep_writes_nothing() {
    let m = Arc::new(Memory::default());
    let s = open(&m);
    let id = create_key(&m, &s, "one");
    let objects = m.records_of(APPLICATION);
    assert_eq!(objects.len(), 1);

    let kept = s.update_key(&id, |_| Ok(Change::Keep), |_| Ok(())).unwrap();
    assert_eq!(kept.record.description, "one");
    assert_eq!(m.records_of(APPLICATION), objects);

    let mut then_saw = None;
    s.update_key(
        &id,
        |e| {
            Ok(Change::Write(KeyRecord {
                description: "two".into(),
                ..e.record.clone()
            }))
        },
        |e| {
            then_saw = Some(e.record.description.clone());
            Err(KmsError::internal("attributes"))
        },
    )
    .unwrap();
    // `then` ran on the new entry; its failure did not undo the write.
    assert_eq!(then_saw.as_deref(), Some("two"));
    let now = m.records_of(APPLICATION);
    assert_eq!(now.len(), 1, "the superseded record object is destroyed");
    assert_ne!(now, objects);
    assert_eq!(describe(&open(&m), &id).as_deref(), Some("two"));

    // A rule's refusal changes nothing.
    let refused = s.update_key(&id, |_| Err(KmsError::invalid_state("no")), |_| Ok(()));
    assert_eq!(refused.unwrap_err().kind(), ErrorKind::InvalidState);
    assert_eq!(m.records_of(APPLICATION), now);
    let missing = s.update_key(&KeyId::new_random(), |_| Ok(Change::Keep), |_| Ok(()));
    assert_eq!(missing.unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn after_a_crash_the_newest_record_wins_and_the_older_is_swept() {
    let m = Arc::new(Memory::default());
    let s = open(&m);
    let id = create_key(&m, &s, "old");
    // A writer that died after creating its newer record and before destroying the old one.
    let newer = RecordLabel {
        subject: Subject::Key(id),
        seq: 9,
        writer: "ffffffff".into(),
    };
    m.create(
        APPLICATION,
        &newer.format(),
        &Record::KeyV1(record(id, "new")).encode(),
    )
    .unwrap();
    // And a half-written one with a still higher number: skipped, not chosen.
    let torn = RecordLabel { seq: 10, ..newer };
    m.create(APPLICATION, &torn.format(), b"{\"record\":\"key_v1\",\"i")
        .unwrap();

    let fresh = open(&m);
    assert_eq!(describe(&fresh, &id).as_deref(), Some("new"));
    let left: Vec<String> = m.records_of(APPLICATION).into_iter().map(|r| r.1).collect();
    assert_eq!(
        left.len(),
        2,
        "the older record is swept, the torn one kept: {left:?}"
    );
    assert!(left.contains(&torn.format()));
}

#[test]
fn backing_keys_are_bound_only_when_genuine_and_alone_under_their_label() {
    let m = Arc::new(Memory::default());
    let s = open(&m);
    let planted = create_key(&m, &s, "planted twin");
    m.add_key(
        &cmk_label(&planted, 1),
        CmkAttributes::genuine_for_tests(&cmk_id(&planted, 1)),
    );
    let weak = KeyId::new_random();
    // Attributes that prove nothing (an imported or extractable key reports the same).
    m.add_key(&cmk_label(&weak, 1), CmkAttributes::default());
    s.put_key(record(weak, "unproven"), BTreeMap::new())
        .unwrap();
    let missing = KeyId::new_random();
    s.put_key(record(missing, "no backing key"), BTreeMap::new())
        .unwrap();

    let fresh = open(&m);
    for id in [planted, weak, missing] {
        let e = fresh.key(&id).unwrap();
        assert!(e.cmks.is_empty(), "{}", e.record.description);
        assert!(e.unbound.contains_key(&1), "{}", e.record.description);
    }
    assert!(fresh.key(&planted).unwrap().unbound[&1].contains("2 keys"));
    assert!(matches!(
        fresh.relocate_cmk(&missing, 1).unwrap(),
        Lookup::Missing
    ));
}

#[test]
fn orphans_go_after_their_grace_and_claimed_keys_never() {
    let m = Arc::new(Memory::default());
    let s = open(&m);
    let kept = create_key(&m, &s, "kept");
    let orphan = KeyId::new_random();
    m.add_key(
        &cmk_label(&orphan, 1),
        CmkAttributes::genuine_for_tests(&cmk_id(&orphan, 1)),
    );
    // A key whose only record this version cannot read still owns its backing key.
    let unreadable = KeyId::new_random();
    m.add_key(
        &cmk_label(&unreadable, 1),
        CmkAttributes::genuine_for_tests(&cmk_id(&unreadable, 1)),
    );
    let label = RecordLabel {
        subject: Subject::Key(unreadable),
        seq: 1,
        writer: "00000000".into(),
    };
    m.create(APPLICATION, &label.format(), b"not json").unwrap();
    s.refresh_full().unwrap();
    // A foreign label under our prefix is not ours to destroy.
    m.add_key("p11kms:cmk:someone-else", CmkAttributes::default());

    assert_eq!(
        s.sweep_orphan_cmks_after(Duration::from_secs(600)).unwrap(),
        (0, 1)
    );
    assert_eq!(s.sweep_orphan_cmks_after(Duration::ZERO).unwrap(), (1, 0));
    let labels = m.key_labels();
    assert!(!labels.contains(&cmk_label(&orphan, 1)));
    assert!(labels.contains(&cmk_label(&kept, 1)));
    assert!(labels.contains(&cmk_label(&unreadable, 1)));
    assert!(labels.contains(&"p11kms:cmk:someone-else".to_string()));
}

#[test]
fn a_due_key_goes_with_its_aliases_and_backing_keys_only_if_the_records_still_say_so() {
    let m = Arc::new(Memory::default());
    let s = open(&m);
    let id = create_key(&m, &s, "doomed");
    let name = AliasKey::own(AliasName::parse("alias/doomed").unwrap());
    s.put_alias(&name, |_, _| {
        Ok(AliasRecord {
            name: name.name.as_str().to_owned(),
            target: Some(id),
            created_ms: 1,
            updated_ms: 1,
            owner: None,
        })
    })
    .unwrap();
    assert!(!s.destroy_key_if(&id, |_| false).unwrap());
    assert_eq!(m.key_labels().len(), 1);

    // Another process cancels the deletion; this one's snapshot still has the old record.
    let other = open(&m);
    other
        .update_key(
            &id,
            |e| {
                Ok(Change::Write(KeyRecord {
                    description: "saved".into(),
                    ..e.record.clone()
                }))
            },
            |_| Ok(()),
        )
        .unwrap();
    assert!(!s
        .destroy_key_if(&id, |r| r.description == "doomed")
        .unwrap());

    assert!(s.destroy_key_if(&id, |r| r.description == "saved").unwrap());
    assert!(m.key_labels().is_empty());
    assert!(
        m.records_of(APPLICATION).is_empty(),
        "records and alias gone"
    );
    assert!(s.key(&id).is_none());
    other.refresh().unwrap();
    assert!(other.key(&id).is_none());
    assert!(other.read().aliases.is_empty());
}

#[test]
fn of_two_generation_objects_every_process_keeps_the_same_one() {
    let m = Arc::new(Memory::default());
    m.create(
        "p11kms-generation",
        "p11kms:generation:00000000000000000007:aa",
        &[9; 16],
    )
    .unwrap();
    let small = m
        .create(
            "p11kms-generation",
            "p11kms:generation:00000000000000000003:bb",
            &[1; 16],
        )
        .unwrap();
    let s = open(&m);
    let left = m.records_of("p11kms-generation");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, small);
    // The survivor was bumped so that whoever watched the loser re-lists.
    assert!(left[0].1.as_str() > "p11kms:generation:00000000000000000003");
    let id = create_key(&m, &s, "seen");
    let b = open(&m);
    assert_eq!(describe(&b, &id).as_deref(), Some("seen"));
}

#[test]
fn without_a_relabelable_generation_object_every_refresh_relists() {
    let m = Arc::new(Memory::default());
    m.state().refuse_relabel = true;
    let a = open(&m);
    let b = open(&m);
    let id = create_key(&m, &a, "one");
    let before = m.record_lists.load(Ordering::Relaxed);
    b.refresh().unwrap();
    b.refresh().unwrap();
    assert_eq!(m.record_lists.load(Ordering::Relaxed), before + 2);
    assert_eq!(describe(&b, &id).as_deref(), Some("one"));
    assert!(
        m.records_of("p11kms-probe").is_empty(),
        "probes are cleaned up"
    );
}

fn grant_on(key: KeyId, n: u8) -> GrantRecord {
    GrantRecord {
        grant_id: GrantId::from_bytes([n; 32]),
        key_id: key,
        name: None,
        grantee_principal: "arn:aws:iam::111122223333:user/g".into(),
        retiring_principal: None,
        operations: vec![GrantOperation::Decrypt],
        constraint: None,
        issuing_account: "111122223333".into(),
        created_ms: 1,
        token_secret: GrantSecret(vec![n; 32].into()),
        deleted_ms: None,
    }
}

fn put_grant(s: &MemStore, g: GrantRecord) {
    let w = s.put_grant(|_| Ok(GrantWrite::New(g))).unwrap();
    assert!(matches!(w, GrantWrite::New(_)));
}

fn grant_labels(m: &Memory) -> Vec<String> {
    m.records_of(APPLICATION)
        .into_iter()
        .map(|r| r.1)
        .filter(|l| l.starts_with("p11kms:grant:"))
        .collect()
}

#[test]
fn grants_are_indexed_seen_by_other_processes_and_deleted_through_a_tombstone() {
    let m = Arc::new(Memory::default());
    let a = open(&m);
    let b = open(&m);
    let k1 = create_key(&m, &a, "one");
    let k2 = create_key(&m, &a, "two");
    put_grant(&a, grant_on(k1, 1));
    put_grant(&a, grant_on(k1, 2));
    put_grant(&a, grant_on(k2, 3));
    {
        let snap = a.read();
        assert_eq!(snap.grants.len(), 3);
        let ids: Vec<GrantId> = snap.grants_of(k1).map(|g| g.grant_id).collect();
        assert_eq!(
            ids,
            vec![GrantId::from_bytes([1; 32]), GrantId::from_bytes([2; 32])]
        );
    }
    assert_eq!(grant_labels(&m).len(), 3);
    // Another process: only after its refresh.
    assert!(b.read().grants.is_empty());
    b.refresh().unwrap();
    assert_eq!(b.read().grants_of(k2).count(), 1);

    // A rule's refusal writes nothing; a deletion leaves no object behind.
    let gid = GrantId::from_bytes([1; 32]);
    let refused = b.delete_grant(&gid, 5, |_| Err(KmsError::dry_run_succeeded("dry")));
    assert_eq!(refused.unwrap_err().aws_name(), "DryRunOperationException");
    assert_eq!(grant_labels(&m).len(), 3);
    let gone = b.delete_grant(&gid, 5, |g| {
        assert!(g.is_some());
        Ok(())
    });
    assert_eq!(gone.unwrap().grant_id, gid);
    assert_eq!(
        grant_labels(&m).len(),
        2,
        "the grant and its tombstone are destroyed"
    );
    assert!(!b.read().grants.contains_key(&gid));
    assert_eq!(b.read().grants_of(k1).count(), 1);
    a.refresh().unwrap();
    assert!(!a.read().grants.contains_key(&gid));
    assert_eq!(a.read().grants_by_key.get(&k1).map(|s| s.len()), Some(1));
}

#[test]
fn a_tombstone_beats_its_grant_after_a_crash_and_stays_while_the_grant_may_remain() {
    let m = Arc::new(Memory::default());
    let s = open(&m);
    let key = create_key(&m, &s, "k");
    let g = grant_on(key, 7);
    put_grant(&s, g.clone());
    // A writer that died after its tombstone, before destroying anything.
    let tomb = RecordLabel {
        subject: Subject::Grant(g.grant_id),
        seq: 2,
        writer: "ffffffff".into(),
    };
    m.create(
        APPLICATION,
        &tomb.format(),
        &Record::GrantV1(GrantRecord {
            deleted_ms: Some(9),
            ..g.clone()
        })
        .encode(),
    )
    .unwrap();
    let fresh = open(&m);
    assert!(fresh.read().grants.is_empty(), "the tombstone wins");
    assert_eq!(
        grant_labels(&m),
        vec![tomb.format()],
        "the grant's object is swept"
    );

    // A deletion whose older object cannot be destroyed keeps its tombstone.
    let g2 = grant_on(key, 8);
    put_grant(&fresh, g2.clone());
    let old = m
        .records_of(APPLICATION)
        .into_iter()
        .find(|(_, l)| l.contains(&g2.grant_id.to_string()))
        .map(|(h, _)| h)
        .unwrap();
    m.state().refuse_destroy.insert(old);
    fresh.delete_grant(&g2.grant_id, 9, |_| Ok(())).unwrap();
    let left: Vec<String> = grant_labels(&m)
        .into_iter()
        .filter(|l| l.contains(&g2.grant_id.to_string()))
        .collect();
    assert_eq!(left.len(), 2, "grant and tombstone: {left:?}");
    m.state().refuse_destroy.clear();
    let other = open(&m);
    assert!(!other.read().grants.contains_key(&g2.grant_id));
}

#[test]
fn a_destroyed_key_takes_its_grants_even_those_this_process_has_not_seen() {
    let m = Arc::new(Memory::default());
    let s = open(&m);
    let other = open(&m);
    let key = create_key(&m, &s, "doomed");
    let kept = create_key(&m, &s, "kept");
    put_grant(&s, grant_on(key, 1));
    put_grant(&s, grant_on(kept, 2));
    other.refresh().unwrap();
    // Made elsewhere, never seen here.
    put_grant(&other, grant_on(key, 3));
    assert!(s.destroy_key_if(&key, |_| true).unwrap());
    let left = grant_labels(&m);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains(&GrantId::from_bytes([2; 32]).to_string()));
    assert!(s.read().grants_of(key).next().is_none());
    other.refresh().unwrap();
    assert_eq!(other.read().grants.len(), 1);
}

/// A multi-Region key (`region` the key record's) with its backing key, made as CreateKey.
fn create_mrk(m: &Arc<Memory>, s: &MemStore, region: &str) -> KeyId {
    let id = KeyId::new_multi_region(false);
    let h = m.add_key(
        &cmk_label(&id, 1),
        CmkAttributes::genuine_for_tests(&cmk_id(&id, 1)),
    );
    let r = KeyRecord {
        region: Some(region.into()),
        ..record(id, region)
    };
    s.put_key(r, BTreeMap::from([(1, h)])).unwrap();
    id
}

fn replica_record(id: KeyId, region: &str) -> KeyRecord {
    KeyRecord {
        region: Some(region.into()),
        ..record(id, region)
    }
}

/// Writes what UpdatePrimaryRegion's steps would, as a process that dies after `steps`.
fn plant(m: &Arc<Memory>, subject: Subject, seq: u64, value: Record) {
    let label = RecordLabel {
        subject,
        seq,
        writer: "eeeeeeee".into(),
    };
    m.create(APPLICATION, &label.format(), &value.encode())
        .unwrap();
}

#[test]
fn replicas_share_the_key_records_material_and_a_moved_primary_survives_any_crash() {
    let m = Arc::new(Memory::default());
    let s = open(&m);
    let id = create_mrk(&m, &s, "us-east-2");
    s.put_replica(replica_record(id, "eu-west-1"), |_| Ok(()))
        .unwrap();
    let view = s.read().replica_entry(&id, "eu-west-1").unwrap();
    assert_eq!(view.record.description, "eu-west-1");
    assert_eq!(
        view.cmks,
        s.key(&id).unwrap().cmks,
        "the key record's backing keys"
    );
    // A new backing version of the key record is the replica's at once.
    s.update_key(
        &id,
        |e| {
            let mut r = e.record.clone();
            r.versions.push(crate::kms::records::BackingVersion {
                version: 2,
                created: 2,
                rotation: None,
            });
            r.current_version = 2;
            Ok(Change::Write(r))
        },
        |_| Ok(()),
    )
    .unwrap();
    let view = s.read().replica_entry(&id, "eu-west-1").unwrap();
    assert_eq!(view.record.current_version, 2);
    assert_eq!(view.record.region.as_deref(), Some("eu-west-1"));
    // Another process sees the replica.
    let other = open(&m);
    assert_eq!(other.read().replica_regions(&id), ["eu-west-1"]);

    // A crash after step 1 (a replica record of the primary's own region): the old state.
    plant(
        &m,
        Subject::Replica("us-east-2".into(), id),
        1,
        Record::ReplicaV1(replica_record(id, "us-east-2")),
    );
    let after1 = open(&m);
    assert_eq!(after1.read().replica_regions(&id), ["eu-west-1"]);
    assert_eq!(
        after1.key(&id).unwrap().record.region.as_deref(),
        Some("us-east-2")
    );
    // A crash after step 2 (the key record names the new region, whose replica record is
    // still there): the new state.
    let moved = KeyRecord {
        region: Some("eu-west-1".into()),
        description: "eu-west-1".into(),
        ..s.key(&id).unwrap().record
    };
    plant(&m, Subject::Key(id), 99, Record::KeyV1(moved));
    let after2 = open(&m);
    assert_eq!(after2.read().replica_regions(&id), ["us-east-2"]);
    assert_eq!(
        after2.key(&id).unwrap().record.region.as_deref(),
        Some("eu-west-1")
    );
    assert!(after2.read().replica_entry(&id, "eu-west-1").is_none());
    // And a clean move back leaves one record per region.
    after2
        .move_primary(&id, "us-east-2", |_, _| Ok(()))
        .unwrap();
    let clean = open(&m);
    assert_eq!(clean.read().replica_regions(&id), ["eu-west-1"]);
    assert_eq!(
        clean.key(&id).unwrap().record.region.as_deref(),
        Some("us-east-2")
    );
    let labels: Vec<String> = m
        .records_of(APPLICATION)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(
        labels
            .iter()
            .filter(|l| l.starts_with("p11kms:replica:eu-west-1:"))
            .count(),
        1,
        "{labels:?}"
    );
    assert_eq!(
        labels
            .iter()
            .filter(|l| l.starts_with("p11kms:key:"))
            .count(),
        1,
        "{labels:?}"
    );
}

#[test]
fn a_key_with_replicas_elsewhere_is_never_destroyed() {
    let m = Arc::new(Memory::default());
    let s = open(&m);
    let id = create_mrk(&m, &s, "us-east-2");
    s.put_replica(replica_record(id, "eu-west-1"), |_| Ok(()))
        .unwrap();
    assert!(!s.destroy_key_if(&id, |_| true).unwrap());
    assert!(s.key(&id).is_some());
    // The replica goes (never a backing key), then the key may.
    assert!(s
        .destroy_replica_if(&id, "eu-west-1", |_| true, |_| true)
        .unwrap());
    assert!(s.read().replica_regions(&id).is_empty());
    assert_eq!(m.state().keys.len(), 1, "the backing key stays");
    assert!(s.destroy_key_if(&id, |_| true).unwrap());
    assert_eq!(m.state().keys.len(), 0);
}
