//! The one error type of p11kms.
//!
//! Every variant names the AWS KMS exception a client expects for it, so the wire layer maps an
//! error to `__type` in exactly one place ([`KmsError::aws_name`]). Messages are written for the
//! caller: they never carry PINs, key bytes or raw token internals.

use std::fmt;

/// Result alias used throughout the crate.
pub type Result<T, E = KmsError> = std::result::Result<T, E>;

/// Every failure p11kms reports. The variant is the AWS exception; the string is the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KmsError {
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidAliasName(String),
    #[error("{0}")]
    InvalidMarker(String),
    #[error("{0}")]
    Disabled(String),
    #[error("{0}")]
    InvalidState(String),
    #[error("{0}")]
    InvalidCiphertext(String),
    #[error("{0}")]
    IncorrectKey(String),
    #[error("{0}")]
    InvalidKeyUsage(String),
    #[error("{0}")]
    InvalidGrantToken(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    AccessDenied(String),
    #[error("{0}")]
    UnsupportedOperation(String),
    #[error("{0}")]
    Tag(String),
    /// A `DryRun` request that would have succeeded.
    #[error("{0}")]
    DryRunOperation(String),
    /// The token failed in a way that is not the caller's fault.
    #[error("{0}")]
    Internal(String),
    /// The token (or the key inside it) cannot be used right now.
    #[error("{0}")]
    KeyUnavailable(String),
    /// The token did not answer in time (e.g. no free session).
    #[error("{0}")]
    DependencyTimeout(String),
    /// Local file or stream I/O failed (CLI, envelope files, state folder).
    #[error("{0}")]
    Io(String),
    /// Local set-up problems (config, state folder, token initialisation): never sent on the wire
    /// as such; the server maps them to `KMSInternalException`.
    #[error("{0}")]
    Config(String),
}

impl KmsError {
    /// The AWS exception name (`__type`) for this error.
    pub fn aws_name(&self) -> &'static str {
        match self {
            KmsError::Validation(_) => "ValidationException",
            KmsError::NotFound(_) => "NotFoundException",
            KmsError::AlreadyExists(_) => "AlreadyExistsException",
            KmsError::InvalidAliasName(_) => "InvalidAliasNameException",
            KmsError::InvalidMarker(_) => "InvalidMarkerException",
            KmsError::Disabled(_) => "DisabledException",
            KmsError::InvalidState(_) => "KMSInvalidStateException",
            KmsError::InvalidCiphertext(_) => "InvalidCiphertextException",
            KmsError::IncorrectKey(_) => "IncorrectKeyException",
            KmsError::InvalidKeyUsage(_) => "InvalidKeyUsageException",
            KmsError::InvalidGrantToken(_) => "InvalidGrantTokenException",
            KmsError::LimitExceeded(_) => "LimitExceededException",
            KmsError::AccessDenied(_) => "AccessDeniedException",
            KmsError::UnsupportedOperation(_) => "UnsupportedOperationException",
            KmsError::Tag(_) => "TagException",
            KmsError::DryRunOperation(_) => "DryRunOperationException",
            KmsError::Internal(_) | KmsError::Config(_) | KmsError::Io(_) => "KMSInternalException",
            KmsError::KeyUnavailable(_) => "KeyUnavailableException",
            KmsError::DependencyTimeout(_) => "DependencyTimeoutException",
        }
    }

    /// True for failures that are the caller's (4xx on the wire).
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            KmsError::Internal(_)
                | KmsError::KeyUnavailable(_)
                | KmsError::DependencyTimeout(_)
                | KmsError::Config(_)
                | KmsError::Io(_)
        )
    }

    /// The human-readable message, without the exception name.
    pub fn message(&self) -> &str {
        match self {
            KmsError::Validation(m)
            | KmsError::NotFound(m)
            | KmsError::AlreadyExists(m)
            | KmsError::InvalidAliasName(m)
            | KmsError::InvalidMarker(m)
            | KmsError::Disabled(m)
            | KmsError::InvalidState(m)
            | KmsError::InvalidCiphertext(m)
            | KmsError::IncorrectKey(m)
            | KmsError::InvalidKeyUsage(m)
            | KmsError::InvalidGrantToken(m)
            | KmsError::LimitExceeded(m)
            | KmsError::AccessDenied(m)
            | KmsError::UnsupportedOperation(m)
            | KmsError::Tag(m)
            | KmsError::DryRunOperation(m)
            | KmsError::Internal(m)
            | KmsError::KeyUnavailable(m)
            | KmsError::DependencyTimeout(m)
            | KmsError::Io(m)
            | KmsError::Config(m) => m,
        }
    }

    pub(crate) fn validation(msg: impl fmt::Display) -> Self {
        KmsError::Validation(msg.to_string())
    }

    pub(crate) fn invalid_ciphertext() -> Self {
        KmsError::InvalidCiphertext(
            "The ciphertext is invalid, was tampered with, or the encryption context does not match"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_classes() {
        assert_eq!(
            KmsError::InvalidCiphertext("x".into()).aws_name(),
            "InvalidCiphertextException"
        );
        assert_eq!(
            KmsError::InvalidState("x".into()).aws_name(),
            "KMSInvalidStateException"
        );
        assert!(KmsError::NotFound("x".into()).is_client_error());
        assert!(!KmsError::DependencyTimeout("x".into()).is_client_error());
        assert_eq!(
            KmsError::Config("c".into()).aws_name(),
            "KMSInternalException"
        );
    }
}
