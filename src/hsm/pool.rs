//! A fixed pool of logged-in read-write sessions.
//!
//! `cryptoki::Session` is `Send` but not `Sync`: one thread uses a session at a time. The pool
//! hands sessions out for the span of one token call; the lock is held only to push or pop.

use std::ops::Deref;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use cryptoki::context::Pkcs11;
use cryptoki::session::Session;
use cryptoki::slot::Slot;

use crate::error::{KmsError, Result};

pub(crate) struct SessionPool {
    idle: Mutex<Vec<Session>>,
    ready: Condvar,
    size: usize,
    wait: Duration,
}

impl SessionPool {
    pub(crate) fn open(ctx: &Pkcs11, slot: Slot, size: usize, wait: Duration) -> Result<Self> {
        let mut idle = Vec::with_capacity(size);
        for _ in 0..size {
            idle.push(
                ctx.open_rw_session(slot)
                    .map_err(|e| KmsError::Config(format!("cannot open a session: {e}")))?,
            );
        }
        Ok(SessionPool {
            idle: Mutex::new(idle),
            ready: Condvar::new(),
            size,
            wait,
        })
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Takes a session, waiting up to the pool's limit for one to come back.
    pub(crate) fn get(&self) -> Result<PooledSession<'_>> {
        let deadline = Instant::now() + self.wait;
        let mut idle = self
            .idle
            .lock()
            .map_err(|_| KmsError::Internal("session pool poisoned".into()))?;
        loop {
            if let Some(session) = idle.pop() {
                return Ok(PooledSession {
                    pool: self,
                    session: Some(session),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(KmsError::DependencyTimeout(
                    "no token session became free in time".into(),
                ));
            }
            idle = self
                .ready
                .wait_timeout(idle, deadline - now)
                .map_err(|_| KmsError::Internal("session pool poisoned".into()))?
                .0;
        }
    }

    fn put(&self, session: Session) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(session);
            drop(idle);
            self.ready.notify_one();
        }
    }
}

/// A session on loan; it goes back to the pool when dropped.
pub(crate) struct PooledSession<'a> {
    pool: &'a SessionPool,
    session: Option<Session>,
}

impl Deref for PooledSession<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        // Only `drop` takes the session out.
        match &self.session {
            Some(s) => s,
            None => unreachable!("pooled session used after drop"),
        }
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.pool.put(s);
        }
    }
}
