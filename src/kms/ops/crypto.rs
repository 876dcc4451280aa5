//! Cryptographic operations: Encrypt, Decrypt, ReEncrypt, GenerateDataKey,
//! GenerateDataKeyWithoutPlaintext, GenerateRandom.

use zeroize::Zeroizing;

use super::super::domain::{AwsEnum, DataKeyPairSpec, DataKeySpec, EncryptionAlgorithm, KeySpec};
use super::super::specs;
use super::super::store::KeyEntry;
use super::super::types::*;
use super::super::{EncryptionContext, Forms, Kms, SealingPath};
use super::asymmetric::is_asymmetric_encryption;
use super::{
    check_grant_tokens, check_usable, context, dry_run, refuse_recipient, required,
    symmetric_algorithm,
};
use crate::error::{KmsError, Result};
use crate::hsm::{PairKind, GCM_IV_LEN};

const MAX_PLAINTEXT: usize = 4096;

/// An `EncryptionAlgorithm` member: SYMMETRIC_DEFAULT when absent.
fn algorithm(a: &Option<String>, member: &str) -> Result<EncryptionAlgorithm> {
    a.as_deref()
        .map_or(Ok(EncryptionAlgorithm::SymmetricDefault), |t| {
            EncryptionAlgorithm::parse(t, member)
        })
}

/// Asymmetric keys take no encryption context.
fn no_context(ctx: &EncryptionContext) -> Result<()> {
    if ctx.is_empty() {
        Ok(())
    } else {
        Err(KmsError::validation(
            "EncryptionContext is supported only with symmetric encryption keys",
        ))
    }
}
/// The `KeyMaterialId` a symmetric key seals under now (its current backing version).
fn current_material_id(entry: &KeyEntry) -> String {
    crate::kms::records::key_material_id(&entry.record.id, entry.record.current_version)
}

/// The `KeyMaterialId` of the backing version a symmetric blob names (it opened).
fn blob_material_id(bytes: &[u8]) -> Option<String> {
    let h = crate::kms::blob::parse(bytes).ok()?.header;
    Some(crate::kms::records::key_material_id(
        &h.key_id,
        h.key_version,
    ))
}

const MAX_DATA_KEY: i64 = 1024;
const MAX_RANDOM: i64 = 1024;

/// Data key length from exactly one of KeySpec / NumberOfBytes.
fn data_key_len(spec: &Option<String>, bytes: Option<i64>) -> Result<usize> {
    match (spec.as_deref(), bytes) {
        (Some(_), Some(_)) => Err(KmsError::validation(
            "Specify either KeySpec or NumberOfBytes, not both",
        )),
        (None, None) => Err(KmsError::validation(
            "Specify either KeySpec or NumberOfBytes",
        )),
        (Some(spec), None) => Ok(DataKeySpec::parse(spec, "keySpec")?.bytes()),
        (None, Some(n)) => {
            crate::kms::validation::range("numberOfBytes", n, 1, MAX_DATA_KEY)?;
            Ok(n as usize)
        }
    }
}

impl Kms {
    /// Resolves a key for a cryptographic operation and checks its state.
    fn crypto_key(&self, key_id: Option<KeySelector>) -> Result<KeyEntry> {
        let (id, entry) = self.resolve(&required(key_id, "keyId")?, Forms::Any)?;
        check_usable(&entry, &self.scope.key_arn(&id))?;
        Ok(entry)
    }

    fn iv(&self) -> Result<[u8; GCM_IV_LEN]> {
        let mut iv = [0u8; GCM_IV_LEN];
        self.token.random_fill(&mut iv)?;
        Ok(iv)
    }

