//! The capability probe: what the token can do, asked mechanism by mechanism.
//!
//! `C_GetMechanismList` through cryptoki 0.12 silently drops mechanisms it has no name for, so
//! each mechanism we care about is asked with `C_GetMechanismInfo` instead.

use cryptoki::context::Pkcs11;
use cryptoki::mechanism::MechanismType;
use cryptoki::slot::Slot;
use serde::Serialize;

use super::{HsmError, Result};
use crate::der::Curve;

/// A curve's name in [`Capabilities::ec_curves`].
pub fn curve_name(c: Curve) -> &'static str {
    match c {
        Curve::P256 => "P-256",
        Curve::P384 => "P-384",
        Curve::P521 => "P-521",
        Curve::Secp256k1 => "secp256k1",
    }
}

/// How an epoch key is derived from a CMK inside the token. The number is stored in every
/// ciphertext blob and in each key's metadata, so it must never change meaning.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Kdf {
    /// `CKM_AES_CBC_ENCRYPT_DATA`, zero IV, over the 32-byte nonce: K = AES-CBC_CMK(nonce).
    AesCbcEncryptData,
    /// `CKM_SP800_108_COUNTER_KDF` with PRF `CKM_AES_CMAC` (NIST SP 800-108r1 counter mode):
    /// K = CMAC_CMK(1 ‖ label ‖ 0x00 ‖ nonce ‖ L) ‖ CMAC_CMK(2 ‖ label ‖ 0x00 ‖ nonce ‖ L), with a
    /// 32-bit big-endian counter, label [`KDF_LABEL`] and L = 256 as 32 bits big-endian.
    #[serde(rename = "SP800_108_COUNTER_CMAC")]
    Sp800108CounterCmac,
}

/// The SP 800-108 label of KDF id 2 (fixed: it is part of every derived key).
pub const KDF_LABEL: &[u8] = b"p11kms epoch key v1";

impl Kdf {
    /// The byte that names this KDF in a ciphertext header.
    pub fn id(self) -> u8 {
        match self {
            Kdf::AesCbcEncryptData => 1,
            Kdf::Sp800108CounterCmac => 2,
        }
    }

    /// The KDF a ciphertext header byte names.
    pub fn from_id(id: u8) -> Option<Kdf> {
        match id {
            1 => Some(Kdf::AesCbcEncryptData),
            2 => Some(Kdf::Sp800108CounterCmac),
            _ => None,
        }
    }

    /// The name shown by `token info` and in records.
    pub fn name(self) -> &'static str {
        match self {
            Kdf::AesCbcEncryptData => "CKM_AES_CBC_ENCRYPT_DATA",
            Kdf::Sp800108CounterCmac => "CKM_SP800_108_COUNTER_KDF/CKM_AES_CMAC",
        }
    }

    pub(crate) fn mechanism_type(self) -> MechanismType {
        match self {
            Kdf::AesCbcEncryptData => MechanismType::AES_CBC_ENCRYPT_DATA,
            Kdf::Sp800108CounterCmac => MechanismType::SP800_108_COUNTER_KDF,
        }
    }
}

/// One mechanism's relevant flags, as the token reports them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MechanismSupport {
    /// The mechanism's PKCS#11 name, e.g. `CKM_AES_GCM`.
    pub name: &'static str,
    /// The token lists the mechanism at all.
    pub present: bool,
    /// `CKF_GENERATE`.
    pub generate: bool,
    /// `CKF_ENCRYPT`.
    pub encrypt: bool,
    /// `CKF_DECRYPT`.
    pub decrypt: bool,
    /// `CKF_WRAP`.
    pub wrap: bool,
    /// `CKF_UNWRAP`.
    pub unwrap: bool,
    /// `CKF_DERIVE`.
    pub derive: bool,
    /// `CKF_SIGN`.
    pub sign: bool,
    /// `CKF_VERIFY`.
    pub verify: bool,
    /// `CKF_GENERATE_KEY_PAIR`.
    pub generate_key_pair: bool,
    /// `ulMaxKeySize` (bits or bytes, as the mechanism defines it).
    pub max_key_size: usize,
}

