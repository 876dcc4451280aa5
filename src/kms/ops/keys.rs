//! Key management: CreateKey, DescribeKey, ListKeys and the state changes (EnableKey,
//! DisableKey, ScheduleKeyDeletion, CancelKeyDeletion).

use std::collections::BTreeMap;
use std::ops::Bound;

use super::super::domain::{AwsEnum, KeyManager, KeySpec, KeyState, KeyUsage, Origin};
use super::super::records::{cmk_id, BackingVersion, KeyRecord};
use super::super::store::{Change, KeyEntry};
use super::super::types::*;
use super::super::{Forms, KeyId, Kms};
use super::policies::{checked_key_policy, LockoutCheck};
use super::tags::{check_description, merged_tags};
use super::{check_grant_tokens, check_limit, now_ms, required, secs, unavailable_state, DAY_MS};
use crate::error::{KmsError, Result};
use crate::hsm::{BackingKind, HsmError};
use crate::kms::specs;

/// The rules of CreateKey's members, before anything is made. Values outside the API's enums
/// are `ValidationException`; real AWS values p11kms does not serve are
/// `UnsupportedOperationException`.
fn check_create_key(req: &CreateKeyRequest) -> Result<(KeySpec, KeyUsage, BackingKind)> {
    if let Some(d) = &req.description {
        check_description(d)?;
    }
    let usage = match &req.key_usage {
        Some(u) => KeyUsage::parse(u, "keyUsage")?,
        None => KeyUsage::EncryptDecrypt,
    };
    if req.key_spec.is_some() && req.customer_master_key_spec.is_some() {
        return Err(KmsError::validation(
            "You cannot specify KeySpec and CustomerMasterKeySpec in the same request",
        ));
    }
    let spec = match (&req.key_spec, &req.customer_master_key_spec) {
        (Some(s), _) => KeySpec::parse(s, "keySpec")?,
        (None, Some(s)) => KeySpec::parse(s, "customerMasterKeySpec")?,
        (None, None) => KeySpec::SymmetricDefault,
    };
    let kind = specs::backing_kind(spec, usage)?;
    if let Some(o) = &req.origin {
        match Origin::parse(o, "origin")? {
            Origin::AwsKms => {}
            Origin::External if super::import::importable(spec) => {}
            Origin::External => {
                return Err(KmsError::unsupported(format!(
                    "Origin EXTERNAL (imported key material) is supported for KeySpec \
                     SYMMETRIC_DEFAULT only by p11kms, not for {spec}"
                )))
            }
            o => {
                return Err(KmsError::unsupported(format!(
                    "Origin {o} is not supported by p11kms; keys are generated in the token"
                )))
            }
        }
    }
    if req.multi_region == Some(true) && req.origin.as_deref() == Some(Origin::External.as_str()) {
        // Replicas share the primary's backing key in the token, so they could not start
        // without key material as AWS's do.
        return Err(KmsError::unsupported(
            "Multi-Region keys with imported key material (Origin EXTERNAL) are not supported \
             by p11kms",
        ));
    }
    if req.custom_key_store_id.is_some() || req.xks_key_id.is_some() {
        return Err(KmsError::unsupported(
            "Custom key stores are not supported by p11kms",
        ));
    }
    if let Some(tags) = &req.tags {
        merged_tags(&[], tags)?;
    }
    Ok((spec, usage, kind))
}

/// A key the token would not generate: a curve or size it does not offer is the caller's
/// `UnsupportedOperationException` (naming what the token said); other failures are the
/// token's.
fn generation_refused(spec: KeySpec, e: HsmError) -> KmsError {
    if e.call().is_some_and(|c| c.is_unsupported_parameter()) {
        KmsError::unsupported(format!(
            "this token cannot generate {spec} keys ({})",
            e.call().map(|c| c.code()).unwrap_or_default()
        ))
    } else {
        e.into()
    }
}

/// A key without key material (imported keys only) cannot be enabled or disabled.
fn pending_import(arn: &str) -> KmsError {
    KmsError::invalid_state(format!(
        "{arn} is pending import: import its key material first."
    ))
}

