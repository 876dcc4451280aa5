//! Where results go: stdout as readable text or, with `--json`, the response itself; the text
//! forms of dates and key metadata; plaintexts to stdout or an owner-only file.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use serde::Serialize;
use zeroize::Zeroizing;

use crate::envelope;
use crate::error::{KmsError, Result};
use crate::kms::types::KeyMetadata;
use crate::kms::AwsEnum;

/// Where results go: stdout, as JSON or as readable text. It also keeps the ARNs of keys a
/// command made (CreateKey, ReplicateKey), for the command's audit record.
#[derive(Default)]
pub(super) struct Out {
    pub(super) json: bool,
    made: std::cell::RefCell<Vec<String>>,
}

impl Out {
    pub(super) fn new(json: bool) -> Out {
        Out {
            json,
            ..Out::default()
        }
    }

    /// Notes the ARN of a key the command made.
    pub(super) fn made_key(&self, arn: &str) {
        self.made.borrow_mut().push(arn.to_owned());
    }

    /// The ARNs noted by [`Out::made_key`].
    pub(super) fn keys_made(&self) -> Vec<String> {
        self.made.borrow().clone()
    }

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
    if let Some(c) = &m.multi_region_configuration {
        s.push_str(&format!(
            "MultiRegion:  {} (primary in {})\n",
            c.multi_region_key_type, c.primary_key.region
        ));
        for r in &c.replica_keys {
            s.push_str(&format!("Replica:      {}\n", r.arn));
        }
    }
    if let Some(id) = &m.current_key_material_id {
        s.push_str(&format!("CurrentKeyMaterialId: {id}\n"));
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

/// `der` as PEM with `label` (RFC 7468): base64 in lines of 64 characters between the
/// BEGIN and END lines.
pub(super) fn pem(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    // Base64 is ASCII, so every 64-byte chunk is a whole line of text.
    for line in b64.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(line));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// Writes something public (a public key) to `path`, atomically, readable by all (0644).
pub(super) fn write_public(path: &Path, data: &[u8]) -> Result<()> {
    envelope::write_atomically(path, |f| {
        f.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io_err("cannot set the mode of", path))?;
        f.write_all(data).map_err(io_err("cannot write", path))?;
        Ok(data.len() as u64)
    })
    .map(|_| ())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_wraps_at_64_characters() {
        // 48 bytes are exactly one 64-character line; 49 start a second one.
        for (len, lines) in [(1, 1), (47, 1), (48, 1), (49, 2), (96, 2), (97, 3)] {
            let der: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let p = pem("PUBLIC KEY", &der);
            let body: Vec<&str> = p.lines().collect();
            assert_eq!(body.first(), Some(&"-----BEGIN PUBLIC KEY-----"));
            assert_eq!(body.last(), Some(&"-----END PUBLIC KEY-----"));
            let inner = &body[1..body.len() - 1];
            assert_eq!(inner.len(), lines, "{len}: {p}");
            assert!(inner[..lines - 1].iter().all(|l| l.len() == 64), "{p}");
            assert!(!inner[lines - 1].is_empty() && inner[lines - 1].len() <= 64);
            assert_eq!(B64.decode(inner.concat()).unwrap(), der);
            assert!(p.ends_with("-----\n"));
        }
    }
}
