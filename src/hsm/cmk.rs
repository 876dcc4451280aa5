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
    pub fn judge(label: &str, found: &[(K, CmkAttributes)], expected_id: &[u8]) -> Self {
        let why = match found {
            [] => return Lookup::Missing,
            [(h, attrs)] => match attrs.verify(expected_id) {
                Ok(()) => return Lookup::Found(*h),
                Err(why) => format!("the token object labelled {label} is refused: {why}"),
            },
            more => format!(
                "{} secret keys in the token are labelled {label}: refusing to use any of them \
                 (someone holding the token PIN created the extra ones)",
                more.len()
            ),
        };
        tracing::error!(target: "p11kms::custody", label, "{why}");
        Lookup::Refused(why)
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

    /// The attributes of a genuine CMK with `CKA_ID = id` (for tests of the rules that use
    /// them, without a token).
    #[cfg(test)]
    pub(crate) fn genuine_for_tests(id: &[u8]) -> CmkAttributes {
        CmkAttributes {
            key_type: Some(KeyType::AES),
            value_len: Some(32),
            id: Some(id.to_vec()),
            local: Some(true),
            never_extractable: Some(true),
            always_sensitive: Some(true),
            sensitive: Some(true),
            extractable: Some(false),
            other_usages: Vec::new(),
        }
    }

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
        if self.value_len != Some(32) {
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

/// A CMK as listed: its label, handle, whether the token lets it derive now, and the
/// attributes that must prove it genuine before it is used ([`CmkAttributes::verify`]).
#[derive(Debug, Clone)]
pub struct Listed<K> {
    /// `CKA_LABEL`.
    pub label: String,
    /// The object's handle.
    pub handle: K,
    /// `CKA_DERIVE` as the token reports it.
    pub derive: bool,
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
    /// `CKA_SIGN`.
    pub sign: bool,
    /// `CKA_DERIVE`.
    pub derive: bool,
    /// Whether reading `CKA_VALUE` returned bytes (it must not).
    pub value_readable: bool,
}

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
            let find = || match self.find_cmk(label, id)? {
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
    pub fn find_cmk(&self, label: &str, expected_id: &[u8]) -> Result<CmkLookup> {
        let mut found = Vec::new();
        for h in self.find_cmks(label)? {
            match self.handle_call(|s| s.get_attributes(h.0, &CmkAttributes::TYPES)) {
                Ok(a) => found.push((h, CmkAttributes::from_attributes(a))),
                Err(e) if e.is_stale_handle() => {}
                Err(e) => return Err(e),
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
        })?;
        Ok(found.into_iter().map(CmkHandle).collect())
    }

    /// Handles of every token secret key, then `read` of each (one call per key; a key
    /// another process destroyed meanwhile is skipped).
    fn each_secret_key<T>(
        &self,
        types: &[AttributeType],
        mut keep: impl FnMut(ObjectHandle, Vec<Attribute>) -> Option<T>,
    ) -> Result<Vec<T>> {
        let handles = self.call(|s| {
            s.find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Token(true),
            ])
        })?;
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

    /// Labels and handles of every token secret key whose label starts with `prefix`.
    pub fn list_cmks(&self, prefix: &str) -> Result<Vec<(String, CmkHandle)>> {
        self.each_secret_key(&[AttributeType::Label], |h, attrs| {
            label_of(&attrs)
                .filter(|l| l.starts_with(prefix))
                .map(|l| (l, CmkHandle(h)))
        })
    }

    /// Every token secret key whose label starts with `prefix`, with its `CKA_DERIVE` and
    /// identity attributes (start-up and large re-lists: one search, one read per key, never
    /// one search per key: on SoftHSM every search costs ~26 µs per object in the token).
    pub fn list_cmks_detailed(&self, prefix: &str) -> Result<Vec<ListedCmk>> {
        let mut types = vec![AttributeType::Label, AttributeType::Derive];
        types.extend(CmkAttributes::TYPES);
        self.each_secret_key(&types, |h, attrs| {
            let label = label_of(&attrs).filter(|l| l.starts_with(prefix))?;
            let derive = attrs.contains(&Attribute::Derive(true));
            Some(ListedCmk {
                label,
                handle: CmkHandle(h),
                derive,
                attributes: CmkAttributes::from_attributes(attrs),
            })
        })
    }

    /// Turns derivation from a CMK on or off at the token level, so a disabled key is
    /// unusable even to a process that still believes it is enabled.
    pub fn set_cmk_usable(&self, cmk: CmkHandle, usable: bool) -> Result<()> {
        self.handle_call(|s| s.update_attributes(cmk.0, &[Attribute::Derive(usable)]))
    }

    /// Whether the CMK currently allows derivation.
    pub fn cmk_usable(&self, cmk: CmkHandle) -> Result<bool> {
        let attrs = self.handle_call(|s| s.get_attributes(cmk.0, &[AttributeType::Derive]))?;
        Ok(attrs.contains(&Attribute::Derive(true)))
    }

    /// Destroys a CMK. Irreversible: every blob sealed under it becomes undecryptable.
    pub fn destroy_cmk(&self, cmk: CmkHandle) -> Result<()> {
        match self.handle_call(|s| s.destroy_object(cmk.0)) {
            Ok(()) => Ok(()),
            Err(e) if e.is_stale_handle() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads the attributes that prove custody of a CMK: (sensitive, extractable,
    /// always_sensitive, never_extractable), and whether `CKA_VALUE` can be read (it must not).
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
                    AttributeType::Sign,
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
                Attribute::Sign(v) => c.sign = v,
                Attribute::Derive(v) => c.derive = v,
                _ => {}
            }
        }
        // Asked on its own: an error here (CKR_ATTRIBUTE_SENSITIVE) is the expected answer.
        c.value_readable = self
            .handle_call(|s| s.get_attributes(cmk.0, &[AttributeType::Value]))
            .is_ok_and(|attrs| attrs.iter().any(|a| matches!(a, Attribute::Value(_))));
        Ok(c)
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
