//! `p11kms envelope`: encrypt and decrypt files of any size under a data key, with a progress
//! bar for large files.

use std::fs::File;
use std::io::{self, IsTerminal};
use std::path::Path;

use serde::Serialize;
use zeroize::Zeroizing;

use super::args::EnvelopeCmd;
use super::input::{context, context_member};
use super::output::{io_err, Out};
use crate::envelope;
use crate::error::{KmsError, Result};
use crate::kms::types::*;
use crate::kms::Kms;

/// Files smaller than this finish too fast for a progress bar to be worth drawing.
const PROGRESS_MIN_BYTES: u64 = 8 << 20;
/// Envelope data keys are AES-256 keys.
const DATA_KEY_LEN: usize = 32;

#[derive(Serialize)]
struct EnvelopeReport<'a> {
    key_id: &'a str,
    bytes: u64,
    input: &'a Path,
    output: &'a Path,
}

/// Copies a data key into a fixed-size zeroizing array; anything but 32 bytes is not ours.
fn data_key(plaintext: SecretBytes) -> Result<DataKey> {
    let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
    if plaintext.as_slice().len() != DATA_KEY_LEN {
        return Err(KmsError::invalid_ciphertext_with(
            "the envelope's data key is not a 32-byte AES-256 key",
        ));
    }
    key.copy_from_slice(plaintext.as_slice());
    Ok(key)
}

/// An optional progress bar on stderr: only for a terminal and a large file.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(total: u64) -> Progress {
        if total < PROGRESS_MIN_BYTES || !io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
        Progress(Some(bar))
    }

    fn set(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.set_position(n);
        }
    }

    fn finish(self) {
        if let Some(b) = self.0 {
            b.finish_and_clear();
        }
    }
}

/// The files of one envelope command: `total` is the input's size (for the progress bar).
struct Files<'a> {
    input: &'a Path,
    output: &'a Path,
    total: u64,
}

type DataKey = Zeroizing<[u8; DATA_KEY_LEN]>;

/// Runs `run` into `files.output` (replaced atomically) with a progress bar, drops the data
/// key as soon as the stream is done, and reports what was done (`verb`).
fn stream(
    out: &Out,
    files: Files,
    key_arn: &str,
    dk: DataKey,
    verb: &str,
    run: impl FnOnce(&[u8; DATA_KEY_LEN], &mut File, &mut dyn FnMut(u64)) -> Result<u64>,
) -> Result<()> {
    let progress = Progress::new(files.total);
    let written =
        envelope::write_atomically(files.output, |f| run(&dk, f, &mut |n| progress.set(n)));
    // The data key is needed no longer than the stream.
    drop(dk);
    progress.finish();
    let bytes = written?;
    let report = EnvelopeReport {
        key_id: key_arn,
        bytes,
        input: files.input,
        output: files.output,
    };
    let t = format!(
        "{verb} {bytes} bytes from {} into {} under {key_arn}.",
        files.input.display(),
        files.output.display()
    );
    out.emit(&report, &t)
}

pub(super) fn envelope_cmd(kms: &Kms, out: &Out, cmd: EnvelopeCmd) -> Result<()> {
    match cmd {
        EnvelopeCmd::Encrypt {
            key,
            input,
            out: output,
            context: pairs,
            without_plaintext,
        } => {
            let ctx = context(&pairs)?;
            // Open the input first: a missing file should not cost a data key.
            let file = File::open(&input).map_err(io_err("cannot open", &input))?;
            let total = file.metadata().map_or(0, |m| m.len());
            let req = GenerateDataKeyRequest {
                key_id: Some(key.into()),
                encryption_context: context_member(&ctx),
                key_spec: Some("AES_256".into()),
                ..Default::default()
            };
            let (blob, key_arn, dk) = if without_plaintext {
                // The two-component flow: one component stores the blob, another decrypts it.
                let g = kms.generate_data_key_without_plaintext(req)?;
                let d = kms.decrypt(DecryptRequest {
                    ciphertext_blob: Some(g.ciphertext_blob.clone()),
                    encryption_context: context_member(&ctx),
                    key_id: Some(g.key_id.clone().into()),
                    ..Default::default()
                })?;
                (g.ciphertext_blob.0, g.key_id, data_key(d.plaintext)?)
            } else {
                let g = kms.generate_data_key(req)?;
                (g.ciphertext_blob.0, g.key_id, data_key(g.plaintext)?)
            };
            let header = envelope::Header::new(blob, ctx.as_map().clone())?;
            let files = Files {
                input: &input,
                output: &output,
                total,
            };
            stream(out, files, &key_arn, dk, "Encrypted", |dk, f, progress| {
                envelope::encrypt_stream(dk, &header, file, f, progress)
            })
        }
        EnvelopeCmd::Decrypt {
            input,
            out: output,
            context: pairs,
        } => {
            let required = context(&pairs)?;
            let mut file = File::open(&input).map_err(io_err("cannot open", &input))?;
            let total = file.metadata().map_or(0, |m| m.len());
            let header = envelope::Header::read_from(&mut file)?;
            for (k, v) in required.as_map() {
                if header.context.get(k) != Some(v) {
                    return Err(KmsError::invalid_ciphertext_with(format!(
                        "the envelope's encryption context does not have {k:?} = {v:?} as --context requires"
                    )));
                }
            }
            let d = kms.decrypt(DecryptRequest {
                ciphertext_blob: Some(Bytes(header.blob.clone())),
                encryption_context: Some(header.context.clone()),
                ..Default::default()
            })?;
            let key_arn = d.key_id.clone();
            let dk = data_key(d.plaintext)?;
            let files = Files {
                input: &input,
                output: &output,
                total,
            };
            stream(out, files, &key_arn, dk, "Decrypted", |dk, f, progress| {
                envelope::decrypt_stream(dk, &header, &mut file, f, progress)
            })
        }
    }
}
