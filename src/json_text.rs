//! A byte-level walk over JSON text: which bytes are structure and which lie inside strings.
//! For the few places that look at text before (or instead of) a parser: nesting depth,
//! bounded before a policy is parsed and before the audit trail copies a member, and the
//! audit record's compacting of what it copies.

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

/// What a JSON text holds outside its strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// The deepest nesting of `[`/`{`.
    pub depth: usize,
    /// Whether it has a number (a digit or `-` outside strings).
    pub numbers: bool,
}

/// The [`Shape`] of `text`, in one pass without allocating (malformed text gives some
/// shape; a parser reports what is wrong with it).
pub(crate) fn shape(text: &[u8]) -> Shape {
    let (mut depth, mut max, mut numbers) = (0usize, 0usize, false);
    let mut strings = Strings::default();
    for &b in text.iter().filter(|b| strings.structural(**b)) {
        match b {
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => numbers = true,
            _ => {}
        }
    }
    Shape {
        depth: max,
        numbers,
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

    #[test]
    fn shapes_count_brackets_and_numbers_outside_strings_only() {
        let shape_of = |t: &[u8]| {
            let s = shape(t);
            (s.depth, s.numbers)
        };
        assert_eq!(shape_of(b"1"), (0, true));
        assert_eq!(shape_of(br#"{"a":[{"b":"[[[{{1"}]}"#), (3, false));
        assert_eq!(shape_of(br#"[[]][[[-]]]"#), (3, true));
    }
}