/// The mechanisms of the asymmetric and HMAC key families (see `hsm::keypair`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AsymmetricMechanisms {
    /// `CKM_RSA_PKCS_KEY_PAIR_GEN`.
    pub rsa_key_pair_gen: MechanismSupport,
    /// `CKM_RSA_PKCS` (PKCS#1 v1.5 signatures over a DigestInfo).
    pub rsa_pkcs: MechanismSupport,
    /// `CKM_RSA_PKCS_PSS`.
    pub rsa_pkcs_pss: MechanismSupport,
    /// `CKM_RSA_PKCS_OAEP`.
    pub rsa_pkcs_oaep: MechanismSupport,
    /// `CKM_RSA_X_509` (raw RSA: OAEP with a hash the token's OAEP refuses).
    pub rsa_x_509: MechanismSupport,
    /// `CKM_EC_KEY_PAIR_GEN`.
    pub ec_key_pair_gen: MechanismSupport,
    /// `CKM_ECDSA`.
    pub ecdsa: MechanismSupport,
    /// `CKM_ECDH1_DERIVE`.
    pub ecdh1_derive: MechanismSupport,
    /// `CKM_EC_EDWARDS_KEY_PAIR_GEN`.
    pub ec_edwards_key_pair_gen: MechanismSupport,
    /// `CKM_EDDSA`.
    pub eddsa: MechanismSupport,
    /// `CKM_SHA224_HMAC`, `CKM_SHA256_HMAC`, `CKM_SHA384_HMAC`, `CKM_SHA512_HMAC`.
    pub hmac: [MechanismSupport; 4],
}

impl AsymmetricMechanisms {
    fn ask(ctx: &Pkcs11, slot: Slot) -> AsymmetricMechanisms {
        let a = |name, ty| ask(ctx, slot, name, ty);
        AsymmetricMechanisms {
            rsa_key_pair_gen: a(
                "CKM_RSA_PKCS_KEY_PAIR_GEN",
                MechanismType::RSA_PKCS_KEY_PAIR_GEN,
            ),
            rsa_pkcs: a("CKM_RSA_PKCS", MechanismType::RSA_PKCS),
            rsa_pkcs_pss: a("CKM_RSA_PKCS_PSS", MechanismType::RSA_PKCS_PSS),
            rsa_pkcs_oaep: a("CKM_RSA_PKCS_OAEP", MechanismType::RSA_PKCS_OAEP),
            rsa_x_509: a("CKM_RSA_X_509", MechanismType::RSA_X_509),
            ec_key_pair_gen: a("CKM_EC_KEY_PAIR_GEN", MechanismType::ECC_KEY_PAIR_GEN),
            ecdsa: a("CKM_ECDSA", MechanismType::ECDSA),
            ecdh1_derive: a("CKM_ECDH1_DERIVE", MechanismType::ECDH1_DERIVE),
            ec_edwards_key_pair_gen: a(
                "CKM_EC_EDWARDS_KEY_PAIR_GEN",
                MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
            ),
            eddsa: a("CKM_EDDSA", MechanismType::EDDSA),
            hmac: [
                a("CKM_SHA224_HMAC", MechanismType::SHA224_HMAC),
                a("CKM_SHA256_HMAC", MechanismType::SHA256_HMAC),
                a("CKM_SHA384_HMAC", MechanismType::SHA384_HMAC),
                a("CKM_SHA512_HMAC", MechanismType::SHA512_HMAC),
            ],
        }
    }
}

