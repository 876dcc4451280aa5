//! Key import (bring your own key): RSA wrapping key pairs generated in the token, and key
//! material unwrapped with them straight into an AES-256 derive-only token key, so the
//! material never exists in this process. Also: which RFC 5649 mechanism the token really
//! has (a known-answer probe at open), and a check value that tells two imported keys apart
//! without extracting either.
//!
//! Two ways the material arrives (the caller names them; `kms` maps AWS's wrapping algorithms
//! onto these):
//! - [`KeyWrapScheme::RsaOaep`]: RSAES-OAEP of the material itself, `C_UnwrapKey
//!   (CKM_RSA_PKCS_OAEP)` into the key.
//! - [`KeyWrapScheme::RsaAesKeyWrap`]: RSAES-OAEP of an ephemeral AES key, followed by the
//!   material wrapped under that key with AES key wrap with padding (RFC 5649): the layout of
//!   PKCS#11's `CKM_RSA_AES_KEY_WRAP`. The ephemeral key is unwrapped into the token as a
//!   session object, unwraps the material into the key, and is destroyed.

use std::sync::atomic::Ordering;

use cryptoki::mechanism::rsa::{PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::{CKM_AES_KEY_WRAP_KWP, CKM_AES_KEY_WRAP_PAD, CK_MECHANISM, CK_MECHANISM_TYPE};
use serde::Serialize;
use zeroize::Zeroizing;

use super::cmk::{BackingKind, CmkAttributes, PairKind};
use super::derived::Transient;
use super::error::CallError;
use super::keypair::{hash_mechanism, public_domain, read_public, wipe};
use super::pool::expecting_slow;
use super::raw::RawModule;
use super::templates::{derived_keys_stay_secret, KeyTemplate, Usages};
use super::{CmkHandle, HsmError, Kdf, Result, SessionKey, Token};
use crate::der::Hash;

/// How imported key material is wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyWrapScheme {
    /// RSAES-OAEP (MGF1 with the same hash, empty label) of the key material.
    RsaOaep(Hash),
    /// RSAES-OAEP of an ephemeral AES key (as above), then the key material wrapped under it
    /// with AES key wrap with padding (RFC 5649).
    RsaAesKeyWrap(Hash),
}

impl KeyWrapScheme {
    fn hash(self) -> Hash {
        match self {
            KeyWrapScheme::RsaOaep(h) | KeyWrapScheme::RsaAesKeyWrap(h) => h,
        }
    }
}

/// The token's mechanism for AES key wrap with padding as RFC 5649 defines it, as the probe
/// at open proved it with the RFC's own test vector. (PKCS#11 3.0 names it
/// `CKM_AES_KEY_WRAP_KWP`; 2.40's `CKM_AES_KEY_WRAP_PAD` is RFC 3394 with PKCS#7 padding on
/// paper, but SoftHSM implements it as RFC 5649: hence a known-answer test, not a name.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rfc5649 {
    /// Its PKCS#11 name.
    pub name: &'static str,
    /// Its mechanism type.
    #[serde(skip)]
    pub(crate) mechanism: CK_MECHANISM_TYPE,
}

/// The RFC 5649 candidates, most specific first.
const RFC5649_CANDIDATES: [(CK_MECHANISM_TYPE, &str); 2] = [
    (CKM_AES_KEY_WRAP_KWP, "CKM_AES_KEY_WRAP_KWP"),
    (CKM_AES_KEY_WRAP_PAD, "CKM_AES_KEY_WRAP_PAD"),
];

