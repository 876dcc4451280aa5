//! `p11kms datakey`, `datakey-pair`, `encrypt`, `decrypt`, `reencrypt` and `random`: one KMS
//! operation each on small inputs.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Serialize;
use zeroize::Zeroizing;

use super::args::{
    DatakeyArgs, DatakeyPairArgs, DecryptArgs, EncryptArgs, RandomArgs, ReencryptArgs,
};
use super::input::{context, context_member, read_blob, read_bounded};
use super::output::{write_plaintext, Out};
use crate::error::Result;
use crate::kms::types::*;
use crate::kms::{AwsEnum, Kms};

/// Plaintext limit of Encrypt; one byte more is read so the library can refuse oversized input.
const MAX_ENCRYPT_INPUT: usize = 4096;

pub(super) fn datakey(kms: &Kms, out: &Out, args: DatakeyArgs) -> Result<()> {
    let ctx = context(&args.context)?;
    let key_spec = match (&args.spec, args.bytes) {
        (None, None) => Some("AES_256".to_owned()),
        (spec, _) => spec.clone(),
    };
    let req = GenerateDataKeyRequest {
        key_id: Some(args.key.into()),
        encryption_context: context_member(&ctx),
        number_of_bytes: args.bytes,
        key_spec,
        ..Default::default()
    };
    if args.without_plaintext {
        let r = kms.generate_data_key_without_plaintext(req)?;
        let t = format!(
            "CiphertextBlob: {}\nKeyId: {}\n",
            B64.encode(&r.ciphertext_blob.0),
            r.key_id
        );
        out.emit(&r, &t)
    } else {
        let r = kms.generate_data_key(req)?;
        // Printing the data key is this command's job; the text is wiped after.
        let t = Zeroizing::new(format!(
            "CiphertextBlob: {}\nKeyId: {}\nPlaintext: {}\n",
            B64.encode(&r.ciphertext_blob.0),
            r.key_id,
            Zeroizing::new(B64.encode(r.plaintext.as_slice())).as_str()
        ));
        out.emit(&r, &t)
    }
}

pub(super) fn datakey_pair(kms: &Kms, out: &Out, args: DatakeyPairArgs) -> Result<()> {
    let ctx = context(&args.context)?;
    let req = GenerateDataKeyPairRequest {
        key_id: Some(args.key.into()),
        key_pair_spec: Some(args.spec),
        encryption_context: context_member(&ctx),
        ..Default::default()
    };
    let r = if args.without_plaintext {
        kms.generate_data_key_pair_without_plaintext(req)?
    } else {
        kms.generate_data_key_pair(req)?
    };
    let blob = B64.encode(&r.private_key_ciphertext_blob.0);
    let public = B64.encode(&r.public_key.0);
    // Printing the private key is this command's job; its text is wiped after.
    let private = r
        .private_key_plaintext
        .as_ref()
        .map(|p| Zeroizing::new(B64.encode(p.as_slice())));
    let mut fields = vec![
        ("PrivateKeyCiphertextBlob", blob.as_str()),
        ("PublicKey", public.as_str()),
        ("KeyId", r.key_id.as_str()),
        ("KeyPairSpec", r.key_pair_spec.as_str()),
    ];
    if let Some(p) = &private {
        fields.push(("PrivateKeyPlaintext", p.as_str()));
    }
    out.emit(&r, &lines(&fields))
}

/// `Name: value` lines in a buffer sized once (never regrown, so no unwiped copy of a secret
/// value is left behind) and wiped on drop.
fn lines(fields: &[(&str, &str)]) -> Zeroizing<String> {
    let len = fields.iter().map(|(k, v)| k.len() + v.len() + 3).sum();
    let mut t = Zeroizing::new(String::with_capacity(len));
    for (k, v) in fields {
        t.push_str(k);
        t.push_str(": ");
        t.push_str(v);
        t.push('\n');
    }
    t
}

pub(super) fn encrypt(kms: &Kms, out: &Out, args: EncryptArgs) -> Result<()> {
    let ctx = context(&args.context)?;
    let plaintext = read_bounded(args.input.as_deref(), MAX_ENCRYPT_INPUT + 1)?;
    let r = kms.encrypt(EncryptRequest {
        key_id: Some(args.key.into()),
        plaintext: Some(SecretBytes(plaintext)),
        encryption_context: context_member(&ctx),
        encryption_algorithm: args.algorithm,
        ..Default::default()
    })?;
    out.emit(&r, &B64.encode(&r.ciphertext_blob.0))
}

/// DecryptResponse without the plaintext, for `decrypt --out F --json`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptedToFile<'a> {
    key_id: &'a str,
    encryption_algorithm: &'a str,
}

pub(super) fn decrypt(kms: &Kms, out: &Out, args: DecryptArgs) -> Result<()> {
    let ctx = context(&args.context)?;
    let blob = read_blob(args.blob_file.as_deref())?;
    let r = kms.decrypt(DecryptRequest {
        ciphertext_blob: Some(blob),
        encryption_context: context_member(&ctx),
        key_id: args.key.map(Into::into),
        encryption_algorithm: args.algorithm,
        ..Default::default()
    })?;
    match (&args.out, out.json) {
        (None, true) => out.emit(&r, ""),
        (None, false) => write_plaintext(None, r.plaintext.as_slice()),
        (Some(path), json) => {
            write_plaintext(Some(path), r.plaintext.as_slice())?;
            if json {
                out.emit(
                    &DecryptedToFile {
                        key_id: &r.key_id,
                        encryption_algorithm: crate::kms::AwsEnum::as_str(r.encryption_algorithm),
                    },
                    "",
                )
            } else {
                Ok(())
            }
        }
    }
}

pub(super) fn reencrypt(kms: &Kms, out: &Out, args: ReencryptArgs) -> Result<()> {
    let src = context(&args.context)?;
    let dst = context(&args.dest_context)?;
    let blob = read_blob(args.blob_file.as_deref())?;
    let r = kms.re_encrypt(ReEncryptRequest {
        ciphertext_blob: Some(blob),
        source_encryption_context: context_member(&src),
        source_key_id: args.source_key.map(Into::into),
        destination_key_id: Some(args.key.into()),
        destination_encryption_context: context_member(&dst),
        source_encryption_algorithm: args.source_algorithm,
        destination_encryption_algorithm: args.dest_algorithm,
        ..Default::default()
    })?;
    out.emit(&r, &B64.encode(&r.ciphertext_blob.0))
}

pub(super) fn random(kms: &Kms, out: &Out, args: RandomArgs) -> Result<()> {
    let r = kms.generate_random(GenerateRandomRequest {
        number_of_bytes: Some(args.bytes),
        ..Default::default()
    })?;
    let t = Zeroizing::new(B64.encode(r.plaintext.as_slice()));
    out.emit(&r, &t)
}
