//! The envelope file container: a data key's KMS ciphertext blob in a header, followed by the
//! file's contents encrypted under that data key in authenticated chunks.
//!
//! The chunking is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015) over
//! AES-256-GCM: every chunk carries its position and a "last chunk" flag in its nonce, so
//! reordering, duplication, truncation and appended data all fail authentication. Every chunk
//! also authenticates the whole encoded header as AAD, so the blob, encryption context, chunk
//! size and nonce prefix cannot be swapped either. See `docs/envelope-format.md`.
//!
//! This module is pure format and crypto: asking the KMS for (or to decrypt) the data key is the
//! caller's job. Memory use is one chunk buffer whatever the file size.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::path::Path;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, Key, KeyInit, Nonce, Tag};
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::{Zeroize, Zeroizing};

use crate::config::file::TempFile;
use crate::error::{KmsError, Result};

/// First eight bytes of every envelope file.
pub const MAGIC: &[u8; 8] = b"P11KMSE1";
/// The only format version this code reads and writes.
pub const VERSION: u8 = 1;
/// Plaintext bytes per chunk used by [`Header::new`].
pub const DEFAULT_CHUNK: u32 = 64 * 1024;
/// Smallest accepted chunk size (keeps the per-chunk tag overhead sane).
pub const MIN_CHUNK: u32 = 4 * 1024;
/// Largest accepted chunk size (bounds the memory a hostile header can make us allocate).
pub const MAX_CHUNK: u32 = 16 * 1024 * 1024;
/// Largest accepted data-key ciphertext blob (AWS's CiphertextBlob limit).
pub const MAX_BLOB: usize = 6144;
/// Largest accepted encryption-context JSON.
pub const MAX_CONTEXT_JSON: usize = 64 * 1024;
/// Length of the random per-file nonce prefix.
pub const NONCE_PREFIX_LEN: usize = 7;
/// AES-GCM tag length appended to every chunk.
pub const TAG_LEN: usize = 16;

