//! AES-GCM with derived keys: sealing host bytes (`C_Encrypt`), sealing a data key generated
//! in the token without it ever leaving (`C_GenerateKey` + `C_WrapKey`), and opening
//! (`C_Decrypt`). Always a caller IV of exactly 12 bytes and a 128-bit tag: the blob format
//! authenticates the IV p11kms chose.

use std::cell::RefCell;

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType};
use cryptoki::types::Ulong;
use zeroize::Zeroizing;

use super::caps::InTokenDataKeys;
use super::derived::{SessionKey, Transient};
use super::error::GcmFailure;
use super::templates::{KeyTemplate, Usages};
use super::{HsmError, Result, Token};

/// Bytes of an AES-GCM IV (96 bits, the size SP 800-38D recommends).
pub const GCM_IV_LEN: usize = 12;
/// Bytes of an AES-GCM tag (128 bits).
pub const GCM_TAG_LEN: usize = 16;
const GCM_TAG_BITS: usize = GCM_TAG_LEN * 8;

pub(super) fn gcm_params<'a>(
    iv: &'a mut [u8; GCM_IV_LEN],
    aad: &'a [u8],
) -> cryptoki::error::Result<GcmParams<'a>> {
    GcmParams::new(iv, aad, Ulong::new(GCM_TAG_BITS as _))
}

/// A data key generated in the token to be wrapped: a session object, sensitive (its value can
/// never be read), extractable only so that `C_WrapKey` may seal it, and no usage at all.
pub(super) fn data_key_template(kind: InTokenDataKeys, len: usize) -> Vec<Attribute> {
    let key_type = match kind {
        InTokenDataKeys::AnyLength => KeyType::GENERIC_SECRET,
        InTokenDataKeys::AesOnly => KeyType::AES,
    };
    KeyTemplate::secret(key_type, len)
        .extractable(true)
        .modifiable(false)
        .usages(Usages::NONE)
        .build()
}

pub(super) fn data_key_mechanism(kind: InTokenDataKeys) -> Mechanism<'static> {
    match kind {
        InTokenDataKeys::AnyLength => Mechanism::GenericSecretKeyGen,
        InTokenDataKeys::AesOnly => Mechanism::AesKeyGen,
    }
}

/// The blob header carries (and authenticates) the IV p11kms chose: output sealed under any
/// other IV, or not shaped ciphertext ‖ tag, must never become a blob. Tokens that substitute
/// their own IV (AWS CloudHSM, Luna in FIPS mode) are refused at open; this is the backstop.
fn check_sealed(
    chosen: &[u8; GCM_IV_LEN],
    used: &[u8; GCM_IV_LEN],
    sealed: Vec<u8>,
    len: usize,
) -> Result<Vec<u8>> {
    if used != chosen {
        return Err(HsmError::Misbehaved(
            "the token replaced the AES-GCM IV p11kms supplied; refusing the output".into(),
        ));
    }
    if sealed.len() != len + GCM_TAG_LEN {
        return Err(HsmError::Misbehaved(format!(
            "the token sealed {len} bytes into {} bytes, expected ciphertext ‖ tag ({})",
            sealed.len(),
            len + GCM_TAG_LEN
        )));
    }
    Ok(sealed)
}

impl Token {
    /// AES-GCM seal with a caller IV (exactly 12 bytes, from the token RNG) and a 128-bit tag.
    /// Returns ciphertext ‖ tag. Retried like any call: the same key, IV and plaintext give
    /// the same output, and a failed attempt's output never leaves the token.
    pub fn gcm_seal(
        &self,
        key: &SessionKey,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        let used = RefCell::new(*iv);
        let sealed = self.call(|s| {
            let mut u = used.borrow_mut();
            *u = *iv;
            let params = gcm_params(&mut u, aad)?;
            self.count(|c| &c.encrypt_calls);
            s.encrypt(&Mechanism::AesGcm(params), key.handle, plaintext)
        })?;
        check_sealed(iv, &used.into_inner(), sealed, plaintext.len())
    }

    /// Generates a data key of `len` bytes inside the token and seals it there: `C_GenerateKey`
    /// (session object, sensitive, extractable only for wrapping), `C_WrapKey` with AES-GCM
    /// under `key` with the caller's IV and AAD, then `C_DestroyObject`. Returns ciphertext ‖
    /// tag: the same bytes `C_Encrypt` would give (checked by the probe at open). The key bytes
    /// never enter this process.
    pub fn seal_new_data_key(
        &self,
        key: &SessionKey,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        len: usize,
    ) -> Result<Vec<u8>> {
        let kind = self
            .inner
            .caps
            .in_token_data_keys
            .filter(|k| k.covers(len))
            .ok_or_else(|| {
                HsmError::Unusable(format!(
                    "the token cannot generate and seal a {len}-byte data key itself"
                ))
            })?;
        // Retried like any call: a failed attempt's data key is destroyed with its session
        // object and its output never leaves the token, so the IV is never used twice for
        // two published ciphertexts.
        let used = RefCell::new(*iv);
        let sealed = self.call(|s| {
            let mut u = used.borrow_mut();
            *u = *iv;
            let params = gcm_params(&mut u, aad)?;
            self.count(|c| &c.generate_key_calls);
            let secret = Transient {
                handle: s.generate_key(&data_key_mechanism(kind), &data_key_template(kind, len))?,
                session: s,
            };
            self.count(|c| &c.wrap_calls);
            s.wrap_key(&Mechanism::AesGcm(params), key.handle, secret.handle)
        })?;
        check_sealed(iv, &used.into_inner(), sealed, len)
    }

    /// AES-GCM open. A failed authentication (wrong key, tag, AAD, or truncated input) is
    /// [`HsmError::AuthenticationFailed`]; a token that failed for another reason is its own
    /// error, never blamed on the ciphertext. Where the token uses one code for both
    /// (SoftHSM's `CKR_GENERAL_ERROR`), a health check on the same session and key decides.
    pub fn gcm_open(
        &self,
        key: &SessionKey,
        iv: &[u8; GCM_IV_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        if sealed.len() < GCM_TAG_LEN {
            return Err(HsmError::AuthenticationFailed);
        }
        let mut iv = *iv;
        let params = gcm_params(&mut iv, aad)?;
        let s = self.inner.pool.get()?;
        self.count(|c| &c.decrypt_calls);
        match s.decrypt(&Mechanism::AesGcm(params), key.handle, sealed) {
            Ok(pt) => Ok(Zeroizing::new(pt)),
            Err(e) => {
                let e = HsmError::from(e);
                let Some(call) = e.call() else {
                    return Err(e);
                };
                let auth = match call.gcm_open_failure(self.inner.quirks) {
                    GcmFailure::Authentication => true,
                    GcmFailure::Ambiguous => {
                        s.get_session_info().is_ok()
                            && s.get_attributes(key.handle, &[AttributeType::Class])
                                .is_ok()
                    }
                    GcmFailure::Token => false,
                };
                Err(if auth {
                    HsmError::AuthenticationFailed
                } else {
                    e
                })
            }
        }
    }
}
