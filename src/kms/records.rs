//! Metadata records kept in the token as `CKO_DATA` objects, and the labels that name them.
//!
//! Every record object is written once and never changed. A change writes a new object with a
//! higher sequence number; readers take the highest complete one; superseded ones are swept.
//! Labels (all ASCII, `:`-separated, read without reading the value):
//!
//! ```text
//! key record     p11kms:key:<key id>:<seq>:<writer>
//! alias record   p11kms:alias:<alias name>:<seq>:<writer>
//! grant record   p11kms:grant:<grant id>:<seq>:<writer>
//! CMK (secret)   p11kms:cmk:<key id>:v<backing version>
//! wrapping key   p11kms:import:<key id>:<valid-to ms>:<digest>   (key import, `ops/import.rs`)
//! replica record p11kms:replica:<region>:<key id>:<seq>:<writer>   (multi-Region keys)
//! rotation claim p11kms:claim:<key id>:v<version>:<ms>:<writer>:<random>   (`store/claims.rs`)
//! ```
//! A multi-Region key's record (`p11kms:key:`) is its primary's, and carries its region
//! explicitly; each replica is a record of its own (`replica_v1`, the replica's region,
//! account, state, description, policy and tags; the material's fields are the key
//! record's, read from there: see `store::Snapshot::replica_entry`).
//! `<seq>` is a zero-padded decimal, `<writer>` a random tag per process that breaks ties
//! between two processes writing the same sequence number.

use serde::{Deserialize, Serialize};

use crate::hsm::Kdf;
use crate::kms::domain::GrantOperation;
use crate::kms::grant::{GrantConstraint, GrantId, GrantSecret, GrantView};
use crate::kms::keyref::{AliasKey, AliasName, ArnScope, KeyId};

/// `CKA_APPLICATION` of every p11kms data object.
pub const APPLICATION: &str = "p11kms";
/// Label prefix of every backing key (CMK) object.
pub const CMK_LABEL_PREFIX: &str = "p11kms:cmk:";

pub use super::domain::KeyState;
use super::domain::{ExpirationModel, KeySpec, KeyUsage, Origin};

/// One backing key of a CMK. Version 1 is created with the key; rotation adds more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackingVersion {
    pub version: u32,
    pub created: i64,
    /// How and when this version was made by a rotation (absent for version 1 and for
    /// records written before rotation, which read and write as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationMark>,
}

/// A backing version made by a rotation: which kind, and when it completed (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationMark {
    pub kind: super::domain::RotationType,
    pub at_ms: i64,
}

/// Automatic rotation of a key, while enabled (EnableKeyRotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoRotation {
    /// `RotationPeriodInDays` (90 to 2560).
    pub period_days: u32,
    /// When the next automatic rotation is due (Unix ms).
    pub next_ms: i64,
}

/// Everything known about a CMK besides its key material.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    #[serde(with = "key_id_str")]
    pub id: KeyId,
    /// Unix milliseconds (shown as fractional seconds on the wire).
    pub created_ms: i64,
    pub description: String,
    pub state: KeyState,
    pub deletion_ms: Option<i64>,
    pub pending_window_days: Option<u32>,
    pub kdf: Kdf,
    pub current_version: u32,
    pub versions: Vec<BackingVersion>,
    #[serde(default)]
    pub tags: Vec<(String, String)>,
    #[serde(default)]
    pub policy: Option<String>,
    /// Absent for symmetric keys (so their records read the same to earlier versions, which
    /// take a record with a field they do not know for a newer writer's: `Unavailable`).
    #[serde(
        default = "symmetric_default",
        skip_serializing_if = "is_symmetric_default"
    )]
    pub spec: KeySpec,
    #[serde(
        default = "encrypt_decrypt",
        skip_serializing_if = "is_encrypt_decrypt"
    )]
    pub usage: KeyUsage,
    /// DER SubjectPublicKeyInfo of an asymmetric key (public: kept with the metadata).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_base64")]
    pub public_key: Option<Vec<u8>>,
    /// The AWS account the key belongs to; absent: the service's own account (so records of
    /// that account read the same to earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The region the key belongs to; absent: the service's default region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Present exactly for keys whose material is imported (`Origin=EXTERNAL`); absent for
    /// keys generated in the token, whose records read as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<Box<ImportedMaterial>>,
    /// Automatic rotation, while enabled; absent otherwise (records read as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rotation: Option<AutoRotation>,
    /// When an on-demand rotation was asked for (Unix ms), until it completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demand_rotation_ms: Option<i64>,
}