/// RFC 5649, section 6, first test vector: a 192-bit KEK, 20 bytes of key, their wrapping.
const KAT_KEK: [u8; 24] = [
    0x58, 0x40, 0xdf, 0x6e, 0x29, 0xb0, 0x2a, 0xf1, 0xab, 0x49, 0x3b, 0x70, 0x5b, 0xf1, 0x6e, 0xa1,
    0xae, 0x83, 0x38, 0xf4, 0xdc, 0xc1, 0x76, 0xa8,
];
const KAT_KEY: [u8; 20] = [
    0xc3, 0x7b, 0x7e, 0x64, 0x92, 0x58, 0x43, 0x40, 0xbe, 0xd1, 0x22, 0x07, 0x80, 0x89, 0x41, 0x15,
    0x50, 0x68, 0xf7, 0x38,
];
const KAT_WRAPPED: [u8; 32] = [
    0x13, 0x8b, 0xde, 0xaa, 0x9b, 0x8f, 0xa7, 0xfc, 0x61, 0xf9, 0x77, 0x42, 0xe7, 0x22, 0x48, 0xee,
    0x5a, 0xe6, 0xae, 0x53, 0x60, 0xd1, 0xae, 0x6a, 0x5f, 0x54, 0xf3, 0x73, 0xfa, 0x54, 0x3b, 0x6a,
];

/// The fixed derivation nonce of an imported key's check value (never a blob's: those are
/// random), and what is sealed under the key derived with it.
const CHECK_NONCE: [u8; 32] = *b"p11kms imported key check v1\0\0\0\0";
const CHECK_AAD: &[u8] = b"p11kms imported key check value";

/// An RSA private key that unwraps imported key material: a token object, sensitive, never
/// extractable, `CKA_UNWRAP` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrappingKey(ObjectHandle);

/// Whether the token can do something, or what it lacks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered<T> {
    /// Done: the result.
    Yes(T),
    /// The token cannot: what it lacks, by mechanism name.
    Lacks(String),
}

/// What unwrapping key material into a KMS key's backing key made.
#[derive(Debug)]
pub enum Imported {
    /// The key, in the token, and its check value.
    Key {
        /// The new backing key (a token object).
        cmk: CmkHandle,
        /// Its check value ([`Token::check_value`]).
        check: Vec<u8>,
    },
    /// The material unwrapped, but is not a 256-bit AES key (its length in bytes); nothing
    /// was kept.
    NotAes256(u64),
}

/// The bit of `hash` in `TokenInner::import_oaep_refused`.
fn oaep_bit(hash: Hash) -> u8 {
    match hash {
        Hash::Sha1 => 1,
        Hash::Sha224 => 2,
        Hash::Sha256 => 4,
        Hash::Sha384 => 8,
        Hash::Sha512 => 16,
    }
}

fn hash_name(hash: Hash) -> &'static str {
    match hash {
        Hash::Sha1 => "SHA-1",
        Hash::Sha224 => "SHA-224",
        Hash::Sha256 => "SHA-256",
        Hash::Sha384 => "SHA-384",
        Hash::Sha512 => "SHA-512",
    }
}

fn oaep(hash: Hash) -> Mechanism<'static> {
    let (hash_alg, mgf) = hash_mechanism(hash);
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash_alg, mgf, PkcsOaepSource::empty()))
}

fn bare(mechanism: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    }
}

/// The wrapping pair's public half: a session object that only encrypts (the self-test).
fn wrapping_public_template(bits: usize) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(false),
        Attribute::Private(false),
        Attribute::Encrypt(true),
        Attribute::Verify(false),
        Attribute::Wrap(false),
        Attribute::Derive(false),
    ];
    t.extend(public_domain(PairKind::Rsa { bits }));
    t
}

/// The wrapping pair's private half: a token object, sensitive, never extractable, not
/// modifiable, unwrap only (and only with OAEP where the token takes `CKA_ALLOWED_MECHANISMS`).
fn wrapping_private_template(label: &str, id: &[u8], pinned: bool) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(false),
        Attribute::Unwrap(true),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::SignRecover(false),
        Attribute::Derive(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    if pinned {
        t.push(Attribute::AllowedMechanisms(vec![
            MechanismType::RSA_PKCS_OAEP,
        ]));
    }
    t
}