/// What [`Kms::apply_token_state`] left to do.
#[derive(Default)]
pub(super) struct UsageLeft {
    /// Versions to look up again: a stale handle, or none bound.
    pub(super) rebind: Vec<u32>,
    /// The first other failure (the other versions were still set).
    pub(super) failed: Option<KmsError>,
}

impl Kms {
    /// UnsupportedOperationException unless the token can make and use a key of `kind`,
    /// naming what it lacks.
    fn check_offered(&self, spec: KeySpec, usage: KeyUsage, kind: BackingKind) -> Result<()> {
        let missing = self.token.capabilities().missing_for(kind);
        if !missing.is_empty() {
            return Err(KmsError::unsupported(format!(
                "KeySpec {spec} with KeyUsage {usage} is not available on this token: it lacks {}",
                missing.join(", ")
            )));
        }
        Ok(())
    }

    /// Every KeySpec and KeyUsage pair AWS allows, with what this token lacks for it (empty:
    /// offered). For `p11kms token info`.
    pub fn offered_key_specs(&self) -> Vec<(KeySpec, KeyUsage, Option<String>)> {
        let mut out = Vec::new();
        for spec in KeySpec::ALL {
            for usage in specs::usages(*spec) {
                let why = match specs::backing_kind(*spec, *usage) {
                    Ok(kind) => self
                        .check_offered(*spec, *usage, kind)
                        .err()
                        .map(|e| e.message().to_string()),
                    Err(e) => Some(e.message().to_string()),
                };
                out.push((*spec, *usage, why));
            }
        }
        out
    }

    pub(super) fn metadata(&self, r: &KeyRecord) -> KeyMetadata {
        let algorithms = specs::algorithms(r.spec, r.usage);
        KeyMetadata {
            aws_account_id: self.account_of(r),
            key_id: r.id.to_string(),
            arn: self.key_arn(r),
            creation_date: secs(r.created_ms),
            enabled: r.state == KeyState::Enabled,
            description: r.description.clone(),
            key_usage: r.usage,
            key_state: r.state,
            deletion_date: r.deletion_ms.map(secs),
            pending_deletion_window_in_days: r.pending_window_days,
            origin: r.origin(),
            expiration_model: r
                .import
                .as_ref()
                .filter(|_| r.has_imported_material())
                .and_then(|i| i.expiration_model),
            valid_to: r
                .import
                .as_ref()
                .filter(|_| r.has_imported_material())
                .and_then(|i| i.valid_to_ms)
                .map(secs),
            key_manager: KeyManager::Customer,
            customer_master_key_spec: specs::customer_master_key_spec(r.spec),
            key_spec: r.spec,
            encryption_algorithms: specs::listed(algorithms.encryption),
            signing_algorithms: specs::listed(algorithms.signing),
            mac_algorithms: specs::listed(algorithms.mac),
            key_agreement_algorithms: specs::listed(algorithms.key_agreement),
            multi_region: r.id.is_multi_region(),
            multi_region_configuration: self.multi_region_configuration(r),
            current_key_material_id: (r.spec == KeySpec::SymmetricDefault
                && r.versions.iter().any(|v| v.version == r.current_version))
            .then(|| super::super::records::key_material_id(&r.id, r.current_version)),
        }
    }

    /// CreateKey: new key material generated in the token, never extractable: an AES-256
    /// CMK (derive-only) for symmetric keys, a key pair's private half limited to its usage
    /// for asymmetric keys, a sign/verify-only generic secret for HMAC keys.
    pub fn create_key(&self, req: CreateKeyRequest) -> Result<KeyMetadataResponse> {
        self.create_key_checked(req, None)
    }

