//! EME-OAEP encoding and decoding (RFC 8017, 7.1), for tokens whose `CKM_RSA_PKCS_OAEP`
//! refuses a hash: SoftHSM 2.6 takes only SHA-1 (`CKR_ARGUMENTS_BAD` otherwise). Then the
//! RSA operation itself still runs in the token, raw (`CKM_RSA_X_509`), and only the padding
//! is done here: the private key never leaves the token, and the decrypted block, which holds
//! the plaintext the caller receives anyway, is wiped.
//!
//! Decoding runs in constant time over the block (no early exit, one combined check): a
//! distinguishable failure would be Manger's padding oracle. MGF1 and the hash are SHA-1 or
//! SHA-256, the two RSAES-OAEP algorithms of AWS KMS.

use sha2::digest::{Digest, DynDigest};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroizing;

use crate::der::Hash;

/// Why an OAEP operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OaepError {
    /// The message is too long for the modulus and hash.
    TooLong,
    /// The block does not decode (one answer for every reason).
    Invalid,
    /// Not an OAEP hash of AWS KMS.
    Hash,
}

fn hasher(h: Hash) -> Result<Box<dyn DynDigest>, OaepError> {
    match h {
        Hash::Sha1 => Ok(Box::new(sha1::Sha1::new())),
        Hash::Sha256 => Ok(Box::new(sha2::Sha256::new())),
        _ => Err(OaepError::Hash),
    }
}

/// MGF1 (RFC 8017, B.2.1): XORs `MGF1(seed, out.len())` into `out`.
fn mgf1_xor(h: Hash, seed: &[u8], out: &mut [u8]) -> Result<(), OaepError> {
    let mut d = hasher(h)?;
    let mut counter: u32 = 0;
    for chunk in out.chunks_mut(h.len()) {
        d.update(seed);
        d.update(&counter.to_be_bytes());
        let mask = Zeroizing::new(d.finalize_reset());
        for (o, m) in chunk.iter_mut().zip(mask.iter()) {
            *o ^= m;
        }
        counter = counter.wrapping_add(1);
    }
    Ok(())
}

fn empty_label_hash(h: Hash) -> Result<Box<[u8]>, OaepError> {
    Ok(hasher(h)?.finalize())
}

