//! Epoch keys: AES-256 keys derived inside the token from a CMK backing key and a random
//! 32-byte nonce. Sealing uses the current epoch key of a backing key until it has served
//! [`EpochPolicy::max_uses`] requests or lived [`EpochPolicy::max_age`]; then a new nonce is
//! drawn. Opened blobs re-derive from the nonce they carry; derived keys are cached by
//! (key, version, nonce) with a bounded size, and destroyed in the token when evicted.
//!
//! Both caches sit on every request path, so hits take only a shared (read) lock and touch
//! atomics; the exclusive lock is taken to derive, insert, evict or forget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::error::{KmsError, Result};
use crate::hsm::SessionKey;
use crate::kms::blob::NONCE_LEN;
use crate::kms::keyref::KeyId;

/// Bounds on one epoch key's use for sealing.
#[derive(Debug, Clone, Copy)]
pub struct EpochPolicy {
    /// Seals per epoch key. With random 96-bit IVs, 2^20 messages give an IV collision
    /// probability below 2^-57 (NIST SP 800-38D asks for < 2^-32).
    pub max_uses: u64,
    pub max_age: Duration,
    /// Derived keys kept for opening blobs.
    pub cache_entries: usize,
}

impl Default for EpochPolicy {
    fn default() -> Self {
        EpochPolicy {
            max_uses: 1 << 20,
            max_age: Duration::from_secs(300),
            cache_entries: 1024,
        }
    }
}

type CacheKey = (KeyId, u32, [u8; NONCE_LEN]);

struct Epoch {
    nonce: [u8; NONCE_LEN],
    key: Arc<SessionKey>,
    uses: AtomicU64,
    born: Instant,
}

struct Cached {
    key: Arc<SessionKey>,
    /// Value of the cache's use counter at the last hit (a clock for LRU eviction).
    last_used: AtomicU64,
}

/// The derived-key caches of one process.
pub struct EpochKeys {
    policy: EpochPolicy,
    sealing: RwLock<HashMap<(KeyId, u32), Arc<Epoch>>>,
    opening: RwLock<HashMap<CacheKey, Cached>>,
    /// Ticks once per use of the opening cache: its LRU clock.
    tick: AtomicU64,
}

/// An epoch key ready to seal with, and the nonce that re-derives it.
pub struct SealingKey {
    pub nonce: [u8; NONCE_LEN],
    pub key: Arc<SessionKey>,
}

fn poisoned() -> KmsError {
    KmsError::Internal("epoch key cache poisoned".into())
}

impl EpochKeys {
    pub fn new(policy: EpochPolicy) -> EpochKeys {
        EpochKeys {
            policy,
            sealing: RwLock::new(HashMap::new()),
            opening: RwLock::new(HashMap::new()),
            tick: AtomicU64::new(0),
        }
    }

    /// The epoch key to seal under for (key, version); `derive` makes a new one from a nonce
    /// when the current one is spent or missing.
    pub fn for_sealing(
        &self,
        id: KeyId,
        version: u32,
        new_nonce: impl FnOnce() -> Result<[u8; NONCE_LEN]>,
        derive: impl FnOnce(&[u8; NONCE_LEN]) -> Result<SessionKey>,
    ) -> Result<SealingKey> {
        let usable = |e: &Epoch| {
            // Counting under any lock: every use is counted once, so the bound holds.
            let n = e.uses.fetch_add(1, Ordering::Relaxed);
            n < self.policy.max_uses && e.born.elapsed() < self.policy.max_age
        };
        {
            let sealing = self.sealing.read().map_err(|_| poisoned())?;
            if let Some(e) = sealing.get(&(id, version)) {
                if usable(e) {
                    return Ok(SealingKey {
                        nonce: e.nonce,
                        key: Arc::clone(&e.key),
                    });
                }
            }
        }
        let mut sealing = self.sealing.write().map_err(|_| poisoned())?;
        // Another thread may have derived a fresh one while we waited for the lock.
        if let Some(e) = sealing.get(&(id, version)) {
            if usable(e) {
                return Ok(SealingKey {
                    nonce: e.nonce,
                    key: Arc::clone(&e.key),
                });
            }
        }
        // Derive while holding the lock: concurrent sealers of this key wait for one
        // derivation instead of each making their own.
        let nonce = new_nonce()?;
        let key = Arc::new(derive(&nonce)?);
        sealing.insert(
            (id, version),
            Arc::new(Epoch {
                nonce,
                key: Arc::clone(&key),
                uses: AtomicU64::new(1),
                born: Instant::now(),
            }),
        );
        drop(sealing);
        // Blobs sealed now are often opened soon: let opening find this key.
        self.remember((id, version, nonce), Arc::clone(&key))?;
        Ok(SealingKey { nonce, key })
    }

    /// A cached derived key for opening, if any.
    pub fn cached(
        &self,
        id: KeyId,
        version: u32,
        nonce: &[u8; NONCE_LEN],
    ) -> Result<Option<Arc<SessionKey>>> {
        let opening = self.opening.read().map_err(|_| poisoned())?;
        Ok(opening.get(&(id, version, *nonce)).map(|c| {
            let now = self.tick.fetch_add(1, Ordering::Relaxed);
            c.last_used.store(now, Ordering::Relaxed);
            Arc::clone(&c.key)
        }))
    }

    /// Keeps a derived key that has just proven itself (opened a blob).
    pub fn remember(&self, k: CacheKey, key: Arc<SessionKey>) -> Result<()> {
        let mut opening = self.opening.write().map_err(|_| poisoned())?;
        if opening.len() >= self.policy.cache_entries && !opening.contains_key(&k) {
            // Evict the least recently used eighth in one pass, not one entry per insert.
            let mut ages: Vec<(u64, CacheKey)> = opening
                .iter()
                .map(|(k, c)| (c.last_used.load(Ordering::Relaxed), *k))
                .collect();
            ages.sort_unstable_by_key(|(t, _)| *t);
            for (_, old) in ages.iter().take((self.policy.cache_entries / 8).max(1)) {
                opening.remove(old);
            }
        }
        opening.insert(
            k,
            Cached {
                key,
                last_used: AtomicU64::new(self.tick.fetch_add(1, Ordering::Relaxed)),
            },
        );
        Ok(())
    }

    /// Drops every derived key of `id` (disabled, scheduled for deletion, or gone).
    pub fn forget(&self, id: &KeyId) -> Result<()> {
        self.sealing
            .write()
            .map_err(|_| poisoned())?
            .retain(|(k, _), _| k != id);
        self.opening
            .write()
            .map_err(|_| poisoned())?
            .retain(|(k, _, _), _| k != id);
        Ok(())
    }

    /// Number of derived keys held for opening (for tests and `token info`).
    pub fn cached_len(&self) -> usize {
        self.opening.read().map(|m| m.len()).unwrap_or(0)
    }
}