/// The envelope header. Its encoding ([`Header::encode`]) is also the AAD of every chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The KMS ciphertext blob of the data key (1..=6144 bytes).
    pub blob: Vec<u8>,
    /// The encryption context the data key was generated with.
    pub context: BTreeMap<String, String>,
    /// Plaintext bytes per chunk (4 KiB..=16 MiB).
    pub chunk_size: u32,
    /// Random per file, so two files under the same data key never share a nonce.
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl Header {
    /// A header with a fresh random nonce prefix and [`DEFAULT_CHUNK`].
    pub fn new(blob: Vec<u8>, context: BTreeMap<String, String>) -> Result<Header> {
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        OsRng
            .try_fill_bytes(&mut nonce_prefix)
            .map_err(|e| KmsError::internal(format!("the system random generator failed: {e}")))?;
        let header = Header {
            blob,
            context,
            chunk_size: DEFAULT_CHUNK,
            nonce_prefix,
        };
        header.validate()?;
        Ok(header)
    }

    /// Checks the limits [`Header::read_from`] enforces, so we never write a file we would
    /// refuse to read. The fields are public, hence the separate check.
    pub fn validate(&self) -> Result<()> {
        if self.blob.is_empty() || self.blob.len() > MAX_BLOB {
            return Err(KmsError::validation(format!(
                "the data-key ciphertext blob is {} bytes; it must be 1 to {MAX_BLOB}",
                self.blob.len()
            )));
        }
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&self.chunk_size) {
            return Err(KmsError::validation(format!(
                "the chunk size {} is outside {MIN_CHUNK}..={MAX_CHUNK}",
                self.chunk_size
            )));
        }
        let json_len = context_json(&self.context).len();
        if json_len > MAX_CONTEXT_JSON {
            return Err(KmsError::validation(format!(
                "the encryption context is {json_len} bytes as JSON; the limit is {MAX_CONTEXT_JSON}"
            )));
        }
        Ok(())
    }

    /// The exact header bytes as stored in the file (and used as AAD). Only meaningful for a
    /// header that passes [`Header::validate`].
    pub fn encode(&self) -> Vec<u8> {
        let json = context_json(&self.context);
        let mut out = Vec::with_capacity(8 + 1 + 4 + 7 + 4 + self.blob.len() + 4 + json.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        out.extend_from_slice(&self.nonce_prefix);
        // Saturating length: an oversized field cannot pass validate(), so this never reaches a
        // file; it only keeps encode() infallible and panic-free.
        out.extend_from_slice(&len_u32(self.blob.len()).to_be_bytes());
        out.extend_from_slice(&self.blob);
        out.extend_from_slice(&len_u32(json.len()).to_be_bytes());
        out.extend_from_slice(&json);
        out
    }

    /// Validates and writes the header.
    pub fn write_to<W: Write>(&self, w: &mut W) -> Result<()> {
        self.validate()?;
        w.write_all(&self.encode())
            .map_err(|e| io_err("writing the envelope header", &e))
    }

    /// Reads and strictly checks a header. Lengths are checked before anything is allocated,
    /// and the context JSON must be in the canonical form we write, so that re-encoding the
    /// parsed header reproduces the stored bytes exactly (they are the chunks' AAD).
    pub fn read_from<R: Read>(r: &mut R) -> Result<Header> {
        let mut fixed = [0u8; 8 + 1 + 4 + NONCE_PREFIX_LEN + 4];
        read_header_part(r, &mut fixed)?;
        if &fixed[..8] != MAGIC {
            return Err(bad("not a p11kms envelope file (bad magic)"));
        }
        if fixed[8] != VERSION {
            return Err(bad(format!(
                "unsupported envelope format version {} (this build reads version {VERSION})",
                fixed[8]
            )));
        }
        let chunk_size = be_u32(&fixed[9..13]);
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size) {
            return Err(bad(format!(
                "envelope chunk size {chunk_size} is outside {MIN_CHUNK}..={MAX_CHUNK}"
            )));
        }
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        nonce_prefix.copy_from_slice(&fixed[13..13 + NONCE_PREFIX_LEN]);
        let blob_len = be_u32(&fixed[13 + NONCE_PREFIX_LEN..]) as usize;
        if blob_len == 0 || blob_len > MAX_BLOB {
            return Err(bad(format!(
                "envelope data-key blob length {blob_len} is outside 1..={MAX_BLOB}"
            )));
        }
        let mut blob = vec![0u8; blob_len];
        read_header_part(r, &mut blob)?;

        let mut len = [0u8; 4];
        read_header_part(r, &mut len)?;
        let json_len = be_u32(&len) as usize;
        if json_len > MAX_CONTEXT_JSON {
            return Err(bad(format!(
                "envelope encryption context is {json_len} bytes; the limit is {MAX_CONTEXT_JSON}"
            )));
        }
        let mut json = vec![0u8; json_len];
        read_header_part(r, &mut json)?;
        let context: BTreeMap<String, String> = serde_json::from_slice(&json).map_err(|_| {
            bad("envelope encryption context is not a JSON object of string values")
        })?;
        if context_json(&context) != json {
            return Err(bad("envelope encryption context is not in canonical form"));
        }
        Ok(Header {
            blob,
            context,
            chunk_size,
            nonce_prefix,
        })
    }

    /// The 12-byte GCM nonce of chunk `counter`: prefix ‖ u32 BE counter ‖ last flag.
    fn nonce(&self, counter: u32, last: bool) -> Nonce<aes_gcm::aead::consts::U12> {
        let mut n = [0u8; 12];
        n[..NONCE_PREFIX_LEN].copy_from_slice(&self.nonce_prefix);
        n[NONCE_PREFIX_LEN..11].copy_from_slice(&counter.to_be_bytes());
        n[11] = u8::from(last);
        Nonce::from(n)
    }
}

