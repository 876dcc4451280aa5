//! Key rotation through the real `aws-sdk-kms` client: EnableKeyRotation, DisableKeyRotation,
//! GetKeyRotationStatus, RotateKeyOnDemand, ListKeyRotations, their limits and errors, key
//! material ids, and ciphertexts of every backing version still opening (also in a freshly
//! opened service, as after a restart).
//!
//! Rotations are completed by calling the library (`complete_rotation`, `rotate_due_at`):
//! the in-process test server runs no upkeep thread.

mod api_support;
mod common;
mod sdk;

use sdk::code;

use std::time::{SystemTime, UNIX_EPOCH};

use api_support::{server, REGION};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{
    IncludeKeyMaterial, KeyMaterialState, KeySpec, KeyUsageType, OriginType, RotationType,
};
use aws_sdk_kms::Client;
use common::dev_credentials;
use p11kms::kms::KeyId;

const DAY_MS: i64 = 86_400_000;

fn client() -> Client {
    let (id, secret) = dev_credentials();
    sdk::client(&server().endpoint, REGION, &id, &secret, None)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn new_key(c: &Client) -> String {
    c.create_key()
        .send()
        .await
        .expect("create key")
        .key_metadata
        .expect("metadata")
        .key_id
}

async fn current_material(c: &Client, id: &str) -> String {
    c.describe_key()
        .key_id(id)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .current_key_material_id
        .expect("CurrentKeyMaterialId")
}

async fn encrypt(c: &Client, id: &str, text: &str) -> Blob {
    c.encrypt()
        .key_id(id)
        .plaintext(Blob::new(text.as_bytes()))
        .send()
        .await
        .unwrap()
        .ciphertext_blob
        .unwrap()
}

/// Decrypts and returns (plaintext, KeyMaterialId).
async fn decrypt(c: &Client, blob: &Blob) -> (String, String) {
    let out = c
        .decrypt()
        .ciphertext_blob(blob.clone())
        .send()
        .await
        .unwrap();
    (
        String::from_utf8(out.plaintext.unwrap().into_inner()).unwrap(),
        out.key_material_id.expect("KeyMaterialId"),
    )
}

/// Asks for an on-demand rotation and completes it here; returns the new version.
async fn rotate(c: &Client, id: &str) -> u32 {
    let out = c.rotate_key_on_demand().key_id(id).send().await.unwrap();
    assert_eq!(out.key_id.as_deref(), Some(arn(id).as_str()));
    finish(id.parse().unwrap())
}

/// Completes the pending on-demand rotation of `key` (here, or in another test's upkeep call
/// that claimed it first); returns the key's current version then.
fn finish(key: KeyId) -> u32 {
    common::kms().complete_rotation(key).expect("rotate");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    loop {
        let r = common::kms().key_record(key).unwrap();
        if r.on_demand_rotation_ms.is_none() {
            return r.current_version;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotation never completed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Upkeep rounds at `at` until key `key` has rotated past version `from`, for at most 30 s
/// (a round can end with nothing done: claims that took the token too long to write, or a
/// claim too close to another's); returns every (key, new version) the rounds made here.
fn rotate_due_until(key: KeyId, from: u32, at: i64) -> Vec<(KeyId, u32)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut made = Vec::new();
    loop {
        made.extend(common::kms().rotate_due_at(at).unwrap());
        let now = common::kms().key_record(key).unwrap().current_version;
        if now > from || std::time::Instant::now() >= deadline {
            return made;
        }
    }
}

fn arn(id: &str) -> String {
    format!("arn:aws:kms:{REGION}:111122223333:key/{id}")
}

#[tokio::test]
async fn on_demand_rotations_keep_every_ciphertext_open() {
    let c = client();
    let id = new_key(&c).await;
    let key: KeyId = id.parse().unwrap();
    let m1 = current_material(&c, &id).await;
    assert_eq!(m1.len(), 64, "{m1}");
    assert!(m1.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(m1, p11kms::kms::key_material_id(&key, 1));
    let c1 = encrypt(&c, &id, "one").await;
    assert_eq!(decrypt(&c, &c1).await, ("one".into(), m1.clone()));

    // In progress: shown by the status, a second request is a conflict.
    c.rotate_key_on_demand().key_id(&id).send().await.unwrap();
    let s = c
        .get_key_rotation_status()
        .key_id(&id)
        .send()
        .await
        .unwrap();
    assert!(s.on_demand_rotation_start_date.is_some(), "{s:?}");
    assert!(!s.key_rotation_enabled);
    assert_eq!(s.key_id.as_deref(), Some(arn(&id).as_str()));
    assert_eq!(
        code(c.rotate_key_on_demand().key_id(&id).send().await),
        "ConflictException"
    );
    assert_eq!(finish(key), 2);
    // Completed: nothing pending, nothing more to do.
    let s = c
        .get_key_rotation_status()
        .key_id(&id)
        .send()
        .await
        .unwrap();
    assert!(s.on_demand_rotation_start_date.is_none(), "{s:?}");
    assert!(common::kms().complete_rotation(key).unwrap().is_empty());

    let m2 = current_material(&c, &id).await;
    assert_ne!(m1, m2);
    assert_eq!(m2, p11kms::kms::key_material_id(&key, 2));
    let c2 = encrypt(&c, &id, "two").await;
    let dk = c
        .generate_data_key()
        .key_id(&id)
        .number_of_bytes(32)
        .send()
        .await
        .unwrap();
    assert_eq!(dk.key_material_id.as_deref(), Some(m2.as_str()));
    let dk_blob = dk.ciphertext_blob.unwrap();
    assert_eq!(rotate(&c, &id).await, 3);
    assert_eq!(rotate(&c, &id).await, 4);
    let m4 = current_material(&c, &id).await;
    let c4 = encrypt(&c, &id, "four").await;
    assert_eq!(decrypt(&c, &c1).await, ("one".into(), m1.clone()));
    assert_eq!(decrypt(&c, &c2).await, ("two".into(), m2.clone()));
    assert_eq!(decrypt(&c, &c4).await, ("four".into(), m4.clone()));
    let opened = c.decrypt().ciphertext_blob(dk_blob).send().await.unwrap();
    assert_eq!(opened.key_material_id.as_deref(), Some(m2.as_str()));
    let re = c
        .re_encrypt()
        .ciphertext_blob(c1.clone())
        .destination_key_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(re.source_key_material_id.as_deref(), Some(m1.as_str()));
    assert_eq!(re.destination_key_material_id.as_deref(), Some(m4.as_str()));
    assert_eq!(
        decrypt(&c, &re.ciphertext_blob.unwrap()).await,
        ("one".into(), m4.clone())
    );

    // ListKeyRotations: the three rotations, oldest first; with the first material too.
    let l = c.list_key_rotations().key_id(&id).send().await.unwrap();
    let rotations = l.rotations.unwrap_or_default();
    assert_eq!(rotations.len(), 3);
    assert!(!l.truncated);
    for (i, r) in rotations.iter().enumerate() {
        assert_eq!(r.key_id.as_deref(), Some(arn(&id).as_str()));
        assert_eq!(r.rotation_type, Some(RotationType::OnDemand));
        assert!(r.rotation_date.is_some());
        assert_eq!(
            r.key_material_id.as_deref(),
            Some(p11kms::kms::key_material_id(&key, i as u32 + 2).as_str())
        );
        let want = if i == 2 {
            KeyMaterialState::Current
        } else {
            KeyMaterialState::NonCurrent
        };
        assert_eq!(r.key_material_state, Some(want));
        assert!(r.import_state.is_none());
    }
    let all = c
        .list_key_rotations()
        .key_id(arn(&id))
        .include_key_material(IncludeKeyMaterial::AllKeyMaterial)
        .send()
        .await
        .unwrap()
        .rotations
        .unwrap_or_default();
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].key_material_id.as_deref(), Some(m1.as_str()));
    assert!(all[0].rotation_date.is_none() && all[0].rotation_type.is_none());

    // Paging, one at a time.
    let mut seen = Vec::new();
    let mut marker = None;
    loop {
        let page = c
            .list_key_rotations()
            .key_id(&id)
            .include_key_material(IncludeKeyMaterial::AllKeyMaterial)
            .limit(1)
            .set_marker(marker.clone())
            .send()
            .await
            .unwrap();
        let r = page.rotations.unwrap_or_default();
        assert_eq!(r.len(), 1);
        seen.push(r[0].key_material_id.clone().unwrap());
        if !page.truncated {
            assert!(page.next_marker.is_none());
            break;
        }
        marker = page.next_marker;
        assert!(marker.is_some());
    }
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0], m1);
    assert_eq!(
        code(
            c.list_key_rotations()
                .key_id(&id)
                .marker("not-ours")
                .send()
                .await
        ),
        "InvalidMarkerException"
    );
    assert_eq!(
        code(c.list_key_rotations().key_id(&id).limit(0).send().await),
        "ValidationException"
    );
    assert_eq!(
        code(c.list_key_rotations().key_id(&id).limit(1001).send().await),
        "ValidationException"
    );
    assert_eq!(
        code(
            c.list_key_rotations()
                .key_id(&id)
                .include_key_material(IncludeKeyMaterial::from("SOME"))
                .send()
                .await
        ),
        "ValidationException"
    );

    // A freshly opened service (a restart, or another process) opens every version.
    let fresh = common::fresh_kms();
    for (blob, text) in [(&c1, "one"), (&c2, "two"), (&c4, "four")] {
        let out = fresh
            .decrypt(p11kms::kms::types::DecryptRequest {
                ciphertext_blob: Some(p11kms::kms::types::Bytes(blob.as_ref().to_vec())),
                ..Default::default()
            })
            .expect("decrypt after reopen");
        assert_eq!(&out.plaintext.0[..], text.as_bytes());
    }
    let r = fresh.key_record(key).unwrap();
    assert_eq!(r.current_version, 4);
    assert_eq!(r.versions.len(), 4);
    for v in 1..=4 {
        common::cmk(fresh.token(), &key, v);
    }
}

