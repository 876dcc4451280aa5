//! Where results go: stdout as readable text or, with `--json`, the response itself; the text
//! forms of dates and key metadata; plaintexts to stdout or an owner-only file.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::Path;

use serde::Serialize;
use zeroize::Zeroizing;

use crate::envelope;
use crate::error::{KmsError, Result};
use crate::kms::types::KeyMetadata;
use crate::kms::AwsEnum;

/// Where results go: stdout, as JSON or as readable text.
pub(super) struct Out {
    pub(super) json: bool,
}

impl Out {
    /// Prints `value` as JSON with `--json`, otherwise `text` (a trailing newline is added
    /// when missing).
    pub(super) fn emit<T: Serialize>(&self, value: &T, text: &str) -> Result<()> {
        // Sized so that no response carrying a secret (at most 4096 bytes, base64) ever makes
        // the buffer reallocate and leave an unwiped copy behind.
        let mut buf = Zeroizing::new(Vec::with_capacity(16 * 1024));
        if self.json {
            serde_json::to_writer_pretty(&mut *buf, value)
                .map_err(|e| KmsError::internal(format!("serializing the response: {e}")))?;
            buf.push(b'\n');
        } else {
            buf.extend_from_slice(text.as_bytes());
            if !text.is_empty() && !text.ends_with('\n') {
                buf.push(b'\n');
            }
        }
        write_stdout(&buf)
    }
}

/// Writes to fd 1 directly: `io::stdout()` keeps a copy of what passes through its buffer,
/// which would include plaintexts.
fn write_stdout(bytes: &[u8]) -> Result<()> {
    let fd = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(stdout_err)?;
    File::from(fd).write_all(bytes).map_err(stdout_err)
}

/// The JSON of operations whose AWS response has no body.
#[derive(Serialize)]
pub(super) struct Empty {}

fn stdout_err(e: io::Error) -> KmsError {
    KmsError::io(format!("writing to stdout: {e}"))
}

pub(super) fn io_err<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(io::Error) -> KmsError + 'a {
    move |e| KmsError::io(format!("{what} {}: {e}", path.display()))
}

/// Unix seconds as RFC 3339 (UTC); the raw number if out of range.
pub(super) fn date(secs: f64) -> String {
    let nanos = (secs * 1e9) as i128;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.replace_nanosecond(0)
                .ok()?
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

pub(super) fn metadata_text(m: &KeyMetadata) -> String {
    let mut s = format!(
        "KeyId:        {}\nArn:          {}\nKeyState:     {}\nDescription:  {}\nCreationDate: {}\nKeySpec:      {}\nKeyUsage:     {}\n",
        m.key_id,
        m.arn,
        m.key_state,
        m.description,
        date(m.creation_date),
        m.key_spec,
        m.key_usage,
    );
    for (name, list) in [
        ("EncryptionAlgorithms", names(&m.encryption_algorithms)),
        ("SigningAlgorithms", names(&m.signing_algorithms)),
        ("MacAlgorithms", names(&m.mac_algorithms)),
        ("KeyAgreementAlgorithms", names(&m.key_agreement_algorithms)),
    ] {
        if let Some(list) = list {
            s.push_str(&format!("{name}: {list}\n"));
        }
    }
    if let Some(d) = m.deletion_date {
        s.push_str(&format!("DeletionDate: {}\n", date(d)));
    }
    s
}

/// An algorithm list of KeyMetadata or GetPublicKey as AWS names, comma-separated (`None`
/// when the key lists none).
pub(super) fn names<T: AwsEnum>(list: &Option<Vec<T>>) -> Option<String> {
    list.as_ref()
        .filter(|l| !l.is_empty())
        .map(|l| l.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", "))
}

/// Writes a plaintext to `path` (0600, atomically) or to stdout.
pub(super) fn write_plaintext(path: Option<&Path>, data: &[u8]) -> Result<()> {
    match path {
        Some(p) => envelope::write_atomically(p, |f| {
            f.write_all(data).map_err(io_err("cannot write", p))?;
            Ok(data.len() as u64)
        })
        .map(|_| ()),
        None => write_stdout(data),
    }
}