    /// Encrypt: up to 4096 bytes under a symmetric key, sealed in the token; or, with an
    /// RSA ENCRYPT_DECRYPT key and an RSAES-OAEP algorithm, the raw RSA ciphertext (no
    /// encryption context, as at AWS).
    pub fn encrypt(&self, req: EncryptRequest) -> Result<EncryptResponse> {
        let plaintext = required(req.plaintext, "plaintext")?;
        crate::kms::validation::length(
            "plaintext",
            crate::kms::validation::Shown::Hidden,
            plaintext.0.len(),
            1,
            MAX_PLAINTEXT,
        )?;
        check_grant_tokens(&req.grant_tokens)?;
        let alg = algorithm(&req.encryption_algorithm, "encryptionAlgorithm")?;
        let ctx = context(req.encryption_context)?;
        let entry = self.crypto_key(req.key_id)?;
        let blob = if is_asymmetric_encryption(&entry) {
            no_context(&ctx)?;
            dry_run(req.dry_run)?;
            self.rsa_encrypt(&entry, alg, &plaintext.0)?
        } else {
            self.require_symmetric(&entry, "Encrypt")?;
            symmetric_algorithm(&req.encryption_algorithm, "encryptionAlgorithm")?;
            dry_run(req.dry_run)?;
            self.seal(&entry, &ctx, &plaintext.0, self.iv()?)?
        };
        Ok(EncryptResponse {
            ciphertext_blob: Bytes(blob),
            key_id: self.key_arn(&entry.record),
            encryption_algorithm: alg,
        })
    }

    /// Decrypt: the key comes from the ciphertext; the encryption context must match
    /// exactly. An RSA ciphertext carries no key: it needs the KeyId and the algorithm.
    pub fn decrypt(&self, req: DecryptRequest) -> Result<DecryptResponse> {
        refuse_recipient(&req.recipient)?;
        let blob = required(req.ciphertext_blob, "ciphertextBlob")?;
        check_grant_tokens(&req.grant_tokens)?;
        let alg = algorithm(&req.encryption_algorithm, "encryptionAlgorithm")?;
        let ctx = context(req.encryption_context)?;
        if let Some(entry) = self.asymmetric_source(req.key_id.as_ref(), alg, &ctx)? {
            let plaintext = self.rsa_decrypt(&entry, alg, &blob.0)?;
            dry_run(req.dry_run)?;
            return Ok(DecryptResponse {
                key_id: self.key_arn(&entry.record),
                plaintext: SecretBytes(plaintext),
                encryption_algorithm: alg,
                key_material_id: None,
            });
        }
        symmetric_algorithm(&req.encryption_algorithm, "encryptionAlgorithm")?;
        if req.dry_run == Some(true) {
            // Validate everything a real call would, without using the plaintext.
            self.open_blob(&blob.0, &ctx, req.key_id.as_ref())?;
            return Err(dry_run(req.dry_run).unwrap_err_or_internal());
        }
        let (id, plaintext) = self.open_blob(&blob.0, &ctx, req.key_id.as_ref())?;
        Ok(DecryptResponse {
            key_id: self.opened_key_arn(id, req.key_id.as_ref()),
            plaintext: SecretBytes(plaintext),
            encryption_algorithm: EncryptionAlgorithm::SymmetricDefault,
            key_material_id: blob_material_id(&blob.0),
        })
    }

    /// The RSA key a Decrypt (or ReEncrypt source) names, if it names one: then the
    /// ciphertext is raw RSA output. A non-encryption key is refused here; a symmetric key
    /// is `None` (its blob names the key, and is checked against it).
    fn asymmetric_source(
        &self,
        key_id: Option<&KeySelector>,
        alg: EncryptionAlgorithm,
        ctx: &EncryptionContext,
    ) -> Result<Option<KeyEntry>> {
        let Some(key) = key_id else {
            if alg != EncryptionAlgorithm::SymmetricDefault {
                return Err(KmsError::validation(format!(
                    "KeyId is required to decrypt with {alg}"
                )));
            }
            return Ok(None);
        };
        let (id, entry) = self.resolve(key, Forms::Any)?;
        if entry.record.spec == KeySpec::SymmetricDefault {
            return Ok(None);
        }
        check_usable(&entry, &self.scope.key_arn(&id))?;
        if !is_asymmetric_encryption(&entry) {
            self.require_symmetric(&entry, "Decrypt")?;
        }
        no_context(ctx)?;
        Ok(Some(entry))
    }

