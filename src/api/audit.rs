//! Audit records of KMS requests, shaped like CloudTrail's KMS events: which request
//! members and response members are recorded (a list of names: anything not on it, above
//! all plaintexts, ciphertexts, signatures, messages, MACs, grant and import tokens and key
//! material, is never written), and how a record is put together. The CLI builds its records
//! with the same function. Chaining and writing are `crate::audit`'s.

use std::sync::Arc;
use std::time::Duration;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::audit::{AuditError, AuditLog, Failure, Record};

/// Request members that are recorded (as CloudTrail does, in lowerCamelCase). Everything
/// else is dropped.
const REQUEST_MEMBERS: &[&str] = &[
    "AliasName",
    "BypassPolicyLockoutSafetyCheck",
    "Constraints",
    "CustomKeyStoreId",
    "CustomerMasterKeySpec",
    "Description",
    "DestinationEncryptionAlgorithm",
    "DestinationEncryptionContext",
    "DestinationKeyId",
    "DryRun",
    "EncryptionAlgorithm",
    "EncryptionContext",
    "ExpirationModel",
    "GrantId",
    "GranteePrincipal",
    "KeyAgreementAlgorithm",
    "KeyId",
    "KeyPairSpec",
    "KeySpec",
    "KeyUsage",
    "Limit",
    "MacAlgorithm",
    "Marker",
    "MessageType",
    "MultiRegion",
    "Name",
    "NumberOfBytes",
    "Operations",
    "Origin",
    "PendingWindowInDays",
    "Policy",
    "PolicyName",
    "PrimaryRegion",
    "ReplicaRegion",
    "RetiringPrincipal",
    "RotationPeriodInDays",
    "SigningAlgorithm",
    "SourceEncryptionAlgorithm",
    "SourceEncryptionContext",
    "SourceKeyId",
    "TagKeys",
    "Tags",
    "TargetKeyId",
    "ValidTo",
    "WrappingAlgorithm",
    "WrappingKeySpec",
];

/// Response members recorded for state-changing operations (read-only ones record `null`,
/// as CloudTrail does). No grant token, public key, import token or blob is on it.
const RESPONSE_MEMBERS: &[&str] = &[
    "DeletionDate",
    "GrantId",
    "KeyId",
    "KeyMetadata",
    "KeyState",
    "PendingWindowInDays",
    "ReplicaKeyMetadata",
];

/// Members whose values hold objects named by AWS member names, renamed inside as CloudTrail
/// does (`Tags[].TagKey` is `tags[].tagKey`). Every other kept member is copied as the caller
/// sent it: an encryption context's, a policy's or a grant constraint's keys are the
/// caller's own, and the rest are strings, numbers, booleans or lists of strings.
const RENAMED_INSIDE: &[&str] = &["Tags", "KeyMetadata", "ReplicaKeyMetadata"];

/// Kept members nest at most this deep: more than any member an operation accepts (a grant's
/// `Constraints` nest two), and far below what a JSON reader refuses (serde_json stops at 128),
/// so that every line of the trail stays readable by `audit verify` and by its consumers.
const MAX_KEPT_DEPTH: usize = 16;

// A member seen twice is noticed with one bit per kept name.
const _: () = assert!(REQUEST_MEMBERS.len() <= 64 && RESPONSE_MEMBERS.len() <= 64);

/// Whether an operation (by its AWS name) changes nothing.
pub fn read_only(op: &str) -> bool {
    (op.starts_with("Describe") || op.starts_with("Get") || op.starts_with("List"))
        && op != "GetParametersForImport"
        || matches!(
            op,
            "Encrypt"
                | "Decrypt"
                | "ReEncrypt"
                | "GenerateDataKey"
                | "GenerateDataKeyWithoutPlaintext"
                | "GenerateDataKeyPair"
                | "GenerateDataKeyPairWithoutPlaintext"
                | "GenerateRandom"
                | "GenerateMac"
                | "VerifyMac"
                | "Sign"
                | "Verify"
                | "DeriveSharedSecret"
        )
}

