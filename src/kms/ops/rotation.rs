//! Key rotation: EnableKeyRotation, DisableKeyRotation, GetKeyRotationStatus,
//! RotateKeyOnDemand, ListKeyRotations, and the rotations themselves, which the upkeep
//! carries out when due ([`Kms::rotate_due_at`]), exactly once across the processes sharing
//! the token (design.md, "Key rotation").
//!
//! A rotation adds a backing version: a new CMK `p11kms:cmk:<key id>:v<n+1>` generated like
//! version 1, made current in the key's record. New ciphertexts name the new version in
//! their header; older ones name theirs, which the record keeps listing, so they still open.

use std::ops::Bound;
use std::time::{Duration, Instant};

use super::super::domain::{
    AwsEnum, ImportState, IncludeKeyMaterial, KeyMaterialState, KeySpec, KeyState, RotationType,
};
use super::super::records::{
    key_material_id, AutoRotation, BackingVersion, KeyRecord, RotationMark,
};
use super::super::store::{Change, ClaimLabel, Rotated};
use super::super::types::{
    EnableKeyRotationRequest, GetKeyRotationStatusResponse, KeyIdRequest, KeyIdResponse,
    ListKeyRotationsRequest, ListKeyRotationsResponse, RotationsListEntry,
};
use super::super::{Forms, KeyId, Kms};
use super::{check_limit, now_ms, required, secs, unavailable_state, DAY_MS};
use crate::error::{KmsError, Result};

/// How long [`Kms::complete_rotation`] keeps trying before it leaves the rotation to an
/// upkeep.
const COMPLETE_WITHIN: Duration = Duration::from_secs(30);
/// `RotationPeriodInDays` when EnableKeyRotation does not say.
pub const DEFAULT_ROTATION_PERIOD_DAYS: u32 = 365;
/// AWS's bounds on `RotationPeriodInDays`.
const PERIOD_DAYS: std::ops::RangeInclusive<i64> = 90..=2560;
/// AWS's limit of on-demand rotations per key.
pub const MAX_ON_DEMAND_ROTATIONS: usize = 25;
/// How long a claimer waits after writing its claim before it looks at everyone's: the
/// claims of every process that saw the same due rotation are in the token by then.
const DECISION_WINDOW: Duration = Duration::from_secs(2);
/// A claim older than this is given up (its process died, or is hopelessly slow).
const CLAIM_LIFETIME: Duration = Duration::from_secs(60);
/// A winner writes nothing later than this before its claim's lifetime ends, so that its
/// rotation is in the token before anyone could give its claim up and act instead.
const SETTLE: Duration = Duration::from_secs(3);
/// Two claims closer in time than this both lose (and their processes try again later):
/// only a clearly later claim wins over an earlier one (design.md says why).
const CLAIM_MARGIN: Duration = Duration::from_millis(300);
/// A process writes claims for at most this long per round (the other due keys wait).
const CLAIM_BUDGET: Duration = Duration::from_millis(100);
/// The upkeep waits up to this long, at random, before it claims due rotations, so that
/// processes whose rounds run in step do not keep claiming at the same moment.
const CLAIM_JITTER: Duration = Duration::from_millis(2000);

/// The rotations `r` wants at `now`: on-demand first (AWS's on-demand rotations leave the
/// automatic schedule alone), then automatic. Only Enabled keys rotate (AWS: a disabled key's
/// rotation waits until it is enabled again, and a key pending deletion does not rotate).
fn due(r: &KeyRecord, now: i64) -> Option<RotationType> {
    if r.state != KeyState::Enabled || !rotatable_kind(r) || r.versions.is_empty() {
        return None;
    }
    if r.on_demand_rotation_ms.is_some() {
        return Some(RotationType::OnDemand);
    }
    r.auto_rotation
        .filter(|a| a.next_ms <= now)
        .map(|_| RotationType::Automatic)
}

/// Symmetric encryption keys with key material generated in the token.
fn rotatable_kind(r: &KeyRecord) -> bool {
    r.spec == KeySpec::SymmetricDefault && r.import.is_none()
}

/// `r` rotated at `at`, `kind`: the next version current, the schedule moved on.
fn rotated(r: &KeyRecord, kind: RotationType, at: i64) -> KeyRecord {
    let to = r.current_version + 1;
    let mut next = r.clone();
    next.versions.push(BackingVersion {
        version: to,
        created: at / 1000,
        rotation: Some(RotationMark { kind, at_ms: at }),
    });
    next.current_version = to;
    match kind {
        RotationType::OnDemand => next.on_demand_rotation_ms = None,
        RotationType::Automatic => {
            next.auto_rotation = r.auto_rotation.map(|a| AutoRotation {
                next_ms: at + i64::from(a.period_days) * DAY_MS,
                ..a
            })
        }
    }
    next
}