    /// CreateKey with the lockout safety check of its `Policy` for the caller (see
    /// [`LockoutCheck`]; skipped when the request bypasses it).
    pub fn create_key_checked(
        &self,
        req: CreateKeyRequest,
        lockout: Option<LockoutCheck<'_>>,
    ) -> Result<KeyMetadataResponse> {
        let (spec, usage, kind) = check_create_key(&req)?;
        if let Some(text) = &req.policy {
            checked_key_policy(
                text,
                req.bypass_policy_lockout_safety_check == Some(true),
                lockout,
            )?;
        }
        self.check_offered(spec, usage, kind)?;
        let kdf = self
            .token
            .capabilities()
            .kdf
            .ok_or_else(|| KmsError::internal("the token offers no key derivation"))?;
        let multi_region = req.multi_region == Some(true);
        let id = match req.key_id {
            None if multi_region => KeyId::new_multi_region(false),
            None => KeyId::new_random(),
            Some(id) if self.store.key(&id).is_some() => {
                return Err(KmsError::already_exists(format!(
                    "A key with the id {id} already exists"
                )))
            }
            Some(id) => id,
        };
        let now = now_ms();
        let mut record = KeyRecord {
            id,
            created_ms: now,
            description: req.description.unwrap_or_default(),
            state: KeyState::Enabled,
            deletion_ms: None,
            pending_window_days: None,
            kdf,
            current_version: 1,
            versions: vec![BackingVersion {
                version: 1,
                created: now / 1000,
                rotation: None,
            }],
            tags: merged_tags(&[], req.tags.as_deref().unwrap_or_default())?,
            policy: req.policy,
            spec,
            usage,
            public_key: None,
            account: req
                .scope
                .as_ref()
                .map(|s| s.account.clone())
                .filter(|a| *a != self.scope.account),
            // A multi-Region key's record names its region always: the primary's moves.
            region: req
                .scope
                .as_ref()
                .map(|s| s.region.clone())
                .filter(|r| multi_region || *r != self.scope.region)
                .or_else(|| multi_region.then(|| self.scope.region.clone())),
            import: None,
            auto_rotation: None,
            on_demand_rotation_ms: None,
        };
        if req.origin.as_deref() == Some(Origin::External.as_str()) {
            // No key material until ImportKeyMaterial brings it; an id that says so for life.
            record.id = KeyId::new_for_imported();
            record.state = KeyState::PendingImport;
            record.versions = Vec::new();
            record.import = Some(Default::default());
            self.store.put_key(record.clone(), BTreeMap::new())?;
            return Ok(KeyMetadataResponse {
                key_metadata: self.metadata(&record),
            });
        }
        // The key material first: a crash before the record leaves an invisible orphan,
        // never a record without a key.
        let (label, cmk_id) = (record.cmk_label(1), cmk_id(&id, 1));
        let cmk = match kind {
            BackingKind::Derive => self.token.generate_cmk(&label, &cmk_id, kdf)?,
            BackingKind::Imported => {
                return Err(KmsError::internal("imported keys are not generated"))
            }
            BackingKind::Hmac { bytes } => {
                let hash = specs::hmac(spec)
                    .map(|(m, _)| specs::mac_hash(m))
                    .ok_or_else(|| KmsError::internal("an HMAC spec without its MAC"))?;
                self.token
                    .generate_hmac_key(&label, &cmk_id, bytes, hash)
                    .map_err(|e| generation_refused(spec, e))?
            }
            BackingKind::Private { pair, usage } => {
                let (h, spki) = self
                    .token
                    .generate_key_pair(&label, &cmk_id, pair, usage)
                    .map_err(|e| generation_refused(spec, e))?;
                record.public_key = Some(spki);
                h
            }
        };
        if let Err(e) = self
            .store
            .put_key(record.clone(), BTreeMap::from([(1, cmk)]))
        {
            let _ = self.token.destroy_cmk(cmk);
            return Err(e);
        }
        Ok(KeyMetadataResponse {
            key_metadata: self.metadata(&record),
        })
    }

    /// DescribeKey.
    pub fn describe_key(&self, req: KeyIdRequest) -> Result<KeyMetadataResponse> {
        check_grant_tokens(&req.grant_tokens)?;
        let (_, entry) = self.resolve(&required(req.key_id, "keyId")?, Forms::Any)?;
        Ok(KeyMetadataResponse {
            key_metadata: self.metadata(&entry.record),
        })
    }

