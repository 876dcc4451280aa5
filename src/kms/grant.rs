//! Grants, the pure part: grant ids, grant tokens, encryption context constraints and how they
//! match, which operations a key can grant, and the shape rules of CreateGrant's members.
//! The records are in `records.rs`, the store's part in `store/grants.rs`, the operations in
//! `ops/grants.rs`.
//!
//! **Grant tokens.** A token is `base64url(version ‖ grant id ‖ salt ‖ tag)` without padding:
//! one version byte (1), the grant id's 32 bytes, 16 random bytes chosen per CreateGrant
//! call, and `HMAC-SHA256(secret, "p11kms-grant-token-v1" ‖ grant id ‖ salt)` cut to 16
//! bytes, where `secret` is 32 random bytes kept in the grant's record (in the token, private).
//! So every CreateGrant call hands out a different token, all of them good for the grant (as
//! AWS documents), a grant id alone (which ListGrants shows) forges none, and a token names its
//! grant without a look-up. A token of any other length is malformed before it is decoded:
//! hostile input costs a length comparison.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::domain::{GrantOperation, KeySpec, KeyUsage};
use super::keyref::KeyId;
use crate::error::{KmsError, Result};

/// AWS's quota of grants per KMS key.
pub const MAX_GRANTS_PER_KEY: usize = 50_000;
/// Pairs in one encryption context constraint (AWS: up to 8).
pub const MAX_CONSTRAINT_PAIRS: usize = 8;
/// Characters of one encryption context constraint, its keys and values together (AWS: "the
/// encryption context value in each constraint cannot exceed 384 characters").
pub const MAX_CONSTRAINT_CHARS: usize = 384;
/// Grant tokens per request (AWS's `GrantTokenList`).
pub const MAX_GRANT_TOKENS: usize = 10;
/// Characters per grant token (AWS's `GrantTokenType`).
pub const MAX_GRANT_TOKEN_CHARS: usize = 8192;

const TOKEN_VERSION: u8 = 1;
const SALT_LEN: usize = 16;
const TAG_LEN: usize = 16;
const TOKEN_RAW_LEN: usize = 1 + 32 + SALT_LEN + TAG_LEN;
/// Characters of a token: base64 without padding of [`TOKEN_RAW_LEN`] bytes.
pub const TOKEN_LEN: usize = (TOKEN_RAW_LEN * 4).div_ceil(3);
const TOKEN_CONTEXT: &[u8] = b"p11kms-grant-token-v1";
/// Bytes of a grant's token secret.
pub const SECRET_LEN: usize = 32;

/// A grant id: 32 random bytes, shown as 64 lowercase hex digits as AWS shows its grant ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantId([u8; 32]);

impl GrantId {
    /// The grant id of these 32 bytes.
    pub fn from_bytes(b: [u8; 32]) -> GrantId {
        GrantId(b)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Exactly 64 lowercase hex digits; anything else names no grant.
    pub fn parse(s: &str) -> Option<GrantId> {
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b).ok()?;
        Some(GrantId(b))
    }

    /// A `GrantId` request member: malformed is AWS's `InvalidGrantIdException`.
    pub fn parse_member(s: &str) -> Result<GrantId> {
        GrantId::parse(s).ok_or_else(|| {
            KmsError::invalid_grant_id(format!(
                "Invalid grant id {}: a grant id is 64 hexadecimal digits",
                clip(s)
            ))
        })
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GrantId({self})")
    }
}

impl Serialize for GrantId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GrantId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        GrantId::parse(&s).ok_or_else(|| serde::de::Error::custom("bad grant id"))
    }
}

/// The secret a grant's tokens are made and checked with (base64 in the record, never
/// printed).
#[derive(Clone, PartialEq, Eq)]
pub struct GrantSecret(pub Zeroizing<Vec<u8>>);

impl fmt::Debug for GrantSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GrantSecret(<redacted>)")
    }
}

impl Serialize for GrantSecret {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use base64::engine::general_purpose::STANDARD;
        s.serialize_str(&Zeroizing::new(STANDARD.encode(&*self.0)))
    }
}

impl<'de> Deserialize<'de> for GrantSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use base64::engine::general_purpose::STANDARD;
        let text = Zeroizing::new(String::deserialize(d)?);
        let bytes = STANDARD
            .decode(text.as_bytes())
            .map_err(|_| serde::de::Error::custom("bad base64"))?;
        if bytes.len() != SECRET_LEN {
            return Err(serde::de::Error::custom("bad grant secret"));
        }
        Ok(GrantSecret(Zeroizing::new(bytes)))
    }
}

