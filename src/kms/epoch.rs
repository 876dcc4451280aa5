//! Epoch keys: AES-256 keys derived inside the token from a CMK backing key and a random
//! 32-byte nonce. Sealing uses the current epoch key of a backing key until it has served
//! [`EpochPolicy::max_uses`] requests or lived [`EpochPolicy::max_age`]; then a new nonce is
//! drawn. Opened blobs re-derive from the nonce they carry; derived keys are cached by
//! (key, version, nonce) with a bounded size, and destroyed in the token when evicted.
//!
//! Both caches sit on every request path, so hits take only a shared (read) lock and touch
//! atomics. The rules that keep them free of deadlocks and stalls:
//! - **No token call and no callback under a map lock.** A new epoch key is derived by the one
//!   request holding that (key, version)'s *turn* (a flag, not a lock: it is released by a
//!   guard whatever happens); concurrent sealers of the same key wait for the turn, with a
//!   bound, instead of each deriving. Code that runs while a turn is held (the derivation, a
//!   heal of the token state, a refresh that forgets this key) may take the map locks freely.
//! - **Nothing is dropped under a map lock.** Dropping the last reference to a derived key
//!   destroys it in the token; replaced, evicted and forgotten entries are collected and
//!   dropped after the guard is released.
//!
//! The caches are generic over the key type so that their rules can be unit-tested without a
//! token; the service uses [`SessionKey`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::error::{KmsError, Result};
use crate::hsm::SessionKey;
use crate::kms::blob::NONCE_LEN;
use crate::kms::keyref::KeyId;
use crate::sync;

/// Bounds on one epoch key's use for sealing.
#[derive(Debug, Clone, Copy)]
pub struct EpochPolicy {
    /// Seals per epoch key. With random 96-bit IVs, 2^20 messages give an IV collision
    /// probability below 2^-57 (NIST SP 800-38D asks for < 2^-32).
    pub max_uses: u64,
    /// How long a derived session key is used before it is derived again.
    pub max_age: Duration,
    /// Derived keys kept for opening blobs.
    pub cache_entries: usize,
    /// How long a sealer waits for another request's derivation of the same key.
    pub turn_wait: Duration,
}

impl Default for EpochPolicy {
    fn default() -> Self {
        EpochPolicy {
            max_uses: 1 << 20,
            max_age: Duration::from_secs(300),
            cache_entries: 1024,
            turn_wait: Duration::from_secs(10),
        }
    }
}

type CacheKey = (KeyId, u32, [u8; NONCE_LEN]);

struct Epoch<K> {
    nonce: [u8; NONCE_LEN],
    key: Arc<K>,
    uses: AtomicU64,
    born: Instant,
}

/// The sealing state of one (key, version): its current epoch key and the derivation turn.
struct SealSlot<K> {
    current: Option<Arc<Epoch<K>>>,
    turn: Arc<Turn>,
}

/// Who derives next for one (key, version). Held as a flag under a mutex that is only ever
/// locked to flip or wait on the flag, never across work.
#[derive(Default)]
struct Turn {
    taken: Mutex<bool>,
    released: Condvar,
}

/// The turn, held: released (and waiters woken) when dropped, also on errors and panics.
struct Lead<'a>(&'a Turn);

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        *sync::lock(&self.0.taken) = false;
        self.0.released.notify_all();
    }
}

enum Taken<'a> {
    /// This caller derives.
    Lead(Lead<'a>),
    /// Another caller held the turn and released it: look again.
    Waited,
}

