//! The IAM policy language, as AWS KMS uses it: key policies and identity (IAM) policies,
//! parsed and compiled once ([`PolicyDocument::parse`]), then evaluated per request
//! ([`PolicyDocument::evaluate`]) without parsing and with next to no allocation.
//!
//! One document is evaluated at a time; its [`Outcome`] says whether a `Deny` applied and
//! how an `Allow` matched. Combining a key policy, identity policies and grants is the
//! caller's: AWS allows a request when no policy denies it and either the key policy allows
//! the principal directly, or the key policy allows its account (delegation) and an identity
//! policy (or grant) allows the principal.
//!
//! What the engine implements, and where it is narrower than AWS:
//! - `Principal`: `"*"`, `{"AWS": ...}` with `*`, account ids, `arn:…:iam::<acct>:root`,
//!   IAM user and role ARNs, assumed-role session and federated-user ARNs (matched exactly;
//!   a session also matches its role's ARN). `Service`, `Federated` and `CanonicalUser` are
//!   accepted and never match: callers here are IAM principals.
//! - `NotPrincipal`: the statement applies to every principal that none of the listed
//!   principals matches, an account entry matching all of that account's principals.
//! - Condition key names are case-insensitive throughout, including the part after
//!   `kms:EncryptionContext:`, `aws:ResourceTag/` and `aws:RequestTag/` (KMS Developer Guide,
//!   "Case sensitivity of the encryption context condition"; IAM User Guide, global condition
//!   keys): a [`ConditionContext`] is asked for the key's lowercase name.
//! - Policy variables (`${aws:username}`) are not substituted: they are compared literally,
//!   so a condition or resource using one matches only the literal text.
//! - A key-policy statement without `Resource` is accepted and has no effect, as AWS KMS
//!   does; identity-policy statements must have one.

mod condition;
mod json;
mod matching;
mod parse;
mod scalar;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use parse::{Effect, Principals, Statement};

/// Which kind of policy a document is; it decides which elements a statement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// A key policy: each statement needs `Principal` or `NotPrincipal`; a `Resource`-less
    /// statement is accepted and has no effect; only the characters AWS KMS allows.
    Key,
    /// An identity (IAM) policy: `Principal`/`NotPrincipal` are forbidden, `Resource` (or
    /// `NotResource`) is required, `Sid`s are alphanumeric and unique.
    Identity,
}

/// Why a policy document was refused, worded as AWS words its
/// `MalformedPolicyDocumentException` messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(String);

impl PolicyError {
    fn new(msg: impl Into<String>) -> PolicyError {
        PolicyError(msg.into())
    }

    /// The reason, as [`fmt::Display`] shows it.
    pub fn message(&self) -> &str {
        &self.0
    }
}

/// A compiled policy document: cheap to clone (shared), `Send + Sync`.
#[derive(Clone)]
pub struct PolicyDocument {
    inner: Arc<Inner>,
}

struct Inner {
    text: Box<str>,
    kind: PolicyKind,
    statements: Vec<Statement>,
}

impl fmt::Debug for PolicyDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyDocument")
            .field("kind", &self.inner.kind)
            .field("statements", &self.inner.statements.len())
            .field("text", &self.inner.text)
            .finish()
    }
}

impl PolicyDocument {
    /// The largest document accepted, in bytes (AWS's key policy limit, 32 KB).
    pub const MAX_BYTES: usize = 32 * 1024;

    /// Parses and compiles `text` as a policy of `kind`, or says what is wrong with it.
    pub fn parse(text: &str, kind: PolicyKind) -> Result<PolicyDocument, PolicyError> {
        if text.len() > Self::MAX_BYTES {
            return Err(PolicyError::new(format!(
                "The policy document is {} bytes, which exceeds the maximum size of {} bytes",
                text.len(),
                Self::MAX_BYTES
            )));
        }
        if kind == PolicyKind::Key {
            if let Some(c) = text.chars().find(|&c| !key_policy_char(c)) {
                return Err(PolicyError::new(format!(
                    "The key policy contains a character that is not allowed: U+{:04X}. A key \
                     policy may contain printable ASCII and Latin-1 characters, tab, line feed \
                     and carriage return",
                    u32::from(c)
                )));
            }
        }
        let tree = json::parse(text)?;
        let statements = parse::document(&tree, kind)?;
        Ok(PolicyDocument {
            inner: Arc::new(Inner {
                text: text.into(),
                kind,
                statements,
            }),
        })
    }

    /// The document's text exactly as given (what GetKeyPolicy returns).
    pub fn text(&self) -> &str {
        &self.inner.text
    }

    /// The kind the document was parsed as.
    pub fn kind(&self) -> PolicyKind {
        self.inner.kind
    }

