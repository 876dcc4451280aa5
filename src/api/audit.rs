//! Audit records of KMS requests, shaped like CloudTrail's KMS events: which request
//! members and response members are recorded (a list of names: anything not on it, above
//! all plaintexts, ciphertexts, signatures, messages, MACs, grant and import tokens and key
//! material, is never written), and how a record is put together. The CLI builds its records
//! with the same function. Chaining and writing are `crate::audit`'s.

use std::sync::Arc;
use std::time::Duration;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::audit::{event_time, AuditError, AuditLog, Failure, Record};

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

/// Members whose contents are named by their members' own keys (kept verbatim).
const KEEP_INNER_KEYS: &[&str] = &[
    "EncryptionContext",
    "SourceEncryptionContext",
    "DestinationEncryptionContext",
    "Constraints",
    "Policy",
];

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

/// The members of the JSON object `body` named in `names`, renamed for the record. Members
/// not named are skipped as the body is read, never copied: a plaintext or a ciphertext is
/// not duplicated into host memory for the trail's sake.
fn pick(body: &[u8], names: &[&str]) -> Option<Value> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let kept = Kept(names).deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(Value::Object(kept))
}

/// Reads an object, keeping the members it names (see [`pick`]).
struct Kept<'n>(&'n [&'n str]);

impl<'de> DeserializeSeed<'de> for Kept<'_> {
    type Value = Map<String, Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Kept<'_> {
    type Value = Map<String, Value>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        while let Some(which) = m.next_key_seed(Which(self.0))? {
            match which {
                Some(name) => {
                    let v: Value = m.next_value()?;
                    let v = if KEEP_INNER_KEYS.contains(&name) {
                        v
                    } else {
                        camel_deep(v)
                    };
                    out.insert(lower_camel(name), v);
                }
                None => {
                    m.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// Reads a member name: which of the kept names it is, without allocating.
struct Which<'n>(&'n [&'n str]);

impl<'de, 'n> DeserializeSeed<'de> for Which<'n> {
    type Value = Option<&'n str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'n> Visitor<'_> for Which<'n> {
    type Value = Option<&'n str>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a member name")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().copied().find(|n| *n == v))
    }
}

/// The request members an audit record keeps (`None`: the body is not a JSON object).
pub fn request_parameters(body: &[u8]) -> Option<Value> {
    pick(body, REQUEST_MEMBERS)
}

/// The response members an audit record keeps, for a state-changing `op`.
pub fn response_elements(op: &str, body: &[u8]) -> Option<Value> {
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
    /// `sourceIPAddress` (CloudTrail writes a service name when there is no address).
    pub source: &'a str,
    /// `userAgent`.
    pub user_agent: &'a str,
    /// `None`: the caller is not known (the signature did not verify).
    pub identity: Option<Identity<'a>>,
    /// Kept members of the request.
    pub request: Option<&'a Value>,
    /// Kept members of the response.
    pub response: Option<&'a Value>,
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

/// A CloudTrail KMS event, its fields in CloudTrail's names and order. Serialized straight
/// from borrowed parts: a record costs one pass, not a tree of owned values.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Cloudtrail<'a> {
    event_version: &'static str,
    user_identity: UserIdentity<'a>,
    event_time: String,
    event_source: &'static str,
    event_name: &'a str,
    aws_region: &'a str,
    #[serde(rename = "sourceIPAddress")]
    source_ip_address: &'a str,
    user_agent: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_message: Option<&'a str>,
    request_parameters: Option<&'a Value>,
    response_elements: Option<&'a Value>,
    #[serde(rename = "requestID")]
    request_id: &'a str,
    #[serde(rename = "eventID")]
    event_id: &'a str,
    read_only: bool,
    resources: Vec<KeyResource<'a>>,
    event_type: &'static str,
    management_event: bool,
    recipient_account_id: &'a str,
    event_category: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserIdentity<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    arn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_key_id: Option<&'a str>,
}

#[derive(Serialize)]
struct KeyResource<'a> {
    #[serde(rename = "accountId")]
    account_id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "ARN")]
    arn: &'a str,
}

/// The record, ready for the trail.
pub fn record(e: &Event<'_>) -> Result<Record, AuditError> {
    let user_identity = match &e.identity {
        Some(i) => UserIdentity {
            kind: identity_type(i.arn),
            arn: Some(i.arn),
            account_id: Some(account_of(i.arn).unwrap_or(e.account)),
            access_key_id: Some(i.access_key_id),
        },
        None => UserIdentity {
            kind: "Unknown",
            arn: None,
            account_id: None,
            access_key_id: None,
        },
    };
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let event_id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id);
    Record::of(&Cloudtrail {
        event_version: "1.08",
        user_identity,
        event_time: event_time(e.time),
        event_source: "kms.amazonaws.com",
        event_name: e.op,
        aws_region: e.region,
        source_ip_address: e.source,
        user_agent: e.user_agent,
        error_code: e.error.map(|(code, _)| code),
        error_message: e.error.map(|(_, message)| message),
        request_parameters: e.request,
        response_elements: e.response.filter(|_| e.error.is_none()),
        request_id: e.request_id,
        event_id,
        read_only: read_only(e.op),
        resources: e
            .keys
            .iter()
            .map(|arn| KeyResource {
                account_id: account_of(arn).unwrap_or(e.account),
                kind: "AWS::KMS::Key",
                arn,
            })
            .collect(),
        event_type: "AwsApiCall",
        management_event: true,
        recipient_account_id: e.account,
        event_category: "Management",
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
    let (tx, rx) = tokio::sync::oneshot::channel();
    let ack: Option<crate::audit::Ack> = wait.then(|| -> crate::audit::Ack {
        Box::new(move |r| {
            let _ = tx.send(r);
        })
    });
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
    if !wait {
        return Ok(());
    }
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
        let kept = request_parameters(body).unwrap();
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
        // A kept member is parsed into a value: serde_json's depth limit refuses it.
        assert_eq!(request_parameters(deep("Tags").as_bytes()), None);
        // A skipped member is passed over without recursion (serde_json keeps the brackets
        // in a list), and nothing of it is kept.
        assert_eq!(
            request_parameters(deep("Plaintext").as_bytes()),
            Some(serde_json::json!({}))
        );
    }

    #[test]
    fn a_record_is_one_object_with_cloudtrail_fields() {
        let params = serde_json::json!({"keyId": "k"});
        let keys = ["arn:aws:kms:eu-west-1:111122223333:key/k".to_owned()];
        let r = record(&Event {
            op: "Decrypt",
            time: time::OffsetDateTime::UNIX_EPOCH,
            region: "eu-west-1",
            account: "111122223333",
            source: "127.0.0.1",
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
}
