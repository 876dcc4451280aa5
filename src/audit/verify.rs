//! `p11kms audit verify`: re-hashes every line, follows the chain and checks each
//! checkpoint's MAC in the token, naming the first line that breaks it.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{checkpoint_message, line_hash, GENESIS, MEMBER};
use crate::hsm::AuditKey;

/// How one file fared.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum FileOutcome {
    /// Every line chains, every checkpoint's MAC is the audit key's, and the file ends with
    /// its closing checkpoint.
    Verified,
    /// Every line present chains and every checkpoint verifies, but the file ends without its
    /// closing checkpoint: its process stopped (a crash, kill -9) or it was truncated. The
    /// trail verifies up to `last_line` (seq `last_seq`); records after seq `sealed_seq` (the
    /// last checkpoint) are chained but not sealed by a MAC.
    Incomplete {
        /// The last whole line (1-based).
        last_line: usize,
        /// Its seq.
        last_seq: u64,
        /// The last checkpoint's seq (0: none).
        sealed_seq: u64,
        /// In words.
        why: String,
    },
    /// Line `line` (1-based) is where the file stops verifying.
    Failed {
        /// The line (1-based; 0: the file could not be read).
        line: usize,
        /// Its seq, when it has one.
        seq: Option<u64>,
        /// In words.
        why: String,
    },
}

/// One file's verdict.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileReport {
    /// The file.
    pub path: PathBuf,
    /// The stream its header names.
    pub stream: Option<String>,
    /// Records (not headers or checkpoints) that verified.
    pub records: u64,
    /// Checkpoints that verified.
    pub checkpoints: u64,
    /// Whether checkpoints' MACs were checked (no key: the chain only).
    pub macs_checked: bool,
    /// The verdict.
    #[serde(flatten)]
    pub outcome: FileOutcome,
}

/// Where a stream stood at the end of the previous file given.
struct Tail {
    stream: String,
    part: u64,
    seq: u64,
    hash: String,
}

/// Verifies `paths` in order; consecutive parts of one stream must chain onto each other.
pub fn verify_files(paths: &[PathBuf], key: Option<&AuditKey>) -> Vec<FileReport> {
    let mut tail: Option<Tail> = None;
    let mut out = Vec::new();
    for p in paths {
        let (report, end) = verify_file(p, key, tail.take());
        tail = end;
        out.push(report);
    }
    out
}

struct Line<'a> {
    bytes: &'a [u8],
    value: Option<Value>,
}

impl Line<'_> {
    fn member(&self) -> Option<&serde_json::Map<String, Value>> {
        self.value.as_ref()?.get(MEMBER)?.as_object()
    }
    fn seq(&self) -> Option<u64> {
        self.member()?.get("seq")?.as_u64()
    }
    fn str_of(&self, k: &str) -> Option<&str> {
        self.member()?.get(k)?.as_str()
    }
}

