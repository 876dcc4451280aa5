//! From a [`Json`] tree to compiled statements: the document and statement elements, the
//! `Principal`, `Action` and `Resource` forms, each validated as AWS validates them.

use super::condition::{self, Condition};
use super::json::Json;
use super::matching::Pattern;
use super::{PolicyError, PolicyKind};

/// Most statements a document may have. AWS sets no number, but 32 KB of real statements
/// is a few dozen; this bounds the per-request walk of a hostile document.
pub(super) const MAX_STATEMENTS: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    Allow,
    Deny,
}

/// A compiled statement.
#[derive(Debug, Clone)]
pub(super) struct Statement {
    pub(super) effect: Effect,
    /// `None` in identity policies (the statement applies to the policy's holder).
    pub(super) principal: Option<PrincipalSpec>,
    pub(super) action: Matcher,
    /// `None`: a key-policy statement without `Resource`, which AWS accepts and which has no
    /// effect (KMS Developer Guide, "Elements in a key policy").
    pub(super) resource: Option<Matcher>,
    pub(super) conditions: Vec<Condition>,
}

/// `Principal` or `NotPrincipal`.
#[derive(Debug, Clone)]
pub(super) struct PrincipalSpec {
    pub(super) negated: bool,
    pub(super) principals: Principals,
}

/// The principals a `Principal` element names.
#[derive(Debug, Clone, Default)]
pub(super) struct Principals {
    /// `"*"` or `{"AWS": "*"}`.
    pub(super) anyone: bool,
    /// IAM user, role, assumed-role session and federated-user ARNs, matched exactly.
    pub(super) arns: Vec<Box<str>>,
    /// The roles among `arns`, for matching their sessions.
    pub(super) roles: Vec<RoleRef>,
    /// Accounts (`arn:aws:iam::<acct>:root` or a bare id): every principal of the account,
    /// by delegation.
    pub(super) accounts: Vec<AccountRef>,
}

/// An IAM role, as a session of it is named: partition, account, last part of the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RoleRef {
    pub(super) partition: Box<str>,
    pub(super) account: Box<str>,
    pub(super) name: Box<str>,
}

/// An account principal; a bare account id has no partition and matches in any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AccountRef {
    pub(super) partition: Option<Box<str>>,
    pub(super) account: Box<str>,
}

/// `Action`/`NotAction` or `Resource`/`NotResource`.
#[derive(Debug, Clone)]
pub(super) struct Matcher {
    pub(super) negated: bool,
    pub(super) patterns: Vec<Pattern>,
    /// Actions compare ignoring case, resources exactly.
    pub(super) ignore_case: bool,
}

impl Matcher {
    pub(super) fn matches(&self, text: &str) -> bool {
        let hit = if self.ignore_case {
            self.patterns.iter().any(|p| p.matches_ignore_case(text))
        } else {
            self.patterns.iter().any(|p| p.matches(text))
        };
        hit != self.negated
    }
}

fn err(msg: impl Into<String>) -> PolicyError {
    PolicyError::new(msg)
}

/// Compiles a parsed document.
pub(super) fn document(j: &Json, kind: PolicyKind) -> Result<Vec<Statement>, PolicyError> {
    let Json::Object(members) = j else {
        return Err(err(format!(
            "The policy document must be a JSON object, not {}",
            j.kind()
        )));
    };
    let mut statements = None;
    for (name, value) in members {
        match name.as_str() {
            "Version" => match value {
                Json::String(v) if v == "2012-10-17" || v == "2008-10-17" => {}
                _ => {
                    return Err(err(format!(
                        "The policy has an invalid Version {}: use \"2012-10-17\"",
                        show(value)
                    )))
                }
            },
            "Id" => {
                if !matches!(value, Json::String(_)) {
                    return Err(err(format!(
                        "The policy Id must be a string, not {}",
                        value.kind()
                    )));
                }
            }
            "Statement" => statements = Some(value),
            other => {
                return Err(err(format!(
                    "The policy contains an unsupported element: {other}"
                )))
            }
        }
    }
    let statements = statements.ok_or_else(|| err("Missing required field Statement"))?;
    let list: Vec<&Json> = match statements {
        Json::Array(items) => items.iter().collect(),
        one @ Json::Object(_) => vec![one],
        other => {
            return Err(err(format!(
                "The Statement element must be an object or an array of objects, not {}",
                other.kind()
            )))
        }
    };
    if list.len() > MAX_STATEMENTS {
        return Err(err(format!(
            "The policy has {} statements; at most {MAX_STATEMENTS} are allowed",
            list.len()
        )));
    }
    let mut sids: Vec<&str> = Vec::new();
    let mut out = Vec::with_capacity(list.len());
    for s in list {
        if let (PolicyKind::Identity, Json::Object(m)) = (kind, s) {
            if let Some((_, Json::String(sid))) = m.iter().find(|(n, _)| n == "Sid") {
                if sids.contains(&sid.as_str()) {
                    return Err(err(
                        "Statement IDs (SID) in a single policy must be unique.",
                    ));
                }
                sids.push(sid);
            }
        }
        out.push(statement(s, kind)?);
    }
    Ok(out)
}

