//! Key references: key ids, alias names, ARNs, and the four forms a `KeyId` parameter takes.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use crate::error::{KmsError, Result};

/// A CMK's id: a UUID v4, shown in lowercase hyphenated form as AWS does; a multi-Region
/// key's id is shown as `mrk-` and 32 lowercase hex digits, as AWS does (see
/// [`KeyId::new_multi_region`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Uuid);

impl KeyId {
    /// A new random key id.
    pub fn new_random() -> KeyId {
        KeyId(Uuid::new_v4())
    }

    /// A new random key id for a key with imported material: a UUID of version 8 (RFC 9562's
    /// custom version) instead of 4, with 118 random bits. Whether a key may be backed by an
    /// imported (unwrapped) token object is fixed by its id when it is created, so a record
    /// rewritten later to say `Origin=EXTERNAL` cannot make a generated key accept a planted
    /// object of known value (see `KeyRecord::backing_kind`).
    pub fn new_for_imported() -> KeyId {
        let mut b = Uuid::new_v4().into_bytes();
        b[6] = (b[6] & 0x0f) | 0x80;
        KeyId(Uuid::from_bytes(b))
    }

    /// Whether this id was made by [`KeyId::new_for_imported`] (UUID version 8).
    pub fn is_for_imported(&self) -> bool {
        self.0.as_bytes()[6] >> 4 == 8
    }

    /// A new random id for a multi-Region key: a UUID whose variant bits are `111` (RFC 9562's
    /// reserved variant, which neither [`KeyId::new_random`] nor [`KeyId::new_for_imported`]
    /// makes; their variant is `10`), shown as `mrk-<32 hex digits>`. Its version nibble is 4
    /// (generated material) or 8 (imported), as for single-Region ids, so the two markers
    /// never collide. Whether a key is multi-Region is fixed by its id: an id in one form is
    /// never read in the other (a UUID text with these variant bits is not a key id).
    pub fn new_multi_region(imported: bool) -> KeyId {
        let mut b = if imported {
            *Self::new_for_imported().as_bytes()
        } else {
            *Self::new_random().as_bytes()
        };
        b[8] |= 0xe0;
        KeyId(Uuid::from_bytes(b))
    }

    /// Whether this is a multi-Region key's id (made by [`KeyId::new_multi_region`]).
    pub fn is_multi_region(&self) -> bool {
        self.0.as_bytes()[8] >> 5 == 0b111
    }

    /// The key id of 16 bytes (as stored in ciphertexts and `CKA_ID`).
    pub fn from_bytes(b: [u8; 16]) -> KeyId {
        KeyId(Uuid::from_bytes(b))
    }

    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_multi_region() {
            write!(f, "{MRK_PREFIX}{}", self.0.simple())
        } else {
            self.0.hyphenated().fmt(f)
        }
    }
}

/// How a multi-Region key's id starts.
const MRK_PREFIX: &str = "mrk-";

impl FromStr for KeyId {
    type Err = KmsError;
    /// Only the canonical 36-character hyphenated form (any case) of a single-Region id, or
    /// `mrk-` and 32 hex digits (any case) of a multi-Region one, is a key id.
    fn from_str(s: &str) -> Result<KeyId> {
        let invalid = || KmsError::not_found(format!("Invalid keyId {s}"));
        let (multi, uuid) = match s.strip_prefix(MRK_PREFIX) {
            Some(hex) if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                (true, Uuid::parse_str(hex).map_err(|_| invalid())?)
            }
            Some(_) => return Err(invalid()),
            None if s.len() == 36 => (false, Uuid::parse_str(s).map_err(|_| invalid())?),
            None => return Err(invalid()),
        };
        let id = KeyId(uuid);
        if id.is_multi_region() != multi {
            return Err(invalid());
        }
        Ok(id)
    }
}

/// An alias name, always including the `alias/` prefix, validated as AWS does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AliasName(String);

impl AliasName {
    /// Every alias name starts with this.
    pub const PREFIX: &'static str = "alias/";

