//! Key pairs and HMAC keys: generated in the token, the private (or secret) half sensitive,
//! never extractable and limited to its one usage; signing, RSA decryption, ECDH and MACs
//! inside the token; public keys imported as session objects for verification and RSA
//! encryption; and data key pairs, which are generated in the token as session objects and
//! leave it only as the caller asked (PKCS#8 for the caller, or wrapped under an epoch key).
//!
//! Messages are hashed by the caller (`kms`): every signature here is over a digest
//! (`CKM_RSA_PKCS` over a DigestInfo, `CKM_RSA_PKCS_PSS`, `CKM_ECDSA`), except Ed25519,
//! which signs the message itself. That is the one set of mechanisms both tokens offer.

use std::sync::Arc;

use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::types::Ulong;
use zeroize::{Zeroize, Zeroizing};

use super::cmk::{BackingKind, PairKind, PrivateUsage};
use super::derived::Transient;
use super::error::CallError;
use super::pool::expecting_slow;
use super::templates::{KeyTemplate, Usages};
use super::{CmkHandle, HsmError, Result, SessionKey, Token};
use crate::der::{self, Curve, Hash, PublicKey};

/// The bit of `hash` in `TokenInner::oaep_refused`.
fn oaep_bit(hash: Hash) -> u8 {
    match hash {
        Hash::Sha1 => 1,
        Hash::Sha224 => 2,
        Hash::Sha256 => 4,
        Hash::Sha384 => 8,
        Hash::Sha512 => 16,
    }
}

/// RSA public exponent of every key pair: 65537.
const RSA_EXPONENT: [u8; 3] = [0x01, 0x00, 0x01];
/// Pairs tried in [`Token::seal_new_key_pair`] before a token that keeps writing short EC
/// scalars is given up on (a canonical P-521 scalar has a leading zero byte half the time).
const SHORT_SCALAR_TRIES: usize = 24;

/// How a signature is made (or checked) over what the caller passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignScheme {
    /// RSASSA-PKCS1-v1_5 over a digest (the DigestInfo is built here).
    RsaPkcs1(Hash),
    /// RSASSA-PSS over a digest, MGF1 with the same hash, salt as long as the digest.
    RsaPss(Hash),
    /// ECDSA over a digest; the signature is r ‖ s (the caller makes it DER).
    Ecdsa,
    /// Pure Ed25519 over the message.
    Ed25519,
    /// Ed25519ph over a SHA-512 digest (only where the token really makes Ed25519ph
    /// signatures: [`super::Capabilities::ed25519ph`]).
    Ed25519Ph,
}

/// What a signature was checked to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// It verifies.
    Valid,
    /// It does not.
    Invalid,
}

pub(super) fn hash_mechanism(h: Hash) -> (MechanismType, PkcsMgfType) {
    match h {
        Hash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
        Hash::Sha224 => (MechanismType::SHA224, PkcsMgfType::MGF1_SHA224),
        Hash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        Hash::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
        Hash::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
    }
}

/// The HMAC mechanism over `h`.
pub(super) fn hmac_mechanism(h: Hash) -> Mechanism<'static> {
    match h {
        Hash::Sha1 => Mechanism::Sha1Hmac,
        Hash::Sha224 => Mechanism::Sha224Hmac,
        Hash::Sha256 => Mechanism::Sha256Hmac,
        Hash::Sha384 => Mechanism::Sha384Hmac,
        Hash::Sha512 => Mechanism::Sha512Hmac,
    }
}

fn hmac_mechanism_type(h: Hash) -> MechanismType {
    match h {
        Hash::Sha1 => MechanismType::SHA1_HMAC,
        Hash::Sha224 => MechanismType::SHA224_HMAC,
        Hash::Sha256 => MechanismType::SHA256_HMAC,
        Hash::Sha384 => MechanismType::SHA384_HMAC,
        Hash::Sha512 => MechanismType::SHA512_HMAC,
    }
}

/// Calls `f` with the mechanism of `scheme` (its parameters borrow locals of this frame).
pub(super) fn with_sign_mechanism<T>(scheme: SignScheme, f: impl FnOnce(&Mechanism) -> T) -> T {
    match scheme {
        SignScheme::RsaPkcs1(_) => f(&Mechanism::RsaPkcs),
        SignScheme::RsaPss(h) => {
            let (hash_alg, mgf) = hash_mechanism(h);
            f(&Mechanism::RsaPkcsPss(PkcsPssParams {
                hash_alg,
                mgf,
                s_len: Ulong::new(h.len() as _),
            }))
        }
        SignScheme::Ecdsa => f(&Mechanism::Ecdsa),
        SignScheme::Ed25519 => f(&Mechanism::Eddsa(EddsaParams::new(
            EddsaSignatureScheme::Pure,
        ))),
        SignScheme::Ed25519Ph => f(&Mechanism::Eddsa(EddsaParams::new(
            EddsaSignatureScheme::Ed25519ph(&[]),
        ))),
    }
}