#[tokio::test]
async fn enable_disable_and_status() {
    let c = client();
    let id = new_key(&c).await;
    let s = c
        .get_key_rotation_status()
        .key_id(&id)
        .send()
        .await
        .unwrap();
    assert!(!s.key_rotation_enabled);
    assert!(s.rotation_period_in_days.is_none() && s.next_rotation_date.is_none());

    for bad in [89, 2561, 0, -1] {
        assert_eq!(
            code(
                c.enable_key_rotation()
                    .key_id(&id)
                    .rotation_period_in_days(bad)
                    .send()
                    .await
            ),
            "ValidationException",
            "{bad}"
        );
    }
    let before = now_ms();
    c.enable_key_rotation().key_id(&id).send().await.unwrap();
    let s = c
        .get_key_rotation_status()
        .key_id(arn(&id))
        .send()
        .await
        .unwrap();
    assert!(s.key_rotation_enabled);
    assert_eq!(s.rotation_period_in_days, Some(365));
    let next = s.next_rotation_date.unwrap().to_millis().unwrap();
    assert!(
        next >= before + 365 * DAY_MS && next <= now_ms() + 365 * DAY_MS,
        "{next}"
    );
    // A new period moves the next date by the difference.
    c.enable_key_rotation()
        .key_id(&id)
        .rotation_period_in_days(2560)
        .send()
        .await
        .unwrap();
    let s = c
        .get_key_rotation_status()
        .key_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(s.rotation_period_in_days, Some(2560));
    assert_eq!(
        s.next_rotation_date.unwrap().to_millis().unwrap(),
        next + (2560 - 365) * DAY_MS
    );
    c.enable_key_rotation()
        .key_id(&id)
        .rotation_period_in_days(90)
        .send()
        .await
        .unwrap();

    // Disabled key: the status stays, changes are DisabledException.
    c.disable_key().key_id(&id).send().await.unwrap();
    let s = c
        .get_key_rotation_status()
        .key_id(&id)
        .send()
        .await
        .unwrap();
    assert!(s.key_rotation_enabled);
    for r in [
        code(c.enable_key_rotation().key_id(&id).send().await),
        code(c.disable_key_rotation().key_id(&id).send().await),
        code(c.rotate_key_on_demand().key_id(&id).send().await),
    ] {
        assert_eq!(r, "DisabledException");
    }
    c.enable_key().key_id(&id).send().await.unwrap();
    c.disable_key_rotation().key_id(&id).send().await.unwrap();
    let s = c
        .get_key_rotation_status()
        .key_id(&id)
        .send()
        .await
        .unwrap();
    assert!(!s.key_rotation_enabled && s.next_rotation_date.is_none());
    // Twice is fine.
    c.disable_key_rotation().key_id(&id).send().await.unwrap();

    // Pending deletion: reads as not rotating; changes are KMSInvalidStateException; the
    // status comes back when the deletion is cancelled.
    c.enable_key_rotation().key_id(&id).send().await.unwrap();
    c.schedule_key_deletion().key_id(&id).send().await.unwrap();
    let s = c
        .get_key_rotation_status()
        .key_id(&id)
        .send()
        .await
        .unwrap();
    assert!(!s.key_rotation_enabled);
    for r in [
        code(c.enable_key_rotation().key_id(&id).send().await),
        code(c.disable_key_rotation().key_id(&id).send().await),
        code(c.rotate_key_on_demand().key_id(&id).send().await),
    ] {
        assert_eq!(r, "KMSInvalidStateException");
    }
    c.cancel_key_deletion().key_id(&id).send().await.unwrap();
    let s = c
        .get_key_rotation_status()
        .key_id(&id)
        .send()
        .await
        .unwrap();
    assert!(s.key_rotation_enabled);

    // Key ids and ARNs only, as at AWS; a missing key is NotFoundException.
    c.create_alias()
        .alias_name("alias/rotation-status")
        .target_key_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(
            c.get_key_rotation_status()
                .key_id("alias/rotation-status")
                .send()
                .await
        ),
        "NotFoundException"
    );
    assert_eq!(
        code(
            c.enable_key_rotation()
                .key_id(KeyId::new_random().to_string())
                .send()
                .await
        ),
        "NotFoundException"
    );
    assert_eq!(
        code(c.get_key_rotation_status().send().await),
        "ValidationException"
    );
}