impl Turn {
    fn take(&self, wait: Duration) -> Result<Taken<'_>> {
        let deadline = Instant::now() + wait;
        let mut taken = sync::lock(&self.taken);
        if !*taken {
            *taken = true;
            return Ok(Taken::Lead(Lead(self)));
        }
        while *taken {
            let now = Instant::now();
            if now >= deadline {
                return Err(KmsError::dependency_timeout(
                    "another request has been deriving this key's epoch key for too long",
                ));
            }
            taken = self
                .released
                .wait_timeout(taken, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        Ok(Taken::Waited)
    }
}

struct Cached<K> {
    key: Arc<K>,
    /// Value of the cache's use counter at the last hit (a clock for LRU eviction).
    last_used: AtomicU64,
}

/// The derived-key caches of one process.
pub struct EpochKeys<K = SessionKey> {
    policy: EpochPolicy,
    sealing: RwLock<HashMap<(KeyId, u32), SealSlot<K>>>,
    opening: RwLock<HashMap<CacheKey, Cached<K>>>,
    /// Ticks once per use of the opening cache: its LRU clock.
    tick: AtomicU64,
    /// Counted for metrics (relaxed atomics; see [`EpochStats`]).
    counts: EpochCounts,
}

#[derive(Default)]
struct EpochCounts {
    sealing_derivations: AtomicU64,
    opening_hits: AtomicU64,
    opening_misses: AtomicU64,
    evicted: AtomicU64,
}

/// The epoch-key caches' numbers at one moment (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpochStats {
    /// New epoch keys derived for sealing.
    pub sealing_derivations: u64,
    /// Opening-cache look-ups that found the key (no derivation needed).
    pub opening_hits: u64,
    /// Opening-cache look-ups that missed (the caller derives).
    pub opening_misses: u64,
    /// Opening-cache entries evicted to make room.
    pub evicted: u64,
    /// (key, version) pairs with a sealing slot now.
    pub sealing_keys: usize,
    /// Derived keys in the opening cache now.
    pub opening_keys: usize,
}

/// An epoch key ready to seal with, and the nonce that re-derives it.
pub struct SealingKey<K = SessionKey> {
    pub nonce: [u8; NONCE_LEN],
    pub key: Arc<K>,
}

impl<K> EpochKeys<K> {
    pub fn new(policy: EpochPolicy) -> EpochKeys<K> {
        EpochKeys {
            policy,
            sealing: RwLock::new(HashMap::new()),
            opening: RwLock::new(HashMap::new()),
            tick: AtomicU64::new(0),
            counts: EpochCounts::default(),
        }
    }