/// A grant's encryption context constraint (a grant has at most one, see
/// [`check_constraints`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantConstraint {
    /// `EncryptionContextEquals`: the request's context is exactly these pairs.
    EncryptionContextEquals(BTreeMap<String, String>),
    /// `EncryptionContextSubset`: the request's context includes these pairs.
    EncryptionContextSubset(BTreeMap<String, String>),
}

/// Whether `a` and `b` name the same encryption context key in a grant constraint: AWS
/// compares constraint keys without regard to case (values exactly).
fn same_key(a: &str, b: &str) -> bool {
    a == b || a.to_lowercase() == b.to_lowercase()
}

/// Every pair of `part` is in `whole` (keys compared as [`same_key`], values exactly).
fn pairs_within(part: &BTreeMap<String, String>, whole: &BTreeMap<String, String>) -> bool {
    part.iter().all(|(k, v)| {
        // The exact key first (the common case: one map look-up).
        whole.get(k) == Some(v) || whole.iter().any(|(wk, wv)| wv == v && same_key(wk, k))
    })
}

impl GrantConstraint {
    /// Whether a request with encryption context `context` satisfies the constraint. A
    /// request without a context (an operation that takes none) satisfies none.
    pub fn allows(&self, context: Option<&BTreeMap<String, String>>) -> bool {
        let Some(ctx) = context else { return false };
        match self {
            GrantConstraint::EncryptionContextSubset(want) => pairs_within(want, ctx),
            GrantConstraint::EncryptionContextEquals(want) => {
                pairs_within(want, ctx) && pairs_within(ctx, want)
            }
        }
    }

    /// The pairs.
    pub fn pairs(&self) -> &BTreeMap<String, String> {
        match self {
            GrantConstraint::EncryptionContextEquals(p)
            | GrantConstraint::EncryptionContextSubset(p) => p,
        }
    }
}

/// Whether a grant created with the CreateGrant permission of a `parent` grant may carry
/// `child` as its constraint: AWS requires it to be "equally strict or stricter". No parent
/// constraint allows any; `EncryptionContextEquals` allows only the same pairs, as Equals;
/// `EncryptionContextSubset` allows Subset or Equals constraints that include its pairs.
pub fn constraint_at_least_as_strict(
    child: Option<&GrantConstraint>,
    parent: Option<&GrantConstraint>,
) -> bool {
    use GrantConstraint::{EncryptionContextEquals as Equals, EncryptionContextSubset as Subset};
    match (parent, child) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(Equals(p)), Some(Equals(c))) => {
            p.len() == c.len() && pairs_within(p, c) && pairs_within(c, p)
        }
        (Some(Equals(_)), Some(Subset(_))) => false,
        (Some(Subset(p)), Some(Equals(c) | Subset(c))) => pairs_within(p, c),
    }
}

/// CreateGrant's `Constraints` members into the one constraint a grant keeps. An empty map is
/// no constraint; both members at once, more than [`MAX_CONSTRAINT_PAIRS`] pairs or more than
/// [`MAX_CONSTRAINT_CHARS`] characters are `ValidationException`.
pub fn check_constraints(
    equals: Option<BTreeMap<String, String>>,
    subset: Option<BTreeMap<String, String>>,
) -> Result<Option<GrantConstraint>> {
    let equals = equals.filter(|m| !m.is_empty());
    let subset = subset.filter(|m| !m.is_empty());
    let c =
        match (equals, subset) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => return Err(KmsError::validation(
                "Constraints may hold EncryptionContextEquals or EncryptionContextSubset, not both",
            )),
            (Some(e), None) => GrantConstraint::EncryptionContextEquals(e),
            (None, Some(s)) => GrantConstraint::EncryptionContextSubset(s),
        };
    let pairs = c.pairs();
    if pairs.len() > MAX_CONSTRAINT_PAIRS {
        return Err(KmsError::validation(format!(
            "A grant constraint can include at most {MAX_CONSTRAINT_PAIRS} encryption context \
             pairs; this one has {}",
            pairs.len()
        )));
    }
    let chars: usize = pairs
        .iter()
        .map(|(k, v)| k.chars().count() + v.chars().count())
        .sum();
    if chars > MAX_CONSTRAINT_CHARS {
        return Err(KmsError::validation(format!(
            "A grant constraint's encryption context can be at most {MAX_CONSTRAINT_CHARS} \
             characters long; this one has {chars}"
        )));
    }
    Ok(Some(c))
}

