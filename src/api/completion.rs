//! The one point where a finished KMS request is known whole: its request id, operation,
//! principal, the keys it was authorized on, its outcome and duration. The metrics and the
//! request log line hang off [`Completion::finished`]; an audit writer hangs off the same
//! point (it would add the parameters it needs to [`Finished`]).
//!
//! The log line is `info` on the target `p11kms::request` (`P11KMS_LOG=warn,p11kms::request=info`
//! turns it on without the rest). It carries no secret: no plaintext, no key material, no
//! encryption context, no signature or secret key, only names and ARNs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::auth::Principal;
use super::error::ApiError;
use super::facts::Peer;
use super::metrics::{RequestMetrics, OK};
use super::operations::Op;

/// What the request handler learns on the way, for [`Finished`].
#[derive(Default)]
pub(super) struct Notes {
    /// The operation `X-Amz-Target` named, if it names one (known before SigV4 is checked).
    pub op: Option<Op>,
    /// Who signed, once the signature is verified.
    pub principal: Option<Arc<Principal>>,
    /// The ARNs of the keys the request was authorized on, in order (ReEncrypt: two).
    pub keys: Vec<String>,
    /// For the audit record (set only when the trail is on): the `User-Agent`, the signed
    /// region, and the request and response members `api::audit` keeps.
    pub user_agent: Option<String>,
    pub region: Option<String>,
    pub params: Option<super::audit::Members>,
    pub response: Option<super::audit::Members>,
}

/// The keys an operation is authorized on, noted by `operations` as it resolves them (a
/// mutex only because policy checks may be handed to other threads; never contended).
#[derive(Default)]
pub struct KeysSeen(Mutex<Vec<String>>);

/// At most this many keys are noted per request (ReEncrypt needs two).
const MAX_KEYS_NOTED: usize = 4;

impl KeysSeen {
    /// Notes `arn` (once).
    pub(super) fn note(&self, arn: String) {
        let mut keys = crate::sync::lock(&self.0);
        if keys.len() < MAX_KEYS_NOTED && !keys.contains(&arn) {
            keys.push(arn);
        }
    }

    pub(super) fn into_inner(self) -> Vec<String> {
        self.0.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

/// One finished KMS request (`POST /`).
pub(super) struct Finished<'a> {
    pub request_id: &'a str,
    pub op: Option<Op>,
    pub principal: Option<&'a Principal>,
    pub keys: &'a [String],
    /// `None`: succeeded.
    pub error: Option<&'a ApiError>,
    pub took: Duration,
    pub peer: Peer,
}

/// Where finished requests go: the request metrics (when on) and the log.
pub(super) struct Completion {
    pub metrics: Option<Arc<RequestMetrics>>,
}

impl Completion {
    pub(super) fn finished(&self, f: &Finished<'_>) {
        if let Some(m) = &self.metrics {
            m.record(f.op, f.error.map(|e| e.name), f.took);
        }
        if !tracing::enabled!(target: "p11kms::request", tracing::Level::INFO) {
            return;
        }
        let keys = f.keys.join(" ");
        tracing::info!(
            target: "p11kms::request",
            request_id = f.request_id,
            operation = f.op.map_or("unknown", Op::name),
            principal = f.principal.map_or("", |p| p.arn.as_str()),
            access_key_id = f.principal.map_or("", |p| p.access_key_id.as_str()),
            key_arn = keys.as_str(),
            outcome = f.error.map_or(OK, |e| e.name),
            status = f.error.map_or(200, |e| e.status.as_u16()),
            // In ms to the µs: `1.52`, not `1.5200010000000001`.
            duration_ms = (f.took.as_secs_f64() * 1e6).round() / 1e3,
            source_ip = f.peer.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            "request"
        );
    }
}
