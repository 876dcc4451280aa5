//! Keys derived inside the token from a CMK (epoch keys): the derivation mechanisms, and the
//! session objects they produce, which are destroyed in the token when their last user drops
//! them.

use std::num::NonZeroUsize;
use std::sync::Arc;

use cryptoki::mechanism::ekdf::AesCbcDeriveParams;
use cryptoki::mechanism::kbkdf::{
    Endianness, KbkdfCounterFormat, KbkdfDkmLengthFormat, KbkdfDkmLengthMethod, KbkdfParams,
    PrfDataParam, PrfDataParamType,
};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;

use super::caps::KDF_LABEL;
use super::templates::{KeyTemplate, Usages};
use super::{CmkHandle, Kdf, Result, Token, TokenInner};
use crate::sync;

/// A key derived inside the token (a session object, sensitive, never extractable). The token
/// object is destroyed when the last reference is dropped.
pub struct SessionKey {
    pub(super) token: Arc<TokenInner>,
    pub(super) handle: ObjectHandle,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKey({})", self.handle)
    }
}

impl Drop for SessionKey {
    /// Destroys the key with a session that is free right now, or queues it for the next
    /// drop (or [`Token::reap`]) that finds one: a drop on a request path never waits for the
    /// pool. (A session object would also vanish when its session closed; pool sessions live
    /// as long as the process.)
    fn drop(&mut self) {
        match self.token.pool.try_get() {
            Some(s) => {
                let _ = s.destroy_object(self.handle);
                // A few of the queued ones too, so the queue drains under steady load.
                let queued: Vec<ObjectHandle> = {
                    let mut g = sync::lock(&self.token.graveyard);
                    let n = g.len().min(16);
                    g.drain(..n).collect()
                };
                for h in queued {
                    let _ = s.destroy_object(h);
                }
            }
            None => sync::lock(&self.token.graveyard).push(self.handle),
        }
    }
}

/// Destroys a session object when dropped (also on early returns), with the session it was
/// made on.
pub(super) struct Transient<'a> {
    pub session: &'a Session,
    pub handle: ObjectHandle,
}

impl Drop for Transient<'_> {
    fn drop(&mut self) {
        let _ = self.session.destroy_object(self.handle);
    }
}

/// An epoch key: AES-256 session object, sensitive, never extractable. It wraps (and unwraps)
/// only where data keys are sealed in the token.
pub(super) fn epoch_template(wrap: bool) -> Vec<Attribute> {
    KeyTemplate::aes256()
        .usages(if wrap {
            Usages::ENCRYPT_DECRYPT_WRAP
        } else {
            Usages::ENCRYPT_DECRYPT
        })
        .build()
}

/// 32 bits: the width of the SP 800-108 counter and length fields of KDF id 2.
const BITS_32: NonZeroUsize = NonZeroUsize::MIN.saturating_add(31);

/// Calls `f` with the `C_DeriveKey` mechanism of `kdf` for `nonce` (its parameters borrow
/// locals of this frame). See [`Kdf`] for the exact derivations.
pub(super) fn with_kdf<T>(kdf: Kdf, nonce: &[u8; 32], f: impl FnOnce(&Mechanism) -> T) -> T {
    match kdf {
        Kdf::AesCbcEncryptData => {
            let params = AesCbcDeriveParams::new([0u8; 16], nonce);
            f(&Mechanism::AesCbcEncryptData(params))
        }
        Kdf::Sp800108CounterCmac => {
            let counter = KbkdfCounterFormat::new(Endianness::Big, BITS_32);
            let length = KbkdfDkmLengthFormat::new(
                KbkdfDkmLengthMethod::SumOfKeys,
                Endianness::Big,
                BITS_32,
            );
            let data = [
                PrfDataParam::new(PrfDataParamType::IterationVariable(Some(&counter))),
                PrfDataParam::new(PrfDataParamType::ByteArray(KDF_LABEL)),
                PrfDataParam::new(PrfDataParamType::ByteArray(&[0u8])),
                PrfDataParam::new(PrfDataParamType::ByteArray(nonce)),
                PrfDataParam::new(PrfDataParamType::DkmLength(&length)),
            ];
            let params = KbkdfParams::new(MechanismType::AES_CMAC, &data, None);
            f(&Mechanism::KbkdfCounter(params))
        }
    }
}

impl Token {
    /// Derives an AES-256 epoch key from `cmk` and a 32-byte nonce, inside the token. Same CMK +
    /// same nonce gives the same key, so a blob that carries the nonce can be opened by any
    /// process. The result is a session object: sensitive, never extractable, encrypt/decrypt,
    /// and wrap/unwrap when `wrap` (in-token sealing of data keys). A CMK whose derivation is
    /// switched off answers [`super::CallError::is_not_permitted`].
    pub fn derive_key(
        &self,
        cmk: CmkHandle,
        kdf: Kdf,
        nonce: &[u8; 32],
        wrap: bool,
    ) -> Result<SessionKey> {
        let template = epoch_template(wrap);
        self.count(|c| &c.derive_calls);
        let handle = self
            .handle_call(|s| with_kdf(kdf, nonce, |mech| s.derive_key(mech, cmk.0, &template)))?;
        Ok(SessionKey {
            token: Arc::clone(&self.inner),
            handle,
        })
    }
}
