//! Per-token call counters: cheap (relaxed atomics), always on. They let tests prove which
//! PKCS#11 path an operation took (e.g. that GenerateDataKeyWithoutPlaintext on a token that
//! can wrap never draws key bytes from `C_GenerateRandom` nor seals them with `C_Encrypt`).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

#[derive(Default)]
pub(crate) struct Counters {
    pub random_calls: AtomicU64,
    pub random_bytes: AtomicU64,
    pub encrypt_calls: AtomicU64,
    pub decrypt_calls: AtomicU64,
    pub wrap_calls: AtomicU64,
    pub generate_key_calls: AtomicU64,
    pub derive_calls: AtomicU64,
    pub private_value_reads: AtomicU64,
    pub unwrap_calls: AtomicU64,
}

/// One `Token`'s PKCS#11 calls so far, counted by p11kms (not by the token). A call is counted
/// once per attempt that reached the token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TokenStats {
    /// `C_GenerateRandom` calls.
    pub random_calls: u64,
    /// Bytes drawn from the token's RNG.
    pub random_bytes: u64,
    /// `C_Encrypt` calls (AES-GCM).
    pub encrypt_calls: u64,
    /// `C_Decrypt` calls (AES-GCM).
    pub decrypt_calls: u64,
    /// `C_WrapKey` calls (AES-GCM).
    pub wrap_calls: u64,
    /// `C_GenerateKey` (CMKs and in-token data keys).
    pub generate_key_calls: u64,
    /// `C_DeriveKey` (epoch keys).
    pub derive_calls: u64,
    /// Reads of a private key's value into this process (data key pairs on the host path).
    pub private_value_reads: u64,
    /// `C_UnwrapKey` calls (key import: imported key material goes straight into the token).
    pub unwrap_calls: u64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> TokenStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TokenStats {
            random_calls: get(&self.random_calls),
            random_bytes: get(&self.random_bytes),
            encrypt_calls: get(&self.encrypt_calls),
            decrypt_calls: get(&self.decrypt_calls),
            wrap_calls: get(&self.wrap_calls),
            generate_key_calls: get(&self.generate_key_calls),
            derive_calls: get(&self.derive_calls),
            private_value_reads: get(&self.private_value_reads),
            unwrap_calls: get(&self.unwrap_calls),
        }
    }
}

impl TokenStats {
    /// The calls made between `earlier` and `self`.
    pub fn since(&self, earlier: &TokenStats) -> TokenStats {
        TokenStats {
            random_calls: self.random_calls.saturating_sub(earlier.random_calls),
            random_bytes: self.random_bytes.saturating_sub(earlier.random_bytes),
            encrypt_calls: self.encrypt_calls.saturating_sub(earlier.encrypt_calls),
            decrypt_calls: self.decrypt_calls.saturating_sub(earlier.decrypt_calls),
            wrap_calls: self.wrap_calls.saturating_sub(earlier.wrap_calls),
            generate_key_calls: self
                .generate_key_calls
                .saturating_sub(earlier.generate_key_calls),
            derive_calls: self.derive_calls.saturating_sub(earlier.derive_calls),
            private_value_reads: self
                .private_value_reads
                .saturating_sub(earlier.private_value_reads),
            unwrap_calls: self.unwrap_calls.saturating_sub(earlier.unwrap_calls),
        }
    }
}

/// The PKCS#11 function a token call is counted under in [`CallTimes`]: the last one counted
/// (by [`Counters`]) on the thread while its session was on loan, else `Other` (object
/// searches, attribute reads, signatures, ...). A loan that makes several calls (an in-token
/// data key: `C_GenerateKey` then `C_WrapKey`) counts once, under the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFn {
    /// `C_GenerateRandom`.
    GenerateRandom,
    /// `C_Encrypt` (AES-GCM).
    Encrypt,
    /// `C_Decrypt` (AES-GCM).
    Decrypt,
    /// `C_WrapKey`.
    WrapKey,
    /// `C_UnwrapKey`.
    UnwrapKey,
    /// `C_GenerateKey` / `C_GenerateKeyPair`.
    GenerateKey,
    /// `C_DeriveKey`.
    DeriveKey,
    /// A private key's value read (data key pairs on the host path).
    ReadPrivateValue,
    /// Any other call.
    Other,
}