/// Whether a grant for a key of `spec` and `usage` may list `op` (AWS's table of grant
/// operations per key type; CreateGrant answers `ValidationException` otherwise).
pub fn grantable(spec: KeySpec, usage: KeyUsage, op: GrantOperation) -> bool {
    use GrantOperation as G;
    match op {
        G::CreateGrant | G::RetireGrant | G::DescribeKey => true,
        G::Encrypt | G::Decrypt | G::ReEncryptFrom | G::ReEncryptTo => {
            usage == KeyUsage::EncryptDecrypt
        }
        G::GenerateDataKey
        | G::GenerateDataKeyWithoutPlaintext
        | G::GenerateDataKeyPair
        | G::GenerateDataKeyPairWithoutPlaintext => {
            spec == KeySpec::SymmetricDefault && usage == KeyUsage::EncryptDecrypt
        }
        G::GetPublicKey => {
            spec != KeySpec::SymmetricDefault
                && matches!(
                    usage,
                    KeyUsage::EncryptDecrypt | KeyUsage::SignVerify | KeyUsage::KeyAgreement
                )
        }
        G::Sign | G::Verify => usage == KeyUsage::SignVerify,
        G::GenerateMac | G::VerifyMac => usage == KeyUsage::GenerateVerifyMac,
        G::DeriveSharedSecret => usage == KeyUsage::KeyAgreement,
        // ML-KEM keys (KEY_ENCAPSULATION): p11kms has none.
        G::Encapsulate | G::Decapsulate => false,
    }
}

/// Whether `op` on a key of `spec` and `usage` takes an encryption context (the only
/// operations an encryption context constraint can apply to: the cryptographic operations of
/// symmetric encryption keys).
pub fn takes_context(spec: KeySpec, usage: KeyUsage, op: GrantOperation) -> bool {
    use GrantOperation as G;
    spec == KeySpec::SymmetricDefault
        && usage == KeyUsage::EncryptDecrypt
        && matches!(
            op,
            G::Encrypt
                | G::Decrypt
                | G::ReEncryptFrom
                | G::ReEncryptTo
                | G::GenerateDataKey
                | G::GenerateDataKeyWithoutPlaintext
                | G::GenerateDataKeyPair
                | G::GenerateDataKeyPairWithoutPlaintext
        )
}

/// Operations a constraint never applies to (AWS: "the constraint doesn't apply to these
/// operations"). For CreateGrant by a grantee, AWS also requires the new grant's constraint
/// to be as strict or stricter: that rule belongs to the authorizer.
pub fn unconstrained(op: GrantOperation) -> bool {
    matches!(
        op,
        GrantOperation::DescribeKey | GrantOperation::RetireGrant | GrantOperation::CreateGrant
    )
}

/// CreateGrant's `Operations`: at least one, each an AWS grant operation, each valid for the
/// key; returned sorted without duplicates. A constraint is refused when the grant lists a
/// cryptographic operation that takes no encryption context (asymmetric and HMAC keys).
pub fn check_operations(
    ops: &[String],
    spec: KeySpec,
    usage: KeyUsage,
    constraint: Option<&GrantConstraint>,
) -> Result<Vec<GrantOperation>> {
    use super::domain::AwsEnum as _;
    if ops.is_empty() {
        return Err(KmsError::validation(
            "1 validation error detected: Value '[]' at 'operations' failed to satisfy \
             constraint: Member must have length greater than or equal to 1",
        ));
    }
    let mut parsed = Vec::with_capacity(ops.len());
    for o in ops {
        parsed.push(GrantOperation::parse(o, "operations")?);
    }
    parsed.sort_unstable();
    parsed.dedup();
    for op in &parsed {
        if !grantable(spec, usage, *op) {
            return Err(KmsError::validation(format!(
                "Grant operation {op} is not valid for a key with KeySpec {spec} and KeyUsage \
                 {usage}"
            )));
        }
    }
    if constraint.is_some() {
        if let Some(op) = parsed
            .iter()
            .find(|op| !unconstrained(**op) && !takes_context(spec, usage, **op))
        {
            return Err(KmsError::validation(format!(
                "Encryption context grant constraints are not supported for {op} on a key with \
                 KeySpec {spec}: it takes no encryption context"
            )));
        }
    }
    Ok(parsed)
}