/// What the token signs for `scheme` over `data` (a digest, or Ed25519's message): the
/// DigestInfo for PKCS#1 v1.5, the bytes themselves otherwise.
fn signing_input(scheme: SignScheme, data: &[u8]) -> Result<Vec<u8>> {
    match scheme {
        SignScheme::RsaPkcs1(h) => der::digest_info(h, data)
            .map_err(|e| HsmError::Misbehaved(format!("digest for PKCS#1 v1.5: {e}"))),
        _ => Ok(data.to_vec()),
    }
}

fn key_type(pair: PairKind) -> KeyType {
    match pair {
        PairKind::Rsa { .. } => KeyType::RSA,
        PairKind::Ec(_) => KeyType::EC,
        PairKind::Ed25519 => KeyType::EC_EDWARDS,
    }
}

fn generation_mechanism(pair: PairKind) -> Mechanism<'static> {
    match pair {
        PairKind::Rsa { .. } => Mechanism::RsaPkcsKeyPairGen,
        PairKind::Ec(_) => Mechanism::EccKeyPairGen,
        PairKind::Ed25519 => Mechanism::EccEdwardsKeyPairGen,
    }
}

/// The mechanisms a private key of `pair` may be used with for `usage`
/// (`CKA_ALLOWED_MECHANISMS`, where the token accepts it).
fn allowed(pair: PairKind, usage: PrivateUsage) -> Vec<MechanismType> {
    match (pair, usage) {
        (PairKind::Rsa { .. }, PrivateUsage::Sign) => {
            vec![MechanismType::RSA_PKCS, MechanismType::RSA_PKCS_PSS]
        }
        // Raw RSA too: the padding is done on the host where the token's OAEP refuses a hash.
        (PairKind::Rsa { .. }, _) => vec![MechanismType::RSA_PKCS_OAEP, MechanismType::RSA_X_509],
        (PairKind::Ec(_), PrivateUsage::Derive) => vec![MechanismType::ECDH1_DERIVE],
        (PairKind::Ec(_), _) => vec![MechanismType::ECDSA],
        (PairKind::Ed25519, _) => vec![MechanismType::EDDSA],
    }
}

/// Domain attributes of the public half's template.
pub(super) fn public_domain(pair: PairKind) -> Vec<Attribute> {
    match pair {
        PairKind::Rsa { bits } => vec![
            Attribute::ModulusBits(Ulong::new(bits as _)),
            Attribute::PublicExponent(RSA_EXPONENT.to_vec()),
        ],
        PairKind::Ec(c) => vec![Attribute::EcParams(c.oid_der().to_vec())],
        PairKind::Ed25519 => vec![Attribute::EcParams(der::ED25519_EC_PARAMS.to_vec())],
    }
}

/// The public half: a session object, only for the one use that matches `usage`.
fn public_template(pair: PairKind, usage: PrivateUsage) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(key_type(pair)),
        Attribute::Token(false),
        Attribute::Private(false),
        Attribute::Verify(usage == PrivateUsage::Sign),
        Attribute::Encrypt(usage == PrivateUsage::Decrypt),
        Attribute::Wrap(false),
        Attribute::Derive(false),
    ];
    t.extend(public_domain(pair));
    t
}

/// How a private half is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keeping {
    /// A KMS key: token object, sensitive, never extractable, modifiable (disabling a key
    /// switches its usage off).
    Backing,
    /// A data key pair whose private key is returned to the caller: a session object the
    /// host reads once.
    Readable,
    /// A data key pair sealed inside the token: a sensitive session object that can only be
    /// wrapped.
    Wrappable,
}

fn private_template(
    pair: PairKind,
    usage: PrivateUsage,
    keeping: Keeping,
    label_id: Option<(&str, &[u8])>,
    pinned: bool,
) -> Vec<Attribute> {
    let backing = keeping == Keeping::Backing;
    let mut t = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(key_type(pair)),
        Attribute::Token(backing),
        Attribute::Private(true),
        Attribute::Sensitive(keeping != Keeping::Readable),
        Attribute::Extractable(!backing),
        Attribute::Sign(usage == PrivateUsage::Sign),
        Attribute::Decrypt(usage == PrivateUsage::Decrypt),
        Attribute::Derive(usage == PrivateUsage::Derive),
        Attribute::Unwrap(false),
        // Every pair, Ed25519 too: SoftHSM defaults it to true, and binding refuses a key
        // with a usage beyond its one.
        Attribute::SignRecover(false),
    ];
    if backing {
        t.push(Attribute::Modifiable(true));
    }
    if let Some((label, id)) = label_id {
        t.push(Attribute::Label(label.as_bytes().to_vec()));
        t.push(Attribute::Id(id.to_vec()));
    }
    if pinned {
        t.push(Attribute::AllowedMechanisms(allowed(pair, usage)));
    }
    t
}

