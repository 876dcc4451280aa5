//! Secret keys in the token: CMKs (token objects, derive-only) and the session keys derived from
//! them (epoch keys), plus AES-GCM with those keys.

use std::cell::RefCell;
use std::num::NonZeroUsize;
use std::sync::Arc;

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::ekdf::AesCbcDeriveParams;
use cryptoki::mechanism::kbkdf::{
    Endianness, KbkdfCounterFormat, KbkdfDkmLengthFormat, KbkdfDkmLengthMethod, KbkdfParams,
    PrfDataParam, PrfDataParamType,
};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::types::Ulong;
use zeroize::Zeroizing;

use cryptoki::session::Session;

use super::caps::{Capabilities, DeriveTemplateSupport, InTokenDataKeys, KDF_LABEL};
use super::error::GcmFailure;
use super::raw::RawModule;
use super::stats::Counters;
use super::{HsmError, Kdf, Token, TokenInner};
use crate::error::{KmsError, Result};
use crate::sync;

pub const GCM_IV_LEN: usize = 12;
pub const GCM_TAG_LEN: usize = 16;
const AES_256: u64 = 32;

/// A CMK backing key (a token object). Only a handle: the key itself never leaves the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmkHandle(pub(super) ObjectHandle);

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

/// What every key derived from a CMK must be: `CKA_DERIVE_TEMPLATE` of CMKs on tokens that
/// enforce it, so that nobody holding the PIN can derive a readable copy of an epoch key.
fn cmk_derive_template() -> [Attribute; 2] {
    [Attribute::Sensitive(true), Attribute::Extractable(false)]
}

/// An epoch key: AES-256 session object, sensitive, never extractable. It wraps (and unwraps)
/// only where data keys are sealed in the token.
fn epoch_template(wrap: bool) -> [Attribute; 14] {
    [
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
        Attribute::Wrap(wrap),
        Attribute::Unwrap(wrap),
        Attribute::Derive(false),
    ]
}

/// A data key generated in the token to be wrapped: a session object, sensitive (its value can
/// never be read), extractable only so that `C_WrapKey` may seal it, and no usage at all.
fn data_key_template(kind: InTokenDataKeys, len: usize) -> Vec<Attribute> {
    let key_type = match kind {
        InTokenDataKeys::AnyLength => KeyType::GENERIC_SECRET,
        InTokenDataKeys::AesOnly => KeyType::AES,
    };
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(key_type),
        Attribute::ValueLen(Ulong::new(len as _)),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Modifiable(false),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ]
}

fn data_key_mechanism(kind: InTokenDataKeys) -> Mechanism<'static> {
    match kind {
        InTokenDataKeys::AnyLength => Mechanism::GenericSecretKeyGen,
        InTokenDataKeys::AesOnly => Mechanism::AesKeyGen,
    }
}

/// 32 bits: the width of the SP 800-108 counter and length fields of KDF id 2.
const BITS_32: NonZeroUsize = NonZeroUsize::MIN.saturating_add(31);

/// Calls `f` with the `C_DeriveKey` mechanism of `kdf` for `nonce` (its parameters borrow
/// locals of this frame). See [`Kdf`] for the exact derivations.
fn with_kdf<T>(kdf: Kdf, nonce: &[u8; 32], f: impl FnOnce(&Mechanism) -> T) -> T {
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

fn gcm_params<'a>(iv: &'a mut [u8; GCM_IV_LEN], aad: &'a [u8]) -> Result<GcmParams<'a>> {
    GcmParams::new(iv, aad, Ulong::new((GCM_TAG_LEN * 8) as _))
        .map_err(|e| KmsError::Internal(format!("GCM parameters: {e}")))
}

/// Destroys a session object when dropped (also on early returns).
struct Transient<'a> {
    session: &'a Session,
    handle: ObjectHandle,
}

impl Drop for Transient<'_> {
    fn drop(&mut self) {
        let _ = self.session.destroy_object(self.handle);
    }
}

