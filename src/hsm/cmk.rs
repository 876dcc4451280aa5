//! The CMK family: AES-256 backing keys, token objects, derive-only, generated in the token and
//! never extractable. Generating them, finding them by label (and proving they are genuine),
//! turning derivation off and on, destroying them, and reading the attributes that prove
//! their custody. (Another key family, such as asymmetric key pairs, gets a module of its own
//! beside this one.)

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};

use super::probe::{exposed_derivation, ExposedDerivation};
use super::templates::{derived_keys_stay_secret, KeyTemplate, Usages};
use super::{HsmError, Kdf, Result, Token};
use crate::der::Curve;

/// A CMK backing key (a token object). Only a handle: the key itself never leaves the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmkHandle(pub(super) ObjectHandle);

/// The CMK template: derive-only, and pinned to `kdf`'s mechanism where the token accepts
/// `CKA_ALLOWED_MECHANISMS` (`pinned`). Modifiable, so that disabling a key can clear
/// `CKA_DERIVE`.
fn cmk_template(label: &str, id: &[u8], kdf: Kdf, pinned: bool) -> Vec<Attribute> {
    let t = KeyTemplate::aes256()
        .token_object()
        .modifiable(true)
        .usages(Usages::DERIVE)
        .label(label)
        .id(id);
    if pinned {
        t.allowed_mechanisms(vec![kdf.mechanism_type()]).build()
    } else {
        t.build()
    }
}

/// What a label lookup of a CMK found (`K`: the handle type; [`CmkHandle`] in a token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<K> {
    /// Exactly one object, proven to be a CMK p11kms generated in this token.
    Found(K),
    /// No object under the label.
    Missing,
    /// An object (or several) under the label that must not be used; why, for the log and
    /// the caller.
    Refused(String),
}

/// A lookup in a token.
pub type CmkLookup = Lookup<CmkHandle>;

impl<K: Copy> Lookup<K> {
    /// Judges what the token holds under a CMK's label: exactly one object, whose attributes
    /// prove it genuine ([`CmkAttributes::verify`]). Two objects under one label are refused
    /// (one of them was planted, and guessing which is not p11kms's job). Refusals are
    /// logged, loudly: they mean someone holding the PIN changed the token.
    pub fn judge(
        label: &str,
        found: &[(K, CmkAttributes)],
        expected_id: &[u8],
        kind: BackingKind,
    ) -> Self {
        let why = match found {
            [] => return Lookup::Missing,
            [(h, attrs)] => match attrs.verify(expected_id, kind) {
                Ok(()) => return Lookup::Found(*h),
                Err(why) => format!("the token object labelled {label} is refused: {why}"),
            },
            more => format!(
                "{} keys in the token are labelled {label}: refusing to use any of them \
                 (someone holding the token PIN created the extra ones)",
                more.len()
            ),
        };
        tracing::error!(target: "p11kms::custody", label, "{why}");
        Lookup::Refused(why)
    }
}

/// What backs one version of a KMS key, as the token must prove it: the kind decides the
/// class, type, size and the one usage a genuine object has. Chosen by `kms` from the key's
/// record (its spec and usage), never from what the token happens to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackingKind {
    /// AES-256, derive-only: epoch keys are derived from it (symmetric encryption keys).
    Derive,
    /// The same, but its value was imported (`C_UnwrapKey` of key material the key's owner
    /// made outside the token; KMS keys with `Origin=EXTERNAL`). Such an object cannot prove
    /// that nobody ever held its value: it is neither `CKA_LOCAL` nor `CKA_NEVER_EXTRACTABLE`
    /// (nor, on some tokens, `CKA_ALWAYS_SENSITIVE`), so those three are not asked of it;
    /// everything else is, as for [`BackingKind::Derive`]. Only `kms` chooses this kind, from
    /// a record that says the key's material is imported, never from the token's attributes:
    /// an object under the label of a generated key must still prove `CKA_LOCAL`.
    Imported,
    /// A generic secret of `bytes` bytes, sign and verify only (HMAC keys).
    Hmac {
        /// `CKA_VALUE_LEN`.
        bytes: usize,
    },
    /// The private half of a key pair, limited to its one usage. (The public half is not
    /// kept in the token: it is public, and lives in the key's record.)
    Private {
        /// The algorithm and size.
        pair: PairKind,
        /// The one thing it may do.
        usage: PrivateUsage,
    },
}

