//! The audit trail: JSON lines shaped like CloudTrail KMS events, hash-chained and
//! checkpointed with a MAC made inside the token by the audit key (`hsm::AuditKey`).
//! The records themselves are built by their callers (`api` for requests, `cli` for
//! commands); this room only chains, writes, checkpoints, rotates and verifies them. See
//! docs/audit.md.
//!
//! Each process writes its own stream (a uuid) into files of its own:
//! `<dir>/<UTC start>-<pid>-<stream prefix>.<part>.jsonl`. Every line carries a `p11kms`
//! member `{stream, seq, prev}`: `prev` is the SHA-256 (hex) of the previous line's bytes (the
//! previous file's last line across a rotation; zeros at the stream's start). The first
//! line of each file is a header, and checkpoints (every N records, every T seconds, and a
//! closing one at rotation and shutdown) carry the audit key's HMAC over their stream, seq
//! and prev, so they seal everything before them.
//!
//! Writes run on one dedicated thread fed by a bounded queue: a caller hands a record and,
//! if it waits for it, a callback that is told once the line is written (and, with
//! `fsync = "record"`, synced). Records nobody waits for are gathered for a moment
//! ([`writer::LINGER`]), so that under load one wake-up and one `write` serve many.

mod verify;
mod writer;

use std::path::PathBuf;
use std::time::Duration;

pub use verify::{verify_files, FileOutcome, FileReport};
pub use writer::{Ack, AuditLog};

/// The `p11kms` member of each line.
pub const MEMBER: &str = "p11kms";
/// The MAC scheme checkpoints name.
pub const MAC_SCHEME: &str = "HMAC-SHA256";
/// `prev` of a stream's first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// When a record counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    /// Synced (`fdatasync`) before its caller is told; records queued together share a sync.
    #[default]
    Record,
    /// Written to the file (the page cache) before its caller is told; synced at checkpoints.
    Batch,
}

/// What a request whose record cannot be written gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Failure {
    /// It fails (`KMSInternalException`), even if its operation was carried out.
    #[default]
    Closed,
    /// It is answered without waiting for its record (with `fsync = "record"` it waits, for
    /// the sync, but is answered whatever the outcome); a failure is logged.
    Open,
}

impl Failure {
    fn closed_if(closed: bool) -> Failure {
        if closed {
            Failure::Closed
        } else {
            Failure::Open
        }
    }
}

/// How and where the trail is written.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// The trail's folder (made owner-only if missing).
    pub dir: PathBuf,
    /// When a record counts as written.
    pub fsync: Fsync,
    /// What a state-changing request gets when its record is not written.
    pub failure: Failure,
    /// The same for a read-only one.
    pub read_only_failure: Failure,
    /// A file is closed and the next part opened once it is this large.
    pub max_file_bytes: u64,
    /// A checkpoint after this many records...
    pub checkpoint_records: u64,
    /// ...or this long after the first record it does not cover.
    pub checkpoint_every: Duration,
    /// Records waiting for the writer at most; past it callers wait.
    pub queue: usize,
}

impl AuditSettings {
    /// Defaults for a trail in `dir`.
    pub fn new(dir: PathBuf) -> AuditSettings {
        AuditSettings {
            dir,
            fsync: Fsync::Record,
            failure: Failure::Closed,
            read_only_failure: Failure::Open,
            max_file_bytes: 64 << 20,
            checkpoint_records: 1000,
            checkpoint_every: Duration::from_secs(60),
            queue: 4096,
        }
    }
}

/// One event, serialized by its caller: a JSON object on one line (the writer adds the chain
/// member before its closing brace).
#[derive(Debug, Clone)]
pub struct Record(Vec<u8>);

impl Record {
    /// A record `write` puts straight into a pooled buffer; it must write one JSON object
    /// on one line.
    pub fn written(write: impl FnOnce(&mut Vec<u8>)) -> Result<Record, AuditError> {
        let mut bytes = BUFFERS.take();
        write(&mut bytes);
        if bytes.len() < 2 || bytes.first() != Some(&b'{') || bytes.last() != Some(&b'}') {
            BUFFERS.give(bytes);
            return Err(AuditError("a record must be a JSON object".into()));
        }
        Ok(Record(bytes))
    }

    /// The serialized object.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The object's members without its braces (empty for `{}`).
    fn members(&self) -> &[u8] {
        self.0
            .get(1..self.0.len().saturating_sub(1))
            .unwrap_or_default()
    }
}

/// Record buffers, passed from the threads that serialize records to the writer and back
/// once written: in the steady state a record allocates nothing, and no buffer is freed on
/// another thread than the one that allocated it (which costs glibc's allocator a lock).
struct Buffers(std::sync::Mutex<Vec<Vec<u8>>>);

/// A new buffer's capacity: a typical record (about 1 KB) fits without growing.
const BUFFER_BYTES: usize = 2048;
/// Buffers kept for reuse at most: enough for a few batches in flight.
const BUFFERS_KEPT: usize = 1024;
/// A buffer grown past this (a record with a long policy or context) is freed, not kept, so
/// what the pool holds stays under `BUFFERS_KEPT × BUFFER_BYTES` (2 MiB) whatever requests
/// a client sends.
const BUFFER_KEPT_BYTES: usize = BUFFER_BYTES;

static BUFFERS: Buffers = Buffers(std::sync::Mutex::new(Vec::new()));