/// What a token did when asked to derive a non-sensitive, extractable key from a CMK.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExposedDerivation {
    /// The token refused (the answer it gave).
    Refused(String),
    /// The token derived a key but made it sensitive and non-extractable anyway.
    CameOutSensitive,
    /// The token derived a non-sensitive key; `value_read` says whether its value was readable.
    Exposed { value_read: bool },
}

impl Token {
    fn count(&self, counter: impl Fn(&Counters) -> &std::sync::atomic::AtomicU64) {
        Counters::add(counter(&self.inner.stats), 1);
    }

    /// Generates a new AES-256 CMK in the token: derive-only, sensitive, never extractable,
    /// and with `CKA_DERIVE_TEMPLATE` (sensitive, non-extractable) where the token enforces it.
    /// A transiently failed attempt is followed by a look for the key it may have made
    /// (label and `CKA_ID`) before another attempt: one CreateKey never leaves two objects
    /// under one label, which [`Token::find_cmk`] would refuse as ambiguous.
    pub fn generate_cmk(&self, label: &str, id: &[u8], kdf: Kdf) -> Result<CmkHandle> {
        let mech = Mechanism::AesKeyGen;
        let raw = self
            .inner
            .raw
            .as_ref()
            .filter(|_| self.inner.caps.derive_template.enforced);
        // Most protective first; only a refused template moves on to the next.
        let mut last = None;
        for allowed in [true, false] {
            let template = cmk_template(label, id, kdf, allowed);
            let find = || match self.find_cmk(label, id)? {
                CmkLookup::Found(h) => Ok(Some(h.0)),
                CmkLookup::Missing => Ok(None),
                CmkLookup::Refused(why) => Err(KmsError::KeyUnavailable(why)),
            };
            let result = match raw {
                Some(raw) => self.create(
                    |s| {
                        self.count(|c| &c.generate_key_calls);
                        raw.generate_key_with_derive_template(
                            s,
                            cryptoki_sys::CKM_AES_KEY_GEN,
                            &template,
                            &cmk_derive_template(),
                        )
                    },
                    find,
                )?,
                None => self.create(
                    |s| {
                        self.count(|c| &c.generate_key_calls);
                        s.generate_key(&mech, &template)
                    },
                    find,
                )?,
            };
            match result {
                Ok(h) => return Ok(CmkHandle(h)),
                // Tokens without CKA_ALLOWED_MECHANISMS still get a derive-only key.
                Err(e) if e.is_template_refused() => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last
            .map(KmsError::from)
            .unwrap_or_else(|| KmsError::Internal("no CMK template tried".into())))
    }

    /// Finds the CMK labelled `label` and checks that it is the one p11kms generated in this
    /// token ([`CmkLookup::judge`]). Start-up, re-listing and stale-handle recovery only,
    /// never per request.
    pub fn find_cmk(&self, label: &str, expected_id: &[u8]) -> Result<CmkLookup> {
        let mut found = Vec::new();
        for h in self.find_cmks(label)? {
            match self.handle_call(|s| s.get_attributes(h.0, &CmkAttributes::TYPES))? {
                Ok(a) => found.push((h, CmkAttributes::from_attributes(a))),
                Err(e) if e.is_stale_handle() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(CmkLookup::judge(label, &found, expected_id))
    }

    /// Every token secret key labelled exactly `label`, unchecked (for destroying them all).
    pub fn find_cmks(&self, label: &str) -> Result<Vec<CmkHandle>> {
        let found = self.call(|s| {
            s.find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Token(true),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
        })??;
        Ok(found.into_iter().map(CmkHandle).collect())
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
            let attrs = match self.handle_call(|s| s.get_attributes(h, &[AttributeType::Label]))? {
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
        Ok(self.handle_call(|s| s.update_attributes(cmk.0, &[Attribute::Derive(usable)]))??)
    }

    /// Whether the CMK currently allows derivation.
    pub fn cmk_usable(&self, cmk: CmkHandle) -> Result<bool> {
        let attrs = self.handle_call(|s| s.get_attributes(cmk.0, &[AttributeType::Derive]))??;
        Ok(attrs.iter().any(|a| matches!(a, Attribute::Derive(true))))
    }

    /// Destroys a CMK. Irreversible: every blob sealed under it becomes undecryptable.
    pub fn destroy_cmk(&self, cmk: CmkHandle) -> Result<()> {
        match self.handle_call(|s| s.destroy_object(cmk.0))? {
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
    /// process. The result is a session object: sensitive, never extractable, encrypt/decrypt,
    /// and wrap/unwrap when `wrap` (in-token sealing of data keys).
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
            .handle_call(|s| with_kdf(kdf, nonce, |mech| s.derive_key(mech, cmk.0, &template)))?
            .map_err(derive_error)?;
        Ok(SessionKey {
            token: Arc::clone(&self.inner),
            handle,
        })
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
                KmsError::Internal(format!(
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
            let params = GcmParams::new(&mut *u, aad, Ulong::new((GCM_TAG_LEN * 8) as _))?;
            self.count(|c| &c.generate_key_calls);
            let secret = Transient {
                handle: s.generate_key(&data_key_mechanism(kind), &data_key_template(kind, len))?,
                session: s,
            };
            self.count(|c| &c.wrap_calls);
            s.wrap_key(&Mechanism::AesGcm(params), key.handle, secret.handle)
        })??;
        check_sealed(iv, &used.into_inner(), sealed, len)
    }

    /// Asks the token for a *non-sensitive, extractable* key derived from `cmk` (what someone
    /// holding the PIN could try in order to read an epoch key), reports what it did, and
    /// destroys anything it derived. For custody tests and audits, never used by operations.
    pub fn try_exposed_derivation(&self, cmk: CmkHandle, kdf: Kdf) -> Result<ExposedDerivation> {
        let s = self.inner.pool.get()?;
        self.count(|c| &c.derive_calls);
        Ok(exposed_derivation(&s, cmk.0, kdf, &[0x5a; 32]))
    }

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
            let params = GcmParams::new(&mut *u, aad, Ulong::new((GCM_TAG_LEN * 8) as _))?;
            self.count(|c| &c.encrypt_calls);
            s.encrypt(&Mechanism::AesGcm(params), key.handle, plaintext)
        })??;
        check_sealed(iv, &used.into_inner(), sealed, plaintext.len())
    }

    /// AES-GCM open. A failed authentication (wrong key, tag, AAD, or truncated input) is
    /// `InvalidCiphertextException`; a token that failed for another reason is a server-side
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
            return Err(KmsError::invalid_ciphertext());
        }
        let mut iv = *iv;
        let params = gcm_params(&mut iv, aad)?;
        let s = self.inner.pool.get()?;
        self.count(|c| &c.decrypt_calls);
        match s.decrypt(&Mechanism::AesGcm(params), key.handle, sealed) {
            Ok(pt) => Ok(Zeroizing::new(pt)),
            Err(e) => {
                let e = HsmError::from(e);
                let auth = match e.gcm_open_failure(self.inner.quirks) {
                    GcmFailure::Authentication => true,
                    GcmFailure::Ambiguous => {
                        s.get_session_info().is_ok()
                            && s.get_attributes(key.handle, &[AttributeType::Class])
                                .is_ok()
                    }
                    GcmFailure::Token => false,
                };
                if auth {
                    Err(KmsError::invalid_ciphertext())
                } else {
                    Err(e.into())
                }
            }
        }
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
        return Err(KmsError::Internal(
            "the token replaced the AES-GCM IV p11kms supplied; refusing the output".into(),
        ));
    }
    if sealed.len() != len + GCM_TAG_LEN {
        return Err(KmsError::Internal(format!(
            "the token sealed {len} bytes into {} bytes, expected ciphertext ‖ tag ({})",
            sealed.len(),
            len + GCM_TAG_LEN
        )));
    }
    Ok(sealed)
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

/// What a label lookup of a CMK found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmkLookup {
    /// Exactly one object, proven to be a CMK p11kms generated in this token.
    Found(CmkHandle),
    /// No object under the label.
    Missing,
    /// An object (or several) under the label that must not be used; why, for the log and
    /// the caller.
    Refused(String),
}

