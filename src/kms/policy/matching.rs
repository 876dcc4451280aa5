//! Wildcard matching (`*` any run, `?` any one character), compiled once per pattern.
//!
//! The matcher is the greedy one of `src/api/auth.rs` (one remembered star, no recursion),
//! over bytes so it allocates nothing: `?` steps over one whole UTF-8 character, literals
//! compare bytes (equal UTF-8 sequences are equal characters). Worst case is
//! O(pattern × text), never exponential.

/// A compiled wildcard pattern.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) enum Pattern {
    /// `*`: everything.
    #[default]
    Any,
    /// No wildcard: the text itself.
    Exact(Box<str>),
    /// Has `*` or `?`.
    Wild(Box<str>),
}

impl Pattern {
    /// A case-sensitive pattern.
    pub(super) fn new(text: &str) -> Pattern {
        if text == "*" {
            Pattern::Any
        } else if text.contains(['*', '?']) {
            Pattern::Wild(text.into())
        } else {
            Pattern::Exact(text.into())
        }
    }

    /// A pattern for [`Pattern::matches_ignore_case`]: stored ASCII-lowercased.
    pub(super) fn new_ignore_case(text: &str) -> Pattern {
        Pattern::new(&text.to_ascii_lowercase())
    }

    /// Case-sensitive match of all of `text`.
    pub(super) fn matches(&self, text: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(p) => **p == *text,
            Pattern::Wild(p) => wildcard(p.as_bytes(), text.as_bytes(), false),
        }
    }

    /// Match ignoring ASCII case (the pattern was built by [`Pattern::new_ignore_case`]).
    pub(super) fn matches_ignore_case(&self, text: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(p) => p.eq_ignore_ascii_case(text),
            Pattern::Wild(p) => wildcard(p.as_bytes(), text.as_bytes(), true),
        }
    }
}

