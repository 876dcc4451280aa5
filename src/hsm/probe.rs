//! The functional capability probes: what mechanism flags cannot promise, tried on throwaway
//! session objects at open (a few ms): which derivations really derive from a derive-only,
//! mechanism-pinned key; whether AES-GCM takes the caller's IV and gives ciphertext ‖ tag;
//! whether a data key generated in the token wraps into the same bytes; what the token does
//! with `CKA_DERIVE_TEMPLATE`; and what it answers when asked for a readable derived key.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;
use zeroize::Zeroizing;

use super::aead::{data_key_mechanism, data_key_template, gcm_params, GCM_IV_LEN, GCM_TAG_LEN};
use super::caps::{Capabilities, DeriveTemplateSupport, InTokenDataKeys};
use super::derived::{epoch_template, with_kdf, Transient};
use super::raw::RawModule;
use super::templates::{derived_keys_stay_secret, KeyTemplate, Usages};
use super::{CallError, HsmError, Kdf};

/// What a token did when asked to derive a non-sensitive, extractable key from a CMK.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExposedDerivation {
    /// The token refused (the answer it gave).
    Refused(String),
    /// The token derived a key but made it sensitive and non-extractable anyway.
    CameOutSensitive,
    /// The token derived a non-sensitive key.
    Exposed {
        /// Its `CKA_VALUE` was readable too.
        value_read: bool,
    },
}

/// Derives from `base` with a template asking for a readable key; see [`ExposedDerivation`].
pub(super) fn exposed_derivation(
    s: &Session,
    base: ObjectHandle,
    kdf: Kdf,
    nonce: &[u8; 32],
) -> ExposedDerivation {
    let template = KeyTemplate::aes256()
        .sensitive(false)
        .extractable(true)
        .usages(Usages {
            encrypt: true,
            ..Usages::NONE
        })
        .build();
    let derived = with_kdf(kdf, nonce, |mech| s.derive_key(mech, base, &template));
    let key = match derived {
        Ok(h) => Transient {
            session: s,
            handle: h,
        },
        Err(e) => return ExposedDerivation::Refused(CallError::from(&e).code()),
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

/// A throwaway AES-256 session key for the probes: sensitive, never extractable, with these
/// usages (and any other attribute `more` adds).
fn probe_key(
    s: &Session,
    usages: Usages,
    more: impl FnOnce(KeyTemplate) -> KeyTemplate,
) -> std::result::Result<ObjectHandle, HsmError> {
    let t = more(KeyTemplate::aes256().usages(usages)).build();
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
    let wrapping = match probe_key(s, Usages::ENCRYPT_DECRYPT_WRAP, |t| t) {
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
    // Derive-only and modifiable, as CMKs are.
    let derive_only = || {
        KeyTemplate::aes256()
            .usages(Usages::DERIVE)
            .modifiable(true)
    };
    let mut support = DeriveTemplateSupport::default();
    if let Ok(h) = probe_key(s, Usages::DERIVE, |t| t.modifiable(true)) {
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
    if let Ok(h) = raw.generate_key_with_derive_template(
        s,
        cryptoki_sys::CKM_AES_KEY_GEN,
        &derive_only().build(),
        &derived_keys_stay_secret(),
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
    let encrypt = Usages {
        encrypt: true,
        ..Usages::NONE
    };
    let Ok(h) = probe_key(s, encrypt, |t| t) else {
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
        let pinned = probe_key(s, Usages::DERIVE, |t| {
            t.allowed_mechanisms(vec![kdf.mechanism_type()])
        });
        let Ok(h) = pinned.or_else(|_| probe_key(s, Usages::DERIVE, |t| t)) else {
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