/// What the record of a key with imported material (`Origin=EXTERNAL`) keeps about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedMaterial {
    /// Whether the material in the token now expires (`None` while the key has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_model: Option<ExpirationModel>,
    /// When it expires (Unix milliseconds), for `KEY_MATERIAL_EXPIRES`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_to_ms: Option<i64>,
    /// The check value of the first material imported (`hsm::Token::check_value`): kept
    /// after that material is deleted or expires, so that only the same material can be
    /// imported again, compared without extracting anything.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_base64")]
    pub check: Option<Vec<u8>>,
}

fn symmetric_default() -> KeySpec {
    KeySpec::SymmetricDefault
}

fn encrypt_decrypt() -> KeyUsage {
    KeyUsage::EncryptDecrypt
}

fn is_symmetric_default(s: &KeySpec) -> bool {
    *s == KeySpec::SymmetricDefault
}

fn is_encrypt_decrypt(u: &KeyUsage) -> bool {
    *u == KeyUsage::EncryptDecrypt
}

impl KeyRecord {
    /// An enabled key with one backing version, for unit tests of the rules that read records.
    #[cfg(test)]
    pub(crate) fn for_tests(id: KeyId, description: &str) -> KeyRecord {
        KeyRecord {
            id,
            created_ms: 1,
            description: description.into(),
            state: KeyState::Enabled,
            deletion_ms: None,
            pending_window_days: None,
            kdf: Kdf::AesCbcEncryptData,
            current_version: 1,
            versions: vec![BackingVersion {
                version: 1,
                created: 1,
                rotation: None,
            }],
            tags: vec![],
            policy: None,
            spec: KeySpec::SymmetricDefault,
            usage: KeyUsage::EncryptDecrypt,
            public_key: None,
            account: None,
            region: None,
            import: None,
            auto_rotation: None,
            on_demand_rotation_ms: None,
        }
    }

    /// A stand-in for a key that does not exist (an alias left pointing at it by a crash),
    /// so that authorization can still ask about it: the service's account, the default
    /// policy, no tags. Never stored.
    pub(crate) fn missing(id: KeyId) -> KeyRecord {
        KeyRecord {
            id,
            created_ms: 0,
            description: String::new(),
            state: KeyState::Unknown,
            deletion_ms: None,
            pending_window_days: None,
            kdf: Kdf::AesCbcEncryptData,
            current_version: 0,
            versions: Vec::new(),
            tags: Vec::new(),
            policy: None,
            spec: KeySpec::SymmetricDefault,
            usage: KeyUsage::EncryptDecrypt,
            public_key: None,
            account: None,
            region: None,
            import: None,
            auto_rotation: None,
            on_demand_rotation_ms: None,
        }
    }

    /// What backs this key in the token (from its spec and usage, and whether its record
    /// says its material is imported: only then may the backing key be one the token did not
    /// generate).
    pub fn backing_kind(&self) -> crate::error::Result<crate::hsm::BackingKind> {
        match super::specs::backing_kind(self.spec, self.usage)? {
            crate::hsm::BackingKind::Derive if self.import.is_some() => {
                if self.id.is_for_imported() {
                    Ok(crate::hsm::BackingKind::Imported)
                } else {
                    // A generated key's record rewritten to say EXTERNAL (someone holding
                    // the PIN): its backing key must still prove it was generated.
                    Err(crate::error::KmsError::key_unavailable(format!(
                        "the record of {} says its key material is imported, but the key was \
                         created with key material generated in the token: refusing to bind \
                         an imported object to it",
                        self.id
                    )))
                }
            }
            kind => Ok(kind),
        }
    }

    /// Where the key material came from.
    pub fn origin(&self) -> Origin {
        if self.import.is_some() {
            Origin::External
        } else {
            Origin::AwsKms
        }
    }

