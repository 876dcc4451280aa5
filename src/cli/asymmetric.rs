//! `p11kms sign`, `verify`, `public-key` and `mac`: the operations of asymmetric and HMAC keys, one KMS operation
//! each on small inputs.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::args::{MacCmd, PublicKeyArgs, SignArgs, VerifyArgs};
use super::input::{read_base64, read_bounded};
use super::output::{pem, write_public, Out};
use crate::error::{KmsError, Result};
use crate::kms::types::*;
use crate::kms::Kms;

/// Message limit of Sign, Verify, GenerateMac and VerifyMac; one byte more is read so that
/// the library refuses oversized input.
const MAX_MESSAGE: usize = 4096;

pub(super) fn sign(kms: &Kms, out: &Out, args: SignArgs) -> Result<()> {
    let message = read_bounded(args.input.as_deref(), MAX_MESSAGE + 1)?;
    let r = kms.sign(SignRequest {
        key_id: Some(args.key.into()),
        message: Some(SecretBytes(message)),
        message_type: args.message_type,
        signing_algorithm: Some(args.algorithm),
        ..Default::default()
    })?;
    out.emit(&r, &B64.encode(&r.signature.0))
}

/// An invalid signature is the library's KMSInvalidSignatureException, reported as every
/// error is (exit 1).
pub(super) fn verify(kms: &Kms, out: &Out, args: VerifyArgs) -> Result<()> {
    let signature = read_base64(
        Some(&args.signature_file),
        "signature",
        "in --signature-file",
    )?;
    let m = args.message;
    let message = read_bounded(m.input.as_deref(), MAX_MESSAGE + 1)?;
    let r = kms.verify(VerifyRequest {
        key_id: Some(m.key.into()),
        message: Some(SecretBytes(message)),
        message_type: m.message_type,
        signature: Some(signature),
        signing_algorithm: Some(m.algorithm),
        ..Default::default()
    })?;
    if !r.signature_valid {
        // Not an answer Verify gives (it fails instead), but never print `valid` for it.
        return Err(KmsError::invalid_signature("The signature is not valid"));
    }
    out.emit(&r, "valid")
}

pub(super) fn public_key(kms: &Kms, out: &Out, args: PublicKeyArgs) -> Result<()> {
    let r = kms.get_public_key(KeyIdRequest {
        key_id: Some(args.key.into()),
        grant_tokens: None,
    })?;
    let der = &r.public_key.0;
    let text = if args.pem {
        pem("PUBLIC KEY", der)
    } else {
        B64.encode(der)
    };
    match &args.out {
        None => out.emit(&r, &text),
        Some(path) => {
            write_public(path, if args.pem { text.as_bytes() } else { der })?;
            if out.json {
                out.emit(&r, "")
            } else {
                Ok(())
            }
        }
    }
}

/// An HMAC that does not verify is the library's KMSInvalidMacException (exit 1).
pub(super) fn mac(kms: &Kms, out: &Out, cmd: MacCmd) -> Result<()> {
    match cmd {
        MacCmd::Generate(args) => {
            let message = read_bounded(args.input.as_deref(), MAX_MESSAGE + 1)?;
            let r = kms.generate_mac(GenerateMacRequest {
                key_id: Some(args.key.into()),
                message: Some(SecretBytes(message)),
                mac_algorithm: Some(args.algorithm),
                ..Default::default()
            })?;
            out.emit(&r, &B64.encode(&r.mac.0))
        }
        MacCmd::Verify(args) => {
            let mac = read_base64(Some(&args.mac_file), "MAC", "in --mac-file")?;
            let m = args.message;
            let message = read_bounded(m.input.as_deref(), MAX_MESSAGE + 1)?;
            let r = kms.verify_mac(VerifyMacRequest {
                key_id: Some(m.key.into()),
                message: Some(SecretBytes(message)),
                mac_algorithm: Some(m.algorithm),
                mac: Some(mac),
                ..Default::default()
            })?;
            if !r.mac_valid {
                // As for Verify: never print `valid` for an answer that is not.
                return Err(KmsError::invalid_mac("The MAC is not valid"));
            }
            out.emit(&r, "valid")
        }
    }
}