/// The ephemeral AES key of [`KeyWrapScheme::RsaAesKeyWrap`]: a session object that can only
/// unwrap.
fn ephemeral_template() -> Vec<Attribute> {
    KeyTemplate::aes256()
        .usages(Usages {
            unwrap: true,
            ..Usages::NONE
        })
        .unwrapped()
        .build()
}

/// Reads a key's `CKA_VALUE_LEN`.
fn value_len(s: &Session, h: ObjectHandle) -> cryptoki::error::Result<Option<u64>> {
    Ok(s.get_attributes(h, &[AttributeType::ValueLen])?
        .into_iter()
        .find_map(|a| match a {
            Attribute::ValueLen(n) => Some(u64::from(n)),
            _ => None,
        }))
}

/// Fills `caps.rfc5649`: the first candidate mechanism that unwraps RFC 5649's test vector
/// into its key (tried on session objects; the key read back is the RFC's, and wiped).
pub(crate) fn probe_rfc5649(s: &Session, raw: Option<&RawModule>, caps: &mut super::Capabilities) {
    let Some(raw) = raw else { return };
    let kek = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Unwrap(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(false),
        Attribute::Value(KAT_KEK.to_vec()),
    ];
    let Ok(kek) = s.create_object(&kek) else {
        return;
    };
    let kek = Transient {
        session: s,
        handle: kek,
    };
    let out = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ];
    for (mechanism, name) in RFC5649_CANDIDATES {
        let Ok(h) = raw.unwrap_key(
            s,
            &mut bare(mechanism),
            kek.handle,
            &KAT_WRAPPED,
            &out,
            None,
        ) else {
            continue;
        };
        let key = Transient {
            session: s,
            handle: h,
        };
        let ok = s
            .get_attributes(key.handle, &[AttributeType::Value])
            .map(|attrs| {
                let ok = attrs
                    .iter()
                    .any(|a| matches!(a, Attribute::Value(v) if v.as_slice() == KAT_KEY));
                wipe(attrs);
                ok
            })
            .unwrap_or(false);
        if ok {
            caps.rfc5649 = Some(Rfc5649 { name, mechanism });
            return;
        }
    }
}

impl Token {
    fn raw_module(&self) -> Result<&RawModule> {
        self.inner.raw.as_ref().ok_or_else(|| {
            HsmError::Unusable(
                "the module's own function list (C_GetFunctionList) could not be loaded, which \
                 key import needs for C_UnwrapKey"
                    .into(),
            )
        })
    }

    /// What importing key material wrapped as `scheme` into an RSA key of `bits` needs that
    /// this token lacks (`None`: nothing, as far as the probes and earlier attempts tell).
    pub fn missing_for_import(&self, scheme: KeyWrapScheme, bits: usize) -> Option<String> {
        let caps = &self.inner.caps;
        let m = &caps.asymmetric;
        let mut missing = Vec::new();
        if !m.rsa_key_pair_gen.generate_key_pair {
            missing.push("CKM_RSA_PKCS_KEY_PAIR_GEN".to_string());
        } else if m.rsa_key_pair_gen.max_key_size != 0 && m.rsa_key_pair_gen.max_key_size < bits {
            missing.push(format!("CKM_RSA_PKCS_KEY_PAIR_GEN of {bits} bits"));
        }
        let hash = scheme.hash();
        if !(m.rsa_pkcs_oaep.unwrap && m.rsa_pkcs_oaep.encrypt) {
            missing.push("CKM_RSA_PKCS_OAEP with CKF_UNWRAP".to_string());
        } else if self.inner.import_oaep_refused.load(Ordering::Relaxed) & oaep_bit(hash) != 0 {
            missing.push(format!(
                "CKM_RSA_PKCS_OAEP with {} (C_UnwrapKey refused it)",
                hash_name(hash)
            ));
        }
        if matches!(scheme, KeyWrapScheme::RsaAesKeyWrap(_)) && caps.rfc5649.is_none() {
            missing.push(
                "AES key wrap with padding as RFC 5649 defines it (CKM_AES_KEY_WRAP_KWP, or a \
                 CKM_AES_KEY_WRAP_PAD that passes RFC 5649's test vector)"
                    .to_string(),
            );
        }
        if self.inner.raw.is_none() {
            missing.push("C_GetFunctionList (for C_UnwrapKey)".to_string());
        }
        (!missing.is_empty()).then(|| missing.join(", "))
    }