/// Encrypts all of `input` into `output` (header first). `progress` is called after every chunk
/// with the running count of plaintext bytes. Returns the plaintext length.
///
/// Memory is one chunk plus its tag, whatever the input size: the final chunk is detected by
/// peeking one byte past a full chunk.
pub fn encrypt_stream<R: Read, W: Write>(
    data_key: &[u8; 32],
    header: &Header,
    mut input: R,
    mut output: W,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    header.validate()?;
    let aad = header.encode();
    output
        .write_all(&aad)
        .map_err(|e| io_err("writing the envelope header", &e))?;
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(data_key));
    let cs = header.chunk_size as usize;
    // Fixed size, never grown: a reallocation would leave an unzeroized plaintext copy behind.
    let mut buf = Zeroizing::new(vec![0u8; cs + TAG_LEN]);
    let mut carry: Option<u8> = None;
    let mut counter: u32 = 0;
    let mut total: u64 = 0;
    loop {
        let mut n = 0;
        if let Some(b) = carry.take() {
            buf[0] = b;
            n = 1;
        }
        n += read_full(&mut input, &mut buf[n..cs]).map_err(|e| io_err("reading input", &e))?;
        let last = if n < cs {
            true
        } else {
            carry = peek_byte(&mut input).map_err(|e| io_err("reading input", &e))?;
            carry.is_none()
        };
        if !last && counter == u32::MAX {
            return Err(KmsError::validation(format!(
                "the input is too large for the envelope format (over 2^32 chunks of {cs} bytes)"
            )));
        }
        let tag = cipher
            .encrypt_in_place_detached(&header.nonce(counter, last), &aad, &mut buf[..n])
            .map_err(|_| KmsError::internal("AES-GCM encryption of a chunk failed"))?;
        buf[n..n + TAG_LEN].copy_from_slice(&tag);
        output
            .write_all(&buf[..n + TAG_LEN])
            .map_err(|e| io_err("writing output", &e))?;
        total += n as u64;
        progress(total);
        if last {
            break;
        }
        counter += 1;
    }
    output.flush().map_err(|e| io_err("writing output", &e))?;
    Ok(total)
}

/// Decrypts the chunks that follow a header already read from `input` (normally with
/// [`Header::read_from`]). A chunk's plaintext is written only once that chunk authenticated;
/// tampering, reordering, duplication, truncation and trailing data all give
/// [`KmsError::InvalidCiphertext`]. Earlier, authentic chunks may already have been written
/// when a later one fails: write into [`write_atomically`] to keep that out of sight.
pub fn decrypt_stream<R: Read, W: Write>(
    data_key: &[u8; 32],
    header: &Header,
    mut input: R,
    mut output: W,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    header.validate()?;
    // read_from insists on the canonical encoding, so this equals the bytes on disk.
    let aad = header.encode();
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(data_key));
    let full = header.chunk_size as usize + TAG_LEN;
    let mut buf = Zeroizing::new(vec![0u8; full]);
    let mut carry: Option<u8> = None;
    let mut counter: u32 = 0;
    let mut total: u64 = 0;
    loop {
        let mut n = 0;
        if let Some(b) = carry.take() {
            buf[0] = b;
            n = 1;
        }
        n += read_full(&mut input, &mut buf[n..]).map_err(|e| io_err("reading input", &e))?;
        // A short chunk must be the last one; a full one is last only if EOF follows it.
        let last = if n < full {
            true
        } else {
            carry = peek_byte(&mut input).map_err(|e| io_err("reading input", &e))?;
            carry.is_none()
        };
        if n < TAG_LEN {
            return Err(bad(
                "the envelope is truncated: the final chunk is missing or incomplete",
            ));
        }
        // We only write an empty final chunk for an empty file; anything else is not ours.
        if last && n == TAG_LEN && counter > 0 {
            return Err(bad("the envelope ends with an unexpected empty chunk"));
        }
        if !last && counter == u32::MAX {
            return Err(bad("the envelope has more than 2^32 chunks"));
        }
        let (ct, tag) = buf[..n].split_at_mut(n - TAG_LEN);
        let tag = Tag::clone_from_slice(tag);
        if cipher
            .decrypt_in_place_detached(&header.nonce(counter, last), &aad, ct, &tag)
            .is_err()
        {
            return Err(bad(format!(
                "envelope chunk {counter} failed authentication: the file is corrupt, truncated, \
                 reordered, has trailing data, or the data key is wrong"
            )));
        }
        output
            .write_all(ct)
            .map_err(|e| io_err("writing output", &e))?;
        total += ct.len() as u64;
        ct.zeroize();
        progress(total);
        if last {
            break;
        }
        counter += 1;
    }
    output.flush().map_err(|e| io_err("writing output", &e))?;
    Ok(total)
}

