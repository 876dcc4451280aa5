//! The audit key: one HMAC-SHA256 generic secret per token (label [`AUDIT_KEY_LABEL`]),
//! generated in the token at first use, sensitive, never extractable, sign/verify only. It MACs
//! the audit trail's checkpoints and the custody report; checking them needs the token too
//! (`C_Verify` compares inside it), so a trail cannot be rewritten, nor its MACs forged,
//! without a logged-in session on the token.

use super::{BackingKind, Checked, CmkAttributes, CmkHandle, HsmError, Result, Token};
use crate::der::Hash;

/// `CKA_LABEL` of the audit key.
pub const AUDIT_KEY_LABEL: &str = "p11kms:audit:v1";
/// `CKA_ID` of the audit key.
const AUDIT_KEY_ID: &[u8] = b"p11kms-audit-v1";
const AUDIT_KEY_BYTES: usize = 32;

/// The token's audit key, found or generated once; cheap to clone.
///
/// Processes starting together on a fresh token may each generate one (PKCS#11 has no
/// create-if-absent): every genuine key under the label is kept, the first makes MACs and
/// any may verify one. A key that is not genuine (imported, extractable, another `CKA_ID`)
/// is never used, so a PIN holder cannot plant a key of known value.
#[derive(Clone)]
pub struct AuditKey {
    token: std::sync::Arc<Token>,
    handles: Vec<CmkHandle>,
}

impl Token {
    /// Genuine audit keys in the token.
    fn genuine_audit_keys(&self) -> Result<Vec<CmkHandle>> {
        let kind = BackingKind::Hmac {
            bytes: AUDIT_KEY_BYTES,
        };
        let mut out = Vec::new();
        for h in self.find_cmks(AUDIT_KEY_LABEL)? {
            let attrs = match self.handle_call(|s| s.get_attributes(h.0, &CmkAttributes::TYPES)) {
                Ok(a) => a,
                Err(e) if e.is_stale_handle() => continue,
                Err(e) => return Err(e),
            };
            match CmkAttributes::from_attributes(attrs).verify(AUDIT_KEY_ID, kind) {
                Ok(()) => out.push(h),
                Err(why) => tracing::error!(
                    target: "p11kms::custody",
                    label = AUDIT_KEY_LABEL,
                    "an object under the audit key's label is not genuine, ignored: {why}"
                ),
            }
        }
        Ok(out)
    }

    /// The audit key: the genuine ones this token holds, else a new one. `create` means
    /// "generate it if missing"; without it a missing key is [`HsmError::Misbehaved`]
    /// (verifying must not make a key).
    pub fn audit_key(&self, create: bool) -> Result<AuditKey> {
        let mut handles = self.genuine_audit_keys()?;
        if handles.is_empty() {
            if !create {
                return Err(HsmError::Misbehaved(format!(
                    "the token holds no audit key ({AUDIT_KEY_LABEL})"
                )));
            }
            let made = self.generate_hmac_key(
                AUDIT_KEY_LABEL,
                AUDIT_KEY_ID,
                AUDIT_KEY_BYTES,
                Hash::Sha256,
            );
            handles = self.genuine_audit_keys()?;
            if handles.is_empty() {
                handles.push(made?);
            }
        }
        Ok(AuditKey {
            token: std::sync::Arc::new(Token {
                inner: std::sync::Arc::clone(&self.inner),
            }),
            handles,
        })
    }
}

impl AuditKey {
    /// HMAC-SHA256 of `message`, made in the token.
    pub fn mac(&self, message: &[u8]) -> Result<Vec<u8>> {
        let h = self
            .handles
            .first()
            .ok_or_else(|| HsmError::Misbehaved("no audit key".into()))?;
        self.token.hmac(*h, Hash::Sha256, message)
    }

    /// Whether `mac` is an audit key's HMAC of `message` (compared in the token).
    pub fn verify(&self, message: &[u8], mac: &[u8]) -> Result<bool> {
        for h in &self.handles {
            if matches!(
                self.token.hmac_verify(*h, Hash::Sha256, message, mac)?,
                Checked::Valid
            ) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The attributes that prove one backing key's custody, as the token reports them (for the
/// custody report).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CustodyFacts {
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_CLASS` and `CKA_KEY_TYPE`.
    pub class: String,
    /// `CKA_KEY_TYPE`.
    pub key_type: String,
    /// `CKA_LOCAL`: generated in the token (`None`: not reported).
    pub local: Option<bool>,
    /// `CKA_NEVER_EXTRACTABLE`.
    pub never_extractable: Option<bool>,
    /// `CKA_ALWAYS_SENSITIVE`.
    pub always_sensitive: Option<bool>,
    /// `CKA_ALLOWED_MECHANISMS` (`None`: not set or not reported).
    pub allowed_mechanisms: Option<Vec<String>>,
    /// Sensitivity, extractability, usages, and whether any secret part could be read.
    pub attributes: super::CmkCustody,
}

impl Token {
    /// [`CustodyFacts`] of every token secret or private key whose label starts with
    /// `prefix`.
    pub fn custody_facts(&self, prefix: &str) -> Result<Vec<CustodyFacts>> {
        use cryptoki::object::{Attribute, AttributeType};
        let mut out = Vec::new();
        for (label, h) in self.list_cmks(prefix)? {
            let attrs = match self.handle_call(|s| {
                s.get_attributes(
                    h.0,
                    &[
                        AttributeType::Class,
                        AttributeType::KeyType,
                        AttributeType::Local,
                        AttributeType::NeverExtractable,
                        AttributeType::AlwaysSensitive,
                        AttributeType::AllowedMechanisms,
                    ],
                )
            }) {
                Ok(a) => a,
                Err(e) if e.is_stale_handle() => continue,
                Err(e) => return Err(e),
            };
            let mut f = CustodyFacts {
                label,
                class: String::new(),
                key_type: String::new(),
                local: None,
                never_extractable: None,
                always_sensitive: None,
                allowed_mechanisms: None,
                attributes: self.cmk_custody(h)?,
            };
            for a in attrs {
                match a {
                    Attribute::Class(c) => f.class = c.to_string(),
                    Attribute::KeyType(t) => f.key_type = t.to_string(),
                    Attribute::Local(v) => f.local = Some(v),
                    Attribute::NeverExtractable(v) => f.never_extractable = Some(v),
                    Attribute::AlwaysSensitive(v) => f.always_sensitive = Some(v),
                    Attribute::AllowedMechanisms(m) if !m.is_empty() => {
                        f.allowed_mechanisms = Some(m.iter().map(|m| m.to_string()).collect())
                    }
                    _ => {}
                }
            }
            out.push(f);
        }
        Ok(out)
    }
}