/// A grant `Name`: 1 to 256 characters of `[a-zA-Z0-9:/_-]` (AWS's `GrantNameType`).
pub fn check_name(name: &str) -> Result<()> {
    super::validation::length(
        "name",
        super::validation::Shown::Value(name.to_owned()),
        name.chars().count(),
        1,
        256,
    )?;
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'/' | b'_' | b'-'))
    {
        return Err(KmsError::validation(format!(
            "1 validation error detected: Value '{}' at 'name' failed to satisfy constraint: \
             Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$",
            clip(name)
        )));
    }
    Ok(())
}

/// A principal member (`GranteePrincipal`, `RetiringPrincipal`): 1 to 256 characters of
/// `[\w+=,.@:/-]` (AWS's `PrincipalIdType`, else `ValidationException`), and an IAM or STS
/// ARN with a 12-digit account (else `InvalidArnException`).
pub fn check_principal(p: &str, member: &str) -> Result<()> {
    super::validation::length(
        member,
        super::validation::Shown::Value(p.to_owned()),
        p.chars().count(),
        1,
        256,
    )?;
    if !p.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'_' | b'+' | b'=' | b',' | b'.' | b'@' | b':' | b'/' | b'-'
            )
    }) {
        return Err(KmsError::validation(format!(
            "1 validation error detected: Value '{}' at '{member}' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: ^[\\w+=,.@:/-]+$",
            clip(p)
        )));
    }
    if principal_account(p).is_none() {
        return Err(KmsError::invalid_arn(format!(
            "{member} {} is not the ARN of an AWS principal \
             (arn:aws:iam::<account>:<user, role or root> or arn:aws:sts::<account>:...)",
            clip(p)
        )));
    }
    Ok(())
}

/// The account of a principal ARN `arn:<partition>:iam::<account>:<resource>` (or `sts`), if
/// it is one.
pub fn principal_account(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    let (arn_, partition, service, region, account, resource) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    let ok = arn_ == "arn"
        && !partition.is_empty()
        && partition
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'-')
        && matches!(service, "iam" | "sts")
        && region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !resource.is_empty();
    ok.then_some(account)
}

/// The IAM ARN of an account's root, as ListGrants shows `IssuingAccount`.
pub fn account_root_arn(account: &str) -> String {
    format!("arn:aws:iam::{account}:root")
}

/// A grant token that has the right shape, before anything is looked up.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedToken {
    /// The grant the token names (not yet checked against the grant's secret).
    pub grant_id: GrantId,
    salt: [u8; SALT_LEN],
    tag: [u8; TAG_LEN],
}

impl fmt::Debug for ParsedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParsedToken({})", self.grant_id)
    }
}

fn token_tag(secret: &[u8], id: &GrantId, salt: &[u8; SALT_LEN]) -> [u8; TAG_LEN] {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return [0u8; TAG_LEN],
    };
    mac.update(TOKEN_CONTEXT);
    mac.update(id.as_bytes());
    mac.update(salt);
    let full = mac.finalize().into_bytes();
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&full[..TAG_LEN]);
    tag
}

/// A new token for grant `id` with its record's `secret`, `salt` random per call.
pub fn make_token(id: &GrantId, secret: &[u8], salt: [u8; SALT_LEN]) -> String {
    let mut raw = Vec::with_capacity(TOKEN_RAW_LEN);
    raw.push(TOKEN_VERSION);
    raw.extend_from_slice(id.as_bytes());
    raw.extend_from_slice(&salt);
    raw.extend_from_slice(&token_tag(secret, id, &salt));
    URL_SAFE_NO_PAD.encode(raw)
}

/// The grant a token names, if it has the shape of one of ours (checked before decoding: any
/// other length is refused by one comparison).
pub fn parse_token(token: &str) -> Option<ParsedToken> {
    if token.len() != TOKEN_LEN {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(token.as_bytes()).ok()?;
    if raw.len() != TOKEN_RAW_LEN || raw[0] != TOKEN_VERSION {
        return None;
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&raw[1..33]);
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&raw[33..33 + SALT_LEN]);
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&raw[33 + SALT_LEN..]);
    Some(ParsedToken {
        grant_id: GrantId(id),
        salt,
        tag,
    })
}