    /// Generates a wrapping key pair of `bits` bits for key material wrapped as `scheme`: the
    /// private half a token object labelled `label` with `CKA_ID = id` (sensitive, never
    /// extractable, `CKA_UNWRAP` only), the public half read as DER SubjectPublicKeyInfo and
    /// destroyed. Before it is handed out, the pair proves the token can unwrap with it
    /// (OAEP with the scheme's hash, on 32 random bytes into a session object): a token whose
    /// OAEP refuses the hash (SoftHSM 2.6: SHA-1 only) destroys the pair and says so, and is
    /// not asked again with that hash by this process.
    pub fn generate_wrapping_key(
        &self,
        label: &str,
        id: &[u8],
        bits: usize,
        scheme: KeyWrapScheme,
    ) -> Result<Offered<Vec<u8>>> {
        if let Some(missing) = self.missing_for_import(scheme, bits) {
            return Ok(Offered::Lacks(missing));
        }
        let raw = self.raw_module()?;
        let hash = scheme.hash();
        let public_t = wrapping_public_template(bits);
        let mut last = None;
        for pinned in [true, false] {
            let private_t = wrapping_private_template(label, id, pinned);
            let clean = || {
                for h in self.find_wrapping_keys(label)? {
                    self.destroy_wrapping_key(h)?;
                }
                Ok(None)
            };
            let made = expecting_slow(|| {
                self.create(
                    |s| {
                        self.count(|c| &c.generate_key_calls);
                        let (public, private) = s.generate_key_pair(
                            &Mechanism::RsaPkcsKeyPairGen,
                            &public_t,
                            &private_t,
                        )?;
                        let public = Transient {
                            session: s,
                            handle: public,
                        };
                        let spki = read_public(s, public.handle, PairKind::Rsa { bits });
                        let test = self.unwrap_self_test(s, raw, public.handle, private, hash);
                        Ok((private, spki, test))
                    },
                    clean,
                )
            });
            match made {
                Ok((private, spki, test)) => {
                    let keep = match (spki, test) {
                        (Ok(spki), Ok(())) => return Ok(Offered::Yes(spki)),
                        (Err(e), _) => Err(e),
                        (Ok(_), Err(e))
                            if e.call().is_some_and(CallError::is_parameter_refused) =>
                        {
                            self.inner
                                .import_oaep_refused
                                .fetch_or(oaep_bit(hash), Ordering::Relaxed);
                            Ok(Offered::Lacks(format!(
                                "CKM_RSA_PKCS_OAEP with {} ({})",
                                hash_name(hash),
                                e.call().map(CallError::code).unwrap_or_default()
                            )))
                        }
                        (Ok(_), Err(e)) => Err(e),
                    };
                    self.destroy_wrapping_key(WrappingKey(private))?;
                    return keep;
                }
                Err(e) if pinned && e.is_template_refused() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| HsmError::Misbehaved("no wrapping key template tried".into())))
    }

    /// Encrypts 32 random bytes with the public half and unwraps them with the private half
    /// into a session object, which is destroyed: the pair works for import on this token.
    fn unwrap_self_test(
        &self,
        s: &Session,
        raw: &RawModule,
        public: ObjectHandle,
        private: ObjectHandle,
        hash: Hash,
    ) -> Result<()> {
        let mut probe = Zeroizing::new([0u8; 32]);
        s.generate_random_slice(probe.as_mut_slice())?;
        let mech = oaep(hash);
        let wrapped = s.encrypt(&mech, public, probe.as_slice())?;
        let mut ck: CK_MECHANISM = (&mech).into();
        self.count(|c| &c.unwrap_calls);
        let h = raw.unwrap_key(s, &mut ck, private, &wrapped, &ephemeral_template(), None)?;
        let _ = s.destroy_object(h);
        Ok(())
    }

