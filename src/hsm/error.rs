//! The token layer's own errors: what a PKCS#11 call answered, classified into the few cases
//! p11kms reacts to differently. Nothing here names an AWS exception; `kms` maps these once.

use std::fmt;

use cryptoki::error::{Error as CkError, RvError};

/// How one token's return codes must be read where the tokens we target disagree. Chosen at
/// open from the module's manufacturer: neither case can be provoked cheaply at start-up
/// (both need a second process or a concurrent writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Quirks {
    /// `CKR_GENERAL_ERROR` may be a torn read of the token's files, worth retrying (SoftHSMv2,
    /// and unknown tokens, where a few retries cost little).
    pub general_error_transient: bool,
    /// `CKR_GENERAL_ERROR` from a call on an object handle means the object is gone: another
    /// process destroyed it (Kryoptic 1.5, measured; SoftHSM answers
    /// `CKR_OBJECT_HANDLE_INVALID`).
    pub general_error_stale_handle: bool,
}

impl Quirks {
    /// From `C_GetInfo`'s manufacturer and library description.
    pub(crate) fn for_library(manufacturer: &str, description: &str) -> Quirks {
        let kryoptic = manufacturer.contains("Kryoptic") || description.contains("Kryoptic");
        Quirks {
            general_error_transient: !kryoptic,
            general_error_stale_handle: kryoptic,
        }
    }
}

impl Default for Quirks {
    fn default() -> Self {
        Quirks::for_library("", "")
    }
}

/// Everything the token layer can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HsmError {
    /// A `C_*` call returned an error (its return code and how to read it).
    Call(CallError),
    /// No pool session became free in time.
    Busy,
    /// The module or the token cannot be used as configured (module missing, no such token,
    /// login refused, a required mechanism lacking): the operator's to fix. Never carries a
    /// PIN.
    Unusable(String),
    /// An AES-GCM open did not authenticate: wrong key, tag, AAD, or truncated input.
    AuthenticationFailed,
    /// The token answered something p11kms must not accept (it replaced the caller's IV, or
    /// sealed into the wrong number of bytes).
    Misbehaved(String),
}

/// One failed PKCS#11 call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    rv: Option<RvError>,
    text: String,
    /// Worth another try, as this token's [`Quirks`] read the code.
    transient: bool,
}

/// The token layer's result.
pub type Result<T, E = HsmError> = std::result::Result<T, E>;

impl From<CkError> for HsmError {
    fn from(e: CkError) -> Self {
        HsmError::Call(CallError::from(&e))
    }
}

impl From<&CkError> for CallError {
    fn from(e: &CkError) -> Self {
        let rv = match e {
            CkError::Pkcs11(rv, _) => Some(*rv),
            _ => None,
        };
        CallError {
            rv,
            text: e.to_string(),
            transient: false,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rv {
            Some(rv) => write!(f, "{rv:?}"),
            None => f.write_str(&self.text),
        }
    }
}

impl fmt::Display for HsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HsmError::Call(c) => write!(f, "the token failed ({c})"),
            HsmError::Busy => f.write_str("no token session became free in time"),
            HsmError::Unusable(m) | HsmError::Misbehaved(m) => f.write_str(m),
            HsmError::AuthenticationFailed => f.write_str("AES-GCM authentication failed"),
        }
    }
}

impl std::error::Error for HsmError {}

impl CallError {
    /// The return code's name (e.g. `CKR_DEVICE_ERROR` as `DeviceError`), for reports.
    pub fn code(&self) -> String {
        self.to_string()
    }

    /// Worth another try (a torn read on SoftHSM, Kryoptic's busy sqlite).
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// Reads the code with this token's quirks: marks transient codes, and on a token whose
    /// stale handles come back as `CKR_GENERAL_ERROR` (Kryoptic, after another process
    /// destroyed the object) turns that code into `CKR_OBJECT_HANDLE_INVALID` when `on_handle`
    /// (a call whose one object is a handle), so callers test [`Self::is_stale_handle`] alone.
    pub(crate) fn read_with(mut self, quirks: Quirks, on_handle: bool) -> CallError {
        if on_handle && quirks.general_error_stale_handle && self.rv == Some(RvError::GeneralError)
        {
            self.rv = Some(RvError::ObjectHandleInvalid);
            self.text = format!("{} (read as a stale handle)", self.text);
        }
        self.transient = match self.rv {
            Some(RvError::DeviceMemory) | Some(RvError::SessionCount) => true,
            Some(RvError::GeneralError) => quirks.general_error_transient,
            _ => false,
        };
        self
    }