/// A key pair's algorithm and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PairKind {
    /// RSA with a modulus of `bits` bits (public exponent 65537).
    Rsa {
        /// Modulus length.
        bits: usize,
    },
    /// ECDSA/ECDH over a Weierstrass curve.
    Ec(Curve),
    /// Ed25519 (`CKK_EC_EDWARDS`).
    Ed25519,
}

/// The one usage of a private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrivateUsage {
    /// `CKA_SIGN`.
    Sign,
    /// `CKA_DECRYPT`.
    Decrypt,
    /// `CKA_DERIVE` (ECDH).
    Derive,
}

impl BackingKind {
    /// The usage attributes a genuine object of this kind may have switched on; all of them
    /// are switched off while its KMS key is disabled.
    pub(crate) fn usages(self) -> &'static [&'static str] {
        match self {
            BackingKind::Derive | BackingKind::Imported => &["CKA_DERIVE"],
            BackingKind::Hmac { .. } => &["CKA_SIGN", "CKA_VERIFY"],
            BackingKind::Private { usage, .. } => match usage {
                PrivateUsage::Sign => &["CKA_SIGN"],
                PrivateUsage::Decrypt => &["CKA_DECRYPT"],
                PrivateUsage::Derive => &["CKA_DERIVE"],
            },
        }
    }

    /// `C_SetAttributeValue` template that switches this kind's usages on or off.
    pub(crate) fn usage_template(self, on: bool) -> Vec<Attribute> {
        self.usages()
            .iter()
            .filter_map(|u| match *u {
                "CKA_DERIVE" => Some(Attribute::Derive(on)),
                "CKA_SIGN" => Some(Attribute::Sign(on)),
                "CKA_VERIFY" => Some(Attribute::Verify(on)),
                "CKA_DECRYPT" => Some(Attribute::Decrypt(on)),
                _ => None,
            })
            .collect()
    }

    fn class(self) -> ObjectClass {
        match self {
            BackingKind::Derive | BackingKind::Imported | BackingKind::Hmac { .. } => {
                ObjectClass::SECRET_KEY
            }
            BackingKind::Private { .. } => ObjectClass::PRIVATE_KEY,
        }
    }

    fn describe(self) -> String {
        match self {
            BackingKind::Derive => "an AES-256 derive-only key".into(),
            BackingKind::Imported => "an AES-256 derive-only key (imported)".into(),
            BackingKind::Hmac { bytes } => format!("a {bytes}-byte generic secret"),
            BackingKind::Private { pair, .. } => match pair {
                PairKind::Rsa { bits } => format!("an RSA-{bits} private key"),
                PairKind::Ec(c) => format!("an EC private key on {c:?}"),
                PairKind::Ed25519 => "an Ed25519 private key".into(),
            },
        }
    }
}

/// The attributes of a key object that prove it is a backing key as p11kms makes them:
/// generated in this token (`CKA_LOCAL`), always sensitive and never extractable (so nobody
/// ever held its value), of the expected kind and size, with no usage beyond its kind's, and
/// with the `CKA_ID` p11kms wrote. A key created from a known value with `C_CreateObject` or
/// `C_UnwrapKey` has `CKA_LOCAL` false and is refused, unless its kind is
/// [`BackingKind::Imported`] (a record that says its material was imported).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmkAttributes {
    class: Option<ObjectClass>,
    key_type: Option<KeyType>,
    value_len: Option<u64>,
    modulus_len: Option<usize>,
    ec_params: Option<Vec<u8>>,
    id: Option<Vec<u8>>,
    local: Option<bool>,
    never_extractable: Option<bool>,
    always_sensitive: Option<bool>,
    sensitive: Option<bool>,
    extractable: Option<bool>,
    /// Usages that are switched on.
    usages_on: Vec<&'static str>,
}