/// Generates a throwaway key pair of `pair` as session objects on `s`, limited to `usage` and
/// kept as `keeping` says, and calls `f` with (public, private); both are destroyed after,
/// also on failure.
pub(super) fn with_session_pair<T>(
    s: &Session,
    pair: PairKind,
    usage: PrivateUsage,
    keeping: Keeping,
    f: impl FnOnce(ObjectHandle, ObjectHandle) -> cryptoki::error::Result<T>,
) -> cryptoki::error::Result<T> {
    let (public, private) = s.generate_key_pair(
        &generation_mechanism(pair),
        &public_template(pair, usage),
        &private_template(pair, usage, keeping, None, false),
    )?;
    let public = Transient {
        session: s,
        handle: public,
    };
    let private = Transient {
        session: s,
        handle: private,
    };
    f(public.handle, private.handle)
}

/// The public key of a public-key object, as DER SubjectPublicKeyInfo.
pub(super) fn read_public(s: &Session, public: ObjectHandle, pair: PairKind) -> Result<Vec<u8>> {
    let misbehaved = |what: &str| HsmError::Misbehaved(format!("the token's public key: {what}"));
    match pair {
        PairKind::Rsa { .. } => {
            let attrs = s.get_attributes(
                public,
                &[AttributeType::Modulus, AttributeType::PublicExponent],
            )?;
            let (mut n, mut e) = (None, None);
            for a in attrs {
                match a {
                    Attribute::Modulus(m) => n = Some(m),
                    Attribute::PublicExponent(x) => e = Some(x),
                    _ => {}
                }
            }
            match (n, e) {
                (Some(n), Some(e)) => Ok(der::spki_rsa(&n, &e)),
                _ => Err(misbehaved("no modulus or exponent")),
            }
        }
        PairKind::Ec(curve) => {
            let point = ec_point(s, public, Some(curve.field_len()))?;
            Ok(der::spki_ec(curve, &point))
        }
        PairKind::Ed25519 => {
            let point = ec_point(s, public, None)?;
            let key: [u8; 32] = point
                .as_slice()
                .try_into()
                .map_err(|_| misbehaved("an Ed25519 key is not 32 bytes"))?;
            Ok(der::spki_ed25519(&key))
        }
    }
}

fn ec_point(s: &Session, public: ObjectHandle, field_len: Option<usize>) -> Result<Vec<u8>> {
    let attrs = s.get_attributes(public, &[AttributeType::EcPoint])?;
    let raw = attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p),
            _ => None,
        })
        .ok_or_else(|| HsmError::Misbehaved("the token reports no CKA_EC_POINT".into()))?;
    der::ec_point_from_pkcs11(&raw, field_len)
        .map_err(|e| HsmError::Misbehaved(format!("the token's CKA_EC_POINT: {e}")))
}

/// Reads a readable private key's value as PKCS#8, wiping what the token returned.
pub(super) fn read_private_pkcs8(
    s: &Session,
    private: ObjectHandle,
    public: ObjectHandle,
    pair: PairKind,
) -> Result<Zeroizing<Vec<u8>>> {
    let misbehaved = || HsmError::Misbehaved("the token did not return the private key".into());
    match pair {
        PairKind::Rsa { .. } => {
            const PARTS: [AttributeType; 8] = [
                AttributeType::Modulus,
                AttributeType::PublicExponent,
                AttributeType::PrivateExponent,
                AttributeType::Prime1,
                AttributeType::Prime2,
                AttributeType::Exponent1,
                AttributeType::Exponent2,
                AttributeType::Coefficient,
            ];
            let attrs = s.get_attributes(private, &PARTS)?;
            let mut parts: Vec<Zeroizing<Vec<u8>>> = Vec::with_capacity(8);
            for want in PARTS {
                let v = attrs.iter().find_map(|a| match (a, want) {
                    (Attribute::Modulus(v), AttributeType::Modulus)
                    | (Attribute::PublicExponent(v), AttributeType::PublicExponent)
                    | (Attribute::PrivateExponent(v), AttributeType::PrivateExponent)
                    | (Attribute::Prime1(v), AttributeType::Prime1)
                    | (Attribute::Prime2(v), AttributeType::Prime2)
                    | (Attribute::Exponent1(v), AttributeType::Exponent1)
                    | (Attribute::Exponent2(v), AttributeType::Exponent2)
                    | (Attribute::Coefficient(v), AttributeType::Coefficient) => {
                        Some(Zeroizing::new(v.clone()))
                    }
                    _ => None,
                });
                parts.push(v.ok_or_else(misbehaved)?);
            }
            wipe(attrs);
            Ok(der::pkcs8_rsa(
                &parts[0], &parts[1], &parts[2], &parts[3], &parts[4], &parts[5], &parts[6],
                &parts[7],
            ))
        }
        PairKind::Ec(curve) => {
            let value = private_value(s, private)?;
            let point = ec_point(s, public, Some(curve.field_len()))?;
            der::pkcs8_ec(curve, &value, Some(&point))
                .map_err(|e| HsmError::Misbehaved(format!("the token's EC private key: {e}")))
        }
        PairKind::Ed25519 => {
            let value = private_value(s, private)?;
            let mut seed = Zeroizing::new([0u8; 32]);
            if value.len() != 32 {
                return Err(misbehaved());
            }
            seed.copy_from_slice(&value);
            Ok(der::pkcs8_ed25519(&seed))
        }
    }
}