#[tokio::test]
async fn only_symmetric_generated_keys_rotate() {
    let c = client();
    let rsa = c
        .create_key()
        .key_spec(KeySpec::Rsa2048)
        .key_usage(KeyUsageType::SignVerify)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    assert!(rsa.current_key_material_id.is_none());
    let hmac = c
        .create_key()
        .key_spec(KeySpec::Hmac256)
        .key_usage(KeyUsageType::GenerateVerifyMac)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    for id in [&rsa.key_id, &hmac.key_id] {
        assert_eq!(
            code(c.enable_key_rotation().key_id(id).send().await),
            "UnsupportedOperationException"
        );
        assert_eq!(
            code(c.disable_key_rotation().key_id(id).send().await),
            "UnsupportedOperationException"
        );
        assert_eq!(
            code(c.rotate_key_on_demand().key_id(id).send().await),
            "UnsupportedOperationException"
        );
        assert_eq!(
            code(c.get_key_rotation_status().key_id(id).send().await),
            "UnsupportedOperationException"
        );
        assert_eq!(
            code(c.list_key_rotations().key_id(id).send().await),
            "UnsupportedOperationException"
        );
    }
    // Imported key material: no automatic rotation, and no on-demand rotation here.
    let ext = c
        .create_key()
        .origin(OriginType::External)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap();
    assert!(ext.current_key_material_id.is_none(), "no material yet");
    assert_eq!(
        code(c.enable_key_rotation().key_id(&ext.key_id).send().await),
        "UnsupportedOperationException"
    );
    assert_eq!(
        code(c.rotate_key_on_demand().key_id(&ext.key_id).send().await),
        "UnsupportedOperationException"
    );
    let s = c
        .get_key_rotation_status()
        .key_id(&ext.key_id)
        .send()
        .await
        .unwrap();
    assert!(!s.key_rotation_enabled);
    let l = c
        .list_key_rotations()
        .key_id(&ext.key_id)
        .send()
        .await
        .unwrap();
    assert!(l.rotations.unwrap_or_default().is_empty());
}

