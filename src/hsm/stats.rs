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