fn private_value(s: &Session, private: ObjectHandle) -> Result<Zeroizing<Vec<u8>>> {
    let attrs = s.get_attributes(private, &[AttributeType::Value])?;
    let v = attrs.iter().find_map(|a| match a {
        Attribute::Value(v) => Some(Zeroizing::new(v.clone())),
        _ => None,
    });
    wipe(attrs);
    v.ok_or_else(|| HsmError::Misbehaved("the token did not return the private key".into()))
}

/// Wipes the byte values of attributes read from the token.
pub(super) fn wipe(attrs: Vec<Attribute>) {
    for a in attrs {
        match a {
            Attribute::Value(mut v)
            | Attribute::PrivateExponent(mut v)
            | Attribute::Prime1(mut v)
            | Attribute::Prime2(mut v)
            | Attribute::Exponent1(mut v)
            | Attribute::Exponent2(mut v)
            | Attribute::Coefficient(mut v) => v.zeroize(),
            _ => {}
        }
    }
}

/// A signature the token refused as wrong (rather than failing itself).
fn is_bad_signature(e: &cryptoki::error::Error) -> bool {
    use cryptoki::error::{Error, RvError};
    matches!(
        e,
        Error::Pkcs11(RvError::SignatureInvalid | RvError::SignatureLenRange, _)
    )
}

/// The shape of a public key as a PKCS#11 template (for a session object).
fn public_object(key: &PublicKey, usage: PrivateUsage) -> Result<Vec<Attribute>> {
    let mut t = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::Token(false),
        Attribute::Private(false),
        Attribute::Verify(usage == PrivateUsage::Sign),
        Attribute::Encrypt(usage == PrivateUsage::Decrypt),
        Attribute::Wrap(false),
        Attribute::Derive(false),
    ];
    match key {
        PublicKey::Rsa { modulus, exponent } => {
            t.push(Attribute::KeyType(KeyType::RSA));
            t.push(Attribute::Modulus(modulus.clone()));
            t.push(Attribute::PublicExponent(exponent.clone()));
        }
        PublicKey::Ec { curve, point } => {
            t.push(Attribute::KeyType(KeyType::EC));
            t.push(Attribute::EcParams(curve.oid_der().to_vec()));
            t.push(Attribute::EcPoint(der::octet_string(point)));
        }
        PublicKey::Ed25519(k) => {
            t.push(Attribute::KeyType(KeyType::EC_EDWARDS));
            t.push(Attribute::EcParams(der::ED25519_EC_PARAMS.to_vec()));
            t.push(Attribute::EcPoint(der::octet_string(k)));
        }
    }
    Ok(t)
}

impl Token {
    /// Generates a KMS key's key pair in the token. The private half is a token object
    /// labelled `label` with `CKA_ID = id`: sensitive, never extractable, with only `usage`
    /// (and `CKA_ALLOWED_MECHANISMS` for it where the token accepts that). The public half is
    /// read and destroyed: it is returned as DER SubjectPublicKeyInfo for the key's record.
    /// A transiently failed attempt destroys whatever it may have left under the label
    /// before the next: one CreateKey never leaves two objects under one label.
    pub fn generate_key_pair(
        &self,
        label: &str,
        id: &[u8],
        pair: PairKind,
        usage: PrivateUsage,
    ) -> Result<(CmkHandle, Vec<u8>)> {
        let public_t = public_template(pair, usage);
        let mut last = None;
        for pinned in [true, false] {
            let private_t =
                private_template(pair, usage, Keeping::Backing, Some((label, id)), pinned);
            let clean = || {
                for h in self.find_cmks(label)? {
                    self.destroy_cmk(h)?;
                }
                Ok(None)
            };
            let made = expecting_slow(|| {
                self.create(
                    |s| {
                        self.count(|c| &c.generate_key_calls);
                        let (public, private) = s.generate_key_pair(
                            &generation_mechanism(pair),
                            &public_t,
                            &private_t,
                        )?;
                        let public = Transient {
                            session: s,
                            handle: public,
                        };
                        Ok((private, read_public(s, public.handle, pair)))
                    },
                    clean,
                )
            });
            match made {
                Ok((private, Ok(spki))) => return Ok((CmkHandle(private), spki)),
                Ok((private, Err(e))) => {
                    let _ = self.destroy_cmk(CmkHandle(private));
                    return Err(e);
                }
                Err(e) if pinned && e.is_template_refused() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| HsmError::Misbehaved("no key pair template tried".into())))
    }

