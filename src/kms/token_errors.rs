//! How the token layer's failures read as AWS exceptions: the one place they are mapped. The
//! token's error stays attached as the cause (for logs and library callers), never in the
//! message a client sees.

use crate::error::KmsError;
use crate::hsm::HsmError;

impl From<HsmError> for KmsError {
    fn from(e: HsmError) -> Self {
        let mapped = match &e {
            // A request that cannot get a session waits, then gets the exception SDKs retry.
            HsmError::Busy => KmsError::dependency_timeout(e.to_string()),
            // Configuration and set-up problems: KMSInternalException on the wire, with the
            // details in the log; the CLI shows them as they are.
            HsmError::Unusable(m) => KmsError::config(m.clone()),
            HsmError::AuthenticationFailed => KmsError::invalid_ciphertext(),
            HsmError::Misbehaved(m) => KmsError::internal(m.clone()),
            HsmError::Call(c) => {
                if c.is_unavailable() || c.is_not_permitted() || c.is_stale_handle() {
                    KmsError::key_unavailable(format!(
                        "the key is not usable in the token right now ({c})"
                    ))
                } else {
                    KmsError::internal(format!("the token failed ({c})"))
                }
            }
        };
        mapped.caused_by(e)
    }
}
