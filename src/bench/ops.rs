//! What is measured: the operations of the main table, the ceilings they are set against, and
//! how each is called through the library, on the wire and as raw token calls.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::error::Result;
use crate::hsm::CeilingOp;
use crate::kms::blob::HEADER_LEN;
use crate::kms::types::{
    Bytes as KmsBytes, ContextMap, DecryptRequest, EncryptRequest, GenerateDataKeyRequest,
    SecretBytes,
};
use crate::kms::{EncryptionContext, Kms};

/// The operations of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    DataKeyWithoutPlaintext,
    DataKey,
    Decrypt,
    Encrypt1k,
}

impl Op {
    pub(super) const ALL: [Op; 4] = [
        Op::DataKeyWithoutPlaintext,
        Op::DataKey,
        Op::Decrypt,
        Op::Encrypt1k,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Op::DataKeyWithoutPlaintext => "GenerateDataKeyWithoutPlaintext",
            Op::DataKey => "GenerateDataKey",
            Op::Decrypt => "Decrypt",
            Op::Encrypt1k => "Encrypt",
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Op::DataKeyWithoutPlaintext => "GenerateDataKeyWithoutPlaintext (32 B, context)",
            Op::DataKey => "GenerateDataKey (32 B, context)",
            Op::Decrypt => "Decrypt (data key blob, context)",
            Op::Encrypt1k => "Encrypt (1 KiB, context)",
        }
    }

    /// Which ceiling this operation is compared with.
    pub(super) fn ceiling(self) -> Ceiling {
        match self {
            Op::DataKeyWithoutPlaintext | Op::DataKey => Ceiling::DataKey,
            Op::Decrypt => Ceiling::Decrypt,
            Op::Encrypt1k => Ceiling::Encrypt,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ceiling {
    DataKey,
    Encrypt,
    Decrypt,
}

impl Ceiling {
    pub(super) const ALL: [Ceiling; 3] = [Ceiling::DataKey, Ceiling::Decrypt, Ceiling::Encrypt];

    pub(super) fn label(self) -> &'static str {
        match self {
            Ceiling::DataKey => "RNG(44) + GCM seal 32 B",
            Ceiling::Decrypt => "GCM open 32 B",
            Ceiling::Encrypt => "RNG(12) + GCM seal 1 KiB",
        }
    }
}

pub(super) const PLAINTEXT_1K: usize = 1024;
pub(super) const DATA_KEY: usize = 32;

pub(super) fn context_map() -> ContextMap {
    ContextMap::from([
        ("purpose".to_owned(), "bench".to_owned()),
        ("tenant".to_owned(), "t-0001".to_owned()),
    ])
}

/// The AAD the real requests carry: a blob header and the canonical context.
pub(super) fn aad() -> Result<Vec<u8>> {
    let mut aad = vec![0u8; HEADER_LEN];
    EncryptionContext::new(context_map())?.write_canonical(&mut aad);
    Ok(aad)
}

pub(super) fn ceiling_op(c: Ceiling) -> Result<CeilingOp> {
    let aad = aad()?;
    Ok(match c {
        Ceiling::DataKey => CeilingOp::DataKey {
            key_len: DATA_KEY,
            aad,
        },
        Ceiling::Encrypt => CeilingOp::Encrypt {
            plaintext_len: PLAINTEXT_1K,
            aad,
        },
        Ceiling::Decrypt => CeilingOp::Decrypt {
            plaintext_len: DATA_KEY,
            aad,
        },
    })
}

/// One library call of `op`.
pub(super) fn library_call(
    kms: &Kms,
    op: Op,
    key: &str,
    blobs: &[Vec<u8>],
    n: usize,
) -> Result<()> {
    let gdk = || GenerateDataKeyRequest {
        key_id: Some(key.into()),
        encryption_context: Some(context_map()),
        key_spec: Some("AES_256".into()),
        ..Default::default()
    };
    match op {
        Op::DataKeyWithoutPlaintext => kms.generate_data_key_without_plaintext(gdk()).map(drop),
        Op::DataKey => kms.generate_data_key(gdk()).map(drop),
        Op::Decrypt => kms
            .decrypt(DecryptRequest {
                ciphertext_blob: Some(KmsBytes(blobs[n % blobs.len()].clone())),
                encryption_context: Some(context_map()),
                ..Default::default()
            })
            .map(drop),
        Op::Encrypt1k => kms
            .encrypt(EncryptRequest {
                key_id: Some(key.into()),
                plaintext: Some(SecretBytes(Zeroizing::new(vec![0x42; PLAINTEXT_1K]))),
                encryption_context: Some(context_map()),
                ..Default::default()
            })
            .map(drop),
    }
}

/// The JSON bodies of `op` on the wire.
pub(super) fn wire_bodies(op: Op, key: &str, blobs: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let ctx = context_map();
    let one = |v: serde_json::Value| vec![v.to_string().into_bytes()];
    match op {
        Op::DataKeyWithoutPlaintext | Op::DataKey => one(serde_json::json!({
            "KeyId": key, "KeySpec": "AES_256", "EncryptionContext": ctx,
        })),
        Op::Encrypt1k => one(serde_json::json!({
            "KeyId": key,
            "Plaintext": B64.encode(vec![0x42u8; PLAINTEXT_1K]),
            "EncryptionContext": ctx,
        })),
        Op::Decrypt => blobs
            .iter()
            .map(|b| {
                serde_json::json!({ "CiphertextBlob": B64.encode(b), "EncryptionContext": ctx })
                    .to_string()
                    .into_bytes()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aad_has_the_real_length() {
        let a = aad().unwrap();
        assert!(a.len() > HEADER_LEN);
    }
}