impl CmkLookup {
    /// Judges what the token holds under a CMK's label: exactly one object, whose attributes
    /// prove it genuine ([`CmkAttributes::verify`]). Two objects under one label are refused
    /// (one of them was planted, and guessing which is not p11kms's job). Refusals are
    /// logged, loudly: they mean someone holding the PIN changed the token.
    pub fn judge(label: &str, found: &[(CmkHandle, CmkAttributes)], expected_id: &[u8]) -> Self {
        let why = match found {
            [] => return CmkLookup::Missing,
            [(h, attrs)] => match attrs.verify(expected_id) {
                Ok(()) => return CmkLookup::Found(*h),
                Err(why) => format!("the token object labelled {label} is refused: {why}"),
            },
            more => format!(
                "{} secret keys in the token are labelled {label}: refusing to use any of them \
                 (someone holding the token PIN created the extra ones)",
                more.len()
            ),
        };
        tracing::error!(target: "p11kms::custody", label, "{why}");
        CmkLookup::Refused(why)
    }
}

/// The attributes of a secret key that prove it is a CMK as p11kms makes them: generated in
/// this token (`CKA_LOCAL`), always sensitive and never extractable (so nobody ever held its
/// value), AES-256, derive-only, with the `CKA_ID` p11kms wrote. A key created from a known
/// value with `C_CreateObject` or `C_UnwrapKey` has `CKA_LOCAL` false and is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmkAttributes {
    key_type: Option<KeyType>,
    value_len: Option<u64>,
    id: Option<Vec<u8>>,
    local: Option<bool>,
    never_extractable: Option<bool>,
    always_sensitive: Option<bool>,
    sensitive: Option<bool>,
    extractable: Option<bool>,
    /// Usages other than derivation that are switched on.
    other_usages: Vec<&'static str>,
}

