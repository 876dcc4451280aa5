//! Key import (bring your own key into the token): GetParametersForImport, ImportKeyMaterial,
//! DeleteImportedKeyMaterial, and the expiry of imported material and of wrapping keys.
//!
//! - **Wrapping keys.** Each GetParametersForImport generates an RSA key pair in the token;
//!   the private half stays there as a token object labelled
//!   `p11kms:import:<key id>:<valid-to ms>:<digest>` (a label family of its own, which the
//!   CMK orphan sweep never looks at), and is destroyed by the upkeep once its import token
//!   has expired.
//! - **Import tokens** are 52 bytes: `"p11kmsIT"`, a format version, the key id, the
//!   valid-to time, the wrapping algorithm and key size, and 16 random bytes from the token's
//!   RNG. `<digest>` is the first 16 bytes of SHA-256 of the whole token (also the wrapping
//!   key's `CKA_ID`), so a token is good exactly when the wrapping key it names exists: any
//!   change to any byte names another label, and nobody can name an existing one without
//!   the random bytes. Nothing secret is in a token.
//! - **The material** is unwrapped by the token straight into the key's backing key
//!   (`hsm::Token::import_cmk`): an AES-256 derive-only token object under the same label
//!   and `CKA_ID` as a generated CMK's version 1. The record keeps the material's check value,
//!   so that a later import (after deletion or expiry, or to change the expiry) must bring the
//!   same material, compared in the token without extracting either.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::super::domain::{
    AwsEnum, ExpirationModel, ImportType, KeySpec, KeyState, WrappingAlgorithm, WrappingKeySpec,
};
use super::super::records::{cmk_id, BackingVersion, ImportedMaterial, KeyRecord};
use super::super::store::KeyEntry;
use super::super::types::{
    Bytes, DeleteImportedKeyMaterialRequest, DeleteImportedKeyMaterialResponse,
    GetParametersForImportRequest, GetParametersForImportResponse, ImportKeyMaterialRequest,
    ImportKeyMaterialResponse,
};
use super::super::{Forms, KeyId, Kms};
use super::{now_ms, required, secs, unavailable_state, DAY_MS};
use crate::der::Hash;
use crate::error::{KmsError, Result};
use crate::hsm::{CmkHandle, Imported, KeyWrapScheme, Offered};

/// Label prefix of every wrapping key.
pub(crate) const WRAPPING_LABEL_PREFIX: &str = "p11kms:import:";
/// How long an import token and its wrapping key are good for, as at AWS.
const PARAMETERS_VALID_MS: i64 = DAY_MS;
/// The furthest `ValidTo` an import may set, as at AWS.
const MAX_VALID_TO_MS: i64 = 365 * DAY_MS;
/// AWS's bound on `ImportToken` and `EncryptedKeyMaterial`.
const MAX_BLOB: usize = 6144;
/// Wrapping keys kept per KMS key: each GetParametersForImport beyond this destroys the one
/// that expires first (its token then answers InvalidImportTokenException), so repeated calls
/// cannot fill the token with RSA keys.
pub(crate) const MAX_WRAPPING_KEYS: usize = 8;

const TOKEN_MAGIC: &[u8; 8] = b"p11kmsIT";
const TOKEN_VERSION: u8 = 1;
const TOKEN_LEN: usize = 8 + 1 + 16 + 8 + 1 + 2 + 16;

/// What an import token says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ImportToken {
    key: KeyId,
    valid_to_ms: i64,
    algorithm: WrappingAlgorithm,
    bits: u16,
    nonce: [u8; 16],
}

