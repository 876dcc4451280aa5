//! Threads writing to the token while another opens it: SoftHSM reads its token file back
//! while it is being rewritten and answers CKR_GENERAL_ERROR; the token layer must ride that
//! out instead of failing CreateKey.

mod common;

use std::collections::HashSet;

use p11kms::kms::types::{CreateKeyRequest, DecryptRequest, GenerateDataKeyRequest, ListRequest};
use p11kms::kms::Kms;

const WRITERS: usize = 3;
const KEYS_EACH: usize = 20;

/// Every key id `kms` lists.
fn all_keys(kms: &Kms) -> HashSet<String> {
    let mut keys = HashSet::new();
    let mut marker = None;
    loop {
        let page = kms
            .list_keys(ListRequest {
                limit: Some(100),
                marker: marker.clone(),
                key_id: None,
                ..Default::default()
            })
            .expect("list keys");
        keys.extend(page.keys.into_iter().map(|k| k.key_id));
        if !page.truncated {
            return keys;
        }
        marker = page.next_marker;
    }
}

/// A data key under `key` from `by`, opened by `opener`: the plaintext comes back.
fn round_trip(by: &Kms, opener: &Kms, key: &str) {
    let dk = by
        .generate_data_key(GenerateDataKeyRequest {
            key_id: Some(key.into()),
            key_spec: Some("AES_256".into()),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("data key under {key}: {e:?}"));
    let opened = opener
        .decrypt(DecryptRequest {
            ciphertext_blob: Some(dk.ciphertext_blob),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("decrypt under {key}: {e:?}"));
    assert_eq!(opened.plaintext, dk.plaintext, "key {key}");
    assert_eq!(opened.key_id, dk.key_id, "key {key}");
}

#[test]
fn writes_survive_concurrent_token_opens() {
    let first = common::new_key();
    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            std::thread::spawn(move || {
                (0..KEYS_EACH)
                    .map(
                        |i| match common::kms().create_key(CreateKeyRequest::default()) {
                            Ok(r) => r.key_metadata.key_id,
                            Err(e) => panic!("writer {t}, key {i}: {e:?}"),
                        },
                    )
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    // Each open while the writers run sees a usable store: the key made before, at least.
    let mut seen_while_writing = Vec::new();
    for _ in 0..8 {
        let fresh = common::fresh_kms();
        fresh.refresh().expect("refresh while writers run");
        let keys = all_keys(&fresh);
        assert!(
            keys.contains(&first),
            "an open during the writes lost {first}"
        );
        round_trip(&fresh, common::kms(), &first);
        seen_while_writing.push(keys.len());
    }
    let made: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer thread"))
        .collect();
    eprintln!(
        "concurrency: {} keys made; opens during the writes listed {seen_while_writing:?}",
        made.len()
    );
    let distinct: HashSet<&String> = made.iter().collect();
    assert_eq!(made.len(), WRITERS * KEYS_EACH);
    assert_eq!(
        distinct.len(),
        made.len(),
        "every CreateKey made a key of its own"
    );
    // Every key made is there, and works, for the writer and for a process opened afresh.
    let fresh = common::fresh_kms();
    let listed = all_keys(&fresh);
    let mut plaintexts = HashSet::new();
    for key in &made {
        assert!(listed.contains(key), "{key} missing from a fresh open");
        round_trip(common::kms(), &fresh, key);
        round_trip(&fresh, common::kms(), key);
        let dk = fresh
            .generate_data_key(GenerateDataKeyRequest {
                key_id: Some(key.clone().into()),
                key_spec: Some("AES_256".into()),
                ..Default::default()
            })
            .expect("data key");
        plaintexts.insert(dk.plaintext.0.to_vec());
    }
    assert_eq!(plaintexts.len(), made.len(), "every data key is distinct");
}
