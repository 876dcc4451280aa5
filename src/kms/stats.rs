//! The service's numbers at one moment, for metrics: the token's call counters and the
//! session pool's times (from `hsm`), the epoch-key caches, the metadata store's refreshes,
//! and the keys by state. Plain values: rendering them (Prometheus) is `api::metrics`'s job.
//! No key id, alias or context is in here.

use super::epoch::EpochStats;
use super::store::StoreStats;
use super::{KeyState, Kms};
use crate::hsm::{PoolStats, TokenStats};

/// What [`Kms::stats`] returns.
#[derive(Debug, Clone)]
pub struct ServiceStats {
    /// PKCS#11 calls counted by p11kms.
    pub token: TokenStats,
    /// Session pool: call times by function, waits, loans now.
    pub pool: PoolStats,
    /// Epoch-key derivations and cache sizes.
    pub epochs: EpochStats,
    /// Metadata refreshes and re-lists.
    pub store: StoreStats,
    /// Keys (of every account and Region this process serves) by state, every state listed.
    pub keys_by_state: Vec<(KeyState, u64)>,
    /// Aliases.
    pub aliases: u64,
    /// Live grants.
    pub grants: u64,
}

/// Every key state, in the order metrics list them.
const STATES: [KeyState; 5] = [
    KeyState::Enabled,
    KeyState::Disabled,
    KeyState::PendingDeletion,
    KeyState::PendingImport,
    KeyState::Unknown,
];

impl Kms {
    /// The numbers now. Takes the snapshot's read lock once, briefly, to count keys.
    pub fn stats(&self) -> ServiceStats {
        let (keys_by_state, aliases, grants) = {
            let snap = self.store.read();
            let mut counts = STATES.map(|s| (s, 0u64));
            for e in snap.keys.values() {
                if let Some(c) = counts.iter_mut().find(|(s, _)| *s == e.record.state) {
                    c.1 += 1;
                }
            }
            (
                counts.to_vec(),
                snap.aliases.len() as u64,
                snap.grants.len() as u64,
            )
        };
        ServiceStats {
            token: self.token.stats(),
            pool: self.token.pool_stats(),
            epochs: self.epochs.stats(),
            store: self.store.stats(),
            keys_by_state,
            aliases,
            grants,
        }
    }
}
