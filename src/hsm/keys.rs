//! Secret keys in the token: CMKs (token objects, derive-only) and the session keys derived from
//! them (epoch keys), plus AES-GCM with those keys.

use std::sync::Arc;

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::ekdf::AesCbcDeriveParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::types::Ulong;
use zeroize::Zeroizing;

use super::{HsmError, Kdf, Token, TokenInner};
use crate::error::{KmsError, Result};

pub const GCM_IV_LEN: usize = 12;
pub const GCM_TAG_LEN: usize = 16;
const AES_256: u64 = 32;

/// A CMK backing key (a token object). Only a handle: the key itself never leaves the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmkHandle(ObjectHandle);

/// A key derived inside the token (a session object, sensitive, never extractable). The token
/// object is destroyed when the last reference is dropped.
pub struct SessionKey {
    token: Arc<TokenInner>,
    handle: ObjectHandle,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKey({})", self.handle)
    }
}

impl Drop for SessionKey {
    fn drop(&mut self) {
        // Best effort: a session object also disappears when its session closes.
        if let Ok(s) = self.token.pool.get() {
            let _ = s.destroy_object(self.handle);
        }
    }
}

fn cmk_template(label: &str, id: &[u8], kdf: Kdf, allowed: bool) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(Ulong::new(AES_256 as _)),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(true),
        Attribute::Derive(true),
        // Every other usage off, explicitly: SoftHSM defaults SIGN (and ENCRYPT...) to true,
        // and a CMK that can encrypt lets the host compute derived keys in plaintext.
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    if allowed {
        t.push(Attribute::AllowedMechanisms(vec![kdf.mechanism_type()]));
    }
    t
}