    /// Whether the key has imported key material in the token now (an imported key whose
    /// record lists a backing version).
    pub fn has_imported_material(&self) -> bool {
        self.import.is_some() && !self.versions.is_empty()
    }

    pub fn cmk_label(&self, version: u32) -> String {
        cmk_label(&self.id, version)
    }
}

/// Label of a key's backing key of `version`: `p11kms:cmk:<key id>:v<version>`.
pub fn cmk_label(id: &KeyId, version: u32) -> String {
    format!("{CMK_LABEL_PREFIX}{id}:v{version}")
}

/// `CKA_ID` of a backing key: key id bytes ‖ version (u32 BE).
pub fn cmk_id(id: &KeyId, version: u32) -> Vec<u8> {
    let mut v = id.as_bytes().to_vec();
    v.extend_from_slice(&version.to_be_bytes());
    v
}

/// The id AWS calls `KeyMaterialId` of a key's backing `version`: hex SHA-256 of a fixed
/// prefix, the key id's 16 bytes and the version (u32 BE). 64 hex digits, as AWS's look;
/// computed without the token, the same in every process.
pub fn key_material_id(id: &KeyId, version: u32) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"p11kms key material id v1\0");
    h.update(id.as_bytes());
    h.update(version.to_be_bytes());
    hex::encode(h.finalize())
}

/// (key id, version) from a CMK label `p11kms:cmk:<id>:v<version>`.
pub fn parse_cmk_label(label: &str) -> Option<(KeyId, u32)> {
    let (id, version) = label.strip_prefix(CMK_LABEL_PREFIX)?.split_once(":v")?;
    Some((id.parse().ok()?, version.parse().ok()?))
}

/// An alias and its target; `target: None` is a tombstone (the alias was deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRecord {
    pub name: String,
    #[serde(with = "opt_key_id_str")]
    pub target: Option<KeyId>,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// The region and account the alias belongs to; absent: the service's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<ArnScope>,
}

/// A grant on a key. Written once when created; retiring or revoking it writes a tombstone
/// (`deleted_ms` set) that supersedes it, then both are destroyed (as for aliases).
///
/// A grant record this version cannot fully read (a field or value it does not know: a newer
/// writer's) is never taken for less than it says: it decodes, if its ids and `deleted_ms`
/// can be read, to a grant that allows nothing ([`GrantRecord::unreadable`]), so that it
/// still counts, and a newer version's tombstone still deletes its grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRecord {
    pub grant_id: GrantId,
    #[serde(with = "key_id_str")]
    pub key_id: KeyId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub grantee_principal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring_principal: Option<String>,
    /// Sorted, without duplicates.
    pub operations: Vec<GrantOperation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<GrantConstraint>,
    /// The account id of the principal that created the grant.
    pub issuing_account: String,
    pub created_ms: i64,
    /// What the grant's tokens are made and checked with (`kms::grant`).
    pub token_secret: GrantSecret,
    /// Set on a tombstone: the grant was retired or revoked then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_ms: Option<i64>,
}

impl GrantRecord {
    /// Whether this is the stand-in for a record this version could not fully read: it
    /// lists no operation, so it allows nothing and is not listed.
    pub fn unreadable(&self) -> bool {
        self.operations.is_empty()
    }

    /// The grant without its secret, for the authorization layer.
    pub fn view(&self) -> GrantView {
        GrantView {
            key_id: self.key_id,
            grant_id: self.grant_id,
            name: self.name.clone(),
            grantee_principal: self.grantee_principal.clone(),
            retiring_principal: self.retiring_principal.clone(),
            operations: self.operations.clone(),
            constraint: self.constraint.clone(),
            issuing_account: self.issuing_account.clone(),
            created_ms: self.created_ms,
        }
    }
}

/// What a record object's label says, before its value is read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    Key(KeyId),
    Alias(AliasKey),
    Grant(GrantId),
    /// The replica of a multi-Region key in a region.
    Replica(String, KeyId),
}

/// A parsed record label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordLabel {
    pub subject: Subject,
    pub seq: u64,
    pub writer: String,
}

