//! Every request body against the AWS KMS service model, before the operation sees it.
//!
//! AWS checks a request against the model's constraints (required members, lengths, ranges,
//! patterns, enums) before any rule of the operation: a value the model forbids (an alias name
//! with a `;`) is a `ValidationException` in AWS's words, and the operation's own exceptions
//! (`InvalidAliasNameException`, ...) are for values the model allows. A body that does not
//! parse, or has a member of the wrong JSON type or bad base64, is a `SerializationException`
//! first, as at AWS.
//!
//! The constraints are `kms-model.json`, generated from botocore's `service-2.json` by
//! `scripts/kms-model.py` (it covers operations p11kms does not serve yet, so they are checked
//! the day they are). The body is walked once with serde, without building a JSON tree; the
//! recursion is the model's (structure, list, structure), and unknown members are skipped.
//!
//! Differences from AWS, on purpose (docs/compatibility.md): values of blob members are never
//! quoted (AWS quotes a Java buffer description for non-sensitive ones); enum value sets are
//! listed in the model's order (AWS's order is its own hash order); patterns match the whole
//! value.

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::error::{clip_to, ApiError};
use crate::kms::validation::{message, rule, Shown, Violation};

/// The generated table (see `scripts/kms-model.py`).
const TABLE: &str = include_str!("kms-model.json");
/// Serialization messages quote at most this much of the request.
const MAX_MESSAGE: usize = 300;

#[derive(Deserialize)]
struct RawTable {
    operations: HashMap<String, String>,
    shapes: HashMap<String, RawShape>,
}

#[derive(Deserialize)]
struct RawShape {
    #[serde(rename = "type")]
    kind: String,
    min: Option<i64>,
    max: Option<i64>,
    pattern: Option<String>,
    #[serde(rename = "enum", default)]
    values: Vec<String>,
    #[serde(default)]
    sensitive: bool,
    members: Option<Vec<RawMember>>,
    member: Option<String>,
    key: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
struct RawMember {
    name: String,
    shape: String,
    required: bool,
}

enum Kind {
    Structure(Vec<Member>),
    List(usize),
    Map(usize, usize),
    String,
    Blob,
    Integer,
    Boolean,
    Timestamp,
}

struct Member {
    /// As on the wire: `KeyId`.
    wire: String,
    /// As AWS names it in messages: `keyId`.
    path: String,
    shape: usize,
    required: bool,
}

struct Shape {
    kind: Kind,
    min: Option<i64>,
    max: Option<i64>,
    /// The model's text (quoted in messages) and the compiled whole-value matcher.
    pattern: Option<(String, regex_lite::Regex)>,
    values: Vec<String>,
    sensitive: bool,
}

/// The compiled model: shapes by index, operations' input shapes by name.
pub struct Model {
    shapes: Vec<Shape>,
    operations: HashMap<String, usize>,
}

/// The model, loaded once. `None` only if the embedded table were broken (a unit test
/// proves it is not): then nothing is checked here and the operations' own checks remain.
static MODEL: LazyLock<Option<Model>> = LazyLock::new(|| match Model::load(TABLE) {
    Ok(m) => Some(m),
    Err(e) => {
        tracing::error!(error = %e, "the embedded service model does not load; requests are not validated against it");
        None
    }
});

/// AWS names a member in messages by its model name with the first letter in lower case.
fn lower_camel(name: &str) -> String {
    let mut c = name.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The model's patterns are Java regular expressions matched against the whole value; the
/// subset they use (classes, ranges, `\w \d \s` as ASCII, `{m,n}`, groups, `|`, `\uXXXX`)
/// is regex-lite's, once `\uXXXX` is spelled `\x{XXXX}`.
fn compile(pattern: &str) -> Result<regex_lite::Regex, String> {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push_str(&format!("\\x{{{hex}}}"));
                }
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    regex_lite::Regex::new(&format!("^(?:{out})$")).map_err(|e| format!("{pattern}: {e}"))
}

impl Model {
    fn load(text: &str) -> Result<Model, String> {
        let raw: RawTable = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut names: Vec<&String> = raw.shapes.keys().collect();
        names.sort();
        let index: HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let find = |n: &Option<String>| -> Result<usize, String> {
            n.as_deref()
                .and_then(|n| index.get(n).copied())
                .ok_or_else(|| format!("unknown shape {n:?}"))
        };
        let mut shapes = Vec::with_capacity(names.len());
        for name in &names {
            let s = &raw.shapes[*name];
            let kind = match s.kind.as_str() {
                "structure" => {
                    let mut members = Vec::new();
                    for m in s.members.as_deref().unwrap_or_default() {
                        members.push(Member {
                            wire: m.name.clone(),
                            path: lower_camel(&m.name),
                            shape: find(&Some(m.shape.clone()))?,
                            required: m.required,
                        });
                    }
                    Kind::Structure(members)
                }
                "list" => Kind::List(find(&s.member)?),
                "map" => Kind::Map(find(&s.key)?, find(&s.value)?),
                "string" => Kind::String,
                "blob" => Kind::Blob,
                "integer" | "long" => Kind::Integer,
                "boolean" => Kind::Boolean,
                "timestamp" => Kind::Timestamp,
                other => return Err(format!("shape {name}: type {other}")),
            };
            let pattern = match &s.pattern {
                Some(p) => Some((p.clone(), compile(p)?)),
                None => None,
            };
            shapes.push(Shape {
                kind,
                min: s.min,
                max: s.max,
                pattern,
                values: s.values.clone(),
                sensitive: s.sensitive,
            });
        }
        let mut operations = HashMap::new();
        for (op, input) in &raw.operations {
            operations.insert(op.clone(), find(&Some(input.clone()))?);
        }
        Ok(Model { shapes, operations })
    }