/// Runs `f` on a fresh temporary file (mode 0600) beside `path` and renames it over `path` only
/// if `f` succeeds, so a failed decrypt never leaves partial plaintext under the target name.
/// On any failure (or panic) the temporary file is removed.
pub fn write_atomically(path: &Path, f: impl FnOnce(&mut File) -> Result<u64>) -> Result<u64> {
    if path.file_name().is_none() {
        return Err(KmsError::validation(format!(
            "{} is not a file path",
            path.display()
        )));
    }
    // Same directory as the target, so the final rename stays on one filesystem (atomic).
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Owner-only: it will hold plaintext.
    let mut tmp = TempFile::beside(path, 0o600).map_err(|e| {
        io_err(
            &format!("creating a temporary file in {}", dir.display()),
            &e,
        )
    })?;
    let written = f(tmp.file())?;
    tmp.sync()
        .map_err(|e| io_err(&format!("syncing {}", path.display()), &e))?;
    tmp.rename_onto(path)
        .map_err(|e| io_err(&format!("renaming into {}", path.display()), &e))?;
    // Best effort: persist the rename itself. The data is already in place if this fails.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(written)
}

/// Compact JSON with sorted keys. Built through `serde_json::Value`, whose `Display` cannot
/// fail; keys are inserted in BTreeMap order so the output is sorted even if some other crate
/// turns on serde_json's `preserve_order`.
fn context_json(context: &BTreeMap<String, String>) -> Vec<u8> {
    let map: serde_json::Map<String, serde_json::Value> = context
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::Value::Object(map).to_string().into_bytes()
}

/// Reads until `buf` is full or EOF, so short reads (pipes, sockets) don't look like a final
/// chunk. Returns the number of bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// One byte of lookahead: `None` at EOF.
fn peek_byte<R: Read>(r: &mut R) -> io::Result<Option<u8>> {
    let mut b = [0u8; 1];
    Ok((read_full(r, &mut b)? == 1).then_some(b[0]))
}

/// `read_exact` for header fields: a short file is an invalid envelope, not an I/O failure.
fn read_header_part<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == ErrorKind::UnexpectedEof {
            bad("the envelope header is truncated")
        } else {
            io_err("reading the envelope header", &e)
        }
    })
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn bad(msg: impl Into<String>) -> KmsError {
    KmsError::invalid_ciphertext_with(msg.into())
}