    /// ListKeys.
    pub fn list_keys(&self, req: ListRequest) -> Result<ListKeysResponse> {
        let limit = check_limit(req.limit, 100)?;
        let start = match &req.marker {
            None => Bound::Unbounded,
            Some(m) => Bound::Excluded(
                m.parse::<KeyId>()
                    .map_err(|_| KmsError::invalid_marker(format!("Invalid marker {m}")))?,
            ),
        };
        let scope = req.scope.unwrap_or_else(|| self.scope.clone());
        let snap = self.store.read();
        // The keys of the scope's region: key records of it, and replicas there, in id order.
        let mut found: Vec<(KeyId, String)> = snap
            .keys
            .range((start, Bound::Unbounded))
            .filter(|(_, e)| self.in_scope(&e.record, &scope))
            .take(limit + 1)
            .map(|(id, e)| (*id, self.key_arn(&e.record)))
            .collect();
        found.extend(
            snap.replicas
                .iter()
                .filter(|((id, region), r)| {
                    *region == scope.region
                        && self.in_account(r, &scope.account)
                        && match start {
                            Bound::Excluded(m) => *id > m,
                            _ => true,
                        }
                })
                .filter_map(|((id, region), _)| snap.replica_entry(id, region))
                .map(|e| (e.record.id, self.key_arn(&e.record))),
        );
        found.sort();
        let mut iter = found.into_iter();
        let keys: Vec<KeyListEntry> = iter
            .by_ref()
            .take(limit)
            .map(|(id, arn)| KeyListEntry {
                key_id: id.to_string(),
                key_arn: arn,
            })
            .collect();
        let truncated = iter.next().is_some();
        Ok(ListKeysResponse {
            next_marker: truncated
                .then(|| keys.last().map(|k| k.key_id.clone()))
                .flatten(),
            keys,
            truncated,
        })
    }

    /// Changes a key's state as `rule` decides from its record as it is now (`None`: no
    /// change), with this process's other writes held off, then makes the token agree.
    fn set_state(
        &self,
        of: &KeyEntry,
        rule: impl FnOnce(&KeyRecord) -> Result<Option<(KeyState, Option<(i64, u32)>)>>,
    ) -> Result<KeyRecord> {
        let id = &of.record.id;
        let mut left = UsageLeft::default();
        let entry = self.update_entry(
            of,
            |entry| {
                if entry.record.state == KeyState::Unknown {
                    return Err(unavailable_state(&self.key_arn(&entry.record)));
                }
                Ok(match rule(&entry.record)? {
                    None => Change::Keep,
                    Some((state, deletion)) => Change::Write(KeyRecord {
                        state,
                        // A primary waiting for its replicas' deletion has no date yet.
                        deletion_ms: deletion
                            .map(|d| d.0)
                            .filter(|_| state != KeyState::PendingReplicaDeletion),
                        pending_window_days: deletion.map(|d| d.1),
                        ..entry.record.clone()
                    }),
                })
            },
            |entry| {
                left = self.apply_token_state(entry);
                left.failed.take().map_or(Ok(()), Err)
            },
        )?;
        self.finish_token_state(id, &left.rebind);
        if !self.usable_in_token(id) {
            self.epochs.forget(id);
        }
        Ok(entry.record)
    }

    /// A CMK is derivable in the token exactly when its key is Enabled (a multi-Region
    /// key's: in some region): sets the usage of every bound backing version of `entry` so.
    /// Every version is tried whatever happens to another; a stale handle (another process
    /// re-created the object under its label) and a version with no handle bound are left
    /// for [`Kms::finish_token_state`], which looks them up again.
    pub(super) fn apply_token_state(&self, entry: &KeyEntry) -> UsageLeft {
        let mut left = UsageLeft::default();
        let usable = self.usable_in_token(&entry.record.id);
        let kind = match entry.record.backing_kind() {
            Ok(k) => k,
            Err(e) => {
                left.failed = Some(e);
                return left;
            }
        };
        for v in &entry.record.versions {
            let Some(h) = entry.cmks.get(&v.version) else {
                left.rebind.push(v.version);
                continue;
            };
            match self.token.set_cmk_usable(*h, kind, usable) {
                Ok(()) => {}
                Err(e) if e.is_stale_handle() => left.rebind.push(v.version),
                Err(e) => {
                    left.failed.get_or_insert(KmsError::from(e));
                }
            }
        }
        left
    }

