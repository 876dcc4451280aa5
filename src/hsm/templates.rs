//! One builder for the templates of the secret keys p11kms asks a token for: CMKs, derived
//! epoch keys, in-token data keys and the capability probes' throwaway keys. Every usage is
//! written out explicitly, true or false: tokens disagree on defaults (SoftHSM turns ENCRYPT,
//! SIGN... on, Kryoptic off), and a CMK that could also encrypt would let the host compute
//! derived keys in plaintext.

use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::types::Ulong;

/// What a key may be used for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usages {
    pub encrypt: bool,
    pub decrypt: bool,
    pub sign: bool,
    pub verify: bool,
    pub wrap: bool,
    pub unwrap: bool,
    pub derive: bool,
}

impl Usages {
    /// Nothing at all (a data key that is only ever wrapped).
    pub const NONE: Usages = Usages {
        encrypt: false,
        decrypt: false,
        sign: false,
        verify: false,
        wrap: false,
        unwrap: false,
        derive: false,
    };
    /// Derivation only (CMKs).
    pub const DERIVE: Usages = Usages {
        derive: true,
        ..Usages::NONE
    };
    /// AES-GCM sealing and opening (epoch keys on the host sealing path).
    pub const ENCRYPT_DECRYPT: Usages = Usages {
        encrypt: true,
        decrypt: true,
        ..Usages::NONE
    };
    /// Sealing and opening, also of keys generated in the token (the in-token path).
    pub const ENCRYPT_DECRYPT_WRAP: Usages = Usages {
        wrap: true,
        unwrap: true,
        ..Usages::ENCRYPT_DECRYPT
    };
}

/// A secret-key template under construction.
#[derive(Debug, Clone)]
pub(crate) struct KeyTemplate(Vec<Attribute>);

impl KeyTemplate {
    /// A private secret key of `key_type` and `len` bytes, a session object, sensitive and
    /// never extractable, with no usage: each of those can be changed below.
    pub fn secret(key_type: KeyType, len: usize) -> KeyTemplate {
        KeyTemplate(vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(key_type),
            Attribute::ValueLen(Ulong::new(len as _)),
            Attribute::Token(false),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
        ])
        .usages(Usages::NONE)
    }

    /// An AES-256 key (see [`KeyTemplate::secret`]).
    pub fn aes256() -> KeyTemplate {
        KeyTemplate::secret(KeyType::AES, 32)
    }

    fn set(mut self, a: Attribute) -> KeyTemplate {
        let t = a.attribute_type();
        self.0.retain(|b| b.attribute_type() != t);
        self.0.push(a);
        self
    }

    /// A token object (persistent) instead of a session object.
    pub fn token_object(self) -> KeyTemplate {
        self.set(Attribute::Token(true))
    }

    pub fn sensitive(self, v: bool) -> KeyTemplate {
        self.set(Attribute::Sensitive(v))
    }

    pub fn extractable(self, v: bool) -> KeyTemplate {
        self.set(Attribute::Extractable(v))
    }

    pub fn modifiable(self, v: bool) -> KeyTemplate {
        self.set(Attribute::Modifiable(v))
    }

    /// Every usage set as `u` says, explicitly.
    pub fn usages(self, u: Usages) -> KeyTemplate {
        self.set(Attribute::Encrypt(u.encrypt))
            .set(Attribute::Decrypt(u.decrypt))
            .set(Attribute::Sign(u.sign))
            .set(Attribute::Verify(u.verify))
            .set(Attribute::Wrap(u.wrap))
            .set(Attribute::Unwrap(u.unwrap))
            .set(Attribute::Derive(u.derive))
    }

    pub fn label(self, label: &str) -> KeyTemplate {
        self.set(Attribute::Label(label.as_bytes().to_vec()))
    }

    pub fn id(self, id: &[u8]) -> KeyTemplate {
        self.set(Attribute::Id(id.to_vec()))
    }

    /// `CKA_ALLOWED_MECHANISMS`: the key can be used with these mechanisms only.
    pub fn allowed_mechanisms(self, m: Vec<MechanismType>) -> KeyTemplate {
        self.set(Attribute::AllowedMechanisms(m))
    }

    /// Without `CKA_VALUE_LEN`: `C_UnwrapKey` takes the length from the value it unwraps
    /// (tokens refuse or ignore a length given with it), and the caller checks it after.
    pub fn unwrapped(mut self) -> KeyTemplate {
        self.0
            .retain(|a| a.attribute_type() != AttributeType::ValueLen);
        self
    }

    pub fn build(self) -> Vec<Attribute> {
        self.0
    }
}

/// What every key derived from a CMK must be: `CKA_DERIVE_TEMPLATE` of CMKs on tokens that
/// enforce it, so that nobody holding the PIN can derive a readable copy of an epoch key.
pub(crate) fn derived_keys_stay_secret() -> [Attribute; 2] {
    [Attribute::Sensitive(true), Attribute::Extractable(false)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(t: &[Attribute], a: &Attribute) -> bool {
        t.contains(a)
    }

    #[test]
    fn every_usage_is_explicit_and_later_settings_win() {
        let t = KeyTemplate::aes256()
            .token_object()
            .usages(Usages::DERIVE)
            .sensitive(true)
            .label("l")
            .label("m")
            .build();
        for a in [
            Attribute::Derive(true),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Token(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Private(true),
            Attribute::Label(b"m".to_vec()),
        ] {
            assert!(has(&t, &a), "{a:?} in {t:?}");
        }
        // No attribute twice.
        let mut types: Vec<AttributeType> = t.iter().map(Attribute::attribute_type).collect();
        let n = types.len();
        types.sort_by_key(|t| format!("{t:?}"));
        types.dedup();
        assert_eq!(types.len(), n);
        let s = KeyTemplate::secret(KeyType::GENERIC_SECRET, 7).build();
        assert!(has(&s, &Attribute::Token(false)) && has(&s, &Attribute::Derive(false)));
    }
}
