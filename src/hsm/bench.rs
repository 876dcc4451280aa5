//! The raw-token ceiling for `p11kms bench`: plain `cryptoki` loops doing exactly the token
//! calls one request needs, and nothing else (no metadata, no caches, no HTTP), on as many
//! sessions and threads as the server's pool has. Whatever p11kms achieves is compared with
//! this figure, measured in the same run on the same token.
//!
//! - data key (GenerateDataKey / ...WithoutPlaintext): `C_GenerateRandom(key ‖ IV)` then
//!   `C_Encrypt(CKM_AES_GCM)` of the key under a derived session key, with the blob's AAD;
//! - Encrypt: `C_GenerateRandom(IV)` then `C_Encrypt(CKM_AES_GCM)` of the plaintext;
//! - Decrypt: `C_Decrypt(CKM_AES_GCM)` of a sealed data key;
//! - Sign: `C_Sign` with the KMS key's own private key (a token object) over a digest
//!   (`CKM_RSA_PKCS_PSS`, `CKM_ECDSA`);
//! - Verify: `C_Verify` with the key's public key imported once as a session object (as
//!   p11kms keeps it), of a signature made once before the loop;
//! - GenerateMac: `C_Sign(CKM_SHA256_HMAC...)` with the KMS key's own HMAC key;
//! - GenerateDataKeyPairWithoutPlaintext on the host path (a token that cannot wrap private
//!   keys with AES-GCM, such as SoftHSM): `C_GenerateKeyPair` as session objects, the private
//!   value and the public point read (`C_GetAttributeValue`), both objects destroyed, then
//!   `C_GenerateRandom(IV)` and `C_Encrypt(CKM_AES_GCM)` of the PKCS #8 under a derived key.
//!
//! The derived key is made the way p11kms makes epoch keys (`CKM_AES_CBC_ENCRYPT_DATA` from a
//! derive-only AES-256 base key), once, outside the timed loop, as p11kms does once per epoch.
//! The mechanisms and key-pair templates are written out here rather than borrowed from
//! `keypair.rs`, the same as there (the ceiling is plain `cryptoki`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cryptoki::mechanism::ekdf::AesCbcDeriveParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{AttributeType, ObjectHandle};
use cryptoki::session::Session;

use super::aead::gcm_params;
use super::keypair::{
    hmac_mechanism, read_private_pkcs8, with_session_pair, with_sign_mechanism, Keeping,
};
use super::templates::{KeyTemplate, Usages};
use super::{
    CmkHandle, HsmError, PairKind, PrivateUsage, Result, SessionKey, SignScheme, Token, GCM_IV_LEN,
};
use crate::der::{Curve, Hash, PublicKey};

/// One kind of request, as token calls.
#[derive(Debug, Clone)]
pub enum CeilingOp {
    /// RNG(key_len + 12) + GCM seal of key_len bytes with this AAD.
    DataKey { key_len: usize, aad: Vec<u8> },
    /// RNG(12) + GCM seal of `plaintext_len` bytes with this AAD.
    Encrypt { plaintext_len: usize, aad: Vec<u8> },
    /// GCM open of a sealed `plaintext_len`-byte value with this AAD.
    Decrypt { plaintext_len: usize, aad: Vec<u8> },
    /// `C_Sign` of `digest` with the private key `key` (a token object).
    Sign {
        key: CmkHandle,
        scheme: SignScheme,
        digest: Vec<u8>,
    },
    /// `C_Verify` with `public` as a session object (imported once) of a signature of
    /// `digest` made once with `private`.
    Verify {
        private: CmkHandle,
        public: PublicKey,
        scheme: SignScheme,
        digest: Vec<u8>,
    },
    /// `C_Sign` HMAC over `hash` of `message` with the secret key `key` (a token object).
    Hmac {
        key: CmkHandle,
        hash: Hash,
        message: Vec<u8>,
    },
    /// A P-256 (or other curve's) data key pair on the host path: `C_GenerateKeyPair` as
    /// session objects, private value and public point read, both destroyed, then RNG(12)
    /// and a GCM seal of the PKCS #8 with this AAD.
    DataKeyPair { curve: Curve, aad: Vec<u8> },
}

impl CeilingOp {
    fn aad(&self) -> &[u8] {
        match self {
            CeilingOp::DataKey { aad, .. }
            | CeilingOp::Encrypt { aad, .. }
            | CeilingOp::Decrypt { aad, .. }
            | CeilingOp::DataKeyPair { aad, .. } => aad,
            CeilingOp::Sign { .. } | CeilingOp::Verify { .. } | CeilingOp::Hmac { .. } => &[],
        }
    }

