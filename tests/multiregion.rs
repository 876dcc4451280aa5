//! Multi-Region keys in the library and across processes: deleting replicas never destroys
//! the shared backing key, a primary waits for its replicas, and a replica or a primary moved
//! by another `p11kms` process is seen here.

mod common;

use p11kms::kms::types::*;
use p11kms::kms::{KeyId, KeySelector, KeyState};

const DAY_MS: i64 = 86_400_000;

/// One test at a time: another process's change is seen at this one's next refresh unless a
/// concurrent write here took the same generation stamp (then at the one after, as
/// documented); the tests below would race each other's stamps.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Refreshes until `seen` holds: at most a few rounds (a lost stamp costs one).
fn refresh_until(kms: &p11kms::kms::Kms, seen: impl Fn() -> bool) {
    for _ in 0..5 {
        kms.refresh().unwrap();
        if seen() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("another process's change was not seen after 5 refreshes");
}
const R: &str = "eu-north-1";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn in_region(id: &str, region: &str) -> KeySelector {
    KeySelector::ResolvedIn(id.parse::<KeyId>().unwrap(), region.to_owned())
}

fn req_in(id: &str, region: &str) -> KeyIdRequest {
    KeyIdRequest {
        key_id: Some(in_region(id, region)),
        grant_tokens: None,
    }
}

fn create_mrk() -> String {
    common::kms()
        .create_key(CreateKeyRequest {
            multi_region: Some(true),
            ..Default::default()
        })
        .expect("create")
        .key_metadata
        .key_id
}

fn replicate(id: &str, region: &str) {
    common::kms()
        .replicate_key(
            ReplicateKeyRequest {
                key_id: Some(id.into()),
                replica_region: Some(region.into()),
                ..Default::default()
            },
            None,
        )
        .expect("replicate");
}

fn schedule(sel: KeySelector) -> ScheduleKeyDeletionResponse {
    common::kms()
        .schedule_key_deletion(ScheduleKeyDeletionRequest {
            key_id: Some(sel),
            pending_window_in_days: Some(7),
        })
        .expect("schedule")
}

fn encrypt(id: &str) -> Vec<u8> {
    common::kms()
        .encrypt(EncryptRequest {
            key_id: Some(id.into()),
            plaintext: Some(SecretBytes(zeroize::Zeroizing::new(b"kept".to_vec()))),
            ..Default::default()
        })
        .expect("encrypt")
        .ciphertext_blob
        .0
}

fn decrypt_in(blob: &[u8], region: Option<&str>, id: &str) -> p11kms::error::Result<Vec<u8>> {
    common::kms()
        .decrypt(DecryptRequest {
            ciphertext_blob: Some(Bytes(blob.to_vec())),
            key_id: region.map(|r| in_region(id, r)),
            ..Default::default()
        })
        .map(|r| r.plaintext.0.to_vec())
}

#[test]
fn deleting_a_replica_keeps_the_key_and_a_primary_waits_for_its_replicas() {
    let _g = serial();
    let kms = common::kms();
    let id = create_mrk();
    let blob = encrypt(&id);
    replicate(&id, R);
    assert_eq!(decrypt_in(&blob, Some(R), &id).unwrap(), b"kept");
    kms.create_alias(AliasRequest {
        scope: Some(p11kms::kms::ArnScope::new(R, &kms.scope().account)),
        alias_name: Some(format!("alias/r-{}", &id[4..12])),
        target_key_id: Some(in_region(&id, R)),
    })
    .expect("alias in the replica's region");

    // The replica goes, with its alias; the backing key and the primary stay.
    let s = schedule(in_region(&id, R));
    assert_eq!(s.key_state, KeyState::PendingDeletion);
    kms.sweep_deletions_at(now_ms() + 8 * DAY_MS)
        .expect("sweep");
    assert_eq!(
        kms.describe_key(req_in(&id, R)).unwrap_err().aws_name(),
        "NotFoundException"
    );
    assert_eq!(decrypt_in(&blob, None, &id).unwrap(), b"kept");
    let fresh = common::fresh_kms();
    assert_eq!(
        fresh
            .describe_key(common::key_req(&id))
            .unwrap()
            .key_metadata
            .multi_region_configuration
            .unwrap()
            .replica_keys
            .len(),
        0
    );
    assert!(kms
        .list_aliases(ListRequest {
            scope: Some(p11kms::kms::ArnScope::new(R, &kms.scope().account)),
            ..Default::default()
        })
        .unwrap()
        .aliases
        .iter()
        .all(|a| !a.alias_name.contains(&id[4..12])));

    // Replicated again; now the primary is scheduled first: it waits.
    replicate(&id, R);
    let s = schedule(common::key_req(&id).key_id.unwrap());
    assert_eq!(s.key_state, KeyState::PendingReplicaDeletion);
    kms.sweep_deletions_at(now_ms() + 40 * DAY_MS)
        .expect("sweep");
    let d = kms.describe_key(common::key_req(&id)).unwrap().key_metadata;
    assert_eq!(d.key_state, KeyState::PendingReplicaDeletion);
    assert!(d.deletion_date.is_none());
    assert_eq!(decrypt_in(&blob, Some(R), &id).unwrap(), b"kept");
    // The last replica goes: the primary's own waiting period starts then.
    schedule(in_region(&id, R));
    let at = now_ms() + 8 * DAY_MS;
    kms.sweep_deletions_at(at).expect("sweep");
    let d = kms.describe_key(common::key_req(&id)).unwrap().key_metadata;
    assert_eq!(d.key_state, KeyState::PendingDeletion);
    let when = d.deletion_date.expect("a deletion date now") * 1000.0;
    assert!(
        (when - (at + 7 * DAY_MS) as f64).abs() < 5_000.0,
        "{when} {at}"
    );
    kms.sweep_deletions_at(at + 8 * DAY_MS).expect("sweep");
    assert_eq!(
        kms.describe_key(common::key_req(&id))
            .unwrap_err()
            .aws_name(),
        "NotFoundException"
    );
    // Every object of the key is gone from the token.
    let parsed: KeyId = id.parse().unwrap();
    assert!(common::fresh_kms().key_record(parsed).is_err());
    let label = p11kms::kms::cmk_label(&parsed, 1);
    assert!(
        common::fresh_token(1)
            .find_cmks(&label)
            .map(|v| v.is_empty())
            .unwrap_or(true),
        "the backing key is destroyed with the last region's key"
    );
}

fn run(args: &[&str]) -> serde_json::Value {
    let out = common::p11kms_cmd()
        .arg("--json")
        .args(args)
        .output()
        .expect("run p11kms");
    assert!(
        out.status.success(),
        "p11kms {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn replicas_made_by_another_process_are_seen_here() {
    let _g = serial();
    let kms = common::kms();
    let created = run(&["key", "create", "--multi-region", "--description", "cli"]);
    let id = created["KeyMetadata"]["KeyId"]
        .as_str()
        .expect("key id")
        .to_owned();
    assert!(id.starts_with("mrk-"), "{id}");
    assert_eq!(created["KeyMetadata"]["MultiRegion"], true);
    let r = run(&["key", "replicate", &id, "--region", R, "--description", "r"]);
    assert_eq!(
        r["ReplicaKeyMetadata"]["MultiRegionConfiguration"]["MultiRegionKeyType"],
        "REPLICA"
    );
    refresh_until(kms, || kms.describe_key(req_in(&id, R)).is_ok());
    let d = kms
        .describe_key(req_in(&id, R))
        .expect("seen here")
        .key_metadata;
    assert_eq!(d.description, "r");
    let blob = encrypt(&id);
    assert_eq!(decrypt_in(&blob, Some(R), &id).unwrap(), b"kept");

    // Another process moves the primary; this one sees the key record's new region.
    run(&["key", "update-primary", &id, "--region", R]);
    refresh_until(kms, || {
        kms.key_record(id.parse().unwrap())
            .is_ok_and(|r| r.region.as_deref() == Some(R))
    });
    let d = kms.describe_key(req_in(&id, R)).unwrap().key_metadata;
    let c = d.multi_region_configuration.unwrap();
    assert_eq!(c.multi_region_key_type, "PRIMARY");
    assert_eq!(c.primary_key.region, R);
    assert_eq!(c.replica_keys.len(), 1);
    assert_eq!(c.replica_keys[0].region, kms.scope().region);
    let home = kms.describe_key(common::key_req(&id)).unwrap().key_metadata;
    assert_eq!(home.description, "cli");
    assert_eq!(
        home.multi_region_configuration
            .unwrap()
            .multi_region_key_type,
        "REPLICA"
    );
    assert_eq!(decrypt_in(&blob, None, &id).unwrap(), b"kept");
    // A restarted process agrees.
    let fresh = common::fresh_kms();
    let f = fresh.describe_key(req_in(&id, R)).unwrap().key_metadata;
    assert_eq!(f.multi_region_configuration.unwrap().primary_key.region, R);
}