#[tokio::test]
async fn automatic_rotation_when_due() {
    let c = client();
    let id = new_key(&c).await;
    let key: KeyId = id.parse().unwrap();
    let old = encrypt(&c, &id, "before").await;
    c.enable_key_rotation()
        .key_id(&id)
        .rotation_period_in_days(90)
        .send()
        .await
        .unwrap();
    // Not due yet: nothing happens to this key.
    let soon = now_ms() + 89 * DAY_MS;
    let done = common::kms().rotate_due_at(soon).unwrap();
    assert!(!done.iter().any(|(k, _)| *k == key));
    // Due: exactly one rotation, however often upkeep runs at that time.
    let later = now_ms() + 91 * DAY_MS;
    let done = rotate_due_until(key, 1, later);
    assert!(done.contains(&(key, 2)), "{done:?}");
    let again = common::kms().rotate_due_at(later).unwrap();
    assert!(!again.iter().any(|(k, _)| *k == key));
    let l = c.list_key_rotations().key_id(&id).send().await.unwrap();
    let r = l.rotations.unwrap_or_default();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].rotation_type, Some(RotationType::Automatic));
    let s = c
        .get_key_rotation_status()
        .key_id(&id)
        .send()
        .await
        .unwrap();
    let next = s.next_rotation_date.unwrap().to_millis().unwrap();
    assert!(next >= later + 90 * DAY_MS, "{next} {later}");
    assert_eq!(decrypt(&c, &old).await.0, "before");
    // A disabled key does not rotate; once enabled again, an overdue one does.
    c.disable_key().key_id(&id).send().await.unwrap();
    let far = now_ms() + 200 * DAY_MS;
    let done = common::kms().rotate_due_at(far).unwrap();
    assert!(!done.iter().any(|(k, _)| *k == key));
    c.enable_key().key_id(&id).send().await.unwrap();
    let done = rotate_due_until(key, 2, far);
    assert!(done.contains(&(key, 3)), "{done:?}");
    assert_eq!(decrypt(&c, &old).await.0, "before");
}