    /// Generates a KMS key's HMAC key in the token: a generic secret of `bytes` bytes,
    /// sensitive, never extractable, sign and verify only (pinned to `hash`'s HMAC where the
    /// token accepts `CKA_ALLOWED_MECHANISMS`).
    pub fn generate_hmac_key(
        &self,
        label: &str,
        id: &[u8],
        bytes: usize,
        hash: Hash,
    ) -> Result<CmkHandle> {
        let mut last = None;
        for pinned in [true, false] {
            let t = KeyTemplate::secret(KeyType::GENERIC_SECRET, bytes)
                .token_object()
                .modifiable(true)
                .usages(Usages {
                    sign: true,
                    verify: true,
                    ..Usages::NONE
                })
                .label(label)
                .id(id);
            let template = if pinned {
                t.allowed_mechanisms(vec![hmac_mechanism_type(hash)])
                    .build()
            } else {
                t.build()
            };
            let find = || match self.find_cmk(label, id, BackingKind::Hmac { bytes })? {
                super::CmkLookup::Found(h) => Ok(Some(h.0)),
                super::CmkLookup::Missing => Ok(None),
                super::CmkLookup::Refused(why) => Err(HsmError::Misbehaved(why)),
            };
            let made = self.create(
                |s| {
                    self.count(|c| &c.generate_key_calls);
                    s.generate_key(&Mechanism::GenericSecretKeyGen, &template)
                },
                find,
            );
            match made {
                Ok(h) => return Ok(CmkHandle(h)),
                Err(e) if pinned && e.is_template_refused() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| HsmError::Misbehaved("no HMAC template tried".into())))
    }

    /// Signs `data` (a digest, or Ed25519's message) with a private key, in the token.
    pub fn sign(&self, key: CmkHandle, scheme: SignScheme, data: &[u8]) -> Result<Vec<u8>> {
        let input = signing_input(scheme, data)?;
        self.handle_call(|s| with_sign_mechanism(scheme, |m| s.sign(m, key.0, &input)))
    }

    /// Checks a signature with a public key object made by [`Token::import_public_key`].
    pub fn verify(
        &self,
        key: &SessionKey,
        scheme: SignScheme,
        data: &[u8],
        signature: &[u8],
    ) -> Result<Checked> {
        let input = signing_input(scheme, data)?;
        let s = self.inner.pool.get()?;
        match with_sign_mechanism(scheme, |m| s.verify(m, key.handle, &input, signature)) {
            Ok(()) => Ok(Checked::Valid),
            Err(e) if is_bad_signature(&e) => Ok(Checked::Invalid),
            Err(e) => Err(HsmError::Call(
                CallError::from(&e).read_with(self.inner.quirks, true),
            )),
        }
    }

    /// A public key as a session object, for verifying or (RSA) encrypting in the token.
    pub fn import_public_key(&self, key: &PublicKey, usage: PrivateUsage) -> Result<SessionKey> {
        let template = public_object(key, usage)?;
        let handle = self.call(|s| s.create_object(&template))?;
        Ok(SessionKey {
            token: Arc::clone(&self.inner),
            handle,
        })
    }

    /// RSAES-OAEP encryption with a public key object (MGF1 with the same hash, no label),
    /// `k` the modulus length in bytes. Where the token's OAEP refuses the hash, the padding
    /// is done here and the RSA operation raw in the token (see `hsm::oaep`).
    pub fn rsa_encrypt(
        &self,
        key: &SessionKey,
        hash: Hash,
        k: usize,
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        if !self.oaep_refuses(hash) {
            let (hash_alg, mgf) = hash_mechanism(hash);
            match self.handle_call(|s| {
                let params = PkcsOaepParams::new(hash_alg, mgf, PkcsOaepSource::empty());
                s.encrypt(&Mechanism::RsaPkcsOaep(params), key.handle, plaintext)
            }) {
                Err(e) if self.note_oaep_refusal(hash, &e) => {}
                r => return r,
            }
        }
        let seed = self.random(hash.len())?;
        let em = super::oaep::encode(hash, k, plaintext, &seed)
            .map_err(|e| HsmError::Misbehaved(format!("OAEP encoding: {e:?}")))?;
        self.handle_call(|s| s.encrypt(&Mechanism::RsaX509, key.handle, &em))
    }

