//! Rotation claims and the rotation write: how several processes over one token agree that
//! exactly one of them rotates a key from a given backing version (design.md, "Key
//! rotation: exactly once").
//!
//! A claim is a `CKO_DATA` object with `CKA_APPLICATION = "p11kms-claim"` and the label
//! `p11kms:claim:<key id>:v<version rotated from>:<claimed at, ms, 15 digits>:<writer>:<random>`.
//! Claims never change; how a claim wins is decided in `ops/rotation.rs`. The winner writes
//! the rotation with [`Store::rotate_key`], which decides again on the records read afresh
//! from the token, so a late winner finds the rotation done and does nothing.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{BackingKeys, KeyEntry, RecordBackend, Store};
use crate::error::{KmsError, Result};
use crate::hsm::{BackingKind, Lookup};
use crate::kms::keyref::KeyId;
use crate::kms::records::{
    cmk_id, cmk_label, KeyRecord, Record, RecordLabel, Subject, APPLICATION,
};

/// `CKA_APPLICATION` of rotation claims.
const CLAIM_APPLICATION: &str = "p11kms-claim";
const CLAIM_PREFIX: &str = "p11kms:claim:";

/// A claim's label, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimLabel {
    pub key: KeyId,
    /// The backing version the claimer saw as current (it rotates from this one).
    pub from: u32,
    /// When it was claimed (Unix ms, the claimer's clock).
    pub at_ms: i64,
    pub writer: String,
    pub nonce: String,
}

impl ClaimLabel {
    pub fn format(&self) -> String {
        format!(
            "{CLAIM_PREFIX}{}:v{}:{:015}:{}:{}",
            self.key, self.from, self.at_ms, self.writer, self.nonce
        )
    }

    /// Anything not exactly ours is `None` (and left alone).
    pub fn parse(label: &str) -> Option<ClaimLabel> {
        let rest = label.strip_prefix(CLAIM_PREFIX)?;
        let mut parts = rest.split(':');
        let key = parts.next()?.parse().ok()?;
        let from = parts.next()?.strip_prefix('v')?.parse().ok()?;
        let at = parts.next()?;
        let at_ms = (at.len() == 15).then(|| at.parse().ok()).flatten()?;
        let hex =
            |s: &str| !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_hexdigit());
        let writer = parts.next().filter(|w| hex(w))?.to_owned();
        let nonce = parts.next().filter(|n| hex(n))?.to_owned();
        if parts.next().is_some() {
            return None;
        }
        Some(ClaimLabel {
            key,
            from,
            at_ms,
            writer,
            nonce,
        })
    }
}

/// What [`Store::rotate_key`] did.
#[derive(Debug)]
pub enum Rotated {
    /// The new version (now current) is written.
    Done(u32),
    /// Nothing to do: the fresh record says the rotation is not due (done by someone else,
    /// or the key changed), or the deadline passed first.
    NotNow(&'static str),
}

impl<R: RecordBackend, K: BackingKeys> Store<R, K> {
    /// Creates this process's claim to rotate `id` from `from`, stamped `at_ms`.
    pub fn claim_rotation(
        &self,
        id: KeyId,
        from: u32,
        at_ms: i64,
    ) -> Result<(ClaimLabel, R::Object)> {
        let mut nonce = [0u8; 4];
        self.records.random(&mut nonce)?;
        let label = ClaimLabel {
            key: id,
            from,
            at_ms,
            writer: self.writer_tag.clone(),
            nonce: hex::encode(nonce),
        };
        let o = self
            .records
            .create(CLAIM_APPLICATION, &label.format(), b"claim")?;
        Ok((label, o))
    }

    /// Every claim in the token, listed now.
    pub fn claims(&self) -> Result<Vec<(ClaimLabel, R::Object)>> {
        Ok(self
            .records
            .list(CLAIM_APPLICATION, false)?
            .into_iter()
            .filter_map(|s| Some((ClaimLabel::parse(&s.label)?, s.object)))
            .collect())
    }

    /// Destroys a claim (best effort: one left behind is stale once its version is no longer
    /// current or it is past its lifetime, and anyone may remove it then).
    pub fn drop_claim(&self, o: R::Object) {
        let _ = self.records.destroy(o);
    }