/// A JSON value, shortly, for messages.
fn show(j: &Json) -> String {
    match j {
        Json::String(s) => format!("{s:?}"),
        Json::Number(n) => n.clone(),
        other => other.kind().to_string(),
    }
}

fn statement(j: &Json, kind: PolicyKind) -> Result<Statement, PolicyError> {
    let Json::Object(members) = j else {
        return Err(err(format!(
            "Each policy statement must be a JSON object, not {}",
            j.kind()
        )));
    };
    let mut effect = None;
    let (mut principal, mut action, mut resource, mut conditions) = (None, None, None, Vec::new());
    for (name, value) in members {
        match name.as_str() {
            "Sid" => {
                let Json::String(sid) = value else {
                    return Err(err(format!(
                        "The statement Sid must be a string, not {}",
                        value.kind()
                    )));
                };
                if kind == PolicyKind::Identity && !sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(err(
                        "Statement IDs (SID) must be alpha-numeric. Check that your input \
                         satisfies the regular expression [0-9A-Za-z]*",
                    ));
                }
            }
            "Effect" => {
                effect = Some(match value {
                    Json::String(e) if e == "Allow" => Effect::Allow,
                    Json::String(e) if e == "Deny" => Effect::Deny,
                    other => {
                        return Err(err(format!(
                            "Invalid effect: {}. The Effect must be Allow or Deny",
                            show(other)
                        )))
                    }
                })
            }
            "Principal" | "NotPrincipal" => {
                if kind == PolicyKind::Identity {
                    return Err(err("Policy document should not specify a principal."));
                }
                if principal.is_some() {
                    return Err(err(
                        "A policy statement can have Principal or NotPrincipal, not both",
                    ));
                }
                principal = Some(PrincipalSpec {
                    negated: name == "NotPrincipal",
                    principals: principals(value)?,
                });
            }
            "Action" | "NotAction" => {
                if action.is_some() {
                    return Err(err(
                        "A policy statement can have Action or NotAction, not both",
                    ));
                }
                action = Some(actions(value, name == "NotAction")?);
            }
            "Resource" | "NotResource" => {
                if resource.is_some() {
                    return Err(err(
                        "A policy statement can have Resource or NotResource, not both",
                    ));
                }
                resource = Some(resources(value, name == "NotResource")?);
            }
            "Condition" => conditions = condition::compile(value, kind)?,
            other => {
                return Err(err(format!(
                    "The policy statement contains an unsupported element: {other}"
                )))
            }
        }
    }
    let effect = effect.ok_or_else(|| err("Missing required field Effect"))?;
    let action = action.ok_or_else(|| err("Policy statement must contain actions."))?;
    if kind == PolicyKind::Key && principal.is_none() {
        return Err(err("Missing required field Principal"));
    }
    if kind == PolicyKind::Identity && resource.is_none() {
        return Err(err("Policy statement must contain resources."));
    }
    Ok(Statement {
        effect,
        principal,
        action,
        resource,
        conditions,
    })
}

