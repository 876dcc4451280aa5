//! Where key material and plaintext exist, per operation, on this token: what `token info` and
//! the server's start-up log state, and what `require_in_token_sealing` enforces. See
//! docs/key-custody.md.

use serde::Serialize;

use super::Kms;
use crate::error::{KmsError, Result};
use crate::hsm::{DeriveTemplateSupport, InTokenDataKeys, Token};

/// How GenerateDataKeyWithoutPlaintext seals a data key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SealingPath {
    /// `C_GenerateKey` + `C_WrapKey(CKM_AES_GCM)` + `C_DestroyObject`: the key exists only in
    /// the token.
    Token,
    /// `C_GenerateRandom` + `C_Encrypt(CKM_AES_GCM)`: the key passes through host memory.
    Host,
}

impl SealingPath {
    /// The name shown by `token info`.
    pub fn as_str(self) -> &'static str {
        match self {
            SealingPath::Token => "token",
            SealingPath::Host => "host",
        }
    }
}

/// One operation's path and where its plaintext exists.
#[derive(Debug, Clone, Serialize)]
pub struct OperationCustody {
    pub operation: &'static str,
    pub path: String,
    pub plaintext: String,
}

/// The custody report of a service over its token.
#[derive(Debug, Clone, Serialize)]
pub struct Custody {
    /// The token's label.
    pub token_label: String,
    /// How GenerateDataKeyWithoutPlaintext seals data keys.
    pub data_keys_without_plaintext: SealingPath,
    /// Whether the token can seal data keys itself.
    pub in_token_sealing_possible: bool,
    /// Why the token cannot seal in the token, if it cannot.
    pub in_token_sealing_missing: Option<String>,
    /// Whether the configuration requires it to.
    pub in_token_sealing_required: bool,
    /// Whether the token enforces `CKA_DERIVE_TEMPLATE` on CMKs.
    pub derive_template: DeriveTemplateSupport,
    /// Measured host-memory window of the host path, µs.
    pub host_exposure_micros: Option<u64>,
    /// Where each operation's key material is, operation by operation.
    pub operations: Vec<OperationCustody>,
}

impl Custody {
    /// `Operation: path; plaintext: where` lines, for logs and `token info`.
    pub fn lines(&self) -> Vec<String> {
        self.operations
            .iter()
            .map(|o| format!("{}: {}; plaintext: {}", o.operation, o.path, o.plaintext))
            .collect()
    }
}

/// The message of a service that refuses a token because `what` demands in-token sealing.
pub(crate) fn refusal(token: &Token, what: &str) -> String {
    let d = token.description();
    let missing = token
        .capabilities()
        .in_token_sealing_missing
        .clone()
        .unwrap_or_else(|| "in-token sealing is not available".into());
    format!(
        "{what} is set, but token {:?} ({} {}, {} {}, module {}) cannot seal data keys inside \
         the token: {missing}. Refusing to start rather than let GenerateDataKeyWithoutPlaintext \
         keys pass through host memory. Use a token whose CKM_AES_GCM offers CKF_WRAP (see \
         docs/key-custody.md), or unset it.",
        d.label, d.manufacturer, d.model, d.library, d.library_version, d.module
    )
}