    /// The counters and the caches' sizes now (each map's read lock, briefly).
    pub fn stats(&self) -> EpochStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EpochStats {
            sealing_derivations: get(&self.counts.sealing_derivations),
            opening_hits: get(&self.counts.opening_hits),
            opening_misses: get(&self.counts.opening_misses),
            evicted: get(&self.counts.evicted),
            sealing_keys: sync::read(&self.sealing).len(),
            opening_keys: sync::read(&self.opening).len(),
        }
    }

    /// Counts one use; true if the epoch key may still seal. Every use is counted once, so
    /// the bound holds under any interleaving (a failed request counts too: conservative).
    fn usable(&self, e: &Epoch<K>) -> bool {
        let n = e.uses.fetch_add(1, Ordering::Relaxed);
        n < self.policy.max_uses && e.born.elapsed() < self.policy.max_age
    }

    /// The current epoch key of (key, version) if it may seal once more; else the turn to
    /// take (creating the slot on first use).
    fn current_or_turn(&self, k: (KeyId, u32)) -> std::result::Result<SealingKey<K>, Arc<Turn>> {
        {
            let map = sync::read(&self.sealing);
            if let Some(slot) = map.get(&k) {
                match &slot.current {
                    Some(e) if self.usable(e) => {
                        return Ok(SealingKey {
                            nonce: e.nonce,
                            key: Arc::clone(&e.key),
                        })
                    }
                    _ => return Err(Arc::clone(&slot.turn)),
                }
            }
        }
        let mut map = sync::write(&self.sealing);
        let slot = map.entry(k).or_insert_with(|| SealSlot {
            current: None,
            turn: Arc::default(),
        });
        Err(Arc::clone(&slot.turn))
    }

    /// The epoch key to seal under for (key, version). When the current one is spent or
    /// missing, `derive` makes a new one (a fresh nonce and its key) with no lock held; while
    /// it runs, other sealers of the same key wait for it (at most [`EpochPolicy::turn_wait`])
    /// instead of deriving too. `derive` may call back into the service (heal, refresh,
    /// [`EpochKeys::forget`]): nothing here is locked meanwhile.
    pub fn for_sealing(
        &self,
        id: KeyId,
        version: u32,
        derive: impl FnOnce() -> Result<([u8; NONCE_LEN], K)>,
    ) -> Result<SealingKey<K>> {
        let k = (id, version);
        let mut derive = Some(derive);
        loop {
            let turn = match self.current_or_turn(k) {
                Ok(key) => return Ok(key),
                Err(turn) => turn,
            };
            let lead = match turn.take(self.policy.turn_wait)? {
                Taken::Lead(lead) => lead,
                Taken::Waited => continue,
            };
            // Someone may have published between our look and taking the turn.
            if let Ok(key) = self.current_or_turn(k) {
                return Ok(key);
            }
            // A caller leads at most once: it returns below, whatever happens.
            let derive = derive
                .take()
                .ok_or_else(|| KmsError::internal("epoch key derivation attempted twice"))?;
            let (nonce, key) = derive()?;
            self.counts
                .sealing_derivations
                .fetch_add(1, Ordering::Relaxed);
            let key = Arc::new(key);
            let epoch = Arc::new(Epoch {
                nonce,
                key: Arc::clone(&key),
                uses: AtomicU64::new(1),
                born: Instant::now(),
            });
            let replaced = {
                let mut map = sync::write(&self.sealing);
                match map.get_mut(&k) {
                    // Forgotten meanwhile (disabled, deleted, changed elsewhere): this request,
                    // which began before, seals once; nobody else gets the key.
                    Some(slot) if Arc::ptr_eq(&slot.turn, &turn) => slot.current.replace(epoch),
                    _ => None,
                }
            };
            drop(replaced);
            drop(lead);
            // Blobs sealed now are often opened soon: let opening find this key.
            self.remember((id, version, nonce), Arc::clone(&key));
            return Ok(SealingKey { nonce, key });
        }
    }

    /// A cached derived key for opening, if any.
    pub fn cached(&self, id: KeyId, version: u32, nonce: &[u8; NONCE_LEN]) -> Option<Arc<K>> {
        let opening = sync::read(&self.opening);
        let found = opening.get(&(id, version, *nonce)).map(|c| {
            let now = self.tick.fetch_add(1, Ordering::Relaxed);
            c.last_used.store(now, Ordering::Relaxed);
            Arc::clone(&c.key)
        });
        let counter = match found {
            Some(_) => &self.counts.opening_hits,
            None => &self.counts.opening_misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps a derived key that has just proven itself (sealed, or opened a blob).
    pub fn remember(&self, k: CacheKey, key: Arc<K>) {
        let mut evicted = Vec::new();
        {
            let mut opening = sync::write(&self.opening);
            if opening.len() >= self.policy.cache_entries && !opening.contains_key(&k) {
                // Evict the least recently used eighth in one pass, not one entry per insert.
                let mut ages: Vec<(u64, CacheKey)> = opening
                    .iter()
                    .map(|(k, c)| (c.last_used.load(Ordering::Relaxed), *k))
                    .collect();
                ages.sort_unstable_by_key(|(t, _)| *t);
                for (_, old) in ages.iter().take((self.policy.cache_entries / 8).max(1)) {
                    evicted.extend(opening.remove(old));
                }
                self.counts
                    .evicted
                    .fetch_add(evicted.len() as u64, Ordering::Relaxed);
            }
            let last_used = AtomicU64::new(self.tick.fetch_add(1, Ordering::Relaxed));
            evicted.extend(opening.insert(k, Cached { key, last_used }));
        }
        drop(evicted);
    }

    /// Drops every derived key of `id` (disabled, scheduled for deletion, or gone).
    pub fn forget(&self, id: &KeyId) {
        let sealing: Vec<SealSlot<K>> = {
            let mut map = sync::write(&self.sealing);
            let ks: Vec<_> = map.keys().filter(|(k, _)| k == id).copied().collect();
            ks.iter().filter_map(|k| map.remove(k)).collect()
        };
        let opening: Vec<Cached<K>> = {
            let mut map = sync::write(&self.opening);
            let ks: Vec<_> = map.keys().filter(|(k, _, _)| k == id).copied().collect();
            ks.iter().filter_map(|k| map.remove(k)).collect()
        };
        drop((sealing, opening));
    }

    /// Number of derived keys held for opening (for tests and `token info`).
    pub fn cached_len(&self) -> usize {
        sync::read(&self.opening).len()
    }

    /// Whether both maps can be locked now (a readiness check: nothing holds them for long).
    pub fn responsive(&self) -> bool {
        sync::readable(&self.sealing) && sync::readable(&self.opening)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A derived key stand-in that counts how many are alive.
    struct Probe(Arc<AtomicUsize>);
    impl Drop for Probe {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn probe(live: &Arc<AtomicUsize>) -> Probe {
        live.fetch_add(1, Ordering::SeqCst);
        Probe(Arc::clone(live))
    }

    fn policy(max_uses: u64) -> EpochPolicy {
        EpochPolicy {
            max_uses,
            max_age: Duration::from_secs(300),
            cache_entries: 16,
            turn_wait: Duration::from_secs(5),
        }
    }

    #[test]
    fn one_derivation_per_epoch_and_a_new_one_when_spent() {
        let keys: EpochKeys<u32> = EpochKeys::new(policy(3));
        let id = KeyId::new_random();
        let mut derived = 0;
        let mut nonces = Vec::new();
        for _ in 0..7 {
            let k = keys
                .for_sealing(id, 1, || {
                    derived += 1;
                    Ok(([derived as u8; NONCE_LEN], derived))
                })
                .unwrap();
            nonces.push(k.nonce[0]);
        }
        // Three seals per epoch key: 1,1,1,2,2,2,3.
        assert_eq!(nonces, [1, 1, 1, 2, 2, 2, 3]);
        assert_eq!(derived, 3);
        assert_eq!(
            keys.cached_len(),
            3,
            "each sealing key is also kept for opening"
        );
    }

    #[test]
    fn derive_may_forget_and_reenter_without_deadlock() {
        // What the cross-process deadlock was: the derivation's failure path refreshed the
        // store, which forgot the key while the sealing map was write-locked.
        let keys: Arc<EpochKeys<u32>> = Arc::new(EpochKeys::new(policy(1 << 20)));
        let id = KeyId::new_random();
        let (tx, rx) = std::sync::mpsc::channel();
        let k2 = Arc::clone(&keys);
        std::thread::spawn(move || {
            let r = k2.for_sealing(id, 1, || {
                k2.forget(&id);
                // Re-entering for another key and looking at the caches must work too.
                k2.for_sealing(KeyId::new_random(), 1, || Ok(([9; NONCE_LEN], 9)))?;
                let _ = k2.cached(id, 1, &[0; NONCE_LEN]);
                Err(KmsError::key_unavailable("refused by the token"))
            });
            let _ = tx.send(r.map(|_| ()));
        });
        let r = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("for_sealing returned (no deadlock)");
        assert_eq!(r.unwrap_err().aws_name(), "KeyUnavailableException");
        // The failed lead released the turn: the next sealer derives at once.
        let k = keys.for_sealing(id, 1, || Ok(([1; NONCE_LEN], 1))).unwrap();
        assert_eq!(*k.key, 1);
    }

    #[test]
    fn concurrent_sealers_wait_for_one_derivation() {
        let keys: Arc<EpochKeys<u32>> = Arc::new(EpochKeys::new(policy(1 << 20)));
        let id = KeyId::new_random();
        let derivations = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (keys, derivations, barrier) = (
                    Arc::clone(&keys),
                    Arc::clone(&derivations),
                    Arc::clone(&barrier),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    keys.for_sealing(id, 1, || {
                        derivations.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(50));
                        Ok(([7; NONCE_LEN], 7))
                    })
                    .map(|k| *k.key)
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().unwrap(), 7);
        }
        assert_eq!(derivations.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn waiting_for_a_stuck_derivation_is_bounded() {
        let keys: Arc<EpochKeys<u32>> = Arc::new(EpochKeys::new(EpochPolicy {
            turn_wait: Duration::from_millis(100),
            ..policy(1 << 20)
        }));
        let id = KeyId::new_random();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let k2 = Arc::clone(&keys);
        let stuck = std::thread::spawn(move || {
            k2.for_sealing(id, 1, || {
                let _ = started_tx.send(());
                std::thread::sleep(Duration::from_millis(600));
                Ok(([1; NONCE_LEN], 1))
            })
            .map(|_| ())
        });
        started_rx.recv().unwrap();
        let t0 = Instant::now();
        let e = keys
            .for_sealing(id, 1, || Ok(([2; NONCE_LEN], 2)))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.aws_name(), "DependencyTimeoutException");
        assert!(t0.elapsed() < Duration::from_millis(500));
        // Other keys are not held up meanwhile.
        assert!(keys
            .for_sealing(KeyId::new_random(), 1, || Ok(([3; NONCE_LEN], 3)))
            .is_ok());
        stuck.join().unwrap().unwrap();
    }

    #[test]
    fn a_panic_under_a_cache_lock_does_not_take_the_caches_down() {
        let keys: Arc<EpochKeys<u32>> = Arc::new(EpochKeys::new(policy(1 << 20)));
        let k2 = Arc::clone(&keys);
        let _ = std::thread::spawn(move || {
            let _s = k2.sealing.write();
            let _o = k2.opening.write();
            panic!("a bug while a cache lock is held");
        })
        .join();
        assert!(keys.sealing.is_poisoned() && keys.opening.is_poisoned());
        let id = KeyId::new_random();
        let k = keys.for_sealing(id, 1, || Ok(([4; NONCE_LEN], 4))).unwrap();
        assert_eq!(keys.cached(id, 1, &k.nonce).map(|k| *k), Some(4));
        keys.forget(&id);
        assert!(keys.responsive());
    }

    #[test]
    fn keys_are_released_by_forget_and_eviction() {
        let live = Arc::new(AtomicUsize::new(0));
        let keys: EpochKeys<Probe> = EpochKeys::new(policy(1));
        let id = KeyId::new_random();
        for i in 0..40u8 {
            let k = keys
                .for_sealing(id, 1, || Ok(([i; NONCE_LEN], probe(&live))))
                .unwrap();
            drop(k);
        }
        // One current sealing key plus at most the opening cache's capacity.
        assert!(
            live.load(Ordering::SeqCst) <= 17,
            "{}",
            live.load(Ordering::SeqCst)
        );
        keys.forget(&id);
        assert_eq!(live.load(Ordering::SeqCst), 0);
        assert_eq!(keys.cached_len(), 0);
    }

    #[test]
    fn lru_eviction_keeps_recent_keys() {
        let keys: EpochKeys<u32> = EpochKeys::new(policy(1 << 20));
        let id = KeyId::new_random();
        for i in 0..16u8 {
            keys.remember((id, 1, [i; NONCE_LEN]), Arc::new(u32::from(i)));
        }
        // Touch the first one so it is the most recent, then overflow the cache.
        assert!(keys.cached(id, 1, &[0; NONCE_LEN]).is_some());
        keys.remember((id, 1, [99; NONCE_LEN]), Arc::new(99));
        assert!(keys.cached_len() <= 16);
        assert!(keys.cached(id, 1, &[0; NONCE_LEN]).is_some());
        assert!(
            keys.cached(id, 1, &[1; NONCE_LEN]).is_none(),
            "the oldest went"
        );
    }
}
