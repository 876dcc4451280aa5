//! Who is calling (credentials from the config, checked by SigV4) and what they may do.
//!
//! Every request is authorized in one place, [`PolicyAuthorizer`], behind the [`Authorizer`]
//! seam, the way AWS KMS does it (docs/authorization.md): an explicit Deny in the identity
//! policy or the key policy wins; otherwise the key policy must allow the principal itself,
//! or allow its account (the account's `root`) while the principal's identity policy allows
//! too, or a grant must allow. A principal of another account than the key's always needs
//! both: the key policy naming it or its account, and its own identity policy. Operations
//! without a key (CreateKey, ListKeys, GenerateRandom...) and aliases themselves are governed
//! by the identity policy alone.
//!
//! A credential's identity policy is its `identity_policy` document, further limited by the
//! `allow_actions` / `allow_keys` shorthand where given; a credential with neither acts as
//! an administrator of its account (every action), as before policies existed.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use super::sigv4::SecretStore;
use crate::config::{Credential, Secret};
use crate::error::{KmsError, Result};
use crate::kms::records::KeyRecord;
use crate::kms::{
    AliasKey, AliasName, ArnScope, Forms, KeyId, KeyRef, Kms, Outcome, PolicyDocument, PolicyKind,
    PolicyRequest,
};

use super::facts::Facts;

/// The identity a verified request acts as, with its configured limits.
#[derive(Debug, Clone)]
pub struct Principal {
    /// IAM-style ARN, e.g. `arn:aws:iam::111122223333:user/dev`.
    pub arn: String,
    /// The account in the ARN (`None`: the ARN names none; the service's account is used).
    account: Option<String>,
    /// The AWS access key id the caller signs with.
    pub access_key_id: String,
    /// The identity (IAM) policy, compiled once.
    identity_policy: Option<PolicyDocument>,
    /// `None`: every action.
    pub allow_actions: Option<Vec<String>>,
    /// `None`: every key. Entries are key ids, key ARNs, alias names or alias ARNs.
    pub allow_keys: Option<Vec<String>>,
    /// `allow_keys` parsed once, for the ARN scope of the service (see [`AllowedKeys`]).
    parsed_keys: OnceLock<AllowedKeys>,
}

impl Principal {
    /// A principal with these limits (`None`: unlimited).
    pub fn new(
        arn: String,
        access_key_id: String,
        allow_actions: Option<Vec<String>>,
        allow_keys: Option<Vec<String>>,
    ) -> Principal {
        Principal {
            account: account_of_arn(&arn).map(str::to_owned),
            arn,
            access_key_id,
            identity_policy: None,
            allow_actions,
            allow_keys,
            parsed_keys: OnceLock::new(),
        }
    }

    /// The same principal with an identity policy document.
    pub fn with_identity_policy(mut self, policy: PolicyDocument) -> Principal {
        self.identity_policy = Some(policy);
        self
    }

    /// The principal's account: the one in its ARN, else the service's.
    pub fn account<'a>(&'a self, kms: &'a Kms) -> &'a str {
        self.account.as_deref().unwrap_or(&kms.scope().account)
    }

    /// Whether anything limits this principal (else it administers its own account).
    fn is_limited(&self) -> bool {
        self.identity_policy.is_some() || self.allow_actions.is_some() || self.allow_keys.is_some()
    }

    /// The keys and aliases `allow_keys` names in `scope` (`None`: every key). Parsed once
    /// (at start-up, see [`Credentials::parse_allow_keys`]), again only for another scope.
    fn allowed_keys(&self, scope: &ArnScope) -> Option<Cow<'_, AllowedKeys>> {
        let entries = self.allow_keys.as_deref()?;
        let parsed = self
            .parsed_keys
            .get_or_init(|| AllowedKeys::parse(entries, scope));
        Some(if parsed.scope == *scope {
            Cow::Borrowed(parsed)
        } else {
            Cow::Owned(AllowedKeys::parse(entries, scope))
        })
    }
}

/// What a principal's `allow_keys` entries name in one ARN scope, as a `KeyId` parameter
/// would (key ids and key ARNs: ids; alias names and alias ARNs: names). Entries that name
/// nothing there (another region or account, a pattern with `*` or `?`, anything malformed)
/// allow no key; patterns only ever allow aliases themselves ([`Authorizer::allows_alias`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedKeys {
    scope: ArnScope,
    ids: Vec<KeyId>,
    aliases: Vec<AliasName>,
}