impl RecordLabel {
    pub fn format(&self) -> String {
        match &self.subject {
            Subject::Key(id) => format!("p11kms:key:{id}:{:010}:{}", self.seq, self.writer),
            Subject::Alias(AliasKey { owner: None, name }) => {
                format!("p11kms:alias:{name}:{:010}:{}", self.seq, self.writer)
            }
            Subject::Alias(AliasKey {
                owner: Some(o),
                name,
            }) => format!(
                "p11kms:alias:{}:{}:{name}:{:010}:{}",
                o.region, o.account, self.seq, self.writer
            ),
            Subject::Grant(g) => format!("p11kms:grant:{g}:{:010}:{}", self.seq, self.writer),
            Subject::Replica(region, id) => format!(
                "p11kms:replica:{region}:{id}:{:010}:{}",
                self.seq, self.writer
            ),
        }
    }

    /// Parses a label; anything not ours (or malformed) is `None` and left alone.
    pub fn parse(label: &str) -> Option<RecordLabel> {
        // Alias names contain ':' themselves: split the fixed fields off the right.
        let mut right = label.rsplitn(3, ':');
        let writer = right.next()?;
        let seq = right.next()?.parse().ok()?;
        let rest = right.next()?;
        let subject = if let Some(id) = rest.strip_prefix("p11kms:key:") {
            Subject::Key(id.parse().ok()?)
        } else if let Some(name) = rest.strip_prefix("p11kms:alias:") {
            Subject::Alias(parse_alias_key(name)?)
        } else if let Some(id) = rest.strip_prefix("p11kms:grant:") {
            Subject::Grant(GrantId::parse(id)?)
        } else if let Some(r) = rest.strip_prefix("p11kms:replica:") {
            let (region, id) = r.split_once(':')?;
            let id: KeyId = id.parse().ok()?;
            (region_name_ok(region) && id.is_multi_region()).then_some(())?;
            Subject::Replica(region.to_string(), id)
        } else {
            return None;
        };
        if writer.is_empty() || !writer.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(RecordLabel {
            subject,
            seq,
            writer: writer.to_string(),
        })
    }

    /// Total order among versions of one subject: higher sequence wins, then the writer tag.
    pub fn rank(&self) -> (u64, &str) {
        (self.seq, &self.writer)
    }
}

/// `alias/<name>` (the service's own) or `<region>:<account>:alias/<name>`.
fn parse_alias_key(s: &str) -> Option<AliasKey> {
    if s.starts_with(AliasName::PREFIX) {
        return Some(AliasKey::own(AliasName::parse(s).ok()?));
    }
    let (region, rest) = s.split_once(':')?;
    let (account, name) = rest.split_once(':')?;
    let region_ok = region_name_ok(region);
    let account_ok = account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit());
    (region_ok && account_ok).then_some(())?;
    Some(AliasKey {
        owner: Some(ArnScope::new(region, account)),
        name: AliasName::parse(name).ok()?,
    })
}

/// Whether `region` can be a region in a label (lowercase letters, digits, `-`).
fn region_name_ok(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A record's value as stored: versioned JSON so the format can grow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    KeyV1(KeyRecord),
    AliasV1(AliasRecord),
    GrantV1(GrantRecord),
    /// A multi-Region key's replica in one region: a key record whose own fields (region,
    /// account, dates, state, description, policy, tags) are the replica's; its material's
    /// fields are written as they were then and never read (the key record's count).
    ReplicaV1(KeyRecord),
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data with derived impls cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a record value. A key record that this version cannot fully read (a field
    /// or enum value it does not know: a newer writer's, or damage) still decodes, to a record
    /// in state [`KeyState::Unknown`] with what could be read, so that the key stays known
    /// (and its backing keys are never taken for orphans). Anything else that does not parse
    /// is an incomplete or foreign object: `None`, ignored.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        if let Ok(r) = serde_json::from_slice(bytes) {
            return Some(r);
        }
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let kind = v.get("record")?.as_str()?;
        if kind.starts_with("grant_v") {
            return Self::unreadable_grant(&v);
        }
        if !kind.starts_with("key_v") {
            return None;
        }
        let id: KeyId = v.get("id")?.as_str()?.parse().ok()?;
        let int = |field: &str| v.get(field).and_then(serde_json::Value::as_i64);
        Some(Record::KeyV1(KeyRecord {
            id,
            created_ms: int("created_ms").unwrap_or(0),
            description: v
                .get("description")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            state: KeyState::Unknown,
            deletion_ms: None,
            pending_window_days: None,
            // Never used: a key in state Unknown is refused before any derivation.
            kdf: Kdf::AesCbcEncryptData,
            current_version: 0,
            versions: v
                .get("versions")
                .and_then(|vs| serde_json::from_value(vs.clone()).ok())
                .unwrap_or_default(),
            tags: Vec::new(),
            policy: None,
            spec: v
                .get("spec")
                .and_then(|x| serde_json::from_value(x.clone()).ok())
                .unwrap_or(KeySpec::SymmetricDefault),
            usage: v
                .get("usage")
                .and_then(|x| serde_json::from_value(x.clone()).ok())
                .unwrap_or(KeyUsage::EncryptDecrypt),
            public_key: None,
            account: v
                .get("account")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
            region: v
                .get("region")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
            import: v
                .get("import")
                .and_then(|x| serde_json::from_value(x.clone()).ok()),
            auto_rotation: None,
            on_demand_rotation_ms: None,
        }))
    }
}