    /// The object handle no longer names an object (another process destroyed it, or the
    /// token was re-opened): look the object up again.
    pub fn is_stale_handle(&self) -> bool {
        matches!(
            self.rv,
            Some(RvError::ObjectHandleInvalid) | Some(RvError::KeyHandleInvalid)
        )
    }

    /// The key exists but its attributes forbid the operation (e.g. a disabled CMK).
    pub fn is_not_permitted(&self) -> bool {
        matches!(
            self.rv,
            Some(RvError::KeyFunctionNotPermitted)
                | Some(RvError::KeyTypeInconsistent)
                | Some(RvError::MechanismInvalid)
        )
    }

    /// The token refused a template attribute (e.g. `CKA_ALLOWED_MECHANISMS` unsupported).
    pub fn is_template_refused(&self) -> bool {
        matches!(
            self.rv,
            Some(RvError::AttributeTypeInvalid)
                | Some(RvError::AttributeValueInvalid)
                | Some(RvError::TemplateInconsistent)
        )
    }

    /// The token does not offer a parameter p11kms asked for (a curve, a key size, a
    /// mechanism): the request's spec is unsupported here, not a token failure.
    pub fn is_unsupported_parameter(&self) -> bool {
        matches!(
            self.rv,
            Some(RvError::CurveNotSupported)
                | Some(RvError::DomainParamsInvalid)
                | Some(RvError::KeySizeRange)
                | Some(RvError::MechanismInvalid)
                | Some(RvError::MechanismParamInvalid)
                | Some(RvError::AttributeValueInvalid)
                | Some(RvError::TemplateInconsistent)
        )
    }

    /// The token refused the mechanism's parameters (SoftHSM's `CKR_ARGUMENTS_BAD` for an
    /// OAEP hash it does not do).
    pub fn is_parameter_refused(&self) -> bool {
        matches!(
            self.rv,
            Some(RvError::ArgumentsBad)
                | Some(RvError::MechanismParamInvalid)
                | Some(RvError::MechanismInvalid)
        )
    }

    /// What SoftHSM answers when it read its token file while another process rewrote it.
    pub(crate) fn is_torn_read(&self) -> bool {
        matches!(
            self.rv,
            Some(RvError::GeneralError) | Some(RvError::UserPinNotInitialized)
        )
    }

    pub(crate) fn is_already_initialized(&self) -> bool {
        matches!(self.rv, Some(RvError::CryptokiAlreadyInitialized))
    }

    pub(crate) fn is_already_logged_in(&self) -> bool {
        matches!(self.rv, Some(RvError::UserAlreadyLoggedIn))
    }

    /// The token or its session is not there (removed, closed, logged out, not initialised).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.rv,
            Some(RvError::DeviceError)
                | Some(RvError::DeviceRemoved)
                | Some(RvError::TokenNotPresent)
                | Some(RvError::TokenNotRecognized)
                | Some(RvError::SessionClosed)
                | Some(RvError::SessionHandleInvalid)
                | Some(RvError::UserNotLoggedIn)
                | Some(RvError::CryptokiNotInitialized)
        )
    }

    /// Why a GCM open failed, as far as the code tells. Kryoptic reports a failed tag as
    /// `CKR_ENCRYPTED_DATA_INVALID` (short input: `_LEN_RANGE`); SoftHSM as
    /// `CKR_GENERAL_ERROR`, the code it also uses for its own failures, so on SoftHSM that
    /// code is [`GcmFailure::Ambiguous`]. Every other code (device errors, stale handles,
    /// memory) is the token's failure, never the ciphertext's.
    pub(crate) fn gcm_open_failure(&self, quirks: Quirks) -> GcmFailure {
        match self.rv {
            Some(
                RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataInvalid
                | RvError::DataLenRange,
            ) => GcmFailure::Authentication,
            Some(RvError::GeneralError) if quirks.general_error_transient => GcmFailure::Ambiguous,
            _ => GcmFailure::Token,
        }
    }
}

impl CallError {
    /// Why an RSA decryption failed, as far as the code tells: as for GCM, except that
    /// Kryoptic 1.5 answers a ciphertext that does not decrypt (OAEP padding) with
    /// `CKR_DEVICE_ERROR`, so that code is ambiguous too (measured).
    pub(crate) fn rsa_decrypt_failure(&self, quirks: Quirks) -> GcmFailure {
        match self.rv {
            Some(RvError::DeviceError) => GcmFailure::Ambiguous,
            _ => self.gcm_open_failure(quirks),
        }
    }
}