impl ImportToken {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(TOKEN_LEN);
        v.extend_from_slice(TOKEN_MAGIC);
        v.push(TOKEN_VERSION);
        v.extend_from_slice(self.key.as_bytes());
        v.extend_from_slice(&self.valid_to_ms.to_be_bytes());
        let alg = WrappingAlgorithm::ALL
            .iter()
            .position(|a| *a == self.algorithm)
            .unwrap_or(0);
        v.push(alg as u8);
        v.extend_from_slice(&self.bits.to_be_bytes());
        v.extend_from_slice(&self.nonce);
        v
    }

    /// A token of exactly our shape, or `None`.
    fn decode(b: &[u8]) -> Option<ImportToken> {
        if b.len() != TOKEN_LEN || &b[..8] != TOKEN_MAGIC || b[8] != TOKEN_VERSION {
            return None;
        }
        let key = KeyId::from_bytes(b[9..25].try_into().ok()?);
        let valid_to_ms = i64::from_be_bytes(b[25..33].try_into().ok()?);
        let algorithm = *WrappingAlgorithm::ALL.get(usize::from(b[33]))?;
        let bits = u16::from_be_bytes(b[34..36].try_into().ok()?);
        let nonce = b[36..52].try_into().ok()?;
        Some(ImportToken {
            key,
            valid_to_ms,
            algorithm,
            bits,
            nonce,
        })
    }

    /// The first 16 bytes of SHA-256 of the encoded token: the wrapping key's `CKA_ID`.
    fn digest(&self) -> [u8; 16] {
        let d = Sha256::digest(self.encode());
        let mut out = [0u8; 16];
        out.copy_from_slice(&d[..16]);
        out
    }

    /// The wrapping key's label.
    fn label(&self) -> String {
        format!(
            "{WRAPPING_LABEL_PREFIX}{}:{}:{}",
            self.key,
            self.valid_to_ms,
            hex::encode(self.digest())
        )
    }
}

/// (key id, valid-to ms) from a wrapping key's label.
fn parse_wrapping_label(label: &str) -> Option<(KeyId, i64)> {
    let rest = label.strip_prefix(WRAPPING_LABEL_PREFIX)?;
    let mut parts = rest.split(':');
    let id = parts.next()?.parse().ok()?;
    let valid_to = parts.next()?.parse().ok()?;
    let digest = parts.next()?;
    (digest.len() == 32 && parts.next().is_none()).then_some((id, valid_to))
}

/// The token's scheme for an AWS wrapping algorithm (or why p11kms does not take it).
fn scheme(a: WrappingAlgorithm) -> Result<KeyWrapScheme> {
    Ok(match a {
        WrappingAlgorithm::RsaesOaepSha1 => KeyWrapScheme::RsaOaep(Hash::Sha1),
        WrappingAlgorithm::RsaesOaepSha256 => KeyWrapScheme::RsaOaep(Hash::Sha256),
        WrappingAlgorithm::RsaAesKeyWrapSha1 => KeyWrapScheme::RsaAesKeyWrap(Hash::Sha1),
        WrappingAlgorithm::RsaAesKeyWrapSha256 => KeyWrapScheme::RsaAesKeyWrap(Hash::Sha256),
        WrappingAlgorithm::RsaesPkcs1V15 => {
            return Err(KmsError::unsupported(
                "WrappingAlgorithm RSAES_PKCS1_V1_5 is no longer supported (AWS KMS dropped it \
                 in 2023): use RSAES_OAEP_SHA_256 or RSA_AES_KEY_WRAP_SHA_256",
            ))
        }
        WrappingAlgorithm::Sm2pke => {
            return Err(KmsError::unsupported(
                "WrappingAlgorithm SM2PKE is not supported by p11kms (AWS offers it in China \
                 Regions only)",
            ))
        }
    })
}

fn bits(spec: WrappingKeySpec) -> Result<u16> {
    match spec {
        WrappingKeySpec::Rsa2048 => Ok(2048),
        WrappingKeySpec::Rsa3072 => Ok(3072),
        WrappingKeySpec::Rsa4096 => Ok(4096),
        WrappingKeySpec::Sm2 => Err(KmsError::unsupported(
            "WrappingKeySpec SM2 is not supported by p11kms (AWS offers it in China Regions only)",
        )),
    }
}

/// A blob member's length rule, in AWS's words.
fn check_blob(b: &Bytes, member: &str) -> Result<()> {
    crate::kms::validation::length(
        member,
        crate::kms::validation::Shown::Hidden,
        b.0.len(),
        1,
        MAX_BLOB,
    )
}