impl CmkAttributes {
    /// Everything [`CmkAttributes::verify`] looks at, read in one `C_GetAttributeValue`
    /// (a token answers "invalid" for those its object class lacks: they are left out).
    pub(crate) const TYPES: [AttributeType; 19] = [
        AttributeType::Class,
        AttributeType::KeyType,
        AttributeType::ValueLen,
        AttributeType::Modulus,
        AttributeType::EcParams,
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
        AttributeType::Derive,
        AttributeType::SignRecover,
    ];

    /// The attributes of a genuine CMK with `CKA_ID = id` (for tests of the rules that use
    /// them, without a token).
    #[cfg(test)]
    pub(crate) fn genuine_for_tests(id: &[u8]) -> CmkAttributes {
        CmkAttributes {
            class: Some(ObjectClass::SECRET_KEY),
            key_type: Some(KeyType::AES),
            value_len: Some(32),
            modulus_len: None,
            ec_params: None,
            id: Some(id.to_vec()),
            local: Some(true),
            never_extractable: Some(true),
            always_sensitive: Some(true),
            sensitive: Some(true),
            extractable: Some(false),
            usages_on: vec!["CKA_DERIVE"],
        }
    }

    pub(crate) fn from_attributes(attrs: Vec<Attribute>) -> CmkAttributes {
        let mut c = CmkAttributes::default();
        for a in attrs {
            match a {
                Attribute::Class(k) => c.class = Some(k),
                Attribute::KeyType(t) => c.key_type = Some(t),
                Attribute::ValueLen(n) => c.value_len = Some(u64::from(n)),
                Attribute::Modulus(m) => {
                    c.modulus_len = Some(m.iter().skip_while(|b| **b == 0).count())
                }
                Attribute::EcParams(p) => c.ec_params = Some(p),
                Attribute::Id(id) => c.id = Some(id),
                Attribute::Local(v) => c.local = Some(v),
                Attribute::NeverExtractable(v) => c.never_extractable = Some(v),
                Attribute::AlwaysSensitive(v) => c.always_sensitive = Some(v),
                Attribute::Sensitive(v) => c.sensitive = Some(v),
                Attribute::Extractable(v) => c.extractable = Some(v),
                Attribute::Encrypt(true) => c.usages_on.push("CKA_ENCRYPT"),
                Attribute::Decrypt(true) => c.usages_on.push("CKA_DECRYPT"),
                Attribute::Sign(true) => c.usages_on.push("CKA_SIGN"),
                Attribute::Verify(true) => c.usages_on.push("CKA_VERIFY"),
                Attribute::Wrap(true) => c.usages_on.push("CKA_WRAP"),
                Attribute::Unwrap(true) => c.usages_on.push("CKA_UNWRAP"),
                Attribute::Derive(true) => c.usages_on.push("CKA_DERIVE"),
                Attribute::SignRecover(true) => c.usages_on.push("CKA_SIGN_RECOVER"),
                _ => {}
            }
        }
        c
    }

    /// Whether the token lets this object do its kind's work now (its usages are on: a
    /// disabled key's are off).
    pub fn usable(&self, kind: BackingKind) -> bool {
        kind.usages().iter().all(|u| self.usages_on.contains(u))
    }