    /// The rest of [`Kms::apply_token_state`]: binds the backing keys of `versions` of key
    /// `id` again (found by label and proven genuine, as on any stale handle) and sets their
    /// usage as the records want it now, with this process's state changes held off (a
    /// concurrent one is never undone). Failures are logged: the record is in force already,
    /// every process checks it, and a refusal by the token is healed on use
    /// ([`Kms::with_backing`]).
    pub(super) fn finish_token_state(&self, id: &KeyId, versions: &[u32]) {
        if versions.is_empty() {
            return;
        }
        let done = versions
            .iter()
            .try_for_each(|v| self.store.relocate_cmk(id, *v).map(|_| ()))
            .and_then(|()| {
                self.store.with_key(id, |entry| {
                    let Some(entry) = entry else {
                        return Ok(());
                    };
                    let usable = self.usable_in_token(id);
                    let kind = entry.record.backing_kind()?;
                    for v in versions {
                        if let Some(h) = entry.cmks.get(v) {
                            self.token.set_cmk_usable(*h, kind, usable)?;
                        }
                    }
                    Ok(())
                })
            });
        if let Err(e) = done {
            tracing::warn!(
                key_id = %id,
                versions = ?versions,
                error = e.message(),
                "the key's new record is written, but the token's attributes of some backing \
                 versions could not be updated; every process reconciles them when it opens \
                 the token"
            );
        }
    }

    /// EnableKey.
    pub fn enable_key(&self, req: KeyIdRequest) -> Result<()> {
        let (_, of) = self.resolve(&required(req.key_id, "keyId")?, Forms::KeyOnly)?;
        let arn = self.key_arn(&of.record);
        self.set_state(&of, |r| match r.state {
            KeyState::Disabled => Ok(Some((KeyState::Enabled, None))),
            KeyState::PendingDeletion | KeyState::PendingReplicaDeletion => Err(
                KmsError::invalid_state(format!("{arn} is pending deletion.")),
            ),
            KeyState::PendingImport => Err(pending_import(&arn)),
            KeyState::Enabled | KeyState::Unknown => Ok(None),
        })?;
        Ok(())
    }

    /// DisableKey.
    pub fn disable_key(&self, req: KeyIdRequest) -> Result<()> {
        let (_, of) = self.resolve(&required(req.key_id, "keyId")?, Forms::KeyOnly)?;
        let arn = self.key_arn(&of.record);
        self.set_state(&of, |r| match r.state {
            KeyState::Enabled => Ok(Some((KeyState::Disabled, None))),
            KeyState::PendingDeletion | KeyState::PendingReplicaDeletion => Err(
                KmsError::invalid_state(format!("{arn} is pending deletion.")),
            ),
            KeyState::PendingImport => Err(pending_import(&arn)),
            KeyState::Disabled | KeyState::Unknown => Ok(None),
        })?;
        Ok(())
    }

    /// ScheduleKeyDeletion (7 to 30 days; 30 by default).
    pub fn schedule_key_deletion(
        &self,
        req: ScheduleKeyDeletionRequest,
    ) -> Result<ScheduleKeyDeletionResponse> {
        let key_id = required(req.key_id, "keyId")?;
        let days = match req.pending_window_in_days {
            None => 30,
            Some(d) => {
                // The model allows 1 to 365; KMS itself 7 to 30.
                crate::kms::validation::range("pendingWindowInDays", d, 7, 30)?;
                d as u32
            }
        };
        let (id, of) = self.resolve(&key_id, Forms::KeyOnly)?;
        let arn = self.key_arn(&of.record);
        let when = now_ms() + i64::from(days) * DAY_MS;
        // A multi-Region primary key with replicas waits for their deletion first (AWS).
        let primary_with_replicas = id.is_multi_region()
            && !self.is_replica(&of.record)
            && !self.store.read().replica_regions(&id).is_empty();
        let state = if primary_with_replicas {
            KeyState::PendingReplicaDeletion
        } else {
            KeyState::PendingDeletion
        };
        let r = self.set_state(&of, |r| match r.state {
            KeyState::PendingDeletion | KeyState::PendingReplicaDeletion => Err(
                KmsError::invalid_state(format!("{arn} is pending deletion.")),
            ),
            _ => Ok(Some((state, Some((when, days))))),
        })?;
        Ok(ScheduleKeyDeletionResponse {
            key_id: arn,
            deletion_date: secs(when),
            key_state: r.state,
            pending_window_in_days: days,
        })
    }

