//! Threads writing to the token while another opens it: SoftHSM reads its token file back
//! while it is being rewritten and answers CKR_GENERAL_ERROR; the token layer must ride that
//! out instead of failing CreateKey.

mod common;

use p11kms::kms::types::CreateKeyRequest;

#[test]
fn writes_survive_concurrent_token_opens() {
    common::new_key();
    let writers: Vec<_> = (0..3)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..20 {
                    if let Err(e) = common::kms().create_key(CreateKeyRequest::default()) {
                        panic!("writer {t}, key {i}: {e:?}");
                    }
                }
            })
        })
        .collect();
    for _ in 0..8 {
        let fresh = common::fresh_kms();
        fresh.refresh().unwrap();
    }
    for w in writers {
        w.join().unwrap();
    }
}
