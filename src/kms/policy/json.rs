//! The JSON layer of a policy document: a strict tree that keeps members in order, refuses
//! duplicate member names and over-long arrays, and is only built for shallow text.
//!
//! `serde_json::Value` would silently keep the last of two `"Effect"` members; a policy that
//! reads one way here and another way in the next tool is a hazard, so a duplicate is an error.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::PolicyError;

/// Deepest nesting of arrays and objects a document may have. A real policy needs 6
/// (document, `Statement` array, statement, `Condition`, operator, value array).
pub(super) const MAX_DEPTH: usize = 8;

/// Most elements in one JSON array or members in one object.
pub(super) const MAX_ITEMS: usize = 4096;

/// One JSON value, members in document order.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Json {
    Null,
    Bool(bool),
    /// A number, as its decimal text (`10`, `-3`, `1.5`).
    Number(String),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// What the value is, for messages: "a string", "an object", ...
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

/// Parses `text` (already size-checked) into a [`Json`] tree: depth first, by a scan that
/// costs one pass and no allocation, so hostile nesting never reaches the parser.
pub(super) fn parse(text: &str) -> Result<Json, PolicyError> {
    if crate::json_text::shape(text.as_bytes()).depth > MAX_DEPTH {
        return Err(PolicyError::new(format!(
            "The policy document is nested too deeply: at most {MAX_DEPTH} levels of arrays \
             and objects are allowed"
        )));
    }
    serde_json::from_str::<Json>(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => PolicyError::new(e.to_string()),
        _ => PolicyError::new(format!("The policy is not in valid JSON format: {e}")),
    })
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.to_string()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.to_string()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        Ok(Json::Number(v.to_string()))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Json>()? {
            if items.len() == MAX_ITEMS {
                return Err(de::Error::custom(format!(
                    "The policy has an array of more than {MAX_ITEMS} elements"
                )));
            }
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members: Vec<(String, Json)> = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            if members.len() == MAX_ITEMS {
                return Err(de::Error::custom(format!(
                    "The policy has an object of more than {MAX_ITEMS} members"
                )));
            }
            // Linear for the small objects of real policies; sorted check below for big ones.
            if members.len() < 16 && members.iter().any(|(n, _)| *n == name) {
                return Err(duplicate(&name));
            }
            let value = map.next_value::<Json>()?;
            members.push((name, value));
        }
        if members.len() >= 16 {
            let mut names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
            names.sort_unstable();
            if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
                return Err(duplicate(w[0]));
            }
        }
        Ok(Json::Object(members))
    }
}

fn duplicate<E: de::Error>(name: &str) -> E {
    E::custom(format!(
        "The policy contains the element \"{name}\" more than once in one object"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_members_in_order_and_numbers_as_text() {
        let j = parse(r#"{"b": [1, -2, 1.5, true, null, "x"], "a": {}}"#).unwrap();
        let Json::Object(m) = j else { panic!("object") };
        assert_eq!(m[0].0, "b");
        assert_eq!(m[1], ("a".to_string(), Json::Object(vec![])));
        assert_eq!(
            m[0].1,
            Json::Array(vec![
                Json::Number("1".into()),
                Json::Number("-2".into()),
                Json::Number("1.5".into()),
                Json::Bool(true),
                Json::Null,
                Json::String("x".into()),
            ])
        );
    }

    #[test]
    fn refuses_duplicate_members_small_and_large() {
        let e = parse(r#"{"Effect": "Allow", "Effect": "Deny"}"#).unwrap_err();
        assert!(e.to_string().contains("\"Effect\" more than once"), "{e}");
        let many: Vec<String> = (0..20).map(|i| format!("\"k{i}\": 1")).collect();
        let text = format!("{{{}, \"k3\": 2}}", many.join(","));
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("\"k3\" more than once"), "{e}");
        // Same names in different objects are fine.
        assert!(parse(r#"{"a": {"x": 1}, "b": {"x": 1}}"#).is_ok());
    }

    #[test]
    fn refuses_deep_nesting_before_parsing() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let e = parse(&deep).unwrap_err();
        assert!(e.to_string().contains("nested too deeply"), "{e}");
        // Unbalanced hostile input is stopped by the scan too.
        let e = parse(&"[".repeat(100_000)).unwrap_err();
        assert!(e.to_string().contains("nested too deeply"), "{e}");
        // Brackets inside strings (with escaped quotes) do not count.
        let s = format!("[\"\\\"{}\"]", "[".repeat(50));
        assert!(parse(&s).is_ok());
    }

    #[test]
    fn refuses_long_arrays_and_reports_bad_json() {
        let long = format!("[{}]", vec!["1"; MAX_ITEMS + 1].join(","));
        let e = parse(&long).unwrap_err();
        assert!(e.to_string().contains("more than 4096"), "{e}");
        let fits = format!("[{}]", vec!["1"; MAX_ITEMS].join(","));
        assert!(parse(&fits).is_ok());
        for bad in ["", "{", "{\"a\": }", "[1,]", "nope", "{\"a\":1} x"] {
            let e = parse(bad).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("The policy is not in valid JSON format"),
                "{bad}: {e}"
            );
        }
    }
}