    /// `Ok` if these attributes prove a backing key of `kind` that p11kms generated with
    /// `CKA_ID = expected_id`; otherwise every reason it is refused. An attribute the token
    /// does not report counts as not proven.
    pub fn verify(&self, expected_id: &[u8], kind: BackingKind) -> std::result::Result<(), String> {
        let mut why = Vec::new();
        let shape = match kind {
            BackingKind::Derive => {
                self.key_type == Some(KeyType::AES) && self.value_len == Some(32)
            }
            // SoftHSM 2.6 records no CKA_VALUE_LEN for unwrapped keys (it reads 0): the
            // length was measured in the token when the material was imported.
            BackingKind::Imported => {
                self.key_type == Some(KeyType::AES) && matches!(self.value_len, Some(32 | 0))
            }
            BackingKind::Hmac { bytes } => {
                self.key_type == Some(KeyType::GENERIC_SECRET)
                    && self.value_len == Some(bytes as u64)
            }
            BackingKind::Private { pair, .. } => match pair {
                PairKind::Rsa { bits } => {
                    self.key_type == Some(KeyType::RSA) && self.modulus_len == Some(bits / 8)
                }
                PairKind::Ec(curve) => {
                    self.key_type == Some(KeyType::EC)
                        && self.ec_params.as_deref() == Some(curve.oid_der())
                }
                PairKind::Ed25519 => {
                    self.key_type == Some(KeyType::EC_EDWARDS)
                        && self
                            .ec_params
                            .as_deref()
                            .is_some_and(crate::der::is_ed25519_ec_params)
                }
            },
        };
        if self.class != Some(kind.class()) || !shape {
            why.push(format!("it is not {}", kind.describe()));
        }
        if self.id.as_deref() != Some(expected_id) {
            why.push("its CKA_ID is not the one p11kms wrote".to_string());
        }
        // An imported key's history is its owner's to vouch for (docs/key-custody.md): only
        // what it is now is asked of it.
        let history = kind != BackingKind::Imported;
        for (name, value, want, asked) in [
            ("CKA_LOCAL", self.local, true, history),
            (
                "CKA_NEVER_EXTRACTABLE",
                self.never_extractable,
                true,
                history,
            ),
            ("CKA_ALWAYS_SENSITIVE", self.always_sensitive, true, history),
            ("CKA_SENSITIVE", self.sensitive, true, true),
            ("CKA_EXTRACTABLE", self.extractable, false, true),
        ] {
            if !asked {
                continue;
            }
            match value {
                Some(v) if v == want => {}
                Some(v) => why.push(format!("{name} is {v}")),
                None => why.push(format!("the token does not report {name}")),
            }
        }
        let extra: Vec<&str> = self
            .usages_on
            .iter()
            .copied()
            .filter(|u| !kind.usages().contains(u))
            .collect();
        if !extra.is_empty() {
            why.push(format!(
                "it allows {} besides {}",
                extra.join(", "),
                kind.usages().join(", ")
            ));
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }
}

/// A backing key as listed: its label, handle, and the attributes that must prove it genuine before it is used ([`CmkAttributes::verify`]).
#[derive(Debug, Clone)]
pub struct Listed<K> {
    /// `CKA_LABEL`.
    pub label: String,
    /// The object's handle.
    pub handle: K,
    /// What proves (or disproves) the object genuine.
    pub attributes: CmkAttributes,
}

/// A CMK of a token, as listed.
pub type ListedCmk = Listed<CmkHandle>;

/// The custody attributes of a CMK as the token reports them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CmkCustody {
    /// `CKA_SENSITIVE`.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`.
    pub extractable: bool,
    /// `CKA_ALWAYS_SENSITIVE`.
    pub always_sensitive: bool,
    /// `CKA_NEVER_EXTRACTABLE`.
    pub never_extractable: bool,
    /// `CKA_ENCRYPT`.
    pub encrypt: bool,
    /// `CKA_DECRYPT`.
    pub decrypt: bool,
    /// `CKA_SIGN`.
    pub sign: bool,
    /// `CKA_VERIFY`.
    pub verify: bool,
    /// `CKA_DERIVE`.
    pub derive: bool,
    /// Whether reading `CKA_VALUE` returned bytes (it must not).
    pub value_readable: bool,
    /// Whether reading any private part of an RSA key (`CKA_PRIVATE_EXPONENT`, the primes,
    /// the CRT exponents or coefficient) returned bytes (it must not).
    pub private_parts_readable: bool,
}

/// The object classes a backing key can have.
const BACKING_CLASSES: [ObjectClass; 2] = [ObjectClass::SECRET_KEY, ObjectClass::PRIVATE_KEY];

fn label_of(attrs: &[Attribute]) -> Option<String> {
    attrs.iter().find_map(|a| match a {
        Attribute::Label(l) => String::from_utf8(l.clone()).ok(),
        _ => None,
    })
}