impl CmkAttributes {
    /// Everything [`CmkAttributes::verify`] looks at, read in one `C_GetAttributeValue`.
    pub(crate) const TYPES: [AttributeType; 14] = [
        AttributeType::KeyType,
        AttributeType::ValueLen,
        AttributeType::Id,
        AttributeType::Local,
        AttributeType::NeverExtractable,
        AttributeType::AlwaysSensitive,
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::Encrypt,
        AttributeType::Decrypt,
        AttributeType::Sign,
        AttributeType::Verify,
        AttributeType::Wrap,
        AttributeType::Unwrap,
    ];

    pub(crate) fn from_attributes(attrs: Vec<Attribute>) -> CmkAttributes {
        let mut c = CmkAttributes::default();
        for a in attrs {
            match a {
                Attribute::KeyType(t) => c.key_type = Some(t),
                Attribute::ValueLen(n) => c.value_len = Some(u64::from(n)),
                Attribute::Id(id) => c.id = Some(id),
                Attribute::Local(v) => c.local = Some(v),
                Attribute::NeverExtractable(v) => c.never_extractable = Some(v),
                Attribute::AlwaysSensitive(v) => c.always_sensitive = Some(v),
                Attribute::Sensitive(v) => c.sensitive = Some(v),
                Attribute::Extractable(v) => c.extractable = Some(v),
                Attribute::Encrypt(true) => c.other_usages.push("CKA_ENCRYPT"),
                Attribute::Decrypt(true) => c.other_usages.push("CKA_DECRYPT"),
                Attribute::Sign(true) => c.other_usages.push("CKA_SIGN"),
                Attribute::Verify(true) => c.other_usages.push("CKA_VERIFY"),
                Attribute::Wrap(true) => c.other_usages.push("CKA_WRAP"),
                Attribute::Unwrap(true) => c.other_usages.push("CKA_UNWRAP"),
                _ => {}
            }
        }
        c
    }