    /// Whether this token's `CKM_RSA_PKCS_OAEP` is known to refuse `hash`.
    fn oaep_refuses(&self, hash: Hash) -> bool {
        self.inner
            .oaep_refused
            .load(std::sync::atomic::Ordering::Relaxed)
            & oaep_bit(hash)
            != 0
    }

    /// Remembers that the token's OAEP refused `hash` when `e` says so (SoftHSM 2.6:
    /// `CKR_ARGUMENTS_BAD` for anything but SHA-1), if the token can do raw RSA instead.
    fn note_oaep_refusal(&self, hash: Hash, e: &HsmError) -> bool {
        let refused = e.call().is_some_and(|c| c.is_parameter_refused())
            && self.inner.caps.asymmetric.rsa_x_509.present;
        if refused {
            self.inner
                .oaep_refused
                .fetch_or(oaep_bit(hash), std::sync::atomic::Ordering::Relaxed);
        }
        refused
    }

    /// RSAES-OAEP decryption with a private key, in the token. A ciphertext that does not
    /// decrypt is [`HsmError::AuthenticationFailed`] (never the token's own failures: on a
    /// token that uses one code for both, the session and key are checked).
    pub fn rsa_decrypt(
        &self,
        key: CmkHandle,
        hash: Hash,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        if !self.oaep_refuses(hash) {
            let (hash_alg, mgf) = hash_mechanism(hash);
            let params = PkcsOaepParams::new(hash_alg, mgf, PkcsOaepSource::empty());
            match self.rsa_decrypt_with(key, &Mechanism::RsaPkcsOaep(params), ciphertext) {
                Err(e) if self.note_oaep_refusal(hash, &e) => {}
                r => return r,
            }
        }
        let em = self.rsa_decrypt_with(key, &Mechanism::RsaX509, ciphertext)?;
        super::oaep::decode(hash, &em).map_err(|_| HsmError::AuthenticationFailed)
    }

    fn rsa_decrypt_with(
        &self,
        key: CmkHandle,
        mechanism: &Mechanism,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let s = self.inner.pool.get()?;
        match s.decrypt(mechanism, key.0, ciphertext) {
            Ok(pt) => Ok(Zeroizing::new(pt)),
            Err(e) => {
                let call = CallError::from(&e).read_with(self.inner.quirks, true);
                if call.is_parameter_refused() {
                    return Err(HsmError::Call(call));
                }
                let bad = match call.rsa_decrypt_failure(self.inner.quirks) {
                    super::error::GcmFailure::Authentication => true,
                    super::error::GcmFailure::Ambiguous => {
                        s.get_session_info().is_ok()
                            && s.get_attributes(key.0, &[AttributeType::Class]).is_ok()
                    }
                    super::error::GcmFailure::Token => false,
                };
                Err(if bad {
                    HsmError::AuthenticationFailed
                } else {
                    HsmError::Call(call)
                })
            }
        }
    }

