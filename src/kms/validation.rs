//! AWS's wording for a value that breaks a constraint of the service model (length, range,
//! pattern, enum, required): `1 validation error detected: Value 'x' at 'aliasName' failed to
//! satisfy constraint: Member must ...`. One place for the wire's model validator
//! (`api/validate.rs`, every request body before the operation sees it) and the library's own
//! checks (the CLI and library callers bypass the wire), so both say the same thing.

use crate::error::{KmsError, Result};

/// Quoted values are cut here (a 128 KiB policy is not echoed whole); AWS echoes them whole.
const MAX_SHOWN: usize = 8192;
/// At most this many errors are spelled out; the count in front stays exact.
const MAX_LISTED: usize = 100;

/// How the offending value appears in the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// `Value 'x' at ...`
    Value(String),
    /// `Value at ...`: blobs and sensitive members (AWS never echoes a plaintext).
    Hidden,
    /// `Value null at ...`: a required member that is missing.
    Null,
}

/// One broken constraint: where (`keyId`, `tags.1.member.tagKey`), the value, which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub value: Shown,
    pub rule: String,
}

/// The rules' sentences, as AWS writes them.
pub mod rule {
    pub fn not_null() -> String {
        "Member must not be null".to_owned()
    }
    pub fn min_length(n: i64) -> String {
        format!("Member must have length greater than or equal to {n}")
    }
    pub fn max_length(n: i64) -> String {
        format!("Member must have length less than or equal to {n}")
    }
    pub fn min_value(n: i64) -> String {
        format!("Member must have value greater than or equal to {n}")
    }
    pub fn max_value(n: i64) -> String {
        format!("Member must have value less than or equal to {n}")
    }
    pub fn pattern(p: &str) -> String {
        format!("Member must satisfy regular expression pattern: {p}")
    }
    pub fn enum_set<S: AsRef<str>>(values: &[S]) -> String {
        let names: Vec<&str> = values.iter().map(AsRef::as_ref).collect();
        format!("Member must satisfy enum value set: [{}]", names.join(", "))
    }
    /// A list whose elements break their own rules: all of the element's rules, listed.
    pub fn each(rules: &[String]) -> String {
        format!("Member must satisfy constraint: [{}]", rules.join(", "))
    }
}

impl Violation {
    pub fn new(path: impl Into<String>, value: Shown, rule: String) -> Violation {
        Violation {
            path: path.into(),
            value,
            rule,
        }
    }

    fn sentence(&self) -> String {
        let at = match &self.value {
            Shown::Value(v) => format!("Value '{}' at", clip(v)),
            Shown::Hidden => "Value at".to_owned(),
            Shown::Null => "Value null at".to_owned(),
        };
        format!(
            "{at} '{}' failed to satisfy constraint: {}",
            self.path, self.rule
        )
    }
}

/// `1 validation error detected: ...` / `2 validation errors detected: ...; ...`.
pub fn message(v: &[Violation]) -> String {
    let n = v.len();
    let plural = if n == 1 { "error" } else { "errors" };
    let listed: Vec<String> = v.iter().take(MAX_LISTED).map(Violation::sentence).collect();
    format!("{n} validation {plural} detected: {}", listed.join("; "))
}

/// The `ValidationException` for these violations.
pub fn error(v: &[Violation]) -> KmsError {
    KmsError::validation(message(v))
}

/// A required member, or AWS's `Value null at 'member'`.
pub fn required<T>(v: Option<T>, member: &str) -> Result<T> {
    v.ok_or_else(|| error(&[Violation::new(member, Shown::Null, rule::not_null())]))
}

/// A length (characters of a string, bytes of a blob, elements of a list) within
/// `min..=max`, else the bound it breaks.
pub fn length(member: &str, value: Shown, len: usize, min: usize, max: usize) -> Result<()> {
    let rule = if len < min {
        rule::min_length(min as i64)
    } else if len > max {
        rule::max_length(max as i64)
    } else {
        return Ok(());
    };
    Err(error(&[Violation::new(member, value, rule)]))
}

/// A number within `min..=max`, else the bound it breaks.
pub fn range(member: &str, v: i64, min: i64, max: i64) -> Result<()> {
    let rule = if v < min {
        rule::min_value(min)
    } else if v > max {
        rule::max_value(max)
    } else {
        return Ok(());
    };
    Err(error(&[Violation::new(
        member,
        Shown::Value(v.to_string()),
        rule,
    )]))
}

fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(MAX_SHOWN) {
        None => s.into(),
        Some((end, _)) => format!("{}...", &s[..end]).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wording_is_aws() {
        let one = Violation::new(
            "aliasName",
            Shown::Value("alias/a;b".into()),
            rule::pattern("^[a-zA-Z0-9:/_-]+$"),
        );
        assert_eq!(
            message(std::slice::from_ref(&one)),
            "1 validation error detected: Value 'alias/a;b' at 'aliasName' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"
        );
        let two = [
            one,
            Violation::new("plaintext", Shown::Hidden, rule::max_length(4096)),
        ];
        assert_eq!(
            message(&two),
            "2 validation errors detected: Value 'alias/a;b' at 'aliasName' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$; \
             Value at 'plaintext' failed to satisfy constraint: Member must have length less \
             than or equal to 4096"
        );
        let e = required::<()>(None, "keyId").unwrap_err();
        assert_eq!(e.aws_name(), "ValidationException");
        assert_eq!(
            e.message(),
            "1 validation error detected: Value null at 'keyId' failed to satisfy constraint: \
             Member must not be null"
        );
        assert_eq!(
            range("numberOfBytes", 0, 1, 1024).unwrap_err().message(),
            "1 validation error detected: Value '0' at 'numberOfBytes' failed to satisfy \
             constraint: Member must have value greater than or equal to 1"
        );
        assert_eq!(
            range("numberOfBytes", 1025, 1, 1024).unwrap_err().message(),
            "1 validation error detected: Value '1025' at 'numberOfBytes' failed to satisfy \
             constraint: Member must have value less than or equal to 1024"
        );
        assert!(range("limit", 1000, 1, 1000).is_ok());
        assert!(length("x", Shown::Hidden, 0, 0, 3).is_ok());
        assert_eq!(
            rule::each(&[rule::max_length(8192), rule::min_length(1)]),
            "Member must satisfy constraint: [Member must have length less than or equal to \
             8192, Member must have length greater than or equal to 1]"
        );
        assert_eq!(
            rule::enum_set(&["A", "B"]),
            "Member must satisfy enum value set: [A, B]"
        );
    }

    #[test]
    fn long_values_and_long_lists_are_cut() {
        let long = "é".repeat(MAX_SHOWN + 5);
        let v = Violation::new("policy", Shown::Value(long), rule::max_length(1));
        let m = message(&[v]);
        assert!(m.contains(&format!("'{}...'", "é".repeat(MAX_SHOWN))));
        let many: Vec<Violation> = (0..MAX_LISTED + 7)
            .map(|i| Violation::new(format!("t.{i}"), Shown::Hidden, rule::min_length(1)))
            .collect();
        let m = message(&many);
        assert!(m.starts_with(&format!("{} validation errors detected: ", MAX_LISTED + 7)));
        assert_eq!(m.matches("failed to satisfy").count(), MAX_LISTED);
    }
}