impl ParsedToken {
    /// Whether the token was made with this grant's `secret` (compared in constant time).
    pub fn verify(&self, secret: &[u8]) -> bool {
        // An unreadable grant's empty secret verifies nothing.
        if secret.len() != SECRET_LEN {
            return false;
        }
        token_tag(secret, &self.grant_id, &self.salt)
            .ct_eq(&self.tag)
            .into()
    }
}

/// The grant tokens of a request that have our shape, bounded: at most
/// [`MAX_GRANT_TOKENS`] looked at, each over [`MAX_GRANT_TOKEN_CHARS`] ignored.
pub fn parse_tokens(tokens: &[String]) -> Vec<ParsedToken> {
    tokens
        .iter()
        .take(MAX_GRANT_TOKENS)
        .filter(|t| t.len() <= MAX_GRANT_TOKEN_CHARS)
        .filter_map(|t| parse_token(t))
        .collect()
}

/// A grant as the authorization layer sees it (everything but its token secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantView {
    /// The key the grant is on.
    pub key_id: KeyId,
    /// The grant's id.
    pub grant_id: GrantId,
    /// Its `Name`, if it was given one.
    pub name: Option<String>,
    /// Who the grant lets use the key (an IAM or STS ARN, compared exactly).
    pub grantee_principal: String,
    /// Who may retire it, besides what [`GrantView::retirable_by`] says.
    pub retiring_principal: Option<String>,
    /// The operations it allows: sorted, without duplicates.
    pub operations: Vec<GrantOperation>,
    /// Its encryption context constraint.
    pub constraint: Option<GrantConstraint>,
    /// The account id of the principal that created the grant.
    pub issuing_account: String,
    /// When it was created (Unix milliseconds).
    pub created_ms: i64,
}

impl GrantView {
    /// Whether this grant lets `grantee_arn` call `op` with encryption context `context`
    /// (`None`: the operation takes none): the grantee is the caller (exact ARN), the grant
    /// lists the operation, and its constraint, if any, holds (constraints do not apply to
    /// DescribeKey, RetireGrant and CreateGrant).
    pub fn allows(
        &self,
        grantee_arn: &str,
        op: GrantOperation,
        context: Option<&BTreeMap<String, String>>,
    ) -> bool {
        self.grantee_principal == grantee_arn
            && self.operations.contains(&op)
            && (unconstrained(op) || self.constraint.as_ref().is_none_or(|c| c.allows(context)))
    }

    /// Whether the grant itself lets `caller_arn` retire it: its retiring principal, or its
    /// grantee when it lists RetireGrant. (AWS also lets the account that created the grant
    /// retire it: that takes the caller's account and its permissions, the wire layer's.)
    pub fn retirable_by(&self, caller_arn: &str) -> bool {
        self.retiring_principal.as_deref() == Some(caller_arn)
            || (self.grantee_principal == caller_arn
                && self.operations.contains(&GrantOperation::RetireGrant))
    }
}

