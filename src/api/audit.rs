//! Audit records of KMS requests, shaped like CloudTrail's KMS events: which request
//! members and response members are recorded (a list of names: anything not on it, above
//! all plaintexts, ciphertexts, signatures, messages, MACs, grant and import tokens and key
//! material, is never written), and how a record is put together. The CLI builds its records
//! with the same function. Chaining and writing are `crate::audit`'s.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::audit::{event_time, AuditError, AuditLog, Failure};

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

fn pick(body: &[u8], names: &[&str]) -> Option<Value> {
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    let mut out = Map::new();
    for (k, v) in m {
        if !names.contains(&k.as_str()) {
            continue;
        }
        let v = if KEEP_INNER_KEYS.contains(&k.as_str()) {
            v
        } else {
            camel_deep(v)
        };
        out.insert(lower_camel(&k), v);
    }
    Some(Value::Object(out))
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
    pub source: String,
    /// `userAgent`.
    pub user_agent: &'a str,
    /// `None`: the caller is not known (the signature did not verify).
    pub identity: Option<Identity<'a>>,
    /// Kept members of the request.
    pub request: Option<Value>,
    /// Kept members of the response.
    pub response: Option<Value>,
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

/// The record, CloudTrail's fields in CloudTrail's names.
pub fn record(e: &Event<'_>) -> Map<String, Value> {
    let identity = match &e.identity {
        Some(i) => json!({
            "type": identity_type(i.arn),
            "arn": i.arn,
            "accountId": account_of(i.arn).unwrap_or(e.account),
            "accessKeyId": i.access_key_id,
        }),
        None => json!({ "type": "Unknown" }),
    };
    let resources: Vec<Value> = e
        .keys
        .iter()
        .map(|arn| {
            json!({
                "accountId": account_of(arn).unwrap_or(e.account),
                "type": "AWS::KMS::Key",
                "ARN": arn,
            })
        })
        .collect();
    let mut m = Map::new();
    m.insert("eventVersion".into(), json!("1.08"));
    m.insert("userIdentity".into(), identity);
    m.insert("eventTime".into(), json!(event_time(e.time)));
    m.insert("eventSource".into(), json!("kms.amazonaws.com"));
    m.insert("eventName".into(), json!(e.op));
    m.insert("awsRegion".into(), json!(e.region));
    m.insert("sourceIPAddress".into(), json!(e.source));
    m.insert("userAgent".into(), json!(e.user_agent));
    if let Some((code, message)) = e.error {
        m.insert("errorCode".into(), json!(code));
        m.insert("errorMessage".into(), json!(message));
    }
    m.insert(
        "requestParameters".into(),
        e.request.clone().unwrap_or(Value::Null),
    );
    m.insert(
        "responseElements".into(),
        if e.error.is_some() {
            Value::Null
        } else {
            e.response.clone().unwrap_or(Value::Null)
        },
    );
    m.insert("requestID".into(), json!(e.request_id));
    m.insert("eventID".into(), json!(uuid::Uuid::new_v4().to_string()));
    m.insert("readOnly".into(), json!(read_only(e.op)));
    m.insert("resources".into(), Value::Array(resources));
    m.insert("eventType".into(), json!("AwsApiCall"));
    m.insert("managementEvent".into(), json!(true));
    m.insert("recipientAccountId".into(), json!(e.account));
    m.insert("eventCategory".into(), json!("Management"));
    m
}

/// How long a request waits for its record before it counts as not written.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// Hands `record` to the writer and waits (async) until it is written. Never blocks a
/// runtime worker: a full queue is waited on from the blocking pool.
pub(super) async fn write(
    log: &Arc<AuditLog>,
    record: Map<String, Value>,
) -> Result<(), AuditError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let ack: crate::audit::Ack = Box::new(move |r| {
        let _ = tx.send(r);
    });
    if let Err((record, ack)) = log.try_append(record, ack) {
        let log = Arc::clone(log);
        // The blocking pool is bounded and shared; `append_blocking` only waits for room.
        tokio::task::spawn_blocking(move || log.append_blocking(record, ack));
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

/// Whether a failed record fails its request.
pub(super) fn fails_request(log: &AuditLog) -> bool {
    log.failure() == Failure::Closed
}