    /// ReEncrypt: opens under the source key and seals under the destination key in one call
    /// (either may be an RSA key, with its algorithm).
    pub fn re_encrypt(&self, req: ReEncryptRequest) -> Result<ReEncryptResponse> {
        let blob = required(req.ciphertext_blob, "ciphertextBlob")?;
        check_grant_tokens(&req.grant_tokens)?;
        let src_alg = algorithm(
            &req.source_encryption_algorithm,
            "sourceEncryptionAlgorithm",
        )?;
        let dst_alg = algorithm(
            &req.destination_encryption_algorithm,
            "destinationEncryptionAlgorithm",
        )?;
        let src_ctx = context(req.source_encryption_context)?;
        let dst_ctx = context(req.destination_encryption_context)?;
        let dst = self.crypto_key(req.destination_key_id)?;
        let dst_rsa = is_asymmetric_encryption(&dst);
        if dst_rsa {
            no_context(&dst_ctx)?;
        } else {
            self.require_symmetric(&dst, "ReEncrypt")?;
            symmetric_algorithm(
                &req.destination_encryption_algorithm,
                "destinationEncryptionAlgorithm",
            )?;
        }
        let (src, plaintext, src_material) =
            match self.asymmetric_source(req.source_key_id.as_ref(), src_alg, &src_ctx)? {
                Some(entry) => (
                    entry.record.id,
                    self.rsa_decrypt(&entry, src_alg, &blob.0)?,
                    None,
                ),
                None => {
                    symmetric_algorithm(
                        &req.source_encryption_algorithm,
                        "sourceEncryptionAlgorithm",
                    )?;
                    let (id, p) = self.open_blob(&blob.0, &src_ctx, req.source_key_id.as_ref())?;
                    (id, p, blob_material_id(&blob.0))
                }
            };
        dry_run(req.dry_run)?;
        let out = if dst_rsa {
            self.rsa_encrypt(&dst, dst_alg, &plaintext)?
        } else {
            self.seal(&dst, &dst_ctx, &plaintext, self.iv()?)?
        };
        Ok(ReEncryptResponse {
            ciphertext_blob: Bytes(out),
            source_key_id: self.opened_key_arn(src, req.source_key_id.as_ref()),
            key_id: self.key_arn(&dst.record),
            source_encryption_algorithm: src_alg,
            destination_encryption_algorithm: dst_alg,
            source_key_material_id: src_material,
            destination_key_material_id: (!dst_rsa).then(|| current_material_id(&dst)),
        })
    }

    /// A symmetric-only operation on another kind of key: `InvalidKeyUsageException`.
    pub(super) fn require_symmetric(&self, entry: &KeyEntry, op: &str) -> Result<()> {
        let r = &entry.record;
        if r.spec == KeySpec::SymmetricDefault {
            return Ok(());
        }
        Err(KmsError::invalid_key_usage(format!(
            "{} key usage is {} and key spec is {}, which is not valid for {op}.",
            self.scope.key_arn(&r.id),
            r.usage,
            r.spec
        )))
    }

    /// The checks shared by GenerateDataKey(WithoutPlaintext): length, context, key.
    fn data_key_request(
        &self,
        req: GenerateDataKeyRequest,
    ) -> Result<(usize, EncryptionContext, KeyEntry)> {
        let len = data_key_len(&req.key_spec, req.number_of_bytes)?;
        check_grant_tokens(&req.grant_tokens)?;
        let ctx = context(req.encryption_context)?;
        let entry = self.crypto_key(req.key_id)?;
        self.require_symmetric(&entry, "GenerateDataKey")?;
        dry_run(req.dry_run)?;
        Ok((len, ctx, entry))
    }

