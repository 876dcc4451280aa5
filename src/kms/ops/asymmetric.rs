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
use crate::kms::validation::{self, Shown};

/// Message of Sign, Verify, GenerateMac and VerifyMac: 1..4096 bytes.
const MAX_MESSAGE: usize = 4096;
/// Signature, MAC and ciphertext members: 1..6144 bytes.
const MAX_BLOB: usize = 6144;
/// DeriveSharedSecret's PublicKey: 1..8192 bytes.
const MAX_PUBLIC_KEY: usize = 8192;
/// Public key objects kept for Verify and RSA Encrypt (re-imported when evicted).
const PUBLIC_KEY_CACHE: usize = 1024;

fn bounded<'a>(b: &'a Option<impl AsRef<[u8]>>, member: &str, max: usize) -> Result<&'a [u8]> {
    let b = validation::required(b.as_ref(), member)?.as_ref();
    validation::length(member, Shown::Hidden, b.len(), 1, max)?;
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
        KmsError::unsupported(format!(
            "SigningAlgorithm {alg} is not supported by p11kms (see docs/compatibility.md)"
        ))
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

/// The members Sign and Verify share.
struct SigningMembers<'a> {
    key_id: Option<KeySelector>,
    message: &'a Option<SecretBytes>,
    message_type: &'a Option<String>,
    signing_algorithm: &'a Option<String>,
    grant_tokens: &'a Option<Vec<String>>,
}