/// The expiry an ImportKeyMaterial request asks for: (model, valid-to ms).
fn expiry(req: &ImportKeyMaterialRequest, now: i64) -> Result<(ExpirationModel, Option<i64>)> {
    let model = match &req.expiration_model {
        Some(m) => ExpirationModel::parse(m, "expirationModel")?,
        None => ExpirationModel::KeyMaterialExpires,
    };
    match (model, req.valid_to) {
        (ExpirationModel::KeyMaterialDoesNotExpire, None) => Ok((model, None)),
        (ExpirationModel::KeyMaterialDoesNotExpire, Some(_)) => Err(KmsError::validation(
            "ValidTo must be omitted when ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE",
        )),
        (ExpirationModel::KeyMaterialExpires, None) => Err(KmsError::validation(
            "ValidTo is required when ExpirationModel is KEY_MATERIAL_EXPIRES (the default)",
        )),
        (ExpirationModel::KeyMaterialExpires, Some(t)) => {
            if !t.is_finite() {
                return Err(KmsError::validation("ValidTo is not a valid timestamp"));
            }
            let ms = (t * 1000.0) as i64;
            if ms <= now {
                return Err(KmsError::validation(
                    "ValidTo must be a date and time in the future",
                ));
            }
            if ms > now + MAX_VALID_TO_MS {
                return Err(KmsError::validation(
                    "ValidTo must be at most 365 days after the request",
                ));
            }
            Ok((model, Some(ms)))
        }
    }
}

impl Kms {
    /// The key `req` names, if its material is imported: other keys are
    /// `UnsupportedOperationException`, as at AWS; keys pending deletion (and records this
    /// version cannot read) are `KMSInvalidStateException`.
    fn imported_key(&self, key: &super::super::KeySelector, op: &str) -> Result<KeyEntry> {
        let (_, entry) = self.resolve(key, Forms::KeyOnly)?;
        let arn = self.key_arn(&entry.record);
        match entry.record.state {
            KeyState::Unknown => return Err(unavailable_state(&arn)),
            KeyState::PendingDeletion if op != "DeleteImportedKeyMaterial" => {
                return Err(KmsError::invalid_state(format!(
                    "{arn} is pending deletion."
                )))
            }
            _ => {}
        }
        if entry.record.import.is_none() {
            return Err(KmsError::unsupported(format!(
                "{op} is only for KMS keys with imported key material (Origin EXTERNAL); {arn} \
                 has Origin {}",
                entry.record.origin()
            )));
        }
        Ok(entry)
    }

    /// GetParametersForImport: a wrapping key pair generated in the token and an import
    /// token, both good for 24 hours.
    pub fn get_parameters_for_import(
        &self,
        req: GetParametersForImportRequest,
    ) -> Result<GetParametersForImportResponse> {
        self.get_parameters_for_import_at(req, now_ms())
    }

    /// [`Kms::get_parameters_for_import`] as if it were `now_ms` (tests: tokens that have
    /// already expired).
    pub fn get_parameters_for_import_at(
        &self,
        req: GetParametersForImportRequest,
        now_ms: i64,
    ) -> Result<GetParametersForImportResponse> {
        let key_id = required(req.key_id, "keyId")?;
        let algorithm = WrappingAlgorithm::parse(
            &required(req.wrapping_algorithm, "wrappingAlgorithm")?,
            "wrappingAlgorithm",
        )?;
        let spec = WrappingKeySpec::parse(
            &required(req.wrapping_key_spec, "wrappingKeySpec")?,
            "wrappingKeySpec",
        )?;
        let scheme = scheme(algorithm)?;
        let bits = bits(spec)?;
        let entry = self.imported_key(&key_id, "GetParametersForImport")?;
        let id = entry.record.id;
        let lacks = |what: String| {
            KmsError::unsupported(format!(
                "WrappingAlgorithm {algorithm} with WrappingKeySpec {spec} is not available on \
                 this token: it lacks {what}"
            ))
        };
        if let Some(missing) = self.token.missing_for_import(scheme, usize::from(bits)) {
            return Err(lacks(missing));
        }
        let mut nonce = [0u8; 16];
        self.token.random_fill(&mut nonce)?;
        let token = ImportToken {
            key: id,
            valid_to_ms: now_ms + PARAMETERS_VALID_MS,
            algorithm,
            bits,
            nonce,
        };
        self.limit_wrapping_keys(&id)?;
        let public_key = match self.token.generate_wrapping_key(
            &token.label(),
            &token.digest(),
            usize::from(bits),
            scheme,
        )? {
            Offered::Yes(spki) => spki,
            Offered::Lacks(what) => return Err(lacks(what)),
        };
        Ok(GetParametersForImportResponse {
            key_id: self.key_arn(&entry.record),
            import_token: Bytes(token.encode()),
            public_key: Bytes(public_key),
            parameters_valid_to: secs(token.valid_to_ms),
        })
    }

