//! The writer thread: chains, writes, syncs, checkpoints and rotates one stream's files.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{
    checkpoint_message, event_time, AuditError, AuditSettings, Failure, Fsync, LineHash, Record,
    BUFFERS, MAC_SCHEME, MEMBER,
};
use crate::hsm::{AuditKey, AUDIT_KEY_LABEL};

/// Told once its record is written (or why it was not). Runs on the writer thread: it must
/// only hand the outcome on (a channel send), never block.
pub type Ack = Box<dyn FnOnce(Result<(), AuditError>) + Send>;

enum Msg {
    /// A record, and who waits for it (`None`: nobody).
    Record(Record, Option<Ack>),
    Close(mpsc::Sender<()>),
}

/// Records go in per batch at most this many (one write, one sync).
const MAX_BATCH: usize = 512;

/// What a line adds to its record: the chain member (about 180 bytes) and the newline.
const LINE_EXTRA: usize = 192;

/// After a batch nobody waits for, the writer sleeps this long before it looks again: records
/// arriving meanwhile are queued without waking it, and go out together. A waited-for record
/// can sit this long behind such a batch; a caller that waits never starts a linger.
pub const LINGER: Duration = Duration::from_millis(2);

/// One process's audit stream.
pub struct AuditLog {
    /// Shared by every caller as it is (no lock, no clone per record); after
    /// [`AuditLog::close`] its sends fail, and `closed` says why.
    tx: SyncSender<Msg>,
    closed: AtomicBool,
    failure: Failure,
    read_only_failure: Failure,
    fsync: Fsync,
    stream: String,
    dir: PathBuf,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AuditLog {
    /// Opens a new stream in `settings.dir` (its first file and header are written and synced
    /// now, so a trail that cannot be written fails start-up) and starts its writer thread.
    pub fn open(settings: AuditSettings, key: AuditKey) -> Result<AuditLog, AuditError> {
        make_private_dir(&settings.dir)?;
        let stream = uuid::Uuid::new_v4().to_string();
        let now = time::OffsetDateTime::now_utc();
        let stamp = event_time(now).replace([':', '-'], "");
        let base = format!(
            "{stamp}-{}-{}",
            std::process::id(),
            stream.get(..8).unwrap_or(&stream)
        );
        let mut w = Writer {
            stream: stream.clone(),
            base,
            file: None,
            part: 0,
            size: 0,
            seq: 0,
            prev: LineHash::GENESIS,
            uncovered: 0,
            uncovered_since: None,
            key,
            s: settings.clone(),
        };
        let mut buf = Vec::new();
        w.open_part(&mut buf)?;
        w.write_out(&buf, true)?;
        let (tx, rx) = mpsc::sync_channel(settings.queue.max(1));
        let thread = std::thread::Builder::new()
            .name("p11kms-audit".into())
            .spawn(move || w.run(rx))
            .map_err(|e| AuditError(format!("cannot start the writer thread: {e}")))?;
        Ok(AuditLog {
            tx,
            closed: AtomicBool::new(false),
            failure: settings.failure,
            read_only_failure: settings.read_only_failure,
            fsync: settings.fsync,
            stream,
            dir: settings.dir,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// What a request whose record was not written gets (`read_only`: it changed nothing).
    pub fn failure(&self, read_only: bool) -> Failure {
        if read_only {
            self.read_only_failure
        } else {
            self.failure
        }
    }

    /// Whether a request waits for its record before it is answered: when its failure would
    /// fail it, or when each record is to be synced before its answer.
    pub fn waits(&self, read_only: bool) -> bool {
        self.failure(read_only) == Failure::Closed || self.fsync == Fsync::Record
    }

    /// This stream's id.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The trail's folder.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Queues `record` without waiting; a full queue hands it back (the caller then waits
    /// for room with [`AuditLog::append_blocking`], off any async worker). `ack` (if any) is
    /// told the outcome; without one, a record that cannot be queued is logged.
    #[allow(clippy::result_large_err)]
    pub fn try_append(
        &self,
        record: Record,
        ack: Option<Ack>,
    ) -> Result<(), (Record, Option<Ack>)> {
        if self.closed.load(Ordering::Acquire) {
            tell(ack, Err(AuditError("the trail is closed".into())));
            return Ok(());
        }
        match self.tx.try_send(Msg::Record(record, ack)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Msg::Record(r, a))) => Err((r, a)),
            Err(TrySendError::Disconnected(Msg::Record(_, a))) => {
                tell(a, Err(AuditError("the writer has stopped".into())));
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }

    /// Queues `record`, waiting for room (blocks the thread).
    pub fn append_blocking(&self, record: Record, ack: Option<Ack>) {
        if self.closed.load(Ordering::Acquire) {
            tell(ack, Err(AuditError("the trail is closed".into())));
            return;
        }
        if let Err(mpsc::SendError(Msg::Record(_, a))) = self.tx.send(Msg::Record(record, ack)) {
            tell(a, Err(AuditError("the writer has stopped".into())));
        }
    }

    /// Writes `record` and waits until it is written (for the CLI).
    pub fn record_blocking(&self, record: Record) -> Result<(), AuditError> {
        let (tx, rx) = mpsc::channel();
        self.append_blocking(
            record,
            Some(Box::new(move |r| {
                let _ = tx.send(r);
            })),
        );
        rx.recv()
            .unwrap_or_else(|_| Err(AuditError("the writer has stopped".into())))
    }

    /// Writes the closing checkpoint and stops the writer (idempotent).
    pub fn close(&self) {
        let Some(thread) = crate::sync::lock(&self.thread).take() else {
            return;
        };
        self.closed.store(true, Ordering::Release);
        let (done, wait) = mpsc::channel();
        if self.tx.send(Msg::Close(done)).is_ok() {
            let _ = wait.recv();
        }
        let _ = thread.join();
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// Hands `outcome` to `ack`, or logs a failure nobody waits for.
fn tell(ack: Option<Ack>, outcome: Result<(), AuditError>) {
    match ack {
        Some(a) => a(outcome),
        None => {
            if let Err(e) = outcome {
                tracing::error!(target: "p11kms::audit", "a record was not written: {e}");
            }
        }
    }
}

fn make_private_dir(dir: &std::path::Path) -> Result<(), AuditError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| AuditError(format!("cannot create {}: {e}", dir.display())))
}

struct Writer {
    s: AuditSettings,
    key: AuditKey,
    stream: String,
    /// File names start with this; `.<part>.jsonl` follows.
    base: String,
    file: Option<File>,
    part: u32,
    size: u64,
    /// The last line's seq and hash.
    seq: u64,
    prev: LineHash,
    /// Records since the last checkpoint, and when the first of them was written.
    uncovered: u64,
    uncovered_since: Option<Instant>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let wait = match self.uncovered_since {
                Some(t) => self.s.checkpoint_every.saturating_sub(t.elapsed()),
                None => Duration::from_secs(3600),
            };
            let first = match rx.recv_timeout(wait) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    let mut buf = Vec::new();
                    if self.uncovered > 0 && self.file.is_some() {
                        self.checkpoint(&mut buf, false);
                        if let Err(e) = self.write_out(&buf, true) {
                            tracing::error!(target: "p11kms::audit", "{e}");
                        }
                    }
                    self.uncovered_since = None;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.finish();
                    return;
                }
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let mut closing = None;
            let mut waited = false;
            let mut acks = Vec::with_capacity(batch.len());
            // One allocation per batch, not a series of doublings: each line is its record
            // and the chain member (and a checkpoint may follow).
            let bytes: usize = batch
                .iter()
                .map(|m| match m {
                    Msg::Record(r, _) => r.0.len() + LINE_EXTRA,
                    Msg::Close(_) => 0,
                })
                .sum();
            let mut buf = Vec::with_capacity(bytes + 2 * LINE_EXTRA);
            let mut used = Vec::with_capacity(batch.len());
            let committed = (self.seq, self.prev);
            let mut failed = None;
            for m in batch {
                match m {
                    Msg::Close(done) => closing = Some(done),
                    Msg::Record(r, ack) => {
                        waited |= ack.is_some();
                        acks.extend(ack);
                        if failed.is_some() {
                            continue;
                        }
                        if self.file.is_none() {
                            if let Err(e) = self.open_part(&mut buf) {
                                failed = Some(e);
                                continue;
                            }
                        }
                        self.record(&mut buf, &r);
                        used.push(r.0);
                        if self.uncovered >= self.s.checkpoint_records {
                            self.checkpoint(&mut buf, false);
                        }
                    }
                }
            }
            let outcome = match failed {
                Some(e) => Err(e),
                None => {
                    let sync = self.s.fsync == Fsync::Record;
                    self.write_out(&buf, sync)
                }
            };
            if let Err(e) = &outcome {
                tracing::error!(target: "p11kms::audit", "records not written: {e}");
                // This part ends here (it may end in a torn line); the next record opens a new
                // part chained to the last line known written.
                (self.seq, self.prev) = committed;
                self.file = None;
            }
            BUFFERS.give_all(used);
            for ack in acks {
                ack(outcome.clone());
            }
            if self.file.is_some() && self.size >= self.s.max_file_bytes {
                self.rotate();
            }
            if let Some(done) = closing {
                self.finish();
                let _ = done.send(());
                // Records that raced the close are told, not dropped unseen.
                while let Ok(m) = rx.try_recv() {
                    if let Msg::Record(_, ack) = m {
                        tell(ack, Err(AuditError("the trail is closed".into())));
                    }
                }
                return;
            }
            if !waited {
                std::thread::sleep(LINGER);
            }
        }
    }

    /// Appends one line to `buf`: `members` (an object's members, serialized, or nothing),
    /// then the `p11kms` member with the chain fields and `extra` (a header or a checkpoint).
    fn line(&mut self, buf: &mut Vec<u8>, members: &[u8], extra: Option<(&str, Value)>) {
        self.seq += 1;
        let start = buf.len();
        buf.push(b'{');
        buf.extend_from_slice(members);
        if !members.is_empty() {
            buf.push(b',');
        }
        // The stream is a uuid and `prev` hex: nothing in them needs escaping. Writing to a
        // `Vec` cannot fail.
        let _ = write!(
            buf,
            "\"{MEMBER}\":{{\"stream\":\"{}\",\"seq\":{},\"prev\":\"{}\"",
            self.stream,
            self.seq,
            self.prev.as_str()
        );
        if let Some((name, v)) = extra {
            let _ = write!(buf, ",\"{name}\":");
            // A `Value` of our own making always serializes.
            let _ = serde_json::to_writer(&mut *buf, &v);
        }
        buf.extend_from_slice(b"}}");
        self.prev = LineHash::of(buf.get(start..).unwrap_or_default());
        buf.push(b'\n');
    }

    fn record(&mut self, buf: &mut Vec<u8>, r: &Record) {
        self.line(buf, r.members(), None);
        self.uncovered += 1;
        if self.uncovered_since.is_none() {
            self.uncovered_since = Some(Instant::now());
        }
    }

    /// Appends a checkpoint over everything so far. A token that cannot MAC now leaves the
    /// records uncovered until the next checkpoint (logged).
    fn checkpoint(&mut self, buf: &mut Vec<u8>, closing: bool) {
        let seq = self.seq + 1;
        let mac = match self.key.mac(&checkpoint_message(
            &self.stream,
            seq,
            self.prev.as_str(),
            closing,
        )) {
            Ok(m) => hex::encode(m),
            Err(e) => {
                tracing::error!(target: "p11kms::audit", "the token made no checkpoint MAC: {e}");
                return;
            }
        };
        let checkpoint = json!({
            "closing": closing,
            "scheme": MAC_SCHEME,
            "key": AUDIT_KEY_LABEL,
            "time": event_time(time::OffsetDateTime::now_utc()),
            "mac": mac,
        });
        self.line(buf, b"", Some(("checkpoint", checkpoint)));
        self.uncovered = 0;
        self.uncovered_since = None;
    }

    /// Opens the next part and appends its header to `buf`.
    fn open_part(&mut self, buf: &mut Vec<u8>) -> Result<(), AuditError> {
        use std::os::unix::fs::OpenOptionsExt;
        self.part += 1;
        let path = self
            .s
            .dir
            .join(format!("{}.{:04}.jsonl", self.base, self.part));
        let f = std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| AuditError(format!("cannot create {}: {e}", path.display())))?;
        self.file = Some(f);
        self.size = 0;
        let header = json!({
            "version": 1,
            "part": self.part,
            "pid": std::process::id(),
            "opened": event_time(time::OffsetDateTime::now_utc()),
        });
        self.line(buf, b"", Some(("header", header)));
        Ok(())
    }

    fn write_out(&mut self, buf: &[u8], sync: bool) -> Result<(), AuditError> {
        let Some(f) = self.file.as_mut() else {
            return Err(AuditError("no file is open".into()));
        };
        let r = f.write_all(buf).and_then(|()| {
            // A buffer that ends in a checkpoint is synced whatever the policy.
            if sync || self.uncovered == 0 {
                f.sync_data()
            } else {
                Ok(())
            }
        });
        r.map_err(|e| AuditError(format!("cannot write: {e}")))?;
        self.size += buf.len() as u64;
        Ok(())
    }

    /// Closes the part with a closing checkpoint; the next record opens a new one.
    fn rotate(&mut self) {
        let mut buf = Vec::new();
        self.checkpoint(&mut buf, true);
        if let Err(e) = self.write_out(&buf, true) {
            tracing::error!(target: "p11kms::audit", "{e}");
        }
        self.file = None;
    }

    fn finish(&mut self) {
        if self.file.is_some() {
            self.rotate();
        }
    }
}
