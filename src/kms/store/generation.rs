//! The generation stamp: one data object whose label every writer bumps after a change, so
//! that other processes re-list the records only when something changed.

use super::{
    BackingKeys, RecordBackend, Store, WriterState, FULL_REFRESH_EVERY, SAFETY_NET_FACTOR,
};
use crate::error::Result;
use crate::kms::keyref::KeyId;

/// Label prefix of the generation object (not a record: `RecordLabel::parse` ignores it).
const GENERATION_PREFIX: &str = "p11kms:generation:";
/// `CKA_APPLICATION` of the generation object: its own, so that finding it does not list
/// (or cost reading) the records.
const GENERATION_APPLICATION: &str = "p11kms-generation";
/// `CKA_APPLICATION` of the short-lived object each process relabels once at open, to learn
/// whether the token lets labels change before it trusts an unchanged stamp.
const PROBE_APPLICATION: &str = "p11kms-probe";

/// A generation stamp: (counter, writer tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stamp {
    counter: u64,
    writer: String,
}

impl Stamp {
    pub(super) fn parse(label: &str) -> Option<Stamp> {
        let (counter, writer) = label.strip_prefix(GENERATION_PREFIX)?.split_once(':')?;
        Some(Stamp {
            counter: counter.parse().ok()?,
            writer: writer.to_owned(),
        })
    }

    fn format(&self) -> String {
        format!("{GENERATION_PREFIX}{:020}:{}", self.counter, self.writer)
    }
}

