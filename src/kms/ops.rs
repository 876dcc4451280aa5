//! The operations, as in the AWS KMS API Reference: validation first (a bad request changes
//! nothing), then the state rules, then the token.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

use super::blob::{self, Header, NONCE_LEN};
use super::records::{cmk_id, AliasRecord, BackingVersion, KeyRecord, KeyState};
use super::store::{Change, KeyEntry};
use super::types::*;
use super::{AliasName, EncryptionContext, Forms, KeyId, KeyRef, Kms, SealingPath};
use crate::error::{KmsError, Result};
use crate::hsm::{CmkHandle, CmkLookup, SessionKey, GCM_IV_LEN};

const SYMMETRIC_DEFAULT: &str = "SYMMETRIC_DEFAULT";
const ENCRYPT_DECRYPT: &str = "ENCRYPT_DECRYPT";
const MAX_PLAINTEXT: usize = 4096;
const MAX_DATA_KEY: i64 = 1024;
const MAX_RANDOM: i64 = 1024;
const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// A missing required member, worded as AWS words it.
fn required<T>(v: Option<T>, member: &str) -> Result<T> {
    v.ok_or_else(|| {
        KmsError::validation(format!(
            "1 validation error detected: Value null at '{member}' failed to satisfy constraint: Member must not be null"
        ))
    })
}

fn check_grant_tokens(tokens: &Option<Vec<String>>) -> Result<()> {
    if let Some(t) = tokens {
        if t.len() > 10 {
            return Err(KmsError::validation(
                "GrantTokens must contain at most 10 grant tokens",
            ));
        }
        if t.iter().any(|g| g.is_empty() || g.len() > 8192) {
            return Err(KmsError::validation(
                "each grant token must be between 1 and 8192 characters long",
            ));
        }
    }
    Ok(())
}

fn context(c: Option<ContextMap>) -> Result<EncryptionContext> {
    c.map_or_else(|| Ok(EncryptionContext::empty()), EncryptionContext::new)
}

/// Symmetric keys take only SYMMETRIC_DEFAULT; the asymmetric names are a usage error.
fn check_algorithm(a: &Option<String>, member: &str) -> Result<()> {
    match a.as_deref() {
        None | Some(SYMMETRIC_DEFAULT) => Ok(()),
        Some("RSAES_OAEP_SHA_1" | "RSAES_OAEP_SHA_256" | "SM2PKE") => Err(
            KmsError::InvalidKeyUsage(format!(
                "{member} {} is not valid for a symmetric key",
                a.as_deref().unwrap_or_default()
            )),
        ),
        Some(other) => Err(KmsError::validation(format!(
            "1 validation error detected: Value '{other}' at '{member}' failed to satisfy constraint: Member must satisfy enum value set: [SYMMETRIC_DEFAULT, RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256, SM2PKE]"
        ))),
    }
}

fn check_limit(limit: Option<i64>, default: usize) -> Result<usize> {
    match limit {
        None => Ok(default),
        Some(l @ 1..=1000) => Ok(l as usize),
        Some(l) => Err(KmsError::validation(format!(
            "1 validation error detected: Value '{l}' at 'limit' failed to satisfy constraint: Member must have value between 1 and 1000"
        ))),
    }
}

fn dry_run(flag: Option<bool>) -> Result<()> {
    if flag == Some(true) {
        Err(KmsError::DryRunOperation(
            "The request would have succeeded, but the DryRun flag is set.".into(),
        ))
    } else {
        Ok(())
    }
}

/// The state rule for using a key in a cryptographic operation.
fn check_usable(entry: &KeyEntry, arn: &str) -> Result<()> {
    match entry.record.state {
        KeyState::Enabled => Ok(()),
        KeyState::Disabled => Err(KmsError::Disabled(format!("{arn} is disabled."))),
        KeyState::PendingDeletion => Err(KmsError::InvalidState(format!(
            "{arn} is pending deletion."
        ))),
        KeyState::Unknown => Err(unavailable_state(arn)),
    }
}

/// A key whose record this version cannot fully read (see [`KeyState::Unknown`]).
fn unavailable_state(arn: &str) -> KmsError {
    KmsError::InvalidState(format!(
        "{arn} is unavailable: its record was written by a newer version of p11kms or is \
         damaged; this version neither uses nor changes it"
    ))
}

/// Data key length from exactly one of KeySpec / NumberOfBytes.
fn data_key_len(spec: &Option<String>, bytes: Option<i64>) -> Result<usize> {
    match (spec.as_deref(), bytes) {
        (Some(_), Some(_)) => Err(KmsError::validation(
            "Specify either KeySpec or NumberOfBytes, not both",
        )),
        (None, None) => Err(KmsError::validation(
            "Specify either KeySpec or NumberOfBytes",
        )),
        (Some("AES_256"), None) => Ok(32),
        (Some("AES_128"), None) => Ok(16),
        (Some(other), None) => Err(KmsError::validation(format!(
            "1 validation error detected: Value '{other}' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, AES_128]"
        ))),
        (None, Some(n @ 1..=MAX_DATA_KEY)) => Ok(n as usize),
        (None, Some(n)) => Err(KmsError::validation(format!(
            "1 validation error detected: Value '{n}' at 'numberOfBytes' failed to satisfy constraint: Member must have value between 1 and 1024"
        ))),
    }
}