    /// `Ok` if these attributes prove a CMK p11kms generated with `CKA_ID = expected_id`;
    /// otherwise every reason it is refused. An attribute the token does not report counts
    /// as not proven.
    pub fn verify(&self, expected_id: &[u8]) -> std::result::Result<(), String> {
        let mut why = Vec::new();
        if self.key_type != Some(KeyType::AES) {
            why.push("it is not an AES key".to_string());
        }
        if self.value_len != Some(AES_256) {
            why.push("it is not 32 bytes long".to_string());
        }
        if self.id.as_deref() != Some(expected_id) {
            why.push("its CKA_ID is not the one p11kms wrote".to_string());
        }
        for (name, value, want) in [
            ("CKA_LOCAL", self.local, true),
            ("CKA_NEVER_EXTRACTABLE", self.never_extractable, true),
            ("CKA_ALWAYS_SENSITIVE", self.always_sensitive, true),
            ("CKA_SENSITIVE", self.sensitive, true),
            ("CKA_EXTRACTABLE", self.extractable, false),
        ] {
            match value {
                Some(v) if v == want => {}
                Some(v) => why.push(format!("{name} is {v}")),
                None => why.push(format!("the token does not report {name}")),
            }
        }
        if !self.other_usages.is_empty() {
            why.push(format!(
                "it allows {} besides derivation",
                self.other_usages.join(", ")
            ));
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }
}

/// Derives from `base` with a template asking for a readable key; see [`ExposedDerivation`].
fn exposed_derivation(
    s: &Session,
    base: ObjectHandle,
    kdf: Kdf,
    nonce: &[u8; 32],
) -> ExposedDerivation {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(Ulong::new(AES_256 as _)),
        Attribute::Token(false),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::Encrypt(true),
    ];
    let derived = with_kdf(kdf, nonce, |mech| s.derive_key(mech, base, &template));
    let key = match derived {
        Ok(h) => Transient {
            session: s,
            handle: h,
        },
        Err(e) => return ExposedDerivation::Refused(HsmError::from(e).code()),
    };
    let sensitive = s
        .get_attributes(key.handle, &[AttributeType::Sensitive])
        .map(|a| a.contains(&Attribute::Sensitive(true)))
        .unwrap_or(true);
    if sensitive {
        return ExposedDerivation::CameOutSensitive;
    }
    // The value is read only to report that it could be, and wiped at once.
    let value_read = match s.get_attributes(key.handle, &[AttributeType::Value]) {
        Ok(attrs) => attrs.into_iter().any(|a| match a {
            Attribute::Value(v) => {
                let v = Zeroizing::new(v);
                !v.is_empty()
            }
            _ => false,
        }),
        Err(_) => false,
    };
    ExposedDerivation::Exposed { value_read }
}

/// A throwaway AES-256 session key for the probes: sensitive, never extractable.
fn probe_key(s: &Session, usages: &[Attribute]) -> std::result::Result<ObjectHandle, HsmError> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(Ulong::new(AES_256 as _)),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
    ];
    t.extend_from_slice(usages);
    s.generate_key(&Mechanism::AesKeyGen, &t)
        .map_err(HsmError::from)
}