/// Length of the UTF-8 sequence a leading byte starts (1 for anything unexpected).
fn utf8_len(b: u8) -> usize {
    match b {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

/// `pattern` against all of `text`; with `fold`, text bytes are ASCII-lowercased (the
/// pattern already is).
pub(super) fn wildcard(pattern: &[u8], text: &[u8], fold: bool) -> bool {
    let (mut pi, mut ti) = (0usize, 0usize);
    // Where the last `*` was and the text position it is currently taken to stop at.
    let mut star: Option<(usize, usize)> = None;
    while ti < text.len() {
        match pattern.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some(b'?') => {
                pi += 1;
                ti += utf8_len(text[ti]);
                continue;
            }
            Some(&c) => {
                let t = if fold {
                    text[ti].to_ascii_lowercase()
                } else {
                    text[ti]
                };
                if c == t {
                    pi += 1;
                    ti += 1;
                    continue;
                }
            }
            None => {}
        }
        // Mismatch: let the last star swallow one more character, or fail.
        match star {
            Some((sp, st)) if st < text.len() => {
                let next = st + utf8_len(text[st]);
                star = Some((sp, next));
                pi = sp + 1;
                ti = next;
            }
            _ => return false,
        }
    }
    pattern
        .get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

/// An ARN pattern of the `Arn*` condition operators: the six colon-separated parts matched
/// one by one (the last part keeps its own colons), so a `*` never crosses a colon. A policy
/// value that is not six parts long is matched as a whole string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ArnPattern {
    Parts(Box<[Pattern; 6]>),
    Whole(Pattern),
}

impl ArnPattern {
    pub(super) fn new(text: &str) -> ArnPattern {
        let mut parts = text.splitn(6, ':');
        let mut out: [Pattern; 6] = Default::default();
        for slot in out.iter_mut() {
            match parts.next() {
                Some(p) => *slot = Pattern::new(p),
                None => return ArnPattern::Whole(Pattern::new(text)),
            }
        }
        ArnPattern::Parts(Box::new(out))
    }

    pub(super) fn matches(&self, text: &str) -> bool {
        match self {
            ArnPattern::Whole(p) => p.matches(text),
            ArnPattern::Parts(ps) => {
                let mut parts = text.splitn(6, ':');
                ps.iter()
                    .all(|p| parts.next().is_some_and(|t| p.matches(t)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_iam() {
        for (p, t, want) in [
            ("*", "", true),
            ("*", "anything", true),
            ("*", "*abc", true),
            ("", "", true),
            ("", "a", false),
            ("a", "", false),
            ("abc", "abc", true),
            ("abc", "abd", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("a*c", "ac", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbbd", false),
            ("*a*b*c*", "xxaxxbxxcxx", true),
            ("*a*b*c", "xxaxxbxxcxx", false),
            ("key/*", "key/1234", true),
            ("key/*", "alias/1234", false),
            ("??", "é!", true),
            ("?", "é", true),
            ("é?", "éa", true),
            ("a*", "aé", true),
            ("*é", "xxé", true),
            ("a**b", "ab", true),
            ("a*?", "a", false),
            ("a*?", "ab", true),
            ("Abc", "abc", false),
        ] {
            assert_eq!(Pattern::new(p).matches(t), want, "{p:?} ~ {t:?}");
            assert_eq!(
                wildcard(p.as_bytes(), t.as_bytes(), false),
                want,
                "raw {p:?} ~ {t:?}"
            );
        }
    }

    #[test]
    fn ignore_case_folds_ascii_only_on_the_text() {
        let p = Pattern::new_ignore_case("kms:Generate*");
        assert!(p.matches_ignore_case("KMS:GenerateDataKey"));
        assert!(p.matches_ignore_case("kms:generatedatakeypair"));
        assert!(!p.matches_ignore_case("kms:Decrypt"));
        let e = Pattern::new_ignore_case("kms:Decrypt");
        assert_eq!(e, Pattern::Exact("kms:decrypt".into()));
        assert!(e.matches_ignore_case("KMS:DECRYPT"));
        assert!(!Pattern::new("kms:Decrypt").matches("kms:decrypt"));
    }

    #[test]
    fn no_exponential_backtracking() {
        let t = "a".repeat(5000);
        assert!(!wildcard(
            format!("{}b", "*a".repeat(50)).as_bytes(),
            t.as_bytes(),
            false
        ));
        assert!(wildcard(
            format!("{}*", "*a".repeat(50)).as_bytes(),
            t.as_bytes(),
            false
        ));
    }

    #[test]
    fn arn_patterns_match_part_by_part() {
        let p = ArnPattern::new("arn:aws:someservice:*:111122223333:finance/*");
        assert!(p.matches("arn:aws:someservice:us-east-2:111122223333:finance/doc.txt"));
        // The IAM guide's example: StringLike would match, ArnLike must not.
        let tricky = "arn:aws:someservice:us-east-2:999999999999:store/abc:111122223333:finance/document.txt";
        assert!(!p.matches(tricky));
        assert!(Pattern::new("arn:aws:someservice:*:111122223333:finance/*").matches(tricky));
        // The resource part keeps its colons.
        let q = ArnPattern::new("arn:aws:logs:*:*:log-group:/a/*");
        assert!(q.matches("arn:aws:logs:us-east-1:111122223333:log-group:/a/b"));
        // Not an ARN in the request: no match; not an ARN in the policy: whole-string match.
        assert!(!p.matches("finance/doc.txt"));
        let w = ArnPattern::new("*");
        assert!(matches!(w, ArnPattern::Whole(_)));
        assert!(w.matches("arn:aws:iam::111122223333:role/x") && w.matches("x"));
        let role = ArnPattern::new("arn:aws:iam::111122223333:role/*");
        assert!(role.matches("arn:aws:iam::111122223333:role/Admin"));
        assert!(!role.matches("arn:aws:iam::444455556666:role/Admin"));
        assert!(!role.matches("arn:aws:iam::111122223333:user/Admin"));
        assert!(!role.matches("ARN:aws:iam::111122223333:role/Admin"));
    }
}