impl Token {
    /// Generates a new AES-256 CMK in the token: derive-only, sensitive, never extractable,
    /// and with `CKA_DERIVE_TEMPLATE` (sensitive, non-extractable) where the token enforces it.
    /// A transiently failed attempt is followed by a look for the key it may have made
    /// (label and `CKA_ID`) before another attempt: one CreateKey never leaves two objects
    /// under one label, which [`Token::find_cmk`] would refuse as ambiguous.
    pub fn generate_cmk(&self, label: &str, id: &[u8], kdf: Kdf) -> Result<CmkHandle> {
        let raw = self
            .inner
            .raw
            .as_ref()
            .filter(|_| self.inner.caps.derive_template.enforced);
        // Most protective first; only a refused template moves on to the next.
        let mut last = None;
        for pinned in [true, false] {
            let template = cmk_template(label, id, kdf, pinned);
            let find = || match self.find_cmk(label, id, BackingKind::Derive)? {
                CmkLookup::Found(h) => Ok(Some(h.0)),
                CmkLookup::Missing => Ok(None),
                CmkLookup::Refused(why) => Err(HsmError::Misbehaved(why)),
            };
            let result = self.create(
                |s| {
                    self.count(|c| &c.generate_key_calls);
                    match raw {
                        Some(raw) => raw.generate_key_with_derive_template(
                            s,
                            cryptoki_sys::CKM_AES_KEY_GEN,
                            &template,
                            &derived_keys_stay_secret(),
                        ),
                        None => s.generate_key(&Mechanism::AesKeyGen, &template),
                    }
                },
                find,
            );
            match result {
                Ok(h) => return Ok(CmkHandle(h)),
                // Tokens without CKA_ALLOWED_MECHANISMS still get a derive-only key.
                Err(e) if e.is_template_refused() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| HsmError::Misbehaved("no CMK template tried".into())))
    }

