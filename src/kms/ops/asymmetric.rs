//! Operations of asymmetric and HMAC keys: Sign, Verify, GetPublicKey, GenerateMac,
//! VerifyMac, DeriveSharedSecret, and RSAES-OAEP for Encrypt, Decrypt and ReEncrypt. The
//! private (or secret) key works inside the token; messages are hashed here.

use std::sync::Arc;

use sha2::{Digest, Sha256, Sha384, Sha512};
use zeroize::Zeroizing;

use super::super::domain::{
    AwsEnum, EncryptionAlgorithm, KeyAgreementAlgorithm, KeySpec, KeyUsage, MacAlgorithm,
    MessageType, Origin, SigningAlgorithm,
};
use super::super::specs;
use super::super::store::KeyEntry;
use super::super::types::*;
use super::super::{Forms, Kms};
use super::{check_grant_tokens, check_usable, dry_run, refuse_recipient, required};
use crate::der::{self, Hash, PublicKey};
use crate::error::{KmsError, Result};
use crate::hsm::{BackingKind, Checked, CmkHandle, PairKind, PrivateUsage, SessionKey};
use crate::hsm::{HsmError, SignScheme};

/// Message of Sign, Verify, GenerateMac and VerifyMac: 1..4096 bytes.
const MAX_MESSAGE: usize = 4096;
/// Signature, MAC and ciphertext members: 1..6144 bytes.
const MAX_BLOB: usize = 6144;
/// DeriveSharedSecret's PublicKey: 1..8192 bytes.
const MAX_PUBLIC_KEY: usize = 8192;
/// Public key objects kept for Verify and RSA Encrypt (re-imported when evicted).
const PUBLIC_KEY_CACHE: usize = 1024;

fn length_error(member: &str, max: usize) -> KmsError {
    KmsError::validation(format!(
        "1 validation error detected: Value at '{member}' failed to satisfy constraint: \
         Member must have length between 1 and {max}"
    ))
}

fn bounded<'a>(b: &'a Option<impl AsRef<[u8]>>, member: &str, max: usize) -> Result<&'a [u8]> {
    let b = b
        .as_ref()
        .ok_or_else(|| {
            KmsError::validation(format!(
                "1 validation error detected: Value null at '{member}' failed to satisfy \
                 constraint: Member must not be null"
            ))
        })?
        .as_ref();
    if b.is_empty() || b.len() > max {
        return Err(length_error(member, max));
    }
    Ok(b)
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for SecretBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn digest(hash: Hash, message: &[u8]) -> Vec<u8> {
    match hash {
        Hash::Sha256 => Sha256::digest(message).to_vec(),
        Hash::Sha384 => Sha384::digest(message).to_vec(),
        Hash::Sha512 => Sha512::digest(message).to_vec(),
        // Not a signing hash of any AWS algorithm.
        Hash::Sha1 | Hash::Sha224 => Vec::new(),
    }
}

/// What the token signs for `alg` over a `message` of `message_type`: the digest (computed
/// here for RAW), or for Ed25519 the message itself.
fn to_be_signed(
    alg: SigningAlgorithm,
    message_type: MessageType,
    message: &[u8],
) -> Result<(SignScheme, Vec<u8>)> {
    let (hash, scheme) = specs::signing(alg).ok_or_else(|| {
        KmsError::unsupported(format!("SigningAlgorithm {alg} is not supported by p11kms"))
    })?;
    match (scheme, message_type) {
        (_, MessageType::ExternalMu) => Err(KmsError::validation(format!(
            "MessageType EXTERNAL_MU is valid only for ML-DSA keys, not with {alg}"
        ))),
        (SignScheme::Ed25519, MessageType::Digest) => Err(KmsError::validation(format!(
            "{alg} signs the message itself: MessageType must be RAW"
        ))),
        (SignScheme::Ed25519, MessageType::Raw) => Ok((scheme, message.to_vec())),
        (SignScheme::Ed25519Ph, MessageType::Raw) => Err(KmsError::validation(format!(
            "{alg} signs a SHA-512 digest: MessageType must be DIGEST"
        ))),
        (_, MessageType::Raw) => Ok((scheme, digest(hash, message))),
        (_, MessageType::Digest) => {
            if message.len() != hash.len() {
                return Err(KmsError::validation(format!(
                    "Digest is invalid length for algorithm {alg}: a {}-byte digest is \
                     required, the message has {} bytes",
                    hash.len(),
                    message.len()
                )));
            }
            Ok((scheme, message.to_vec()))
        }
    }
}

