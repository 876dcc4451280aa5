//! A fixed pool of logged-in read-write sessions, without a global lock on the fast path.
//!
//! `cryptoki::Session` is `Send` but not `Sync`: one thread uses a session at a time. Each
//! session sits in its own slot (a mutex only ever `try_lock`ed, i.e. one compare-and-swap);
//! a thread starts its scan at the slot it used last, so under steady load threads keep to
//! "their" session and do not contend on a shared cache line. Only when every slot is busy
//! does a caller take the waiters' lock and sleep on a condition variable; a returning
//! session wakes a sleeper only if there is one.

use std::cell::Cell;
use std::ops::Deref;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::session::Session;
use cryptoki::slot::Slot;

use crate::error::{KmsError, Result};

thread_local! {
    /// The slot this thread took last: where its next scan starts.
    static HINT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Spreads threads that have no hint yet over the slots.
static NEXT_HINT: AtomicUsize = AtomicUsize::new(0);

pub(crate) struct SessionPool {
    slots: Box<[Mutex<Session>]>,
    /// Callers sleeping in [`SessionPool::get`]; returning sessions notify only if non-zero.
    waiters: AtomicUsize,
    sleep: Mutex<()>,
    ready: Condvar,
    wait: Duration,
}

impl SessionPool {
    pub(crate) fn open(ctx: &Pkcs11, slot: Slot, size: usize, wait: Duration) -> Result<Self> {
        let mut slots = Vec::with_capacity(size);
        for _ in 0..size {
            slots.push(Mutex::new(ctx.open_rw_session(slot).map_err(|e| {
                KmsError::Config(format!("cannot open a session: {e}"))
            })?));
        }
        Ok(SessionPool {
            slots: slots.into_boxed_slice(),
            waiters: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            ready: Condvar::new(),
            wait,
        })
    }

    pub(crate) fn size(&self) -> usize {
        self.slots.len()
    }

    /// One pass over the slots, starting at this thread's last one.
    fn try_take(&self) -> Option<MutexGuard<'_, Session>> {
        let n = self.slots.len();
        let mut start = HINT.with(Cell::get);
        if start == usize::MAX {
            start = NEXT_HINT.fetch_add(1, Ordering::Relaxed);
        }
        for i in 0..n {
            let idx = (start + i) % n;
            let guard = match self.slots[idx].try_lock() {
                Ok(g) => g,
                Err(TryLockError::WouldBlock) => continue,
                // A panic while a session was on loan: the session itself is still usable
                // (every call we make is a single C_* round trip).
                Err(TryLockError::Poisoned(p)) => {
                    self.slots[idx].clear_poison();
                    p.into_inner()
                }
            };
            HINT.with(|h| h.set(idx));
            return Some(guard);
        }
        None
    }

    /// Takes a session, waiting up to the pool's limit for one to come back.
    pub(crate) fn get(&self) -> Result<PooledSession<'_>> {
        if let Some(g) = self.try_take() {
            return Ok(PooledSession {
                pool: self,
                guard: Some(g),
            });
        }
        let deadline = Instant::now() + self.wait;
        let mut sleeping = self.sleep.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            // Announce first, then look: a session returned after our look sees the count
            // and notifies under `sleep`, which we hold until `wait_timeout` releases it.
            self.waiters.fetch_add(1, Ordering::SeqCst);
            if let Some(g) = self.try_take() {
                self.waiters.fetch_sub(1, Ordering::SeqCst);
                return Ok(PooledSession {
                    pool: self,
                    guard: Some(g),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                self.waiters.fetch_sub(1, Ordering::SeqCst);
                return Err(KmsError::DependencyTimeout(
                    "no token session became free in time".into(),
                ));
            }
            sleeping = self
                .ready
                .wait_timeout(sleeping, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            self.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn returned(&self) {
        // Pairs with the waiter's announce-then-look: either it sees the freed slot, or we
        // see its announcement.
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.sleep.lock().unwrap_or_else(|p| p.into_inner());
            self.ready.notify_one();
        }
    }
}

/// A session on loan; it goes back to the pool when dropped.
pub(crate) struct PooledSession<'a> {
    pool: &'a SessionPool,
    guard: Option<MutexGuard<'a, Session>>,
}

impl Deref for PooledSession<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        // Only `drop` takes the guard out.
        match &self.guard {
            Some(g) => g,
            None => unreachable!("pooled session used after drop"),
        }
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.pool.returned();
    }
}
