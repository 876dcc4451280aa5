//! The crate's one policy for poisoned locks: recover.
//!
//! A lock is poisoned when a thread panicked while holding it. Every critical section in
//! p11kms is a few map inserts, removals or field stores: no token call, no callback and no
//! other lock is taken inside one (docs/design.md, "Locks"), so a panic there cannot leave a
//! map half-updated in a way a later reader could misread. Refusing every later request with
//! "poisoned" would turn one panic into a permanent, silent outage; recovering keeps serving.
//! Panics themselves are caught per request by the server and logged.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, recovering from poisoning.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-locks `l`, recovering from poisoning.
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `l`, recovering from poisoning.
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `l` could be read-locked now (poisoned counts as free: it is recovered).
pub(crate) fn readable<T>(l: &RwLock<T>) -> bool {
    !matches!(l.try_read(), Err(std::sync::TryLockError::WouldBlock))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn poisoned_locks_are_recovered() {
        let m = Arc::new(Mutex::new(1));
        let l = Arc::new(RwLock::new(1));
        let (m2, l2) = (Arc::clone(&m), Arc::clone(&l));
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            let _h = l2.write();
            panic!("poison both");
        })
        .join();
        assert!(m.is_poisoned() && l.is_poisoned());
        *lock(&m) += 1;
        *write(&l) += 1;
        assert_eq!((*lock(&m), *read(&l)), (2, 2));
    }
}
