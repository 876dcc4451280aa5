//! Who is calling (credentials from the config, checked by SigV4) and what they may do.
//!
//! Authorization is behind the [`Authorizer`] trait so that key policies and grants can be
//! added later as another implementation (or a chain) without touching the wire layer. Today
//! [`ConfigAuthorizer`] applies each credential's `allow_actions` / `allow_keys`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use super::sigv4::SecretStore;
use crate::config::{Credential, Secret};
use crate::error::{KmsError, Result};
use crate::kms::{AliasName, ArnScope, Forms, KeyId, KeyRef, KeySelector, Kms};

/// The identity a verified request acts as, with its configured limits.
#[derive(Debug, Clone)]
pub struct Principal {
    /// IAM-style ARN, e.g. `arn:aws:iam::111122223333:user/dev`.
    pub arn: String,
    /// The AWS access key id the caller signs with.
    pub access_key_id: String,
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
            arn,
            access_key_id,
            allow_actions,
            allow_keys,
            parsed_keys: OnceLock::new(),
        }
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
            let principal = Principal::new(
                c.principal.clone(),
                c.access_key_id.clone(),
                c.allow_actions.clone(),
                c.allow_keys.clone(),
            );
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

/// Decides whether a principal may perform an action, and on which keys.
///
/// Called wherever the request's token work runs (see `api/request.rs`): inline on a runtime
/// worker for the fast operations, else on the blocking pool. Implementations may read key
/// metadata through `kms` (an in-memory snapshot), but should not block: on a worker, a slow
/// call holds up every connection that worker serves.
pub trait Authorizer: Send + Sync {
    /// May `principal` perform `action` (`kms:Encrypt`...) at all?
    fn allows_action(&self, principal: &Principal, action: &str) -> bool;

    /// Whether key checks apply to this principal; `false` skips resolving keys entirely.
    fn limits_keys(&self, principal: &Principal) -> bool;

    /// May `principal` perform `action` on `key`?
    fn allows_key(
        &self,
        principal: &Principal,
        action: &str,
        key: KeyId,
        kms: &Kms,
    ) -> Result<bool>;

    /// May `principal` perform `action` (CreateAlias, UpdateAlias, DeleteAlias) on the alias
    /// `alias` itself? Asked as well as [`Authorizer::allows_key`] for the key(s) involved:
    /// otherwise a principal limited to its own key could create an alias that another
    /// principal trusts.
    fn allows_alias(
        &self,
        principal: &Principal,
        action: &str,
        alias: &AliasName,
        kms: &Kms,
    ) -> bool;
}

/// The per-credential `allow_actions` / `allow_keys` lists of the config.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConfigAuthorizer;

impl Authorizer for ConfigAuthorizer {
    fn allows_action(&self, principal: &Principal, action: &str) -> bool {
        principal
            .allow_actions
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| action_matches(p, action)))
    }

    fn limits_keys(&self, principal: &Principal) -> bool {
        principal.allow_keys.is_some()
    }

    fn allows_key(
        &self,
        principal: &Principal,
        _action: &str,
        key: KeyId,
        kms: &Kms,
    ) -> Result<bool> {
        let Some(allowed) = principal.allowed_keys(kms.scope()) else {
            return Ok(true);
        };
        // Aliases are resolved now, so an allowed alias follows its current target. Entries
        // that name nothing (yet) simply allow nothing.
        let named = allowed.ids.binary_search(&key).is_ok()
            || allowed.aliases.iter().any(|a| {
                kms.alias_target_of(a.as_str())
                    .is_ok_and(|t| t == Some(key))
            });
        // And an entry allows a key only while the key exists.
        Ok(named
            && kms
                .resolve_key_id(&KeySelector::Resolved(key), Forms::Any)
                .is_ok())
    }

    /// An alias is allowed when an `allow_keys` entry names it: its name or alias ARN,
    /// exactly or as a pattern with `*` and `?` (`alias/team-*`). Key ids never allow an alias.
    fn allows_alias(
        &self,
        principal: &Principal,
        _action: &str,
        alias: &AliasName,
        kms: &Kms,
    ) -> bool {
        let Some(entries) = &principal.allow_keys else {
            return true;
        };
        let arn = kms.scope().alias_arn(alias);
        entries
            .iter()
            .any(|e| wildcard_match(e, alias.as_str()) || wildcard_match(e, &arn))
    }
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
    let on = resource.map_or(String::new(), |r| format!(" on resource: {r}"));
    KmsError::access_denied(format!(
        "User: {} is not authorized to perform: {action}{on} because no identity-based policy \
         allows the {action} action",
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
        let a = ConfigAuthorizer;
        assert!(a.allows_action(&principal(None), "kms:Decrypt"));
        let p = principal(Some(&["kms:Encrypt", "kms:generatedatakey"]));
        assert!(a.allows_action(&p, "kms:Encrypt"));
        assert!(a.allows_action(&p, "kms:GenerateDataKey"));
        assert!(!a.allows_action(&p, "kms:Decrypt"));
        assert!(!a.allows_action(&p, "kms:GenerateDataKeyWithoutPlaintext"));
        assert!(a.allows_action(&principal(Some(&["kms:*"])), "kms:Decrypt"));
        assert!(a.allows_action(&principal(Some(&["*"])), "kms:Decrypt"));
        assert!(!a.limits_keys(&p));
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