/// At most 64 characters of client text quoted in a message.
fn clip(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_grant_made_from_a_grant_is_equally_strict_or_stricter() {
        use GrantConstraint::{EncryptionContextEquals as Eq, EncryptionContextSubset as Sub};
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let strict = super::constraint_at_least_as_strict;
        let a = m(&[("app", "x")]);
        let ab = m(&[("app", "x"), ("team", "y")]);
        let upper = m(&[("APP", "x")]);
        assert!(strict(None, None));
        assert!(strict(Some(&Sub(a.clone())), None));
        assert!(!strict(None, Some(&Sub(a.clone()))));
        assert!(strict(Some(&Eq(a.clone())), Some(&Eq(a.clone()))));
        assert!(
            strict(Some(&Eq(upper.clone())), Some(&Eq(a.clone()))),
            "keys without case"
        );
        assert!(!strict(Some(&Eq(ab.clone())), Some(&Eq(a.clone()))));
        assert!(!strict(Some(&Eq(a.clone())), Some(&Eq(ab.clone()))));
        assert!(!strict(Some(&Sub(a.clone())), Some(&Eq(a.clone()))));
        assert!(strict(Some(&Sub(a.clone())), Some(&Sub(a.clone()))));
        assert!(strict(Some(&Sub(ab.clone())), Some(&Sub(a.clone()))));
        assert!(strict(Some(&Eq(ab.clone())), Some(&Sub(a.clone()))));
        assert!(!strict(Some(&Sub(a.clone())), Some(&Sub(ab.clone()))));
        assert!(!strict(Some(&Sub(m(&[("app", "z")]))), Some(&Sub(a))));
    }

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn grant_ids_are_64_lowercase_hex_digits() {
        let id = GrantId::from_bytes([0xab; 32]);
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(GrantId::parse(&text), Some(id));
        assert_eq!(GrantId::parse(&text.to_uppercase()), None);
        assert_eq!(GrantId::parse(&text[..63]), None);
        assert_eq!(GrantId::parse(&format!("{text}0")), None);
        assert_eq!(GrantId::parse(&"g".repeat(64)), None);
        assert_eq!(
            GrantId::parse_member("nope").unwrap_err().aws_name(),
            "InvalidGrantIdException"
        );
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<GrantId>(&json).unwrap(), id);
    }

    #[test]
    fn tokens_round_trip_and_every_token_of_a_grant_is_good() {
        let id = GrantId::from_bytes([7; 32]);
        let secret = [9u8; SECRET_LEN];
        let a = make_token(&id, &secret, [1; SALT_LEN]);
        let b = make_token(&id, &secret, [2; SALT_LEN]);
        assert_ne!(a, b, "one token per CreateGrant call");
        assert_eq!(a.len(), TOKEN_LEN);
        for t in [&a, &b] {
            let p = parse_token(t).expect("our shape");
            assert_eq!(p.grant_id, id);
            assert!(p.verify(&secret));
            assert!(!p.verify(&[8u8; SECRET_LEN]), "another grant's secret");
            assert!(!p.verify(&[]), "an unreadable grant's");
        }
    }

    #[test]
    fn malformed_or_forged_tokens_are_refused() {
        let id = GrantId::from_bytes([7; 32]);
        let secret = [9u8; SECRET_LEN];
        let good = make_token(&id, &secret, [1; SALT_LEN]);
        assert!(parse_token("").is_none());
        assert!(parse_token(&good[..TOKEN_LEN - 1]).is_none());
        assert!(parse_token(&format!("{good}A")).is_none());
        assert!(parse_token(&"!".repeat(TOKEN_LEN)).is_none());
        assert!(parse_token(&"A".repeat(TOKEN_LEN)).is_none(), "version 0");
        // A changed tag, salt or grant id still parses, but does not verify.
        let mut raw = URL_SAFE_NO_PAD.decode(&good).unwrap();
        for at in [1, 40, TOKEN_RAW_LEN - 1] {
            raw[at] ^= 1;
            let t = URL_SAFE_NO_PAD.encode(&raw);
            let p = parse_token(&t).expect("shape");
            assert!(!p.verify(&secret), "byte {at} changed");
            raw[at] ^= 1;
        }
        // Bounds: at most 10 looked at, oversized ones skipped.
        let many = vec![good.clone(); 20];
        assert_eq!(parse_tokens(&many).len(), MAX_GRANT_TOKENS);
        assert!(parse_tokens(&["x".repeat(9000)]).is_empty());
    }

    #[test]
    fn constraints_match_as_aws_documents() {
        let sub = GrantConstraint::EncryptionContextSubset(map(&[("Purpose", "Test")]));
        let eq = GrantConstraint::EncryptionContextEquals(map(&[("purpose", "test"), ("a", "b")]));
        // Subset: the grant's pairs within the request's; keys without regard to case.
        assert!(sub.allows(Some(&map(&[("Purpose", "Test")]))));
        assert!(sub.allows(Some(&map(&[("purpose", "Test"), ("other", "x")]))));
        assert!(
            !sub.allows(Some(&map(&[("Purpose", "test")]))),
            "values exactly"
        );
        assert!(!sub.allows(Some(&map(&[("other", "Test")]))));
        assert!(!sub.allows(Some(&map(&[]))));
        assert!(!sub.allows(None), "no context, no match");
        // Equals: the same pairs, nothing more.
        assert!(eq.allows(Some(&map(&[("a", "b"), ("purpose", "test")]))));
        assert!(eq.allows(Some(&map(&[("A", "b"), ("PURPOSE", "test")]))));
        assert!(!eq.allows(Some(&map(&[("a", "b")]))));
        assert!(!eq.allows(Some(&map(&[("a", "b"), ("purpose", "test"), ("c", "d")]))));
        assert!(!eq.allows(Some(&map(&[("a", "B"), ("purpose", "test")]))));
        assert!(!eq.allows(None));
    }

    #[test]
    fn constraint_members_rules() {
        assert_eq!(check_constraints(None, None).unwrap(), None);
        assert_eq!(check_constraints(Some(map(&[])), None).unwrap(), None);
        assert!(matches!(
            check_constraints(None, Some(map(&[("k", "v")]))).unwrap(),
            Some(GrantConstraint::EncryptionContextSubset(_))
        ));
        let both = check_constraints(Some(map(&[("k", "v")])), Some(map(&[("k", "v")])));
        assert_eq!(both.unwrap_err().aws_name(), "ValidationException");
        let nine: BTreeMap<String, String> =
            (0..9).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(check_constraints(Some(nine), None).is_err());
        let eight: BTreeMap<String, String> =
            (0..8).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(check_constraints(Some(eight), None).is_ok());
        let long = map(&[("k", &"v".repeat(MAX_CONSTRAINT_CHARS))]);
        assert!(check_constraints(None, Some(long)).is_err());
        let fits = map(&[("k", &"v".repeat(MAX_CONSTRAINT_CHARS - 1))]);
        assert!(check_constraints(None, Some(fits)).is_ok());
    }

    #[test]
    fn operations_per_key_type() {
        use GrantOperation as G;
        use KeySpec as S;
        use KeyUsage as U;
        let sym = (S::SymmetricDefault, U::EncryptDecrypt);
        let rsa = (S::Rsa2048, U::EncryptDecrypt);
        let sign = (S::EccNistP256, U::SignVerify);
        let mac = (S::Hmac256, U::GenerateVerifyMac);
        let agree = (S::EccNistP256, U::KeyAgreement);
        let table: &[(G, [bool; 5])] = &[
            (G::CreateGrant, [true; 5]),
            (G::RetireGrant, [true; 5]),
            (G::DescribeKey, [true; 5]),
            (G::Encrypt, [true, true, false, false, false]),
            (G::Decrypt, [true, true, false, false, false]),
            (G::ReEncryptFrom, [true, true, false, false, false]),
            (G::ReEncryptTo, [true, true, false, false, false]),
            (G::GenerateDataKey, [true, false, false, false, false]),
            (
                G::GenerateDataKeyWithoutPlaintext,
                [true, false, false, false, false],
            ),
            (G::GenerateDataKeyPair, [true, false, false, false, false]),
            (
                G::GenerateDataKeyPairWithoutPlaintext,
                [true, false, false, false, false],
            ),
            (G::GetPublicKey, [false, true, true, false, true]),
            (G::Sign, [false, false, true, false, false]),
            (G::Verify, [false, false, true, false, false]),
            (G::GenerateMac, [false, false, false, true, false]),
            (G::VerifyMac, [false, false, false, true, false]),
            (G::DeriveSharedSecret, [false, false, false, false, true]),
            (G::Encapsulate, [false; 5]),
            (G::Decapsulate, [false; 5]),
        ];
        assert_eq!(table.len(), <G as super::super::domain::AwsEnum>::ALL.len());
        for (op, row) in table {
            for ((spec, usage), want) in [sym, rsa, sign, mac, agree].into_iter().zip(row) {
                assert_eq!(grantable(spec, usage, *op), *want, "{op} on {spec}/{usage}");
            }
        }
    }

    #[test]
    fn operations_members_rules() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let (sym, enc) = (KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt);
        assert_eq!(
            check_operations(&s(&["Encrypt", "Decrypt", "Encrypt"]), sym, enc, None).unwrap(),
            vec![GrantOperation::Decrypt, GrantOperation::Encrypt]
        );
        for bad in [&[][..], &["Sign"], &["Nope"], &["encrypt"]] {
            let e = check_operations(&s(bad), sym, enc, None).unwrap_err();
            assert_eq!(e.aws_name(), "ValidationException", "{bad:?}");
        }
        let c = GrantConstraint::EncryptionContextSubset(map(&[("k", "v")]));
        assert!(check_operations(&s(&["Decrypt", "DescribeKey"]), sym, enc, Some(&c)).is_ok());
        let signing = (KeySpec::EccNistP256, KeyUsage::SignVerify);
        assert!(check_operations(&s(&["Sign"]), signing.0, signing.1, Some(&c)).is_err());
        assert!(check_operations(&s(&["DescribeKey"]), signing.0, signing.1, Some(&c)).is_ok());
        let rsa = (KeySpec::Rsa2048, KeyUsage::EncryptDecrypt);
        assert!(check_operations(&s(&["Decrypt"]), rsa.0, rsa.1, Some(&c)).is_err());
    }

    #[test]
    fn names_and_principals() {
        assert!(check_name("my-grant:1/a_b").is_ok());
        for bad in ["", "sp ace", "ü", &"a".repeat(257)] {
            assert_eq!(
                check_name(bad).unwrap_err().aws_name(),
                "ValidationException"
            );
        }
        assert!(check_name(&"a".repeat(256)).is_ok());
        for good in [
            "arn:aws:iam::111122223333:user/dev",
            "arn:aws:iam::111122223333:root",
            "arn:aws:sts::111122223333:assumed-role/r/s",
            "arn:aws-cn:iam::111122223333:role/x",
        ] {
            assert!(check_principal(good, "granteePrincipal").is_ok(), "{good}");
        }
        assert_eq!(
            principal_account("arn:aws:iam::111122223333:user/dev"),
            Some("111122223333")
        );
        for (bad, name) in [
            ("", "ValidationException"),
            ("has space", "ValidationException"),
            ("111122223333", "InvalidArnException"),
            (
                "arn:aws:kms:us-east-1:111122223333:key/x",
                "InvalidArnException",
            ),
            ("arn:aws:iam::1111:user/x", "InvalidArnException"),
            ("arn:aws:iam::111122223333:", "InvalidArnException"),
        ] {
            assert_eq!(
                check_principal(bad, "granteePrincipal")
                    .unwrap_err()
                    .aws_name(),
                name,
                "{bad}"
            );
        }
        assert_eq!(
            account_root_arn("111122223333"),
            "arn:aws:iam::111122223333:root"
        );
    }

    #[test]
    fn a_view_allows_its_grantee_its_operations_under_its_constraint() {
        let v = GrantView {
            key_id: KeyId::new_random(),
            grant_id: GrantId::from_bytes([1; 32]),
            name: None,
            grantee_principal: "arn:aws:iam::111122223333:user/reader".into(),
            retiring_principal: Some("arn:aws:iam::111122223333:user/admin".into()),
            operations: vec![GrantOperation::Decrypt, GrantOperation::DescribeKey],
            constraint: Some(GrantConstraint::EncryptionContextSubset(map(&[(
                "purpose", "read",
            )]))),
            issuing_account: "111122223333".into(),
            created_ms: 1,
        };
        let me = "arn:aws:iam::111122223333:user/reader";
        let ok = map(&[("purpose", "read")]);
        assert!(v.allows(me, GrantOperation::Decrypt, Some(&ok)));
        assert!(!v.allows(me, GrantOperation::Decrypt, None));
        assert!(!v.allows(me, GrantOperation::Decrypt, Some(&map(&[]))));
        assert!(!v.allows(me, GrantOperation::Encrypt, Some(&ok)));
        assert!(
            v.allows(me, GrantOperation::DescribeKey, None),
            "unconstrained"
        );
        assert!(!v.allows(
            "arn:aws:iam::111122223333:user/other",
            GrantOperation::Decrypt,
            Some(&ok)
        ));
        assert!(v.retirable_by("arn:aws:iam::111122223333:user/admin"));
        assert!(!v.retirable_by(me), "the grantee without RetireGrant");
        let with_retire = GrantView {
            operations: vec![GrantOperation::Decrypt, GrantOperation::RetireGrant],
            ..v
        };
        assert!(with_retire.retirable_by(me));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            /// Tokens come from anyone: never a panic, and only our exact shape parses.
            #[test]
            fn arbitrary_tokens(t in "\\PC{0,120}") {
                if let Some(p) = parse_token(&t) {
                    prop_assert_eq!(t.len(), TOKEN_LEN);
                    let _ = p.verify(&[0u8; SECRET_LEN]);
                }
                let _ = GrantId::parse(&t);
                let _ = principal_account(&t);
                let _ = check_principal(&t, "p");
                let _ = check_name(&t);
            }
        }
    }
}
