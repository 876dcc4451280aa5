//! A byte-level walk over JSON text: which bytes are structure and which lie inside strings.
//! For the few places that look at text before (or instead of) a parser: a policy's nesting
//! depth, bounded before it is parsed, and the audit record's compacting of members it copies.

/// Fed a JSON text's bytes in order, tells which are outside strings.
#[derive(Debug, Default)]
pub(crate) struct Strings {
    inside: bool,
    escaped: bool,
}

impl Strings {
    /// Whether `b`, the next byte, is structural: outside every string (a quote that opens
    /// one counts as outside, the quote that closes it as inside).
    pub(crate) fn structural(&mut self, b: u8) -> bool {
        if !self.inside {
            self.inside = b == b'"';
            return true;
        }
        if self.escaped {
            self.escaped = false;
        } else if b == b'\\' {
            self.escaped = true;
        } else if b == b'"' {
            self.inside = false;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_quotes_and_backslashes_stay_inside_strings() {
        let text = br#"{"a\"b\\":[1, "x y"]}"#;
        let mut s = Strings::default();
        let outside: String = text
            .iter()
            .filter(|b| s.structural(**b))
            .map(|b| char::from(*b))
            .collect();
        // Each string leaves only its opening quote.
        assert_eq!(outside, r#"{":[1, "]}"#);
    }
}