fn message_type(t: &Option<String>) -> Result<MessageType> {
    t.as_deref().map_or(Ok(MessageType::Raw), |t| {
        MessageType::parse(t, "messageType")
    })
}

/// The key's current backing key (token handle), or why it cannot be used.
fn backing_handle(entry: &KeyEntry, arn: &str) -> Result<CmkHandle> {
    let v = entry.record.current_version;
    entry.cmks.get(&v).copied().ok_or_else(|| {
        KmsError::key_unavailable(entry.unbound.get(&v).cloned().unwrap_or_else(|| {
            format!("the key material of {arn} (version {v}) is not in the token")
        }))
    })
}

impl Kms {
    /// Resolves a key for an asymmetric or HMAC operation, checks its state and that its
    /// usage is `usage`; returns the entry and the key ARN.
    fn key_for(
        &self,
        key_id: Option<KeySelector>,
        usage: KeyUsage,
        op: &str,
    ) -> Result<(KeyEntry, String)> {
        let (id, entry) = self.resolve(&required(key_id, "keyId")?, Forms::Any)?;
        let arn = self.scope.key_arn(&id);
        check_usable(&entry, &arn)?;
        if entry.record.usage != usage {
            return Err(KmsError::invalid_key_usage(format!(
                "{arn} key usage is {} which is not valid for {op}.",
                entry.record.usage
            )));
        }
        Ok((entry, arn))
    }

    /// The key's public key, parsed from its record.
    fn public_key_of(&self, entry: &KeyEntry) -> Result<PublicKey> {
        let spki = entry.record.public_key.as_deref().ok_or_else(|| {
            KmsError::internal("an asymmetric key's record carries no public key")
        })?;
        der::parse_spki(spki)
            .map_err(|e| KmsError::internal(format!("the key's stored public key: {e}")))
    }

    /// The key's public key as a session object in the token (cached; imported once per
    /// process and key).
    fn public_key_object(&self, entry: &KeyEntry, usage: PrivateUsage) -> Result<Arc<SessionKey>> {
        let id = entry.record.id;
        if let Some(k) = crate::sync::lock(&self.public_keys).get(&id) {
            return Ok(Arc::clone(k));
        }
        // Imported with no lock held; a concurrent import of the same key only wastes one.
        let key = Arc::new(
            self.token
                .import_public_key(&self.public_key_of(entry)?, usage)?,
        );
        let mut cache = crate::sync::lock(&self.public_keys);
        if cache.len() >= PUBLIC_KEY_CACHE {
            cache.clear();
        }
        cache.insert(id, Arc::clone(&key));
        Ok(key)
    }

    /// Sign: a digital signature made in the token by an asymmetric SIGN_VERIFY key.
    pub fn sign(&self, req: SignRequest) -> Result<SignResponse> {
        let message = bounded(&req.message, "message", MAX_MESSAGE)?;
        let mtype = message_type(&req.message_type)?;
        let alg = SigningAlgorithm::parse(
            &required(req.signing_algorithm.clone(), "signingAlgorithm")?,
            "signingAlgorithm",
        )?;
        check_grant_tokens(&req.grant_tokens)?;
        let (entry, arn) = self.key_for(req.key_id, KeyUsage::SignVerify, "Sign")?;
        self.check_signing_algorithm(&entry, alg, &arn)?;
        let (scheme, input) = to_be_signed(alg, mtype, message)?;
        self.check_scheme(scheme, alg)?;
        dry_run(req.dry_run)?;
        let h = backing_handle(&entry, &arn)?;
        let raw = self
            .token
            .sign(h, scheme, &input)
            .map_err(|e| self.unsupported_or(e, alg))?;
        let signature = match scheme {
            SignScheme::Ecdsa => der::ecdsa_signature_to_der(&raw)
                .map_err(|e| KmsError::internal(format!("the token's ECDSA signature: {e}")))?,
            _ => raw,
        };
        Ok(SignResponse {
            key_id: arn,
            signature: Bytes(signature),
            signing_algorithm: alg,
        })
    }

