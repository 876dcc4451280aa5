//! Cryptographic operations: Encrypt, Decrypt, ReEncrypt, GenerateDataKey,
//! GenerateDataKeyWithoutPlaintext, GenerateRandom.

use zeroize::Zeroizing;

use super::super::domain::{AwsEnum, DataKeySpec, EncryptionAlgorithm};
use super::super::store::KeyEntry;
use super::super::types::*;
use super::super::{EncryptionContext, Forms, Kms, SealingPath};
use super::{
    check_grant_tokens, check_usable, context, dry_run, refuse_recipient, required,
    symmetric_algorithm,
};
use crate::error::{KmsError, Result};
use crate::hsm::GCM_IV_LEN;

const MAX_PLAINTEXT: usize = 4096;
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
        (None, Some(n @ 1..=MAX_DATA_KEY)) => Ok(n as usize),
        (None, Some(n)) => Err(KmsError::validation(format!(
            "1 validation error detected: Value '{n}' at 'numberOfBytes' failed to satisfy constraint: Member must have value between 1 and 1024"
        ))),
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

    /// Encrypt: up to 4096 bytes under a symmetric key, sealed in the token.
    pub fn encrypt(&self, req: EncryptRequest) -> Result<EncryptResponse> {
        let plaintext = required(req.plaintext, "plaintext")?;
        if plaintext.0.is_empty() || plaintext.0.len() > MAX_PLAINTEXT {
            return Err(KmsError::validation(
                "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: Member must have length between 1 and 4096",
            ));
        }
        check_grant_tokens(&req.grant_tokens)?;
        symmetric_algorithm(&req.encryption_algorithm, "encryptionAlgorithm")?;
        let ctx = context(req.encryption_context)?;
        let entry = self.crypto_key(req.key_id)?;
        dry_run(req.dry_run)?;
        let blob = self.seal(&entry, &ctx, &plaintext.0, self.iv()?)?;
        Ok(EncryptResponse {
            ciphertext_blob: Bytes(blob),
            key_id: self.scope.key_arn(&entry.record.id),
            encryption_algorithm: EncryptionAlgorithm::SymmetricDefault,
        })
    }

    /// Decrypt: the key comes from the ciphertext; the encryption context must match exactly.
    pub fn decrypt(&self, req: DecryptRequest) -> Result<DecryptResponse> {
        refuse_recipient(&req.recipient)?;
        let blob = required(req.ciphertext_blob, "ciphertextBlob")?;
        check_grant_tokens(&req.grant_tokens)?;
        symmetric_algorithm(&req.encryption_algorithm, "encryptionAlgorithm")?;
        let ctx = context(req.encryption_context)?;
        if req.dry_run == Some(true) {
            // Validate everything a real call would, without using the plaintext.
            self.open_blob(&blob.0, &ctx, req.key_id.as_ref())?;
            return Err(dry_run(req.dry_run).unwrap_err_or_internal());
        }
        let (id, plaintext) = self.open_blob(&blob.0, &ctx, req.key_id.as_ref())?;
        Ok(DecryptResponse {
            key_id: self.scope.key_arn(&id),
            plaintext: SecretBytes(plaintext),
            encryption_algorithm: EncryptionAlgorithm::SymmetricDefault,
        })
    }

    /// ReEncrypt: opens under the source key and seals under the destination key in one call.
    pub fn re_encrypt(&self, req: ReEncryptRequest) -> Result<ReEncryptResponse> {
        let blob = required(req.ciphertext_blob, "ciphertextBlob")?;
        check_grant_tokens(&req.grant_tokens)?;
        symmetric_algorithm(
            &req.source_encryption_algorithm,
            "sourceEncryptionAlgorithm",
        )?;
        symmetric_algorithm(
            &req.destination_encryption_algorithm,
            "destinationEncryptionAlgorithm",
        )?;
        let src_ctx = context(req.source_encryption_context)?;
        let dst_ctx = context(req.destination_encryption_context)?;
        let dst = self.crypto_key(req.destination_key_id)?;
        let (src, plaintext) = self.open_blob(&blob.0, &src_ctx, req.source_key_id.as_ref())?;
        dry_run(req.dry_run)?;
        let out = self.seal(&dst, &dst_ctx, &plaintext, self.iv()?)?;
        Ok(ReEncryptResponse {
            ciphertext_blob: Bytes(out),
            source_key_id: self.scope.key_arn(&src),
            key_id: self.scope.key_arn(&dst.record.id),
            source_encryption_algorithm: EncryptionAlgorithm::SymmetricDefault,
            destination_encryption_algorithm: EncryptionAlgorithm::SymmetricDefault,
        })
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
            key_id: self.scope.key_arn(&entry.record.id),
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
            key_id: self.scope.key_arn(&entry.record.id),
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
        let n = match required(req.number_of_bytes, "numberOfBytes")? {
            n @ 1..=MAX_RANDOM => n as usize,
            n => {
                return Err(KmsError::validation(format!(
                    "1 validation error detected: Value '{n}' at 'numberOfBytes' failed to satisfy constraint: Member must have value between 1 and 1024"
                )))
            }
        };
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