impl Token {
    /// Generates a new AES-256 CMK in the token: derive-only, sensitive, never extractable.
    pub fn generate_cmk(&self, label: &str, id: &[u8], kdf: Kdf) -> Result<CmkHandle> {
        let mech = Mechanism::AesKeyGen;
        match self.call(|s| s.generate_key(&mech, &cmk_template(label, id, kdf, true)))? {
            Ok(h) => Ok(CmkHandle(h)),
            // Tokens without CKA_ALLOWED_MECHANISMS still get a derive-only key.
            Err(e) if e.is_template_refused() => {
                Ok(CmkHandle(self.call(|s| {
                    s.generate_key(&mech, &cmk_template(label, id, kdf, false))
                })??))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Finds a CMK by its label (start-up and stale-handle recovery only, never per request).
    pub fn find_cmk(&self, label: &str) -> Result<Option<CmkHandle>> {
        let found = self.call(|s| {
            s.find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Token(true),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
        })??;
        Ok(found.first().copied().map(CmkHandle))
    }

    /// Labels and handles of every token secret key whose label starts with `prefix`.
    pub fn list_cmks(&self, prefix: &str) -> Result<Vec<(String, CmkHandle)>> {
        let handles = self.call(|s| {
            s.find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Token(true),
            ])
        })??;
        let mut out = Vec::new();
        for h in handles {
            let attrs = match self.call(|s| s.get_attributes(h, &[AttributeType::Label]))? {
                Ok(a) => a,
                Err(e) if e.is_stale_handle() => continue,
                Err(e) => return Err(e.into()),
            };
            for a in attrs {
                if let Attribute::Label(l) = a {
                    if let Ok(l) = String::from_utf8(l) {
                        if l.starts_with(prefix) {
                            out.push((l, CmkHandle(h)));
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Turns derivation from a CMK on or off at the token level, so a disabled key is
    /// unusable even to a process that still believes it is enabled.
    pub fn set_cmk_usable(&self, cmk: CmkHandle, usable: bool) -> Result<()> {
        Ok(self.call(|s| s.update_attributes(cmk.0, &[Attribute::Derive(usable)]))??)
    }

    /// Whether the CMK currently allows derivation.
    pub fn cmk_usable(&self, cmk: CmkHandle) -> Result<bool> {
        let attrs = self.call(|s| s.get_attributes(cmk.0, &[AttributeType::Derive]))??;
        Ok(attrs.iter().any(|a| matches!(a, Attribute::Derive(true))))
    }

    /// Destroys a CMK. Irreversible: every blob sealed under it becomes undecryptable.
    pub fn destroy_cmk(&self, cmk: CmkHandle) -> Result<()> {
        match self.call(|s| s.destroy_object(cmk.0))? {
            Ok(()) => Ok(()),
            Err(e) if e.is_stale_handle() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the attributes that prove custody of a CMK: (sensitive, extractable,
    /// always_sensitive, never_extractable), and whether `CKA_VALUE` can be read (it must not).
    pub fn cmk_custody(&self, cmk: CmkHandle) -> Result<CmkCustody> {
        let s = self.inner.pool.get()?;
        let attrs = s
            .get_attributes(
                cmk.0,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::Encrypt,
                    AttributeType::Sign,
                    AttributeType::Derive,
                ],
            )
            .map_err(HsmError::from)?;
        let mut c = CmkCustody::default();
        for a in attrs {
            match a {
                Attribute::Sensitive(v) => c.sensitive = v,
                Attribute::Extractable(v) => c.extractable = v,
                Attribute::AlwaysSensitive(v) => c.always_sensitive = v,
                Attribute::NeverExtractable(v) => c.never_extractable = v,
                Attribute::Encrypt(v) => c.encrypt = v,
                Attribute::Sign(v) => c.sign = v,
                Attribute::Derive(v) => c.derive = v,
                _ => {}
            }
        }
        c.value_readable = match s.get_attributes(cmk.0, &[AttributeType::Value]) {
            Ok(attrs) => attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
            Err(_) => false,
        };
        Ok(c)
    }

    /// Derives an AES-256 epoch key from `cmk` and a 32-byte nonce, inside the token. Same CMK +
    /// same nonce gives the same key, so a blob that carries the nonce can be opened by any
    /// process. The result is a session object: sensitive, never extractable, encrypt/decrypt.
    pub fn derive_key(&self, cmk: CmkHandle, kdf: Kdf, nonce: &[u8; 32]) -> Result<SessionKey> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(Ulong::new(AES_256 as _)),
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
        ];
        let handle = match kdf {
            Kdf::AesCbcEncryptData => {
                let params = AesCbcDeriveParams::new([0u8; 16], nonce);
                let mech = Mechanism::AesCbcEncryptData(params);
                self.call(|s| s.derive_key(&mech, cmk.0, &template))?
            }
        }
        .map_err(derive_error)?;
        Ok(SessionKey {
            token: Arc::clone(&self.inner),
            handle,
        })
    }

    /// AES-GCM seal with a caller IV (exactly 12 bytes, from the token RNG) and a 128-bit tag.
    /// Returns ciphertext ‖ tag.
    pub fn gcm_seal(
        &self,
        key: &SessionKey,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        let mut iv = *iv;
        let params = GcmParams::new(&mut iv, aad, Ulong::new((GCM_TAG_LEN * 8) as _))
            .map_err(|e| KmsError::Internal(format!("GCM parameters: {e}")))?;
        let s = self.inner.pool.get()?;
        s.encrypt(&Mechanism::AesGcm(params), key.handle, plaintext)
            .map_err(|e| HsmError::from(e).into())
    }

    /// AES-GCM open. Any authentication failure is `InvalidCiphertextException`.
    pub fn gcm_open(
        &self,
        key: &SessionKey,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        if sealed.len() < GCM_TAG_LEN {
            return Err(KmsError::invalid_ciphertext());
        }
        let mut iv = *iv;
        let params = GcmParams::new(&mut iv, aad, Ulong::new((GCM_TAG_LEN * 8) as _))
            .map_err(|e| KmsError::Internal(format!("GCM parameters: {e}")))?;
        let s = self.inner.pool.get()?;
        match s.decrypt(&Mechanism::AesGcm(params), key.handle, sealed) {
            Ok(pt) => Ok(Zeroizing::new(pt)),
            Err(e) => {
                let e = HsmError::from(e);
                if e.is_auth_failure() {
                    Err(KmsError::invalid_ciphertext())
                } else {
                    Err(e.into())
                }
            }
        }
    }
}

fn derive_error(e: HsmError) -> KmsError {
    if e.is_not_permitted() {
        KmsError::KeyUnavailable(
            "the token refused to derive from this key (it is disabled at the token level)".into(),
        )
    } else {
        e.into()
    }
}

/// The custody attributes of a CMK as the token reports them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CmkCustody {
    pub sensitive: bool,
    pub extractable: bool,
    pub always_sensitive: bool,
    pub never_extractable: bool,
    pub encrypt: bool,
    pub sign: bool,
    pub derive: bool,
    pub value_readable: bool,
}
