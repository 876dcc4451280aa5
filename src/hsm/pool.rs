//! A fixed pool of logged-in read-write sessions, without a global lock on the fast path.
//!
//! `cryptoki::Session` is `Send` but not `Sync`: one thread uses a session at a time. Each
//! session sits in its own slot (a mutex only ever `try_lock`ed, i.e. one compare-and-swap);
//! a thread starts its scan at the slot it used last, so under steady load threads keep to
//! "their" session and do not contend on a shared cache line. Only when every slot is busy
//! does a caller take the waiters' lock and sleep on a condition variable; a returning
//! session wakes a sleeper only if there is one.
//!
//! Each slot also records since when its session has been on loan, so that a readiness check
//! can tell a busy token from a stalled one ([`SessionPool::longest_loan`]). Calls known to
//! take seconds on a healthy token (RSA key pair generation) run inside [`expecting_slow`]:
//! their loans count as stalled only after [`SLOW_ALLOWANCE`].

use std::cell::Cell;
use std::ops::Deref;
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::session::Session;
use cryptoki::slot::Slot;

use super::stats::{CallTimes, PoolStats};
use super::{HsmError, Result};

thread_local! {
    /// The slot this thread took last: where its next scan starts.
    static HINT: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Set while this thread runs a call that may take seconds (see [`expecting_slow`]).
    static SLOW: Cell<bool> = const { Cell::new(false) };
}

/// Marks a loan made inside [`expecting_slow`] (stored in `loaned_at`'s top bit).
const SLOW_BIT: u64 = 1 << 63;
/// A loan inside [`expecting_slow`] is taken for stalled only after this long: an RSA-4096
/// key pair takes seconds in a software token, and must not make the server "not ready".
pub(crate) const SLOW_ALLOWANCE: Duration = Duration::from_secs(60);

/// How long a loan stored as `t` in `loaned_at` counts as held at `now` (µs since the
/// pool's epoch, +1): `None` if not on loan, or on a slow call still within its allowance.
fn loan_age(now: u64, t: u64) -> Option<Duration> {
    if t == 0 {
        return None;
    }
    let held = Duration::from_micros(now.saturating_sub(t & !SLOW_BIT));
    if t & SLOW_BIT == 0 {
        Some(held)
    } else {
        held.checked_sub(SLOW_ALLOWANCE)
    }
}

/// Runs `f` with every session this thread takes meanwhile marked as on a slow call.
pub(crate) fn expecting_slow<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            SLOW.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(SLOW.with(|c| c.replace(true)));
    f()
}

/// Spreads threads that have no hint yet over the slots.
static NEXT_HINT: AtomicUsize = AtomicUsize::new(0);

pub(crate) struct SessionPool {
    slots: Box<[Mutex<Session>]>,
    /// Per slot: when its session went on loan, in µs since `epoch` (0: not on loan).
    loaned_at: Box<[AtomicU64]>,
    epoch: Instant,
    /// Callers sleeping in [`SessionPool::get`]; returning sessions notify only if non-zero.
    waiters: AtomicUsize,
    sleep: Mutex<()>,
    ready: Condvar,
    wait: Duration,
    /// Loan times by function and waits for a session (for metrics).
    times: CallTimes,
}

impl SessionPool {
    pub(crate) fn open(ctx: &Pkcs11, slot: Slot, size: usize, wait: Duration) -> Result<Self> {
        let mut slots = Vec::with_capacity(size);
        for _ in 0..size {
            slots.push(Mutex::new(ctx.open_rw_session(slot).map_err(|e| {
                HsmError::Unusable(format!("cannot open a session: {e}"))
            })?));
        }
        Ok(SessionPool {
            loaned_at: (0..slots.len()).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            slots: slots.into_boxed_slice(),
            waiters: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            ready: Condvar::new(),
            wait,
            times: CallTimes::default(),
        })
    }

    pub(crate) fn size(&self) -> usize {
        self.slots.len()
    }