/// The EM block of `k` bytes for `message` (empty label), with `seed` of `h.len()` bytes
/// from the token's RNG.
pub(crate) fn encode(
    h: Hash,
    k: usize,
    message: &[u8],
    seed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OaepError> {
    let hl = h.len();
    if seed.len() != hl || k < 2 * hl + 2 || message.len() > k - 2 * hl - 2 {
        return Err(OaepError::TooLong);
    }
    let mut em = Zeroizing::new(vec![0u8; k]);
    let (seed_part, db) = em[1..].split_at_mut(hl);
    db[..hl].copy_from_slice(&empty_label_hash(h)?);
    let one = db.len() - message.len() - 1;
    db[one] = 1;
    db[one + 1..].copy_from_slice(message);
    seed_part.copy_from_slice(seed);
    mgf1_xor(h, seed_part, db)?;
    mgf1_xor(h, db, seed_part)?;
    Ok(em)
}

/// The message inside an EM block (`k` bytes, as the raw RSA decryption gives it), in
/// constant time over the block.
pub(crate) fn decode(h: Hash, em: &[u8]) -> Result<Zeroizing<Vec<u8>>, OaepError> {
    let hl = h.len();
    let k = em.len();
    if k < 2 * hl + 2 {
        return Err(OaepError::Invalid);
    }
    let mut block = Zeroizing::new(em.to_vec());
    let (y, rest) = block.split_at_mut(1);
    let (seed, db) = rest.split_at_mut(hl);
    mgf1_xor(h, db, seed)?;
    mgf1_xor(h, seed, db)?;
    let lhash = empty_label_hash(h)?;
    let mut good = y[0].ct_eq(&0) & db[..hl].ct_eq(&lhash);
    // Scan PS ‖ 0x01 ‖ M for the first 0x01 after zeros, touching every byte.
    let mut found = subtle::Choice::from(0);
    let mut index: u32 = 0;
    for (i, b) in db[hl..].iter().enumerate() {
        let is_one = b.ct_eq(&1);
        let is_zero = b.ct_eq(&0);
        let first = is_one & !found;
        index.conditional_assign(&(i as u32), first);
        found |= is_one;
        // Before the separator only zeros may appear.
        good &= found | is_zero;
    }
    good &= found;
    // Only meaningful when `good`: the message is copied after the one combined check.
    let start = hl + index as usize + 1;
    if !bool::from(good) {
        return Err(OaepError::Invalid);
    }
    Ok(Zeroizing::new(db[start..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    #[test]
    fn round_trips_and_refuses_tampering() {
        let mut rng = rand::thread_rng();
        for h in [Hash::Sha1, Hash::Sha256] {
            for len in [0usize, 1, 100, 256 - 2 * h.len() - 2] {
                let mut m = vec![0u8; len];
                rng.fill_bytes(&mut m);
                let mut seed = vec![0u8; h.len()];
                rng.fill_bytes(&mut seed);
                let em = encode(h, 256, &m, &seed).unwrap();
                assert_eq!(em[0], 0);
                assert_eq!(decode(h, &em).unwrap().as_slice(), m.as_slice());
                for i in [0usize, 1, 40, 255] {
                    let mut bad = em.to_vec();
                    bad[i] ^= 0x80;
                    assert_eq!(decode(h, &bad).unwrap_err(), OaepError::Invalid, "{i}");
                }
            }
            let mut seed = vec![0u8; h.len()];
            rng.fill_bytes(&mut seed);
            let too_long = vec![1u8; 256 - 2 * h.len() - 1];
            assert_eq!(
                encode(h, 256, &too_long, &seed).unwrap_err(),
                OaepError::TooLong
            );
        }
        assert_eq!(
            decode(Hash::Sha256, &[0u8; 20]).unwrap_err(),
            OaepError::Invalid
        );
    }

    #[test]
    fn matches_an_independent_implementation() {
        use rsa::traits::{PrivateKeyParts, PublicKeyParts};
        use rsa::{BigUint, Oaep, RsaPrivateKey};
        let mut rng = rand::thread_rng();
        let key = RsaPrivateKey::new(&mut rng, 1024).unwrap();
        let k = key.size();
        let raw = |em: &[u8]| {
            let c = BigUint::from_bytes_be(em).modpow(key.e(), key.n());
            let mut out = vec![0u8; k];
            let b = c.to_bytes_be();
            out[k - b.len()..].copy_from_slice(&b);
            out
        };
        let unraw = |c: &[u8]| {
            let m = BigUint::from_bytes_be(c).modpow(key.d(), key.n());
            let mut out = vec![0u8; k];
            let b = m.to_bytes_be();
            out[k - b.len()..].copy_from_slice(&b);
            out
        };
        // Ours encodes, theirs decrypts.
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let em = encode(Hash::Sha256, k, b"attack at dawn", &seed).unwrap();
        let pt = key.decrypt(Oaep::new::<sha2::Sha256>(), &raw(&em)).unwrap();
        assert_eq!(pt, b"attack at dawn");
        // Theirs encrypts, ours decodes.
        let public = key.to_public_key();
        for (h, c) in [
            (
                Hash::Sha256,
                public
                    .encrypt(&mut rng, Oaep::new::<sha2::Sha256>(), b"hello")
                    .unwrap(),
            ),
            (
                Hash::Sha1,
                public
                    .encrypt(&mut rng, Oaep::new::<sha1::Sha1>(), b"hello")
                    .unwrap(),
            ),
        ] {
            assert_eq!(decode(h, &unraw(&c)).unwrap().as_slice(), b"hello");
        }
    }
}
