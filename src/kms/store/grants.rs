//! Grant records: written once, superseded by a tombstone when retired or revoked, then both
//! destroyed. Each change is decided under the writer lock against the snapshot, as for
//! aliases, so of two concurrent CreateGrant calls with one `Name` and the same parameters
//! exactly one writes.
//!
//! Crash safety: CreateGrant is one object (complete or absent). RetireGrant/RevokeGrant
//! write the tombstone first (the grant is gone everywhere from then on: the tombstone is its
//! newest record), then destroy the older objects, then the tombstone. A crash after the
//! tombstone leaves it, and maybe the grant's object, which the next re-list sweeps as
//! superseded; the tombstone alone is harmless. If an older object could not be destroyed,
//! the tombstone stays, so the grant cannot come back.

use super::{BackingKeys, RecordBackend, Snapshot, Store, WriterState};
use crate::error::{KmsError, Result};
use crate::kms::grant::GrantId;
use crate::kms::records::{GrantRecord, Record, Subject};

/// What a CreateGrant rule decided (see [`Store::put_grant`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantWrite {
    /// Write this new grant.
    New(GrantRecord),
    /// The grant exists already (a retry with the same `Name` and parameters): write nothing.
    Existing(GrantRecord),
}

impl<R: RecordBackend, K: BackingKeys> Store<R, K> {
    /// Writes a grant record (`deleted_ms` set: a tombstone, then gone). Writer lock held.
    fn write_grant(&self, w: &mut WriterState<R::Object>, record: GrantRecord) -> Result<()> {
        let id = record.grant_id;
        let prev = self.read().grant_meta.get(&id).cloned();
        let label = self.next_label(Subject::Grant(id), prev.as_ref().map(|p| &p.0));
        let value = Record::GrantV1(record.clone());
        let handle = self.write_record(&label, &value)?;
        w.seen.insert(label.format(), value);
        let live = record.deleted_ms.is_none();
        {
            let mut snap = self.write_snapshot(w);
            snap.grant_meta.insert(id, (label, vec![handle]));
            if live {
                snap.index_grant(record);
            } else {
                snap.unindex_grant(&id);
            }
        }
        let mut older_gone = true;
        if let Some((_, old)) = prev {
            for h in old {
                if self.records.destroy(h).is_err() {
                    older_gone = false;
                }
            }
        }
        // A tombstone has done its job once the older versions are gone; while one may remain
        // it stays (the next re-list sweeps the older one, then a later delete or nobody
        // needs the tombstone: it is a few bytes).
        if !live && older_gone {
            match self.records.destroy(handle) {
                Ok(()) => {
                    self.write_snapshot(w).grant_meta.remove(&id);
                }
                Err(e) => tracing::debug!(
                    grant_id = %id,
                    error = e.message(),
                    "a grant's tombstone stays in the token"
                ),
            }
        }
        Ok(())
    }

    /// Creates a grant as `rule` decides from the snapshot (the key's state, the limit, an
    /// existing grant of the same name and parameters), with every other write of this
    /// process held off. `rule` must be quick and must not call into the store.
    pub fn put_grant(
        &self,
        rule: impl FnOnce(&Snapshot<R::Object, K::Key>) -> Result<GrantWrite>,
    ) -> Result<GrantWrite> {
        let mut w = self.lock_writer();
        let decided = {
            let snap = self.read();
            rule(&snap)?
        };
        if let GrantWrite::New(record) = &decided {
            self.write_grant(&mut w, record.clone())?;
            self.announce(&mut w);
        }
        Ok(decided)
    }

    /// Deletes (retires or revokes) grant `id` if `rule` agrees, given the grant as the
    /// snapshot has it now (`None`: no such live grant; the rule answers that error). Returns
    /// the grant deleted.
    pub fn delete_grant(
        &self,
        id: &GrantId,
        deleted_ms: i64,
        rule: impl FnOnce(Option<&GrantRecord>) -> Result<()>,
    ) -> Result<GrantRecord> {
        let mut w = self.lock_writer();
        let current = self.read().grants.get(id).cloned();
        rule(current.as_ref())?;
        let current = current.ok_or_else(|| KmsError::not_found("Grant does not exist"))?;
        self.write_grant(
            &mut w,
            GrantRecord {
                deleted_ms: Some(deleted_ms),
                ..current.clone()
            },
        )?;
        self.announce(&mut w);
        Ok(current)
    }
}