    /// Verify: checks a signature with the key's public key, in the token. A signature that
    /// does not verify is `KMSInvalidSignatureException`, as at AWS.
    pub fn verify(&self, req: VerifyRequest) -> Result<VerifyResponse> {
        let message = bounded(&req.message, "message", MAX_MESSAGE)?;
        let signature = bounded(&req.signature, "signature", MAX_BLOB)?;
        let mtype = message_type(&req.message_type)?;
        let alg = SigningAlgorithm::parse(
            &required(req.signing_algorithm.clone(), "signingAlgorithm")?,
            "signingAlgorithm",
        )?;
        check_grant_tokens(&req.grant_tokens)?;
        let (entry, arn) = self.key_for(req.key_id, KeyUsage::SignVerify, "Verify")?;
        self.check_signing_algorithm(&entry, alg, &arn)?;
        let (scheme, input) = to_be_signed(alg, mtype, message)?;
        self.check_scheme(scheme, alg)?;
        dry_run(req.dry_run)?;
        let invalid = || KmsError::invalid_signature("The signature is not valid");
        let sig = match (scheme, specs::pair_kind(entry.record.spec)) {
            (SignScheme::Ecdsa, Some(PairKind::Ec(curve))) => {
                der::ecdsa_signature_from_der(signature, curve.field_len())
                    .map_err(|_| invalid())?
            }
            _ => signature.to_vec(),
        };
        let key = self.public_key_object(&entry, PrivateUsage::Sign)?;
        match self
            .token
            .verify(&key, scheme, &input, &sig)
            .map_err(|e| self.unsupported_or(e, alg))?
        {
            Checked::Valid => Ok(VerifyResponse {
                key_id: arn,
                signature_valid: true,
                signing_algorithm: alg,
            }),
            Checked::Invalid => Err(invalid()),
        }
    }

    fn check_signing_algorithm(
        &self,
        entry: &KeyEntry,
        alg: SigningAlgorithm,
        arn: &str,
    ) -> Result<()> {
        let listed = specs::algorithms(entry.record.spec, entry.record.usage).signing;
        if listed.contains(&alg) {
            Ok(())
        } else {
            Err(KmsError::invalid_key_usage(format!(
                "Algorithm {alg} is incompatible with key spec {} of {arn}.",
                entry.record.spec
            )))
        }
    }

    /// Ed25519ph only where the token makes Ed25519ph signatures (the start-up probe).
    fn check_scheme(&self, scheme: SignScheme, alg: SigningAlgorithm) -> Result<()> {
        if scheme == SignScheme::Ed25519Ph && !self.token.capabilities().ed25519ph {
            return Err(KmsError::unsupported(format!(
                "this token cannot do {alg}: its CKM_EDDSA ignores or refuses the Ed25519ph flag"
            )));
        }
        Ok(())
    }

    /// A token that refuses a mechanism's parameters (Ed25519ph on SoftHSM over OpenSSL
    /// 3.0) cannot do the algorithm: UnsupportedOperationException, naming it.
    fn unsupported_or(&self, e: HsmError, alg: impl std::fmt::Display) -> KmsError {
        if e.call().is_some_and(|c| c.is_unsupported_parameter()) {
            KmsError::unsupported(format!("this token cannot do {alg}")).caused_by(e)
        } else {
            e.into()
        }
    }

    /// GetPublicKey: the DER SubjectPublicKeyInfo of an asymmetric key, with what it is for.
    pub fn get_public_key(&self, req: KeyIdRequest) -> Result<GetPublicKeyResponse> {
        check_grant_tokens(&req.grant_tokens)?;
        let (id, entry) = self.resolve(&required(req.key_id, "keyId")?, Forms::Any)?;
        let arn = self.scope.key_arn(&id);
        check_usable(&entry, &arn)?;
        let r = &entry.record;
        let Some(spki) = r
            .public_key
            .clone()
            .filter(|_| specs::pair_kind(r.spec).is_some())
        else {
            return Err(KmsError::unsupported(format!(
                "{arn} is a {} key: only asymmetric keys have a public key",
                r.spec
            )));
        };
        let a = specs::algorithms(r.spec, r.usage);
        Ok(GetPublicKeyResponse {
            key_id: arn,
            public_key: Bytes(spki),
            customer_master_key_spec: r.spec,
            key_spec: r.spec,
            key_usage: r.usage,
            encryption_algorithms: specs::listed(a.encryption),
            signing_algorithms: specs::listed(a.signing),
            key_agreement_algorithms: specs::listed(a.key_agreement),
        })
    }