fn io_err(what: &str, e: &io::Error) -> KmsError {
    KmsError::io(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const CS: u32 = 4096;
    const CHUNK_ON_DISK: usize = CS as usize + TAG_LEN;
    const KEY: [u8; 32] = [7u8; 32];

    fn header() -> Header {
        let mut ctx = BTreeMap::new();
        ctx.insert("purpose".to_string(), "test".to_string());
        ctx.insert("dept".to_string(), "ops \"quoted\" é".to_string());
        let mut h = Header::new(vec![0xAB; 150], ctx).unwrap();
        h.chunk_size = CS;
        h
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    fn encrypt(h: &Header, pt: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let n = encrypt_stream(&KEY, h, pt, &mut out, &mut |_| {}).unwrap();
        assert_eq!(n, pt.len() as u64);
        out
    }

    /// The CLI's decrypt path: parse the header, then the chunks.
    fn decrypt_with(key: &[u8; 32], file: &[u8]) -> Result<Vec<u8>> {
        let mut r = file;
        let h = Header::read_from(&mut r)?;
        let mut out = Vec::new();
        let n = decrypt_stream(key, &h, r, &mut out, &mut |_| {})?;
        assert_eq!(n, out.len() as u64);
        Ok(out)
    }

    fn decrypt(file: &[u8]) -> Result<Vec<u8>> {
        decrypt_with(&KEY, file)
    }

    fn is_invalid(r: Result<Vec<u8>>) -> bool {
        matches!(r, Err(e) if e.kind() == crate::error::ErrorKind::InvalidCiphertext)
    }

    #[test]
    fn round_trips() {
        let h = header();
        let c = CS as usize;
        for len in [0, 1, c - 1, c, c + 1, 2 * c, 3 * c + 5] {
            let pt = data(len);
            let file = encrypt(&h, &pt);
            let chunks = if len == 0 { 1 } else { len.div_ceil(c) };
            assert_eq!(
                file.len(),
                h.encode().len() + len + chunks * TAG_LEN,
                "len {len}"
            );
            assert_eq!(decrypt(&file).unwrap(), pt, "len {len}");
        }
    }

    #[test]
    fn round_trip_5mib_default_chunk() {
        let mut h = header();
        h.chunk_size = DEFAULT_CHUNK;
        let pt = data(5 * 1024 * 1024 + 3);
        let mut seen = Vec::new();
        let mut file = Vec::new();
        encrypt_stream(&KEY, &h, &pt[..], &mut file, &mut |n| seen.push(n)).unwrap();
        assert_eq!(seen.len(), 81);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(*seen.last().unwrap(), pt.len() as u64);
        let mut r = &file[..];
        let h2 = Header::read_from(&mut r).unwrap();
        let mut out = Vec::new();
        let mut last = 0;
        decrypt_stream(&KEY, &h2, r, &mut out, &mut |n| last = n).unwrap();
        assert_eq!(last, pt.len() as u64);
        assert!(out == pt);
    }

    /// A reader that hands out at most 3 bytes per call.
    struct Dribble<'a>(&'a [u8]);
    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let k = buf.len().min(3).min(self.0.len());
            buf[..k].copy_from_slice(&self.0[..k]);
            self.0 = &self.0[k..];
            Ok(k)
        }
    }

    #[test]
    fn short_reads_are_handled() {
        let h = header();
        let pt = data(2 * CS as usize + 9);
        let mut file = Vec::new();
        encrypt_stream(&KEY, &h, Dribble(&pt), &mut file, &mut |_| {}).unwrap();
        assert_eq!(file, {
            let mut again = Vec::new();
            encrypt_stream(&KEY, &h, &pt[..], &mut again, &mut |_| {}).unwrap();
            again
        });
        let mut r = Dribble(&file);
        let h2 = Header::read_from(&mut r).unwrap();
        let mut out = Vec::new();
        decrypt_stream(&KEY, &h2, r, &mut out, &mut |_| {}).unwrap();
        assert_eq!(out, pt);
    }

    #[test]
    fn header_round_trip() {
        let h = header();
        let mut bytes = Vec::new();
        h.write_to(&mut bytes).unwrap();
        assert_eq!(bytes, h.encode());
        assert_eq!(&bytes[..8], MAGIC);
        let mut r = &bytes[..];
        assert_eq!(Header::read_from(&mut r).unwrap(), h);
        assert!(r.is_empty());

        let empty = Header::new(vec![1], BTreeMap::new()).unwrap();
        assert_eq!(empty.chunk_size, DEFAULT_CHUNK);
        assert!(empty.encode().ends_with(b"\x00\x00\x00\x02{}"));
        assert_eq!(Header::read_from(&mut &empty.encode()[..]).unwrap(), empty);
        // Fresh random prefix per header.
        assert_ne!(
            Header::new(vec![1], BTreeMap::new()).unwrap().nonce_prefix,
            empty.nonce_prefix
        );
    }

    #[test]
    fn header_limits() {
        assert!(Header::new(vec![], BTreeMap::new()).is_err());
        assert!(Header::new(vec![0; MAX_BLOB + 1], BTreeMap::new()).is_err());
        assert!(Header::new(vec![0; MAX_BLOB], BTreeMap::new()).is_ok());
        let mut big = BTreeMap::new();
        big.insert("k".to_string(), "v".repeat(MAX_CONTEXT_JSON));
        assert!(matches!(
            Header::new(vec![1], big),
            Err(e) if e.kind() == crate::error::ErrorKind::Validation
        ));
        let mut h = header();
        h.chunk_size = MIN_CHUNK - 1;
        assert!(h.write_to(&mut Vec::new()).is_err());
        assert!(encrypt_stream(&KEY, &h, &[][..], Vec::new(), &mut |_| {}).is_err());
    }

    fn read_err(bytes: &[u8]) -> String {
        match Header::read_from(&mut &bytes[..]) {
            Err(e) if e.kind() == crate::error::ErrorKind::InvalidCiphertext => {
                e.message().to_owned()
            }
            other => panic!("expected InvalidCiphertext, got {other:?}"),
        }
    }

    #[test]
    fn header_is_strict() {
        let good = header().encode();
        let blob_len_at = 8 + 1 + 4 + NONCE_PREFIX_LEN;
        let ctx_len_at = blob_len_at + 4 + 150;

        let mut b = good.clone();
        b[0] = b'X';
        assert!(read_err(&b).contains("magic"));
        let mut b = good.clone();
        b[8] = 2;
        assert!(read_err(&b).contains("version"));
        let mut b = good.clone();
        b[9..13].copy_from_slice(&(MAX_CHUNK + 1).to_be_bytes());
        assert!(read_err(&b).contains("chunk size"));
        let mut b = good.clone();
        b[blob_len_at..blob_len_at + 4].copy_from_slice(&0u32.to_be_bytes());
        assert!(read_err(&b).contains("blob length"));
        // A huge length is refused before any allocation or read.
        let mut b = good.clone();
        b[blob_len_at..blob_len_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(read_err(&b).contains("blob length"));
        let mut b = good.clone();
        b[ctx_len_at..ctx_len_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(read_err(&b).contains("limit"));
        assert!(read_err(&good[..good.len() - 1]).contains("truncated"));
        assert!(read_err(&good[..5]).contains("truncated"));
        assert!(read_err(b"").contains("truncated"));

        // Same context, non-canonical JSON (whitespace): refused, since the AAD is the encoding.
        let mut b = good[..ctx_len_at].to_vec();
        let json = br#"{ "dept":"x"}"#;
        b.extend_from_slice(&(json.len() as u32).to_be_bytes());
        b.extend_from_slice(json);
        assert!(read_err(&b).contains("canonical"));
        let mut b = good[..ctx_len_at].to_vec();
        let json = br#"{"a":1}"#;
        b.extend_from_slice(&(json.len() as u32).to_be_bytes());
        b.extend_from_slice(json);
        assert!(read_err(&b).contains("JSON"));
    }

    fn three_chunk_file() -> (Vec<u8>, usize) {
        let h = header();
        let file = encrypt(&h, &data(2 * CS as usize + 100));
        (file, h.encode().len())
    }

    /// Flips every bit of each byte at `positions` and checks decryption fails.
    fn assert_flips_detected(file: &[u8], positions: impl Iterator<Item = usize>) {
        let mut f = file.to_vec();
        for i in positions {
            for bit in 0..8 {
                f[i] ^= 1 << bit;
                assert!(
                    is_invalid(decrypt(&f)),
                    "flip of byte {i} bit {bit} not detected"
                );
                f[i] ^= 1 << bit;
            }
        }
    }

    /// Every bit of the header, of each tag and of the short final chunk, plus every bit of
    /// every 61st byte and of the edges of the full chunk bodies. (Exhaustive over the bodies
    /// is ~70k decryptions: too slow for debug builds, see the ignored test below.)
    #[test]
    fn any_bit_flip_fails() {
        let (file, hl) = three_chunk_file();
        let c = CHUNK_ON_DISK;
        let body_edges = |k: usize| {
            let start = hl + k * c;
            (start..start + 16)
                .chain((start..start + c - TAG_LEN).step_by(61))
                .chain(start + c - TAG_LEN - 16..start + c)
        };
        let positions = (0..hl)
            .chain(body_edges(0))
            .chain(body_edges(1))
            .chain(hl + 2 * c..file.len());
        assert_flips_detected(&file, positions);
    }

    /// Run with `cargo test --release -- --ignored`.
    #[test]
    #[ignore = "exhaustive; slow in debug builds"]
    fn any_bit_flip_fails_exhaustive() {
        let (file, _) = three_chunk_file();
        assert_flips_detected(&file, 0..file.len());
    }

    #[test]
    fn tampered_chunk_plaintext_is_not_written() {
        let (mut file, hl) = three_chunk_file();
        file[hl + CHUNK_ON_DISK + 5] ^= 1;
        let mut r = &file[..];
        let h = Header::read_from(&mut r).unwrap();
        let mut out = Vec::new();
        assert!(decrypt_stream(&KEY, &h, r, &mut out, &mut |_| {}).is_err());
        // Only chunk 0 (which authenticated) was released.
        assert_eq!(out, data(CS as usize));
    }

    #[test]
    fn structural_attacks_fail() {
        let (file, hl) = three_chunk_file();
        let head = &file[..hl];
        let c0 = &file[hl..hl + CHUNK_ON_DISK];
        let c1 = &file[hl + CHUNK_ON_DISK..hl + 2 * CHUNK_ON_DISK];
        let c2 = &file[hl + 2 * CHUNK_ON_DISK..];
        assert_eq!(c2.len(), 100 + TAG_LEN);
        assert!(decrypt(&[head, c0, c1, c2].concat()).is_ok());

        // Swapped chunks.
        assert!(is_invalid(decrypt(&[head, c1, c0, c2].concat())));
        // Dropped last chunk, dropped middle chunk, no chunks at all, cut mid-chunk.
        assert!(is_invalid(decrypt(&[head, c0, c1].concat())));
        assert!(is_invalid(decrypt(&[head, c0, c2].concat())));
        assert!(is_invalid(decrypt(head)));
        assert!(is_invalid(decrypt(&file[..file.len() - 1])));
        assert!(is_invalid(decrypt(&file[..hl + 10])));
        // Duplicated chunks.
        assert!(is_invalid(decrypt(&[head, c0, c0, c1, c2].concat())));
        assert!(is_invalid(decrypt(&[head, c0, c1, c1, c2].concat())));
        assert!(is_invalid(decrypt(&[head, c0, c1, c2, c2].concat())));
        // Trailing data: one byte, a tag's worth, a whole chunk.
        assert!(is_invalid(decrypt(&[&file[..], &[0]].concat())));
        assert!(is_invalid(decrypt(&[&file[..], &[0; TAG_LEN]].concat())));
        assert!(is_invalid(decrypt(&[&file[..], c0].concat())));
        // Chunks of another file under the same key and header but a different prefix.
        let mut other_h = header();
        other_h.nonce_prefix = [9; NONCE_PREFIX_LEN];
        let other = encrypt(&other_h, &data(2 * CS as usize + 100));
        assert!(is_invalid(decrypt(&[head, &other[hl..]].concat())));
    }

    #[test]
    fn exact_multiple_has_no_empty_trailer() {
        let h = header();
        let pt = data(2 * CS as usize);
        let file = encrypt(&h, &pt);
        let hl = h.encode().len();
        assert_eq!(file.len(), hl + 2 * CHUNK_ON_DISK);
        // Dropping the final (full) chunk must fail too.
        assert!(is_invalid(decrypt(&file[..hl + CHUNK_ON_DISK])));
        // An empty file is one empty final chunk, and can't be extended or cut.
        let empty = encrypt(&h, &[]);
        assert_eq!(empty.len(), hl + TAG_LEN);
        assert_eq!(decrypt(&empty).unwrap(), Vec::<u8>::new());
        assert!(is_invalid(decrypt(&empty[..hl])));
        assert!(is_invalid(decrypt(&[&empty[..], &empty[hl..]].concat())));
    }

    #[test]
    fn wrong_key_fails() {
        let (file, _) = three_chunk_file();
        let mut k = KEY;
        k[31] ^= 1;
        assert!(is_invalid(decrypt_with(&k, &file)));
    }

    #[test]
    fn write_atomically_success_and_failure() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");

        let r = write_atomically(&target, |f| {
            f.write_all(b"partial plaintext").unwrap();
            Err(KmsError::invalid_ciphertext_with("boom"))
        });
        assert!(matches!(r, Err(e) if e.kind() == crate::error::ErrorKind::InvalidCiphertext));
        assert!(!target.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "temp left");

        let n = write_atomically(&target, |f| {
            f.write_all(b"hello").unwrap();
            Ok(5)
        })
        .unwrap();
        assert_eq!(n, 5);
        assert_eq!(fs::read(&target).unwrap(), b"hello");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&target).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // A failure leaves an existing target untouched.
        let r = write_atomically(&target, |f| {
            f.write_all(b"junk").unwrap();
            Err(KmsError::io("x"))
        });
        assert!(r.is_err());
        assert_eq!(fs::read(&target).unwrap(), b"hello");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn full_flow_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let pt = data(3 * CS as usize + 5);
        let enc = dir.path().join("f.p11kms");
        let dec = dir.path().join("f.out");
        let h = header();
        write_atomically(&enc, |f| encrypt_stream(&KEY, &h, &pt[..], f, &mut |_| {})).unwrap();
        let mut input = io::BufReader::new(File::open(&enc).unwrap());
        let h2 = Header::read_from(&mut input).unwrap();
        write_atomically(&dec, |f| {
            decrypt_stream(&KEY, &h2, &mut input, f, &mut |_| {})
        })
        .unwrap();
        assert_eq!(fs::read(&dec).unwrap(), pt);

        // A corrupt file leaves no plaintext under the target name.
        let mut bytes = fs::read(&enc).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x80;
        let dec2 = dir.path().join("g.out");
        let mut r = &bytes[..];
        let h3 = Header::read_from(&mut r).unwrap();
        assert!(write_atomically(&dec2, |f| decrypt_stream(&KEY, &h3, r, f, &mut |_| {})).is_err());
        assert!(!dec2.exists());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            /// Any bytes as an envelope header: a header or an error; never a panic, and no
            /// allocation beyond the format's limits (a length field is checked first).
            #[test]
            fn arbitrary_headers(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                let _ = Header::read_from(&mut &bytes[..]);
            }

            /// A valid header with any one byte changed is refused or reads back the same bytes.
            #[test]
            fn changed_headers(at in any::<usize>(), byte in any::<u8>()) {
                let h = Header::new(vec![7u8; 120], BTreeMap::from([("a".to_string(), "b".to_string())])).unwrap();
                let mut bytes = h.encode();
                let i = at % bytes.len();
                prop_assume!(bytes[i] != byte);
                bytes[i] = byte;
                if let Ok(read) = Header::read_from(&mut &bytes[..]) {
                    prop_assert_eq!(read.encode(), bytes);
                }
            }
        }
    }
}