    /// Evaluates every statement against `req`. Never fails: a request value that cannot be
    /// read as an operator's type (a number, a date, an address) simply does not match.
    pub fn evaluate(&self, req: &Request<'_>) -> Outcome {
        let caller = Caller::of(req);
        let mut out = Outcome::default();
        for st in &self.inner.statements {
            if st.effect == Effect::Deny && out.deny {
                continue;
            }
            if !st.action.matches(req.action) {
                continue;
            }
            match &st.resource {
                Some(r) if r.matches(req.resource) => {}
                _ => continue,
            }
            let how = match &st.principal {
                None => Match::Direct,
                Some(p) => {
                    let m = caller.matched_by(&p.principals);
                    match (p.negated, m) {
                        (false, m) => m,
                        (true, Match::None) => Match::Direct,
                        (true, _) => Match::None,
                    }
                }
            };
            // Skip the conditions when the statement could add nothing.
            let adds = match (st.effect, how) {
                (_, Match::None) => false,
                (Effect::Deny, _) => true,
                (Effect::Allow, Match::Direct) => !out.allow_direct,
                (Effect::Allow, Match::Account) => !out.allow_account,
            };
            if !adds {
                continue;
            }
            if !st.conditions.iter().all(|c| c.holds(req.context)) {
                continue;
            }
            match (st.effect, how) {
                (Effect::Deny, _) => out.deny = true,
                (Effect::Allow, Match::Direct) => out.allow_direct = true,
                (Effect::Allow, _) => out.allow_account = true,
            }
        }
        out
    }

    /// AWS's default key policy for `account`: the one statement "Enable IAM User
    /// Permissions" giving `arn:aws:iam::<account>:root` `kms:*` on `*`, in the exact text
    /// AWS KMS stores for a key created through the API without a policy.
    pub fn default_key_policy(account: &str) -> PolicyDocument {
        let text = format!(
            "{{\n  \"Version\" : \"2012-10-17\",\n  \"Id\" : \"key-default-1\",\n  \
             \"Statement\" : [ {{\n    \"Sid\" : \"Enable IAM User Permissions\",\n    \
             \"Effect\" : \"Allow\",\n    \"Principal\" : {{\n      \
             \"AWS\" : \"arn:aws:iam::{}:root\"\n    }},\n    \"Action\" : \"kms:*\",\n    \
             \"Resource\" : \"*\"\n  }} ]\n}}",
            json_escape(account)
        );
        match PolicyDocument::parse(&text, PolicyKind::Key) {
            Ok(doc) => doc,
            // An account id no policy could name: the same statement, built directly.
            Err(_) => PolicyDocument {
                inner: Arc::new(Inner {
                    statements: vec![Statement {
                        effect: Effect::Allow,
                        principal: Some(parse::PrincipalSpec {
                            negated: false,
                            principals: Principals {
                                accounts: vec![parse::AccountRef {
                                    partition: Some("aws".into()),
                                    account: account.into(),
                                }],
                                ..Principals::default()
                            },
                        }),
                        action: parse::Matcher {
                            negated: false,
                            patterns: vec![matching::Pattern::new_ignore_case("kms:*")],
                            ignore_case: true,
                        },
                        resource: Some(parse::Matcher {
                            negated: false,
                            patterns: vec![matching::Pattern::Any],
                            ignore_case: false,
                        }),
                        conditions: Vec::new(),
                    }],
                    text: text.into(),
                    kind: PolicyKind::Key,
                }),
            },
        }
    }
}

/// The characters AWS KMS allows in a key policy: printable ASCII, printable Latin-1
/// Supplement, tab, line feed, carriage return.
fn key_policy_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{A0}'..='\u{FF}')
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// One request to authorize.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The caller: `arn:aws:iam::111122223333:user/alice`, `…:role/r`, or an assumed-role
    /// session `arn:aws:sts::111122223333:assumed-role/r/session`.
    pub principal_arn: &'a str,
    /// The caller's account, `111122223333`.
    pub principal_account: &'a str,
    /// The action, `kms:Decrypt` (compared ignoring case).
    pub action: &'a str,
    /// The resource: the key ARN, or `*` for actions on no key.
    pub resource: &'a str,
    /// The condition keys of the request.
    pub context: &'a dyn ConditionContext,
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("principal_arn", &self.principal_arn)
            .field("principal_account", &self.principal_account)
            .field("action", &self.action)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

/// The condition keys of a request, looked up by **lowercase** name: IAM condition key names
/// are case-insensitive, all of them, including the encryption context key in
/// `kms:EncryptionContext:<key>` and the tag key in `aws:ResourceTag/<key>` and
/// `aws:RequestTag/<key>` (values keep their case; the operator decides how they compare).
/// An implementation therefore answers `kms:encryptioncontext:appname` with the value of
/// an `AppName` (or `appname`) pair; were there pairs differing only by case, with each of
/// their values (the key is then multi-valued).
///
/// Multi-valued keys (`kms:EncryptionContextKeys`, `kms:GrantOperations`, `aws:TagKeys`,
/// `kms:ResourceAliases`) give every value. A key with no values is treated as absent.
pub trait ConditionContext {
    /// The values of `key` (lowercase), or `None` when the request does not have it.
    fn values(&self, key: &str) -> Option<Vec<Cow<'_, str>>>;

