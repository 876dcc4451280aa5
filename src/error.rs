//! The one error type of the service.
//!
//! A [`KmsError`] is a kind (the AWS KMS exception a client expects: the wire layer maps it to
//! `__type` in exactly one place, [`ErrorKind::aws_name`]), a message written for the caller,
//! and, where one exists, the typed cause underneath (a token failure). Messages never carry
//! PINs, key bytes or raw token internals; causes are for logs and library callers.

use std::fmt;

use crate::hsm::HsmError;

/// Result alias used throughout the crate.
pub type Result<T, E = KmsError> = std::result::Result<T, E>;

macro_rules! kinds {
    ($( $(#[doc = $doc:literal])* $kind:ident, $ctor:ident, $aws:literal, $client:literal; )*) => {
        /// Which AWS exception a failure is.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorKind {
            $( $(#[doc = $doc])* $kind, )*
        }

        impl ErrorKind {
            /// The AWS exception name (`__type`).
            pub fn aws_name(self) -> &'static str {
                match self { $( ErrorKind::$kind => $aws, )* }
            }

            /// True for failures that are the caller's (4xx on the wire).
            pub fn is_client_error(self) -> bool {
                match self { $( ErrorKind::$kind => $client, )* }
            }
        }

        impl KmsError {
            $(
                #[doc = concat!("A `", $aws, "` with `message`.")]
                pub fn $ctor(message: impl Into<String>) -> KmsError {
                    KmsError::new(ErrorKind::$kind, message)
                }
            )*
        }
    };
}

kinds! {
    /// A parameter is missing, malformed or out of range.
    Validation, validation, "ValidationException", true;
    /// No such key or alias.
    NotFound, not_found, "NotFoundException", true;
    /// The alias exists already.
    AlreadyExists, already_exists, "AlreadyExistsException", true;
    /// The alias name is malformed or reserved.
    InvalidAliasName, invalid_alias_name, "InvalidAliasNameException", true;
    /// A paging marker this service did not hand out.
    InvalidMarker, invalid_marker, "InvalidMarkerException", true;
    /// The key is disabled.
    Disabled, disabled, "DisabledException", true;
    /// The key's state does not allow the operation.
    InvalidState, invalid_state, "KMSInvalidStateException", true;
    /// The ciphertext is not ours, was changed, or its encryption context differs.
    InvalidCiphertext, invalid_ciphertext_with, "InvalidCiphertextException", true;
    /// The ciphertext was made under another key than the one named.
    IncorrectKey, incorrect_key, "IncorrectKeyException", true;
    /// The key's usage or spec does not allow the operation or algorithm.
    InvalidKeyUsage, invalid_key_usage, "InvalidKeyUsageException", true;
    /// A signature does not verify with the key and algorithm named.
    InvalidSignature, invalid_signature, "KMSInvalidSignatureException", true;
    /// A MAC does not verify with the key and algorithm named.
    InvalidMac, invalid_mac, "KMSInvalidMacException", true;
    /// The caller's credential does not allow the operation on this resource.
    AccessDenied, access_denied, "AccessDeniedException", true;
    /// A key or identity policy that does not parse, or would lock its writer out.
    MalformedPolicyDocument, malformed_policy, "MalformedPolicyDocumentException", true;
    /// An AWS operation or parameter this service does not support.
    UnsupportedOperation, unsupported, "UnsupportedOperationException", true;
    /// A tag key or value is malformed, or there are too many.
    Tag, tag, "TagException", true;
    /// An import token that p11kms did not hand out for this key, or whose wrapping key is gone.
    InvalidImportToken, invalid_import_token, "InvalidImportTokenException", true;
    /// An import token past its `ParametersValidTo`.
    ExpiredImportToken, expired_import_token, "ExpiredImportTokenException", true;
    /// Key material that is not what the key takes, or not the material it had before.
    IncorrectKeyMaterial, incorrect_key_material, "IncorrectKeyMaterialException", true;
    /// A `DryRun` request that would have succeeded.
    DryRunOperation, dry_run_succeeded, "DryRunOperationException", true;
    /// A principal named in a request is not an ARN this service understands.
    InvalidArn, invalid_arn, "InvalidArnException", true;
    /// A grant id that is malformed (or names no grant where AWS says so).
    InvalidGrantId, invalid_grant_id, "InvalidGrantIdException", true;
    /// A grant token that is malformed, or does not belong to its grant.
    InvalidGrantToken, invalid_grant_token, "InvalidGrantTokenException", true;
    /// A quota was exceeded (e.g. grants per key).
    LimitExceeded, limit_exceeded, "LimitExceededException", true;
    /// The request conflicts with work in progress (an on-demand rotation not yet done).
    Conflict, conflict, "ConflictException", true;
    /// The token failed in a way that is not the caller's fault.
    Internal, internal, "KMSInternalException", false;
    /// The token (or the key inside it) cannot be used right now.
    KeyUnavailable, key_unavailable, "KeyUnavailableException", false;
    /// The token did not answer in time (e.g. no free session).
    DependencyTimeout, dependency_timeout, "DependencyTimeoutException", false;
    /// Local file or stream I/O failed (CLI, envelope files, state folder).
    Io, io, "KMSInternalException", false;
    /// Local set-up problems (configuration, state folder, token initialisation). The server
    /// answers them as `KMSInternalException`, with the details in its log.
    Config, config, "KMSInternalException", false;
}

/// Every failure the service reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsError {
    kind: ErrorKind,
    message: String,
    cause: Option<HsmError>,
}

impl KmsError {
    /// A failure of `kind` with `message` (for the caller: see the module docs).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> KmsError {
        KmsError {
            kind,
            message: message.into(),
            cause: None,
        }
    }

    /// The same failure, caused by the token's `cause`.
    pub fn caused_by(mut self, cause: HsmError) -> KmsError {
        self.cause = Some(cause);
        self
    }

    /// Which AWS exception this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The AWS exception name (`__type`) for this error.
    pub fn aws_name(&self) -> &'static str {
        self.kind.aws_name()
    }

    /// True for failures that are the caller's (4xx on the wire).
    pub fn is_client_error(&self) -> bool {
        self.kind.is_client_error()
    }

    /// The human-readable message, without the exception name.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The token failure underneath, if there was one.
    pub fn cause(&self) -> Option<&HsmError> {
        self.cause.as_ref()
    }

    /// The one answer for every ciphertext that does not open, whatever the reason: a caller
    /// learns nothing about which check failed.
    pub(crate) fn invalid_ciphertext() -> Self {
        KmsError::invalid_ciphertext_with(
            "The ciphertext is invalid, was tampered with, or the encryption context does not match",
        )
    }
}

impl fmt::Display for KmsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for KmsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_ref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_classes() {
        assert_eq!(
            KmsError::invalid_ciphertext().aws_name(),
            "InvalidCiphertextException"
        );
        assert_eq!(
            KmsError::invalid_state("x").aws_name(),
            "KMSInvalidStateException"
        );
        assert!(KmsError::not_found("x").is_client_error());
        assert!(!KmsError::dependency_timeout("x").is_client_error());
        assert_eq!(KmsError::config("c").aws_name(), "KMSInternalException");
        assert_eq!(KmsError::config("c").kind(), ErrorKind::Config);
    }

    #[test]
    fn a_cause_is_kept_but_not_shown() {
        let e = KmsError::internal("the token failed").caused_by(HsmError::Busy);
        assert_eq!(e.to_string(), "the token failed");
        assert_eq!(e.cause(), Some(&HsmError::Busy));
        assert!(std::error::Error::source(&e).is_some());
    }
}
