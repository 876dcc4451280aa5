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
//! Writes run on one dedicated thread fed by a bounded queue: a caller hands a record and a
//! callback that is told once the line is written (and, with `fsync = "record"`, synced).

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
    /// It is answered as if recorded; the failure is logged.
    Open,
}

/// How and where the trail is written.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// The trail's folder (made owner-only if missing).
    pub dir: PathBuf,
    /// When a record counts as written.
    pub fsync: Fsync,
    /// What a request gets when its record is not written.
    pub failure: Failure,
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
            max_file_bytes: 64 << 20,
            checkpoint_records: 1000,
            checkpoint_every: Duration::from_secs(60),
            queue: 4096,
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
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(line))
}

/// The time as CloudTrail writes it: `2026-12-02T01:02:03Z`.
pub fn event_time(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
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
        failure: if config.fail_closed {
            Failure::Closed
        } else {
            Failure::Open
        },
        max_file_bytes: config.max_file_bytes,
        checkpoint_records: config.checkpoint_records,
        checkpoint_every: config.checkpoint_every,
        ..AuditSettings::new(config.dir.clone())
    };
    AuditLog::open(settings, key)
        .map(Some)
        .map_err(|e| crate::KmsError::io(e.to_string()))
}