impl Capabilities {
    /// The mechanisms a backing key of `kind` needs that the token lacks, by name (empty:
    /// the token can make and use such a key, as far as its mechanism list and the curve
    /// probe say).
    pub fn missing_for(&self, kind: super::BackingKind) -> Vec<&'static str> {
        use super::{BackingKind, PairKind, PrivateUsage};
        let m = &self.asymmetric;
        let need: Vec<(&MechanismSupport, bool)> = match kind {
            BackingKind::Derive | BackingKind::Imported => vec![],
            BackingKind::Hmac { bytes } => {
                let i = match bytes {
                    28 => 0,
                    32 => 1,
                    48 => 2,
                    _ => 3,
                };
                vec![
                    (
                        &self.generic_secret_key_gen,
                        self.generic_secret_key_gen.generate,
                    ),
                    (&m.hmac[i], m.hmac[i].sign && m.hmac[i].verify),
                ]
            }
            BackingKind::Private { pair, usage } => {
                let generate = match pair {
                    PairKind::Rsa { .. } => &m.rsa_key_pair_gen,
                    PairKind::Ec(_) => &m.ec_key_pair_gen,
                    PairKind::Ed25519 => &m.ec_edwards_key_pair_gen,
                };
                let mut need = vec![(generate, generate.generate_key_pair)];
                match (pair, usage) {
                    (PairKind::Rsa { .. }, PrivateUsage::Sign) => {
                        need.push((&m.rsa_pkcs, m.rsa_pkcs.sign && m.rsa_pkcs.verify));
                        need.push((
                            &m.rsa_pkcs_pss,
                            m.rsa_pkcs_pss.sign && m.rsa_pkcs_pss.verify,
                        ));
                    }
                    (PairKind::Rsa { .. }, _) => need.push((
                        &m.rsa_pkcs_oaep,
                        m.rsa_pkcs_oaep.encrypt && m.rsa_pkcs_oaep.decrypt,
                    )),
                    (PairKind::Ec(_), PrivateUsage::Derive) => {
                        need.push((&m.ecdh1_derive, m.ecdh1_derive.derive))
                    }
                    (PairKind::Ec(_), _) => need.push((&m.ecdsa, m.ecdsa.sign && m.ecdsa.verify)),
                    (PairKind::Ed25519, _) => need.push((&m.eddsa, m.eddsa.sign && m.eddsa.verify)),
                }
                need
            }
        };
        let mut missing: Vec<&'static str> = need
            .into_iter()
            .filter(|(_, ok)| !ok)
            .map(|(m, _)| m.name)
            .collect();
        if let BackingKind::Private { pair, .. } = kind {
            missing.extend(self.missing_curve(pair));
        }
        missing
    }

    /// `CKM_EC_KEY_PAIR_GEN on <curve>` where the token lists the mechanism but the probe
    /// found it cannot generate on the pair's curve.
    fn missing_curve(&self, pair: super::PairKind) -> Option<&'static str> {
        match pair {
            super::PairKind::Ec(c)
                if self.asymmetric.ec_key_pair_gen.generate_key_pair
                    && !self.ec_curves.contains(&curve_name(c)) =>
            {
                Some(match c {
                    Curve::P256 => "CKM_EC_KEY_PAIR_GEN on P-256",
                    Curve::P384 => "CKM_EC_KEY_PAIR_GEN on P-384",
                    Curve::P521 => "CKM_EC_KEY_PAIR_GEN on P-521",
                    Curve::Secp256k1 => "CKM_EC_KEY_PAIR_GEN on secp256k1",
                })
            }
            _ => None,
        }
    }

    /// What a data key pair of `pair` needs that the token lacks (it is generated and read,
    /// or wrapped, never used for signing here).
    pub fn missing_for_data_key_pair(&self, pair: super::PairKind) -> Vec<&'static str> {
        use super::PairKind;
        let m = &self.asymmetric;
        let generate = match pair {
            PairKind::Rsa { .. } => &m.rsa_key_pair_gen,
            PairKind::Ec(_) => &m.ec_key_pair_gen,
            PairKind::Ed25519 => &m.ec_edwards_key_pair_gen,
        };
        if generate.generate_key_pair {
            self.missing_curve(pair).into_iter().collect()
        } else {
            vec![generate.name]
        }
    }
}

/// Which secret-key type the token generates for data keys sealed inside it (probed at open by
/// generating and wrapping one; see `hsm::keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InTokenDataKeys {
    /// `CKK_GENERIC_SECRET` of any length 1..=1024 (`CKM_GENERIC_SECRET_KEY_GEN`).
    AnyLength,
    /// Only `CKK_AES` keys: 16- and 32-byte data keys (other lengths take the host path).
    AesOnly,
}

impl InTokenDataKeys {
    /// Whether a data key of `len` bytes can be generated and sealed in the token.
    pub fn covers(self, len: usize) -> bool {
        match self {
            InTokenDataKeys::AnyLength => (1..=1024).contains(&len),
            InTokenDataKeys::AesOnly => len == 16 || len == 32,
        }
    }
}