impl AllowedKeys {
    fn parse(entries: &[String], scope: &ArnScope) -> AllowedKeys {
        let (mut ids, mut aliases) = (Vec::new(), Vec::new());
        for e in entries {
            match KeyRef::parse(e, scope, Forms::Any) {
                Ok(KeyRef::Id(id)) => ids.push(id),
                Ok(KeyRef::Alias(a)) => aliases.push(a),
                Err(_) => {}
            }
        }
        ids.sort_unstable();
        ids.dedup();
        aliases.sort_unstable();
        aliases.dedup();
        AllowedKeys {
            scope: scope.clone(),
            ids,
            aliases,
        }
    }
}

/// The accepted access keys, with their secrets read once at start (zeroized on drop).
pub struct Credentials {
    by_id: HashMap<String, (Secret, Arc<Principal>)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.by_id.keys().collect();
        ids.sort();
        f.debug_struct("Credentials")
            .field("access_key_ids", &ids)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads every secret now: a missing env var or unreadable file fails start-up, not the
    /// first request.
    pub fn from_config(credentials: &[Credential]) -> Result<Credentials> {
        let mut by_id = HashMap::new();
        for c in credentials {
            let secret = c.secret.read()?;
            let mut principal = Principal::new(
                c.principal.clone(),
                c.access_key_id.clone(),
                c.allow_actions.clone(),
                c.allow_keys.clone(),
            );
            if let Some(text) = &c.identity_policy {
                let doc = PolicyDocument::parse(text, PolicyKind::Identity).map_err(|e| {
                    KmsError::config(format!(
                        "the identity policy of access key id {} is not a valid policy: {e}",
                        c.access_key_id
                    ))
                })?;
                principal = principal.with_identity_policy(doc);
            }
            if by_id
                .insert(c.access_key_id.clone(), (secret, Arc::new(principal)))
                .is_some()
            {
                return Err(KmsError::config(format!(
                    "access key id {} is configured twice",
                    c.access_key_id
                )));
            }
        }
        Ok(Credentials { by_id })
    }

    /// Parses every principal's `allow_keys` for `scope` now (the service's ARN scope), so
    /// that no request parses them.
    pub(super) fn parse_allow_keys(&self, scope: &ArnScope) {
        for (_, p) in self.by_id.values() {
            let _ = p.allowed_keys(scope);
        }
    }

    /// The principal of an access key id, if one is configured.
    pub fn principal(&self, access_key_id: &str) -> Option<Arc<Principal>> {
        self.by_id.get(access_key_id).map(|(_, p)| Arc::clone(p))
    }

    /// The access key id and secret when exactly one credential is configured (the embedded
    /// dev credential that `serve` prints).
    pub fn only(&self) -> Option<(&str, &str)> {
        match self.by_id.iter().next() {
            Some((id, (secret, _))) if self.by_id.len() == 1 => Some((id, secret.expose())),
            _ => None,
        }
    }

    /// Whether no credential is configured (every request is refused).
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

impl SecretStore for Credentials {
    fn secret_for(&self, access_key_id: &str) -> Option<&str> {
        self.by_id.get(access_key_id).map(|(s, _)| s.expose())
    }
}

/// What one authorization asks: may `principal` do `action` on `resource`, with `facts`
/// giving the condition keys of the request.
pub struct Query<'a> {
    /// Who asks.
    pub principal: &'a Principal,
    /// The IAM action, e.g. `kms:Decrypt`.
    pub action: &'a str,
    /// What it acts on.
    pub resource: Resource<'a>,
    /// The request's condition keys.
    pub facts: &'a Facts<'a>,
}