impl Buffers {
    fn take(&self) -> Vec<u8> {
        crate::sync::lock(&self.0)
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUFFER_BYTES))
    }

    fn give(&self, b: Vec<u8>) {
        self.give_all([b]);
    }

    /// Takes back a batch's buffers under one lock.
    fn give_all(&self, buffers: impl IntoIterator<Item = Vec<u8>>) {
        let mut kept = crate::sync::lock(&self.0);
        for mut b in buffers {
            if kept.len() >= BUFFERS_KEPT {
                break;
            }
            if b.capacity() <= BUFFER_KEPT_BYTES {
                b.clear();
                kept.push(b);
            }
        }
    }
}

/// Why a record was not written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit trail: {0}")]
pub struct AuditError(pub String);

/// What a checkpoint's MAC covers.
pub(crate) fn checkpoint_message(stream: &str, seq: u64, prev: &str, closing: bool) -> Vec<u8> {
    format!("p11kms:audit:v1 checkpoint\n{stream}\n{seq}\n{prev}\n{closing}\n").into_bytes()
}

/// SHA-256 of a line's bytes (without its newline), hex.
pub(crate) fn line_hash(line: &[u8]) -> String {
    LineHash::of(line).as_str().to_owned()
}

/// A line's SHA-256 as the lower-case hex the next line's `prev` names, kept inline (the
/// writer makes one per line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LineHash([u8; 64]);

impl LineHash {
    /// `prev` of a stream's first line.
    pub(crate) const GENESIS: LineHash = LineHash([b'0'; 64]);

    pub(crate) fn of(line: &[u8]) -> LineHash {
        use sha2::Digest;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = sha2::Sha256::digest(line);
        let mut hex = [0u8; 64];
        for (pair, b) in hex.chunks_exact_mut(2).zip(digest) {
            pair.copy_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
        LineHash(hex)
    }

    pub(crate) fn as_str(&self) -> &str {
        // Hex digits only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// The time as CloudTrail writes it: `2026-12-02T01:02:03Z`.
pub fn event_time(t: time::OffsetDateTime) -> String {
    let mut out = Vec::with_capacity(20);
    push_event_time(&mut out, t);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends [`event_time`]'s text (digits and separators: nothing a JSON string escapes),
/// without formatting machinery: it is on every record's path.
pub fn push_event_time(out: &mut Vec<u8>, t: time::OffsetDateTime) {
    let t = t.to_offset(time::UtcOffset::UTC);
    let digits = |out: &mut Vec<u8>, n: u32, width: u32| {
        for k in (0..width).rev() {
            let d = n / 10u32.pow(k) % 10;
            out.push(b'0' + d as u8);
        }
    };
    // Years outside 0..=9999 are not written by any clock this runs on; they wrap.
    digits(out, t.year().unsigned_abs(), 4);
    out.push(b'-');
    digits(out, u32::from(u8::from(t.month())), 2);
    out.push(b'-');
    digits(out, u32::from(t.day()), 2);
    out.push(b'T');
    digits(out, u32::from(t.hour()), 2);
    out.push(b':');
    digits(out, u32::from(t.minute()), 2);
    out.push(b':');
    digits(out, u32::from(t.second()), 2);
    out.push(b'Z');
}

/// The trail `config` asks for over `token` (`None`: `audit = false`): the token's audit key
/// (generated at first use) and a new stream.
pub fn open(
    config: &crate::config::AuditConfig,
    token: &crate::hsm::Token,
) -> crate::Result<Option<AuditLog>> {
    if !config.enabled {
        return Ok(None);
    }
    let key = token
        .audit_key(true)
        .map_err(|e| crate::KmsError::io(format!("audit trail: no audit key: {e}")))?;
    let settings = AuditSettings {
        fsync: if config.fsync_each_record {
            Fsync::Record
        } else {
            Fsync::Batch
        },
        failure: Failure::closed_if(config.fail_closed),
        read_only_failure: Failure::closed_if(config.read_only_fail_closed),
        max_file_bytes: config.max_file_bytes,
        checkpoint_records: config.checkpoint_records,
        checkpoint_every: config.checkpoint_every,
        ..AuditSettings::new(config.dir.clone())
    };
    AuditLog::open(settings, key)
        .map(Some)
        .map_err(|e| crate::KmsError::io(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_hash_is_the_lower_hex_sha256_and_genesis_is_zeros() {
        use sha2::Digest;
        let line = br#"{"a":1}"#;
        assert_eq!(
            LineHash::of(line).as_str(),
            hex::encode(sha2::Sha256::digest(line))
        );
        assert_eq!(LineHash::GENESIS.as_str(), GENESIS);
    }

    #[test]
    fn event_times_are_padded_utc_seconds() {
        let t = time::macros::datetime!(2026-03-04 05:06:07.891 +02:00);
        assert_eq!(event_time(t), "2026-03-04T03:06:07Z");
        assert_eq!(
            event_time(time::OffsetDateTime::UNIX_EPOCH),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn a_record_must_be_one_object() {
        assert!(Record::written(|b| b.extend_from_slice(b"[1]")).is_err());
        assert!(Record::written(|_| ()).is_err());
        let r = Record::written(|b| b.extend_from_slice(br#"{"a":1}"#)).unwrap();
        assert_eq!(r.members(), br#""a":1"#);
    }
}