impl CallError {
    /// Why a `C_UnwrapKey` failed, as far as the code tells: a ciphertext that does not
    /// unwrap (a wrong key, tampering, a wrong layout), or the token's own failure. SoftHSM and
    /// Kryoptic also answer some bad ciphertexts with codes they use for their own failures
    /// (`CKR_GENERAL_ERROR`, `CKR_DEVICE_ERROR`): ambiguous, decided by whether the session
    /// and the key still answer.
    pub(crate) fn unwrap_failure(&self) -> GcmFailure {
        match self.rv {
            Some(
                RvError::WrappedKeyInvalid
                | RvError::WrappedKeyLenRange
                | RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataInvalid
                | RvError::DataLenRange
                | RvError::KeySizeRange,
            ) => GcmFailure::Authentication,
            Some(RvError::GeneralError | RvError::DeviceError | RvError::FunctionFailed) => {
                GcmFailure::Ambiguous
            }
            _ => GcmFailure::Token,
        }
    }
}

impl HsmError {
    /// The failed call, if this is one.
    pub fn call(&self) -> Option<&CallError> {
        match self {
            HsmError::Call(c) => Some(c),
            _ => None,
        }
    }

    /// See [`CallError::is_stale_handle`].
    pub fn is_stale_handle(&self) -> bool {
        self.call().is_some_and(CallError::is_stale_handle)
    }

    /// See [`CallError::is_not_permitted`].
    pub fn is_not_permitted(&self) -> bool {
        self.call().is_some_and(CallError::is_not_permitted)
    }

    /// See [`CallError::is_template_refused`].
    pub fn is_template_refused(&self) -> bool {
        self.call().is_some_and(CallError::is_template_refused)
    }

    /// See [`CallError::is_transient`].
    pub fn is_transient(&self) -> bool {
        self.call().is_some_and(CallError::is_transient)
    }

    /// A code tokens answer both for an input they refuse and for their own failures
    /// (SoftHSM: `CKR_GENERAL_ERROR` for an off-curve ECDH point; Kryoptic:
    /// `CKR_DEVICE_ERROR` for an off-curve point and for an RSA-OAEP ciphertext that does
    /// not decode): the input's fault only if the token and the key still answer.
    pub fn may_be_refused_input(&self) -> bool {
        self.call().is_some_and(|c| {
            matches!(
                c.rv,
                Some(RvError::GeneralError | RvError::DeviceError | RvError::FunctionFailed)
            )
        })
    }
}

/// What a failed AES-GCM open means (see [`CallError::gcm_open_failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GcmFailure {
    /// The tag did not verify: the ciphertext, its AAD or the key is wrong.
    Authentication,
    /// The code is used both for a failed tag and for token failures: check the token.
    Ambiguous,
    /// The token failed.
    Token,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rv(rv: RvError) -> CallError {
        CallError {
            rv: Some(rv),
            text: format!("{rv:?}"),
            transient: false,
        }
    }

    #[test]
    fn a_device_error_in_a_gcm_open_is_never_a_bad_ciphertext() {
        let softhsm = Quirks::for_library("SoftHSM", "Implementation of PKCS11");
        let kryoptic = Quirks::for_library("Kryoptic Project", "Kryoptic PKCS11 Module");
        for q in [softhsm, kryoptic] {
            for code in [
                RvError::DeviceError,
                RvError::DeviceMemory,
                RvError::DeviceRemoved,
                RvError::SessionHandleInvalid,
                RvError::KeyHandleInvalid,
                RvError::HostMemory,
                RvError::FunctionFailed,
            ] {
                assert_eq!(rv(code).gcm_open_failure(q), GcmFailure::Token, "{code:?}");
            }
            assert_eq!(
                rv(RvError::EncryptedDataInvalid).gcm_open_failure(q),
                GcmFailure::Authentication
            );
        }
        // Kryoptic's CKR_GENERAL_ERROR is its own failure (its failed tags have their code).
        assert_eq!(
            rv(RvError::GeneralError).gcm_open_failure(kryoptic),
            GcmFailure::Token
        );
        assert_eq!(
            rv(RvError::GeneralError).gcm_open_failure(softhsm),
            GcmFailure::Ambiguous
        );
    }

    #[test]
    fn codes_are_read_with_the_tokens_quirks() {
        let softhsm = Quirks::for_library("SoftHSM", "");
        let kryoptic = Quirks::for_library("Kryoptic", "");
        let general = || rv(RvError::GeneralError);
        assert!(general().read_with(softhsm, true).is_transient());
        assert!(!general().read_with(softhsm, true).is_stale_handle());
        let k = general().read_with(kryoptic, true);
        assert!(k.is_stale_handle() && !k.is_transient());
        assert!(!general().read_with(kryoptic, false).is_stale_handle());
        assert!(rv(RvError::DeviceMemory)
            .read_with(kryoptic, false)
            .is_transient());
        assert!(!rv(RvError::DeviceError)
            .read_with(softhsm, false)
            .is_transient());
    }
}