    fn mac_request(
        &self,
        key_id: Option<KeySelector>,
        alg: &Option<String>,
        op: &str,
    ) -> Result<(KeyEntry, String, MacAlgorithm, CmkHandle)> {
        let alg = MacAlgorithm::parse(&required(alg.clone(), "macAlgorithm")?, "macAlgorithm")?;
        let (entry, arn) = self.key_for(key_id, KeyUsage::GenerateVerifyMac, op)?;
        if specs::hmac(entry.record.spec).map(|(m, _)| m) != Some(alg) {
            return Err(KmsError::invalid_key_usage(format!(
                "Algorithm {alg} is incompatible with key spec {} of {arn}.",
                entry.record.spec
            )));
        }
        let h = backing_handle(&entry, &arn)?;
        Ok((entry, arn, alg, h))
    }

    /// GenerateMac: an HMAC made in the token by an HMAC key.
    pub fn generate_mac(&self, req: GenerateMacRequest) -> Result<GenerateMacResponse> {
        let message = bounded(&req.message, "message", MAX_MESSAGE)?;
        check_grant_tokens(&req.grant_tokens)?;
        let (_, arn, alg, h) = self.mac_request(req.key_id, &req.mac_algorithm, "GenerateMac")?;
        dry_run(req.dry_run)?;
        let mac = self.token.hmac(h, specs::mac_hash(alg), message)?;
        Ok(GenerateMacResponse {
            mac: Bytes(mac),
            mac_algorithm: alg,
            key_id: arn,
        })
    }

    /// VerifyMac: checks an HMAC in the token. One that does not verify is
    /// `KMSInvalidMacException`, as at AWS.
    pub fn verify_mac(&self, req: VerifyMacRequest) -> Result<VerifyMacResponse> {
        let message = bounded(&req.message, "message", MAX_MESSAGE)?;
        let mac = bounded(&req.mac, "mac", MAX_BLOB)?;
        check_grant_tokens(&req.grant_tokens)?;
        let (_, arn, alg, h) = self.mac_request(req.key_id, &req.mac_algorithm, "VerifyMac")?;
        dry_run(req.dry_run)?;
        match self
            .token
            .hmac_verify(h, specs::mac_hash(alg), message, mac)?
        {
            Checked::Valid => Ok(VerifyMacResponse {
                key_id: arn,
                mac_valid: true,
                mac_algorithm: alg,
            }),
            Checked::Invalid => Err(KmsError::invalid_mac("The MAC is not valid")),
        }
    }

    /// DeriveSharedSecret: ECDH in the token between a KEY_AGREEMENT key and the caller's
    /// public key; the raw shared secret, as AWS returns it.
    pub fn derive_shared_secret(
        &self,
        req: DeriveSharedSecretRequest,
    ) -> Result<DeriveSharedSecretResponse> {
        refuse_recipient(&req.recipient)?;
        let alg = KeyAgreementAlgorithm::parse(
            &required(req.key_agreement_algorithm.clone(), "keyAgreementAlgorithm")?,
            "keyAgreementAlgorithm",
        )?;
        let peer = bounded(&req.public_key, "publicKey", MAX_PUBLIC_KEY)?;
        check_grant_tokens(&req.grant_tokens)?;
        let (entry, arn) =
            self.key_for(req.key_id, KeyUsage::KeyAgreement, "DeriveSharedSecret")?;
        let Some(PairKind::Ec(curve)) = specs::pair_kind(entry.record.spec) else {
            return Err(KmsError::invalid_key_usage(format!(
                "{arn} cannot be used for key agreement"
            )));
        };
        let point = match der::parse_spki(peer) {
            Ok(PublicKey::Ec { curve: c, point }) if c == curve => point,
            Ok(_) => {
                return Err(KmsError::validation(format!(
                    "The public key is not on the curve of {arn} ({})",
                    entry.record.spec
                )))
            }
            Err(e) => {
                return Err(KmsError::validation(format!(
                    "PublicKey is not a valid DER SubjectPublicKeyInfo: {e}"
                )))
            }
        };
        dry_run(req.dry_run)?;
        let h = backing_handle(&entry, &arn)?;
        let secret = self.token.ecdh(h, &point, curve.field_len()).map_err(|e| {
            if e.call().is_some_and(|c| c.is_unsupported_parameter())
                || self.input_refused(&e, h, &entry)
            {
                KmsError::validation("The public key is not a valid point on the key's curve")
            } else {
                e.into()
            }
        })?;
        Ok(DeriveSharedSecretResponse {
            key_id: arn,
            shared_secret: SecretBytes(secret),
            key_agreement_algorithm: alg,
            key_origin: Origin::AwsKms,
        })
    }