    /// The body of a request to `operation`: `Ok` when the model allows it (or does not know
    /// the operation), else the `SerializationException` or `ValidationException` AWS sends.
    pub fn check(&self, operation: &str, body: &[u8]) -> Result<(), ApiError> {
        let Some(&input) = self.operations.get(operation) else {
            return Ok(());
        };
        let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            body
        };
        let mut out = Vec::new();
        let mut de = serde_json::Deserializer::from_slice(body);
        At {
            model: self,
            shape: input,
            path: None,
            wire: "the request body",
            out: &mut out,
        }
        .deserialize(&mut de)
        .and_then(|_| de.end())
        .map_err(|e| {
            ApiError::serialization(clip_to(
                &format!("Malformed request body: {e}"),
                MAX_MESSAGE,
            ))
        })?;
        if out.is_empty() {
            Ok(())
        } else {
            Err(ApiError::from(crate::error::KmsError::validation(message(
                &out,
            ))))
        }
    }
}

/// Checks `body` for `operation` against the embedded model (see [`Model::check`]).
pub fn check(operation: &str, body: &[u8]) -> Result<(), ApiError> {
    match MODEL.as_ref() {
        Some(m) => m.check(operation, body),
        None => Ok(()),
    }
}

/// What one value was: whether it was there (JSON `null` is absence, as at AWS), how it is
/// shown inside a list (`[a, b]`), and whether it broke one of its rules.
struct Seen {
    present: bool,
    text: Option<String>,
    failed: bool,
}

impl Seen {
    fn absent() -> Seen {
        Seen {
            present: false,
            text: None,
            failed: false,
        }
    }
}

/// The value at `path` (a member: its violations are recorded) or, with no path, an element
/// of a list or map of scalars (its violations are the list's, see [`rule::each`]).
struct At<'a> {
    model: &'a Model,
    shape: usize,
    path: Option<&'a str>,
    /// The JSON member name the value came under (for serialization errors).
    wire: &'a str,
    out: &'a mut Vec<Violation>,
}

