//! Upkeep: what keeps this process's view and the token in line with the records, and
//! carries out what is due: refreshing from other processes' changes, reconciling the
//! token's attributes at open, destroying keys past their deletion date, sweeping orphaned
//! backing keys, and the background thread that does it all on a schedule.

use std::sync::Arc;
use std::time::Duration;

use super::domain::KeyState;
use super::records::KeyRecord;
use super::store::KeyEntry;
use super::{KeyId, Kms};
use crate::error::Result;

/// How often upkeep looks for wrapping keys whose import token expired.
const WRAPPING_SWEEP_EVERY: Duration = Duration::from_secs(60);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Kms {
    /// Brings token attributes in line with the records (after a crash between the two writes).
    /// Uses the `CKA_DERIVE` values the store's first load read along with the labels, so
    /// start-up costs no extra token call per key.
    ///
    /// A key whose token state disagrees may be one another process is changing right now
    /// (its record written, its token state not yet, or the other way round as seen from
    /// here): the records are re-read first, and the change is decided from the fresh record
    /// and the token's attribute read again, with this process's writes held off, so an
    /// opening service never switches a just-disabled key back on.
    pub(super) fn reconcile_token_state(&self) -> Result<()> {
        let known = self.store.take_initial_derive();
        let entries: Vec<KeyEntry> = self.store.read().keys.values().cloned().collect();
        let mut refreshed = false;
        for e in entries {
            // A record this version cannot read (a newer writer's): its token state is not
            // ours to change.
            if e.record.state == KeyState::Unknown {
                continue;
            }
            let usable = self.usable_in_token(&e.record.id);
            let Ok(kind) = e.record.backing_kind() else {
                continue;
            };
            for (v, h) in &e.cmks {
                let current = match known.get(&(e.record.id, *v)) {
                    Some(d) => *d,
                    None => self.token.cmk_usable(*h, kind)?,
                };
                if current == usable {
                    continue;
                }
                if !refreshed {
                    self.refresh()?;
                    refreshed = true;
                }
                self.store.with_key(&e.record.id, |now| {
                    let Some(now) = now.filter(|n| n.record.state != KeyState::Unknown) else {
                        return Ok(());
                    };
                    let _ = now;
                    let want = self.usable_in_token(&e.record.id);
                    if self.token.cmk_usable(*h, kind)? != want {
                        self.token.set_cmk_usable(*h, kind, want)?;
                    }
                    Ok::<(), crate::error::KmsError>(())
                })?;
            }
        }
        Ok(())
    }

    /// Destroys every key whose deletion date is at or before `now_ms` (the sweeper). Each
    /// key's records are read again from the token first: a key whose deletion another
    /// process cancelled since the last refresh is kept.
    pub fn sweep_deletions_at(&self, now_ms: i64) -> Result<Vec<KeyId>> {
        // Replicas first: a primary waiting for them starts its own waiting period then.
        self.sweep_replicas_at(now_ms)?;
        let due = |r: &KeyRecord| {
            r.state == KeyState::PendingDeletion && r.deletion_ms.is_some_and(|d| d <= now_ms)
        };
        let candidates: Vec<KeyId> = self
            .store
            .read()
            .keys
            .values()
            .filter(|e| due(&e.record))
            .map(|e| e.record.id)
            .collect();
        let mut destroyed = Vec::new();
        let mut stale = false;
        for id in candidates {
            self.epochs.forget(&id);
            if self.store.destroy_key_if(&id, due)? {
                destroyed.push(id);
            } else {
                stale = true;
            }
        }
        if stale {
            // This process's view was behind the token's: catch up now.
            self.refresh()?;
        }
        Ok(destroyed)
    }

    /// Picks up other processes' changes (keys, aliases, states) from the token.
    pub fn refresh(&self) -> Result<()> {
        for id in self.store.refresh()? {
            self.epochs.forget(&id);
        }
        Ok(())
    }

    /// One round of upkeep: refresh, destroy keys past their deletion date, delete imported
    /// key material past its `ValidTo`, rotate keys whose rotation is due, sweep orphaned CMKs left by interrupted CreateKey
    /// calls and wrapping keys whose import token expired, destroy derived keys whose drop
    /// found no free session.
    pub fn maintain(&self) -> Result<()> {
        self.token.reap();
        self.refresh()?;
        let now = now_ms();
        self.sweep_deletions_at(now)?;
        self.sweep_expired_material_at(now)?;
        self.rotate_due_now()?;
        self.store.sweep_orphan_cmks()?;
        self.sweep_wrapping_keys_now(now)?;
        Ok(())
    }

    /// [`Kms::sweep_wrapping_keys_at`] at most every [`WRAPPING_SWEEP_EVERY`] (it searches
    /// the token's private keys; an expired wrapping key is harmless meanwhile: its import
    /// token is refused as expired whatever the token still holds).
    fn sweep_wrapping_keys_now(&self, now: i64) -> Result<()> {
        {
            let mut last = crate::sync::lock(&self.wrapping_sweep);
            if last.is_some_and(|t| t.elapsed() < WRAPPING_SWEEP_EVERY) {
                return Ok(());
            }
            *last = Some(std::time::Instant::now());
        }
        self.sweep_wrapping_keys_at(now)?;
        Ok(())
    }

    /// Runs [`Kms::maintain`] every `interval` on a background thread until `kms` is dropped
    /// everywhere else.
    pub fn spawn_maintenance(kms: &Arc<Kms>, interval: Duration) -> std::thread::JoinHandle<()> {
        let weak = Arc::downgrade(kms);
        std::thread::spawn(move || loop {
            std::thread::sleep(interval);
            let Some(kms) = weak.upgrade() else { return };
            // Errors are transient here (the next round retries); nothing secret is in them.
            if let Err(e) = kms.maintain() {
                tracing::warn!(
                    error = e.message(),
                    "metadata upkeep failed; retrying next round"
                );
            }
        })
    }

    /// Test and operator hook: destroys unreferenced CMKs older than `grace`.
    pub fn sweep_orphan_cmks_after(&self, grace: Duration) -> Result<(usize, usize)> {
        self.store.sweep_orphan_cmks_after(grace)
    }
}
