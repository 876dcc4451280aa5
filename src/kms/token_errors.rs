//! How the token layer's failures read as AWS exceptions: the one place they are mapped.

use crate::error::KmsError;
use crate::hsm::HsmError;

impl From<HsmError> for KmsError {
    fn from(e: HsmError) -> Self {
        match e {
            // A request that cannot get a session waits, then gets the exception SDKs retry.
            HsmError::Busy => KmsError::DependencyTimeout(e.to_string()),
            // Configuration and set-up problems: KMSInternalException on the wire, with the
            // details in the log; the CLI shows them as they are.
            HsmError::Unusable(m) => KmsError::Config(m),
            HsmError::AuthenticationFailed => KmsError::invalid_ciphertext(),
            HsmError::Misbehaved(m) => KmsError::Internal(m),
            HsmError::Call(c) => {
                if c.is_unavailable() || c.is_not_permitted() || c.is_stale_handle() {
                    KmsError::KeyUnavailable(format!(
                        "the key is not usable in the token right now ({c})"
                    ))
                } else {
                    KmsError::Internal(format!("the token failed ({c})"))
                }
            }
        }
    }
}