    /// CancelKeyDeletion: the key comes back Disabled, as in AWS (PendingImport if its
    /// imported material was deleted or expired meanwhile).
    pub fn cancel_key_deletion(&self, req: KeyIdRequest) -> Result<KeyIdResponse> {
        let (_, of) = self.resolve(&required(req.key_id, "keyId")?, Forms::KeyOnly)?;
        let arn = self.key_arn(&of.record);
        self.set_state(&of, |r| match r.state {
            KeyState::PendingDeletion if r.import.is_some() && !r.has_imported_material() => {
                Ok(Some((KeyState::PendingImport, None)))
            }
            KeyState::PendingDeletion | KeyState::PendingReplicaDeletion => {
                Ok(Some((KeyState::Disabled, None)))
            }
            _ => Err(KmsError::invalid_state(format!(
                "{arn} is not pending deletion."
            ))),
        })?;
        Ok(KeyIdResponse { key_id: arn })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_key_rules() {
        let ok = CreateKeyRequest::default();
        assert!(check_create_key(&ok).is_ok());
        let external = CreateKeyRequest {
            origin: Some("EXTERNAL".into()),
            ..Default::default()
        };
        assert!(check_create_key(&external).is_ok());
        let spec = |s: &str, u: Option<&str>| CreateKeyRequest {
            key_spec: Some(s.into()),
            key_usage: u.map(Into::into),
            ..Default::default()
        };
        for (s, u) in [
            ("RSA_2048", None),
            ("RSA_4096", Some("SIGN_VERIFY")),
            ("ECC_NIST_P256", Some("KEY_AGREEMENT")),
            ("ECC_NIST_EDWARDS25519", Some("SIGN_VERIFY")),
            ("HMAC_512", Some("GENERATE_VERIFY_MAC")),
        ] {
            assert!(check_create_key(&spec(s, u)).is_ok(), "{s} {u:?}");
        }
        let cases = [
            (
                CreateKeyRequest {
                    key_usage: Some("SIGN_VERIFY".into()),
                    ..Default::default()
                },
                "ValidationException",
            ),
            (spec("HMAC_256", None), "ValidationException"),
            (spec("ECC_NIST_P256", None), "ValidationException"),
            (
                spec("RSA_2048", Some("KEY_AGREEMENT")),
                "ValidationException",
            ),
            (
                spec("ECC_SECG_P256K1", Some("KEY_AGREEMENT")),
                "ValidationException",
            ),
            (
                spec("SM2", Some("SIGN_VERIFY")),
                "UnsupportedOperationException",
            ),
            (
                spec("ML_DSA_65", Some("SIGN_VERIFY")),
                "UnsupportedOperationException",
            ),
            (
                CreateKeyRequest {
                    key_usage: Some("NOPE".into()),
                    ..Default::default()
                },
                "ValidationException",
            ),
            (
                CreateKeyRequest {
                    description: Some("d".repeat(8193)),
                    ..Default::default()
                },
                "ValidationException",
            ),
            (
                CreateKeyRequest {
                    origin: Some("EXTERNAL".into()),
                    key_spec: Some("HMAC_256".into()),
                    key_usage: Some("GENERATE_VERIFY_MAC".into()),
                    ..Default::default()
                },
                "UnsupportedOperationException",
            ),
            (
                CreateKeyRequest {
                    origin: Some("AWS_CLOUDHSM".into()),
                    ..Default::default()
                },
                "UnsupportedOperationException",
            ),
            (
                CreateKeyRequest {
                    origin: Some("ELSEWHERE".into()),
                    ..Default::default()
                },
                "ValidationException",
            ),
            (
                CreateKeyRequest {
                    tags: Some(vec![Tag {
                        tag_key: "semi;colon".into(),
                        tag_value: String::new(),
                    }]),
                    ..Default::default()
                },
                "TagException",
            ),
            (
                CreateKeyRequest {
                    tags: Some(vec![Tag::default()]),
                    ..Default::default()
                },
                "ValidationException",
            ),
        ];
        for (req, name) in cases {
            assert_eq!(check_create_key(&req).unwrap_err().aws_name(), name);
        }
    }
}
