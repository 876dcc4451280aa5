mod common;
use p11kms::kms::types::*;

#[test]
fn smoke() {
    let kms = common::kms();
    let id = common::new_key();
    let ctx: ContextMap = [("purpose".to_string(), "test".to_string())].into();
    let r = kms
        .generate_data_key(GenerateDataKeyRequest {
            key_id: Some(id.clone()),
            key_spec: Some("AES_256".into()),
            encryption_context: Some(ctx.clone()),
            ..Default::default()
        })
        .unwrap();
    let d = kms
        .decrypt(DecryptRequest {
            ciphertext_blob: Some(r.ciphertext_blob.clone()),
            encryption_context: Some(ctx),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(d.plaintext, r.plaintext);
    println!("blob len {}", r.ciphertext_blob.0.len());
}
