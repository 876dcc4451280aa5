//! The ciphertext blob format (version 1). Documented in docs/ciphertext-format.md.
//!
//! ```text
//! offset size  field
//!  0      1    format version (1)
//!  1     16    key id (UUID bytes)
//! 17      4    backing-key version (u32 BE)
//! 21      1    KDF id (1 = CKM_AES_CBC_ENCRYPT_DATA, 2 = SP 800-108 counter KDF, AES-CMAC)
//! 22     32    KDF nonce (derivation data for the epoch key)
//! 54     12    AES-GCM IV
//! 66      n    ciphertext
//! 66+n   16    GCM tag
//! ```
//! AAD = the 66 header bytes ‖ canonical encryption context, so every header byte is
//! authenticated and the context is bound to the blob.

use crate::error::{KmsError, Result};
use crate::hsm::{Kdf, GCM_IV_LEN, GCM_TAG_LEN};
use crate::kms::context::EncryptionContext;
use crate::kms::keyref::KeyId;

pub const FORMAT_V1: u8 = 1;
pub const NONCE_LEN: usize = 32;
pub const HEADER_LEN: usize = 1 + 16 + 4 + 1 + NONCE_LEN + GCM_IV_LEN;
/// AWS's limit for a CiphertextBlob.
pub const MAX_BLOB_LEN: usize = 6144;

/// Everything in front of the sealed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key_id: KeyId,
    pub key_version: u32,
    pub kdf: Kdf,
    pub nonce: [u8; NONCE_LEN],
    pub iv: [u8; GCM_IV_LEN],
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = FORMAT_V1;
        h[1..17].copy_from_slice(self.key_id.as_bytes());
        h[17..21].copy_from_slice(&self.key_version.to_be_bytes());
        h[21] = self.kdf.id();
        h[22..54].copy_from_slice(&self.nonce);
        h[54..66].copy_from_slice(&self.iv);
        h
    }

    /// The additional authenticated data for this header and context.
    pub fn aad(&self, context: &EncryptionContext) -> Vec<u8> {
        let mut aad = Vec::with_capacity(HEADER_LEN + 64);
        aad.extend_from_slice(&self.encode());
        context.write_canonical(&mut aad);
        aad
    }

    /// Header ‖ sealed: the blob handed to the caller.
    pub fn assemble(&self, sealed: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.extend_from_slice(&self.encode());
        out.extend_from_slice(sealed);
        out
    }
}

/// A parsed blob: its header and the ciphertext ‖ tag it carries.
#[derive(Debug)]
pub struct Blob<'a> {
    pub header: Header,
    pub sealed: &'a [u8],
}