    /// Loan times, waits, and how many sessions are on loan now.
    pub(crate) fn stats(&self) -> PoolStats {
        let in_use = self
            .loaned_at
            .iter()
            .filter(|t| t.load(Ordering::Relaxed) != 0)
            .count();
        self.times.snapshot(self.size(), in_use)
    }

    /// How long the session on loan longest has been out (`None`: none is on loan). A call
    /// that has held a session for seconds means the token has stopped answering. A loan
    /// made in [`expecting_slow`] counts only by how far it runs past [`SLOW_ALLOWANCE`].
    pub(crate) fn longest_loan(&self) -> Option<Duration> {
        let now = self.micros();
        self.loaned_at
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .filter_map(|t| loan_age(now, t))
            .max()
    }

    fn micros(&self) -> u64 {
        // +1: 0 means "not on loan".
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX - 1) + 1
    }

    fn lend<'a>(&'a self, idx: usize, guard: MutexGuard<'a, Session>) -> PooledSession<'a> {
        let slow = if SLOW.with(Cell::get) { SLOW_BIT } else { 0 };
        self.loaned_at[idx].store(self.micros() | slow, Ordering::Relaxed);
        PooledSession {
            pool: self,
            idx,
            guard: Some(guard),
        }
    }

    /// A session if one is free right now; never waits (for `Drop` impls and other places
    /// that must not block).
    pub(crate) fn try_get(&self) -> Option<PooledSession<'_>> {
        self.try_take().map(|(idx, g)| self.lend(idx, g))
    }

    /// One pass over the slots, starting at this thread's last one.
    fn try_take(&self) -> Option<(usize, MutexGuard<'_, Session>)> {
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
            return Some((idx, guard));
        }
        None
    }

    /// Takes a session, waiting up to the pool's limit for one to come back.
    pub(crate) fn get(&self) -> Result<PooledSession<'_>> {
        if let Some(s) = self.try_get() {
            return Ok(s);
        }
        let started = Instant::now();
        let deadline = started + self.wait;
        let mut sleeping = self.sleep.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            // Announce first, then look: a session returned after our look sees the count
            // and notifies under `sleep`, which we hold until `wait_timeout` releases it.
            self.waiters.fetch_add(1, Ordering::SeqCst);
            if let Some((idx, g)) = self.try_take() {
                self.waiters.fetch_sub(1, Ordering::SeqCst);
                self.times.waits.observe(started.elapsed());
                return Ok(self.lend(idx, g));
            }
            let now = Instant::now();
            if now >= deadline {
                self.waiters.fetch_sub(1, Ordering::SeqCst);
                self.times.waits.observe(now - started);
                self.times.wait_timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(HsmError::Busy);
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
    idx: usize,
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
        let lent = self.pool.loaned_at[self.idx].swap(0, Ordering::Relaxed) & !SLOW_BIT;
        self.pool
            .times
            .loan_ended(self.pool.micros().saturating_sub(lent));
        drop(self.guard.take());
        self.pool.returned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_loans_count_only_past_their_allowance() {
        let s = 1_000_000u64;
        assert_eq!(loan_age(5 * s, 0), None, "not on loan");
        assert_eq!(loan_age(5 * s, s), Some(Duration::from_secs(4)));
        assert_eq!(
            loan_age(5 * s, s | SLOW_BIT),
            None,
            "a slow call within 60 s"
        );
        assert_eq!(
            loan_age(70 * s, s | SLOW_BIT),
            Some(Duration::from_secs(9)),
            "a slow call 9 s past its allowance"
        );
    }

    #[test]
    fn expecting_slow_is_scoped() {
        assert!(!SLOW.with(Cell::get));
        let inner = expecting_slow(|| expecting_slow(|| SLOW.with(Cell::get)));
        assert!(inner && !SLOW.with(Cell::get));
        let _ = std::panic::catch_unwind(|| expecting_slow(|| panic!("unwinds")));
        assert!(!SLOW.with(Cell::get), "reset on unwind too");
    }
}