fn lower_camel(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_lowercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

fn camel_deep(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (lower_camel(&k), camel_deep(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(camel_deep).collect()),
        v => v,
    }
}

/// Kept members of a request or a response: one JSON object, compact (no line breaks),
/// ready to go into a record as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members(Vec<u8>);

impl Members {
    /// `v` as members (the CLI's parameters); `None` unless it is an object.
    pub fn of(v: &Value) -> Option<Members> {
        v.is_object()
            .then(|| serde_json::to_vec(v).ok().map(Members))
            .flatten()
    }

    /// The object's JSON text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The members of the JSON object `body` named in `names`, renamed for the record. Members
/// not named are skipped as the body is read, never copied: a plaintext or a ciphertext is
/// not duplicated into host memory for the trail's sake. `None`: the body is not one JSON
/// object, or names a kept member twice (its operation refuses it too).
fn pick(body: &[u8], names: &[&str]) -> Option<Members> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let kept = Kept(names).deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(Members(kept))
}

/// Reads an object, writing the members it names (see [`pick`]).
struct Kept<'n>(&'n [&'n str]);

impl<'de> DeserializeSeed<'de> for Kept<'_> {
    type Value = Vec<u8>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Kept<'_> {
    type Value = Vec<u8>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(128);
        out.push(b'{');
        let mut seen = 0u64;
        while let Some(which) = m.next_key_seed(Which(self.0))? {
            let Some((i, name)) = which else {
                m.next_value::<IgnoredAny>()?;
                continue;
            };
            let bit = 1u64 << i;
            if seen & bit != 0 {
                return Err(serde::de::Error::custom("a member named twice"));
            }
            seen |= bit;
            if out.len() > 1 {
                out.push(b',');
            }
            out.push(b'"');
            push_lower_camel(&mut out, name);
            out.extend_from_slice(b"\":");
            // Borrowed from the body: skipped over by the parser (valid JSON, no control
            // character in a string), not built into values.
            let raw: &'de RawValue = m.next_value()?;
            let text = raw.get();
            let shape = crate::json_text::shape(text.as_bytes());
            if shape.depth > MAX_KEPT_DEPTH {
                return Err(serde::de::Error::custom("a member nested too deeply"));
            }
            let renamed = RENAMED_INSIDE.contains(&name);
            if renamed || shape.numbers || text.contains("\\u") {
                // Skipping checks the syntax of numbers and `\u` escapes, not their meaning:
                // `1e400` or a lone surrogate would leave a line no JSON reader accepts (and
                // `audit verify` would call the trail broken). Such a value is parsed, and
                // written anew.
                let v: Value = serde_json::from_str(text).map_err(serde::de::Error::custom)?;
                let v = if renamed { camel_deep(v) } else { v };
                serde_json::to_writer(&mut out, &v).map_err(serde::de::Error::custom)?;
            } else {
                push_compact(&mut out, text.as_bytes());
            }
        }
        out.push(b'}');
        Ok(out)
    }
}

/// Appends `name` (an ASCII member name) with its first letter in lower case.
fn push_lower_camel(out: &mut Vec<u8>, name: &str) {
    let b = name.as_bytes();
    if let Some((first, rest)) = b.split_first() {
        out.push(first.to_ascii_lowercase());
        out.extend_from_slice(rest);
    }
}

/// Appends the valid JSON text `json` without the whitespace between its tokens (a record is
/// one line; a string cannot hold a raw line break).
fn push_compact(out: &mut Vec<u8>, json: &[u8]) {
    let blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    if !json.iter().any(blank) {
        out.extend_from_slice(json);
        return;
    }
    let mut strings = crate::json_text::Strings::default();
    for &b in json {
        if strings.structural(b) && blank(&b) {
            continue;
        }
        out.push(b);
    }
}