    /// Validates a name for CreateAlias/UpdateAlias/DeleteAlias.
    pub fn parse(s: &str) -> Result<AliasName> {
        if s.is_empty() || s.len() > 256 {
            return Err(KmsError::validation(
                "AliasName must be between 1 and 256 characters long",
            ));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'/' | b'_' | b'-'))
        {
            return Err(KmsError::validation(format!(
                "Alias name {s} must satisfy the pattern ^[a-zA-Z0-9:/_-]+$"
            )));
        }
        if !s.starts_with(Self::PREFIX) || s.len() == Self::PREFIX.len() {
            return Err(KmsError::invalid_alias_name(format!(
                "Alias must start with the prefix \"alias/\" and have a name: {s}"
            )));
        }
        if s.starts_with("alias/aws/") {
            return Err(KmsError::invalid_alias_name(format!(
                "Alias names starting with alias/aws/ are reserved for AWS managed keys: {s}"
            )));
        }
        Ok(AliasName(s.to_string()))
    }

    /// The name, `alias/...`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AliasName {
    /// A name that sorts before every valid alias name (a range's start).
    pub(crate) fn lowest() -> AliasName {
        AliasName(String::new())
    }
}

impl fmt::Display for AliasName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The region and account that ARNs are built in (and that keys and aliases belong to).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ArnScope {
    /// The AWS region in ARNs.
    pub region: String,
    /// The AWS account id in ARNs.
    pub account: String,
}

impl ArnScope {
    /// ARNs of `region` and `account`.
    pub fn new(region: &str, account: &str) -> ArnScope {
        ArnScope {
            region: region.to_string(),
            account: account.to_string(),
        }
    }

    fn prefix(&self) -> String {
        format!("arn:aws:kms:{}:{}:", self.region, self.account)
    }

    /// `arn:aws:kms:<region>:<account>:key/<id>`.
    pub fn key_arn(&self, id: &KeyId) -> String {
        format!("{}key/{id}", self.prefix())
    }

    /// `arn:aws:kms:<region>:<account>:alias/<name>`.
    pub fn alias_arn(&self, alias: &AliasName) -> String {
        format!("{}{alias}", self.prefix())
    }
}

/// An alias as the store keeps it: its name within its region and account (`owner`;
/// `None`: the service's own, whose records read the same to earlier versions).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AliasKey {
    /// The alias's region and account (`None`: the service's own).
    pub owner: Option<ArnScope>,
    /// Its name, `alias/...`.
    pub name: AliasName,
}

impl AliasKey {
    /// The alias `name` of the service's own region and account.
    pub fn own(name: AliasName) -> AliasKey {
        AliasKey { owner: None, name }
    }
}

/// What a `KeyId` request parameter names: a key directly, or an alias to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// A key id or key ARN.
    Id(KeyId),
    /// An alias name or alias ARN.
    Alias(AliasName),
}

/// A `KeyId` member as an operation receives it: the caller's text, in any form the
/// operation accepts, or a key the layer above has resolved (and authorized) already. That one
/// is passed on as the id itself: nothing parses it again, and an alias moved meanwhile cannot
/// change which key is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySelector {
    /// As the caller wrote it: a key id, key ARN, alias name or alias ARN.
    Named(String),
    /// A key resolved before the operation.
    Resolved(KeyId),
    /// A multi-Region key resolved before the operation to its key in a region (the primary
    /// or a replica: the one whose state, policy and tags count there).
    ResolvedIn(KeyId, String),
}

impl From<String> for KeySelector {
    fn from(s: String) -> Self {
        KeySelector::Named(s)
    }
}

impl From<&str> for KeySelector {
    fn from(s: &str) -> Self {
        KeySelector::Named(s.to_owned())
    }
}

impl From<KeyId> for KeySelector {
    fn from(id: KeyId) -> Self {
        KeySelector::Resolved(id)
    }
}

impl fmt::Display for KeySelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySelector::Named(s) => f.write_str(s),
            KeySelector::Resolved(id) | KeySelector::ResolvedIn(id, _) => id.fmt(f),
        }
    }
}

impl<'de> serde::Deserialize<'de> for KeySelector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d).map(KeySelector::Named)
    }
}

/// Which `KeyId` forms an operation accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forms {
    /// Key id, key ARN, alias name, alias ARN (crypto operations, DescribeKey).
    Any,
    /// Key id or key ARN only (EnableKey, DisableKey, deletion, alias targets...).
    KeyOnly,
}