fn verify_file(
    path: &Path,
    key: Option<&AuditKey>,
    before: Option<Tail>,
) -> (FileReport, Option<Tail>) {
    let mut report = FileReport {
        path: path.to_owned(),
        stream: None,
        records: 0,
        checkpoints: 0,
        macs_checked: key.is_some(),
        outcome: FileOutcome::Verified,
    };
    let fail = |mut r: FileReport, line: usize, seq: Option<u64>, why: String| {
        r.outcome = FileOutcome::Failed { line, seq, why };
        (r, None)
    };
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => return fail(report, 0, None, format!("cannot read: {e}")),
    };
    let mut chunks: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    // The text after the last newline: empty for a whole file, else a torn last line.
    let torn = chunks.pop().filter(|c| !c.is_empty()).is_some();
    let lines: Vec<Line<'_>> = chunks
        .iter()
        .map(|b| Line {
            bytes: b,
            value: serde_json::from_slice(b).ok(),
        })
        .collect();
    let Some(first) = lines.first() else {
        let why = if torn {
            "the file holds only a torn line (its process stopped while writing the header)"
        } else {
            "the file is empty"
        };
        return fail(report, 1, None, why.into());
    };
    let header = first.member().and_then(|m| m.get("header"));
    let (Some(header), Some(stream), Some(seq0), Some(prev0)) = (
        header,
        first.str_of("stream"),
        first.seq(),
        first.str_of("prev"),
    ) else {
        return fail(
            report,
            1,
            first.seq(),
            "line 1 is not the file's header: the beginning of the file was removed or changed"
                .into(),
        );
    };
    let part = header.get("part").and_then(Value::as_u64).unwrap_or(0);
    report.stream = Some(stream.to_owned());
    match &before {
        Some(t)
            if t.stream == stream
                && part == t.part + 1
                && (seq0 != t.seq + 1 || prev0 != t.hash) =>
        {
            return fail(
                report,
                1,
                Some(seq0),
                format!(
                    "the header does not continue part {} of this stream (ends at seq {}): \
                     lines were removed or changed between the files",
                    t.part, t.seq
                ),
            );
        }
        _ if part == 1 && (seq0 != 1 || prev0 != GENESIS) => {
            return fail(
                report,
                1,
                Some(seq0),
                "the first part's header does not start the stream (seq 1, zero hash)".into(),
            )
        }
        _ => {}
    }
    let mut expected = seq0 + 1;
    let mut prev_hash = line_hash(first.bytes);
    let mut sealed = 0u64;
    let mut closed = false;
    for (i, l) in lines.iter().enumerate().skip(1) {
        let n = i + 1;
        if closed {
            return fail(
                report,
                n,
                l.seq(),
                "lines follow the closing checkpoint: they were added".into(),
            );
        }
        let (Some(seq), Some(prev)) = (l.seq(), l.str_of("prev")) else {
            return fail(
                report,
                n,
                None,
                format!("line {n} is not an audit line (not JSON, or its chain fields are missing): it was changed"),
            );
        };
        if l.str_of("stream") != Some(stream) {
            return fail(
                report,
                n,
                Some(seq),
                format!("line {n} names another stream: it was changed or moved here"),
            );
        }
        if seq != expected {
            let later = lines
                .iter()
                .enumerate()
                .skip(i + 1)
                .find(|(_, x)| x.seq() == Some(expected));
            let why = match later {
                Some((j, _)) => format!(
                    "line {n} holds seq {seq} where seq {expected} belongs; seq {expected} is \
                     on line {}: the records were reordered",
                    j + 1
                ),
                None if seq > expected => format!(
                    "line {n} holds seq {seq} where seq {expected} belongs: record(s) {expected}..{} were removed",
                    seq - 1
                ),
                None => format!(
                    "line {n} holds seq {seq} where seq {expected} belongs: the records were reordered or duplicated"
                ),
            };
            return fail(report, n, Some(seq), why);
        }
        if prev != prev_hash {
            return fail(
                report,
                n - 1,
                Some(seq - 1),
                format!(
                    "line {} (seq {}) was changed: its hash is not the one line {n} chains to",
                    n - 1,
                    seq - 1
                ),
            );
        }
        if let Some(cp) = l.member().and_then(|m| m.get("checkpoint")) {
            let closing = cp.get("closing").and_then(Value::as_bool).unwrap_or(false);
            if let Some(key) = key {
                let mac = cp
                    .get("mac")
                    .and_then(Value::as_str)
                    .and_then(|m| hex::decode(m).ok())
                    .unwrap_or_default();
                let msg = checkpoint_message(stream, seq, prev, closing);
                match key.verify(&msg, &mac) {
                    Ok(true) => {}
                    Ok(false) => {
                        return fail(
                            report,
                            n,
                            Some(seq),
                            format!("the checkpoint on line {n} (seq {seq}) does not carry the audit key's MAC: it was changed or forged"),
                        )
                    }
                    Err(e) => {
                        return fail(
                            report,
                            n,
                            Some(seq),
                            format!("the token could not check the checkpoint on line {n}: {e}"),
                        )
                    }
                }
            }
            report.checkpoints += 1;
            sealed = seq;
            closed = closing;
        } else {
            report.records += 1;
        }
        prev_hash = line_hash(l.bytes);
        expected = seq + 1;
    }
    let last_line = lines.len();
    let last_seq = expected - 1;
    let end = Tail {
        stream: stream.to_owned(),
        part,
        seq: last_seq,
        hash: prev_hash,
    };
    if torn || !closed {
        let why = if torn {
            format!(
                "line {} is torn (a write was cut short): the trail verifies up to line \
                 {last_line} (seq {last_seq})",
                last_line + 1
            )
        } else {
            format!(
                "the file ends without its closing checkpoint (its process stopped, or the file \
                 was truncated): the trail verifies up to line {last_line} (seq {last_seq})"
            )
        };
        report.outcome = FileOutcome::Incomplete {
            last_line,
            last_seq,
            sealed_seq: sealed,
            why,
        };
        return (report, Some(end));
    }
    (report, Some(end))
}