    /// Calls `each` with the values of `key` (lowercase) in turn until it returns `false`;
    /// returns whether the key is present. The engine calls only this method; the default
    /// goes through [`ConditionContext::values`] (one `Vec` per lookup), so implementations
    /// that can hand out values without collecting them should override it.
    fn for_each_value(&self, key: &str, each: &mut dyn FnMut(&str) -> bool) -> bool {
        match self.values(key) {
            None => false,
            Some(vs) => {
                for v in &vs {
                    if !each(v) {
                        break;
                    }
                }
                true
            }
        }
    }
}

/// A map-backed [`ConditionContext`]: keys are stored lowercased, so any spelling of a key
/// finds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConditionMap {
    map: HashMap<String, Vec<String>>,
}

impl ConditionMap {
    /// No condition keys.
    pub fn new() -> Self {
        ConditionMap::default()
    }

    /// Sets (replaces) the values of `key`.
    pub fn set(&mut self, key: &str, values: Vec<String>) -> &mut Self {
        self.map.insert(key.to_lowercase(), values);
        self
    }

    /// [`ConditionMap::set`] by value, for building a map in one expression.
    pub fn with(mut self, key: &str, values: &[&str]) -> Self {
        self.set(key, values.iter().map(|v| v.to_string()).collect());
        self
    }

    fn get(&self, key: &str) -> Option<&Vec<String>> {
        if key.chars().any(char::is_uppercase) {
            self.map.get(&key.to_lowercase())
        } else {
            self.map.get(key)
        }
    }
}

impl ConditionContext for ConditionMap {
    fn values(&self, key: &str) -> Option<Vec<Cow<'_, str>>> {
        self.get(key)
            .map(|vs| vs.iter().map(|v| Cow::Borrowed(v.as_str())).collect())
    }

    fn for_each_value(&self, key: &str, each: &mut dyn FnMut(&str) -> bool) -> bool {
        match self.get(key) {
            None => false,
            Some(vs) => {
                for v in vs {
                    if !each(v) {
                        break;
                    }
                }
                true
            }
        }
    }
}

/// What one document says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// An applicable `Deny` statement matched.
    pub deny: bool,
    /// An `Allow` statement matched the principal itself: its ARN (or its session's role),
    /// `*`, a `NotPrincipal` that does not list it, or — identity policies — any `Allow`.
    pub allow_direct: bool,
    /// An `Allow` statement (key policy) matched only through the principal's account
    /// (`arn:aws:iam::<acct>:root` or `<acct>`): permission delegated to the account's
    /// identity policies, as AWS does. The account's root user itself is matched directly.
    pub allow_account: bool,
}

impl Outcome {
    /// No deny, and an allow of the principal itself.
    pub fn allows_directly(&self) -> bool {
        !self.deny && self.allow_direct
    }
}

/// How a statement's principals matched the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    None,
    Account,
    Direct,
}

/// The caller's ARN taken apart once per evaluation (borrowed, no allocation).
struct Caller<'a> {
    arn: &'a str,
    account: &'a str,
    partition: &'a str,
    /// The role of an assumed-role session: (account in the ARN, role name).
    session_role: Option<(&'a str, &'a str)>,
    /// `arn:<partition>:iam::<account>:root`.
    is_root: bool,
}

impl<'a> Caller<'a> {
    fn of(req: &Request<'a>) -> Caller<'a> {
        let mut parts = req.principal_arn.splitn(6, ':');
        let (arn, partition, service, _region, account, resource) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let is_arn = arn == "arn";
        let session_role = match (is_arn, service) {
            (true, "sts") => resource
                .strip_prefix("assumed-role/")
                .and_then(|r| r.split_once('/'))
                .map(|(role, _session)| (account, role)),
            _ => None,
        };
        Caller {
            arn: req.principal_arn,
            account: req.principal_account,
            partition: if is_arn { partition } else { "" },
            session_role,
            is_root: is_arn
                && service == "iam"
                && resource == "root"
                && account == req.principal_account,
        }
    }

    fn matched_by(&self, p: &Principals) -> Match {
        if p.anyone || p.arns.iter().any(|a| **a == *self.arn) {
            return Match::Direct;
        }
        if let Some((account, role)) = self.session_role {
            let mine = |r: &parse::RoleRef| {
                *r.name == *role && *r.account == *account && *r.partition == *self.partition
            };
            if p.roles.iter().any(mine) {
                return Match::Direct;
            }
        }
        let of_account = p.accounts.iter().any(|a| {
            *a.account == *self.account
                && a.partition
                    .as_deref()
                    .is_none_or(|part| part == self.partition)
        });
        match (of_account, self.is_root) {
            (true, true) => Match::Direct,
            (true, false) => Match::Account,
            (false, _) => Match::None,
        }
    }
}