/// Reads a member name: which of the kept names it is (and its index), without allocating.
struct Which<'n>(&'n [&'n str]);

impl<'de, 'n> DeserializeSeed<'de> for Which<'n> {
    type Value = Option<(usize, &'n str)>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'n> Visitor<'_> for Which<'n> {
    type Value = Option<(usize, &'n str)>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a member name")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().copied().enumerate().find(|(_, n)| *n == v))
    }
}

/// The request members an audit record keeps (`None`: the body is not a JSON object).
pub fn request_parameters(body: &[u8]) -> Option<Members> {
    pick(body, REQUEST_MEMBERS)
}

/// The response members an audit record keeps, for a state-changing `op`.
pub fn response_elements(op: &str, body: &[u8]) -> Option<Members> {
    if read_only(op) {
        return None;
    }
    pick(body, RESPONSE_MEMBERS)
}

/// Who made the request.
pub struct Identity<'a> {
    /// The principal's ARN.
    pub arn: &'a str,
    /// The access key it signed with (empty: none, e.g. the CLI).
    pub access_key_id: &'a str,
}

/// Where a request came from (`sourceIPAddress`).
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// The peer's address.
    Address(std::net::IpAddr),
    /// A name, as CloudTrail writes a service's name when there is no address.
    Named(&'a str),
}

/// Everything a record says.
pub struct Event<'a> {
    /// The AWS operation name.
    pub op: &'a str,
    /// When the request arrived.
    pub time: time::OffsetDateTime,
    /// Region and account.
    pub region: &'a str,
    /// The service's account (for the resources and an identity without one).
    pub account: &'a str,
    /// `sourceIPAddress`.
    pub source: Source<'a>,
    /// `userAgent`.
    pub user_agent: &'a str,
    /// `None`: the caller is not known (the signature did not verify).
    pub identity: Option<Identity<'a>>,
    /// Kept members of the request.
    pub request: Option<&'a Members>,
    /// Kept members of the response.
    pub response: Option<&'a Members>,
    /// AWS error name and message.
    pub error: Option<(&'a str, &'a str)>,
    /// `requestID`.
    pub request_id: &'a str,
    /// ARNs of the keys the request was about.
    pub keys: &'a [String],
}

fn identity_type(arn: &str) -> &'static str {
    if arn.ends_with(":root") {
        "Root"
    } else if arn.contains(":assumed-role/") {
        "AssumedRole"
    } else if arn.contains(":user/") {
        "IAMUser"
    } else if arn.contains(":role/") {
        "Role"
    } else {
        "Unknown"
    }
}

fn account_of(arn: &str) -> Option<&str> {
    arn.split(':').nth(4).filter(|a| !a.is_empty())
}

/// A JSON object being written: member names are ours (plain ASCII, written as they are),
/// values from callers are escaped.
struct Object<'b> {
    out: &'b mut Vec<u8>,
    empty: bool,
}