    /// Leaves room for one more wrapping key of `id` ([`MAX_WRAPPING_KEYS`]).
    fn limit_wrapping_keys(&self, id: &KeyId) -> Result<()> {
        let prefix = format!("{WRAPPING_LABEL_PREFIX}{id}:");
        let mut keys: Vec<(i64, crate::hsm::WrappingKey)> = self
            .token
            .list_wrapping_keys(&prefix)?
            .into_iter()
            .filter_map(|(l, k)| parse_wrapping_label(&l).map(|(_, t)| (t, k)))
            .collect();
        keys.sort_by_key(|(t, _)| *t);
        let excess = (keys.len() + 1).saturating_sub(MAX_WRAPPING_KEYS);
        for (_, k) in keys.into_iter().take(excess) {
            self.token.destroy_wrapping_key(k)?;
        }
        Ok(())
    }

    /// ImportKeyMaterial.
    pub fn import_key_material(
        &self,
        req: ImportKeyMaterialRequest,
    ) -> Result<ImportKeyMaterialResponse> {
        self.import_key_material_at(req, now_ms())
    }

    /// [`Kms::import_key_material`] as if it were `now_ms`.
    pub fn import_key_material_at(
        &self,
        req: ImportKeyMaterialRequest,
        now_ms: i64,
    ) -> Result<ImportKeyMaterialResponse> {
        let key_id = required(req.key_id.clone(), "keyId")?;
        let token_bytes = required(req.import_token.clone(), "importToken")?;
        let blob = required(req.encrypted_key_material.clone(), "encryptedKeyMaterial")?;
        check_blob(&token_bytes, "importToken")?;
        check_blob(&blob, "encryptedKeyMaterial")?;
        let (model, valid_to_ms) = expiry(&req, now_ms)?;
        if let Some(t) = &req.import_type {
            if ImportType::parse(t, "importType")? == ImportType::NewKeyMaterial {
                return Err(KmsError::unsupported(
                    "ImportType NEW_KEY_MATERIAL (rotating imported key material) is not \
                     supported by p11kms: a key holds one imported key material",
                ));
            }
        }
        if req.key_material_id.is_some() {
            return Err(KmsError::unsupported(
                "KeyMaterialId is not supported by p11kms: a key holds one imported key material",
            ));
        }
        let entry = self.imported_key(&key_id, "ImportKeyMaterial")?;
        let id = entry.record.id;
        let arn = self.key_arn(&entry.record);
        let token = ImportToken::decode(&token_bytes.0).ok_or_else(|| {
            KmsError::invalid_import_token("The import token is not one p11kms issued")
        })?;
        if token.key != id {
            return Err(KmsError::invalid_import_token(format!(
                "The import token is for another KMS key than {arn}"
            )));
        }
        if token.valid_to_ms <= now_ms {
            return Err(KmsError::expired_import_token(
                "The import token has expired: call GetParametersForImport again",
            ));
        }
        let scheme = scheme(token.algorithm)?;
        let wrapping = self
            .token
            .find_wrapping_key(&token.label(), &token.digest(), usize::from(token.bits))?
            .ok_or_else(|| {
                KmsError::invalid_import_token(
                    "The import token is not valid: its wrapping key is not in the token \
                     (it was never issued, or has been replaced by newer ones)",
                )
            })?;
        let kdf = entry.record.kdf;
        let incorrect = || {
            KmsError::incorrect_key_material(format!(
                "The key material is not the key material that was previously imported into {arn}"
            ))
        };
        let not_aes = |n: u64| {
            KmsError::incorrect_key_material(format!(
                "The key material must be a 256-bit symmetric key; this one has {} bits",
                n * 8
            ))
        };
        let made: std::cell::Cell<Option<CmkHandle>> = std::cell::Cell::new(None);
        let written = self.store.replace_key(&id, |now| {
            let r = &now.record;
            let import = r.import.as_deref().cloned().ok_or_else(|| {
                KmsError::unsupported(format!("{arn} has no imported key material"))
            })?;
            match r.state {
                KeyState::Unknown => return Err(unavailable_state(&arn)),
                KeyState::PendingDeletion => {
                    return Err(KmsError::invalid_state(format!(
                        "{arn} is pending deletion."
                    )))
                }
                _ => {}
            }
            let expiry = ImportedMaterial {
                expiration_model: Some(model),
                valid_to_ms,
                ..import.clone()
            };
            if r.has_imported_material() && now.cmks.contains_key(&1) {
                // The key has material: the same material may come again (to change its
                // expiry); it is compared in a session object and nothing else changes.
                let check = self
                    .token
                    .imported_check_value(wrapping, scheme, &blob.0, kdf)?
                    .ok_or_else(incorrect)?;
                if import.check.as_deref().map(|c| ct_eq(c, &check)) != Some(true) {
                    return Err(incorrect());
                }
                return Ok(Some(KeyEntry {
                    record: KeyRecord {
                        import: Some(Box::new(expiry)),
                        ..r.clone()
                    },
                    ..now.clone()
                }));
            }
            // No material: whatever is under the label was left by an import or a deletion
            // that stopped half-way (the record, which says there is none, wins).
            let label = r.cmk_label(1);
            for h in self.token.find_cmks(&label)? {
                self.token.destroy_cmk(h)?;
            }
            let (cmk, check) = match self.token.import_cmk(
                wrapping,
                scheme,
                &blob.0,
                &label,
                &cmk_id(&id, 1),
                kdf,
            )? {
                Imported::Key { cmk, check } => (cmk, check),
                Imported::NotAes256(n) => return Err(not_aes(n)),
            };
            if let Some(before) = &import.check {
                if !ct_eq(before, &check) {
                    let _ = self.token.destroy_cmk(cmk);
                    return Err(incorrect());
                }
            }
            made.set(Some(cmk));
            Ok(Some(KeyEntry {
                record: KeyRecord {
                    state: match r.state {
                        KeyState::PendingImport => KeyState::Enabled,
                        s => s,
                    },
                    current_version: 1,
                    versions: vec![BackingVersion {
                        version: 1,
                        created: now_ms / 1000,
                        rotation: None,
                    }],
                    import: Some(Box::new(ImportedMaterial {
                        check: Some(check),
                        ..expiry
                    })),
                    ..r.clone()
                },
                cmks: BTreeMap::from([(1, cmk)]),
                unbound: BTreeMap::new(),
            }))
        });
        match written {
            Ok(entry) => {
                // A key that came back from PendingImport while Disabled in the record (a
                // crash between the steps elsewhere) must not derive.
                if entry.record.state != KeyState::Enabled {
                    if let Some(h) = made.get() {
                        let kind = entry.record.backing_kind()?;
                        self.token.set_cmk_usable(h, kind, false)?;
                    }
                }
                self.epochs.forget(&id);
                Ok(ImportKeyMaterialResponse { key_id: arn })
            }
            Err(e) => {
                if let Some(h) = made.get() {
                    let _ = self.token.destroy_cmk(h);
                }
                Err(e)
            }
        }
    }