/// Parses a blob. Anything that is not a well-formed version-1 blob is
/// `InvalidCiphertextException`, with no detail that would help an attacker.
pub fn parse(bytes: &[u8]) -> Result<Blob<'_>> {
    if bytes.len() < HEADER_LEN + GCM_TAG_LEN + 1 || bytes.len() > MAX_BLOB_LEN {
        return Err(KmsError::invalid_ciphertext());
    }
    if bytes[0] != FORMAT_V1 {
        return Err(KmsError::invalid_ciphertext());
    }
    let kdf = Kdf::from_id(bytes[21]).ok_or_else(KmsError::invalid_ciphertext)?;
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[1..17]);
    let mut version = [0u8; 4];
    version.copy_from_slice(&bytes[17..21]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[22..54]);
    let mut iv = [0u8; GCM_IV_LEN];
    iv.copy_from_slice(&bytes[54..66]);
    Ok(Blob {
        header: Header {
            key_id: KeyId::from_bytes(id),
            key_version: u32::from_be_bytes(version),
            kdf,
            nonce,
            iv,
        },
        sealed: &bytes[HEADER_LEN..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            key_id: "1234abcd-12ab-34cd-56ef-1234567890ab".parse().unwrap(),
            key_version: 7,
            kdf: Kdf::AesCbcEncryptData,
            nonce: [0x11; NONCE_LEN],
            iv: [0x22; GCM_IV_LEN],
        }
    }

    #[test]
    fn round_trip() {
        let h = header();
        let blob = h.assemble(&[9u8; 48]);
        assert_eq!(blob.len(), HEADER_LEN + 48);
        let p = parse(&blob).unwrap();
        assert_eq!(p.header, h);
        assert_eq!(p.sealed, &[9u8; 48][..]);
    }

    #[test]
    fn layout_is_stable() {
        let e = header().encode();
        assert_eq!(HEADER_LEN, 66);
        assert_eq!(e[0], 1);
        assert_eq!(&e[17..21], &[0, 0, 0, 7]);
        assert_eq!(e[21], 1);
        assert_eq!(e[22], 0x11);
        assert_eq!(e[54], 0x22);
    }

    /// The two test vectors of docs/ciphertext-format.md, from their epoch keys (the derivation
    /// itself happens in the token).
    #[test]
    fn documented_test_vectors() {
        use aes_gcm::aead::{Aead, Payload};
        use aes_gcm::{Aes256Gcm, Key, KeyInit, Nonce};
        use base64::Engine as _;
        let ctx = EncryptionContext::from_pairs(["tenant=acme", "purpose=demo"]).unwrap();
        for (kdf, key, b64) in [
            (
                Kdf::AesCbcEncryptData,
                "a37edf3f975abaef937b62c78d5bb157a36e5f05ba7cce858453a779401a16dd",
                "ARI0q80SqzTNVu8SNFZ4kKsAAAABAUBBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5foKGio6SlpqeoqaqrnF33Cer/tkK+hXteFX4EaIH7W/aOhqRskBBu/6rorkC1spdHG0EXhY1EhTqpLPV7",
            ),
            (
                Kdf::Sp800108CounterCmac,
                "b7c9e8aee9b1a37866fa91837ce932a5871dcc500a06f5e793499857f90c1522",
                "ARI0q80SqzTNVu8SNFZ4kKsAAAABAkBBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5foKGio6SlpqeoqaqrRTpvtvKc4vgrt6Lf7rjxI1f0bQMlbPyiJRWY2xrpojALacL8CNHZWj4pubOUpr9/",
            ),
        ] {
            let h = Header {
                key_id: "1234abcd-12ab-34cd-56ef-1234567890ab".parse().unwrap(),
                key_version: 1,
                kdf,
                nonce: std::array::from_fn(|i| 0x40 + i as u8),
                iv: std::array::from_fn(|i| 0xa0 + i as u8),
            };
            let key = hex::decode(key).unwrap();
            let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key));
            let aad = h.aad(&ctx);
            let sealed = cipher
                .encrypt(
                    Nonce::from_slice(&h.iv),
                    Payload {
                        msg: &[0x11; 32],
                        aad: &aad,
                    },
                )
                .unwrap();
            let blob = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            assert_eq!(h.assemble(&sealed), blob, "{kdf:?}");
            assert_eq!(parse(&blob).unwrap().header, h);
        }
    }

    #[test]
    fn kdf_ids_are_a_registry() {
        for kdf in [Kdf::AesCbcEncryptData, Kdf::Sp800108CounterCmac] {
            assert_eq!(Kdf::from_id(kdf.id()), Some(kdf));
            let mut h = header();
            h.kdf = kdf;
            assert_eq!(parse(&h.assemble(&[9u8; 20])).unwrap().header.kdf, kdf);
        }
        // The meanings never change: 1 and 2 are taken, 0 and 3.. are not ids.
        assert_eq!(Kdf::AesCbcEncryptData.id(), 1);
        assert_eq!(Kdf::Sp800108CounterCmac.id(), 2);
        assert_eq!(Kdf::from_id(0), None);
        assert_eq!(Kdf::from_id(3), None);
    }

    #[test]
    fn rejects_malformed() {
        let blob = header().assemble(&[9u8; 48]);
        let bad_version = {
            let mut b = blob.clone();
            b[0] = 2;
            b
        };
        let bad_kdf = {
            let mut b = blob.clone();
            b[21] = 0;
            b
        };
        for b in [
            &[][..],
            &blob[..HEADER_LEN + GCM_TAG_LEN],
            &bad_version[..],
            &bad_kdf[..],
            &vec![1u8; MAX_BLOB_LEN + 1][..],
        ] {
            assert_eq!(
                parse(b).unwrap_err().aws_name(),
                "InvalidCiphertextException"
            );
        }
    }

    #[test]
    fn aad_binds_header_and_context() {
        let h = header();
        let c1 = EncryptionContext::from_pairs(["a=1"]).unwrap();
        let mut h2 = h.clone();
        h2.key_version = 8;
        assert_ne!(h.aad(&c1), h.aad(&EncryptionContext::empty()));
        assert_ne!(h.aad(&c1), h2.aad(&c1));
        assert!(h.aad(&c1).starts_with(&h.encode()));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            /// Any bytes: a blob, or InvalidCiphertextException; never a panic.
            #[test]
            fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..7000)) {
                if let Err(e) = parse(&bytes) {
                    prop_assert_eq!(e.aws_name(), "InvalidCiphertextException");
                }
            }

            /// Every field of a parsed blob is what was encoded, whatever its values.
            #[test]
            fn round_trips(id in any::<[u8; 16]>(), version in any::<u32>(), nonce in any::<[u8; 32]>(),
                           iv in any::<[u8; 12]>(), sealed in proptest::collection::vec(any::<u8>(), 17..200)) {
                let h = Header { key_id: KeyId::from_bytes(id), key_version: version, kdf: Kdf::Sp800108CounterCmac, nonce, iv };
                let bytes = h.assemble(&sealed);
                let b = parse(&bytes).unwrap();
                prop_assert_eq!(b.header, h);
                prop_assert_eq!(b.sealed, &sealed[..]);
            }
        }
    }
}