impl KeyRef {
    /// Parses a `KeyId` parameter. Unknown shapes answer `NotFoundException` ("Invalid keyId"),
    /// as AWS KMS does; an ARN of another region or account is not found here either.
    pub fn parse(s: &str, scope: &ArnScope, forms: Forms) -> Result<KeyRef> {
        if s.is_empty() || s.len() > 2048 {
            return Err(KmsError::validation(
                "KeyId must be between 1 and 2048 characters long",
            ));
        }
        let r = if s.starts_with("arn:") {
            let prefix = scope.prefix();
            let Some(resource) = s.strip_prefix(prefix.as_str()) else {
                return Err(KmsError::not_found(format!(
                    "Invalid arn {s}: not a KMS ARN in {} account {}",
                    scope.region, scope.account
                )));
            };
            if let Some(id) = resource.strip_prefix("key/") {
                KeyRef::Id(id.parse()?)
            } else if resource.starts_with(AliasName::PREFIX) {
                KeyRef::Alias(parse_alias_ref(resource)?)
            } else {
                return Err(KmsError::not_found(format!("Invalid arn {s}")));
            }
        } else if s.starts_with(AliasName::PREFIX) {
            KeyRef::Alias(parse_alias_ref(s)?)
        } else {
            KeyRef::Id(s.parse()?)
        };
        if forms == Forms::KeyOnly && matches!(r, KeyRef::Alias(_)) {
            return Err(KmsError::not_found(format!(
                "Invalid keyId {s}: this operation takes a key id or key ARN, not an alias"
            )));
        }
        Ok(r)
    }
}