    /// Bytes of the value sealed (or opened) under the derived key, if any.
    fn plaintext_len(&self) -> usize {
        match self {
            CeilingOp::DataKey { key_len, .. } => *key_len,
            CeilingOp::Encrypt { plaintext_len, .. } | CeilingOp::Decrypt { plaintext_len, .. } => {
                *plaintext_len
            }
            CeilingOp::Sign { .. }
            | CeilingOp::Verify { .. }
            | CeilingOp::Hmac { .. }
            | CeilingOp::DataKeyPair { .. } => 0,
        }
    }
}

/// What one ceiling run measured.
#[derive(Debug, Clone)]
pub struct CeilingResult {
    pub ops: u64,
    pub elapsed: Duration,
    /// Per-operation latencies in nanoseconds (unsorted).
    pub latencies_ns: Vec<u64>,
}

/// Sensitive, non-extractable session keys: a derive-only base and a GCM key derived from it.
fn derived_key(s: &Session) -> Result<(ObjectHandle, ObjectHandle)> {
    let base = s.generate_key(
        &Mechanism::AesKeyGen,
        &KeyTemplate::aes256().usages(Usages::DERIVE).build(),
    )?;
    let nonce = [7u8; 32];
    let mech = Mechanism::AesCbcEncryptData(AesCbcDeriveParams::new([0u8; 16], &nonce));
    let key = s.derive_key(
        &mech,
        base,
        &KeyTemplate::aes256()
            .usages(Usages::ENCRYPT_DECRYPT)
            .build(),
    )?;
    Ok((base, key))
}

fn iv_of(iv: &[u8]) -> Result<[u8; GCM_IV_LEN]> {
    iv.try_into()
        .map_err(|_| HsmError::Misbehaved("IV length".into()))
}

fn seal(s: &Session, key: ObjectHandle, iv: &[u8], aad: &[u8], pt: &[u8]) -> Result<Vec<u8>> {
    let mut iv = iv_of(iv)?;
    let params = gcm_params(&mut iv, aad)?;
    Ok(s.encrypt(&Mechanism::AesGcm(params), key, pt)?)
}

fn open(s: &Session, key: ObjectHandle, iv: &[u8], aad: &[u8], ct: &[u8]) -> Result<Vec<u8>> {
    let mut iv = iv_of(iv)?;
    let params = gcm_params(&mut iv, aad)?;
    Ok(s.decrypt(&Mechanism::AesGcm(params), key, ct)?)
}

/// One data key pair on the host path, as `keypair.rs` makes it: its PKCS #8, the objects
/// destroyed.
fn data_key_pair(s: &Session, curve: Curve) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let pair = PairKind::Ec(curve);
    with_session_pair(
        s,
        pair,
        PrivateUsage::Sign,
        Keeping::Readable,
        |public, private| Ok(read_private_pkcs8(s, private, public, pair)),
    )?
}

/// What the loop needs besides the op: the derived key, a Decrypt's input, a Verify's
/// public key object and signature, the data key pair templates.
struct Prepared {
    key: ObjectHandle,
    sealed: Vec<u8>,
    public: Option<SessionKey>,
    signature: Vec<u8>,
}

/// One iteration of `op` on `s`.
fn once(s: &Session, op: &CeilingOp, p: &Prepared, buf: &mut [u8]) -> Result<()> {
    let (key, sealed) = (p.key, &p.sealed);
    match op {
        CeilingOp::DataKey { key_len, aad } => {
            s.generate_random_slice(&mut buf[..key_len + GCM_IV_LEN])?;
            let (k, iv) = buf[..key_len + GCM_IV_LEN].split_at(*key_len);
            seal(s, key, iv, aad, k)?;
        }
        CeilingOp::Encrypt { plaintext_len, aad } => {
            let (iv, pt) = buf.split_at_mut(GCM_IV_LEN);
            s.generate_random_slice(iv)?;
            seal(s, key, iv, aad, &pt[..*plaintext_len])?;
        }
        CeilingOp::Decrypt { aad, .. } => {
            let (iv, ct) = sealed.split_at(GCM_IV_LEN);
            open(s, key, iv, aad, ct)?;
        }
        CeilingOp::Sign {
            key: private,
            scheme,
            digest,
        } => {
            with_sign_mechanism(*scheme, |m| s.sign(m, private.0, digest))?;
        }
        CeilingOp::Verify { scheme, digest, .. } => {
            let public = p
                .public
                .as_ref()
                .ok_or_else(|| HsmError::Misbehaved("no public key object".into()))?;
            with_sign_mechanism(*scheme, |m| {
                s.verify(m, public.handle, digest, &p.signature)
            })?;
        }
        CeilingOp::Hmac {
            key: secret,
            hash,
            message,
        } => {
            s.sign(&hmac_mechanism(*hash), secret.0, message)?;
        }
        CeilingOp::DataKeyPair { curve, aad } => {
            let pkcs8 = data_key_pair(s, *curve)?;
            let iv = &mut buf[..GCM_IV_LEN];
            s.generate_random_slice(iv)?;
            seal(s, key, iv, aad, &pkcs8)?;
        }
    }
    Ok(())
}