    /// The newest readable record of `id` as the token holds it now, with its label.
    fn fresh_record(&self, id: &KeyId) -> Result<Option<(RecordLabel, KeyRecord)>> {
        let mut best: Option<(RecordLabel, KeyRecord)> = None;
        for stored in self.records.list(APPLICATION, false)? {
            let Some(label) = RecordLabel::parse(&stored.label) else {
                continue;
            };
            if label.subject != Subject::Key(*id)
                || best.as_ref().is_some_and(|(b, _)| label.rank() <= b.rank())
            {
                continue;
            }
            let Some(value) = self.records.read(stored.object)? else {
                continue;
            };
            if let Some(Record::KeyV1(r)) = Record::decode(&value) {
                if r.id == *id {
                    best = Some((label, r));
                }
            }
        }
        Ok(best)
    }

    /// Rotates key `id` from backing version `from` to `from + 1`, if the token's records,
    /// read afresh, still say so: `rule` gets the newest record and returns the rotated
    /// record (which must make `from + 1` current), or `None` when the rotation is not due
    /// any more. The new backing key is the genuine one already under its label (left by a
    /// rotation that crashed before its record, or whose record a concurrent write lost), or
    /// else `generate(label, id)` makes it. Nothing is written once `deadline` has passed (a
    /// winner that slow may have been given up by the others). With this process's other
    /// writes held off throughout.
    pub fn rotate_key(
        &self,
        id: &KeyId,
        from: u32,
        deadline: Instant,
        rule: impl FnOnce(&KeyRecord) -> Result<Option<KeyRecord>>,
        generate: impl FnOnce(&str, &[u8]) -> Result<K::Key>,
    ) -> Result<Rotated> {
        let mut w = self.lock_writer();
        let Some((label, fresh)) = self.fresh_record(id)? else {
            return Ok(Rotated::NotNow("the key has no record"));
        };
        if !self.snapshot_has(&label, id) {
            // Another process wrote since our last re-list: catch up, so the new record is
            // written over the newest one (its sequence number above it).
            self.relist(&mut w, None)?;
            if !self.snapshot_has(&label, id) {
                return Ok(Rotated::NotNow("the key's records are changing"));
            }
        }
        if fresh.current_version != from {
            return Ok(Rotated::NotNow("the key was rotated already"));
        }
        let Some(record) = rule(&fresh)? else {
            return Ok(Rotated::NotNow("the rotation is not due"));
        };
        let to = from + 1;
        if record.current_version != to || !record.versions.iter().any(|v| v.version == to) {
            return Err(KmsError::internal(
                "a rotation must make the next version current",
            ));
        }
        let current = self
            .key(id)
            .ok_or_else(|| KmsError::not_found(format!("Key '{id}' does not exist")))?;
        let (new_label, new_id) = (cmk_label(id, to), cmk_id(id, to));
        let (handle, made) = match self.keys.find(&new_label, &new_id, BackingKind::Derive)? {
            Lookup::Found(h) => {
                tracing::info!(key_id = %id, version = to, "adopting the backing key already under the new version's label");
                (h, false)
            }
            Lookup::Missing => (generate(&new_label, &new_id)?, true),
            Lookup::Refused(why) => return Err(KmsError::key_unavailable(why)),
        };
        if Instant::now() >= deadline {
            if made {
                let _ = self.keys.destroy(handle);
            }
            return Ok(Rotated::NotNow("the claim's deadline passed"));
        }
        let mut cmks: BTreeMap<u32, K::Key> = current.cmks.clone();
        cmks.insert(to, handle);
        let mut unbound = current.unbound.clone();
        unbound.remove(&to);
        let entry = KeyEntry {
            record,
            cmks,
            unbound,
        };
        if let Err(e) = self.write_key(&mut w, entry) {
            if made {
                let _ = self.keys.destroy(handle);
            }
            return Err(e);
        }
        self.announce(&mut w);
        Ok(Rotated::Done(to))
    }

    /// Whether the snapshot's newest record object of `id` is the one labelled `label`.
    fn snapshot_has(&self, label: &RecordLabel, id: &KeyId) -> bool {
        self.read().key_meta.get(id).map(|m| &m.0) == Some(label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_labels_round_trip_and_refuse_the_rest() {
        let l = ClaimLabel {
            key: KeyId::new_random(),
            from: 3,
            at_ms: 1_700_000_000_123,
            writer: "0a1b2c3d".into(),
            nonce: "deadbeef".into(),
        };
        assert_eq!(ClaimLabel::parse(&l.format()), Some(l.clone()));
        let text = l.format();
        assert_eq!(ClaimLabel::parse(&format!("{text}:x")), None);
        assert_eq!(ClaimLabel::parse(&text.replace(":v3:", ":3:")), None);
        assert_eq!(ClaimLabel::parse(&text.replace("deadbeef", "")), None);
        assert_eq!(ClaimLabel::parse("p11kms:claim:nope"), None);
    }
}
