//! Errors on the wire: the AWS JSON shape `{"__type": ..., "message": ...}` plus
//! `X-Amzn-ErrorType`, with the status codes AWS KMS uses.

use hyper::StatusCode;

use super::sigv4::AuthError;
use crate::error::{ErrorKind, KmsError};

/// One error answer. `name` is what SDKs key on; the status mainly drives their retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub name: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, name: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            name,
            message: message.into(),
        }
    }

    /// Unparseable body: malformed JSON, a wrong type, bad base64 (AWS's name for all three).
    pub fn serialization(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "SerializationException", message)
    }

    pub fn unknown_operation(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            message,
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "KMSInternalException",
            message,
        )
    }

    /// What the client is told. Client errors say what was wrong; a server-side error gets
    /// the generic wording AWS documents for its exception (plus the request id), and its
    /// details (token return codes, which key, why) go to the log with the request id.
    pub fn for_client(&self, request_id: &str) -> ApiError {
        if !self.status.is_server_error() {
            return self.clone();
        }
        tracing::error!(
            request_id,
            error = self.name,
            status = self.status.as_u16(),
            detail = %self.message,
            "request failed"
        );
        let generic = match self.name {
            "KeyUnavailableException" => {
                "The request was rejected because the specified KMS key was not available. \
                 You can retry the request."
            }
            "DependencyTimeoutException" => {
                "The system timed out while trying to fulfill the request. You can retry the \
                 request."
            }
            _ => {
                "The request was rejected because an internal exception occurred. The request \
                 can be retried."
            }
        };
        ApiError::new(
            self.status,
            self.name,
            format!("{generic} (request id {request_id})"),
        )
    }

    /// The JSON body. Built with serde so any message text is escaped correctly.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "__type": self.name,
            "message": self.message,
        }))
        .unwrap_or_else(|_| format!(r#"{{"__type":"{}"}}"#, self.name).into_bytes())
    }
}

/// At most `max` bytes of `s` (client-supplied text quoted in a message), cut on a character
/// boundary, with `...` when cut.
pub(crate) fn clip_to(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    format!("{}...", prefix_within(s, max))
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn prefix_within(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

impl From<KmsError> for ApiError {
    fn from(e: KmsError) -> ApiError {
        let status = match e.kind() {
            ErrorKind::DependencyTimeout => StatusCode::SERVICE_UNAVAILABLE,
            k if k.is_client_error() => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.aws_name(), e.message())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, e.aws_name(), e.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_aws() {
        let cases = [
            (KmsError::not_found("x"), 400),
            (KmsError::invalid_ciphertext_with("x"), 400),
            (KmsError::internal("x"), 500),
            (KmsError::key_unavailable("x"), 500),
            (KmsError::config("x"), 500),
            (KmsError::dependency_timeout("x"), 503),
        ];
        for (e, status) in cases {
            assert_eq!(ApiError::from(e).status.as_u16(), status);
        }
        let a = ApiError::from(AuthError::Missing);
        assert_eq!(a.name, "MissingAuthenticationTokenException");
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn internal_details_stay_in_the_log() {
        let detail = ApiError::from(KmsError::internal("the token failed (CKR_DEVICE_ERROR)"));
        let shown = detail.for_client("rid-1");
        assert_eq!((shown.status, shown.name), (detail.status, detail.name));
        assert!(!shown.message.contains("CKR_"), "{}", shown.message);
        assert!(shown.message.contains("rid-1"));
        let unavailable = ApiError::from(KmsError::key_unavailable(
            "the token object labelled p11kms:cmk:x:v2 is refused: CKA_LOCAL is false",
        ))
        .for_client("rid-2");
        assert!(
            !unavailable.message.contains("CKA_"),
            "{}",
            unavailable.message
        );
        // Client errors keep their message.
        let nf = ApiError::from(KmsError::not_found("Alias alias/x is not found."));
        assert_eq!(nf.for_client("rid-3"), nf);
    }

    #[test]
    fn body_is_escaped_json() {
        let e = ApiError::serialization("bad \"quote\"\n");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["__type"], "SerializationException");
        assert_eq!(v["message"], "bad \"quote\"\n");
    }
}
