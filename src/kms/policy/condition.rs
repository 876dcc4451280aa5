//! The `Condition` element: operators compiled once into typed tests, then evaluated against a
//! [`ConditionContext`] without parsing.
//!
//! Semantics (IAM User Guide, "Condition operators" and "multiple keys or values"):
//! - all operators of a block, and all keys under one operator, must hold (AND); the policy
//!   values of one key are alternatives (OR); for a negated operator (`StringNotEquals`,
//!   `NotIpAddress`, `ArnNotLike`, ...) the request value must match none of them;
//! - a key absent from the request: the condition is false, except for negated operators
//!   (true), `...IfExists` (true), `ForAllValues:` (true) and `ForAnyValue:` (false); `Null`
//!   tests presence itself. A key present with no values counts as absent;
//! - `ForAllValues:` holds when every request value satisfies the operator, `ForAnyValue:`
//!   when at least one does; with neither, a request value satisfying it is needed (for a
//!   negated operator: no request value may match a policy value).

use base64::Engine as _;

use super::json::Json;
use super::matching::{ArnPattern, Pattern};
use super::scalar::{self, Cidr, Instant};
use super::{ConditionContext, PolicyError, PolicyKind};

/// How a condition combines several request values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetOp {
    /// No qualifier: a single-valued comparison.
    Single,
    ForAllValues,
    ForAnyValue,
}

/// How two ordered values compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn holds<T: PartialOrd>(self, request: T, policy: T) -> bool {
        match self {
            Cmp::Eq => request == policy,
            Cmp::Lt => request < policy,
            Cmp::Le => request <= policy,
            Cmp::Gt => request > policy,
            Cmp::Ge => request >= policy,
        }
    }
}

/// The positive test of one request value against the policy values (any of them).
#[derive(Debug, Clone)]
enum Test {
    StringEquals(Vec<Box<str>>),
    StringEqualsIgnoreCase(Vec<Box<str>>),
    StringLike(Vec<Pattern>),
    Numeric(Cmp, Vec<f64>),
    Date(Cmp, Vec<Instant>),
    Bool(Vec<bool>),
    Binary(Vec<Vec<u8>>),
    Ip(Vec<Cidr>),
    Arn(Vec<ArnPattern>),
    /// `Null`: each value says whether the key must be absent (`true`) or present.
    Null(Vec<bool>),
}

impl Test {
    /// Whether the request value `v` matches at least one policy value.
    fn matches(&self, v: &str) -> bool {
        match self {
            Test::StringEquals(ps) => ps.iter().any(|p| **p == *v),
            Test::StringEqualsIgnoreCase(ps) => ps.iter().any(|p| eq_ignore_case(p, v)),
            Test::StringLike(ps) => ps.iter().any(|p| p.matches(v)),
            Test::Numeric(cmp, ps) => {
                scalar::number(v).is_some_and(|n| ps.iter().any(|&p| cmp.holds(n, p)))
            }
            Test::Date(cmp, ps) => {
                scalar::date(v).is_some_and(|d| ps.iter().any(|&p| cmp.holds(d, p)))
            }
            Test::Bool(ps) => scalar::boolean(v).is_some_and(|b| ps.contains(&b)),
            Test::Binary(ps) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .is_ok_and(|bytes| ps.contains(&bytes)),
            Test::Ip(nets) => nets.iter().any(|n| n.contains(v)),
            Test::Arn(ps) => ps.iter().any(|p| p.matches(v)),
            Test::Null(_) => false,
        }
    }
}