    /// Finds the CMK labelled `label` and checks that it is the one p11kms generated in this
    /// token ([`CmkLookup::judge`]). Start-up, re-listing and stale-handle recovery only,
    /// never per request.
    pub fn find_cmk(
        &self,
        label: &str,
        expected_id: &[u8],
        kind: BackingKind,
    ) -> Result<CmkLookup> {
        // A search that finds nothing is asked again on a token whose reads can be torn by a
        // concurrent writer (SoftHSM re-reads its object files, and a search made while
        // another thread creates objects can miss one that exists): "missing" makes a key
        // unusable until the next re-list, so it must be what the token holds.
        let tries = if self.inner.quirks.general_error_transient {
            5
        } else {
            1
        };
        let mut found = Vec::new();
        for attempt in 0..tries {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(2 << attempt));
            }
            for h in self.find_cmks(label)? {
                match self.handle_call(|s| s.get_attributes(h.0, &CmkAttributes::TYPES)) {
                    Ok(a) => found.push((h, CmkAttributes::from_attributes(a))),
                    Err(e) if e.is_stale_handle() => {}
                    Err(e) => return Err(e),
                }
            }
            if !found.is_empty() {
                break;
            }
        }
        Ok(CmkLookup::judge(label, &found, expected_id, kind))
    }

    /// Every token secret or private key labelled exactly `label`, unchecked (for destroying
    /// them all).
    pub fn find_cmks(&self, label: &str) -> Result<Vec<CmkHandle>> {
        let mut found = Vec::new();
        for class in BACKING_CLASSES {
            found.extend(self.call(|s| {
                s.find_objects(&[
                    Attribute::Class(class),
                    Attribute::Token(true),
                    Attribute::Label(label.as_bytes().to_vec()),
                ])
            })?);
        }
        Ok(found.into_iter().map(CmkHandle).collect())
    }

    /// Handles of every token secret and private key, then `read` of each (one call per
    /// key; a key another process destroyed meanwhile is skipped).
    fn each_backing_key<T>(
        &self,
        types: &[AttributeType],
        mut keep: impl FnMut(ObjectHandle, Vec<Attribute>) -> Option<T>,
    ) -> Result<Vec<T>> {
        let mut handles = Vec::new();
        for class in BACKING_CLASSES {
            handles.extend(
                self.call(|s| s.find_objects(&[Attribute::Class(class), Attribute::Token(true)]))?,
            );
        }
        let mut out = Vec::new();
        for h in handles {
            match self.handle_call(|s| s.get_attributes(h, types)) {
                Ok(attrs) => out.extend(keep(h, attrs)),
                Err(e) if e.is_stale_handle() => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Labels and handles of every token secret or private key whose label starts with
    /// `prefix`.
    pub fn list_cmks(&self, prefix: &str) -> Result<Vec<(String, CmkHandle)>> {
        self.each_backing_key(&[AttributeType::Label], |h, attrs| {
            label_of(&attrs)
                .filter(|l| l.starts_with(prefix))
                .map(|l| (l, CmkHandle(h)))
        })
    }

    /// Every token secret or private key whose label starts with `prefix`, with its usages
    /// and identity attributes (start-up and large re-lists: one search, one read per key, never
    /// one search per key: on SoftHSM every search costs ~26 µs per object in the token).
    pub fn list_cmks_detailed(&self, prefix: &str) -> Result<Vec<ListedCmk>> {
        let mut types = vec![AttributeType::Label];
        types.extend(CmkAttributes::TYPES);
        self.each_backing_key(&types, |h, attrs| {
            let label = label_of(&attrs).filter(|l| l.starts_with(prefix))?;
            Some(ListedCmk {
                label,
                handle: CmkHandle(h),
                attributes: CmkAttributes::from_attributes(attrs),
            })
        })
    }

    /// Turns a backing key's usages (derivation for a CMK; signing, decryption or
    /// derivation for a private key; MACs for an HMAC key) on or off at the token level, so
    /// a disabled key is unusable even to a process that still believes it is enabled.
    pub fn set_cmk_usable(&self, cmk: CmkHandle, kind: BackingKind, usable: bool) -> Result<()> {
        let template = kind.usage_template(usable);
        self.handle_call(|s| s.update_attributes(cmk.0, &template))
    }

    /// Whether the backing key's usages are on.
    pub fn cmk_usable(&self, cmk: CmkHandle, kind: BackingKind) -> Result<bool> {
        let attrs = self.handle_call(|s| s.get_attributes(cmk.0, &CmkAttributes::TYPES))?;
        Ok(CmkAttributes::from_attributes(attrs).usable(kind))
    }

    /// Destroys a CMK. Irreversible: every blob sealed under it becomes undecryptable.
    pub fn destroy_cmk(&self, cmk: CmkHandle) -> Result<()> {
        match self.handle_call(|s| s.destroy_object(cmk.0)) {
            Ok(()) => Ok(()),
            Err(e) if e.is_stale_handle() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads the attributes that prove custody of a backing key (a CMK, an HMAC key or a
    /// private key): sensitive, extractable, always_sensitive, never_extractable, its usages,
    /// and whether `CKA_VALUE` or an RSA private part can be read (none must).
    pub fn cmk_custody(&self, cmk: CmkHandle) -> Result<CmkCustody> {
        let attrs = self.handle_call(|s| {
            s.get_attributes(
                cmk.0,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                    AttributeType::Encrypt,
                    AttributeType::Decrypt,
                    AttributeType::Sign,
                    AttributeType::Verify,
                    AttributeType::Derive,
                ],
            )
        })?;
        let mut c = CmkCustody::default();
        for a in attrs {
            match a {
                Attribute::Sensitive(v) => c.sensitive = v,
                Attribute::Extractable(v) => c.extractable = v,
                Attribute::AlwaysSensitive(v) => c.always_sensitive = v,
                Attribute::NeverExtractable(v) => c.never_extractable = v,
                Attribute::Encrypt(v) => c.encrypt = v,
                Attribute::Decrypt(v) => c.decrypt = v,
                Attribute::Sign(v) => c.sign = v,
                Attribute::Verify(v) => c.verify = v,
                Attribute::Derive(v) => c.derive = v,
                _ => {}
            }
        }
        c.value_readable = self.secret_readable(cmk, AttributeType::Value);
        c.private_parts_readable = [
            AttributeType::PrivateExponent,
            AttributeType::Prime1,
            AttributeType::Prime2,
            AttributeType::Exponent1,
            AttributeType::Exponent2,
            AttributeType::Coefficient,
        ]
        .into_iter()
        .any(|t| self.secret_readable(cmk, t));
        Ok(c)
    }

    /// Whether the token returns the bytes of the secret attribute `t` of a key. Asked on its
    /// own: an error (`CKR_ATTRIBUTE_SENSITIVE`, or invalid for an object that has no such
    /// attribute) is the expected answer. Whatever comes back is wiped at once.
    fn secret_readable(&self, cmk: CmkHandle, t: AttributeType) -> bool {
        self.handle_call(|s| s.get_attributes(cmk.0, &[t]))
            .is_ok_and(|attrs| {
                let mut got = false;
                for a in attrs {
                    if let Attribute::Value(mut v)
                    | Attribute::PrivateExponent(mut v)
                    | Attribute::Prime1(mut v)
                    | Attribute::Prime2(mut v)
                    | Attribute::Exponent1(mut v)
                    | Attribute::Exponent2(mut v)
                    | Attribute::Coefficient(mut v) = a
                    {
                        got = true;
                        zeroize::Zeroize::zeroize(&mut v);
                    }
                }
                got
            })
    }

    /// Asks the token for a *non-sensitive, extractable* key derived from `cmk` (what someone
    /// holding the PIN could try in order to read an epoch key), reports what it did, and
    /// destroys anything it derived. For custody tests and audits, never used by operations.
    pub fn try_exposed_derivation(&self, cmk: CmkHandle, kdf: Kdf) -> Result<ExposedDerivation> {
        let s = self.inner.pool.get()?;
        self.count(|c| &c.derive_calls);
        Ok(exposed_derivation(&s, cmk.0, kdf, &[0x5a; 32]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attributes of a key unwrapped into the token as p11kms asks (SoftHSM: no
    /// `CKA_VALUE_LEN`; both tokens: neither local nor always sensitive nor never extractable).
    fn unwrapped(id: &[u8], value_len: u64) -> CmkAttributes {
        CmkAttributes {
            value_len: Some(value_len),
            local: Some(false),
            never_extractable: Some(false),
            always_sensitive: Some(false),
            ..CmkAttributes::genuine_for_tests(id)
        }
    }

    #[test]
    fn an_unwrapped_key_passes_only_as_imported_and_only_if_secret_now() {
        let id = [7u8; 20];
        for len in [32, 0] {
            let a = unwrapped(&id, len);
            assert_eq!(a.verify(&id, BackingKind::Imported), Ok(()), "{len}");
            let why = a.verify(&id, BackingKind::Derive).unwrap_err();
            assert!(why.contains("CKA_LOCAL is false"), "{why}");
            assert!(why.contains("CKA_NEVER_EXTRACTABLE is false"), "{why}");
        }
        // What it is now is still asked of an imported key.
        for (a, what) in [
            (
                CmkAttributes {
                    sensitive: Some(false),
                    ..unwrapped(&id, 32)
                },
                "CKA_SENSITIVE is false",
            ),
            (
                CmkAttributes {
                    extractable: Some(true),
                    ..unwrapped(&id, 32)
                },
                "CKA_EXTRACTABLE is true",
            ),
            (
                CmkAttributes {
                    usages_on: vec!["CKA_DERIVE", "CKA_ENCRYPT"],
                    ..unwrapped(&id, 32)
                },
                "CKA_ENCRYPT",
            ),
            (unwrapped(&id, 16), "not an AES-256"),
            (unwrapped(&[8u8; 20], 32), "CKA_ID"),
        ] {
            let why = a.verify(&id, BackingKind::Imported).unwrap_err();
            assert!(why.contains(what), "{why}");
        }
        // A generated CMK is a fine imported key's backing too (nothing weaker).
        assert_eq!(
            CmkAttributes::genuine_for_tests(&id).verify(&id, BackingKind::Imported),
            Ok(())
        );
    }
}