    /// RSAES-OAEP encryption with an RSA ENCRYPT_DECRYPT key (the public key, in the token).
    /// No encryption context: AWS does not take one with asymmetric keys.
    pub(super) fn rsa_encrypt(
        &self,
        entry: &KeyEntry,
        alg: EncryptionAlgorithm,
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        let (bits, hash) = self.rsa_parameters(entry, alg)?;
        let max = specs::oaep_max_plaintext(bits, hash);
        if plaintext.len() > max {
            return Err(KmsError::validation(format!(
                "Plaintext is too long for {} with {alg}: at most {max} bytes",
                entry.record.spec
            )));
        }
        let key = self.public_key_object(entry, PrivateUsage::Decrypt)?;
        Ok(self.token.rsa_encrypt(&key, hash, plaintext)?)
    }

    /// RSAES-OAEP decryption in the token. A ciphertext that does not decrypt is
    /// `InvalidCiphertextException`.
    pub(super) fn rsa_decrypt(
        &self,
        entry: &KeyEntry,
        alg: EncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let (bits, hash) = self.rsa_parameters(entry, alg)?;
        let arn = self.scope.key_arn(&entry.record.id);
        if ciphertext.len() != bits / 8 {
            return Err(KmsError::invalid_ciphertext_with(
                "The ciphertext is not an RSA ciphertext of this key's size",
            ));
        }
        let h = backing_handle(entry, &arn)?;
        match self.token.rsa_decrypt(h, hash, ciphertext) {
            Ok(p) => Ok(p),
            Err(HsmError::AuthenticationFailed) => Err(KmsError::invalid_ciphertext_with(
                "The ciphertext does not decrypt with this key and algorithm",
            )),
            Err(e) if self.input_refused(&e, h, entry) => Err(KmsError::invalid_ciphertext_with(
                "The ciphertext does not decrypt with this key and algorithm",
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the token refused the request's input rather than failed: it answered a code
    /// it also uses for its own failures ([`HsmError::may_be_refused_input`]), and the key
    /// still answers.
    fn input_refused(&self, e: &HsmError, h: CmkHandle, entry: &KeyEntry) -> bool {
        e.may_be_refused_input()
            && entry
                .record
                .backing_kind()
                .is_ok_and(|k| self.token.cmk_usable(h, k).is_ok())
    }

    /// The modulus size and OAEP hash of an RSA encryption key and algorithm, or the usage
    /// error AWS answers.
    fn rsa_parameters(&self, entry: &KeyEntry, alg: EncryptionAlgorithm) -> Result<(usize, Hash)> {
        let r = &entry.record;
        let arn = self.scope.key_arn(&r.id);
        match (specs::pair_kind(r.spec), specs::oaep_hash(alg), r.usage) {
            (Some(PairKind::Rsa { bits }), Some(hash), KeyUsage::EncryptDecrypt) => {
                Ok((bits, hash))
            }
            (_, _, KeyUsage::EncryptDecrypt) if r.spec != KeySpec::SymmetricDefault => {
                Err(KmsError::invalid_key_usage(format!(
                    "Algorithm {alg} is incompatible with key spec {} of {arn}.",
                    r.spec
                )))
            }
            _ => Err(KmsError::invalid_key_usage(format!(
                "{arn} key usage is {} and key spec {}, which is not valid for {alg}.",
                r.usage, r.spec
            ))),
        }
    }
}

/// What the backing key of `entry` is (for the operations that branch on it).
pub(super) fn is_asymmetric_encryption(entry: &KeyEntry) -> bool {
    matches!(
        entry.record.backing_kind(),
        Ok(BackingKind::Private {
            usage: PrivateUsage::Decrypt,
            ..
        })
    )
}