impl<'b> Object<'b> {
    fn open(out: &'b mut Vec<u8>) -> Object<'b> {
        out.push(b'{');
        Object { out, empty: true }
    }

    /// Starts member `name`; its value is written next into what this returns.
    fn member(&mut self, name: &str) -> &mut Vec<u8> {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    /// A string member.
    fn string(&mut self, name: &str, value: &str) {
        push_string(self.member(name), value);
    }

    /// A string member of our own making that needs no escaping (a name, an id).
    fn plain(&mut self, name: &str, value: &str) {
        let out = self.member(name);
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    }

    /// A member whose value is JSON text of our own making (a literal, or kept members).
    fn json(&mut self, name: &str, value: &[u8]) {
        self.member(name).extend_from_slice(value);
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// Appends `s` as a JSON string.
fn push_string(out: &mut Vec<u8>, s: &str) {
    // Writing to a `Vec` cannot fail, nor can serializing a `str`.
    let _ = serde_json::to_writer(out, s);
}

/// The record, ready for the trail: a CloudTrail KMS event, its fields in CloudTrail's
/// names and order, written straight into the record's buffer in one pass (no tree of
/// values; only what came from a caller goes through escaping).
pub fn record(e: &Event<'_>) -> Result<Record, AuditError> {
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let event_id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id);
    Record::written(|out| {
        let mut o = Object::open(out);
        o.plain("eventVersion", "1.08");
        let mut who = Object::open(o.member("userIdentity"));
        match &e.identity {
            Some(i) => {
                who.plain("type", identity_type(i.arn));
                who.string("arn", i.arn);
                who.string("accountId", account_of(i.arn).unwrap_or(e.account));
                who.string("accessKeyId", i.access_key_id);
            }
            None => who.plain("type", "Unknown"),
        }
        who.close();
        let out = o.member("eventTime");
        out.push(b'"');
        crate::audit::push_event_time(out, e.time);
        out.push(b'"');
        o.plain("eventSource", "kms.amazonaws.com");
        o.string("eventName", e.op);
        o.string("awsRegion", e.region);
        match e.source {
            Source::Address(ip) => {
                use std::io::Write;
                let out = o.member("sourceIPAddress");
                // An address prints as digits, dots and colons.
                let _ = write!(out, "\"{ip}\"");
            }
            Source::Named(name) => o.string("sourceIPAddress", name),
        }
        o.string("userAgent", e.user_agent);
        if let Some((code, message)) = e.error {
            o.string("errorCode", code);
            o.string("errorMessage", message);
        }
        o.json(
            "requestParameters",
            e.request.map_or(&b"null"[..], Members::as_bytes),
        );
        // An error answers nothing.
        let response = e.response.filter(|_| e.error.is_none());
        o.json(
            "responseElements",
            response.map_or(&b"null"[..], Members::as_bytes),
        );
        o.string("requestID", e.request_id);
        o.plain("eventID", event_id);
        o.json("readOnly", if read_only(e.op) { b"true" } else { b"false" });
        let out = o.member("resources");
        out.push(b'[');
        for (n, arn) in e.keys.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            let mut r = Object::open(out);
            r.string("accountId", account_of(arn).unwrap_or(e.account));
            r.plain("type", "AWS::KMS::Key");
            r.string("ARN", arn);
            r.close();
        }
        out.push(b']');
        o.plain("eventType", "AwsApiCall");
        o.json("managementEvent", b"true");
        o.string("recipientAccountId", e.account);
        o.plain("eventCategory", "Management");
        o.close();
    })
}

/// How long a request waits for its record before it counts as not written.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// Hands `record` to the writer; when the request waits for its record (`wait`, from
/// [`AuditLog::waits`]), until it is written. Never blocks a runtime worker: a full queue is
/// waited on from the blocking pool (also when the request does not wait for the write:
/// a full queue holds requests back rather than dropping records).
pub(super) async fn write(
    log: &Arc<AuditLog>,
    record: Record,
    wait: bool,
) -> Result<(), AuditError> {
    let (ack, rx) = if wait {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ack: crate::audit::Ack = Box::new(move |r| {
            let _ = tx.send(r);
        });
        (Some(ack), Some(rx))
    } else {
        (None, None)
    };
    if let Err((record, ack)) = log.try_append(record, ack) {
        let log = Arc::clone(log);
        // The blocking pool is bounded and shared; `append_blocking` only waits for room.
        let queued = tokio::task::spawn_blocking(move || log.append_blocking(record, ack));
        if !wait {
            return match tokio::time::timeout(ACK_WAIT, queued).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(AuditError("the record was not queued".into())),
                Err(_) => Err(AuditError(format!(
                    "the record was not queued within {} s",
                    ACK_WAIT.as_secs()
                ))),
            };
        }
    }
    let Some(rx) = rx else {
        return Ok(());
    };
    match tokio::time::timeout(ACK_WAIT, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(AuditError("the writer dropped the record".into())),
        Err(_) => Err(AuditError(format!(
            "the record was not written within {} s",
            ACK_WAIT.as_secs()
        ))),
    }
}

/// Whether a failed record fails its request (`read_only`: the request changed nothing).
pub(super) fn fails_request(log: &AuditLog, read_only: bool) -> bool {
    log.failure(read_only) == Failure::Closed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_parameters_keep_listed_members_renamed_and_nothing_else() {
        let body = br#"{"KeyId":"alias/a","Plaintext":"c2VjcmV0","Tags":[{"TagKey":"k","TagValue":"v"}],
            "EncryptionContext":{"Tenant":"x"},"Unknown":{"deep":[1,2,{"x":null}]},"Key\u0053pec":"AES_256"}"#;
        let kept = parsed(&request_parameters(body).unwrap());
        assert_eq!(
            kept,
            serde_json::json!({
                "keyId": "alias/a",
                "tags": [{"tagKey": "k", "tagValue": "v"}],
                // A context's keys are the caller's: kept as they are.
                "encryptionContext": {"Tenant": "x"},
                "keySpec": "AES_256",
            })
        );
    }

    fn parsed(m: &Members) -> Value {
        serde_json::from_slice(m.as_bytes()).unwrap()
    }