fn check_create_key(req: &CreateKeyRequest) -> Result<()> {
    if req.description.as_ref().is_some_and(|d| d.len() > 8192) {
        return Err(KmsError::validation(
            "Description must be at most 8192 characters long",
        ));
    }
    match req.key_usage.as_deref() {
        None | Some(ENCRYPT_DECRYPT) => {}
        Some(u @ ("SIGN_VERIFY" | "GENERATE_VERIFY_MAC" | "KEY_AGREEMENT")) => {
            return Err(KmsError::UnsupportedOperation(format!(
                "KeyUsage {u} is not supported by p11kms yet; only ENCRYPT_DECRYPT"
            )))
        }
        Some(u) => {
            return Err(KmsError::validation(format!(
                "1 validation error detected: Value '{u}' at 'keyUsage' failed to satisfy constraint: Member must satisfy enum value set: [SIGN_VERIFY, ENCRYPT_DECRYPT, GENERATE_VERIFY_MAC, KEY_AGREEMENT]"
            )))
        }
    }
    if req.key_spec.is_some() && req.customer_master_key_spec.is_some() {
        return Err(KmsError::validation(
            "You cannot specify KeySpec and CustomerMasterKeySpec in the same request",
        ));
    }
    match req
        .key_spec
        .as_deref()
        .or(req.customer_master_key_spec.as_deref())
    {
        None | Some(SYMMETRIC_DEFAULT) => {}
        Some(
            s @ ("RSA_2048" | "RSA_3072" | "RSA_4096" | "ECC_NIST_P256" | "ECC_NIST_P384"
            | "ECC_NIST_P521" | "ECC_SECG_P256K1" | "HMAC_224" | "HMAC_256" | "HMAC_384"
            | "HMAC_512" | "SM2" | "ML_DSA_44" | "ML_DSA_65" | "ML_DSA_87"
            | "ECC_NIST_EDWARDS25519"),
        ) => {
            return Err(KmsError::UnsupportedOperation(format!(
                "KeySpec {s} is not supported by p11kms yet; only SYMMETRIC_DEFAULT"
            )))
        }
        Some(s) => {
            return Err(KmsError::validation(format!(
                "1 validation error detected: Value '{s}' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set"
            )))
        }
    }
    match req.origin.as_deref() {
        None | Some("AWS_KMS") => {}
        Some(o @ ("EXTERNAL" | "AWS_CLOUDHSM" | "EXTERNAL_KEY_STORE")) => {
            return Err(KmsError::UnsupportedOperation(format!(
                "Origin {o} is not supported by p11kms; keys are generated in the token"
            )))
        }
        Some(o) => {
            return Err(KmsError::validation(format!(
                "1 validation error detected: Value '{o}' at 'origin' failed to satisfy constraint: Member must satisfy enum value set: [AWS_CLOUDHSM, EXTERNAL, AWS_KMS, EXTERNAL_KEY_STORE]"
            )))
        }
    }
    if req.multi_region == Some(true) {
        return Err(KmsError::UnsupportedOperation(
            "Multi-Region keys are not supported by p11kms".into(),
        ));
    }
    if req.custom_key_store_id.is_some() || req.xks_key_id.is_some() {
        return Err(KmsError::UnsupportedOperation(
            "Custom key stores are not supported by p11kms".into(),
        ));
    }
    if req
        .policy
        .as_ref()
        .is_some_and(|p| p.is_empty() || p.len() > 32768)
    {
        return Err(KmsError::validation(
            "Policy must be between 1 and 32768 characters long",
        ));
    }
    if let Some(tags) = &req.tags {
        if tags.len() > 50 {
            return Err(KmsError::Tag("A key can have at most 50 tags".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for t in tags {
            if t.tag_key.is_empty() || t.tag_key.len() > 128 || t.tag_value.len() > 256 {
                return Err(KmsError::Tag(
                    "Tag keys must be 1 to 128 and tag values 0 to 256 characters long".into(),
                ));
            }
            if !seen.insert(&t.tag_key) {
                return Err(KmsError::Tag(format!("Duplicate tag key {}", t.tag_key)));
            }
        }
    }
    Ok(())
}

impl Kms {
    // ----- key references -------------------------------------------------------------------

    /// Resolves a `KeyId` parameter to the key it names (following an alias).
    fn resolve(&self, key_id: &str, forms: Forms) -> Result<(KeyId, KeyEntry)> {
        let r = KeyRef::parse(key_id, &self.scope, forms)?;
        let snap = self.store.read();
        let id = match r {
            KeyRef::Id(id) => id,
            KeyRef::Alias(a) => match snap.aliases.get(&a).and_then(|r| r.target) {
                Some(id) => id,
                None => {
                    return Err(KmsError::NotFound(format!(
                        "Alias {} is not found.",
                        self.scope.alias_arn(&a)
                    )))
                }
            },
        };
        match snap.keys.get(&id) {
            Some(e) => Ok((id, e.clone())),
            None => Err(KmsError::NotFound(format!(
                "Key '{}' does not exist",
                self.scope.key_arn(&id)
            ))),
        }
    }

    /// The key a `KeyId` parameter (any of the four forms) names now, without doing anything
    /// with it: callers authorize on the result before the operation.
    pub fn resolve_key_id(&self, key_id: &str) -> Result<KeyId> {
        self.resolve(key_id, Forms::Any).map(|(id, _)| id)
    }

    /// The key a ciphertext blob names, from its header alone (nothing is decrypted).
    pub fn blob_key_id(blob: &[u8]) -> Result<KeyId> {
        Ok(blob::parse(blob)?.header.key_id)
    }

    fn metadata(&self, r: &KeyRecord) -> KeyMetadata {
        KeyMetadata {
            aws_account_id: self.scope.account.clone(),
            key_id: r.id.to_string(),
            arn: self.scope.key_arn(&r.id),
            creation_date: secs(r.created_ms),
            enabled: r.state == KeyState::Enabled,
            description: r.description.clone(),
            key_usage: ENCRYPT_DECRYPT.into(),
            key_state: r.state.as_str().into(),
            deletion_date: r.deletion_ms.map(secs),
            pending_deletion_window_in_days: r.pending_window_days,
            origin: "AWS_KMS".into(),
            key_manager: "CUSTOMER".into(),
            customer_master_key_spec: SYMMETRIC_DEFAULT.into(),
            key_spec: SYMMETRIC_DEFAULT.into(),
            encryption_algorithms: vec![SYMMETRIC_DEFAULT.into()],
            multi_region: false,
        }
    }

    // ----- key management ---------------------------------------------------------------------

    /// CreateKey: a new AES-256 CMK generated in the token, derive-only, never extractable.
    pub fn create_key(&self, req: CreateKeyRequest) -> Result<KeyMetadataResponse> {
        check_create_key(&req)?;
        let kdf = self
            .token
            .capabilities()
            .kdf
            .ok_or_else(|| KmsError::Internal("the token offers no key derivation".into()))?;
        let id = KeyId::new_random();
        let now = now_ms();
        let record = KeyRecord {
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
            }],
            tags: req
                .tags
                .unwrap_or_default()
                .into_iter()
                .map(|t| (t.tag_key, t.tag_value))
                .collect(),
            policy: req.policy,
        };
        // The key material first: a crash before the record leaves an invisible orphan,
        // never a record without a key.
        let cmk = self
            .token
            .generate_cmk(&record.cmk_label(1), &cmk_id(&id, 1), kdf)?;
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

    pub fn describe_key(&self, req: KeyIdRequest) -> Result<KeyMetadataResponse> {
        check_grant_tokens(&req.grant_tokens)?;
        let (_, entry) = self.resolve(&required(req.key_id, "keyId")?, Forms::Any)?;
        Ok(KeyMetadataResponse {
            key_metadata: self.metadata(&entry.record),
        })
    }

    pub fn list_keys(&self, req: ListRequest) -> Result<ListKeysResponse> {
        let limit = check_limit(req.limit, 100)?;
        let start = match &req.marker {
            None => Bound::Unbounded,
            Some(m) => Bound::Excluded(
                m.parse::<KeyId>()
                    .map_err(|_| KmsError::InvalidMarker(format!("Invalid marker {m}")))?,
            ),
        };
        let snap = self.store.read();
        let mut iter = snap.keys.range((start, Bound::Unbounded));
        let keys: Vec<KeyListEntry> = iter
            .by_ref()
            .take(limit)
            .map(|(id, _)| KeyListEntry {
                key_id: id.to_string(),
                key_arn: self.scope.key_arn(id),
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
        id: &KeyId,
        rule: impl FnOnce(&KeyRecord) -> Result<Option<(KeyState, Option<(i64, u32)>)>>,
    ) -> Result<KeyRecord> {
        let entry = self.store.update_key(
            id,
            |entry| {
                if entry.record.state == KeyState::Unknown {
                    return Err(unavailable_state(&self.scope.key_arn(id)));
                }
                Ok(match rule(&entry.record)? {
                    None => Change::Keep,
                    Some((state, deletion)) => Change::Write(KeyRecord {
                        state,
                        deletion_ms: deletion.map(|d| d.0),
                        pending_window_days: deletion.map(|d| d.1),
                        ..entry.record.clone()
                    }),
                })
            },
            |entry| self.apply_token_state(&entry.record, &entry.cmks),
        )?;
        if entry.record.state != KeyState::Enabled {
            self.epochs.forget(id);
        }
        Ok(entry.record)
    }

    /// A CMK is derivable in the token exactly when its key is Enabled.
    fn apply_token_state(&self, record: &KeyRecord, cmks: &BTreeMap<u32, CmkHandle>) -> Result<()> {
        let usable = record.state == KeyState::Enabled;
        for h in cmks.values() {
            self.token.set_cmk_usable(*h, usable)?;
        }
        Ok(())
    }

    /// Brings token attributes in line with the records (after a crash between the two writes).
    /// Uses the `CKA_DERIVE` values the store's first load read along with the labels, so
    /// start-up costs no extra token call per key.
    pub(crate) fn reconcile_token_state(&self) -> Result<()> {
        let known = self.store.take_initial_derive();
        let entries: Vec<KeyEntry> = self.store.read().keys.values().cloned().collect();
        for e in entries {
            // A record this version cannot read (a newer writer's): its token state is not
            // ours to change.
            if e.record.state == KeyState::Unknown {
                continue;
            }
            let usable = e.record.state == KeyState::Enabled;
            for (v, h) in &e.cmks {
                let current = match known.get(&(e.record.id, *v)) {
                    Some(d) => *d,
                    None => self.token.cmk_usable(*h)?,
                };
                if current != usable {
                    self.token.set_cmk_usable(*h, usable)?;
                }
            }
        }
        Ok(())
    }

    pub fn enable_key(&self, req: KeyIdRequest) -> Result<()> {
        let (id, _) = self.resolve(&required(req.key_id, "keyId")?, Forms::KeyOnly)?;
        self.set_state(&id, |r| match r.state {
            KeyState::Disabled => Ok(Some((KeyState::Enabled, None))),
            KeyState::PendingDeletion => Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                self.scope.key_arn(&id)
            ))),
            KeyState::Enabled | KeyState::Unknown => Ok(None),
        })?;
        Ok(())
    }

    pub fn disable_key(&self, req: KeyIdRequest) -> Result<()> {
        let (id, _) = self.resolve(&required(req.key_id, "keyId")?, Forms::KeyOnly)?;
        self.set_state(&id, |r| match r.state {
            KeyState::Enabled => Ok(Some((KeyState::Disabled, None))),
            KeyState::PendingDeletion => Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                self.scope.key_arn(&id)
            ))),
            KeyState::Disabled | KeyState::Unknown => Ok(None),
        })?;
        Ok(())
    }

    pub fn schedule_key_deletion(
        &self,
        req: ScheduleKeyDeletionRequest,
    ) -> Result<ScheduleKeyDeletionResponse> {
        let key_id = required(req.key_id, "keyId")?;
        let days = match req.pending_window_in_days {
            None => 30,
            Some(d @ 7..=30) => d as u32,
            Some(d) => {
                return Err(KmsError::validation(format!(
                    "1 validation error detected: Value '{d}' at 'pendingWindowInDays' failed to satisfy constraint: Member must have value between 7 and 30"
                )))
            }
        };
        let (id, _) = self.resolve(&key_id, Forms::KeyOnly)?;
        let when = now_ms() + i64::from(days) * DAY_MS;
        let r = self.set_state(&id, |r| match r.state {
            KeyState::PendingDeletion => Err(KmsError::InvalidState(format!(
                "{} is pending deletion.",
                self.scope.key_arn(&id)
            ))),
            _ => Ok(Some((KeyState::PendingDeletion, Some((when, days))))),
        })?;
        Ok(ScheduleKeyDeletionResponse {
            key_id: self.scope.key_arn(&id),
            deletion_date: secs(when),
            key_state: r.state.as_str().into(),
            pending_window_in_days: days,
        })
    }

    /// CancelKeyDeletion: the key comes back Disabled, as in AWS.
    pub fn cancel_key_deletion(&self, req: KeyIdRequest) -> Result<KeyIdResponse> {
        let (id, _) = self.resolve(&required(req.key_id, "keyId")?, Forms::KeyOnly)?;
        self.set_state(&id, |r| match r.state {
            KeyState::PendingDeletion => Ok(Some((KeyState::Disabled, None))),
            _ => Err(KmsError::InvalidState(format!(
                "{} is not pending deletion.",
                self.scope.key_arn(&id)
            ))),
        })?;
        Ok(KeyIdResponse {
            key_id: self.scope.key_arn(&id),
        })
    }

    /// Destroys every key whose deletion date is at or before `now_ms` (the sweeper). Each
    /// key's records are read again from the token first: a key whose deletion another
    /// process cancelled since the last refresh is kept.
    pub fn sweep_deletions_at(&self, now_ms: i64) -> Result<Vec<KeyId>> {
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

    /// One round of upkeep: refresh, destroy keys past their deletion date, sweep orphaned
    /// CMKs left by interrupted CreateKey calls, destroy derived keys whose drop found no free
    /// session.
    pub fn maintain(&self) -> Result<()> {
        self.token.reap();
        self.refresh()?;
        self.sweep_deletions_at(now_ms())?;
        self.store.sweep_orphan_cmks()?;
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

    // ----- aliases ------------------------------------------------------------------------------

    /// The target of CreateAlias/UpdateAlias: a key id or ARN (the key's state is checked
    /// when the alias is written, see [`check_alias_target`]).
    fn alias_target(&self, target: Option<String>) -> Result<KeyId> {
        Ok(self
            .resolve(&required(target, "targetKeyId")?, Forms::KeyOnly)?
            .0)
    }

    fn alias_not_found(&self, name: &AliasName) -> KmsError {
        KmsError::NotFound(format!(
            "Alias {} is not found.",
            self.scope.alias_arn(name)
        ))
    }

    /// An alias may point at a key that exists and is neither pending deletion nor unknown,
    /// as the snapshot has it when the alias is written.
    fn check_alias_target(&self, snap: &super::store::Snapshot, target: KeyId) -> Result<()> {
        let arn = self.scope.key_arn(&target);
        match snap.keys.get(&target).map(|e| e.record.state) {
            None => Err(KmsError::NotFound(format!("Key '{arn}' does not exist"))),
            Some(KeyState::PendingDeletion) => Err(KmsError::InvalidState(format!(
                "{arn} is pending deletion."
            ))),
            Some(KeyState::Unknown) => Err(unavailable_state(&arn)),
            Some(KeyState::Enabled | KeyState::Disabled) => Ok(()),
        }
    }

    pub fn create_alias(&self, req: AliasRequest) -> Result<()> {
        let name = AliasName::parse(&required(req.alias_name, "aliasName")?)?;
        let target = self.alias_target(req.target_key_id)?;
        let now = now_ms();
        self.store.put_alias(&name, |snap, current| {
            if current.is_some() {
                return Err(KmsError::AlreadyExists(format!(
                    "An alias with the name {} already exists",
                    self.scope.alias_arn(&name)
                )));
            }
            self.check_alias_target(snap, target)?;
            Ok(AliasRecord {
                name: name.to_string(),
                target: Some(target),
                created_ms: now,
                updated_ms: now,
            })
        })
    }

    pub fn update_alias(&self, req: AliasRequest) -> Result<()> {
        self.update_alias_expecting(req, None).map(|_| ())
    }

    /// UpdateAlias, if the alias still points at `expected` (when given; `Ok(false)`
    /// otherwise, nothing changed): the caller authorized the change against that target.
    pub fn update_alias_expecting(
        &self,
        req: AliasRequest,
        expected: Option<KeyId>,
    ) -> Result<bool> {
        let name = AliasName::parse(&required(req.alias_name, "aliasName")?)?;
        let target = self.alias_target(req.target_key_id)?;
        self.change_alias(&name, expected, |snap, current| {
            self.check_alias_target(snap, target)?;
            Ok(AliasRecord {
                target: Some(target),
                updated_ms: now_ms(),
                ..current.clone()
            })
        })
    }

    pub fn delete_alias(&self, req: AliasRequest) -> Result<()> {
        self.delete_alias_expecting(req, None).map(|_| ())
    }

    /// DeleteAlias, if the alias still points at `expected` (see
    /// [`Kms::update_alias_expecting`]).
    pub fn delete_alias_expecting(
        &self,
        req: AliasRequest,
        expected: Option<KeyId>,
    ) -> Result<bool> {
        let name = AliasName::parse(&required(req.alias_name, "aliasName")?)?;
        self.change_alias(&name, expected, |_, current| {
            Ok(AliasRecord {
                target: None,
                updated_ms: now_ms(),
                ..current.clone()
            })
        })
    }

    /// Rewrites an existing alias as `make` says, if it still points at `expected` (when
    /// given); `Ok(false)` when it has moved (nothing written).
    fn change_alias(
        &self,
        name: &AliasName,
        expected: Option<KeyId>,
        make: impl FnOnce(&super::store::Snapshot, &AliasRecord) -> Result<AliasRecord>,
    ) -> Result<bool> {
        let mut moved = false;
        let r = self.store.put_alias(name, |snap, current| {
            let current = current.ok_or_else(|| self.alias_not_found(name))?;
            if expected.is_some_and(|e| current.target != Some(e)) {
                moved = true;
                return Err(self.alias_not_found(name));
            }
            make(snap, current)
        });
        match r {
            Err(_) if moved => Ok(false),
            r => r.map(|()| true),
        }
    }

    /// The key an alias points at now, if the alias exists.
    pub fn alias_target_of(&self, alias: &str) -> Result<Option<KeyId>> {
        let name = AliasName::parse(alias)?;
        Ok(self.store.read().aliases.get(&name).and_then(|a| a.target))
    }

    pub fn list_aliases(&self, req: ListRequest) -> Result<ListAliasesResponse> {
        let limit = check_limit(req.limit, 100)?;
        let key = match req.key_id {
            Some(k) => Some(self.resolve(&k, Forms::KeyOnly)?.0),
            None => None,
        };
        let start = match &req.marker {
            None => Bound::Unbounded,
            Some(m) => Bound::Excluded(
                AliasName::parse(m)
                    .map_err(|_| KmsError::InvalidMarker(format!("Invalid marker {m}")))?,
            ),
        };
        let snap = self.store.read();
        let mut iter = snap
            .aliases
            .range((start, Bound::Unbounded))
            .filter(|(_, a)| key.is_none() || a.target == key)
            .filter_map(|(n, a)| a.target.map(|t| (n, a, t)));
        let aliases: Vec<AliasListEntry> = iter
            .by_ref()
            .take(limit)
            .map(|(n, a, t)| AliasListEntry {
                alias_name: n.to_string(),
                alias_arn: self.scope.alias_arn(n),
                target_key_id: t.to_string(),
                creation_date: secs(a.created_ms),
                last_updated_date: secs(a.updated_ms),
            })
            .collect();
        let truncated = iter.next().is_some();
        Ok(ListAliasesResponse {
            next_marker: truncated
                .then(|| aliases.last().map(|a| a.alias_name.clone()))
                .flatten(),
            aliases,
            truncated,
        })
    }

    // ----- cryptography -----------------------------------------------------------------------

    /// Derives the epoch key of `entry`'s backing `version` for `nonce`. Runs with no lock
    /// held (the sealing cache calls it while only this key's derivation turn is taken). When
    /// the token refuses, the records say why: they are re-read first (another process may
    /// have disabled or deleted the key: then that is the answer); for a key still Enabled, a
    /// stale handle is bound again, or a backing key that refuses derivation gets its token
    /// state healed, once.
    fn derive(
        &self,
        entry: &KeyEntry,
        version: u32,
        nonce: &[u8; NONCE_LEN],
    ) -> Result<SessionKey> {
        let id = entry.record.id;
        let kdf = entry.record.kdf;
        let arn = self.scope.key_arn(&id);
        // Epoch keys wrap only where data keys are sealed in the token.
        let wrap = self.sealing == SealingPath::Token;
        let Some(h) = entry.cmks.get(&version).copied() else {
            // Known unusable: answered without touching the token.
            return Err(KmsError::KeyUnavailable(
                entry.unbound.get(&version).cloned().unwrap_or_else(|| {
                    format!("the backing key of {arn} (version {version}) is not in the token")
                }),
            ));
        };
        let first = match self.token.derive_key(h, kdf, nonce, wrap) {
            Ok(k) => return Ok(k),
            Err(e) => e,
        };
        self.refresh()?;
        let now = self
            .store
            .key(&id)
            .ok_or_else(|| KmsError::NotFound(format!("Key '{arn}' does not exist")))?;
        check_usable(&now, &arn)?;
        match self.store.relocate_cmk(&id, version)? {
            CmkLookup::Found(n) if n != h => Ok(self.token.derive_key(n, kdf, nonce, wrap)?),
            CmkLookup::Found(n) if self.heal_token_state(&id, n)? => {
                Ok(self.token.derive_key(n, kdf, nonce, wrap)?)
            }
            CmkLookup::Found(_) => Err(first.into()),
            CmkLookup::Missing => Err(KmsError::KeyUnavailable(format!(
                "the backing key of {arn} (version {version}) is not in the token"
            ))),
            CmkLookup::Refused(why) => Err(KmsError::KeyUnavailable(why)),
        }
    }

    /// The token refuses to derive from a CMK whose record says Enabled: another process may
    /// have reconciled from a record that was just superseded. If the key is still Enabled
    /// (the records were just re-read), make the token agree; serialised with this process's
    /// state changes, so a concurrent DisableKey is never undone here.
    fn heal_token_state(&self, id: &KeyId, cmk: CmkHandle) -> Result<bool> {
        self.store.with_key(id, |entry| {
            if entry.is_some_and(|e| e.record.state == KeyState::Enabled)
                && !self.token.cmk_usable(cmk)?
            {
                self.token.set_cmk_usable(cmk, true)?;
                return Ok(true);
            }
            Ok(false)
        })
    }

    /// Seals `plaintext` under the key's current backing version (`C_Encrypt`). Returns the
    /// blob.
    fn seal(
        &self,
        entry: &KeyEntry,
        ctx: &EncryptionContext,
        plaintext: &[u8],
        iv: [u8; GCM_IV_LEN],
    ) -> Result<Vec<u8>> {
        self.seal_with(entry, ctx, iv, |key, iv, aad| {
            Ok(self.token.gcm_seal(key, iv, aad, plaintext)?)
        })
    }

    /// Builds a blob under the key's current backing version: picks the epoch key and the
    /// header, and lets `sealer` produce ciphertext ‖ tag under that key with that IV and AAD
    /// (`C_Encrypt` of host bytes, or `C_WrapKey` of a key generated in the token: the same
    /// bytes either way).
    fn seal_with(
        &self,
        entry: &KeyEntry,
        ctx: &EncryptionContext,
        iv: [u8; GCM_IV_LEN],
        sealer: impl FnOnce(&SessionKey, &[u8; GCM_IV_LEN], &[u8]) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let r = &entry.record;
        let version = r.current_version;
        let sk = self.epochs.for_sealing(r.id, version, || {
            let mut nonce = [0u8; NONCE_LEN];
            self.token.random_fill(&mut nonce)?;
            Ok((nonce, self.derive(entry, version, &nonce)?))
        })?;
        let header = Header {
            key_id: r.id,
            key_version: version,
            kdf: r.kdf,
            nonce: sk.nonce,
            iv,
        };
        let sealed = sealer(&sk.key, &iv, &header.aad(ctx))?;
        Ok(header.assemble(&sealed))
    }

    /// Opens a blob: finds its key, checks state and (optionally) the expected key, re-derives
    /// the epoch key and lets the token authenticate header, context and ciphertext.
    fn open_blob(
        &self,
        bytes: &[u8],
        ctx: &EncryptionContext,
        expected: Option<&str>,
    ) -> Result<(KeyId, Zeroizing<Vec<u8>>)> {
        let blob = blob::parse(bytes)?;
        let h = &blob.header;
        if let Some(k) = expected {
            let (want, _) = self.resolve(k, Forms::Any)?;
            if want != h.key_id {
                return Err(KmsError::IncorrectKey(
                    "The key ID in the request does not identify a CMK that can perform this operation.".into(),
                ));
            }
        }
        let arn = self.scope.key_arn(&h.key_id);
        let entry = self.store.read().keys.get(&h.key_id).cloned();
        let entry = entry.ok_or_else(|| {
            KmsError::NotFound(format!(
                "Key '{arn}' named by the ciphertext does not exist"
            ))
        })?;
        check_usable(&entry, &arn)?;
        if h.kdf != entry.record.kdf
            || !entry
                .record
                .versions
                .iter()
                .any(|v| v.version == h.key_version)
        {
            return Err(KmsError::invalid_ciphertext());
        }
        let aad = h.aad(ctx);
        if let Some(key) = self.epochs.cached(h.key_id, h.key_version, &h.nonce) {
            return Ok((
                h.key_id,
                self.token.gcm_open(&key, &h.iv, &aad, blob.sealed)?,
            ));
        }
        let key = self.derive(&entry, h.key_version, &h.nonce)?;
        let plaintext = self.token.gcm_open(&key, &h.iv, &aad, blob.sealed)?;
        // Only keys that opened a genuine blob are cached: forged nonces cannot fill the cache.
        self.epochs
            .remember((h.key_id, h.key_version, h.nonce), Arc::new(key));
        Ok((h.key_id, plaintext))
    }

    /// Resolves a key for a cryptographic operation and checks its state.
    fn crypto_key(&self, key_id: Option<String>) -> Result<KeyEntry> {
        let (id, entry) = self.resolve(&required(key_id, "keyId")?, Forms::Any)?;
        check_usable(&entry, &self.scope.key_arn(&id))?;
        Ok(entry)
    }

    fn iv(&self) -> Result<[u8; GCM_IV_LEN]> {
        let mut iv = [0u8; GCM_IV_LEN];
        self.token.random_fill(&mut iv)?;
        Ok(iv)
    }

    pub fn encrypt(&self, req: EncryptRequest) -> Result<EncryptResponse> {
        let plaintext = required(req.plaintext, "plaintext")?;
        if plaintext.0.is_empty() || plaintext.0.len() > MAX_PLAINTEXT {
            return Err(KmsError::validation(
                "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: Member must have length between 1 and 4096",
            ));
        }
        check_grant_tokens(&req.grant_tokens)?;
        check_algorithm(&req.encryption_algorithm, "EncryptionAlgorithm")?;
        let ctx = context(req.encryption_context)?;
        let entry = self.crypto_key(req.key_id)?;
        dry_run(req.dry_run)?;
        let blob = self.seal(&entry, &ctx, &plaintext.0, self.iv()?)?;
        Ok(EncryptResponse {
            ciphertext_blob: Bytes(blob),
            key_id: self.scope.key_arn(&entry.record.id),
            encryption_algorithm: SYMMETRIC_DEFAULT.into(),
        })
    }

    pub fn decrypt(&self, req: DecryptRequest) -> Result<DecryptResponse> {
        let blob = required(req.ciphertext_blob, "ciphertextBlob")?;
        check_grant_tokens(&req.grant_tokens)?;
        check_algorithm(&req.encryption_algorithm, "EncryptionAlgorithm")?;
        let ctx = context(req.encryption_context)?;
        if req.dry_run == Some(true) {
            // Validate everything a real call would, without using the plaintext.
            self.open_blob(&blob.0, &ctx, req.key_id.as_deref())?;
            return Err(dry_run(req.dry_run).unwrap_err_or_internal());
        }
        let (id, plaintext) = self.open_blob(&blob.0, &ctx, req.key_id.as_deref())?;
        Ok(DecryptResponse {
            key_id: self.scope.key_arn(&id),
            plaintext: SecretBytes(plaintext),
            encryption_algorithm: SYMMETRIC_DEFAULT.into(),
        })
    }

    pub fn re_encrypt(&self, req: ReEncryptRequest) -> Result<ReEncryptResponse> {
        let blob = required(req.ciphertext_blob, "ciphertextBlob")?;
        check_grant_tokens(&req.grant_tokens)?;
        check_algorithm(
            &req.source_encryption_algorithm,
            "SourceEncryptionAlgorithm",
        )?;
        check_algorithm(
            &req.destination_encryption_algorithm,
            "DestinationEncryptionAlgorithm",
        )?;
        let src_ctx = context(req.source_encryption_context)?;
        let dst_ctx = context(req.destination_encryption_context)?;
        let dst = self.crypto_key(req.destination_key_id)?;
        let (src, plaintext) = self.open_blob(&blob.0, &src_ctx, req.source_key_id.as_deref())?;
        dry_run(req.dry_run)?;
        let out = self.seal(&dst, &dst_ctx, &plaintext, self.iv()?)?;
        Ok(ReEncryptResponse {
            ciphertext_blob: Bytes(out),
            source_key_id: self.scope.key_arn(&src),
            key_id: self.scope.key_arn(&dst.record.id),
            source_encryption_algorithm: SYMMETRIC_DEFAULT.into(),
            destination_encryption_algorithm: SYMMETRIC_DEFAULT.into(),
        })
    }

    /// The checks shared by GenerateDataKey(WithoutPlaintext): length, context, key.
    fn data_key_request(
        &self,
        req: GenerateDataKeyRequest,
    ) -> Result<(usize, EncryptionContext, KeyEntry)> {
        let len = data_key_len(&req.key_spec, req.number_of_bytes)?;
        check_grant_tokens(&req.grant_tokens)?;
        let ctx = context(req.encryption_context)?;
        let entry = self.crypto_key(req.key_id)?;
        dry_run(req.dry_run)?;
        Ok((len, ctx, entry))
    }

    /// The host path: key bytes and IV from the token RNG in one call, sealed by the token with
    /// `C_Encrypt` under the epoch key. The key bytes are in host memory until the caller drops
    /// them (zeroized).
    fn host_data_key(
        &self,
        entry: &KeyEntry,
        ctx: &EncryptionContext,
        len: usize,
    ) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>)> {
        let mut random = self.token.random(len + GCM_IV_LEN)?;
        let mut iv = [0u8; GCM_IV_LEN];
        iv.copy_from_slice(&random[len..]);
        random.truncate(len);
        let blob = self.seal(entry, ctx, &random, iv)?;
        Ok((blob, random))
    }

    /// GenerateDataKey always takes the host path, on every token: the caller asks for the
    /// plaintext, so it reaches host memory whichever way it is made, and generating it in the
    /// token would cost a `C_GenerateKey` + `C_WrapKey` + `C_DestroyObject` + `C_Decrypt`
    /// instead of one `C_GenerateRandom` + `C_Encrypt`, for the same blob.
    pub fn generate_data_key(
        &self,
        req: GenerateDataKeyRequest,
    ) -> Result<GenerateDataKeyResponse> {
        let (len, ctx, entry) = self.data_key_request(req)?;
        let (blob, plaintext) = self.host_data_key(&entry, &ctx, len)?;
        Ok(GenerateDataKeyResponse {
            ciphertext_blob: Bytes(blob),
            plaintext: SecretBytes(plaintext),
            key_id: self.scope.key_arn(&entry.record.id),
        })
    }

    /// GenerateDataKeyWithoutPlaintext: on the token path the data key is generated and sealed
    /// inside the token (`C_GenerateKey` + `C_WrapKey` with AES-GCM) and its bytes never enter
    /// this process; only the IV comes from `C_GenerateRandom`. On the host path, as
    /// GenerateDataKey, the plaintext dropped (zeroized) as soon as it is sealed.
    pub fn generate_data_key_without_plaintext(
        &self,
        req: GenerateDataKeyRequest,
    ) -> Result<GenerateDataKeyWithoutPlaintextResponse> {
        let (len, ctx, entry) = self.data_key_request(req)?;
        let in_token = self.sealing == SealingPath::Token
            && self
                .token
                .capabilities()
                .in_token_data_keys
                .is_some_and(|k| k.covers(len));
        let blob = if in_token {
            self.seal_with(&entry, &ctx, self.iv()?, |key, iv, aad| {
                Ok(self.token.seal_new_data_key(key, iv, aad, len)?)
            })?
        } else if self.require_in_token {
            return Err(KmsError::UnsupportedOperation(format!(
                "this token can seal only 16- and 32-byte data keys inside itself, and \
                 in-token sealing is required; ask for AES_128, AES_256, 16 or 32 bytes \
                 (not {len})"
            )));
        } else {
            self.host_data_key(&entry, &ctx, len)?.0
        };
        Ok(GenerateDataKeyWithoutPlaintextResponse {
            ciphertext_blob: Bytes(blob),
            key_id: self.scope.key_arn(&entry.record.id),
        })
    }

    pub fn generate_random(&self, req: GenerateRandomRequest) -> Result<GenerateRandomResponse> {
        if req.custom_key_store_id.is_some() {
            return Err(KmsError::UnsupportedOperation(
                "Custom key stores are not supported by p11kms".into(),
            ));
        }
        let n = match required(req.number_of_bytes, "numberOfBytes")? {
            n @ 1..=MAX_RANDOM => n as usize,
            n => {
                return Err(KmsError::validation(format!(
                    "1 validation error detected: Value '{n}' at 'numberOfBytes' failed to satisfy constraint: Member must have value between 1 and 1024"
                )))
            }
        };
        Ok(GenerateRandomResponse {
            plaintext: SecretBytes(self.token.random(n)?),
        })
    }
}