    /// Every token private key labelled exactly `label`, unchecked.
    fn find_wrapping_keys(&self, label: &str) -> Result<Vec<WrappingKey>> {
        Ok(self
            .call(|s| {
                s.find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Token(true),
                    Attribute::Label(label.as_bytes().to_vec()),
                ])
            })?
            .into_iter()
            .map(WrappingKey)
            .collect())
    }

    /// The wrapping key labelled `label`: exactly one RSA private key of `bits` bits with
    /// `CKA_ID = id`, generated here, sensitive, never extractable, that can unwrap and do
    /// nothing else. `None` if there is none (expired and swept, or never made) or what is
    /// there is not such a key.
    pub fn find_wrapping_key(
        &self,
        label: &str,
        id: &[u8],
        bits: usize,
    ) -> Result<Option<WrappingKey>> {
        let found = self.find_wrapping_keys(label)?;
        let [key] = found.as_slice() else {
            if found.len() > 1 {
                tracing::error!(
                    target: "p11kms::custody",
                    label,
                    "{} wrapping keys in the token are labelled {label}: refusing them all",
                    found.len()
                );
            }
            return Ok(None);
        };
        let mut types = CmkAttributes::TYPES.to_vec();
        types.push(AttributeType::Modifiable);
        let attrs = match self.handle_call(|s| s.get_attributes(key.0, &types)) {
            Ok(a) => a,
            Err(e) if e.is_stale_handle() => return Ok(None),
            Err(e) => return Err(e),
        };
        let unwrap = attrs.contains(&Attribute::Unwrap(true));
        let others: Vec<Attribute> = attrs
            .iter()
            .filter(|a| !matches!(a, Attribute::Unwrap(_)))
            .cloned()
            .collect();
        // A decryption key's shape, with CKA_UNWRAP instead of CKA_DECRYPT.
        let kind = BackingKind::Private {
            pair: PairKind::Rsa { bits },
            usage: super::PrivateUsage::Decrypt,
        };
        let mut shown = others;
        shown.push(Attribute::Decrypt(true));
        match CmkAttributes::from_attributes(shown).verify(id, kind) {
            Ok(()) if unwrap && !attrs.contains(&Attribute::Decrypt(true)) => Ok(Some(*key)),
            Ok(()) => Ok(None),
            Err(why) => {
                tracing::error!(
                    target: "p11kms::custody",
                    label,
                    "the wrapping key labelled {label} is refused: {why}"
                );
                Ok(None)
            }
        }
    }

    /// Labels and handles of every wrapping key (a token RSA private key that can unwrap)
    /// whose label starts with `prefix`.
    pub fn list_wrapping_keys(&self, prefix: &str) -> Result<Vec<(String, WrappingKey)>> {
        let handles = self.call(|s| {
            s.find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Token(true),
                Attribute::Unwrap(true),
            ])
        })?;
        let mut out = Vec::new();
        for h in handles {
            match self.handle_call(|s| s.get_attributes(h, &[AttributeType::Label])) {
                Ok(attrs) => out.extend(attrs.into_iter().find_map(|a| {
                    match a {
                        Attribute::Label(l) => String::from_utf8(l)
                            .ok()
                            .filter(|l| l.starts_with(prefix))
                            .map(|l| (l, WrappingKey(h))),
                        _ => None,
                    }
                })),
                Err(e) if e.is_stale_handle() => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Destroys a wrapping key; one already gone is not an error.
    pub fn destroy_wrapping_key(&self, k: WrappingKey) -> Result<()> {
        match self.handle_call(|s| s.destroy_object(k.0)) {
            Ok(()) => Ok(()),
            Err(e) if e.is_stale_handle() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Unwraps key material wrapped as `scheme` under `wrapping` into a new backing key of an
    /// imported KMS key: an AES-256 token object labelled `label` with `CKA_ID = id`,
    /// sensitive, not extractable, derive-only (pinned to `kdf`'s mechanism and with
    /// `CKA_DERIVE_TEMPLATE` where the token takes them), exactly as a generated CMK but
    /// unwrapped, hence not `CKA_LOCAL`. The material never exists outside the token. A blob
    /// that does not unwrap is [`HsmError::AuthenticationFailed`]; material that is not a
    /// 256-bit AES key is [`Imported::NotAes256`] (nothing kept).
    pub fn import_cmk(
        &self,
        wrapping: WrappingKey,
        scheme: KeyWrapScheme,
        blob: &[u8],
        label: &str,
        id: &[u8],
        kdf: Kdf,
    ) -> Result<Imported> {
        let mut last = None;
        for pinned in [true, false] {
            let mut t = KeyTemplate::aes256()
                .token_object()
                .modifiable(true)
                .usages(Usages::DERIVE)
                .label(label)
                .id(id)
                .unwrapped();
            if pinned {
                t = t.allowed_mechanisms(vec![kdf.mechanism_type()]);
            }
            let h = match self.unwrap_material(wrapping, scheme, blob, &t.build()) {
                Ok(h) => CmkHandle(h),
                Err(e) if pinned && e.is_template_refused() => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let again = || self.measure_by_wrapping(wrapping, scheme, blob);
            return match self.judge_imported(h, id, kdf, again) {
                Ok(r @ Imported::Key { .. }) => Ok(r),
                other => {
                    let _ = self.destroy_cmk(h);
                    other
                }
            };
        }
        Err(last.unwrap_or_else(|| HsmError::Misbehaved("no import template tried".into())))
    }

    /// The check value of key material wrapped as `scheme` under `wrapping`, unwrapped into
    /// a session object only for this and destroyed (to compare with the material a key
    /// already has, without touching that key). `None`: not a 256-bit AES key.
    pub fn imported_check_value(
        &self,
        wrapping: WrappingKey,
        scheme: KeyWrapScheme,
        blob: &[u8],
        kdf: Kdf,
    ) -> Result<Option<Vec<u8>>> {
        let t = KeyTemplate::aes256()
            .usages(Usages::DERIVE)
            .unwrapped()
            .build();
        let h = self.unwrap_material(wrapping, scheme, blob, &t)?;
        let key = SessionKey {
            token: std::sync::Arc::clone(&self.inner),
            handle: h,
        };
        let len = self.material_len(key.handle, || {
            self.measure_by_wrapping(wrapping, scheme, blob)
        })?;
        if len != 32 {
            return Ok(None);
        }
        self.check_value(CmkHandle(key.handle), kdf).map(Some)
    }

    /// Proves that an unwrapped key is what it was asked to be, and computes its check value.
    fn judge_imported(
        &self,
        h: CmkHandle,
        id: &[u8],
        kdf: Kdf,
        again: impl FnOnce() -> Result<Option<u64>>,
    ) -> Result<Imported> {
        let attrs = self.handle_call(|s| s.get_attributes(h.0, &CmkAttributes::TYPES))?;
        let attrs = CmkAttributes::from_attributes(attrs);
        match self.material_len(h.0, again)? {
            32 => {}
            n => return Ok(Imported::NotAes256(n)),
        }
        attrs
            .verify(id, BackingKind::Imported)
            .map_err(|why| HsmError::Misbehaved(format!("the unwrapped key: {why}")))?;
        let check = self.check_value(h, kdf)?;
        Ok(Imported::Key { cmk: h, check })
    }

    /// The length in bytes of an unwrapped key's value: its `CKA_VALUE_LEN`, or where the
    /// token reports none for unwrapped keys (SoftHSM 2.6 answers 0, and refuses the
    /// attribute in an unwrap template with `CKR_ATTRIBUTE_READ_ONLY`), what `again` finds.
    fn material_len(
        &self,
        h: ObjectHandle,
        again: impl FnOnce() -> Result<Option<u64>>,
    ) -> Result<u64> {
        match self.handle_call(|s| value_len(s, h))? {
            Some(n) if n > 0 => Ok(n),
            _ => again()?.ok_or_else(|| {
                HsmError::Misbehaved(
                    "the token reports no CKA_VALUE_LEN for an unwrapped key, and cannot wrap \
                     one with CKM_AES_KEY_WRAP to measure it"
                        .into(),
                )
            }),
        }
    }

    /// The length of the material in `blob`, measured in the token without its value leaving
    /// it: unwrapped once more into a sensitive session object that is extractable only so
    /// that `C_WrapKey(CKM_AES_KEY_WRAP)` (RFC 3394: exactly 8 bytes longer than its input,
    /// which must be a multiple of 8 bytes) can wrap it under a throwaway session key that is
    /// never read; all of it destroyed at once. `Some(0)`: not a multiple of 8 bytes; `None`:
    /// the token cannot wrap so.
    fn measure_by_wrapping(
        &self,
        wrapping: WrappingKey,
        scheme: KeyWrapScheme,
        blob: &[u8],
    ) -> Result<Option<u64>> {
        let t = KeyTemplate::aes256().extractable(true).unwrapped().build();
        let h = self.unwrap_material(wrapping, scheme, blob, &t)?;
        let key = SessionKey {
            token: std::sync::Arc::clone(&self.inner),
            handle: h,
        };
        let kek_t = KeyTemplate::aes256()
            .usages(Usages {
                wrap: true,
                ..Usages::NONE
            })
            .build();
        let wrapped = self.call(|s| {
            let kek = Transient {
                session: s,
                handle: s.generate_key(&Mechanism::AesKeyGen, &kek_t)?,
            };
            Ok(s.wrap_key(&Mechanism::AesKeyWrap, kek.handle, key.handle))
        })?;
        Ok(match wrapped {
            Ok(w) => Some((w.len() as u64).saturating_sub(8)),
            Err(e) if CallError::from(&e).is_parameter_refused() => None,
            Err(_) => Some(0),
        })
    }

    /// `C_UnwrapKey` of `blob` under `wrapping` as `scheme` into an object of `template` (plus
    /// `CKA_DERIVE_TEMPLATE` where the token enforces it). A blob that does not unwrap is
    /// [`HsmError::AuthenticationFailed`].
    fn unwrap_material(
        &self,
        wrapping: WrappingKey,
        scheme: KeyWrapScheme,
        blob: &[u8],
        template: &[Attribute],
    ) -> Result<ObjectHandle> {
        let raw = self.raw_module()?;
        let stays_secret = derived_keys_stay_secret();
        let derive_template = self
            .inner
            .caps
            .derive_template
            .enforced
            .then_some(&stays_secret[..]);
        let s = self.inner.pool.get()?;
        let mech = oaep(scheme.hash());
        let mut ck: CK_MECHANISM = (&mech).into();
        let result = match scheme {
            KeyWrapScheme::RsaOaep(_) => {
                self.count(|c| &c.unwrap_calls);
                raw.unwrap_key(&s, &mut ck, wrapping.0, blob, template, derive_template)
                    .map_err(|e| (e, wrapping.0))
            }
            KeyWrapScheme::RsaAesKeyWrap(_) => {
                let kwp = self.inner.caps.rfc5649.ok_or_else(|| {
                    HsmError::Misbehaved("no RFC 5649 mechanism on this token".into())
                })?;
                let k = self.rsa_len(&s, wrapping.0)?;
                if blob.len() <= k {
                    return Err(HsmError::AuthenticationFailed);
                }
                let (head, tail) = blob.split_at(k);
                self.count(|c| &c.unwrap_calls);
                match raw.unwrap_key(&s, &mut ck, wrapping.0, head, &ephemeral_template(), None) {
                    Err(e) => Err((e, wrapping.0)),
                    Ok(eph) => {
                        let eph = Transient {
                            session: &s,
                            handle: eph,
                        };
                        self.count(|c| &c.unwrap_calls);
                        raw.unwrap_key(
                            &s,
                            &mut bare(kwp.mechanism),
                            eph.handle,
                            tail,
                            template,
                            derive_template,
                        )
                        .map_err(|e| (e, eph.handle))
                    }
                }
            }
        };
        result.map_err(|(e, key)| {
            let call = CallError::from(&e).read_with(self.inner.quirks, true);
            let bad = match call.unwrap_failure() {
                super::error::GcmFailure::Authentication => true,
                super::error::GcmFailure::Ambiguous => {
                    s.get_session_info().is_ok()
                        && s.get_attributes(key, &[AttributeType::Class]).is_ok()
                }
                super::error::GcmFailure::Token => false,
            };
            if bad {
                HsmError::AuthenticationFailed
            } else {
                HsmError::Call(call)
            }
        })
    }

    /// The modulus length of an RSA key, in bytes.
    fn rsa_len(&self, s: &Session, key: ObjectHandle) -> Result<usize> {
        let attrs = s.get_attributes(key, &[AttributeType::Modulus])?;
        attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::Modulus(m) => Some(m.iter().skip_while(|b| **b == 0).count()),
                _ => None,
            })
            .ok_or_else(|| HsmError::Misbehaved("the wrapping key reports no modulus".into()))
    }

    /// A check value of an AES-256 derive-only key: AES-GCM, under the key derived from it with
    /// `kdf` and a fixed nonce (never a blob's), of 32 zero bytes with a zero IV. Equal keys
    /// give equal values, and the value says nothing else about the key (a PRF output), so
    /// two imports of one KMS key are compared without extracting either.
    pub fn check_value(&self, cmk: CmkHandle, kdf: Kdf) -> Result<Vec<u8>> {
        let key = self.derive_key(cmk, kdf, &CHECK_NONCE, false)?;
        self.gcm_seal(&key, &[0u8; super::GCM_IV_LEN], CHECK_AAD, &[0u8; 32])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kat_is_rfc_5649s_and_the_check_nonce_is_fixed() {
        // Independent: unwrap the RFC's vector with the `aes` crate (RFC 5649, 4.2).
        use aes::cipher::{BlockDecrypt, KeyInit};
        let kek = aes::Aes192::new_from_slice(&KAT_KEK).unwrap();
        let mut a = [0u8; 8];
        a.copy_from_slice(&KAT_WRAPPED[..8]);
        let mut r: Vec<[u8; 8]> = KAT_WRAPPED[8..]
            .chunks(8)
            .map(|c| c.try_into().unwrap())
            .collect();
        let n = r.len();
        for j in (0..6).rev() {
            for i in (0..n).rev() {
                let t = (n * j + i + 1) as u64;
                let mut b = [0u8; 16];
                for (k, x) in t.to_be_bytes().iter().enumerate() {
                    a[k] ^= x;
                }
                b[..8].copy_from_slice(&a);
                b[8..].copy_from_slice(&r[i]);
                let mut block = aes::Block::clone_from_slice(&b);
                kek.decrypt_block(&mut block);
                a.copy_from_slice(&block[..8]);
                r[i].copy_from_slice(&block[8..]);
            }
        }
        assert_eq!(a[..4], [0xa6, 0x59, 0x59, 0xa6]);
        let len = u32::from_be_bytes(a[4..].try_into().unwrap()) as usize;
        let plain: Vec<u8> = r.concat();
        assert_eq!(&plain[..len], KAT_KEY);
        assert!(plain[len..].iter().all(|b| *b == 0));
        assert_eq!(CHECK_NONCE.len(), 32);
    }
}