impl Kms {
    /// The custody report for this service: per operation, the PKCS#11 path and where the
    /// plaintext exists.
    pub fn custody(&self) -> Custody {
        let caps = self.token.capabilities();
        let kdf = caps.kdf.map_or("none", |k| k.name());
        let exposure = caps
            .host_seal_micros
            .map_or("a few µs".to_string(), |us| format!("~{us} µs"));
        let dt = caps.derive_template;
        let cmk_extra = if dt.enforced {
            ", CKA_DERIVE_TEMPLATE (sensitive, non-extractable) enforced"
        } else {
            ""
        };
        let op = |operation, path: String, plaintext: String| OperationCustody {
            operation,
            path,
            plaintext,
        };
        let epoch = format!("epoch key C_DeriveKey({kdf}) from the CMK in the token");
        let without_plaintext = match (self.sealing, caps.in_token_data_keys) {
            (SealingPath::Token, Some(kind)) => {
                let gen = match kind {
                    InTokenDataKeys::AnyLength => "CKM_GENERIC_SECRET_KEY_GEN",
                    InTokenDataKeys::AesOnly => "CKM_AES_KEY_GEN",
                };
                let partial = match (kind, self.require_in_token) {
                    (InTokenDataKeys::AnyLength, _) => "",
                    (InTokenDataKeys::AesOnly, true) => {
                        " (16- and 32-byte keys; other lengths refused)"
                    }
                    (InTokenDataKeys::AesOnly, false) => {
                        " (16- and 32-byte keys; other lengths take the host path)"
                    }
                };
                op(
                    "GenerateDataKeyWithoutPlaintext",
                    format!(
                        "{epoch}; C_GenerateKey({gen}) + C_WrapKey(CKM_AES_GCM) + \
                         C_DestroyObject in the token{partial}"
                    ),
                    "token only".into(),
                )
            }
            _ => op(
                "GenerateDataKeyWithoutPlaintext",
                format!("{epoch}; C_GenerateRandom + C_Encrypt(CKM_AES_GCM)"),
                format!("host memory for {exposure}, zeroized"),
            ),
        };
        let operations = vec![
            op(
                "CreateKey",
                format!(
                    "C_GenerateKey(CKM_AES_KEY_GEN) in the token: AES-256 CMK, derive-only, \
                     sensitive, never extractable{cmk_extra}"
                ),
                "none (the CMK never leaves the token)".into(),
            ),
            op(
                "ImportKeyMaterial",
                format!(
                    "C_UnwrapKey(CKM_RSA_PKCS_OAEP{}) with an RSA wrapping key generated in the \
                     token, straight into the CMK: AES-256, derive-only, sensitive, not \
                     extractable (not CKA_LOCAL: accepted only for keys whose record says \
                     Origin EXTERNAL){cmk_extra}",
                    caps.rfc5649
                        .map(|m| format!("; for RSA_AES_KEY_WRAP then {}", m.name))
                        .unwrap_or_default()
                ),
                "none (the key material is unwrapped inside the token)".into(),
            ),
            op(
                "Encrypt",
                format!("{epoch}; C_Encrypt(CKM_AES_GCM)"),
                "from the caller; host memory for the request".into(),
            ),
            op(
                "Decrypt",
                format!("{epoch}; C_Decrypt(CKM_AES_GCM) (the token checks the tag)"),
                "host memory until returned to the caller, zeroized".into(),
            ),
            op(
                "ReEncrypt",
                format!(
                    "epoch keys C_DeriveKey({kdf}) from both CMKs in the token; C_Decrypt then \
                     C_Encrypt(CKM_AES_GCM)"
                ),
                format!("host memory for {exposure} between the two, zeroized"),
            ),
            op(
                "GenerateDataKey",
                format!("{epoch}; C_GenerateRandom + C_Encrypt(CKM_AES_GCM)"),
                "host memory until returned to the caller, zeroized".into(),
            ),
            without_plaintext,
            op(
                "GenerateRandom",
                "C_GenerateRandom".into(),
                "returned to the caller".into(),
            ),
            op(
                "CreateKey (asymmetric, HMAC)",
                "C_GenerateKeyPair / C_GenerateKey(CKM_GENERIC_SECRET_KEY_GEN) in the token: \
                 private or secret key sensitive, never extractable, one usage"
                    .into(),
                "none (the key never leaves the token; the public key is kept in the record)"
                    .into(),
            ),
            op(
                "Sign / GenerateMac",
                "digest on the host (RAW), C_Sign in the token".into(),
                "the message, host memory for the request".into(),
            ),
            op(
                "Verify / VerifyMac",
                "C_Verify in the token (public key as a session object)".into(),
                "the message, host memory for the request".into(),
            ),
            op(
                "Decrypt (RSA)",
                if self.token.capabilities().asymmetric.rsa_x_509.present {
                    "C_Decrypt(CKM_RSA_PKCS_OAEP) in the token, or where the token's OAEP \
                     refuses the hash C_Decrypt(CKM_RSA_X_509) and OAEP decoding on the host"
                } else {
                    "C_Decrypt(CKM_RSA_PKCS_OAEP) in the token"
                }
                .into(),
                "host memory until returned to the caller, zeroized".into(),
            ),
            op(
                "DeriveSharedSecret",
                "C_DeriveKey(CKM_ECDH1_DERIVE) in the token, read once, destroyed".into(),
                "host memory until returned to the caller, zeroized".into(),
            ),
            op(
                "GenerateDataKeyPair",
                format!(
                    "C_GenerateKeyPair (session objects), private key read as PKCS#8; {epoch}; \
                     C_Encrypt(CKM_AES_GCM)"
                ),
                "host memory until returned to the caller, zeroized".into(),
            ),
            if self.sealing == SealingPath::Token && caps.private_key_gcm_wrap {
                op(
                    "GenerateDataKeyPairWithoutPlaintext",
                    format!(
                        "C_GenerateKeyPair (session objects); {epoch}; C_WrapKey(CKM_AES_GCM) of \
                         the private key in the token"
                    ),
                    "token only".into(),
                )
            } else {
                op(
                    "GenerateDataKeyPairWithoutPlaintext",
                    format!(
                        "C_GenerateKeyPair (session objects), private key read as PKCS#8; \
                         {epoch}; C_Encrypt(CKM_AES_GCM)"
                    ),
                    "host memory from the read to the seal, zeroized".into(),
                )
            },
        ];
        Custody {
            token_label: self.token.description().label.clone(),
            data_keys_without_plaintext: self.sealing,
            in_token_sealing_possible: caps.in_token_sealing(),
            in_token_sealing_missing: caps.in_token_sealing_missing.clone(),
            in_token_sealing_required: self.require_in_token,
            derive_template: dt,
            host_exposure_micros: caps.host_seal_micros,
            operations,
        }
    }

    /// Refuses a service that must seal in the token but cannot.
    pub(crate) fn enforce_custody(&self) -> Result<()> {
        if self.require_in_token && self.sealing != SealingPath::Token {
            return Err(KmsError::config(refusal(
                &self.token,
                "require_in_token_sealing (or P11KMS_REQUIRE_IN_TOKEN_SEALING=true)",
            )));
        }
        Ok(())
    }
}