trait ErrOrInternal {
    fn unwrap_err_or_internal(self) -> KmsError;
}

impl ErrOrInternal for Result<()> {
    fn unwrap_err_or_internal(self) -> KmsError {
        match self {
            Err(e) => e,
            Ok(()) => KmsError::Internal("dry run produced no outcome".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_key_length_rules() {
        assert_eq!(data_key_len(&Some("AES_256".into()), None).unwrap(), 32);
        assert_eq!(data_key_len(&Some("AES_128".into()), None).unwrap(), 16);
        assert_eq!(data_key_len(&None, Some(1)).unwrap(), 1);
        assert_eq!(data_key_len(&None, Some(1024)).unwrap(), 1024);
        for (spec, n) in [
            (None, None),
            (Some("AES_256".to_string()), Some(32)),
            (Some("AES_512".to_string()), None),
            (None, Some(0)),
            (None, Some(1025)),
            (None, Some(-1)),
        ] {
            assert_eq!(
                data_key_len(&spec, n).unwrap_err().aws_name(),
                "ValidationException"
            );
        }
    }

    #[test]
    fn grant_token_rules() {
        assert!(check_grant_tokens(&Some(vec!["g".into(); 10])).is_ok());
        assert!(check_grant_tokens(&Some(vec!["g".into(); 11])).is_err());
        assert!(check_grant_tokens(&Some(vec![String::new()])).is_err());
    }

    #[test]
    fn algorithm_rules() {
        assert!(check_algorithm(&None, "x").is_ok());
        assert!(check_algorithm(&Some(SYMMETRIC_DEFAULT.into()), "x").is_ok());
        assert_eq!(
            check_algorithm(&Some("RSAES_OAEP_SHA_1".into()), "x")
                .unwrap_err()
                .aws_name(),
            "InvalidKeyUsageException"
        );
        assert_eq!(
            check_algorithm(&Some("ROT13".into()), "x")
                .unwrap_err()
                .aws_name(),
            "ValidationException"
        );
    }

    #[test]
    fn create_key_rules() {
        let ok = CreateKeyRequest::default();
        assert!(check_create_key(&ok).is_ok());
        let cases = [
            (
                CreateKeyRequest {
                    key_usage: Some("SIGN_VERIFY".into()),
                    ..Default::default()
                },
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
                    ..Default::default()
                },
                "UnsupportedOperationException",
            ),
            (
                CreateKeyRequest {
                    tags: Some(vec![Tag::default()]),
                    ..Default::default()
                },
                "TagException",
            ),
        ];
        for (req, name) in cases {
            assert_eq!(check_create_key(&req).unwrap_err().aws_name(), name);
        }
    }
}
