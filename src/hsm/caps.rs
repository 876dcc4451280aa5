//! The capability probe: what the token can do, asked mechanism by mechanism.
//!
//! `C_GetMechanismList` through cryptoki 0.12 silently drops mechanisms it has no name for, so
//! each mechanism we care about is asked with `C_GetMechanismInfo` instead.

use cryptoki::context::Pkcs11;
use cryptoki::mechanism::MechanismType;
use cryptoki::slot::Slot;
use serde::Serialize;

use crate::error::{KmsError, Result};

/// How an epoch key is derived from a CMK inside the token. The number is stored in every
/// ciphertext blob and in each key's metadata, so it must never change meaning.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Kdf {
    /// `CKM_AES_CBC_ENCRYPT_DATA`, zero IV, over the 32-byte nonce: K = AES-CBC_CMK(nonce).
    AesCbcEncryptData,
}

impl Kdf {
    pub fn id(self) -> u8 {
        match self {
            Kdf::AesCbcEncryptData => 1,
        }
    }

    pub fn from_id(id: u8) -> Option<Kdf> {
        match id {
            1 => Some(Kdf::AesCbcEncryptData),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kdf::AesCbcEncryptData => "CKM_AES_CBC_ENCRYPT_DATA",
        }
    }

    pub(crate) fn mechanism_type(self) -> MechanismType {
        match self {
            Kdf::AesCbcEncryptData => MechanismType::AES_CBC_ENCRYPT_DATA,
        }
    }
}

/// One mechanism's relevant flags, as the token reports them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MechanismSupport {
    pub name: &'static str,
    pub present: bool,
    pub generate: bool,
    pub encrypt: bool,
    pub decrypt: bool,
    pub wrap: bool,
    pub unwrap: bool,
    pub derive: bool,
}

/// What the token offers p11kms.
#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    pub rng: bool,
    pub aes_key_gen: MechanismSupport,
    pub aes_gcm: MechanismSupport,
    pub aes_cbc_encrypt_data: MechanismSupport,
    pub sp800_108_counter_kdf: MechanismSupport,
    pub aes_cmac: MechanismSupport,
    /// The derive mechanism new CMKs use, if any is usable.
    pub kdf: Option<Kdf>,
}

impl Capabilities {
    /// Can data keys be sealed inside the token (`C_WrapKey` with AES-GCM)?
    pub fn gcm_wrap(&self) -> bool {
        self.aes_gcm.wrap && self.aes_gcm.unwrap
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
            missing.push("an AES key derivation mechanism (CKM_AES_CBC_ENCRYPT_DATA)");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(KmsError::Config(format!(
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
        .map_err(|e| KmsError::Config(format!("C_GetTokenInfo failed: {e}")))?;
    let aes_cbc_encrypt_data = ask(
        ctx,
        slot,
        "CKM_AES_CBC_ENCRYPT_DATA",
        MechanismType::AES_CBC_ENCRYPT_DATA,
    );
    let kdf = aes_cbc_encrypt_data
        .derive
        .then_some(Kdf::AesCbcEncryptData);
    Ok(Capabilities {
        rng: token.rng(),
        aes_key_gen: ask(ctx, slot, "CKM_AES_KEY_GEN", MechanismType::AES_KEY_GEN),
        aes_gcm: ask(ctx, slot, "CKM_AES_GCM", MechanismType::AES_GCM),
        aes_cbc_encrypt_data,
        sp800_108_counter_kdf: ask(
            ctx,
            slot,
            "CKM_SP800_108_COUNTER_KDF",
            MechanismType::SP800_108_COUNTER_KDF,
        ),
        aes_cmac: ask(ctx, slot, "CKM_AES_CMAC", MechanismType::AES_CMAC),
        kdf,
    })
}