    #[test]
    fn kept_members_are_copied_on_one_line_with_their_strings_as_sent() {
        let body = b"{\n  \"KeyId\" : \"alias/a b\",\r\n\t\"EncryptionContext\": {\n \"k \\\" \\n\": \"v  \\t\"\n},\n\"Operations\": [ \"Decrypt\" ,\"Encrypt\" ], \"Plaintext\" : \"c2VjcmV0\" }";
        let kept = request_parameters(body).unwrap();
        assert_eq!(
            std::str::from_utf8(kept.as_bytes()).unwrap(),
            r#"{"keyId":"alias/a b","encryptionContext":{"k \" \n":"v  \t"},"operations":["Decrypt","Encrypt"]}"#
        );
    }

    #[test]
    fn unicode_escapes_in_kept_members_are_checked_and_lone_surrogates_keep_nothing() {
        // A lone surrogate passes a skip but no reader's parse: it must not reach the trail.
        for body in [
            &br#"{"KeyId":"\ud800"}"#[..],
            br#"{"EncryptionContext":{"a":"\udc00x"}}"#,
            br#"{"Operations":["\ud83d"]}"#,
        ] {
            assert_eq!(request_parameters(body), None, "{body:?}");
        }
        let kept =
            request_parameters(br#"{"EncryptionContext":{"b":"\u00e9","a":"\ud83d\ude00"}}"#)
                .unwrap();
        assert_eq!(
            parsed(&kept),
            serde_json::json!({"encryptionContext": {"a": "\u{1F600}", "b": "\u{e9}"}})
        );
        // Numbers a reader cannot hold are refused; others are kept as numbers.
        assert_eq!(request_parameters(br#"{"NumberOfBytes":1e400}"#), None);
        assert_eq!(
            request_parameters(br#"{"EncryptionContext":{"a":[-1e99999]}}"#),
            None
        );
        assert_eq!(
            parsed(&request_parameters(br#"{"NumberOfBytes":32,"Limit":-0.5e1}"#).unwrap()),
            serde_json::json!({"numberOfBytes": 32, "limit": -5.0})
        );
        // Invalid UTF-8 is refused by the parser whichever way a member goes.
        assert_eq!(request_parameters(b"{\"KeyId\":\"\xff\"}"), None);
    }

    #[test]
    fn a_kept_member_named_twice_keeps_nothing() {
        assert_eq!(
            request_parameters(br#"{"KeyId":"a","Plaintext":"x","KeyId":"b"}"#),
            None
        );
        // A skipped member may repeat: nothing of it is kept.
        assert!(request_parameters(br#"{"KeyId":"a","Plaintext":"x","Plaintext":"y"}"#).is_some());
    }

    #[test]
    fn response_elements_rename_inside_metadata_and_skip_read_only_operations() {
        let body = br#"{"KeyMetadata":{"KeyId":"k","KeyState":"Enabled"},"GrantToken":"secret"}"#;
        assert_eq!(
            parsed(&response_elements("CreateKey", body).unwrap()),
            serde_json::json!({"keyMetadata": {"keyId": "k", "keyState": "Enabled"}})
        );
        assert_eq!(response_elements("DescribeKey", body), None);
    }

    #[test]
    fn request_parameters_of_what_is_not_one_json_object_are_none() {
        for body in [
            &b"[1]"[..],
            b"\"x\"",
            b"{\"KeyId\":",
            b"{} {}",
            b"",
            b"{\"KeyId\":\"a\"}x",
        ] {
            assert_eq!(request_parameters(body), None, "{body:?}");
        }
    }

    #[test]
    fn deeply_nested_bodies_cost_no_recursion() {
        let deep = |member: &str| {
            format!(
                "{{\"{member}\":{}1{}}}",
                "[".repeat(100_000),
                "]".repeat(100_000)
            )
        };
        // A kept member this deep is refused (a record must stay readable), whichever way
        // it would be written.
        assert_eq!(request_parameters(deep("Tags").as_bytes()), None);
        assert_eq!(
            request_parameters(deep("EncryptionContext").as_bytes()),
            None
        );
        // At the bound it is kept.
        let at_bound = format!(
            "{{\"EncryptionContext\":{}1{}}}",
            "[".repeat(MAX_KEPT_DEPTH),
            "]".repeat(MAX_KEPT_DEPTH)
        );
        assert!(request_parameters(at_bound.as_bytes()).is_some());
        // A skipped member is passed over without recursion (serde_json keeps the brackets
        // in a list), and nothing of it is kept.
        assert_eq!(
            request_parameters(deep("Plaintext").as_bytes()).map(|m| parsed(&m)),
            Some(serde_json::json!({}))
        );
    }

    #[test]
    fn a_record_is_one_object_with_cloudtrail_fields() {
        let params = Members::of(&serde_json::json!({"keyId": "k"})).unwrap();
        let keys = ["arn:aws:kms:eu-west-1:111122223333:key/k".to_owned()];
        let r = record(&Event {
            op: "Decrypt",
            time: time::OffsetDateTime::UNIX_EPOCH,
            region: "eu-west-1",
            account: "111122223333",
            source: Source::Address([127, 0, 0, 1].into()),
            user_agent: "ua \"quoted\"\n",
            identity: None,
            request: Some(&params),
            response: Some(&params),
            error: Some(("NotFoundException", "no such key")),
            request_id: "rid",
            keys: &keys,
        })
        .unwrap();
        let v: Value = serde_json::from_slice(r.as_bytes()).unwrap();
        assert_eq!(v["eventTime"], "1970-01-01T00:00:00Z");
        assert_eq!(v["userIdentity"], serde_json::json!({"type": "Unknown"}));
        assert_eq!(v["userAgent"], "ua \"quoted\"\n");
        assert_eq!(v["errorCode"], "NotFoundException");
        // An error answers nothing.
        assert_eq!(v["responseElements"], Value::Null);
        assert_eq!(v["readOnly"], true);
        assert_eq!(v["resources"][0]["ARN"], keys[0].as_str());
        assert_eq!(v["resources"][0]["accountId"], "111122223333");
        assert_eq!(v["eventID"].as_str().map(str::len), Some(36));
        // One line: the user agent's newline is escaped.
        assert!(!r.as_bytes().contains(&b'\n'));
    }

    #[test]
    fn a_record_of_a_signed_success_names_caller_keys_and_answer_in_cloudtrail_order() {
        let params = request_parameters(br#"{"KeyId":"alias/a","KeySpec":"AES_256"}"#).unwrap();
        let answer = response_elements("CreateKey", br#"{"KeyMetadata":{"KeyId":"k"}}"#).unwrap();
        let keys = [
            "arn:aws:kms:eu-west-1:111122223333:key/k".to_owned(),
            "arn:aws:kms:eu-west-1:444455556666:key/j".to_owned(),
        ];
        let r = record(&Event {
            op: "CreateKey",
            time: time::OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000),
            region: "eu-west-1",
            account: "111122223333",
            source: Source::Named("p11kms-cli"),
            user_agent: "aws-cli/2",
            identity: Some(Identity {
                arn: "arn:aws:iam::111122223333:user/alice",
                access_key_id: "AKIDEXAMPLE",
            }),
            request: Some(&params),
            response: Some(&answer),
            error: None,
            request_id: "rid",
            keys: &keys,
        })
        .unwrap();
        let text = std::str::from_utf8(r.as_bytes()).unwrap();
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            v["userIdentity"],
            serde_json::json!({"type": "IAMUser", "arn": "arn:aws:iam::111122223333:user/alice",
                "accountId": "111122223333", "accessKeyId": "AKIDEXAMPLE"})
        );
        assert_eq!(v["eventTime"], "2026-11-30T00:53:20Z");
        assert_eq!(v["sourceIPAddress"], "p11kms-cli");
        assert_eq!(
            v["requestParameters"],
            serde_json::json!({"keyId": "alias/a", "keySpec": "AES_256"})
        );
        assert_eq!(
            v["responseElements"],
            serde_json::json!({"keyMetadata": {"keyId": "k"}})
        );
        assert_eq!(v["readOnly"], false);
        assert_eq!(v["resources"][1]["accountId"], "444455556666");
        assert_eq!(v.get("errorCode"), None);
        // CloudTrail's order, each member once.
        let order = [
            "eventVersion",
            "userIdentity",
            "eventTime",
            "eventSource",
            "eventName",
            "awsRegion",
            "sourceIPAddress",
            "userAgent",
            "requestParameters",
            "responseElements",
            "requestID",
            "eventID",
            "readOnly",
            "resources",
            "eventType",
            "managementEvent",
            "recipientAccountId",
            "eventCategory",
        ];
        let at: Vec<usize> = order
            .iter()
            .map(|name| text.find(&format!("\"{name}\":")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert_eq!(v.as_object().unwrap().len(), order.len());
    }
}