/// What the token does with `CKA_DERIVE_TEMPLATE` on a derive-only key (probed at open on a
/// throwaway session key: a derivation asking for a non-sensitive, extractable result).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeriveTemplateSupport {
    /// The token accepts the attribute on a new key.
    pub accepted: bool,
    /// A derivation whose template contradicts it is refused, or comes out sensitive anyway.
    pub enforced: bool,
    /// A PIN holder can replace it with `C_SetAttributeValue` on a modifiable key (CMKs are
    /// modifiable: disabling a key clears `CKA_DERIVE`).
    pub rewritable: bool,
    /// Without it, the token derives a non-sensitive, extractable key from a sensitive,
    /// never-extractable base when asked to (the custody gap the template closes).
    pub exposed_derivation_without_it: bool,
}

/// What the token offers p11kms.
#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    /// The token has a random number generator (`CKF_RNG`).
    pub rng: bool,
    /// `CKM_AES_KEY_GEN`.
    pub aes_key_gen: MechanismSupport,
    /// `CKM_GENERIC_SECRET_KEY_GEN`.
    pub generic_secret_key_gen: MechanismSupport,
    /// `CKM_AES_GCM`.
    pub aes_gcm: MechanismSupport,
    /// `CKM_AES_CBC_ENCRYPT_DATA`.
    pub aes_cbc_encrypt_data: MechanismSupport,
    /// `CKM_SP800_108_COUNTER_KDF`.
    pub sp800_108_counter_kdf: MechanismSupport,
    /// `CKM_AES_CMAC`.
    pub aes_cmac: MechanismSupport,
    /// The derive mechanism new CMKs use, if any is usable: SP 800-108 (id 2) where a
    /// derivation with it works, else `CKM_AES_CBC_ENCRYPT_DATA` (id 1).
    pub kdf: Option<Kdf>,
    /// Every derive mechanism that works here (blobs of keys made with either open).
    pub kdfs: Vec<Kdf>,
    /// Data keys the token can generate and seal itself (`C_GenerateKey` + `C_WrapKey` with
    /// AES-GCM, output checked to be the same bytes `C_Encrypt` gives); `None`: host path only.
    pub in_token_data_keys: Option<InTokenDataKeys>,
    /// Why in-token sealing is not available, when it is not.
    pub in_token_sealing_missing: Option<String>,
    /// Whether the token enforces `CKA_DERIVE_TEMPLATE` on CMKs.
    pub derive_template: DeriveTemplateSupport,
    /// `C_Encrypt(CKM_AES_GCM)` uses the caller's 12-byte IV and returns ciphertext ‖ tag
    /// (probed at open). Tokens that generate the IV themselves (AWS CloudHSM; Luna in FIPS
    /// mode) cannot produce p11kms's blob format, which authenticates the IV in its header.
    pub gcm_caller_iv: bool,
    /// The asymmetric and HMAC mechanisms.
    pub asymmetric: AsymmetricMechanisms,
    /// Data key pairs can be sealed inside the token (`C_WrapKey` of a private key with
    /// AES-GCM; probed at open): their private keys never enter this process.
    pub private_key_gcm_wrap: bool,
    /// `CKM_EDDSA` with the Ed25519ph flag makes Ed25519ph signatures (probed at open: the
    /// signature differs from the pure one of the same bytes). SoftHSM 2.6 ignores the flag
    /// and signs the bytes as pure Ed25519, which must not pass as ED25519_PH_SHA_512.
    pub ed25519ph: bool,
    /// The curves `CKM_EC_KEY_PAIR_GEN` generates key pairs on, by [`curve_name`] (probed at
    /// open: the mechanism list cannot say).
    pub ec_curves: Vec<&'static str>,
    /// AES key wrap with padding as RFC 5649 defines it, if the token has it (probed at open
    /// with the RFC's test vector): key import's RSA_AES_KEY_WRAP algorithms need it.
    pub rfc5649: Option<super::import::Rfc5649>,
    /// Measured at open: how long (µs, median) data-key bytes drawn from the RNG stay in host
    /// memory on the host path before they are sealed and wiped (one `C_Encrypt` of 32 bytes
    /// under a session key). `None` if it could not be measured.
    pub host_seal_micros: Option<u64>,
}

impl Capabilities {
    /// Does the token list `CKM_AES_GCM` with `CKF_WRAP` and `CKF_UNWRAP`?
    pub fn gcm_wrap(&self) -> bool {
        self.aes_gcm.wrap && self.aes_gcm.unwrap
    }