/// Unicode case-insensitive equality without allocating (ASCII fast path).
fn eq_ignore_case(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

/// One compiled condition: an operator applied to one condition key.
#[derive(Debug, Clone)]
pub(super) struct Condition {
    /// The condition key, lowercased (names are case-insensitive, all of them).
    key: Box<str>,
    set: SetOp,
    if_exists: bool,
    negated: bool,
    test: Test,
}

impl Condition {
    /// Whether the condition holds for the request's context.
    pub(super) fn holds(&self, ctx: &dyn ConditionContext) -> bool {
        if let Test::Null(wants_absent) = &self.test {
            let mut present = false;
            ctx.for_each_value(&self.key, &mut |_| {
                present = true;
                false
            });
            return wants_absent.iter().any(|&absent| absent != present);
        }
        let (mut seen, mut any, mut all) = (false, false, true);
        ctx.for_each_value(&self.key, &mut |v| {
            seen = true;
            let ok = self.test.matches(v) != self.negated;
            any |= ok;
            all &= ok;
            // Go on only while the answer can still change.
            match (self.set, self.negated) {
                (SetOp::ForAnyValue, _) | (SetOp::Single, false) => !any,
                (SetOp::ForAllValues, _) | (SetOp::Single, true) => all,
            }
        });
        if !seen {
            return self.if_exists
                || match self.set {
                    SetOp::ForAllValues => true,
                    SetOp::ForAnyValue => false,
                    SetOp::Single => self.negated,
                };
        }
        match (self.set, self.negated) {
            (SetOp::ForAnyValue, _) | (SetOp::Single, false) => any,
            (SetOp::ForAllValues, _) | (SetOp::Single, true) => all,
        }
    }

    #[cfg(test)]
    pub(super) fn key(&self) -> &str {
        &self.key
    }
}

/// Compiles an operator's policy values, or says why one is wrong.
type Compile = fn(&[String]) -> Result<Test, String>;

/// The operator families by base name (lowercase): whether negated, and the compiler.
fn base_operator(name: &str) -> Option<(bool, Compile)> {
    fn strings(vs: &[String]) -> Vec<Box<str>> {
        vs.iter().map(|v| v.as_str().into()).collect()
    }
    fn numbers(vs: &[String], cmp: Cmp) -> Result<Test, String> {
        let ns = vs
            .iter()
            .map(|v| scalar::number(v).ok_or_else(|| format!("{v:?} is not a number")))
            .collect::<Result<_, _>>()?;
        Ok(Test::Numeric(cmp, ns))
    }
    fn dates(vs: &[String], cmp: Cmp) -> Result<Test, String> {
        let ds = vs
            .iter()
            .map(|v| {
                scalar::date(v).ok_or_else(|| {
                    format!("{v:?} is not a date (ISO 8601, such as 2020-01-01T00:00:00Z, or epoch seconds)")
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Test::Date(cmp, ds))
    }
    fn bools(vs: &[String]) -> Result<Vec<bool>, String> {
        vs.iter()
            .map(|v| scalar::boolean(v).ok_or_else(|| format!("{v:?} is not true or false")))
            .collect()
    }
    let (negated, compile): (bool, Compile) = match name {
        "stringequals" => (false, |v| Ok(Test::StringEquals(strings(v)))),
        "stringnotequals" => (true, |v| Ok(Test::StringEquals(strings(v)))),
        "stringequalsignorecase" => (false, |v| Ok(Test::StringEqualsIgnoreCase(strings(v)))),
        "stringnotequalsignorecase" => (true, |v| Ok(Test::StringEqualsIgnoreCase(strings(v)))),
        "stringlike" => (false, |v| {
            Ok(Test::StringLike(
                v.iter().map(|p| Pattern::new(p)).collect(),
            ))
        }),
        "stringnotlike" => (true, |v| {
            Ok(Test::StringLike(
                v.iter().map(|p| Pattern::new(p)).collect(),
            ))
        }),
        "numericequals" => (false, |v| numbers(v, Cmp::Eq)),
        "numericnotequals" => (true, |v| numbers(v, Cmp::Eq)),
        "numericlessthan" => (false, |v| numbers(v, Cmp::Lt)),
        "numericlessthanequals" => (false, |v| numbers(v, Cmp::Le)),
        "numericgreaterthan" => (false, |v| numbers(v, Cmp::Gt)),
        "numericgreaterthanequals" => (false, |v| numbers(v, Cmp::Ge)),
        "dateequals" => (false, |v| dates(v, Cmp::Eq)),
        "datenotequals" => (true, |v| dates(v, Cmp::Eq)),
        "datelessthan" => (false, |v| dates(v, Cmp::Lt)),
        "datelessthanequals" => (false, |v| dates(v, Cmp::Le)),
        "dategreaterthan" => (false, |v| dates(v, Cmp::Gt)),
        "dategreaterthanequals" => (false, |v| dates(v, Cmp::Ge)),
        "bool" => (false, |v| Ok(Test::Bool(bools(v)?))),
        "binaryequals" => (false, |v| {
            v.iter()
                .map(|b| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .map_err(|_| format!("{b:?} is not base64"))
                })
                .collect::<Result<_, _>>()
                .map(Test::Binary)
        }),
        "ipaddress" | "notipaddress" => (name == "notipaddress", |v| {
            v.iter()
                .map(|c| {
                    Cidr::parse(c).ok_or_else(|| {
                        format!("{c:?} is not an IP address or CIDR range (such as 203.0.113.0/24)")
                    })
                })
                .collect::<Result<_, _>>()
                .map(Test::Ip)
        }),
        "arnequals" | "arnlike" => (false, |v| {
            Ok(Test::Arn(v.iter().map(|a| ArnPattern::new(a)).collect()))
        }),
        "arnnotequals" | "arnnotlike" => (true, |v| {
            Ok(Test::Arn(v.iter().map(|a| ArnPattern::new(a)).collect()))
        }),
        "null" => (false, |v| Ok(Test::Null(bools(v)?))),
        _ => return None,
    };
    Some((negated, compile))
}

/// Compiles a statement's `Condition` element.
pub(super) fn compile(j: &Json, kind: PolicyKind) -> Result<Vec<Condition>, PolicyError> {
    let Json::Object(operators) = j else {
        return Err(PolicyError::new(format!(
            "The Condition element must be an object of condition operators, not {}",
            j.kind()
        )));
    };
    let mut out = Vec::new();
    for (op_name, block) in operators {
        let lower = op_name.to_ascii_lowercase();
        let (set, rest) = if let Some(r) = lower.strip_prefix("forallvalues:") {
            (SetOp::ForAllValues, r)
        } else if let Some(r) = lower.strip_prefix("foranyvalue:") {
            (SetOp::ForAnyValue, r)
        } else {
            (SetOp::Single, lower.as_str())
        };
        let (if_exists, base) = match rest.strip_suffix("ifexists") {
            Some(b) => (true, b),
            None => (false, rest),
        };
        let invalid = || PolicyError::new(format!("Invalid Condition type : {op_name}"));
        let (negated, compile_values) = base_operator(base).ok_or_else(invalid)?;
        if base == "null" && (if_exists || set != SetOp::Single) {
            return Err(invalid());
        }
        let Json::Object(keys) = block else {
            return Err(PolicyError::new(format!(
                "The condition operator {op_name} must map condition keys to values, not be {}",
                block.kind()
            )));
        };
        for (key, values) in keys {
            let key_lower = condition_key(key)?;
            if kind == PolicyKind::Key && set == SetOp::ForAllValues {
                overly_permissive(&key_lower)?;
            }
            let values = scalars(values).ok_or_else(|| {
                PolicyError::new(format!(
                    "Invalid value for condition key {key} in {op_name}: values must be strings, \
                     numbers or booleans, or an array of them"
                ))
            })?;
            let test = compile_values(&values).map_err(|why| {
                PolicyError::new(format!(
                    "Invalid value for condition key {key} in {op_name}: {why}"
                ))
            })?;
            out.push(Condition {
                key: key_lower.into(),
                set,
                if_exists,
                negated,
                test,
            });
        }
    }
    Ok(out)
}

/// A condition key's lowercase form, once checked to be `prefix:name`.
fn condition_key(key: &str) -> Result<String, PolicyError> {
    match key.split_once(':') {
        Some((prefix, name)) if !prefix.is_empty() && !name.is_empty() => Ok(key.to_lowercase()),
        _ => Err(PolicyError::new(format!(
            "Condition key {key:?} is invalid: Actions/Conditions must be prefaced by a vendor, \
             e.g., iam, sdb, ec2, etc."
        ))),
    }
}

/// AWS KMS refuses `ForAllValues` on its single-valued keys (Developer Guide, "Using set
/// operators with condition keys").
fn overly_permissive(key: &str) -> Result<(), PolicyError> {
    let what = if key.starts_with("kms:encryptioncontext:") {
        ("EncryptionContext", "encryption context")
    } else if key.starts_with("aws:requesttag/") {
        ("RequestTag", "tag")
    } else {
        return Ok(());
    };
    Err(PolicyError::new(format!(
        "OverlyPermissiveCondition:{}: Using the ForAllValues set operator with a single-valued \
         condition key matches requests without the specified {1} or with an unspecified {1}. \
         To fix, remove ForAllValues.",
        what.0, what.1
    )))
}

/// A condition value as strings: a string, number or boolean, or an array of those.
fn scalars(j: &Json) -> Option<Vec<String>> {
    fn one(j: &Json) -> Option<String> {
        match j {
            Json::String(s) => Some(s.clone()),
            Json::Number(n) => Some(n.clone()),
            Json::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    match j {
        Json::Array(items) => items.iter().map(one).collect(),
        other => one(other).map(|s| vec![s]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::policy::ConditionMap;

    fn cond(text: &str) -> Result<Vec<Condition>, PolicyError> {
        compile(&super::super::json::parse(text)?, PolicyKind::Key)
    }

    fn holds(text: &str, ctx: &ConditionMap) -> bool {
        cond(text).unwrap().iter().all(|c| c.holds(ctx))
    }

    fn ctx(pairs: &[(&str, &[&str])]) -> ConditionMap {
        let mut m = ConditionMap::new();
        for (k, vs) in pairs {
            m.set(k, vs.iter().map(|v| v.to_string()).collect());
        }
        m
    }

    #[test]
    fn keys_are_lowercased_whole_and_values_kept() {
        let c =
            cond(r#"{"StringEquals": {"kms:EncryptionContext:AppName": "ExampleApp"}}"#).unwrap();
        assert_eq!(c[0].key(), "kms:encryptioncontext:appname");
        // Any spelling of the key in the context finds it; the value stays case-sensitive.
        assert!(holds(
            r#"{"StringEquals": {"kms:EncryptionContext:AppName": "ExampleApp"}}"#,
            &ctx(&[("KMS:encryptioncontext:APPNAME", &["ExampleApp"])])
        ));
        assert!(!holds(
            r#"{"StringEquals": {"kms:EncryptionContext:AppName": "ExampleApp"}}"#,
            &ctx(&[("kms:EncryptionContext:AppName", &["exampleapp"])])
        ));
    }

    #[test]
    fn string_operators() {
        let c = ctx(&[("aws:username", &["Alice"])]);
        for (text, want) in [
            (r#"{"StringEquals": {"aws:username": "Alice"}}"#, true),
            (r#"{"StringEquals": {"aws:username": "alice"}}"#, false),
            (
                r#"{"StringEquals": {"aws:username": ["Bob", "Alice"]}}"#,
                true,
            ),
            (r#"{"StringNotEquals": {"aws:username": "Alice"}}"#, false),
            (
                r#"{"StringNotEquals": {"aws:username": ["Bob", "Carol"]}}"#,
                true,
            ),
            // Negated with several values: must match none (AND).
            (
                r#"{"StringNotEquals": {"aws:username": ["Bob", "Alice"]}}"#,
                false,
            ),
            (
                r#"{"StringEqualsIgnoreCase": {"aws:username": "ALICE"}}"#,
                true,
            ),
            (
                r#"{"StringEqualsIgnoreCase": {"aws:username": "ALIC"}}"#,
                false,
            ),
            (
                r#"{"StringNotEqualsIgnoreCase": {"aws:username": "aLiCe"}}"#,
                false,
            ),
            (
                r#"{"StringNotEqualsIgnoreCase": {"aws:username": "bob"}}"#,
                true,
            ),
            (r#"{"StringLike": {"aws:username": "Al*"}}"#, true),
            (r#"{"StringLike": {"aws:username": "A?ice"}}"#, true),
            (r#"{"StringLike": {"aws:username": "al*"}}"#, false),
            (r#"{"StringLike": {"aws:username": ["x*", "*ce"]}}"#, true),
            (r#"{"StringNotLike": {"aws:username": "B*"}}"#, true),
            (
                r#"{"StringNotLike": {"aws:username": ["B*", "*e"]}}"#,
                false,
            ),
            // Operator names are read case-insensitively.
            (r#"{"stringequals": {"aws:username": "Alice"}}"#, true),
        ] {
            assert_eq!(holds(text, &c), want, "{text}");
        }
        let unicode = ctx(&[("aws:username", &["Ärger"])]);
        assert!(holds(
            r#"{"StringEqualsIgnoreCase": {"aws:username": "äRGER"}}"#,
            &unicode
        ));
    }

    #[test]
    fn absent_keys_and_if_exists() {
        let none = ConditionMap::new();
        let empty = ctx(&[("aws:username", &[])]);
        for c in [&none, &empty] {
            for (text, want) in [
                (r#"{"StringEquals": {"aws:username": "a"}}"#, false),
                (r#"{"StringLike": {"aws:username": "*"}}"#, false),
                (r#"{"StringNotEquals": {"aws:username": "a"}}"#, true),
                (r#"{"StringNotLike": {"aws:username": "*"}}"#, true),
                (r#"{"ArnNotLike": {"aws:sourcearn": "arn:*"}}"#, true),
                (r#"{"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}"#, true),
                (r#"{"NumericNotEquals": {"s3:max-keys": "1"}}"#, true),
                (
                    r#"{"DateNotEquals": {"aws:CurrentTime": "2020-01-01"}}"#,
                    true,
                ),
                (r#"{"NumericLessThan": {"s3:max-keys": "1"}}"#, false),
                (r#"{"Bool": {"aws:SecureTransport": "true"}}"#, false),
                (r#"{"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}}"#, false),
                (r#"{"StringEqualsIfExists": {"aws:username": "a"}}"#, true),
                (
                    r#"{"StringNotEqualsIfExists": {"aws:username": "a"}}"#,
                    true,
                ),
                (r#"{"NumericLessThanIfExists": {"s3:max-keys": "1"}}"#, true),
                (r#"{"BoolIfExists": {"aws:SecureTransport": "true"}}"#, true),
                (
                    r#"{"IpAddressIfExists": {"aws:SourceIp": "10.0.0.0/8"}}"#,
                    true,
                ),
                (
                    r#"{"ForAllValues:StringEquals": {"aws:TagKeys": "a"}}"#,
                    true,
                ),
                (
                    r#"{"ForAnyValue:StringEquals": {"aws:TagKeys": "a"}}"#,
                    false,
                ),
                (
                    r#"{"ForAnyValue:StringNotEquals": {"aws:TagKeys": "a"}}"#,
                    false,
                ),
                (
                    r#"{"ForAnyValue:StringEqualsIfExists": {"aws:TagKeys": "a"}}"#,
                    true,
                ),
                (r#"{"Null": {"aws:username": "true"}}"#, true),
                (r#"{"Null": {"aws:username": "false"}}"#, false),
                (r#"{"Null": {"aws:username": true}}"#, true),
            ] {
                assert_eq!(holds(text, c), want, "{text} with {c:?}");
            }
        }
        // Present, IfExists tests normally.
        let c = ctx(&[("aws:username", &["b"])]);
        assert!(!holds(
            r#"{"StringEqualsIfExists": {"aws:username": "a"}}"#,
            &c
        ));
        assert!(holds(
            r#"{"StringNotEqualsIfExists": {"aws:username": "a"}}"#,
            &c
        ));
        assert!(holds(r#"{"Null": {"aws:username": "false"}}"#, &c));
        assert!(!holds(r#"{"Null": {"aws:username": "true"}}"#, &c));
        // Both Null values: always true.
        assert!(holds(
            r#"{"Null": {"aws:username": ["true", "false"]}}"#,
            &c
        ));
    }

    #[test]
    fn set_operators() {
        let keys = ctx(&[("kms:EncryptionContextKeys", &["AppName", "Project"])]);
        for (text, want) in [
            (
                r#"{"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["AppName", "Project", "X"]}}"#,
                true,
            ),
            (
                r#"{"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["AppName"]}}"#,
                false,
            ),
            (
                r#"{"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "AppName"}}"#,
                true,
            ),
            (
                r#"{"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "appname"}}"#,
                false,
            ),
            (
                r#"{"ForAnyValue:StringEqualsIgnoreCase": {"kms:EncryptionContextKeys": "appname"}}"#,
                true,
            ),
            (
                r#"{"ForAnyValue:StringLike": {"kms:EncryptionContextKeys": "Pro*"}}"#,
                true,
            ),
            (
                r#"{"ForAllValues:StringLike": {"kms:EncryptionContextKeys": ["App*", "Pro*"]}}"#,
                true,
            ),
            (
                r#"{"ForAllValues:StringLike": {"kms:EncryptionContextKeys": ["App*"]}}"#,
                false,
            ),
            // Negated under a set operator: per request value, "matches none".
            (
                r#"{"ForAllValues:StringNotEquals": {"kms:EncryptionContextKeys": ["Secret"]}}"#,
                true,
            ),
            (
                r#"{"ForAllValues:StringNotEquals": {"kms:EncryptionContextKeys": ["Project"]}}"#,
                false,
            ),
            (
                r#"{"ForAnyValue:StringNotEquals": {"kms:EncryptionContextKeys": ["Project"]}}"#,
                true,
            ),
            (
                r#"{"ForAnyValue:StringNotEquals": {"kms:EncryptionContextKeys": ["Project", "AppName"]}}"#,
                false,
            ),
            // No qualifier on a multi-valued key: any request value, or (negated) none.
            (
                r#"{"StringEquals": {"kms:EncryptionContextKeys": "Project"}}"#,
                true,
            ),
            (
                r#"{"StringNotEquals": {"kms:EncryptionContextKeys": "Project"}}"#,
                false,
            ),
            (
                r#"{"StringNotEquals": {"kms:EncryptionContextKeys": "Other"}}"#,
                true,
            ),
        ] {
            assert_eq!(holds(text, &keys), want, "{text}");
        }
    }

    #[test]
    fn numeric_and_date_operators() {
        let c = ctx(&[
            ("s3:max-keys", &["10"]),
            ("aws:CurrentTime", &["2020-06-01T12:00:00Z"]),
            ("aws:EpochTime", &["1591012800"]),
        ]);
        for (text, want) in [
            (r#"{"NumericEquals": {"s3:max-keys": "10"}}"#, true),
            (r#"{"NumericEquals": {"s3:max-keys": 10}}"#, true),
            (r#"{"NumericEquals": {"s3:max-keys": "10.0"}}"#, true),
            (r#"{"NumericEquals": {"s3:max-keys": "11"}}"#, false),
            (r#"{"NumericNotEquals": {"s3:max-keys": "11"}}"#, true),
            (
                r#"{"NumericNotEquals": {"s3:max-keys": ["11", "10"]}}"#,
                false,
            ),
            (r#"{"NumericLessThan": {"s3:max-keys": "10"}}"#, false),
            (r#"{"NumericLessThan": {"s3:max-keys": "10.5"}}"#, true),
            (r#"{"NumericLessThanEquals": {"s3:max-keys": "10"}}"#, true),
            (r#"{"NumericGreaterThan": {"s3:max-keys": "9"}}"#, true),
            (r#"{"NumericGreaterThan": {"s3:max-keys": "10"}}"#, false),
            (
                r#"{"NumericGreaterThanEquals": {"s3:max-keys": "10"}}"#,
                true,
            ),
            (
                r#"{"NumericGreaterThanEquals": {"s3:max-keys": "-1"}}"#,
                true,
            ),
            (
                r#"{"DateEquals": {"aws:CurrentTime": "2020-06-01T14:00:00+02:00"}}"#,
                true,
            ),
            (
                r#"{"DateNotEquals": {"aws:CurrentTime": "2020-06-01T12:00:00Z"}}"#,
                false,
            ),
            (
                r#"{"DateLessThan": {"aws:CurrentTime": "2020-06-01T12:00:01Z"}}"#,
                true,
            ),
            (
                r#"{"DateLessThan": {"aws:CurrentTime": "2020-06-01T12:00:00Z"}}"#,
                false,
            ),
            (
                r#"{"DateLessThanEquals": {"aws:CurrentTime": "2020-06-01T12:00:00Z"}}"#,
                true,
            ),
            (
                r#"{"DateGreaterThan": {"aws:CurrentTime": "2020-01-01"}}"#,
                true,
            ),
            (r#"{"DateGreaterThan": {"aws:CurrentTime": "2021"}}"#, true),
            (
                r#"{"DateGreaterThanEquals": {"aws:CurrentTime": "2020-06-02"}}"#,
                false,
            ),
            // Epoch seconds compare with ISO dates either way round.
            (
                r#"{"DateEquals": {"aws:EpochTime": "2020-06-01T12:00:00Z"}}"#,
                true,
            ),
            (r#"{"DateLessThan": {"aws:CurrentTime": 1591012801}}"#, true),
        ] {
            assert_eq!(holds(text, &c), want, "{text}");
        }
        // A request value of the wrong type matches nothing (and so satisfies a negation).
        let junk = ctx(&[("s3:max-keys", &["ten"]), ("aws:CurrentTime", &["soon"])]);
        assert!(!holds(
            r#"{"NumericLessThan": {"s3:max-keys": "100"}}"#,
            &junk
        ));
        assert!(holds(
            r#"{"NumericNotEquals": {"s3:max-keys": "100"}}"#,
            &junk
        ));
        assert!(!holds(
            r#"{"DateGreaterThan": {"aws:CurrentTime": "2000-01-01"}}"#,
            &junk
        ));
    }

    #[test]
    fn bool_binary_ip_arn_operators() {
        let c = ctx(&[
            ("kms:GrantIsForAWSResource", &["true"]),
            ("aws:SecureTransport", &["FALSE"]),
            ("aws:SourceIp", &["203.0.113.9"]),
            ("aws:SourceIp6", &["2001:db8:1234:5678::42"]),
            (
                "aws:SourceArn",
                &["arn:aws:sns:us-east-1:123456789012:topic-a"],
            ),
            ("x:bin", &["QmluYXJ5"]),
        ]);
        for (text, want) in [
            (r#"{"Bool": {"kms:GrantIsForAWSResource": true}}"#, true),
            (r#"{"Bool": {"kms:GrantIsForAWSResource": "true"}}"#, true),
            (r#"{"Bool": {"kms:GrantIsForAWSResource": "false"}}"#, false),
            (r#"{"Bool": {"aws:SecureTransport": "false"}}"#, true),
            (r#"{"BinaryEquals": {"x:bin": "QmluYXJ5"}}"#, true),
            (r#"{"BinaryEquals": {"x:bin": "QmluYXJ6"}}"#, false),
            (r#"{"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}"#, true),
            (
                r#"{"IpAddress": {"aws:SourceIp": ["198.51.100.0/24", "203.0.113.9"]}}"#,
                true,
            ),
            (
                r#"{"IpAddress": {"aws:SourceIp": "203.0.112.0/24"}}"#,
                false,
            ),
            (
                r#"{"NotIpAddress": {"aws:SourceIp": "203.0.113.0/24"}}"#,
                false,
            ),
            (r#"{"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}"#, true),
            (
                r#"{"IpAddress": {"aws:SourceIp6": "2001:DB8:1234:5678::/64"}}"#,
                true,
            ),
            (
                r#"{"IpAddress": {"aws:SourceIp6": ["203.0.113.0/24", "2001:db8:1234:5679::/64"]}}"#,
                false,
            ),
            (
                r#"{"ArnEquals": {"aws:SourceArn": "arn:aws:sns:us-east-1:123456789012:topic-a"}}"#,
                true,
            ),
            (
                r#"{"ArnLike": {"aws:SourceArn": "arn:aws:sns:*:123456789012:topic-*"}}"#,
                true,
            ),
            (
                r#"{"ArnLike": {"aws:SourceArn": "arn:aws:sns:*:111122223333:*"}}"#,
                false,
            ),
            (
                r#"{"ArnNotLike": {"aws:SourceArn": "arn:aws:sns:*:111122223333:*"}}"#,
                true,
            ),
            (
                r#"{"ArnNotEquals": {"aws:SourceArn": "arn:aws:sns:us-east-1:123456789012:topic-a"}}"#,
                false,
            ),
            (
                r#"{"ArnLike": {"aws:SourceArn": "arn:aws:SNS:*:123456789012:topic-a"}}"#,
                false,
            ),
        ] {
            assert_eq!(holds(text, &c), want, "{text}");
        }
    }

    #[test]
    fn all_operators_and_keys_must_hold() {
        let c = ctx(&[("aws:username", &["alice"]), ("s3:max-keys", &["5"])]);
        let both = r#"{"StringEquals": {"aws:username": "alice", "s3:max-keys": "5"},
                       "NumericLessThan": {"s3:max-keys": "6"}}"#;
        assert!(holds(both, &c));
        let one_fails = r#"{"StringEquals": {"aws:username": "alice", "s3:max-keys": "6"}}"#;
        assert!(!holds(one_fails, &c));
        let other_op_fails = r#"{"StringEquals": {"aws:username": "alice"},
                                 "NumericLessThan": {"s3:max-keys": "5"}}"#;
        assert!(!holds(other_op_fails, &c));
        assert!(holds("{}", &c), "an empty block holds");
    }

    #[test]
    fn malformed_conditions_are_refused_with_reasons() {
        for (text, says) in [
            (
                r#"{"StringEqualz": {"a:b": "x"}}"#,
                "Invalid Condition type : StringEqualz",
            ),
            (
                r#"{"ForSomeValues:StringEquals": {"a:b": "x"}}"#,
                "Invalid Condition type",
            ),
            (
                r#"{"NullIfExists": {"a:b": "true"}}"#,
                "Invalid Condition type : NullIfExists",
            ),
            (
                r#"{"ForAnyValue:Null": {"a:b": "true"}}"#,
                "Invalid Condition type",
            ),
            (
                r#"{"StringEqualsIfExistsIfExists": {"a:b": "x"}}"#,
                "Invalid Condition type",
            ),
            (
                r#"{"StringEquals": "x"}"#,
                "must map condition keys to values",
            ),
            (
                r#"{"StringEquals": {"a:b": {"c": "d"}}}"#,
                "values must be strings",
            ),
            (
                r#"{"StringEquals": {"a:b": null}}"#,
                "values must be strings",
            ),
            (
                r#"{"StringEquals": {"a:b": [["x"]]}}"#,
                "values must be strings",
            ),
            (
                r#"{"StringEquals": {"nocolon": "x"}}"#,
                "must be prefaced by a vendor",
            ),
            (
                r#"{"StringEquals": {":x": "x"}}"#,
                "must be prefaced by a vendor",
            ),
            (
                r#"{"NumericEquals": {"a:b": "ten"}}"#,
                "\"ten\" is not a number",
            ),
            (
                r#"{"NumericLessThan": {"a:b": ["1", "1e3"]}}"#,
                "\"1e3\" is not a number",
            ),
            (
                r#"{"DateLessThan": {"a:b": "2020-02-30"}}"#,
                "is not a date",
            ),
            (
                r#"{"Bool": {"a:b": "yes"}}"#,
                "\"yes\" is not true or false",
            ),
            (r#"{"Null": {"a:b": "maybe"}}"#, "is not true or false"),
            (
                r#"{"IpAddress": {"a:b": "10.0.0.0/33"}}"#,
                "is not an IP address",
            ),
            (
                r#"{"NotIpAddress": {"a:b": "example.com"}}"#,
                "is not an IP address",
            ),
            (r#"{"BinaryEquals": {"a:b": "***"}}"#, "is not base64"),
            (
                r#"["StringEquals"]"#,
                "must be an object of condition operators",
            ),
            (
                r#"{"ForAllValues:StringEquals": {"kms:EncryptionContext:Dept": "IT"}}"#,
                "OverlyPermissiveCondition:EncryptionContext",
            ),
            (
                r#"{"ForAllValues:StringLike": {"aws:RequestTag/Team": "*"}}"#,
                "OverlyPermissiveCondition:RequestTag",
            ),
        ] {
            let e = cond(text).expect_err(text);
            assert!(e.to_string().contains(says), "{text}: {e}");
        }
        // The KMS-only refusal does not apply to identity policies.
        let j = super::super::json::parse(
            r#"{"ForAllValues:StringEquals": {"kms:EncryptionContext:Dept": "IT"}}"#,
        )
        .unwrap();
        assert!(compile(&j, PolicyKind::Identity).is_ok());
        // ForAnyValue on the same key is allowed (the guide only names ForAllValues).
        assert!(
            cond(r#"{"ForAnyValue:StringEquals": {"kms:EncryptionContext:Dept": "IT"}}"#).is_ok()
        );
    }
}