impl Record {
    /// A grant record that does not fully parse: what can be read of it, allowing nothing
    /// (no operations, no grantee, a token secret no token verifies against).
    fn unreadable_grant(v: &serde_json::Value) -> Option<Record> {
        let grant_id = GrantId::parse(v.get("grant_id")?.as_str()?)?;
        let key_id: KeyId = v.get("key_id")?.as_str()?.parse().ok()?;
        let int = |field: &str| v.get(field).and_then(serde_json::Value::as_i64);
        Some(Record::GrantV1(GrantRecord {
            grant_id,
            key_id,
            name: None,
            grantee_principal: String::new(),
            retiring_principal: None,
            operations: Vec::new(),
            constraint: None,
            issuing_account: String::new(),
            created_ms: int("created_ms").unwrap_or(0),
            token_secret: GrantSecret(Vec::new().into()),
            // Anything there but a number still marks a tombstone.
            deleted_ms: v
                .get("deleted_ms")
                .filter(|d| !d.is_null())
                .map(|d| d.as_i64().unwrap_or(1)),
        }))
    }
}

mod key_id_str {
    use super::KeyId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &KeyId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<KeyId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom("bad key id"))
    }
}

mod opt_base64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(t) => STANDARD
                .decode(t)
                .map(Some)
                .map_err(|_| serde::de::Error::custom("bad base64")),
        }
    }
}