/// Can this token generate a data key of `len` bytes of `kind` and wrap it with AES-GCM under
/// a caller IV and AAD into exactly ciphertext ‖ tag (so that `C_Decrypt` opens it)? On a
/// throwaway key; the decrypted bytes are a throwaway secret and are wiped.
fn wraps_like_encrypt(
    s: &Session,
    wrapping: ObjectHandle,
    kind: InTokenDataKeys,
    len: usize,
) -> std::result::Result<(), String> {
    let secret = s
        .generate_key(&data_key_mechanism(kind), &data_key_template(kind, len))
        .map_err(|e| format!("C_GenerateKey of a {len}-byte key: {}", HsmError::from(e)))?;
    let secret = Transient {
        session: s,
        handle: secret,
    };
    let aad = b"p11kms capability probe";
    let mut iv = [0x42u8; GCM_IV_LEN];
    let params = gcm_params(&mut iv, aad).map_err(|e| e.to_string())?;
    let wrapped = s
        .wrap_key(&Mechanism::AesGcm(params), wrapping, secret.handle)
        .map_err(|e| format!("C_WrapKey(CKM_AES_GCM): {}", HsmError::from(e)))?;
    if iv != [0x42u8; GCM_IV_LEN] {
        return Err("C_WrapKey(CKM_AES_GCM) replaced the caller's IV".into());
    }
    if wrapped.len() != len + GCM_TAG_LEN {
        return Err(format!(
            "C_WrapKey(CKM_AES_GCM) gave {} bytes for a {len}-byte key, not ciphertext ‖ tag",
            wrapped.len()
        ));
    }
    let mut iv = [0x42u8; GCM_IV_LEN];
    let params = gcm_params(&mut iv, aad).map_err(|e| e.to_string())?;
    let opened = s
        .decrypt(&Mechanism::AesGcm(params), wrapping, &wrapped)
        .map(Zeroizing::new)
        .map_err(|e| {
            format!(
                "C_Decrypt does not open what C_WrapKey(CKM_AES_GCM) sealed: {}",
                HsmError::from(e)
            )
        })?;
    if opened.len() != len {
        return Err("C_WrapKey(CKM_AES_GCM) output does not open to the key".into());
    }
    Ok(())
}

/// Fills `caps.in_token_data_keys`: the mechanism flags say whether `C_WrapKey` with AES-GCM
/// exists; only trying it says whether it takes our IV and AAD and gives the blob format.
pub(crate) fn probe_in_token_sealing(s: &Session, caps: &mut Capabilities) {
    if !caps.gcm_wrap() {
        caps.in_token_sealing_missing = Some(if caps.aes_gcm.present {
            "CKM_AES_GCM is offered for encrypt/decrypt only, without CKF_WRAP/CKF_UNWRAP, so \
             C_WrapKey cannot seal a data key in the token"
                .into()
        } else {
            "the token has no CKM_AES_GCM".into()
        });
        return;
    }
    let wrapping = match probe_key(
        s,
        &[
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ],
    ) {
        Ok(h) => Transient {
            session: s,
            handle: h,
        },
        Err(e) => {
            caps.in_token_sealing_missing = Some(format!("cannot make a wrapping key: {e}"));
            return;
        }
    };
    let mut why = Vec::new();
    let kinds: &[(InTokenDataKeys, &[usize])] = &[
        (InTokenDataKeys::AnyLength, &[1, 32, 1024]),
        (InTokenDataKeys::AesOnly, &[16, 32]),
    ];
    for (kind, lengths) in kinds {
        if *kind == InTokenDataKeys::AnyLength && !caps.generic_secret_key_gen.generate {
            why.push("no CKM_GENERIC_SECRET_KEY_GEN".to_string());
            continue;
        }
        match lengths
            .iter()
            .try_for_each(|len| wraps_like_encrypt(s, wrapping.handle, *kind, *len))
        {
            Ok(()) => {
                caps.in_token_data_keys = Some(*kind);
                caps.in_token_sealing_missing = None;
                return;
            }
            Err(e) => why.push(e),
        }
    }
    caps.in_token_sealing_missing = Some(why.join("; "));
}

/// Fills `caps.derive_template` (see [`DeriveTemplateSupport`]), on throwaway session keys.
pub(crate) fn probe_derive_template(s: &Session, raw: Option<&RawModule>, caps: &mut Capabilities) {
    let Some(kdf) = caps.kdf else {
        return;
    };
    let derive_only = [
        Attribute::Derive(true),
        Attribute::Encrypt(false),
        Attribute::Sign(false),
        Attribute::Modifiable(true),
    ];
    let mut support = DeriveTemplateSupport::default();
    if let Ok(h) = probe_key(s, &derive_only) {
        let base = Transient {
            session: s,
            handle: h,
        };
        support.exposed_derivation_without_it = matches!(
            exposed_derivation(s, base.handle, kdf, &[1; 32]),
            ExposedDerivation::Exposed { .. }
        );
    }
    let Some(raw) = raw else {
        caps.derive_template = support;
        return;
    };
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(Ulong::new(AES_256 as _)),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
    ];
    template.extend_from_slice(&derive_only);
    if let Ok(h) = raw.generate_key_with_derive_template(
        s,
        cryptoki_sys::CKM_AES_KEY_GEN,
        &template,
        &cmk_derive_template(),
    ) {
        let base = Transient {
            session: s,
            handle: h,
        };
        support.accepted = true;
        support.enforced = !matches!(
            exposed_derivation(s, base.handle, kdf, &[2; 32]),
            ExposedDerivation::Exposed { .. }
        );
        if support.enforced {
            support.rewritable = raw.set_derive_template(s, base.handle, &[]).is_ok()
                && matches!(
                    exposed_derivation(s, base.handle, kdf, &[3; 32]),
                    ExposedDerivation::Exposed { .. }
                );
        }
    }
    caps.derive_template = support;
}