    /// Can data keys be generated and sealed inside the token (the probe succeeded)?
    pub fn in_token_sealing(&self) -> bool {
        self.in_token_data_keys.is_some()
    }

    /// Refuses a token that lacks something p11kms cannot work without.
    pub fn require(&self) -> Result<()> {
        let mut missing = Vec::new();
        if !self.rng {
            missing.push("a random number generator (CKF_RNG)");
        }
        if !self.aes_key_gen.generate {
            missing.push("CKM_AES_KEY_GEN");
        }
        if !(self.aes_gcm.encrypt && self.aes_gcm.decrypt) {
            missing.push("CKM_AES_GCM encrypt/decrypt");
        }
        if self.kdf.is_none() {
            missing.push(
                "an AES key derivation mechanism (CKM_AES_CBC_ENCRYPT_DATA, or \
                 CKM_SP800_108_COUNTER_KDF with CKM_AES_CMAC)",
            );
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(HsmError::Unusable(format!(
                "the token lacks what p11kms requires: {}",
                missing.join(", ")
            )))
        }
    }
}

fn ask(ctx: &Pkcs11, slot: Slot, name: &'static str, ty: MechanismType) -> MechanismSupport {
    match ctx.get_mechanism_info(slot, ty) {
        Ok(info) => MechanismSupport {
            name,
            present: true,
            generate: info.generate(),
            encrypt: info.encrypt(),
            decrypt: info.decrypt(),
            wrap: info.wrap(),
            unwrap: info.unwrap(),
            derive: info.derive(),
            sign: info.sign(),
            verify: info.verify(),
            generate_key_pair: info.generate_key_pair(),
            max_key_size: info.max_key_size(),
        },
        Err(_) => MechanismSupport {
            name,
            ..Default::default()
        },
    }
}

pub(crate) fn probe(ctx: &Pkcs11, slot: Slot) -> Result<Capabilities> {
    let token = ctx
        .get_token_info(slot)
        .map_err(|e| HsmError::Unusable(format!("C_GetTokenInfo failed: {e}")))?;
    let aes_cbc_encrypt_data = ask(
        ctx,
        slot,
        "CKM_AES_CBC_ENCRYPT_DATA",
        MechanismType::AES_CBC_ENCRYPT_DATA,
    );
    // Listed by the flags; `probe::probe_kdfs` keeps those that really derive.
    let mut kdfs = Vec::new();
    if aes_cbc_encrypt_data.derive {
        kdfs.push(Kdf::AesCbcEncryptData);
    }
    let sp800_108_counter_kdf = ask(
        ctx,
        slot,
        "CKM_SP800_108_COUNTER_KDF",
        MechanismType::SP800_108_COUNTER_KDF,
    );
    let aes_cmac = ask(ctx, slot, "CKM_AES_CMAC", MechanismType::AES_CMAC);
    if sp800_108_counter_kdf.derive && aes_cmac.present {
        kdfs.push(Kdf::Sp800108CounterCmac);
    }
    let kdf = kdfs.first().copied();
    Ok(Capabilities {
        rng: token.rng(),
        aes_key_gen: ask(ctx, slot, "CKM_AES_KEY_GEN", MechanismType::AES_KEY_GEN),
        generic_secret_key_gen: ask(
            ctx,
            slot,
            "CKM_GENERIC_SECRET_KEY_GEN",
            MechanismType::GENERIC_SECRET_KEY_GEN,
        ),
        aes_gcm: ask(ctx, slot, "CKM_AES_GCM", MechanismType::AES_GCM),
        aes_cbc_encrypt_data,
        sp800_108_counter_kdf,
        aes_cmac,
        kdf,
        kdfs,
        // Filled in by the functional probes once a session is logged in.
        in_token_data_keys: None,
        in_token_sealing_missing: None,
        derive_template: DeriveTemplateSupport::default(),
        gcm_caller_iv: true,
        asymmetric: AsymmetricMechanisms::ask(ctx, slot),
        private_key_gcm_wrap: false,
        ed25519ph: false,
        ec_curves: Vec::new(),
        rfc5649: None,
        host_seal_micros: None,
    })
}