    /// ECDH (`CKM_ECDH1_DERIVE`, no KDF) of a private key with the peer's uncompressed
    /// point: the raw shared secret (the x coordinate, `field_len` bytes), which is what
    /// the caller asked for. It passes through a session object that is destroyed at once.
    pub fn ecdh(
        &self,
        key: CmkHandle,
        peer_point: &[u8],
        field_len: usize,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let template = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::ValueLen(Ulong::new(field_len as _)),
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ];
        self.handle_call(|s| {
            let params = Ecdh1DeriveParams::new(EcKdf::null(), peer_point);
            let secret = Transient {
                handle: s.derive_key(&Mechanism::Ecdh1Derive(params), key.0, &template)?,
                session: s,
            };
            let attrs = s.get_attributes(secret.handle, &[AttributeType::Value])?;
            let v = attrs.iter().find_map(|a| match a {
                Attribute::Value(v) => Some(Zeroizing::new(v.clone())),
                _ => None,
            });
            wipe(attrs);
            Ok(v)
        })?
        .ok_or_else(|| HsmError::Misbehaved("the token did not return the shared secret".into()))
    }

    /// Whether `point` is the public key of the ECDH key `key`: a throwaway session key pair
    /// on the same curve agrees with both sides (ECDH(throwaway, point) = ECDH(key,
    /// throwaway's point)). Both secrets are compared here and wiped.
    pub fn ecdh_public_matches(&self, key: CmkHandle, curve: Curve, point: &[u8]) -> Result<bool> {
        let pair = PairKind::Ec(curve);
        let public_t = public_template(pair, PrivateUsage::Derive);
        let private_t =
            private_template(pair, PrivateUsage::Derive, Keeping::Wrappable, None, false);
        let (private, their_point) = self.call(|s| {
            let (public, private) =
                s.generate_key_pair(&generation_mechanism(pair), &public_t, &private_t)?;
            let _public = Transient {
                session: s,
                handle: public,
            };
            Ok((private, ec_point(s, public, Some(curve.field_len()))))
        })?;
        let throwaway = SessionKey {
            token: Arc::clone(&self.inner),
            handle: private,
        };
        let their_point = their_point?;
        let ours = self.ecdh(CmkHandle(throwaway.handle), point, curve.field_len())?;
        let theirs = self.ecdh(key, &their_point, curve.field_len())?;
        Ok(bool::from(subtle::ConstantTimeEq::ct_eq(
            ours.as_slice(),
            theirs.as_slice(),
        )))
    }

    /// An HMAC over `message` with an HMAC key, in the token.
    pub fn hmac(&self, key: CmkHandle, hash: Hash, message: &[u8]) -> Result<Vec<u8>> {
        self.handle_call(|s| s.sign(&hmac_mechanism(hash), key.0, message))
    }

    /// Checks an HMAC in the token (`C_Verify`, which compares in the token).
    pub fn hmac_verify(
        &self,
        key: CmkHandle,
        hash: Hash,
        message: &[u8],
        mac: &[u8],
    ) -> Result<Checked> {
        let s = self.inner.pool.get()?;
        match s.verify(&hmac_mechanism(hash), key.0, message, mac) {
            Ok(()) => Ok(Checked::Valid),
            Err(e) if is_bad_signature(&e) => Ok(Checked::Invalid),
            Err(e) => Err(HsmError::Call(
                CallError::from(&e).read_with(self.inner.quirks, true),
            )),
        }
    }

    /// A data key pair for the caller: generated in the token as session objects, the
    /// private key read once as PKCS#8 (wiped when dropped), both destroyed. Returns
    /// (PKCS#8, DER SubjectPublicKeyInfo).
    pub fn data_key_pair(&self, pair: PairKind) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>)> {
        expecting_slow(|| {
            self.call(|s| {
                self.count(|c| &c.generate_key_calls);
                with_session_pair(
                    s,
                    pair,
                    PrivateUsage::Sign,
                    Keeping::Readable,
                    |public, private| {
                        self.count(|c| &c.private_value_reads);
                        Ok((
                            read_private_pkcs8(s, private, public, pair),
                            read_public(s, public, pair),
                        ))
                    },
                )
            })
        })
        .and_then(|(pkcs8, spki)| Ok((pkcs8?, spki?)))
    }

    /// A data key pair sealed in the token: generated as session objects, the private key
    /// wrapped (`C_WrapKey`, AES-GCM under `key` with the caller's IV and AAD: PKCS#8,
    /// encrypted) without its bytes entering this process, both destroyed. Returns
    /// (ciphertext ‖ tag, DER SubjectPublicKeyInfo). Only where the token wraps private
    /// keys with AES-GCM ([`super::Capabilities::gcm_wraps_private_keys`]).
    pub fn seal_new_key_pair(
        &self,
        key: &SessionKey,
        iv: &[u8; super::GCM_IV_LEN],
        aad: &[u8],
        pair: PairKind,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        // Kryoptic 1.5 writes a wrapped EC key's scalar without its leading zero bytes (half
        // of all P-521 keys, 1 in 256 on the other curves); RFC 5915 fixes its length and
        // OpenSSL 3 refuses such a key. The sealed length shows it without the plaintext:
        // shorter than the smallest well-formed PKCS#8 (no optional fields). Such a pair is
        // dropped (session objects; its ciphertext is never returned) and another one made.
        let shortest = match pair {
            PairKind::Ec(curve) => Some(
                der::pkcs8_ec(curve, &[1], None)
                    .map_err(|e| HsmError::Misbehaved(format!("PKCS#8 length: {e}")))?
                    .len()
                    + super::aead::GCM_TAG_LEN,
            ),
            _ => None,
        };
        for _ in 0..SHORT_SCALAR_TRIES {
            let used = std::cell::RefCell::new(*iv);
            let (sealed, spki) = expecting_slow(|| {
                self.call(|s| {
                    let mut u = used.borrow_mut();
                    *u = *iv;
                    let params = super::aead::gcm_params(&mut u, aad)?;
                    self.count(|c| &c.generate_key_calls);
                    with_session_pair(
                        s,
                        pair,
                        PrivateUsage::Sign,
                        Keeping::Wrappable,
                        |public, private| {
                            self.count(|c| &c.wrap_calls);
                            let sealed =
                                s.wrap_key(&Mechanism::AesGcm(params), key.handle, private)?;
                            Ok((sealed, read_public(s, public, pair)))
                        },
                    )
                })
            })?;
            if used.into_inner() != *iv {
                return Err(HsmError::Misbehaved(
                    "the token replaced the AES-GCM IV p11kms supplied; refusing the output".into(),
                ));
            }
            if shortest.is_some_and(|min| sealed.len() < min) {
                continue;
            }
            return Ok((sealed, spki?));
        }
        Err(HsmError::Misbehaved(format!(
            "the token's wrapped {pair:?} private keys were {SHORT_SCALAR_TRIES} times in a row \
             shorter than a well-formed PKCS#8"
        )))
    }
}

