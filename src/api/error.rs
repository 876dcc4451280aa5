//! Errors on the wire: the AWS JSON shape `{"__type": ..., "message": ...}` plus
//! `X-Amzn-ErrorType`, with the status codes AWS KMS uses.

use hyper::StatusCode;

use super::sigv4::AuthError;
use crate::error::KmsError;

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

    /// The JSON body. Built with serde so any message text is escaped correctly.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "__type": self.name,
            "message": self.message,
        }))
        .unwrap_or_else(|_| format!(r#"{{"__type":"{}"}}"#, self.name).into_bytes())
    }
}

impl From<KmsError> for ApiError {
    fn from(e: KmsError) -> ApiError {
        let status = match &e {
            KmsError::DependencyTimeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            e if e.is_client_error() => StatusCode::BAD_REQUEST,
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
            (KmsError::NotFound("x".into()), 400),
            (KmsError::InvalidCiphertext("x".into()), 400),
            (KmsError::Internal("x".into()), 500),
            (KmsError::KeyUnavailable("x".into()), 500),
            (KmsError::Config("x".into()), 500),
            (KmsError::DependencyTimeout("x".into()), 503),
        ];
        for (e, status) in cases {
            assert_eq!(ApiError::from(e).status.as_u16(), status);
        }
        let a = ApiError::from(AuthError::Missing);
        assert_eq!(a.name, "MissingAuthenticationTokenException");
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn body_is_escaped_json() {
        let e = ApiError::serialization("bad \"quote\"\n");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["__type"], "SerializationException");
        assert_eq!(v["message"], "bad \"quote\"\n");
    }
}