mod opt_key_id_str {
    use super::KeyId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &Option<KeyId>, s: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => s.collect_str(id),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<KeyId>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|_| serde::de::Error::custom("bad key id")),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_a_newer_writer_made_keep_the_key() {
        let id = KeyId::new_random();
        let good = Record::KeyV1(KeyRecord::for_tests(id, "d")).encode();
        let text = String::from_utf8(good).unwrap();
        for newer in [
            text.replace("\"Enabled\"", "\"SomeFutureState\""),
            text.replace("\"AES_CBC_ENCRYPT_DATA\"", "\"HKDF_SHA256\""),
            text.replace("\"key_v1\"", "\"key_v2\""),
            text.replace("\"current_version\":1", "\"current_version\":\"one\""),
        ] {
            let Some(Record::KeyV1(r)) = Record::decode(newer.as_bytes()) else {
                panic!("{newer} did not decode");
            };
            assert_eq!((r.id, r.state), (id, KeyState::Unknown), "{newer}");
            assert_eq!(r.versions.len(), 1);
            assert_eq!(r.state.as_str(), "Unavailable");
        }
        // Not a key record, or no usable id: not ours.
        assert_eq!(Record::decode(br#"{"record":"grant_v1","id":"x"}"#), None);
        assert_eq!(Record::decode(br#"{"record":"alias_v9","id":"x"}"#), None);
        assert_eq!(Record::decode(br#"{"record":"key_v3","id":"nope"}"#), None);
    }

    #[test]
    fn cmk_labels_and_ids() {
        let id = KeyId::new_random();
        assert_eq!(parse_cmk_label(&cmk_label(&id, 7)), Some((id, 7)));
        assert_eq!(parse_cmk_label("p11kms:cmk:x:v1"), None);
        let cid = cmk_id(&id, 7);
        assert_eq!(&cid[..16], id.as_bytes());
        assert_eq!(&cid[16..], &7u32.to_be_bytes());
    }

    #[test]
    fn labels_round_trip() {
        let id = KeyId::new_random();
        for subject in [
            Subject::Key(id),
            Subject::Alias(AliasKey::own(AliasName::parse("alias/a:b/c").unwrap())),
            Subject::Alias(AliasKey {
                owner: Some(ArnScope::new("eu-west-1", "444455556666")),
                name: AliasName::parse("alias/a:b/c").unwrap(),
            }),
            Subject::Grant(GrantId::from_bytes([0x5a; 32])),
            Subject::Replica("eu-west-1".into(), KeyId::new_multi_region(false)),
        ] {
            let l = RecordLabel {
                subject,
                seq: 42,
                writer: "0a1b2c3d".into(),
            };
            assert_eq!(RecordLabel::parse(&l.format()), Some(l));
        }
        assert_eq!(RecordLabel::parse("p11kms:key:nope:1:aa"), None);
        // A replica label names a multi-Region key, in a region of plain characters.
        let mrk = KeyId::new_multi_region(false);
        assert_eq!(
            RecordLabel::parse(&format!("p11kms:replica:eu-west-1:{id}:0000000001:ab")),
            None
        );
        assert_eq!(
            RecordLabel::parse(&format!("p11kms:replica:EU:{mrk}:0000000001:ab")),
            None
        );
        assert_eq!(
            RecordLabel::parse(&format!("p11kms:key:{mrk}:0000000001:ab")).map(|l| l.subject),
            Some(Subject::Key(mrk))
        );
        assert_eq!(RecordLabel::parse("other:thing"), None);
        assert_eq!(RecordLabel::parse(&format!("p11kms:key:{id}:x:aa")), None);
        let g = GrantId::from_bytes([0x5a; 32]);
        assert_eq!(
            RecordLabel::parse(&format!("p11kms:grant:{g}:0000000001:ab")).map(|l| l.subject),
            Some(Subject::Grant(g))
        );
        let upper = g.to_string().to_uppercase();
        assert_eq!(
            RecordLabel::parse(&format!("p11kms:grant:{upper}:0000000001:ab")),
            None
        );
        assert_eq!(RecordLabel::parse("p11kms:grant:abc:0000000001:ab"), None);
    }

    /// An older p11kms knows only key and alias labels: everything else (grants) must fail
    /// its parse and be left alone. Its parser is the one above minus the grant branch.
    #[test]
    fn grant_labels_are_not_key_or_alias_labels() {
        let g = GrantId::from_bytes([1; 32]);
        let label = RecordLabel {
            subject: Subject::Grant(g),
            seq: 3,
            writer: "0a1b2c3d".into(),
        }
        .format();
        let mut right = label.rsplitn(3, ':');
        let _ = (right.next(), right.next());
        let rest = right.next().unwrap();
        assert!(!rest.starts_with("p11kms:key:") && !rest.starts_with("p11kms:alias:"));
    }

    #[test]
    fn grant_records_round_trip_and_hide_their_secret() {
        let g = GrantRecord {
            grant_id: GrantId::from_bytes([3; 32]),
            key_id: KeyId::new_random(),
            name: Some("n".into()),
            grantee_principal: "arn:aws:iam::111122223333:user/a".into(),
            retiring_principal: None,
            operations: vec![GrantOperation::Decrypt, GrantOperation::Encrypt],
            constraint: Some(GrantConstraint::EncryptionContextEquals(
                [("k".to_string(), "v".to_string())].into(),
            )),
            issuing_account: "111122223333".into(),
            created_ms: 5,
            token_secret: GrantSecret(vec![7u8; 32].into()),
            deleted_ms: None,
        };
        let r = Record::GrantV1(g.clone());
        let enc = r.encode();
        let text = String::from_utf8_lossy(&enc).into_owned();
        assert!(text.contains("\"record\":\"grant_v1\""), "{text}");
        assert!(
            text.contains("\"encryption_context_equals\":{\"k\":\"v\"}"),
            "{text}"
        );
        assert!(
            !text.contains("deleted_ms") && !text.contains("retiring"),
            "{text}"
        );
        assert_eq!(Record::decode(&enc), Some(r));
        assert!(
            !format!("{g:?}").contains("7, 7"),
            "the secret is not printed"
        );
        // A grant record this version cannot fully read (an operation or a field it does
        // not know) allows nothing, but still counts; a newer tombstone is still a tombstone.
        for newer in [
            text.replace("\"Decrypt\"", "\"Frobnicate\""),
            text.replace("\"created_ms\"", "\"source_arn\":\"x\",\"created_ms\""),
        ] {
            let Some(Record::GrantV1(u)) = Record::decode(newer.as_bytes()) else {
                panic!("{newer} did not decode");
            };
            assert!(u.unreadable() && u.grantee_principal.is_empty(), "{u:?}");
            assert_eq!(
                (u.grant_id, u.key_id, u.deleted_ms),
                (g.grant_id, g.key_id, None)
            );
        }
        let tomb = text.replace("\"created_ms\"", "\"deleted_ms\":{\"at\":1},\"created_ms\"");
        let Some(Record::GrantV1(u)) = Record::decode(tomb.as_bytes()) else {
            panic!("{tomb}");
        };
        assert!(u.deleted_ms.is_some());
        assert_eq!(
            Record::decode(br#"{"record":"grant_v2","grant_id":"x","key_id":"y"}"#),
            None
        );
    }

    #[test]
    fn asymmetric_records_round_trip_and_symmetric_ones_read_as_before() {
        let sym = Record::KeyV1(KeyRecord::for_tests(KeyId::new_random(), "s"));
        let text = String::from_utf8(sym.encode()).unwrap();
        // An earlier version refuses a record with a field it does not know: symmetric
        // records carry none of the new ones.
        for field in ["\"spec\"", "\"usage\"", "\"public_key\""] {
            assert!(!text.contains(field), "{text}");
        }
        let asym = Record::KeyV1(KeyRecord {
            spec: KeySpec::EccNistP256,
            usage: KeyUsage::SignVerify,
            public_key: Some(vec![0x30, 0x59, 0xff]),
            ..KeyRecord::for_tests(KeyId::new_random(), "a")
        });
        let enc = asym.encode();
        let text = String::from_utf8_lossy(&enc);
        assert!(text.contains("\"spec\":\"ECC_NIST_P256\""), "{text}");
        assert!(text.contains("\"usage\":\"SIGN_VERIFY\""), "{text}");
        assert!(text.contains("\"public_key\":\"MFn/\""), "{text}");
        assert_eq!(Record::decode(&enc), Some(asym));
    }

    #[test]
    fn imported_records_round_trip_and_say_so() {
        let plain = KeyRecord::for_tests(KeyId::new_random(), "p");
        assert_eq!(plain.origin(), Origin::AwsKms);
        assert_eq!(
            plain.backing_kind().unwrap(),
            crate::hsm::BackingKind::Derive
        );
        let forged = KeyRecord {
            import: Some(Box::default()),
            ..plain.clone()
        };
        assert_eq!(
            forged.backing_kind().unwrap_err().aws_name(),
            "KeyUnavailableException"
        );
        let r = KeyRecord {
            id: KeyId::new_for_imported(),
            import: Some(Box::new(ImportedMaterial {
                expiration_model: Some(ExpirationModel::KeyMaterialExpires),
                valid_to_ms: Some(1_700_000_000_000),
                check: Some(vec![1, 2, 3]),
            })),
            ..plain.clone()
        };
        assert_eq!(r.origin(), Origin::External);
        assert!(r.has_imported_material());
        assert_eq!(r.backing_kind().unwrap(), crate::hsm::BackingKind::Imported);
        let enc = Record::KeyV1(r.clone()).encode();
        let text = String::from_utf8_lossy(&enc);
        assert!(
            text.contains(r#""import":{"expiration_model":"KEY_MATERIAL_EXPIRES","valid_to_ms":1700000000000,"check":"AQID"}"#),
            "{text}"
        );
        assert_eq!(Record::decode(&enc), Some(Record::KeyV1(r)));
        // Records of generated keys carry nothing new.
        let enc = Record::KeyV1(plain).encode();
        assert!(!String::from_utf8_lossy(&enc).contains("import"));
    }

    #[test]
    fn rotation_fields_are_absent_unless_used_and_round_trip() {
        let plain = Record::KeyV1(KeyRecord::for_tests(KeyId::new_random(), "r"));
        let text = String::from_utf8(plain.encode()).unwrap();
        for field in ["rotation", "on_demand"] {
            assert!(!text.contains(field), "{text}");
        }
        let mut r = KeyRecord::for_tests(KeyId::new_random(), "r");
        r.versions.push(BackingVersion {
            version: 2,
            created: 5,
            rotation: Some(RotationMark {
                kind: super::super::domain::RotationType::OnDemand,
                at_ms: 5000,
            }),
        });
        r.current_version = 2;
        r.auto_rotation = Some(AutoRotation {
            period_days: 90,
            next_ms: 7,
        });
        r.on_demand_rotation_ms = Some(9);
        let enc = Record::KeyV1(r.clone()).encode();
        let text = String::from_utf8_lossy(&enc);
        assert!(
            text.contains(
                r#"{"version":2,"created":5,"rotation":{"kind":"ON_DEMAND","at_ms":5000}}"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#""auto_rotation":{"period_days":90,"next_ms":7}"#),
            "{text}"
        );
        assert_eq!(Record::decode(&enc), Some(Record::KeyV1(r)));
    }

    #[test]
    fn key_material_ids_are_stable_and_distinct() {
        let id: KeyId = "1234abcd-12ab-34cd-56ef-1234567890ab".parse().unwrap();
        let a = key_material_id(&id, 1);
        assert_eq!(a.len(), 64);
        assert_eq!(a, key_material_id(&id, 1));
        assert_ne!(a, key_material_id(&id, 2));
        assert_ne!(a, key_material_id(&KeyId::new_random(), 1));
    }

    #[test]
    fn records_round_trip() {
        let r = Record::KeyV1(KeyRecord {
            state: KeyState::Disabled,
            ..KeyRecord::for_tests(KeyId::new_random(), "d")
        });
        assert_eq!(Record::decode(&r.encode()), Some(r.clone()));
        // The KDF's stored name is part of the record format.
        if let Record::KeyV1(k) = &r {
            let k2 = KeyRecord {
                kdf: Kdf::Sp800108CounterCmac,
                ..k.clone()
            };
            let enc = Record::KeyV1(k2.clone()).encode();
            assert!(String::from_utf8_lossy(&enc).contains("\"kdf\":\"SP800_108_COUNTER_CMAC\""));
            assert_eq!(Record::decode(&enc), Some(Record::KeyV1(k2)));
            assert!(
                String::from_utf8_lossy(&r.encode()).contains("\"kdf\":\"AES_CBC_ENCRYPT_DATA\"")
            );
        }
        let enc = r.encode();
        assert_eq!(Record::decode(&enc[..enc.len() - 1]), None);
        assert_eq!(Record::decode(b"\xff\x00 not json"), None);
        let a = Record::AliasV1(AliasRecord {
            name: "alias/x".into(),
            target: None,
            created_ms: 1,
            updated_ms: 2,
            owner: None,
        });
        assert_eq!(Record::decode(&a.encode()), Some(a));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            /// Labels and values found in the token are anyone's: never a panic.
            #[test]
            fn arbitrary_labels_and_values(label in "\\PC{0,120}", value in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = RecordLabel::parse(&label);
                let _ = RecordLabel::parse(&format!("p11kms:key:{label}"));
                let _ = RecordLabel::parse(&format!("p11kms:alias:alias/{label}:0000000001:ab"));
                let _ = RecordLabel::parse(&format!("p11kms:grant:{label}:0000000001:ab"));
                let _ = Record::decode(&value);
                let _ = parse_cmk_label(&format!("{CMK_LABEL_PREFIX}{label}"));
            }
        }
    }
}