    /// DeleteImportedKeyMaterial: the backing key is destroyed in the token; the key becomes
    /// PendingImport (a key pending deletion stays so).
    pub fn delete_imported_key_material(
        &self,
        req: DeleteImportedKeyMaterialRequest,
    ) -> Result<DeleteImportedKeyMaterialResponse> {
        let key_id = required(req.key_id, "keyId")?;
        if req.key_material_id.is_some() {
            return Err(KmsError::unsupported(
                "KeyMaterialId is not supported by p11kms: a key holds one imported key material",
            ));
        }
        let entry = self.imported_key(&key_id, "DeleteImportedKeyMaterial")?;
        let arn = self.key_arn(&entry.record);
        self.delete_material(&entry.record.id, |_| true)?;
        Ok(DeleteImportedKeyMaterialResponse { key_id: arn })
    }

    /// Destroys a key's imported material if `due` says so of its record as it is now: every
    /// object under its backing label first, then the record that says it has none (a crash
    /// between the two leaves a record whose backing key is gone: unusable, and finished by
    /// the next deletion, import or expiry sweep). Returns whether anything changed.
    fn delete_material(&self, id: &KeyId, due: impl FnOnce(&KeyRecord) -> bool) -> Result<bool> {
        let mut changed = false;
        self.store.replace_key(id, |now| {
            let r = &now.record;
            if r.state == KeyState::Unknown || r.import.is_none() || !due(r) {
                return Ok(None);
            }
            if !r.has_imported_material() {
                return Ok(None);
            }
            for v in &r.versions {
                let label = r.cmk_label(v.version);
                let mut handles = self.token.find_cmks(&label)?;
                if let Some(h) = now.cmks.get(&v.version) {
                    if !handles.contains(h) {
                        handles.push(*h);
                    }
                }
                for h in handles {
                    self.token.destroy_cmk(h)?;
                    tracing::warn!(
                        target: "p11kms::custody",
                        key_id = %id,
                        label,
                        "destroyed imported key material"
                    );
                }
            }
            changed = true;
            Ok(Some(KeyEntry {
                record: KeyRecord {
                    state: match r.state {
                        KeyState::PendingDeletion => KeyState::PendingDeletion,
                        _ => KeyState::PendingImport,
                    },
                    versions: Vec::new(),
                    import: r.import.as_deref().map(|i| {
                        Box::new(ImportedMaterial {
                            expiration_model: None,
                            valid_to_ms: None,
                            ..i.clone()
                        })
                    }),
                    ..r.clone()
                },
                cmks: BTreeMap::new(),
                unbound: BTreeMap::new(),
            }))
        })?;
        if changed {
            self.epochs.forget(id);
        }
        Ok(changed)
    }