/// Fills `caps.private_key_gcm_wrap`: can the token wrap a (P-256) private key with AES-GCM
/// under a caller IV, into something `C_Decrypt` opens? Tried on throwaway session objects.
pub(crate) fn probe_private_key_wrap(s: &Session, caps: &mut super::Capabilities) {
    if !(caps.gcm_wrap() && caps.asymmetric.ec_key_pair_gen.generate_key_pair) {
        return;
    }
    let try_it = || -> Result<bool> {
        let wrapping = KeyTemplate::aes256()
            .usages(Usages::ENCRYPT_DECRYPT_WRAP)
            .build();
        let wrapping = Transient {
            handle: s.generate_key(&Mechanism::AesKeyGen, &wrapping)?,
            session: s,
        };
        let pair = PairKind::Ec(Curve::P256);
        let sealed = with_session_pair(
            s,
            pair,
            PrivateUsage::Sign,
            Keeping::Wrappable,
            |_, private| {
                let mut iv = [0x24u8; super::GCM_IV_LEN];
                s.wrap_key(
                    &Mechanism::AesGcm(super::aead::gcm_params(&mut iv, b"probe")?),
                    wrapping.handle,
                    private,
                )
            },
        )?;
        let mut iv = [0x24u8; super::GCM_IV_LEN];
        let opened = Zeroizing::new(s.decrypt(
            &Mechanism::AesGcm(super::aead::gcm_params(&mut iv, b"probe")?),
            wrapping.handle,
            &sealed,
        )?);
        Ok(opened.first() == Some(&0x30))
    };
    caps.private_key_gcm_wrap = try_it().unwrap_or(false);
}

/// Fills `caps.ed25519ph`: does `CKM_EDDSA` with the Ed25519ph flag make an Ed25519ph
/// signature? Ed25519 is deterministic, so a token that ignores the flag (SoftHSM 2.6) gives
/// the pure signature of the same bytes: served as ED25519_PH_SHA_512, it would be a wrong
/// signature, and Verify would take pure signatures of a digest for prehashed ones. Tried
/// on a throwaway session key pair.
pub(crate) fn probe_ed25519ph(s: &Session, caps: &mut super::Capabilities) {
    let m = &caps.asymmetric;
    if !(m.ec_edwards_key_pair_gen.generate_key_pair && m.eddsa.sign) {
        return;
    }
    let try_it = || -> Result<bool> {
        let data = [0x5a; 64];
        let (pure, ph) = with_session_pair(
            s,
            PairKind::Ed25519,
            PrivateUsage::Sign,
            Keeping::Wrappable,
            |_, private| {
                let pure = with_sign_mechanism(SignScheme::Ed25519, |m| s.sign(m, private, &data))?;
                let ph = with_sign_mechanism(SignScheme::Ed25519Ph, |m| s.sign(m, private, &data))?;
                Ok((pure, ph))
            },
        )?;
        Ok(ph.len() == 64 && ph != pure)
    };
    caps.ed25519ph = try_it().unwrap_or(false);
}

/// Fills `caps.ec_curves`: the curves `CKM_EC_KEY_PAIR_GEN` makes key pairs on, tried on
/// throwaway session key pairs. The mechanism list cannot say: Kryoptic 1.5 lists the
/// mechanism, has no secp256k1, and answers `CKR_GENERAL_ERROR` for it. A failure this token
/// may retry is tried again, so that a busy token does not lose a curve for the process's life.
pub(crate) fn probe_ec_curves(s: &Session, quirks: super::Quirks, caps: &mut super::Capabilities) {
    if !caps.asymmetric.ec_key_pair_gen.generate_key_pair {
        return;
    }
    let generates = |pair: PairKind| {
        for _ in 0..3 {
            match with_session_pair(s, pair, PrivateUsage::Sign, Keeping::Wrappable, |_, _| {
                Ok(())
            }) {
                Ok(()) => return true,
                Err(e) if CallError::from(&e).read_with(quirks, false).is_transient() => {}
                Err(_) => return false,
            }
        }
        false
    };
    caps.ec_curves = Curve::ALL
        .into_iter()
        .filter(|c| generates(PairKind::Ec(*c)))
        .map(super::caps::curve_name)
        .collect();
}
