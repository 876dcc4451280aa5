//! Classifies PKCS#11 return values into the few cases p11kms reacts to differently, then
//! converts them into the crate's one error enum.

use std::fmt;

use cryptoki::error::{Error as CkError, RvError};

use crate::error::KmsError;

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

/// What a failed AES-GCM open means (see [`HsmError::gcm_open_failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GcmFailure {
    /// The tag did not verify: the ciphertext, its AAD or the key is wrong.
    Authentication,
    /// The code is used both for a failed tag and for token failures: check the token.
    Ambiguous,
    /// The token failed.
    Token,
}

/// A PKCS#11 failure, classified. Converted into [`KmsError`] at the edge of `hsm`.
#[derive(Debug, Clone)]
pub struct HsmError {
    rv: Option<RvError>,
    text: String,
}

impl From<CkError> for HsmError {
    fn from(e: CkError) -> Self {
        HsmError::from(&e)
    }
}

impl From<&CkError> for HsmError {
    fn from(e: &CkError) -> Self {
        let rv = match e {
            CkError::Pkcs11(rv, _) => Some(*rv),
            _ => None,
        };
        HsmError {
            rv,
            text: e.to_string(),
        }
    }
}

impl fmt::Display for HsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rv {
            Some(rv) => write!(f, "{rv:?}"),
            None => f.write_str(&self.text),
        }
    }
}

impl HsmError {
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

    /// What SoftHSM answers when it read its token file while another process rewrote it.
    pub fn is_torn_read(&self) -> bool {
        matches!(
            self.rv,
            Some(RvError::GeneralError) | Some(RvError::UserPinNotInitialized)
        )
    }

    pub fn is_already_initialized(&self) -> bool {
        matches!(self.rv, Some(RvError::CryptokiAlreadyInitialized))
    }

    pub fn is_already_logged_in(&self) -> bool {
        matches!(self.rv, Some(RvError::UserAlreadyLoggedIn))
    }

    /// Transient contention on the token's storage, worth another try: Kryoptic's sqlite
    /// under concurrent writers (`CKR_DEVICE_MEMORY`), and, where [`Quirks`] says so, SoftHSM
    /// reading its token file while another process or thread rewrites it
    /// (`CKR_GENERAL_ERROR`). Never used for GCM opens, where SoftHSM's `CKR_GENERAL_ERROR`
    /// means a failed tag.
    pub(crate) fn is_transient_on(&self, quirks: Quirks) -> bool {
        match self.rv {
            Some(RvError::DeviceMemory) | Some(RvError::SessionCount) => true,
            Some(RvError::GeneralError) => quirks.general_error_transient,
            _ => false,
        }
    }

    /// Reads the answer to a call on an object handle: on a token whose stale handles come
    /// back as `CKR_GENERAL_ERROR` (Kryoptic, after another process destroyed the object),
    /// that code becomes `CKR_OBJECT_HANDLE_INVALID`, so callers test [`Self::is_stale_handle`]
    /// alone. Only for calls whose one object is the handle (get/set/destroy/derive-from).
    pub(crate) fn on_handle(self, quirks: Quirks) -> HsmError {
        if quirks.general_error_stale_handle && self.rv == Some(RvError::GeneralError) {
            HsmError {
                rv: Some(RvError::ObjectHandleInvalid),
                text: format!("{} (read as a stale handle)", self.text),
            }
        } else {
            self
        }
    }

    /// The raw return value, for reports (e.g. what a token answered to a probe).
    pub fn code(&self) -> String {
        self.to_string()
    }

    fn is_unavailable(&self) -> bool {
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
}

impl From<HsmError> for KmsError {
    fn from(e: HsmError) -> Self {
        if e.is_unavailable() || e.is_not_permitted() || e.is_stale_handle() {
            KmsError::KeyUnavailable(format!(
                "the key is not usable in the token right now ({e})"
            ))
        } else {
            KmsError::Internal(format!("the token failed ({e})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rv(rv: RvError) -> HsmError {
        HsmError {
            rv: Some(rv),
            text: format!("{rv:?}"),
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
                let e = KmsError::from(rv(code));
                assert!(!e.is_client_error(), "{code:?} → {}", e.aws_name());
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
}