impl CallFn {
    /// Every function, in index order.
    pub const ALL: [CallFn; 9] = [
        CallFn::GenerateRandom,
        CallFn::Encrypt,
        CallFn::Decrypt,
        CallFn::WrapKey,
        CallFn::UnwrapKey,
        CallFn::GenerateKey,
        CallFn::DeriveKey,
        CallFn::ReadPrivateValue,
        CallFn::Other,
    ];

    /// The PKCS#11 name (a metrics label value).
    pub fn name(self) -> &'static str {
        match self {
            CallFn::GenerateRandom => "C_GenerateRandom",
            CallFn::Encrypt => "C_Encrypt",
            CallFn::Decrypt => "C_Decrypt",
            CallFn::WrapKey => "C_WrapKey",
            CallFn::UnwrapKey => "C_UnwrapKey",
            CallFn::GenerateKey => "C_GenerateKey",
            CallFn::DeriveKey => "C_DeriveKey",
            CallFn::ReadPrivateValue => "C_GetAttributeValue",
            CallFn::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

thread_local! {
    /// The function last counted on this thread since its last session went back.
    static LAST_FN: std::cell::Cell<CallFn> = const { std::cell::Cell::new(CallFn::Other) };
}

impl Counters {
    /// The function `counter` counts.
    fn function_of(&self, counter: &AtomicU64) -> CallFn {
        let is = |c: &AtomicU64| std::ptr::eq(counter, c);
        if is(&self.random_calls) || is(&self.random_bytes) {
            CallFn::GenerateRandom
        } else if is(&self.encrypt_calls) {
            CallFn::Encrypt
        } else if is(&self.decrypt_calls) {
            CallFn::Decrypt
        } else if is(&self.wrap_calls) {
            CallFn::WrapKey
        } else if is(&self.unwrap_calls) {
            CallFn::UnwrapKey
        } else if is(&self.generate_key_calls) {
            CallFn::GenerateKey
        } else if is(&self.derive_calls) {
            CallFn::DeriveKey
        } else if is(&self.private_value_reads) {
            CallFn::ReadPrivateValue
        } else {
            CallFn::Other
        }
    }

    /// Counts one call on `counter` and names its function as this thread's current call.
    pub(crate) fn count(&self, counter: &AtomicU64) {
        Counters::add(counter, 1);
        let f = self.function_of(counter);
        LAST_FN.with(|c| c.set(f));
    }
}

/// How long token calls held their session, by function (see [`CallFn`]), and how callers
/// waited for a session: kept by the session pool, with relaxed atomics only.
#[derive(Default)]
pub(crate) struct CallTimes {
    by_fn: [crate::latency::Histogram; CallFn::ALL.len()],
    /// Takes that found every session busy and slept (successful or not).
    pub(crate) waits: crate::latency::Histogram,
    /// Takes that gave up ([`super::HsmError::Busy`]).
    pub(crate) wait_timeouts: AtomicU64,
}

impl CallTimes {
    /// A loan of `us` µs ended: counted under this thread's current function, which is reset.
    pub(crate) fn loan_ended(&self, us: u64) {
        let f = LAST_FN.with(|c| c.replace(CallFn::Other));
        self.by_fn[f.index()].observe_us(us);
    }
}

/// The session pool's numbers at one moment.
#[derive(Debug, Clone)]
pub struct PoolStats {
    /// Sessions in the pool.
    pub size: usize,
    /// Sessions on loan right now.
    pub in_use: usize,
    /// How long token calls held their session, per function that has been called.
    pub calls: Vec<(CallFn, crate::latency::Snapshot)>,
    /// Waits for a free session (only takes that found none free).
    pub waits: crate::latency::Snapshot,
    /// Waits that ended without a session.
    pub wait_timeouts: u64,
}

impl CallTimes {
    pub(crate) fn snapshot(&self, size: usize, in_use: usize) -> PoolStats {
        PoolStats {
            size,
            in_use,
            calls: CallFn::ALL
                .iter()
                .map(|f| (*f, self.by_fn[f.index()].snapshot()))
                .collect(),
            waits: self.waits.snapshot(),
            wait_timeouts: self.wait_timeouts.load(Ordering::Relaxed),
        }
    }
}