fn message_type(t: &Option<String>) -> Result<MessageType> {
    t.as_deref().map_or(Ok(MessageType::Raw), |t| {
        MessageType::parse(t, "messageType")
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
    /// process and key). Before its first use it is proven to belong to the private key in
    /// the token: the record that carries it is a data object, which whoever holds the PIN
    /// could replace, and Verify, RSA Encrypt and GetPublicKey must not answer for a key the
    /// token does not hold.
    fn public_key_object(&self, entry: &KeyEntry, usage: PrivateUsage) -> Result<Arc<SessionKey>> {
        let id = entry.record.id;
        if let Some(k) = crate::sync::lock(&self.public_keys).get(&id) {
            return Ok(Arc::clone(k));
        }
        // Imported and proven with no lock held; a concurrent import of the same key only
        // wastes one.
        let key = Arc::new(
            self.token
                .import_public_key(&self.public_key_of(entry)?, usage)?,
        );
        self.prove_public_key(entry, &key, usage)?;
        let mut cache = crate::sync::lock(&self.public_keys);
        if cache.len() >= PUBLIC_KEY_CACHE {
            cache.clear();
        }
        cache.insert(id, Arc::clone(&key));
        Ok(key)
    }

    /// Checks that `public` is the public half of the key's private key in the token: a
    /// signature of a fixed digest verifies, or an encryption to it decrypts.
    fn prove_public_key(
        &self,
        entry: &KeyEntry,
        public: &SessionKey,
        usage: PrivateUsage,
    ) -> Result<()> {
        let arn = self.key_arn(&entry.record);
        let private = self.backing_key(entry, entry.record.current_version)?;
        let pair = specs::pair_kind(entry.record.spec);
        let proven = match (usage, pair) {
            (PrivateUsage::Sign, Some(pair)) => {
                let probe = digest(Hash::Sha256, b"p11kms: this public key is the token's");
                let scheme = match pair {
                    PairKind::Rsa { .. } => SignScheme::RsaPkcs1(Hash::Sha256),
                    PairKind::Ec(_) => SignScheme::Ecdsa,
                    PairKind::Ed25519 => SignScheme::Ed25519,
                };
                let sig = self.token.sign(private, scheme, &probe)?;
                self.token.verify(public, scheme, &probe, &sig)? == Checked::Valid
            }
            (PrivateUsage::Decrypt, Some(PairKind::Rsa { bits })) => {
                let secret = self.token.random(16)?;
                let c = self
                    .token
                    .rsa_encrypt(public, Hash::Sha1, bits / 8, &secret)?;
                match self.token.rsa_decrypt(private, Hash::Sha1, &c) {
                    Ok(p) => p.as_slice() == secret.as_slice(),
                    Err(HsmError::AuthenticationFailed) => false,
                    Err(e) => return Err(e.into()),
                }
            }
            _ => false,
        };
        if proven {
            return Ok(());
        }
        let why = format!(
            "the public key in the record of {arn} does not belong to its private key in the \
             token: refusing to use it (someone holding the token PIN changed the record)"
        );
        tracing::error!(target: "p11kms::custody", key = %arn, "{why}");
        Err(KmsError::key_unavailable(why))
    }

    /// [`Kms::prove_public_key`] for a key agreement key (once per process and key): ECDH
    /// with a throwaway key pair agrees with the record's public key.
    fn prove_agreement_key(&self, entry: &KeyEntry, curve: der::Curve) -> Result<()> {
        let id = entry.record.id;
        if crate::sync::lock(&self.proven_agreement_keys).contains(&id) {
            return Ok(());
        }
        let arn = self.scope.key_arn(&id);
        let PublicKey::Ec { point, .. } = self.public_key_of(entry)? else {
            return Err(KmsError::internal(
                "a key agreement key without an EC public key",
            ));
        };
        if !self.token.ecdh_public_matches(
            self.backing_key(entry, entry.record.current_version)?,
            curve,
            &point,
        )? {
            let why = format!(
                "the public key in the record of {arn} does not belong to its private key in \
                 the token: refusing to use it (someone holding the token PIN changed the record)"
            );
            tracing::error!(target: "p11kms::custody", key = %arn, "{why}");
            return Err(KmsError::key_unavailable(why));
        }
        let mut proven = crate::sync::lock(&self.proven_agreement_keys);
        if proven.len() >= PUBLIC_KEY_CACHE {
            proven.clear();
        }
        proven.insert(id);
        Ok(())
    }

    /// The checks shared by Sign and Verify, in AWS's order: the message, its type, the
    /// algorithm, the key and its usage, the algorithm for that key; then what the token is
    /// to sign or check.
    fn signing_request(
        &self,
        m: SigningMembers<'_>,
        op: &str,
    ) -> Result<(KeyEntry, String, SigningAlgorithm, SignScheme, Vec<u8>)> {
        let message = bounded(m.message, "message", MAX_MESSAGE)?;
        let mtype = message_type(m.message_type)?;
        let alg = SigningAlgorithm::parse(
            &required(m.signing_algorithm.clone(), "signingAlgorithm")?,
            "signingAlgorithm",
        )?;
        check_grant_tokens(m.grant_tokens)?;
        let (entry, arn) = self.key_for(m.key_id, KeyUsage::SignVerify, op)?;
        self.check_signing_algorithm(&entry, alg, &arn)?;
        let (scheme, input) = to_be_signed(alg, mtype, message)?;
        self.check_scheme(scheme, alg)?;
        Ok((entry, arn, alg, scheme, input))
    }

    /// Sign: a digital signature made in the token by an asymmetric SIGN_VERIFY key.
    pub fn sign(&self, req: SignRequest) -> Result<SignResponse> {
        let (entry, arn, alg, scheme, input) = self.signing_request(
            SigningMembers {
                key_id: req.key_id,
                message: &req.message,
                message_type: &req.message_type,
                signing_algorithm: &req.signing_algorithm,
                grant_tokens: &req.grant_tokens,
            },
            "Sign",
        )?;
        dry_run(req.dry_run)?;
        let raw = self.with_backing(
            &entry,
            entry.record.current_version,
            |h| self.token.sign(h, scheme, &input),
            |e| self.unsupported_or(e, alg),
        )?;
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
        let signature = bounded(&req.signature, "signature", MAX_BLOB)?;
        let (entry, arn, alg, scheme, input) = self.signing_request(
            SigningMembers {
                key_id: req.key_id,
                message: &req.message,
                message_type: &req.message_type,
                signing_algorithm: &req.signing_algorithm,
                grant_tokens: &req.grant_tokens,
            },
            "Verify",
        )?;
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

    /// A token that refuses a mechanism's parameters cannot do the algorithm:
    /// UnsupportedOperationException, naming it.
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
        // Handed out only once proven to be the token's.
        match r.backing_kind()? {
            BackingKind::Private {
                usage: u @ (PrivateUsage::Sign | PrivateUsage::Decrypt),
                ..
            } => {
                self.public_key_object(&entry, u)?;
            }
            BackingKind::Private {
                pair: PairKind::Ec(curve),
                usage: PrivateUsage::Derive,
            } => self.prove_agreement_key(&entry, curve)?,
            _ => {}
        }
        let a = specs::algorithms(r.spec, r.usage);
        Ok(GetPublicKeyResponse {
            key_id: arn,
            public_key: Bytes(spki),
            customer_master_key_spec: specs::customer_master_key_spec(r.spec),
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
    ) -> Result<(KeyEntry, String, MacAlgorithm)> {
        let alg = MacAlgorithm::parse(&required(alg.clone(), "macAlgorithm")?, "macAlgorithm")?;
        let (entry, arn) = self.key_for(key_id, KeyUsage::GenerateVerifyMac, op)?;
        if specs::hmac(entry.record.spec).map(|(m, _)| m) != Some(alg) {
            return Err(KmsError::invalid_key_usage(format!(
                "Algorithm {alg} is incompatible with key spec {} of {arn}.",
                entry.record.spec
            )));
        }
        Ok((entry, arn, alg))
    }

    /// GenerateMac: an HMAC made in the token by an HMAC key.
    pub fn generate_mac(&self, req: GenerateMacRequest) -> Result<GenerateMacResponse> {
        let message = bounded(&req.message, "message", MAX_MESSAGE)?;
        check_grant_tokens(&req.grant_tokens)?;
        let (entry, arn, alg) = self.mac_request(req.key_id, &req.mac_algorithm, "GenerateMac")?;
        dry_run(req.dry_run)?;
        let mac = self.with_backing(
            &entry,
            entry.record.current_version,
            |h| self.token.hmac(h, specs::mac_hash(alg), message),
            KmsError::from,
        )?;
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
        let (entry, arn, alg) = self.mac_request(req.key_id, &req.mac_algorithm, "VerifyMac")?;
        dry_run(req.dry_run)?;
        match self.with_backing(
            &entry,
            entry.record.current_version,
            |h| {
                self.token
                    .hmac_verify(h, specs::mac_hash(alg), message, mac)
            },
            KmsError::from,
        )? {
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
        let secret = self.with_backing(
            &entry,
            entry.record.current_version,
            |h| self.token.ecdh(h, &point, curve.field_len()),
            |e| {
                let refused = e.call().is_some_and(|c| c.is_unsupported_parameter())
                    || self
                        .backing_key(&entry, entry.record.current_version)
                        .is_ok_and(|h| self.input_refused(&e, h, &entry));
                if refused {
                    KmsError::validation("The public key is not a valid point on the key's curve")
                } else {
                    e.into()
                }
            },
        )?;
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
        Ok(self.token.rsa_encrypt(&key, hash, bits / 8, plaintext)?)
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
        if ciphertext.len() != bits / 8 {
            return Err(KmsError::invalid_ciphertext_with(
                "The ciphertext is not an RSA ciphertext of this key's size",
            ));
        }
        self.with_backing(
            entry,
            entry.record.current_version,
            |h| self.token.rsa_decrypt(h, hash, ciphertext),
            |e| match e {
                HsmError::AuthenticationFailed => KmsError::invalid_ciphertext_with(
                    "The ciphertext does not decrypt with this key and algorithm",
                ),
                e => e.into(),
            },
        )
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
