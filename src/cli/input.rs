//! What commands read: encryption context pairs, bounded plaintexts and messages, and base64
//! blobs, signatures and MACs, from files or stdin, into zeroizing buffers.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use zeroize::Zeroizing;

use super::output::io_err;
use crate::error::{KmsError, Result};
use crate::kms::types::{Bytes, ContextMap};
use crate::kms::EncryptionContext;

/// Base64 text of a ciphertext blob (at most 6144 bytes) is about 8 KiB; allow generous
/// whitespace but do not read an unbounded stream.
const MAX_BLOB_TEXT: usize = 64 * 1024;

pub(super) fn context(pairs: &[String]) -> Result<EncryptionContext> {
    EncryptionContext::from_pairs(pairs)
}

/// The request member: absent when no pairs were given.
pub(super) fn context_member(ctx: &EncryptionContext) -> Option<ContextMap> {
    (!ctx.is_empty()).then(|| ctx.as_map().clone())
}

/// Reads at most `limit` bytes from `path` or stdin into a fixed, zeroizing buffer (never
/// grown, so no stray copies of a plaintext are left in freed memory).
pub(super) fn read_bounded(path: Option<&Path>, limit: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(vec![0u8; limit]);
    let n = match path {
        Some(p) => {
            let mut f = File::open(p).map_err(io_err("cannot open", p))?;
            read_full(&mut f, &mut buf).map_err(io_err("cannot read", p))?
        }
        None => {
            // fd 0 directly: `io::stdin()` would keep a copy in its internal buffer.
            let stdin_err = |e: io::Error| KmsError::io(format!("cannot read stdin: {e}"));
            let fd = io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map_err(stdin_err)?;
            read_full(&mut File::from(fd), &mut buf).map_err(stdin_err)?
        }
    };
    buf.truncate(n);
    Ok(buf)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A base64 ciphertext blob from a file or stdin; whitespace (line breaks) is ignored.
pub(super) fn read_blob(path: Option<&Path>) -> Result<Bytes> {
    read_base64(path, "ciphertext blob", "on stdin or in --blob-file")
}

/// Base64 bytes (a ciphertext blob, a signature, a MAC) named `what` from `path` or stdin;
/// whitespace (line breaks) is ignored. `source` says where they were expected, for the error.
pub(super) fn read_base64(path: Option<&Path>, what: &str, source: &str) -> Result<Bytes> {
    let text = read_bounded(path, MAX_BLOB_TEXT + 1)?;
    if text.len() > MAX_BLOB_TEXT {
        return Err(KmsError::validation(format!(
            "the {what} input is larger than {MAX_BLOB_TEXT} bytes of base64"
        )));
    }
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return Err(KmsError::validation(format!(
            "no {what} given (expected base64 {source})"
        )));
    }
    B64.decode(&compact)
        .map(Bytes)
        .map_err(|_| KmsError::validation(format!("the {what} is not valid base64")))
}