/// The derived key and its derive-only base: session objects, destroyed when dropped.
struct Derived<'t> {
    token: &'t Token,
    base: ObjectHandle,
    key: ObjectHandle,
}

impl Drop for Derived<'_> {
    fn drop(&mut self) {
        if let Ok(s) = self.token.inner.pool.get() {
            let _ = s.destroy_object(self.key);
            let _ = s.destroy_object(self.base);
        }
    }
}

impl Token {
    /// Sets up what `op`'s loop needs, outside the timed loop.
    fn prepare(&self, key: ObjectHandle, op: &CeilingOp) -> Result<Prepared> {
        let s = self.inner.pool.get()?;
        // A Decrypt's input: IV ‖ ciphertext ‖ tag, sealed once.
        let mut iv = [0u8; GCM_IV_LEN];
        s.generate_random_slice(&mut iv)?;
        let mut sealed = iv.to_vec();
        let pt = vec![0x5a; op.plaintext_len().max(1)];
        sealed.extend(seal(&s, key, &iv, op.aad(), &pt)?);
        let mut p = Prepared {
            key,
            sealed,
            public: None,
            signature: Vec::new(),
        };
        match op {
            CeilingOp::Sign { key, .. } | CeilingOp::Hmac { key, .. } => {
                // The key must be there: a wrong handle would measure an error path.
                s.get_attributes(key.0, &[AttributeType::Class])?;
            }
            CeilingOp::Verify {
                private,
                public,
                scheme,
                digest,
            } => {
                p.signature = with_sign_mechanism(*scheme, |m| s.sign(m, private.0, digest))?;
                drop(s);
                // As p11kms keeps it: a session object, imported once.
                p.public = Some(self.import_public_key(public, PrivateUsage::Sign)?);
            }
            CeilingOp::DataKeyPair { .. }
            | CeilingOp::DataKey { .. }
            | CeilingOp::Encrypt { .. }
            | CeilingOp::Decrypt { .. } => {}
        }
        Ok(p)
    }

    /// Runs `op` on `threads` threads, each holding one pooled session for the whole run, for
    /// `duration`. `progress` is bumped once per completed operation (for a live display).
    pub fn bench_ceiling(
        &self,
        op: &CeilingOp,
        threads: usize,
        duration: Duration,
        progress: &AtomicU64,
    ) -> Result<CeilingResult> {
        let threads = threads.clamp(1, self.pool_size());
        // Session objects are visible to every session of this process.
        let derived = {
            let s = self.inner.pool.get()?;
            let (base, key) = derived_key(&s)?;
            Derived {
                token: self,
                base,
                key,
            }
        };
        let prepared = self.prepare(derived.key, op)?;
        let plaintext_len = op.plaintext_len();
        let result = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    let prepared = &prepared;
                    scope.spawn(move || -> Result<(u64, Vec<u64>)> {
                        let s = self.inner.pool.get()?;
                        let mut buf = vec![0u8; GCM_IV_LEN + plaintext_len.max(32) + 64];
                        let mut lat = Vec::with_capacity(1 << 16);
                        let start = Instant::now();
                        let mut n = 0u64;
                        while start.elapsed() < duration {
                            let t0 = Instant::now();
                            once(&s, op, prepared, &mut buf)?;
                            lat.push(t0.elapsed().as_nanos() as u64);
                            n += 1;
                            progress.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((n, lat))
                    })
                })
                .collect();
            let start = Instant::now();
            let mut ops = 0;
            let mut latencies_ns = Vec::new();
            for w in workers {
                let (n, lat) = w
                    .join()
                    .map_err(|_| HsmError::Misbehaved("ceiling thread panicked".into()))??;
                ops += n;
                latencies_ns.extend(lat);
            }
            Ok(CeilingResult {
                ops,
                elapsed: start.elapsed(),
                latencies_ns,
            })
        });
        drop(prepared);
        drop(derived);
        result
    }
}
