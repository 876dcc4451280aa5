//! The raw-token ceiling for `p11kms bench`: plain `cryptoki` loops doing exactly the token
//! calls one request needs, and nothing else (no metadata, no caches, no HTTP), on as many
//! sessions and threads as the server's pool has. Whatever p11kms achieves is compared with
//! this figure, measured in the same run on the same token.
//!
//! - data key (GenerateDataKey / ...WithoutPlaintext): `C_GenerateRandom(key ‖ IV)` then
//!   `C_Encrypt(CKM_AES_GCM)` of the key under a derived session key, with the blob's AAD;
//! - Encrypt: `C_GenerateRandom(IV)` then `C_Encrypt(CKM_AES_GCM)` of the plaintext;
//! - Decrypt: `C_Decrypt(CKM_AES_GCM)` of a sealed data key.
//!
//! The derived key is made the way p11kms makes epoch keys (`CKM_AES_CBC_ENCRYPT_DATA` from a
//! derive-only AES-256 base key), once, outside the timed loop, as p11kms does once per epoch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cryptoki::mechanism::ekdf::AesCbcDeriveParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;

use super::aead::gcm_params;
use super::templates::{KeyTemplate, Usages};
use super::{HsmError, Result, Token, GCM_IV_LEN};

/// One kind of request, as token calls.
#[derive(Debug, Clone)]
pub enum CeilingOp {
    /// RNG(key_len + 12) + GCM seal of key_len bytes with this AAD.
    DataKey { key_len: usize, aad: Vec<u8> },
    /// RNG(12) + GCM seal of `plaintext_len` bytes with this AAD.
    Encrypt { plaintext_len: usize, aad: Vec<u8> },
    /// GCM open of a sealed `plaintext_len`-byte value with this AAD.
    Decrypt { plaintext_len: usize, aad: Vec<u8> },
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

/// One iteration of `op` on `s`. `sealed` is the input of a Decrypt.
fn once(
    s: &Session,
    key: ObjectHandle,
    op: &CeilingOp,
    buf: &mut [u8],
    sealed: &[u8],
) -> Result<()> {
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
    }
    Ok(())
}

impl Token {
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
        let (base, key) = {
            let s = self.inner.pool.get()?;
            derived_key(&s)?
        };
        let plaintext_len = match op {
            CeilingOp::DataKey { key_len, .. } => *key_len,
            CeilingOp::Encrypt { plaintext_len, .. } | CeilingOp::Decrypt { plaintext_len, .. } => {
                *plaintext_len
            }
        };
        // A Decrypt's input: IV ‖ ciphertext ‖ tag, sealed once.
        let sealed = {
            let s = self.inner.pool.get()?;
            let mut iv = [0u8; GCM_IV_LEN];
            s.generate_random_slice(&mut iv)?;
            let aad = match op {
                CeilingOp::DataKey { aad, .. }
                | CeilingOp::Encrypt { aad, .. }
                | CeilingOp::Decrypt { aad, .. } => aad,
            };
            let mut out = iv.to_vec();
            out.extend(seal(&s, key, &iv, aad, &vec![0x5a; plaintext_len])?);
            out
        };
        let result = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    let sealed = &sealed;
                    scope.spawn(move || -> Result<(u64, Vec<u64>)> {
                        let s = self.inner.pool.get()?;
                        let mut buf = vec![0u8; GCM_IV_LEN + plaintext_len.max(32) + 64];
                        let mut lat = Vec::with_capacity(1 << 16);
                        let start = Instant::now();
                        let mut n = 0u64;
                        while start.elapsed() < duration {
                            let t0 = Instant::now();
                            once(&s, key, op, &mut buf, sealed)?;
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
        if let Ok(s) = self.inner.pool.get() {
            let _ = s.destroy_object(key);
            let _ = s.destroy_object(base);
        }
        result
    }
}