    /// Deletes the imported material of every key whose `ValidTo` is at or before `now_ms`
    /// (the key becomes PendingImport, as at AWS). Returns the keys whose material went.
    pub fn sweep_expired_material_at(&self, now_ms: i64) -> Result<Vec<KeyId>> {
        let expired = |r: &KeyRecord| {
            r.has_imported_material()
                && r.import
                    .as_ref()
                    .and_then(|i| i.valid_to_ms)
                    .is_some_and(|t| t <= now_ms)
        };
        let due: Vec<KeyId> = self
            .store
            .read()
            .keys
            .values()
            .filter(|e| expired(&e.record))
            .map(|e| e.record.id)
            .collect();
        let mut done = Vec::new();
        for id in due {
            if self.delete_material(&id, expired)? {
                done.push(id);
            }
        }
        Ok(done)
    }

    /// Destroys every wrapping key whose import token expired at or before `now_ms`, and
    /// those of keys that no longer exist. Returns how many.
    pub fn sweep_wrapping_keys_at(&self, now_ms: i64) -> Result<usize> {
        let mut n = 0;
        for (label, k) in self.token.list_wrapping_keys(WRAPPING_LABEL_PREFIX)? {
            // A label we cannot read as ours is not ours to destroy.
            let Some((_, valid_to)) = parse_wrapping_label(&label) else {
                continue;
            };
            if valid_to <= now_ms {
                self.token.destroy_wrapping_key(k)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Constant-time equality of two check values.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(subtle::ConstantTimeEq::ct_eq(a, b))
}

/// The spec an imported key may have (p11kms imports symmetric encryption keys only).
pub(crate) fn importable(spec: KeySpec) -> bool {
    spec == KeySpec::SymmetricDefault
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> ImportToken {
        ImportToken {
            key: KeyId::new_random(),
            valid_to_ms: 1_700_000_000_000,
            algorithm: WrappingAlgorithm::RsaAesKeyWrapSha256,
            bits: 3072,
            nonce: [7; 16],
        }
    }

    #[test]
    fn import_tokens_round_trip_and_every_byte_counts() {
        let t = token();
        let enc = t.encode();
        assert_eq!(enc.len(), TOKEN_LEN);
        assert_eq!(ImportToken::decode(&enc), Some(t.clone()));
        let label = t.label();
        assert_eq!(parse_wrapping_label(&label), Some((t.key, t.valid_to_ms)));
        for i in 0..enc.len() {
            let mut bad = enc.clone();
            bad[i] ^= 1;
            match ImportToken::decode(&bad) {
                None => {}
                Some(other) => assert_ne!(other.label(), label, "byte {i}"),
            }
        }
        assert_eq!(ImportToken::decode(&enc[..TOKEN_LEN - 1]), None);
        assert_eq!(ImportToken::decode(&[enc.clone(), vec![0]].concat()), None);
        assert_eq!(parse_wrapping_label("p11kms:import:nope:1:aa"), None);
        assert_eq!(parse_wrapping_label("p11kms:cmk:x:v1"), None);
    }

    #[test]
    fn expiry_rules() {
        let now = 1_000_000_000_000;
        let req = |model: Option<&str>, valid_to: Option<f64>| ImportKeyMaterialRequest {
            expiration_model: model.map(Into::into),
            valid_to,
            ..Default::default()
        };
        let day = 86_400.0;
        let t = now as f64 / 1000.0;
        assert_eq!(
            expiry(&req(None, Some(t + day)), now).unwrap(),
            (ExpirationModel::KeyMaterialExpires, Some(now + DAY_MS))
        );
        assert_eq!(
            expiry(&req(Some("KEY_MATERIAL_DOES_NOT_EXPIRE"), None), now).unwrap(),
            (ExpirationModel::KeyMaterialDoesNotExpire, None)
        );
        for (r, name) in [
            (req(None, None), "ValidationException"),
            (
                req(Some("KEY_MATERIAL_DOES_NOT_EXPIRE"), Some(t + day)),
                "ValidationException",
            ),
            (req(None, Some(t - 1.0)), "ValidationException"),
            (req(None, Some(t + 366.0 * day)), "ValidationException"),
            (req(None, Some(f64::NAN)), "ValidationException"),
            (req(Some("NEVER"), None), "ValidationException"),
        ] {
            assert_eq!(expiry(&r, now).unwrap_err().aws_name(), name, "{r:?}");
        }
        assert!(expiry(&req(None, Some(t + 365.0 * day)), now).is_ok());
    }

    #[test]
    fn algorithms_map_or_are_refused() {
        assert_eq!(
            scheme(WrappingAlgorithm::RsaesOaepSha256).unwrap(),
            KeyWrapScheme::RsaOaep(Hash::Sha256)
        );
        assert_eq!(
            scheme(WrappingAlgorithm::RsaAesKeyWrapSha1).unwrap(),
            KeyWrapScheme::RsaAesKeyWrap(Hash::Sha1)
        );
        for a in [WrappingAlgorithm::RsaesPkcs1V15, WrappingAlgorithm::Sm2pke] {
            assert_eq!(
                scheme(a).unwrap_err().aws_name(),
                "UnsupportedOperationException"
            );
        }
        assert_eq!(
            bits(WrappingKeySpec::Sm2).unwrap_err().aws_name(),
            "UnsupportedOperationException"
        );
    }
}