/// An alias used as a reference: a malformed one simply names nothing.
fn parse_alias_ref(s: &str) -> Result<AliasName> {
    AliasName::parse(s).map_err(|_| KmsError::not_found(format!("Alias {s} is not found.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imported_keys_have_ids_of_their_own() {
        for _ in 0..64 {
            let g = KeyId::new_random();
            let i = KeyId::new_for_imported();
            assert!(!g.is_for_imported() && i.is_for_imported());
            let text = i.to_string();
            assert_eq!(&text[14..15], "8", "{text}");
            assert_eq!(text.parse::<KeyId>().unwrap(), i);
            assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"), "{text}");
        }
    }

    #[test]
    fn multi_region_ids_are_never_single_region_ones() {
        for imported in [false, true] {
            for _ in 0..64 {
                let m = KeyId::new_multi_region(imported);
                assert!(m.is_multi_region());
                assert_eq!(m.is_for_imported(), imported);
                assert!(!KeyId::new_random().is_multi_region());
                assert!(!KeyId::new_for_imported().is_multi_region());
                let text = m.to_string();
                assert!(text.starts_with("mrk-") && text.len() == 36, "{text}");
                assert!(text[4..]
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
                assert_eq!(text.parse::<KeyId>().unwrap(), m);
                assert_eq!(
                    text.to_uppercase()
                        .replace("MRK-", "mrk-")
                        .parse::<KeyId>()
                        .unwrap(),
                    m
                );
                // The same 16 bytes in UUID form name nothing, and a UUID-form id's bytes in
                // mrk- form name nothing.
                let uuid = Uuid::from_bytes(*m.as_bytes()).hyphenated().to_string();
                assert!(uuid.parse::<KeyId>().is_err(), "{uuid}");
                let single = KeyId::new_random();
                let mrk = format!("mrk-{}", Uuid::from_bytes(*single.as_bytes()).simple());
                assert!(mrk.parse::<KeyId>().is_err(), "{mrk}");
            }
        }
        for bad in [
            "mrk-",
            "mrk-1234",
            "mrk-1234abcd12ab34cd56ef1234567890abc",
            "mrk-1234abcd-12ab-34cd-56ef-1234567890ab",
            "MRK-1234abcd12ab34cd56ef1234567890ab",
        ] {
            assert_eq!(
                bad.parse::<KeyId>().unwrap_err().aws_name(),
                "NotFoundException",
                "{bad}"
            );
        }
        let m = KeyId::new_multi_region(false);
        let s = scope();
        assert_eq!(
            KeyRef::parse(&m.to_string(), &s, Forms::KeyOnly).unwrap(),
            KeyRef::Id(m)
        );
        assert_eq!(
            KeyRef::parse(&s.key_arn(&m), &s, Forms::Any).unwrap(),
            KeyRef::Id(m)
        );
        assert_eq!(
            s.key_arn(&m),
            format!("arn:aws:kms:us-east-2:111122223333:key/{m}")
        );
    }

    fn scope() -> ArnScope {
        ArnScope::new("us-east-2", "111122223333")
    }

    const ID: &str = "1234abcd-12ab-34cd-56ef-1234567890ab";

    #[test]
    fn four_forms() {
        let s = scope();
        let id: KeyId = ID.parse().unwrap();
        assert_eq!(KeyRef::parse(ID, &s, Forms::Any).unwrap(), KeyRef::Id(id));
        let arn = s.key_arn(&id);
        assert_eq!(arn, format!("arn:aws:kms:us-east-2:111122223333:key/{ID}"));
        assert_eq!(
            KeyRef::parse(&arn, &s, Forms::KeyOnly).unwrap(),
            KeyRef::Id(id)
        );
        let alias = AliasName::parse("alias/app-key").unwrap();
        assert_eq!(
            KeyRef::parse("alias/app-key", &s, Forms::Any).unwrap(),
            KeyRef::Alias(alias.clone())
        );
        let aarn = s.alias_arn(&alias);
        assert_eq!(aarn, "arn:aws:kms:us-east-2:111122223333:alias/app-key");
        assert_eq!(
            KeyRef::parse(&aarn, &s, Forms::Any).unwrap(),
            KeyRef::Alias(alias)
        );
    }

    #[test]
    fn key_only_refuses_aliases() {
        let e = KeyRef::parse("alias/x", &scope(), Forms::KeyOnly).unwrap_err();
        assert_eq!(e.aws_name(), "NotFoundException");
        let e = KeyRef::parse(
            "arn:aws:kms:us-east-2:111122223333:alias/x",
            &scope(),
            Forms::KeyOnly,
        )
        .unwrap_err();
        assert_eq!(e.aws_name(), "NotFoundException");
    }

    #[test]
    fn bad_references() {
        let s = scope();
        assert_eq!(
            KeyRef::parse("", &s, Forms::Any).unwrap_err().aws_name(),
            "ValidationException"
        );
        for bad in [
            "not-a-key",
            "1234abcd12ab34cd56ef1234567890ab",
            "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:us-east-2:999999999999:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:kms:us-east-2:111122223333:thing/x",
            "alias/bad name",
        ] {
            assert_eq!(
                KeyRef::parse(bad, &s, Forms::Any).unwrap_err().aws_name(),
                "NotFoundException",
                "{bad}"
            );
        }
        assert!(KeyRef::parse(&"a".repeat(2049), &s, Forms::Any).is_err());
    }

    #[test]
    fn alias_names() {
        assert!(AliasName::parse("alias/a:b/c_d-e9").is_ok());
        assert_eq!(
            AliasName::parse("alias/aws/x").unwrap_err().aws_name(),
            "InvalidAliasNameException"
        );
        assert_eq!(
            AliasName::parse("noprefix").unwrap_err().aws_name(),
            "InvalidAliasNameException"
        );
        assert_eq!(
            AliasName::parse("alias/").unwrap_err().aws_name(),
            "InvalidAliasNameException"
        );
        assert_eq!(
            AliasName::parse("alias/sp ace").unwrap_err().aws_name(),
            "ValidationException"
        );
        assert_eq!(
            AliasName::parse(&format!("alias/{}", "a".repeat(251)))
                .unwrap_err()
                .aws_name(),
            "ValidationException"
        );
        assert!(AliasName::parse(&format!("alias/{}", "a".repeat(250))).is_ok());
    }

    #[test]
    fn key_id_display_is_lowercase() {
        let id: KeyId = ID.to_uppercase().parse().unwrap();
        assert_eq!(id.to_string(), ID);
        assert_eq!(KeyId::from_bytes(*id.as_bytes()), id);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            /// Any KeyId text: a reference or one of the documented errors; never a panic.
            #[test]
            fn arbitrary_key_ids(s in "\\PC{0,300}") {
                let scope = ArnScope::new("us-east-2", "111122223333");
                for forms in [Forms::Any, Forms::KeyOnly] {
                    for text in [s.clone(), format!("alias/{s}"), format!("arn:aws:kms:us-east-2:111122223333:{s}")] {
                        if let Err(e) = KeyRef::parse(&text, &scope, forms) {
                            prop_assert!(matches!(
                                e.aws_name(),
                                "NotFoundException" | "ValidationException" | "InvalidAliasNameException"
                            ), "{}", e.aws_name());
                        }
                    }
                }
                let _ = AliasName::parse(&s);
            }
        }
    }
}