/// Checks that `C_Encrypt(CKM_AES_GCM)` takes the caller's 12-byte IV and gives ciphertext ‖
/// tag (`caps.gcm_caller_iv`), and fills `caps.host_seal_micros`: the host path's exposure
/// window, timed as it happens there (bytes from `C_GenerateRandom`, sealed by `C_Encrypt`
/// under a session key, wiped).
pub(crate) fn probe_gcm_encrypt(s: &Session, caps: &mut Capabilities) {
    let Ok(h) = probe_key(s, &[Attribute::Encrypt(true)]) else {
        return;
    };
    let key = Transient {
        session: s,
        handle: h,
    };
    let mut times = Vec::with_capacity(7);
    for _ in 0..7 {
        let mut bytes = Zeroizing::new([0u8; 32 + GCM_IV_LEN]);
        if s.generate_random_slice(bytes.as_mut()).is_err() {
            return;
        }
        let start = std::time::Instant::now();
        let mut iv = [0u8; GCM_IV_LEN];
        iv.copy_from_slice(&bytes[32..]);
        let Ok(params) = gcm_params(&mut iv, b"p11kms timing probe") else {
            return;
        };
        // A failing call says nothing about IVs (and `require` already demands GCM encrypt).
        let Ok(sealed) = s.encrypt(&Mechanism::AesGcm(params), key.handle, &bytes[..32]) else {
            return;
        };
        if iv[..] != bytes[32..] || sealed.len() != 32 + GCM_TAG_LEN {
            caps.gcm_caller_iv = false;
            return;
        }
        drop(bytes);
        times.push(start.elapsed().as_micros() as u64);
    }
    times.sort_unstable();
    caps.host_seal_micros = times.get(times.len() / 2).map(|t| (*t).max(1));
}

/// Keeps in `caps.kdfs` the derive mechanisms that really derive an epoch key from a
/// derive-only AES-256 key (with `CKA_ALLOWED_MECHANISMS` pinned to the mechanism where the
/// token takes it, as CMKs have), and picks `caps.kdf`: SP 800-108 (a NIST-approved KDF)
/// before `CKM_AES_CBC_ENCRYPT_DATA`.
pub(crate) fn probe_kdfs(s: &Session, caps: &mut Capabilities) {
    let works = |kdf: Kdf| {
        let usages = [
            Attribute::Derive(true),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
        ];
        let mut pinned = usages.to_vec();
        pinned.push(Attribute::AllowedMechanisms(vec![kdf.mechanism_type()]));
        let Ok(h) = probe_key(s, &pinned).or_else(|_| probe_key(s, &usages)) else {
            return false;
        };
        let base = Transient {
            session: s,
            handle: h,
        };
        let derived = with_kdf(kdf, &[7; 32], |mech| {
            s.derive_key(mech, base.handle, &epoch_template(false))
        });
        match derived {
            Ok(k) => {
                let _ = s.destroy_object(k);
                true
            }
            Err(_) => false,
        }
    };
    caps.kdfs.retain(|k| works(*k));
    caps.kdf = [Kdf::Sp800108CounterCmac, Kdf::AesCbcEncryptData]
        .into_iter()
        .find(|k| caps.kdfs.contains(k));
}