/// The resource an action is on.
#[derive(Clone, Copy)]
pub enum Resource<'a> {
    /// None in particular (CreateKey, ListKeys, GenerateRandom...): the identity policy with
    /// `Resource: "*"`.
    Any,
    /// A key: its key policy, the identity policy and the key's grants.
    Key(&'a KeyRecord),
    /// An alias itself (CreateAlias, UpdateAlias, DeleteAlias): the identity policy only.
    Alias(&'a AliasKey),
}

/// Decides whether a request may proceed.
///
/// Called wherever the request's token work runs (see `api/request.rs`): inline on a runtime
/// worker for the fast operations, else on the blocking pool. Implementations read key
/// metadata through `kms` (an in-memory snapshot) and must not block.
pub trait Authorizer: Send + Sync {
    /// `Ok` if allowed, else the `AccessDeniedException` AWS would send.
    fn authorize(&self, q: &Query<'_>, kms: &Kms) -> Result<()>;

    /// Whether the principal's identity policy alone allows `q` (for the lockout safety
    /// check of a key policy that delegates to the account).
    fn identity_allows(&self, q: &Query<'_>, kms: &Kms) -> bool;
}

/// AWS KMS's evaluation over identity policies, key policies and grants (module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct PolicyAuthorizer;

/// Why a request was denied, for the message AWS would send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Denial {
    ExplicitIdentity,
    ExplicitResource,
    NoIdentity,
    NoResource,
}

impl PolicyAuthorizer {
    /// What the principal's identity policy says about the request.
    fn identity(&self, q: &Query<'_>, kms: &Kms, resource_arn: &str) -> Outcome {
        let p = q.principal;
        if !p.is_limited() {
            return Outcome {
                allow_direct: true,
                ..Outcome::default()
            };
        }
        let mut out = match &p.identity_policy {
            Some(doc) => doc.evaluate(&PolicyRequest {
                principal_arn: &p.arn,
                principal_account: p.account(kms),
                action: q.action,
                resource: resource_arn,
                context: q.facts,
            }),
            None => Outcome {
                allow_direct: true,
                ..Outcome::default()
            },
        };
        if out.allow_direct && !shorthand_allows(p, q, kms) {
            out.allow_direct = false;
        }
        out
    }

    fn decide(&self, q: &Query<'_>, kms: &Kms) -> Result<std::result::Result<(), Denial>> {
        let p = q.principal;
        let resource_arn = match q.resource {
            Resource::Any => Cow::Borrowed("*"),
            Resource::Key(r) => Cow::Owned(kms.key_arn(r)),
            Resource::Alias(a) => Cow::Owned(kms.alias_arn(a)),
        };
        let identity = self.identity(q, kms, &resource_arn);
        if identity.deny {
            return Ok(Err(Denial::ExplicitIdentity));
        }
        let Resource::Key(record) = q.resource else {
            return Ok(if identity.allow_direct {
                Ok(())
            } else {
                Err(Denial::NoIdentity)
            });
        };
        let key_policy = kms.key_policy(record)?.evaluate(&PolicyRequest {
            principal_arn: &p.arn,
            principal_account: p.account(kms),
            action: q.action,
            resource: &resource_arn,
            context: q.facts,
        });
        if key_policy.deny {
            return Ok(Err(Denial::ExplicitResource));
        }
        let same_account = kms.account_of(record) == p.account(kms);
        let by_policy = if same_account {
            key_policy.allow_direct || (key_policy.allow_account && identity.allow_direct)
        } else {
            (key_policy.allow_direct || key_policy.allow_account) && identity.allow_direct
        };
        if by_policy || q.facts.granted(kms, record.id, &p.arn) {
            return Ok(Ok(()));
        }
        Ok(Err(
            if key_policy.allow_direct || key_policy.allow_account {
                Denial::NoIdentity
            } else {
                Denial::NoResource
            },
        ))
    }
}

impl Authorizer for PolicyAuthorizer {
    fn identity_allows(&self, q: &Query<'_>, kms: &Kms) -> bool {
        let out = self.identity(q, kms, "*");
        !out.deny && out.allow_direct
    }

    fn authorize(&self, q: &Query<'_>, kms: &Kms) -> Result<()> {
        match self.decide(q, kms)? {
            Ok(()) => Ok(()),
            Err(why) => {
                let resource = match q.resource {
                    Resource::Any => None,
                    Resource::Key(r) => Some(kms.key_arn(r)),
                    Resource::Alias(a) => Some(kms.alias_arn(a)),
                };
                Err(denied_because(
                    q.principal,
                    q.action,
                    resource.as_deref(),
                    why,
                ))
            }
        }
    }
}

/// The `allow_actions` / `allow_keys` shorthand: the action must be listed, and a key (or
/// alias) must be named by an entry. Keys named through an alias follow its current target;
/// entries that name nothing allow nothing.
fn shorthand_allows(p: &Principal, q: &Query<'_>, kms: &Kms) -> bool {
    if let Some(actions) = &p.allow_actions {
        if !actions.iter().any(|a| action_matches(a, q.action)) {
            return false;
        }
    }
    let Some(entries) = &p.allow_keys else {
        return true;
    };
    match q.resource {
        Resource::Any => true,
        Resource::Key(r) => {
            let Some(allowed) = p.allowed_keys(kms.scope()) else {
                return true;
            };
            let key = r.id;
            let scope = ArnScope::new(kms.region_of(r), &kms.account_of(r));
            allowed.ids.binary_search(&key).is_ok()
                || allowed.aliases.iter().any(|a| {
                    kms.alias_target_in(Some(&scope), a.as_str())
                        .is_ok_and(|t| t == Some(key))
                })
        }
        Resource::Alias(alias) => {
            let arn = kms.alias_arn(alias);
            entries
                .iter()
                .any(|e| wildcard_match(e, alias.name.as_str()) || wildcard_match(e, &arn))
        }
    }
}

/// The account id in an IAM or STS ARN (`arn:aws:iam::<account>:...`), if it has one.
pub fn account_of_arn(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(_), Some(_), Some(_), Some(account)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())).then_some(account)
}