#[tokio::test]
async fn at_most_25_on_demand_rotations() {
    let c = client();
    let id = new_key(&c).await;
    let first = encrypt(&c, &id, "first").await;
    for n in 0..p11kms::kms::MAX_ON_DEMAND_ROTATIONS as u32 {
        assert_eq!(rotate(&c, &id).await, n + 2);
    }
    assert_eq!(
        code(c.rotate_key_on_demand().key_id(&id).send().await),
        "LimitExceededException"
    );
    let l = c
        .list_key_rotations()
        .key_id(&id)
        .limit(1000)
        .send()
        .await
        .unwrap();
    assert_eq!(l.rotations.unwrap_or_default().len(), 25);
    assert_eq!(decrypt(&c, &first).await.0, "first");
    // Automatic rotation is not limited.
    c.enable_key_rotation().key_id(&id).send().await.unwrap();
    let key: KeyId = id.parse().unwrap();
    let done = rotate_due_until(key, 26, now_ms() + 366 * DAY_MS);
    assert!(done.contains(&(key, 27)), "{done:?}");
}

#[tokio::test]
async fn key_policies_decide_rotation_calls() {
    let c = client();
    // Rotation periods over 400 days and on-demand rotations are denied on this key.
    let policy = r#"{"Version":"2012-10-17","Statement":[
            {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"},
            {"Effect":"Deny","Principal":"*","Action":"kms:EnableKeyRotation","Resource":"*",
              "Condition":{"NumericGreaterThan":{"kms:RotationPeriodInDays":"400"}}},
            {"Effect":"Deny","Principal":"*","Action":"kms:RotateKeyOnDemand","Resource":"*"}
        ]}"#;
    let id = c
        .create_key()
        .policy(policy)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id;
    c.enable_key_rotation()
        .key_id(&id)
        .rotation_period_in_days(400)
        .send()
        .await
        .expect("400 days is allowed");
    assert_eq!(
        code(
            c.enable_key_rotation()
                .key_id(&id)
                .rotation_period_in_days(401)
                .send()
                .await
        ),
        "AccessDeniedException"
    );
    // Without the member, the condition key is absent and the deny does not match.
    c.enable_key_rotation().key_id(&id).send().await.unwrap();
    assert_eq!(
        code(c.rotate_key_on_demand().key_id(&id).send().await),
        "AccessDeniedException"
    );
    c.get_key_rotation_status()
        .key_id(&id)
        .send()
        .await
        .unwrap();
    c.list_key_rotations().key_id(&id).send().await.unwrap();
}

/// DisableKey and EnableKey set the usage of every backing version in the token, also when
/// the cached handle of one of them has gone stale (another process re-created the object
/// under its label, as a rotation's adoption or a restore does): that version is looked up
/// again and set too, and the versions after it are not skipped.
#[test]
fn state_changes_reach_every_version_through_a_stale_handle() {
    use p11kms::kms::types::{EncryptRequest, SecretBytes};
    use p11kms::kms::{cmk_id, cmk_label};
    let kms = common::kms();
    let token = kms.token();
    let id = common::new_key();
    let key: KeyId = id.parse().unwrap();
    for want in [2, 3] {
        kms.rotate_key_on_demand(common::key_req(&id)).unwrap();
        assert_eq!(finish(key), want);
    }
    // Version 2 re-created behind this service's back: its cached handle is stale now.
    let old = common::cmk(token, &key, 2);
    token.destroy_cmk(old).unwrap();
    let kdf = kms.key_record(key).unwrap().kdf;
    let new = token
        .generate_cmk(&cmk_label(&key, 2), &cmk_id(&key, 2), kdf)
        .unwrap();
    assert_ne!(new, old, "the token gave the new object the old handle");
    let derive = |v: u32| {
        token
            .cmk_custody(common::cmk(token, &key, v))
            .unwrap()
            .derive
    };

    kms.disable_key(common::key_req(&id)).unwrap();
    for v in 1..=3 {
        assert!(
            !derive(v),
            "version {v} is still derivable after DisableKey"
        );
    }
    kms.enable_key(common::key_req(&id)).unwrap();
    for v in 1..=3 {
        assert!(derive(v), "version {v} is not derivable after EnableKey");
    }
    kms.encrypt(EncryptRequest {
        key_id: Some(id.as_str().into()),
        plaintext: Some(SecretBytes(b"after".to_vec().into())),
        ..Default::default()
    })
    .expect("the current version works");
}
