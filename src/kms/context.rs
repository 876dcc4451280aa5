//! Encryption context: the caller's string→string map bound to a ciphertext as AAD.
//!
//! Canonical form (see docs/ciphertext-format.md): pairs sorted by key bytes, then
//! `u32 count ‖ (u32 len ‖ key ‖ u32 len ‖ value)*`, all big-endian. Length prefixes make it
//! unambiguous (`{"a":"bc"}` ≠ `{"ab":"c"}`); sorting makes it order-independent; bytes are
//! compared exactly, so matching is case-sensitive.

use std::collections::BTreeMap;

use crate::error::{KmsError, Result};

/// Largest total size of keys and values, in bytes (AWS documents 8 KB).
pub const MAX_CONTEXT_BYTES: usize = 8192;

/// A validated encryption context. Empty is valid and distinct from any non-empty context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// No encryption context.
    pub fn empty() -> EncryptionContext {
        EncryptionContext::default()
    }

    /// A context from its pairs, checked against AWS's limits.
    pub fn new(map: BTreeMap<String, String>) -> Result<EncryptionContext> {
        let total: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
        if total > MAX_CONTEXT_BYTES {
            return Err(KmsError::validation(format!(
                "EncryptionContext is {total} bytes; at most {MAX_CONTEXT_BYTES} are allowed"
            )));
        }
        Ok(EncryptionContext(map))
    }

    /// Parses `key=value` pairs (the CLI's `--context`). The first `=` splits.
    pub fn from_pairs<I, S>(pairs: I) -> Result<EncryptionContext>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut map = BTreeMap::new();
        for p in pairs {
            let p = p.as_ref();
            let (k, v) = p.split_once('=').ok_or_else(|| {
                KmsError::validation(format!("context entry {p:?} is not key=value"))
            })?;
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(KmsError::validation(format!(
                    "context key {k:?} is given twice"
                )));
            }
        }
        EncryptionContext::new(map)
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// Appends the canonical encoding to `out`.
    pub fn write_canonical(&self, out: &mut Vec<u8>) {
        // BTreeMap<String, _> iterates in byte order of the keys: already canonical.
        out.extend_from_slice(&(self.0.len() as u32).to_be_bytes());
        for (k, v) in &self.0 {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
    }

    /// The canonical bytes bound into ciphertexts as AAD (`docs/formats.md`).
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_canonical(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        EncryptionContext::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn order_independent() {
        assert_eq!(
            ctx(&[("a", "1"), ("b", "2")]).canonical(),
            ctx(&[("b", "2"), ("a", "1")]).canonical()
        );
    }

    #[test]
    fn unambiguous_and_case_sensitive() {
        let all = [
            ctx(&[]),
            ctx(&[("a", "bc")]),
            ctx(&[("ab", "c")]),
            ctx(&[("A", "bc")]),
            ctx(&[("a", "BC")]),
            ctx(&[("a", "b"), ("c", "")]),
            ctx(&[("a", "b\0\0\0\0c")]),
            ctx(&[("a", "")]),
        ];
        for (i, x) in all.iter().enumerate() {
            for (j, y) in all.iter().enumerate() {
                assert_eq!(i == j, x.canonical() == y.canonical(), "{x:?} vs {y:?}");
            }
        }
    }

    #[test]
    fn known_encoding() {
        assert_eq!(ctx(&[]).canonical(), vec![0, 0, 0, 0]);
        assert_eq!(
            ctx(&[("k", "vv")]).canonical(),
            vec![0, 0, 0, 1, 0, 0, 0, 1, b'k', 0, 0, 0, 2, b'v', b'v']
        );
    }

    #[test]
    fn limits_and_pairs() {
        let big: BTreeMap<_, _> = [("k".to_string(), "v".repeat(8192))].into();
        assert_eq!(
            EncryptionContext::new(big).unwrap_err().aws_name(),
            "ValidationException"
        );
        let c = EncryptionContext::from_pairs(["purpose=test", "x=a=b"]).unwrap();
        assert_eq!(c.as_map()["x"], "a=b");
        assert!(EncryptionContext::from_pairs(["novalue"]).is_err());
        assert!(EncryptionContext::from_pairs(["a=1", "a=2"]).is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// Any map: a context (whose canonical form is the same for the same map) or a
            /// ValidationException.
            #[test]
            fn arbitrary_contexts(m in proptest::collection::btree_map("\\PC{0,20}", "\\PC{0,40}", 0..12)) {
                match EncryptionContext::new(m.clone()) {
                    Ok(c) => prop_assert_eq!(c.canonical(), EncryptionContext::new(m).unwrap().canonical()),
                    Err(e) => prop_assert_eq!(e.aws_name(), "ValidationException"),
                }
            }
        }
    }
}