/// IAM-style resource match: `*` matches any run of characters, `?` any one character,
/// everything else itself (case-sensitive). Linear in the input: no backtracking blow-up.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// IAM-style action match: `*`, `kms:*`, or the exact action (case-insensitive, as in IAM).
pub fn action_matches(pattern: &str, action: &str) -> bool {
    pattern == "*" || pattern.eq_ignore_ascii_case("kms:*") || pattern.eq_ignore_ascii_case(action)
}

/// The AccessDeniedException AWS would send, naming principal, action and resource.
pub fn denied(principal: &Principal, action: &str, resource: Option<&str>) -> KmsError {
    denied_because(principal, action, resource, Denial::NoIdentity)
}

fn denied_because(
    principal: &Principal,
    action: &str,
    resource: Option<&str>,
    why: Denial,
) -> KmsError {
    let on = resource.map_or(String::new(), |r| format!(" on resource: {r}"));
    let because = match why {
        Denial::ExplicitIdentity => "with an explicit deny in an identity-based policy".into(),
        Denial::ExplicitResource => "with an explicit deny in a resource-based policy".into(),
        Denial::NoIdentity => {
            format!("because no identity-based policy allows the {action} action")
        }
        Denial::NoResource => {
            format!("because no resource-based policy allows the {action} action")
        }
    };
    KmsError::access_denied(format!(
        "User: {} is not authorized to perform: {action}{on} {because}",
        principal.arn
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretSource;

    fn principal(actions: Option<&[&str]>) -> Principal {
        Principal::new(
            "arn:aws:iam::111122223333:user/app".into(),
            "AKIAAPPAPPAPPAPP0001".into(),
            actions.map(|a| a.iter().map(|s| s.to_string()).collect()),
            None,
        )
    }

    #[test]
    fn allow_keys_are_parsed_once_into_ids_and_alias_names() {
        let scope = ArnScope::new("us-east-2", "111122223333");
        let (a, b) = (KeyId::new_random(), KeyId::new_random());
        let mut p = principal(None);
        assert!(p.allowed_keys(&scope).is_none(), "no list: every key");
        p.allow_keys = Some(vec![
            a.to_string(),
            scope.key_arn(&b),
            a.to_string().to_uppercase(),
            format!("arn:aws:kms:eu-west-1:111122223333:key/{b}"),
            format!("arn:aws:kms:us-east-2:444455556666:key/{b}"),
            "alias/app".into(),
            "arn:aws:kms:us-east-2:111122223333:alias/other".into(),
            "arn:aws:kms:us-east-2:444455556666:alias/foreign".into(),
            // Patterns, malformed and reserved entries name no key (as before).
            "alias/team-*".into(),
            "*".into(),
            "arn:aws:kms:*:111122223333:alias/x".into(),
            "alias/aws/ebs".into(),
            "not-a-key".into(),
            String::new(),
        ]);
        let parsed = p.allowed_keys(&scope).expect("a list");
        let mut ids = vec![a, b];
        ids.sort();
        assert_eq!(parsed.ids, ids);
        let names: Vec<&str> = parsed.aliases.iter().map(AliasName::as_str).collect();
        assert_eq!(names, ["alias/app", "alias/other"]);
        assert!(matches!(parsed, Cow::Borrowed(_)), "parsed once, then kept");
        drop(parsed);
        assert!(matches!(p.allowed_keys(&scope), Some(Cow::Borrowed(_))));
        // Another scope: its own ARNs count, the first scope's do not.
        let other = ArnScope::new("eu-west-1", "111122223333");
        let there = p.allowed_keys(&other).expect("a list");
        assert!(matches!(there, Cow::Owned(_)));
        assert_eq!(there.ids, {
            let mut v = vec![a, b];
            v.sort();
            v
        });
        assert_eq!(there.aliases.len(), 1, "{:?}", there.aliases);
    }

    #[test]
    fn actions() {
        assert!(action_matches("kms:Encrypt", "kms:Encrypt"));
        assert!(action_matches("kms:generatedatakey", "kms:GenerateDataKey"));
        assert!(!action_matches("kms:Encrypt", "kms:Decrypt"));
        assert!(!action_matches(
            "kms:GenerateDataKey",
            "kms:GenerateDataKeyWithoutPlaintext"
        ));
        assert!(action_matches("kms:*", "kms:Decrypt"));
        assert!(action_matches("*", "kms:Decrypt"));
        let p = principal(Some(&["kms:Encrypt"]));
        assert!(p.is_limited() && !principal(None).is_limited());
    }

    #[test]
    fn accounts_come_from_the_principal_arn() {
        assert_eq!(
            account_of_arn("arn:aws:iam::111122223333:user/app"),
            Some("111122223333")
        );
        assert_eq!(
            account_of_arn("arn:aws:sts::444455556666:assumed-role/r/s"),
            Some("444455556666")
        );
        for none in [
            "arn:aws:iam::dev:user/x",
            "arn:aws:iam:::user/x",
            "nonsense",
            "",
        ] {
            assert_eq!(account_of_arn(none), None, "{none}");
        }
    }

    #[test]
    fn wildcards() {
        for (p, t, want) in [
            ("alias/app", "alias/app", true),
            ("alias/app", "alias/apps", false),
            ("alias/team-*", "alias/team-a", true),
            ("alias/team-*", "alias/team-", true),
            ("alias/team-*", "alias/other", false),
            ("alias/?pp", "alias/app", true),
            ("*", "anything", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            (
                "arn:aws:kms:*:111122223333:alias/x",
                "arn:aws:kms:us-east-2:111122223333:alias/x",
                true,
            ),
        ] {
            assert_eq!(wildcard_match(p, t), want, "{p} ~ {t}");
        }
        // No exponential backtracking.
        let t = "a".repeat(5000);
        assert!(!wildcard_match(&format!("{}b", "*a".repeat(50)), &t));
    }

    #[test]
    fn denial_names_principal_action_and_resource() {
        let p = principal(None);
        let e = denied(&p, "kms:Decrypt", Some("arn:aws:kms:us-east-2:1:key/k"));
        assert_eq!(e.aws_name(), "AccessDeniedException");
        let m = e.message();
        assert!(m.contains(&p.arn) && m.contains("kms:Decrypt") && m.contains("key/k"));
    }

    #[test]
    fn credentials_read_secrets_once_and_hide_them() {
        let name = "P11KMS_TEST_API_AUTH_SECRET";
        std::env::set_var(name, "s3cret-value");
        let c = Credential {
            access_key_id: "AKIAAPPAPPAPPAPP0001".into(),
            secret: SecretSource::Env(name.into()),
            principal: "arn:aws:iam::111122223333:user/app".into(),
            allow_actions: None,
            allow_keys: None,
            identity_policy: None,
        };
        let creds = Credentials::from_config(std::slice::from_ref(&c)).unwrap();
        std::env::remove_var(name);
        assert_eq!(
            creds.secret_for("AKIAAPPAPPAPPAPP0001"),
            Some("s3cret-value")
        );
        assert!(creds.secret_for("AKIAOTHER").is_none());
        assert!(!format!("{creds:?}").contains("s3cret"));
        // The secret was read once: with the variable gone, start-up fails and says why.
        let unset = Credentials::from_config(std::slice::from_ref(&c))
            .expect_err("unset env var fails start-up");
        assert!(
            unset.message().contains(name) && unset.message().contains("not set"),
            "{}",
            unset.message()
        );
        // One access key id twice, each secret readable: refused, naming the duplicate.
        std::env::set_var(name, "s3cret-value");
        let twice = Credentials::from_config(&[c.clone(), c.clone()]);
        std::env::remove_var(name);
        let e = twice.expect_err("a duplicate access key id fails start-up");
        assert!(
            e.message()
                .contains("access key id AKIAAPPAPPAPPAPP0001 is configured twice"),
            "{}",
            e.message()
        );
    }
}