/// A string or a non-empty array of strings; `None` for anything else.
fn string_list(j: &Json) -> Option<Vec<&str>> {
    match j {
        Json::String(s) => Some(vec![s.as_str()]),
        Json::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| match i {
                Json::String(s) => Some(s.as_str()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn actions(j: &Json, negated: bool) -> Result<Matcher, PolicyError> {
    let list = string_list(j).ok_or_else(|| {
        err(format!(
            "The {} element must be a string or a non-empty array of strings, not {}",
            if negated { "NotAction" } else { "Action" },
            j.kind()
        ))
    })?;
    let mut patterns = Vec::with_capacity(list.len());
    for a in list {
        if a != "*" {
            let Some((service, name)) = a.split_once(':') else {
                return Err(err(format!(
                    "Action {a:?} is invalid: Actions/Conditions must be prefaced by a vendor, \
                     e.g., iam, sdb, ec2, etc."
                )));
            };
            if name.contains(':') {
                return Err(err(format!(
                    "Action {a:?} is invalid: Actions/Condition can contain only one colon."
                )));
            }
            let service_ok = !service.is_empty()
                && service
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_*?".contains(&b));
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_*?".contains(&b));
            if !service_ok || !name_ok {
                return Err(err(format!(
                    "Policy statement contains an invalid action: {a:?}"
                )));
            }
        }
        patterns.push(Pattern::new_ignore_case(a));
    }
    Ok(Matcher {
        negated,
        patterns,
        ignore_case: true,
    })
}

fn resources(j: &Json, negated: bool) -> Result<Matcher, PolicyError> {
    let list = string_list(j).ok_or_else(|| {
        err(format!(
            "The {} element must be a string or a non-empty array of strings, not {}",
            if negated { "NotResource" } else { "Resource" },
            j.kind()
        ))
    })?;
    let mut patterns = Vec::with_capacity(list.len());
    for r in list {
        if r != "*" && !r.starts_with("arn:") {
            return Err(err(format!("Resource {r} must be in ARN format or \"*\".")));
        }
        patterns.push(Pattern::new(r));
    }
    Ok(Matcher {
        negated,
        patterns,
        ignore_case: false,
    })
}

const INVALID_PRINCIPALS: &str = "Policy contains a statement with one or more invalid principals.";

fn principals(j: &Json) -> Result<Principals, PolicyError> {
    let mut out = Principals::default();
    match j {
        Json::String(s) if s == "*" => out.anyone = true,
        Json::Object(kinds) if !kinds.is_empty() => {
            for (kind, values) in kinds {
                let list = string_list(values).ok_or_else(|| err(INVALID_PRINCIPALS))?;
                match kind.as_str() {
                    "AWS" => {
                        for v in list {
                            aws_principal(v, &mut out)?;
                        }
                    }
                    // Valid principal types that never name one of our callers.
                    "Service" | "Federated" | "CanonicalUser" => {
                        if list.iter().any(|v| v.is_empty()) {
                            return Err(err(INVALID_PRINCIPALS));
                        }
                    }
                    _ => return Err(err(INVALID_PRINCIPALS)),
                }
            }
        }
        _ => return Err(err(INVALID_PRINCIPALS)),
    }
    Ok(out)
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_partition(s: &str) -> bool {
    s == "aws"
        || s.strip_prefix("aws-").is_some_and(|r| {
            !r.is_empty()
                && r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// One value of `{"AWS": ...}`: `*`, an account id, or an account, user, role, session or
/// federated-user ARN. Wildcards are not allowed inside a principal.
fn aws_principal(v: &str, out: &mut Principals) -> Result<(), PolicyError> {
    if v == "*" {
        out.anyone = true;
        return Ok(());
    }
    if is_account_id(v) {
        out.accounts.push(AccountRef {
            partition: None,
            account: v.into(),
        });
        return Ok(());
    }
    let bad = || err(INVALID_PRINCIPALS);
    if v.contains(['*', '?']) {
        return Err(bad());
    }
    let parts: Vec<&str> = v.splitn(6, ':').collect();
    let [arn, partition, service, region, account, resource] = parts[..] else {
        return Err(bad());
    };
    if arn != "arn" || !is_partition(partition) || !region.is_empty() || !is_account_id(account) {
        return Err(bad());
    }
    let named = |prefix: &str| {
        resource
            .strip_prefix(prefix)
            .filter(|rest| !rest.is_empty() && !rest.starts_with('/') && !rest.ends_with('/'))
    };
    match service {
        "iam" if resource == "root" => out.accounts.push(AccountRef {
            partition: Some(partition.into()),
            account: account.into(),
        }),
        "iam" if named("user/").is_some() => out.arns.push(v.into()),
        "iam" => {
            let path = named("role/").ok_or_else(bad)?;
            let name = path.rsplit('/').next().unwrap_or(path);
            out.roles.push(RoleRef {
                partition: partition.into(),
                account: account.into(),
                name: name.into(),
            });
            out.arns.push(v.into());
        }
        "sts" => {
            let ok = named("assumed-role/").is_some_and(|rest| {
                matches!(rest.split_once('/'), Some((r, s)) if !r.is_empty() && !s.is_empty() && !s.contains('/'))
            }) || named("federated-user/").is_some();
            if !ok {
                return Err(bad());
            }
            out.arns.push(v.into());
        }
        _ => return Err(bad()),
    }
    Ok(())
}