impl At<'_> {
    fn shape(&self) -> &Shape {
        &self.model.shapes[self.shape]
    }

    fn wire_name(&self) -> &str {
        self.wire
    }

    /// Records the rules a scalar breaks; `len`: characters or bytes, `None` for numbers.
    fn scalar(
        self,
        shown: Shown,
        text: Option<String>,
        len: Option<usize>,
        num: Option<i64>,
    ) -> Seen {
        let s = self.shape();
        let mut broken = Vec::new();
        if let (Some(len), false) = (len, matches!(s.kind, Kind::Integer)) {
            if let Some(min) = s.min {
                if (len as i64) < min {
                    broken.push(rule::min_length(min));
                }
            }
            if let Some(max) = s.max {
                if len as i64 > max {
                    broken.push(rule::max_length(max));
                }
            }
        }
        if let Some(n) = num {
            if let Some(min) = s.min.filter(|m| n < *m) {
                broken.push(rule::min_value(min));
            }
            if let Some(max) = s.max.filter(|m| n > *m) {
                broken.push(rule::max_value(max));
            }
        }
        if let (Some(t), Some((p, re))) = (text.as_deref(), &s.pattern) {
            if !re.is_match(t) {
                broken.push(rule::pattern(p));
            }
        }
        if let (Some(t), false) = (text.as_deref(), s.values.is_empty()) {
            if !s.values.iter().any(|v| v == t) {
                broken.push(rule::enum_set(&s.values));
            }
        }
        let failed = !broken.is_empty();
        if let Some(path) = self.path {
            for r in broken {
                self.out.push(Violation::new(path, shown.clone(), r));
            }
        }
        Seen {
            present: true,
            text: match shown {
                Shown::Value(v) => Some(v),
                _ => None,
            },
            failed,
        }
    }

    /// Every rule of a scalar shape, for `Member must satisfy constraint: [...]`.
    fn rules_of(shape: &Shape) -> Vec<String> {
        let mut r = Vec::new();
        match shape.kind {
            Kind::Integer => {
                r.extend(shape.max.map(rule::max_value));
                r.extend(shape.min.map(rule::min_value));
            }
            _ => {
                r.extend(shape.max.map(rule::max_length));
                r.extend(shape.min.map(rule::min_length));
            }
        }
        if let Some((p, _)) = &shape.pattern {
            r.push(rule::pattern(p));
        }
        if !shape.values.is_empty() {
            r.push(rule::enum_set(&shape.values));
        }
        r
    }

    /// The size rules of a list or map (`n` elements), shown as `shown`.
    fn size(&mut self, n: usize, shown: &Shown) {
        let s = &self.model.shapes[self.shape];
        let (Some(path), n) = (self.path, n as i64) else {
            return;
        };
        if let Some(min) = s.min.filter(|m| n < *m) {
            self.out
                .push(Violation::new(path, shown.clone(), rule::min_length(min)));
        }
        if let Some(max) = s.max.filter(|m| n > *m) {
            self.out
                .push(Violation::new(path, shown.clone(), rule::max_length(max)));
        }
    }
}

impl<'de> DeserializeSeed<'de> for At<'_> {
    type Value = Seen;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Seen, D::Error> {
        d.deserialize_option(Nullable(self))
    }
}

/// JSON `null` is an absent member; anything else is read as the shape says.
struct Nullable<'a>(At<'a>);

impl<'de> Visitor<'de> for Nullable<'_> {
    type Value = Seen;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Seen, E> {
        Ok(Seen::absent())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Seen, E> {
        Ok(Seen::absent())
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Seen, D::Error> {
        let at = self.0;
        match at.shape().kind {
            Kind::Structure(_) => d.deserialize_map(Typed(at)),
            Kind::List(_) => d.deserialize_seq(Typed(at)),
            Kind::Map(..) => d.deserialize_map(Typed(at)),
            Kind::String | Kind::Blob => d.deserialize_str(Typed(at)),
            Kind::Integer => d.deserialize_i64(Typed(at)),
            Kind::Boolean => d.deserialize_bool(Typed(at)),
            Kind::Timestamp => d.deserialize_f64(Typed(at)),
        }
    }
}

/// A present value of the shape's type; any other JSON type is the serializer's error.
struct Typed<'a>(At<'a>);