impl<R: RecordBackend, K: BackingKeys> Store<R, K> {
    /// Picks up other processes' changes: reads the generation stamp and re-lists the token
    /// only if it moved (or the safety-net interval has passed). Returns the ids of keys whose
    /// record changed.
    pub fn refresh(&self) -> Result<Vec<KeyId>> {
        let r = self.refresh_locked();
        match &r {
            Ok(_) => self.caught_up(),
            Err(_) => {
                self.counts
                    .refresh_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        r
    }

    fn refresh_locked(&self) -> Result<Vec<KeyId>> {
        let mut w = self.lock_writer();
        let stamp = match w.generation {
            Some(g) => match self.records.label(g)? {
                Some(l) => Some(l),
                // Destroyed as a duplicate by another process: find the one that stays.
                None => self.locate_generation(&mut w)?,
            },
            None => self.locate_generation(&mut w)?,
        };
        let every = FULL_REFRESH_EVERY.max(w.last_full_took * SAFETY_NET_FACTOR);
        let stale = w.last_full.is_none_or(|t| t.elapsed() >= every);
        let changed = if stamp.is_none() || stamp != w.current || stale {
            self.relist(&mut w, stamp.clone())?
        } else {
            Vec::new()
        };
        // Our last stamp overwritten by a concurrent writer's (same or lower counter): bump
        // again so that processes that took theirs for the latest re-list.
        if let (Some(mine), Some(seen)) = (&w.my_stamp, stamp.as_deref().and_then(Stamp::parse)) {
            if seen.counter > mine.counter {
                w.my_stamp = None;
            } else if seen != *mine {
                self.bump(&mut w)?;
            }
        }
        Ok(changed)
    }

    /// Re-lists the records regardless of the stamp (tests).
    #[cfg(test)]
    pub fn refresh_full(&self) -> Result<Vec<KeyId>> {
        let mut w = self.lock_writer();
        let stamp = match w.generation {
            Some(g) => self.records.label(g)?,
            None => None,
        };
        let stamp = match stamp {
            Some(s) => Some(s),
            None => self.locate_generation(&mut w)?,
        };
        self.relist(&mut w, stamp)
    }

    /// Finds the generation object (creating it in a new token) and returns its stamp, read
    /// now: a re-list that starts after this read sees every change announced before it.
    /// Two processes may create one each at the same moment: the later of the two to look
    /// again sees both, keeps the one with the smaller (random, immutable) value, as every
    /// process would, and destroys the other; whoever watched that one gets a stale handle
    /// at its next refresh and comes here again.
    pub(super) fn locate_generation(
        &self,
        w: &mut WriterState<R::Object>,
    ) -> Result<Option<String>> {
        if w.no_detector {
            return Ok(None);
        }
        let watched = w.generation;
        let mut found = self.records.list(GENERATION_APPLICATION, true)?;
        if found.is_empty() {
            let mut id = [0u8; 16];
            self.records.random(&mut id)?;
            let stamp = Stamp {
                counter: 1,
                writer: self.writer_tag.clone(),
            };
            self.records
                .create(GENERATION_APPLICATION, &stamp.format(), &id)?;
            found = self.records.list(GENERATION_APPLICATION, true)?;
        }
        // Every process keeps the same one: the smallest value.
        found.sort_by(|a, b| a.value.cmp(&b.value));
        let mut iter = found.into_iter();
        let Some(keep) = iter.next().map(|s| s.object) else {
            return Ok(None);
        };
        w.generation = Some(keep);
        if watched != Some(keep) {
            // Whatever stamp the snapshot was built at belonged to another object.
            w.current = None;
        }
        let duplicates: Vec<R::Object> = iter.map(|s| s.object).collect();
        if !duplicates.is_empty() {
            for h in duplicates {
                let _ = self.records.destroy(h);
            }
            // Processes that watched a loser may have missed stamps: make them re-list.
            self.bump_once(w)?;
        }
        self.records.label(keep)
    }

    /// [`Store::bump`] after a write that is already in the token: a failure here must not
    /// turn a done write into an error; other processes then see it at their safety-net
    /// re-list instead of their next refresh.
    pub(super) fn announce(&self, w: &mut WriterState<R::Object>) {
        if let Err(e) = self.bump(w) {
            tracing::warn!(
                error = e.message(),
                "could not announce a metadata change to other processes; they will see it \
                 within {} s",
                FULL_REFRESH_EVERY.as_secs()
            );
        }
    }

    /// Announces a change: the generation stamp goes to the next counter, with our tag.
    pub(super) fn bump(&self, w: &mut WriterState<R::Object>) -> Result<()> {
        for _ in 0..3 {
            if self.bump_once(w)? {
                return Ok(());
            }
            // The object vanished (a duplicate another process destroyed): find the one that
            // stays, then stamp that.
            self.locate_generation(w)?;
        }
        Ok(())
    }

    /// Learns, once at open, whether the token lets a data object's label change, on an
    /// object of its own (probing the generation object could overwrite a concurrent bump).
    /// Without that, a process that only reads would trust a stamp no writer can move and
    /// miss changes until its safety-net re-list.
    pub(super) fn probe_relabel(&self, w: &mut WriterState<R::Object>) -> Result<()> {
        let label = format!("p11kms:probe:{}", self.writer_tag);
        let probe = self.records.create(PROBE_APPLICATION, &label, b"probe")?;
        let relabelled = self.records.relabel(probe, &format!("{label}:relabelled"));
        // Best effort: a leftover probe is a few bytes that nothing reads.
        let _ = self.records.destroy(probe);
        if let Err(e) = relabelled {
            self.lose_detector(w, &e);
        }
        Ok(())
    }

    fn lose_detector(&self, w: &mut WriterState<R::Object>, e: &crate::error::KmsError) {
        // No detector: every refresh re-lists (correct, only slower). Tell the operator once.
        tracing::warn!(
            error = %e,
            "the token refuses to relabel data objects; metadata refreshes will re-list the \
             token every time"
        );
        w.generation = None;
        w.no_detector = true;
        w.current = None;
    }

    /// One stamp write. `Ok(false)`: the watched object has vanished.
    pub(super) fn bump_once(&self, w: &mut WriterState<R::Object>) -> Result<bool> {
        let Some(g) = w.generation else {
            return Ok(true);
        };
        let Some(before) = self.records.label(g)? else {
            return Ok(false);
        };
        let next = Stamp {
            counter: Stamp::parse(&before).map_or(0, |s| s.counter) + 1,
            writer: self.writer_tag.clone(),
        };
        let label = next.format();
        match self.records.relabel(g, &label) {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(e) => {
                self.lose_detector(w, &e);
                return Ok(true);
            }
        }
        // Our snapshot was current up to `before` and now holds our own change.
        if w.current.as_deref() == Some(before.as_str()) {
            w.current = Some(label.clone());
        }
        w.my_stamp = Some(next.clone());
        // Read back: a concurrent bump that landed after ours replaced it with an equal
        // counter; leave a higher one so that the other writer's readers re-list too.
        if let Some(now) = self.records.label(g)? {
            if now != label && Stamp::parse(&now).is_none_or(|s| s.counter <= next.counter) {
                let again = Stamp {
                    counter: next.counter + 1,
                    writer: self.writer_tag.clone(),
                };
                if self.records.relabel(g, &again.format())? {
                    w.my_stamp = Some(again);
                }
            }
        }
        Ok(true)
    }
}