fn on_demand_count(r: &KeyRecord) -> usize {
    r.versions
        .iter()
        .filter(|v| v.rotation.is_some_and(|m| m.kind == RotationType::OnDemand))
        .count()
}

impl Kms {
    /// UnsupportedOperationException for a key AWS does not rotate, worded per operation.
    fn check_rotatable(&self, r: &KeyRecord, what: &str) -> Result<()> {
        let arn = self.key_arn(r);
        if r.state == KeyState::Unknown {
            return Err(unavailable_state(&arn));
        }
        if r.spec != KeySpec::SymmetricDefault {
            return Err(KmsError::unsupported(format!(
                "{arn} key spec is {} and key usage is {}, which is not supported for {what}. \
                 Only symmetric encryption keys rotate.",
                r.spec, r.usage
            )));
        }
        Ok(())
    }

    /// The state rule of EnableKeyRotation, DisableKeyRotation and RotateKeyOnDemand.
    fn check_rotation_state(&self, r: &KeyRecord) -> Result<()> {
        let arn = self.key_arn(r);
        match r.state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(KmsError::disabled(format!("{arn} is disabled."))),
            KeyState::PendingDeletion | KeyState::PendingReplicaDeletion => Err(
                KmsError::invalid_state(format!("{arn} is pending deletion.")),
            ),
            KeyState::PendingImport => {
                Err(KmsError::invalid_state(format!("{arn} is pending import.")))
            }
            KeyState::Unknown => Err(unavailable_state(&arn)),
        }
    }

    /// A multi-Region replica: its rotation is its primary key's (the replicas share the
    /// primary's key material, so a rotation made there is theirs too), as at AWS.
    fn refuse_replica(&self, r: &KeyRecord, what: &str) -> Result<()> {
        if self.is_replica(r) {
            return Err(KmsError::unsupported(format!(
                "{} is a multi-Region replica key: {what} is managed on its primary key.",
                self.key_arn(r)
            )));
        }
        Ok(())
    }

    /// Imported key material: no automatic rotation (as at AWS), and no on-demand rotation
    /// here (AWS rotates to newly imported material; p11kms does not import a second one).
    fn refuse_imported(&self, r: &KeyRecord, what: &str) -> Result<()> {
        if r.import.is_some() {
            return Err(KmsError::unsupported(format!(
                "{} origin is EXTERNAL which is not valid for {what}.",
                self.key_arn(r)
            )));
        }
        Ok(())
    }

    /// EnableKeyRotation: automatic rotation every `RotationPeriodInDays` (90 to 2560, 365
    /// by default), first one period from now. On a key whose rotation is enabled already,
    /// a new period moves the next date by the difference.
    pub fn enable_key_rotation(&self, req: EnableKeyRotationRequest) -> Result<()> {
        let key = required(req.key_id, "keyId")?;
        let period = match req.rotation_period_in_days {
            None => DEFAULT_ROTATION_PERIOD_DAYS,
            Some(d) if PERIOD_DAYS.contains(&d) => d as u32,
            Some(d) => {
                let bound = if d < *PERIOD_DAYS.start() {
                    "greater than or equal to 90"
                } else {
                    "less than or equal to 2560"
                };
                return Err(KmsError::validation(format!(
                    "1 validation error detected: Value '{d}' at 'rotationPeriodInDays' failed \
                     to satisfy constraint: Member must have value {bound}"
                )));
            }
        };
        let (id, resolved) = self.resolve(&key, Forms::KeyOnly)?;
        self.refuse_replica(&resolved.record, "automatic key rotation")?;
        let now = now_ms();
        self.store.update_key(
            &id,
            |e| {
                let r = &e.record;
                self.check_rotatable(r, "automatic key rotation")?;
                self.refuse_imported(r, "automatic key rotation")?;
                self.check_rotation_state(r)?;
                let next_ms = match r.auto_rotation {
                    Some(a) if a.period_days == period => return Ok(Change::Keep),
                    Some(a) => a.next_ms + (i64::from(period) - i64::from(a.period_days)) * DAY_MS,
                    None => now + i64::from(period) * DAY_MS,
                };
                Ok(Change::Write(KeyRecord {
                    auto_rotation: Some(AutoRotation {
                        period_days: period,
                        next_ms,
                    }),
                    ..r.clone()
                }))
            },
            |_| Ok(()),
        )?;
        Ok(())
    }

    /// DisableKeyRotation.
    pub fn disable_key_rotation(&self, req: KeyIdRequest) -> Result<()> {
        let (id, resolved) = self.resolve(&required(req.key_id, "keyId")?, Forms::KeyOnly)?;
        self.refuse_replica(&resolved.record, "automatic key rotation")?;
        self.store.update_key(
            &id,
            |e| {
                let r = &e.record;
                self.check_rotatable(r, "automatic key rotation")?;
                self.refuse_imported(r, "automatic key rotation")?;
                self.check_rotation_state(r)?;
                if r.auto_rotation.is_none() {
                    return Ok(Change::Keep);
                }
                Ok(Change::Write(KeyRecord {
                    auto_rotation: None,
                    ..r.clone()
                }))
            },
            |_| Ok(()),
        )?;
        Ok(())
    }

    /// GetKeyRotationStatus. A key pending deletion reads as not rotating (AWS), and keys
    /// with imported material never rotate automatically.
    pub fn get_key_rotation_status(
        &self,
        req: KeyIdRequest,
    ) -> Result<GetKeyRotationStatusResponse> {
        let (_, entry) = self.resolve(&required(req.key_id, "keyId")?, Forms::KeyOnly)?;
        let r = &entry.record;
        self.check_rotatable(r, "GetKeyRotationStatus")?;
        let auto = r
            .auto_rotation
            .filter(|_| r.state != KeyState::PendingDeletion && r.import.is_none());
        Ok(GetKeyRotationStatusResponse {
            key_rotation_enabled: auto.is_some(),
            key_id: self.key_arn(r),
            rotation_period_in_days: auto.map(|a| a.period_days),
            next_rotation_date: auto.map(|a| secs(a.next_ms)),
            on_demand_rotation_start_date: r.on_demand_rotation_ms.map(secs),
        })
    }

    /// RotateKeyOnDemand: asks for a rotation and returns; the upkeep completes it within a
    /// few seconds ([`Kms::rotate_due_at`]; `GetKeyRotationStatus` shows
    /// `OnDemandRotationStartDate` meanwhile). One in progress is a `ConflictException`;
    /// AWS's 25 per key, a `LimitExceededException`.
    pub fn rotate_key_on_demand(&self, req: KeyIdRequest) -> Result<KeyIdResponse> {
        let (id, resolved) = self.resolve(&required(req.key_id, "keyId")?, Forms::KeyOnly)?;
        self.refuse_replica(&resolved.record, "on-demand key rotation")?;
        let now = now_ms();
        let entry = self.store.update_key(
            &id,
            |e| {
                let r = &e.record;
                self.check_rotatable(r, "on-demand key rotation")?;
                self.refuse_imported(r, "on-demand key rotation")?;
                self.check_rotation_state(r)?;
                let arn = self.key_arn(r);
                if r.on_demand_rotation_ms.is_some() {
                    return Err(KmsError::conflict(format!(
                        "An on-demand rotation of {arn} is already in progress."
                    )));
                }
                if on_demand_count(r) >= MAX_ON_DEMAND_ROTATIONS {
                    return Err(KmsError::limit_exceeded(format!(
                        "{arn} has reached the limit of {MAX_ON_DEMAND_ROTATIONS} on-demand \
                         rotations."
                    )));
                }
                Ok(Change::Write(KeyRecord {
                    on_demand_rotation_ms: Some(now),
                    ..r.clone()
                }))
            },
            |_| Ok(()),
        )?;
        Ok(KeyIdResponse {
            key_id: self.key_arn(&entry.record),
        })
    }

    /// ListKeyRotations: the key materials made by rotations, oldest first
    /// (`IncludeKeyMaterial=ALL_KEY_MATERIAL` adds the first one). The marker is the last
    /// version listed.
    pub fn list_key_rotations(
        &self,
        req: ListKeyRotationsRequest,
    ) -> Result<ListKeyRotationsResponse> {
        let key = required(req.key_id, "keyId")?;
        let limit = check_limit(req.limit, 100)?;
        let include = match &req.include_key_material {
            None => IncludeKeyMaterial::RotationsOnly,
            Some(s) => IncludeKeyMaterial::parse(s, "includeKeyMaterial")?,
        };
        let start = match &req.marker {
            None => Bound::Unbounded,
            Some(m) => Bound::Excluded(
                m.parse::<u32>()
                    .map_err(|_| KmsError::invalid_marker(format!("Invalid marker {m}")))?,
            ),
        };
        let (id, entry) = self.resolve(&key, Forms::KeyOnly)?;
        let r = &entry.record;
        self.check_rotatable(r, "ListKeyRotations")?;
        let arn = self.key_arn(r);
        let import = r.import.as_deref();
        let mut iter = r
            .versions
            .iter()
            .filter(|v| std::ops::RangeBounds::contains(&(start, Bound::Unbounded), &v.version))
            .filter(|v| include == IncludeKeyMaterial::AllKeyMaterial || v.rotation.is_some());
        let page: Vec<&BackingVersion> = iter.by_ref().take(limit).collect();
        let truncated = iter.next().is_some();
        let next_marker = truncated
            .then(|| page.last().map(|v| v.version.to_string()))
            .flatten();
        let rotations = page
            .into_iter()
            .map(|v| RotationsListEntry {
                key_id: arn.clone(),
                key_material_id: key_material_id(&id, v.version),
                import_state: import.map(|_| ImportState::Imported),
                key_material_state: if v.version == r.current_version {
                    KeyMaterialState::Current
                } else {
                    KeyMaterialState::NonCurrent
                },
                expiration_model: import.and_then(|i| i.expiration_model),
                valid_to: import.and_then(|i| i.valid_to_ms).map(secs),
                rotation_date: v.rotation.map(|m| secs(m.at_ms)),
                rotation_type: v.rotation.map(|m| m.kind),
            })
            .collect();
        Ok(ListKeyRotationsResponse {
            rotations,
            next_marker,
            truncated,
        })
    }

    /// Carries out every rotation due at `now_ms` (Unix ms; tests pass a later time):
    /// pending on-demand rotations and automatic ones past their date. Exactly once across
    /// the processes over this token: each writes a claim, waits [`DECISION_WINDOW`], and
    /// only the earliest live claim on (key, version) rotates, deciding again on the records
    /// read afresh. Returns the (key, new version) pairs this process made. Takes at least the
    /// decision window when anything is due; nothing is waited on otherwise.
    pub fn rotate_due_at(&self, now_ms: i64) -> Result<Vec<(KeyId, u32)>> {
        self.rotate_due(now_ms, None)
    }

    /// Completes the on-demand rotation asked for key `id` (if still pending), for a command
    /// line that has no upkeep running behind it: rounds of the claim protocol until the
    /// rotation is done here or by another process, for at most [`COMPLETE_WITHIN`]. A round
    /// can end with nothing done (another process's live claim, or a token that stalled
    /// while claiming), so one round is not enough on a loaded machine. Returns what this
    /// process rotated.
    pub fn complete_rotation(&self, id: KeyId) -> Result<Vec<(KeyId, u32)>> {
        let until = Instant::now() + COMPLETE_WITHIN;
        loop {
            let pending = self.store.read().keys.get(&id).is_some_and(|e| {
                e.record.on_demand_rotation_ms.is_some() && due(&e.record, now_ms()).is_some()
            });
            if !pending {
                return Ok(Vec::new());
            }
            let done = self.rotate_due(now_ms(), Some(id))?;
            if !done.is_empty() || Instant::now() >= until {
                return Ok(done);
            }
            std::thread::sleep(Duration::from_millis(250));
            self.refresh()?;
        }
    }

    /// The upkeep's round: [`Kms::rotate_due_at`] now, after a random pause of up to
    /// [`CLAIM_JITTER`] when anything is due (nothing is waited on otherwise).
    pub(crate) fn rotate_due_now(&self) -> Result<Vec<(KeyId, u32)>> {
        let any = self
            .store
            .read()
            .keys
            .values()
            .any(|e| due(&e.record, now_ms()).is_some());
        if !any {
            return Ok(Vec::new());
        }
        let jitter = rand::random::<u64>() % (CLAIM_JITTER.as_millis() as u64 + 1);
        std::thread::sleep(Duration::from_millis(jitter));
        self.rotate_due(now_ms(), None)
    }

    fn rotate_due(&self, now: i64, only: Option<KeyId>) -> Result<Vec<(KeyId, u32)>> {
        let due_now: Vec<(KeyId, u32)> = self
            .store
            .read()
            .keys
            .values()
            .filter(|e| only.is_none_or(|id| id == e.record.id))
            .filter(|e| due(&e.record, now).is_some())
            .map(|e| (e.record.id, e.record.current_version))
            .collect();
        if due_now.is_empty() {
            return Ok(Vec::new());
        }
        let lifetime = CLAIM_LIFETIME.as_millis() as i64;
        let live = |l: &ClaimLabel, at: i64| at - l.at_ms < lifetime;
        // Listed before this process writes its claims (see the module docs on SoftHSM): a
        // rotation someone else has claimed and not given up is theirs (this process backs
        // off until the claim is gone or past its lifetime).
        let started = Instant::now();
        let before = self.store.claims()?;
        // The claims' time is taken after that listing, and all of them are written within
        // [`CLAIM_BUDGET`] of it: the margin argument needs "claimed at" and "committed" to be
        // closer than the margin (design.md).
        let claiming = Instant::now();
        let now = now + started.elapsed().as_millis() as i64;
        let mut mine = Vec::new();
        for (id, from) in &due_now {
            let taken = before
                .iter()
                .any(|(l, _)| l.key == *id && l.from == *from && live(l, now));
            if taken {
                tracing::debug!(key_id = %id, from, "rotation claimed by another live claim");
                continue;
            }
            if claiming.elapsed() > CLAIM_BUDGET {
                break; // the rest at a later round
            }
            match self.store.claim_rotation(*id, *from, now) {
                Ok(c) => mine.push((c, Instant::now())),
                Err(e) => {
                    for ((_, o), _) in mine {
                        self.store.drop_claim(o);
                    }
                    return Err(e);
                }
            }
        }
        if claiming.elapsed() > CLAIM_MARGIN / 2 {
            // The token stalled while we claimed: these claims prove nothing; next round.
            tracing::debug!(
                claims = mine.len(),
                took_ms = claiming.elapsed().as_millis() as u64,
                "writing the rotation claims took too long; they are dropped, next round"
            );
            for ((_, o), _) in mine {
                self.store.drop_claim(o);
            }
            return Ok(Vec::new());
        }
        if mine.is_empty() {
            return Ok(Vec::new());
        }
        std::thread::sleep(DECISION_WINDOW);
        let later = now + DECISION_WINDOW.as_millis() as i64;
        let all = match self.store.claims() {
            Ok(a) => a,
            Err(e) => {
                for ((_, o), _) in mine {
                    self.store.drop_claim(o);
                }
                return Err(e);
            }
        };
        // Claims no one needs any more: on a version no longer current, or long given up.
        {
            let snap = self.store.read();
            for (l, o) in &all {
                let moved_on = snap
                    .keys
                    .get(&l.key)
                    .is_some_and(|e| e.record.current_version > l.from);
                if moved_on || later - l.at_ms > 2 * lifetime {
                    self.store.drop_claim(*o);
                }
            }
        }
        let margin = CLAIM_MARGIN.as_millis() as i64;
        let mut done = Vec::new();
        for ((label, object), claimed) in mine {
            // The latest claim wins, if every other live one it sees is clearly earlier.
            let wins = all
                .iter()
                .filter(|(l, _)| l.key == label.key && l.from == label.from && *l != label)
                .filter(|(l, _)| live(l, later))
                .all(|(l, _)| l.at_ms + margin < label.at_ms);
            if !wins {
                tracing::debug!(
                    key_id = %label.key,
                    from = label.from,
                    "another live claim is not clearly earlier: no rotation this round"
                );
                self.store.drop_claim(object);
                continue;
            }
            let deadline = claimed + CLAIM_LIFETIME - SETTLE;
            let id = label.key;
            let outcome = self.store.rotate_key(
                &id,
                label.from,
                deadline,
                |fresh| Ok(due(fresh, later).map(|kind| rotated(fresh, kind, later))),
                |l, cid| {
                    let kdf = self.key_record(id)?.kdf;
                    Ok(self.token.generate_cmk(l, cid, kdf)?)
                },
            );
            match outcome {
                Ok(Rotated::Done(v)) => {
                    tracing::info!(
                        target: "p11kms::custody",
                        key_id = %id,
                        version = v,
                        "rotated the key: a new backing key is current"
                    );
                    done.push((id, v));
                    for (l, o) in &all {
                        if l.key == id && l.from == label.from {
                            self.store.drop_claim(*o);
                        }
                    }
                }
                Ok(Rotated::NotNow(why)) => {
                    tracing::debug!(key_id = %id, why, "rotation not made");
                    self.store.drop_claim(object);
                }
                Err(e) => {
                    tracing::warn!(key_id = %id, error = e.message(), "rotation failed; retrying next round");
                    self.store.drop_claim(object);
                }
            }
        }
        Ok(done)
    }
}