impl<'de> Visitor<'de> for Typed<'_> {
    type Value = Seen;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let what = match self.0.shape().kind {
            Kind::Structure(_) => "an object",
            Kind::List(_) => "an array",
            Kind::Map(..) => "an object",
            Kind::String => "a string",
            Kind::Blob => "a base64 string",
            Kind::Integer => "an integer",
            Kind::Boolean => "a boolean",
            Kind::Timestamp => "a number of seconds",
        };
        write!(f, "{what} for {}", self.0.wire_name())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Seen, E> {
        let at = self.0;
        match at.shape().kind {
            Kind::String => {
                let shown = if at.shape().sensitive {
                    Shown::Hidden
                } else {
                    Shown::Value(v.to_owned())
                };
                let len = v.chars().count();
                // The pattern and enum see the text even when it is not shown.
                let seen = at.scalar_text(shown, v, len);
                Ok(seen)
            }
            Kind::Blob => {
                let bytes =
                    Zeroizing::new(B64.decode(v.as_bytes()).map_err(|_| {
                        E::custom(format!("invalid base64 for {}", at.wire_name()))
                    })?);
                Ok(at.scalar(Shown::Hidden, None, Some(bytes.len()), None))
            }
            _ => Err(E::invalid_type(de::Unexpected::Str(v), &Typed(at))),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seen, E> {
        let at = self.0;
        match at.shape().kind {
            Kind::Integer => Ok(at.scalar(Shown::Value(v.to_string()), None, None, Some(v))),
            Kind::Timestamp => Ok(at.scalar(Shown::Value(v.to_string()), None, None, None)),
            _ => Err(E::invalid_type(de::Unexpected::Signed(v), &Typed(at))),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seen, E> {
        let at = self.0;
        match at.shape().kind {
            // Beyond i64 is beyond every maximum of the model.
            Kind::Integer => Ok(at.scalar(
                Shown::Value(v.to_string()),
                None,
                None,
                Some(i64::try_from(v).unwrap_or(i64::MAX)),
            )),
            Kind::Timestamp => Ok(at.scalar(Shown::Value(v.to_string()), None, None, None)),
            _ => Err(E::invalid_type(de::Unexpected::Unsigned(v), &Typed(at))),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seen, E> {
        let at = self.0;
        match at.shape().kind {
            Kind::Timestamp => Ok(at.scalar(Shown::Value(v.to_string()), None, None, None)),
            _ => Err(E::invalid_type(de::Unexpected::Float(v), &Typed(at))),
        }
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Seen, E> {
        let at = self.0;
        match at.shape().kind {
            Kind::Boolean => Ok(at.scalar(Shown::Value(v.to_string()), None, None, None)),
            _ => Err(E::invalid_type(de::Unexpected::Bool(v), &Typed(at))),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seen, A::Error> {
        let mut at = self.0;
        let Kind::List(element) = at.shape().kind else {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &Typed(at)));
        };
        let model = at.model;
        let structured = matches!(model.shapes[element].kind, Kind::Structure(_));
        let mut n = 0usize;
        let mut texts: Vec<String> = Vec::new();
        let mut failed = false;
        let mut inner = Vec::new();
        loop {
            let path = match (structured, at.path) {
                // Elements of a list of structures are named `tags.1.member`.
                (true, Some(p)) => Some(format!("{p}.{}.member", n + 1)),
                _ => None,
            };
            let seen = seq.next_element_seed(At {
                model,
                shape: element,
                path: path.as_deref(),
                wire: at.wire,
                out: &mut inner,
            })?;
            let Some(seen) = seen else { break };
            n += 1;
            failed |= seen.failed;
            texts.push(seen.text.unwrap_or_else(|| "null".to_owned()));
        }
        let shown = if structured || model.shapes[element].sensitive {
            Shown::Hidden
        } else {
            Shown::Value(format!("[{}]", texts.join(", ")))
        };
        at.size(n, &shown);
        if failed && !structured {
            if let Some(path) = at.path {
                at.out.push(Violation::new(
                    path,
                    shown.clone(),
                    rule::each(&At::rules_of(&model.shapes[element])),
                ));
            }
        }
        at.out.append(&mut inner);
        Ok(Seen {
            present: true,
            text: match shown {
                Shown::Value(v) => Some(v),
                _ => None,
            },
            failed,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Seen, A::Error> {
        let at = self.0;
        let model = at.model;
        match &model.shapes[at.shape].kind {
            Kind::Structure(members) => structure(model, members, at.path, at.out, &mut map),
            Kind::Map(k, v) => {
                let (k, v) = (*k, *v);
                let mut at = at;
                let mut n = 0usize;
                let (mut keys_failed, mut values_failed) = (false, false);
                let mut texts = Vec::new();
                let mut scratch = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let ks = At {
                        model,
                        shape: k,
                        path: None,
                        wire: at.wire,
                        out: &mut scratch,
                    }
                    .scalar_text(
                        Shown::Value(key.clone()),
                        &key,
                        key.chars().count(),
                    );
                    keys_failed |= ks.failed;
                    let vs = map.next_value_seed(At {
                        model,
                        shape: v,
                        path: None,
                        wire: at.wire,
                        out: &mut scratch,
                    })?;
                    values_failed |= vs.failed;
                    texts.push(format!(
                        "{key}={}",
                        vs.text.unwrap_or_else(|| "null".into())
                    ));
                    n += 1;
                }
                let shown = Shown::Value(format!("{{{}}}", texts.join(", ")));
                at.size(n, &shown);
                if let Some(path) = at.path {
                    if keys_failed {
                        at.out.push(Violation::new(
                            path,
                            shown.clone(),
                            format!(
                                "Map keys must satisfy constraint: [{}]",
                                At::rules_of(&model.shapes[k]).join(", ")
                            ),
                        ));
                    }
                    if values_failed {
                        at.out.push(Violation::new(
                            path,
                            shown.clone(),
                            format!(
                                "Map value must satisfy constraint: [{}]",
                                At::rules_of(&model.shapes[v]).join(", ")
                            ),
                        ));
                    }
                }
                Ok(Seen {
                    present: true,
                    text: None,
                    failed: keys_failed || values_failed,
                })
            }
            _ => Err(de::Error::invalid_type(de::Unexpected::Map, &Typed(at))),
        }
    }
}

impl At<'_> {
    /// A string scalar whose text the rules see (shown or not).
    fn scalar_text(self, shown: Shown, text: &str, len: usize) -> Seen {
        let hidden = !matches!(shown, Shown::Value(_));
        let mut seen = self.scalar(shown, Some(text.to_owned()), Some(len), None);
        if hidden {
            seen.text = None;
        }
        seen
    }
}

/// The members of a structure, in any order; violations are listed in the model's member
/// order, then the required members that are missing (at their place).
fn structure<'de, A: MapAccess<'de>>(
    model: &Model,
    members: &[Member],
    path: Option<&str>,
    out: &mut Vec<Violation>,
    map: &mut A,
) -> Result<Seen, A::Error> {
    let mut per: Vec<Vec<Violation>> = members.iter().map(|_| Vec::new()).collect();
    let mut present = vec![false; members.len()];
    let mut seen_keys = vec![false; members.len()];
    let mut failed = false;
    while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
        let Some(i) = members.iter().position(|m| m.wire == key) else {
            // Unknown members are ignored, as at AWS.
            map.next_value::<IgnoredAny>()?;
            continue;
        };
        if std::mem::replace(&mut seen_keys[i], true) {
            return Err(de::Error::custom(format!("duplicate field `{key}`")));
        }
        let m = &members[i];
        let child = match path {
            Some(p) => format!("{p}.{}", m.path),
            None => m.path.clone(),
        };
        let seen = map.next_value_seed(At {
            model,
            shape: m.shape,
            path: Some(&child),
            wire: &m.wire,
            out: &mut per[i],
        })?;
        present[i] = seen.present;
        failed |= seen.failed;
    }
    for (i, m) in members.iter().enumerate() {
        if m.required && !present[i] {
            let child = match path {
                Some(p) => format!("{p}.{}", m.path),
                None => m.path.clone(),
            };
            per[i].push(Violation::new(child, Shown::Null, rule::not_null()));
        }
        failed |= !per[i].is_empty();
        out.append(&mut per[i]);
    }
    Ok(Seen {
        present: true,
        text: None,
        failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> &'static Model {
        MODEL.as_ref().expect("the embedded model loads")
    }

    fn msg(op: &str, body: &str) -> (String, String) {
        let e = model().check(op, body.as_bytes()).unwrap_err();
        (e.name.to_owned(), e.message)
    }

    fn validation(op: &str, body: &str) -> String {
        let (name, m) = msg(op, body);
        assert_eq!(name, "ValidationException", "{m}");
        m
    }

    #[test]
    fn the_table_loads_and_every_pattern_compiles() {
        let m = model();
        assert!(m.operations.len() >= 50);
        for op in crate::api::operations::AWS_OPERATIONS {
            if !["Decapsulate", "Encapsulate"].contains(&op) {
                assert!(m.operations.contains_key(op), "{op}");
            }
        }
        assert!(m.shapes.iter().filter(|s| s.pattern.is_some()).count() >= 15);
    }

    #[test]
    fn valid_bodies_pass() {
        let m = model();
        for (op, body) in [
            (
                "Encrypt",
                r#"{"KeyId":"alias/x","Plaintext":"aGk=","EncryptionContext":{"a":"b"}}"#,
            ),
            (
                "CreateAlias",
                r#"{"AliasName":"alias/ok_1:/-","TargetKeyId":"k"}"#,
            ),
            (
                "CreateKey",
                r#"{"Tags":[{"TagKey":"a","TagValue":""}],"KeySpec":"HMAC_256","Unknown":[1,{"x":null}]}"#,
            ),
            ("CreateKey", ""),
            ("ListKeys", r#"{"Limit":1000,"Marker":null}"#),
            (
                "GenerateDataKey",
                r#"{"KeyId":"k","NumberOfBytes":1024,"GrantTokens":["t"]}"#,
            ),
            (
                "ImportKeyMaterial",
                r#"{"KeyId":"k","ImportToken":"AA==","EncryptedKeyMaterial":"AA==","ValidTo":1.5e9}"#,
            ),
            (
                "PutKeyPolicy",
                "{\"KeyId\":\"k\",\"Policy\":\"{\\t\\u00e9}\"}",
            ),
            ("UnknownToTheModel", "{\"anything\":1}"),
        ] {
            assert!(m.check(op, body.as_bytes()).is_ok(), "{op} {body}");
        }
    }

    #[test]
    fn each_constraint_kind_in_aws_words() {
        assert_eq!(
            validation(
                "CreateAlias",
                r#"{"AliasName":"alias/a;b","TargetKeyId":"k"}"#
            ),
            "1 validation error detected: Value 'alias/a;b' at 'aliasName' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"
        );
        assert_eq!(
            validation(
                "CreateAlias",
                &format!(r#"{{"AliasName":"{}","TargetKeyId":"k"}}"#, "a".repeat(257))
            ),
            format!(
                "1 validation error detected: Value '{}' at 'aliasName' failed to satisfy \
                 constraint: Member must have length less than or equal to 256",
                "a".repeat(257)
            )
        );
        assert_eq!(
            validation("DescribeKey", r#"{"KeyId":""}"#),
            "1 validation error detected: Value '' at 'keyId' failed to satisfy constraint: \
             Member must have length greater than or equal to 1"
        );
        assert_eq!(
            validation("ListKeys", r#"{"Limit":1001}"#),
            "1 validation error detected: Value '1001' at 'limit' failed to satisfy constraint: \
             Member must have value less than or equal to 1000"
        );
        assert_eq!(
            validation("GenerateRandom", r#"{"NumberOfBytes":0}"#),
            "1 validation error detected: Value '0' at 'numberOfBytes' failed to satisfy \
             constraint: Member must have value greater than or equal to 1"
        );
        assert_eq!(
            validation(
                "GenerateMac",
                r#"{"KeyId":"k","Message":"AA==","MacAlgorithm":"INVALID"}"#
            ),
            "1 validation error detected: Value 'INVALID' at 'macAlgorithm' failed to satisfy \
             constraint: Member must satisfy enum value set: [HMAC_SHA_224, HMAC_SHA_256, \
             HMAC_SHA_384, HMAC_SHA_512]"
        );
        assert_eq!(
            validation("DescribeKey", "{}"),
            "1 validation error detected: Value null at 'keyId' failed to satisfy constraint: \
             Member must not be null"
        );
        assert_eq!(
            validation("DescribeKey", r#"{"KeyId":null}"#),
            "1 validation error detected: Value null at 'keyId' failed to satisfy constraint: \
             Member must not be null"
        );
        // Blobs: length in bytes after base64, the value never quoted.
        let big = B64.encode([7u8; 4097]);
        assert_eq!(
            validation(
                "Encrypt",
                &format!(r#"{{"KeyId":"k","Plaintext":"{big}"}}"#)
            ),
            "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: \
             Member must have length less than or equal to 4096"
        );
        assert_eq!(
            validation("Decrypt", r#"{"CiphertextBlob":""}"#),
            "1 validation error detected: Value at 'ciphertextBlob' failed to satisfy \
             constraint: Member must have length greater than or equal to 1"
        );
        // Lengths count characters, not bytes.
        assert!(model()
            .check(
                "CreateKey",
                format!(
                    r#"{{"Tags":[{{"TagKey":"{}","TagValue":"x"}}]}}"#,
                    "é".repeat(128)
                )
                .as_bytes()
            )
            .is_ok());
    }

    #[test]
    fn several_errors_in_model_order() {
        assert_eq!(
            validation(
                "GenerateDataKey",
                r#"{"NumberOfBytes":2000,"KeySpec":"AES_512"}"#
            ),
            "3 validation errors detected: Value null at 'keyId' failed to satisfy constraint: \
             Member must not be null; Value '2000' at 'numberOfBytes' failed to satisfy \
             constraint: Member must have value less than or equal to 1024; Value 'AES_512' at \
             'keySpec' failed to satisfy constraint: Member must satisfy enum value set: \
             [AES_256, AES_128]"
        );
        // One value can break two rules.
        assert_eq!(
            validation("CreateAlias", r#"{"AliasName":"","TargetKeyId":"k"}"#),
            "2 validation errors detected: Value '' at 'aliasName' failed to satisfy \
             constraint: Member must have length greater than or equal to 1; Value '' at \
             'aliasName' failed to satisfy constraint: Member must satisfy regular expression \
             pattern: ^[a-zA-Z0-9:/_-]+$"
        );
    }

    #[test]
    fn nested_paths() {
        assert_eq!(
            validation(
                "CreateKey",
                &format!(
                    r#"{{"Tags":[{{"TagKey":"ok","TagValue":"v"}},{{"TagKey":"{}","TagValue":"v"}}]}}"#,
                    "a".repeat(129)
                )
            ),
            format!(
                "1 validation error detected: Value '{}' at 'tags.2.member.tagKey' failed to \
                 satisfy constraint: Member must have length less than or equal to 128",
                "a".repeat(129)
            )
        );
        assert_eq!(
            validation("TagResource", r#"{"KeyId":"k","Tags":[{"TagKey":"a"}]}"#),
            "1 validation error detected: Value null at 'tags.1.member.tagValue' failed to \
             satisfy constraint: Member must not be null"
        );
        assert_eq!(
            validation(
                "Decrypt",
                r#"{"CiphertextBlob":"AA==","Recipient":{"KeyEncryptionAlgorithm":"RSA","AttestationDocument":""}}"#
            ),
            "2 validation errors detected: Value 'RSA' at 'recipient.keyEncryptionAlgorithm' \
             failed to satisfy constraint: Member must satisfy enum value set: \
             [RSAES_OAEP_SHA_256]; Value at 'recipient.attestationDocument' failed to satisfy \
             constraint: Member must have length greater than or equal to 1"
        );
    }

    #[test]
    fn lists_of_scalars() {
        let tokens: Vec<String> = (0..11).map(|i| format!("\"t{i}\"")).collect();
        assert_eq!(
            validation(
                "Encrypt",
                &format!(
                    r#"{{"KeyId":"k","Plaintext":"AA==","GrantTokens":[{}]}}"#,
                    tokens.join(",")
                )
            ),
            "1 validation error detected: Value '[t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10]' \
             at 'grantTokens' failed to satisfy constraint: Member must have length less than \
             or equal to 10"
        );
        assert_eq!(
            validation(
                "Encrypt",
                r#"{"KeyId":"k","Plaintext":"AA==","GrantTokens":["a",""]}"#
            ),
            "1 validation error detected: Value '[a, ]' at 'grantTokens' failed to satisfy \
             constraint: Member must satisfy constraint: [Member must have length less than or \
             equal to 8192, Member must have length greater than or equal to 1]"
        );
        let m = validation(
            "CreateGrant",
            r#"{"KeyId":"k","GranteePrincipal":"arn:aws:iam::111122223333:root","Operations":["Decrypt","Nope"]}"#,
        );
        assert!(
            m.starts_with(
                "1 validation error detected: Value '[Decrypt, Nope]' at 'operations' failed to \
                 satisfy constraint: Member must satisfy constraint: [Member must satisfy enum \
                 value set: [Decrypt, Encrypt, "
            ),
            "{m}"
        );
    }

    #[test]
    fn type_errors_are_serialization_first() {
        for (op, body) in [
            ("GenerateDataKey", r#"{"KeyId":"","NumberOfBytes":"32"}"#),
            ("Decrypt", r#"{"CiphertextBlob":"not base64!"}"#),
            ("Encrypt", r#"{"KeyId":5}"#),
            ("ListKeys", r#"{"Limit":1.5}"#),
            ("CreateKey", r#"{"Tags":{"a":"b"}}"#),
            ("CreateKey", r#"{"MultiRegion":"yes"}"#),
            ("Decrypt", r#"{"CiphertextBlob":"AA==","Recipient":5}"#),
            ("DescribeKey", r#"{"KeyId":"a","KeyId":"b"}"#),
            ("DescribeKey", r#"{"KeyId":"a"} x"#),
            ("DescribeKey", r#"["KeyId"]"#),
            ("DescribeKey", r#"{"KeyId":"a""#),
        ] {
            let (name, m) = msg(op, body);
            assert_eq!(name, "SerializationException", "{op} {body}: {m}");
            assert!(m.len() <= MAX_MESSAGE + 3, "{m}");
        }
        let (_, m) = msg("Encrypt", r#"{"KeyId":5}"#);
        assert!(m.contains("a string for KeyId"), "{m}");
    }

    #[test]
    fn sensitive_strings_are_not_quoted() {
        let m = validation(
            "CreateCustomKeyStore",
            r#"{"CustomKeyStoreName":"n","KeyStorePassword":"short"}"#,
        );
        assert_eq!(
            m,
            "1 validation error detected: Value at 'keyStorePassword' failed to satisfy \
             constraint: Member must have length greater than or equal to 7"
        );
    }

    /// What the check costs per request (run in release with `--ignored --nocapture`).
    #[test]
    #[ignore]
    fn cost() {
        let m = model();
        let cases = [
            ("GenerateDataKeyWithoutPlaintext", r#"{"KeyId":"arn:aws:kms:us-east-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab","KeySpec":"AES_256","EncryptionContext":{"purpose":"test","tenant":"t-1"}}"#.to_owned()),
            ("Encrypt", format!(r#"{{"KeyId":"alias/x","Plaintext":"{}"}}"#, B64.encode([7u8; 4096]))),
        ];
        for (op, body) in &cases {
            let n = 100_000u32;
            let t = std::time::Instant::now();
            for _ in 0..n {
                assert!(m.check(op, body.as_bytes()).is_ok());
            }
            let per = t.elapsed() / n;
            eprintln!("{op} ({} bytes): {per:?} per check", body.len());
        }
    }

    #[test]
    fn unanchored_model_patterns_match_the_whole_value() {
        // PolicyNameType is `[\w]+`: "de fault" contains word characters but is not one word.
        let m = validation("GetKeyPolicy", r#"{"KeyId":"k","PolicyName":"de fault"}"#);
        assert!(
            m.ends_with("Member must satisfy regular expression pattern: [\\w]+"),
            "{m}"
        );
        assert!(model()
            .check("GetKeyPolicy", br#"{"KeyId":"k","PolicyName":"default"}"#)
            .is_ok());
        // PolicyType allows tab, LF, CR and U+0020..U+00FF only.
        let m = validation("PutKeyPolicy", "{\"KeyId\":\"k\",\"Policy\":\"{\\u0100}\"}");
        assert!(m.contains("at 'policy'"), "{m}");
    }
}