    /// The host path: key bytes and IV from the token RNG in one call, sealed by the token with
    /// `C_Encrypt` under the epoch key. The key bytes are in host memory until the caller drops
    /// them (zeroized).
    fn host_data_key(
        &self,
        entry: &KeyEntry,
        ctx: &EncryptionContext,
        len: usize,
    ) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>)> {
        let mut random = self.token.random(len + GCM_IV_LEN)?;
        let mut iv = [0u8; GCM_IV_LEN];
        iv.copy_from_slice(&random[len..]);
        random.truncate(len);
        let blob = self.seal(entry, ctx, &random, iv)?;
        Ok((blob, random))
    }

    /// GenerateDataKey always takes the host path, on every token: the caller asks for the
    /// plaintext, so it reaches host memory whichever way it is made, and generating it in the
    /// token would cost a `C_GenerateKey` + `C_WrapKey` + `C_DestroyObject` + `C_Decrypt`
    /// instead of one `C_GenerateRandom` + `C_Encrypt`, for the same blob.
    pub fn generate_data_key(
        &self,
        req: GenerateDataKeyRequest,
    ) -> Result<GenerateDataKeyResponse> {
        refuse_recipient(&req.recipient)?;
        let (len, ctx, entry) = self.data_key_request(req)?;
        let (blob, plaintext) = self.host_data_key(&entry, &ctx, len)?;
        Ok(GenerateDataKeyResponse {
            ciphertext_blob: Bytes(blob),
            plaintext: SecretBytes(plaintext),
            key_id: self.key_arn(&entry.record),
            key_material_id: current_material_id(&entry),
        })
    }

    /// GenerateDataKeyWithoutPlaintext: on the token path the data key is generated and sealed
    /// inside the token (`C_GenerateKey` + `C_WrapKey` with AES-GCM) and its bytes never enter
    /// this process; only the IV comes from `C_GenerateRandom`. On the host path, as
    /// GenerateDataKey, the plaintext dropped (zeroized) as soon as it is sealed.
    pub fn generate_data_key_without_plaintext(
        &self,
        req: GenerateDataKeyRequest,
    ) -> Result<GenerateDataKeyWithoutPlaintextResponse> {
        let (len, ctx, entry) = self.data_key_request(req)?;
        let in_token = self.sealing == SealingPath::Token
            && self
                .token
                .capabilities()
                .in_token_data_keys
                .is_some_and(|k| k.covers(len));
        let blob = if in_token {
            self.seal_with(&entry, &ctx, self.iv()?, |key, iv, aad| {
                Ok(self.token.seal_new_data_key(key, iv, aad, len)?)
            })?
        } else if self.require_in_token {
            return Err(KmsError::unsupported(format!(
                "this token can seal only 16- and 32-byte data keys inside itself, and \
                 in-token sealing is required; ask for AES_128, AES_256, 16 or 32 bytes \
                 (not {len})"
            )));
        } else {
            self.host_data_key(&entry, &ctx, len)?.0
        };
        Ok(GenerateDataKeyWithoutPlaintextResponse {
            ciphertext_blob: Bytes(blob),
            key_id: self.key_arn(&entry.record),
            key_material_id: current_material_id(&entry),
        })
    }

    /// The checks shared by GenerateDataKeyPair(WithoutPlaintext).
    fn data_key_pair_request(
        &self,
        req: GenerateDataKeyPairRequest,
    ) -> Result<(DataKeyPairSpec, PairKind, EncryptionContext, KeyEntry)> {
        refuse_recipient(&req.recipient)?;
        let spec =
            DataKeyPairSpec::parse(&required(req.key_pair_spec, "keyPairSpec")?, "keyPairSpec")?;
        let pair = specs::data_pair_kind(spec).ok_or_else(|| {
            KmsError::unsupported(format!("KeyPairSpec {spec} is not supported by p11kms"))
        })?;
        check_grant_tokens(&req.grant_tokens)?;
        let ctx = context(req.encryption_context)?;
        let entry = self.crypto_key(req.key_id)?;
        self.require_symmetric(&entry, "GenerateDataKeyPair")?;
        self.check_pair_offered(spec, pair)?;
        dry_run(req.dry_run)?;
        Ok((spec, pair, ctx, entry))
    }

    /// UnsupportedOperationException unless the token generates data key pairs of `pair`.
    fn check_pair_offered(&self, spec: DataKeyPairSpec, pair: PairKind) -> Result<()> {
        let missing = self.token.capabilities().missing_for_data_key_pair(pair);
        if !missing.is_empty() {
            return Err(KmsError::unsupported(format!(
                "KeyPairSpec {spec} is not available on this token: it lacks {}",
                missing.join(", ")
            )));
        }
        Ok(())
    }

    /// Every KeyPairSpec, with why this token cannot make it (`None`: offered). For
    /// `p11kms token info`.
    pub fn offered_data_key_pair_specs(&self) -> Vec<(DataKeyPairSpec, Option<String>)> {
        DataKeyPairSpec::ALL
            .iter()
            .map(|&spec| {
                let why = match specs::data_pair_kind(spec) {
                    Some(pair) => self
                        .check_pair_offered(spec, pair)
                        .err()
                        .map(|e| e.message().to_string()),
                    None => Some(format!("KeyPairSpec {spec} is not supported by p11kms")),
                };
                (spec, why)
            })
            .collect()
    }

    /// GenerateDataKeyPair: a key pair generated in the token as session objects; the
    /// private key (PKCS#8) is returned and sealed under the symmetric key, with the
    /// encryption context.
    pub fn generate_data_key_pair(
        &self,
        req: GenerateDataKeyPairRequest,
    ) -> Result<GenerateDataKeyPairResponse> {
        let (spec, pair, ctx, entry) = self.data_key_pair_request(req)?;
        let (pkcs8, spki) = self.token.data_key_pair(pair)?;
        let blob = self.seal(&entry, &ctx, &pkcs8, self.iv()?)?;
        Ok(GenerateDataKeyPairResponse {
            private_key_ciphertext_blob: Bytes(blob),
            private_key_plaintext: Some(SecretBytes(pkcs8)),
            public_key: Bytes(spki),
            key_id: self.key_arn(&entry.record),
            key_pair_spec: spec,
            key_material_id: current_material_id(&entry),
        })
    }

    /// GenerateDataKeyPairWithoutPlaintext: where the token wraps private keys with
    /// AES-GCM, the private key is sealed inside the token (`C_WrapKey` under the epoch key)
    /// and never enters this process; elsewhere it is read, sealed and wiped at once.
    pub fn generate_data_key_pair_without_plaintext(
        &self,
        req: GenerateDataKeyPairRequest,
    ) -> Result<GenerateDataKeyPairResponse> {
        let (spec, pair, ctx, entry) = self.data_key_pair_request(req)?;
        let in_token =
            self.sealing == SealingPath::Token && self.token.capabilities().private_key_gcm_wrap;
        let (blob, spki) = if in_token {
            let mut public = None;
            let blob = self.seal_with(&entry, &ctx, self.iv()?, |key, iv, aad| {
                let (sealed, spki) = self.token.seal_new_key_pair(key, iv, aad, pair)?;
                public = Some(spki);
                Ok(sealed)
            })?;
            let spki = public.ok_or_else(|| KmsError::internal("no public key was made"))?;
            (blob, spki)
        } else if self.require_in_token {
            return Err(KmsError::unsupported(
                "this token cannot wrap a private key with AES-GCM, and in-token sealing is \
                 required",
            ));
        } else {
            let (pkcs8, spki) = self.token.data_key_pair(pair)?;
            (self.seal(&entry, &ctx, &pkcs8, self.iv()?)?, spki)
        };
        Ok(GenerateDataKeyPairResponse {
            private_key_ciphertext_blob: Bytes(blob),
            private_key_plaintext: None,
            public_key: Bytes(spki),
            key_id: self.key_arn(&entry.record),
            key_pair_spec: spec,
            key_material_id: current_material_id(&entry),
        })
    }

    /// GenerateRandom: bytes from the token's RNG.
    pub fn generate_random(&self, req: GenerateRandomRequest) -> Result<GenerateRandomResponse> {
        refuse_recipient(&req.recipient)?;
        if req.custom_key_store_id.is_some() {
            return Err(KmsError::unsupported(
                "Custom key stores are not supported by p11kms",
            ));
        }
        let n = required(req.number_of_bytes, "numberOfBytes")?;
        crate::kms::validation::range("numberOfBytes", n, 1, MAX_RANDOM)?;
        let n = n as usize;
        Ok(GenerateRandomResponse {
            plaintext: SecretBytes(self.token.random(n)?),
        })
    }
}

trait ErrOrInternal {
    fn unwrap_err_or_internal(self) -> KmsError;
}

impl ErrOrInternal for Result<()> {
    fn unwrap_err_or_internal(self) -> KmsError {
        match self {
            Err(e) => e,
            Ok(()) => KmsError::internal("dry run produced no outcome"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_key_length_rules() {
        assert_eq!(data_key_len(&Some("AES_256".into()), None).unwrap(), 32);
        assert_eq!(data_key_len(&Some("AES_128".into()), None).unwrap(), 16);
        assert_eq!(data_key_len(&None, Some(1)).unwrap(), 1);
        assert_eq!(data_key_len(&None, Some(1024)).unwrap(), 1024);
        for (spec, n) in [
            (None, None),
            (Some("AES_256".to_string()), Some(32)),
            (Some("AES_512".to_string()), None),
            (None, Some(0)),
            (None, Some(1025)),
            (None, Some(-1)),
        ] {
            assert_eq!(
                data_key_len(&spec, n).unwrap_err().aws_name(),
                "ValidationException"
            );
        }
    }
}
