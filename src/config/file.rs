//! The configuration file on disk: its raw TOML structs (turned into the public types by
//! `validate`), TOML errors worded without quoting the file (it may hold an inline PIN), and
//! the safe ways p11kms writes files: owner-only, complete or not at all.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand::rngs::OsRng;
use rand::RngCore;
use serde::Deserialize;

use crate::error::{KmsError, Result};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) region: Option<String>,
    /// A list of region names, or `"*"`.
    pub(super) regions: Option<toml::Value>,
    // A Value so an unquoted number gets a helpful message rather than a type error.
    pub(super) account: Option<toml::Value>,
    // Signed so negative values reach our range check and its field-naming message.
    pub(super) sessions: Option<i64>,
    pub(super) metadata_refresh_ms: Option<i64>,
    pub(super) sealing: Option<String>,
    pub(super) require_in_token_sealing: Option<bool>,
    pub(super) audit: Option<bool>,
    pub(super) audit_dir: Option<String>,
    pub(super) audit_fsync: Option<String>,
    pub(super) audit_failure: Option<String>,
    pub(super) audit_failure_read_only: Option<String>,
    pub(super) audit_max_file_bytes: Option<i64>,
    pub(super) audit_checkpoint_records: Option<i64>,
    pub(super) audit_checkpoint_seconds: Option<i64>,
    pub(super) token: Option<RawToken>,
    pub(super) server: Option<RawServer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    pub(super) module: Option<String>,
    pub(super) label: Option<String>,
    pub(super) slot: Option<i64>,
    pub(super) pin_env: Option<String>,
    pub(super) pin_file: Option<String>,
    // Any TOML value, so a mistyped PIN (e.g. a bare number) never reaches a serde message.
    pub(super) pin: Option<toml::Value>,
    pub(super) softhsm2_conf: Option<String>,
    pub(super) env: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) tls_cert: Option<String>,
    pub(super) tls_key: Option<String>,
    pub(super) max_body_bytes: Option<i64>,
    pub(super) max_connections: Option<i64>,
    pub(super) max_connections_per_source: Option<i64>,
    pub(super) credentials: Option<Vec<RawCredential>>,
    pub(super) metrics: Option<bool>,
    pub(super) metrics_listen: Option<String>,
    pub(super) log_format: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredential {
    pub(super) access_key_id: Option<String>,
    pub(super) secret_env: Option<String>,
    pub(super) secret_file: Option<String>,
    // Accepted by the parser only to refuse it with a clear message (without its value).
    pub(super) secret: Option<toml::Value>,
    pub(super) principal: Option<String>,
    pub(super) allow_actions: Option<Vec<String>>,
    pub(super) allow_keys: Option<Vec<String>>,
    pub(super) identity_policy: Option<String>,
    pub(super) identity_policy_file: Option<String>,
}

/// Parses the TOML text of the file at `path` (named in errors) into its raw structs.
pub(super) fn parse(text: &str, path: &Path) -> Result<RawConfig> {
    toml::from_str(text).map_err(|e| toml_error(path, text, &e))
}

/// Formats a TOML error from its message and position only: `Display` would quote the source
/// line, which may hold an inline PIN.
fn toml_error(path: &Path, text: &str, err: &toml::de::Error) -> KmsError {
    let message = err.message().trim_end();
    let Some(span) = err.span() else {
        return KmsError::config(format!("{}: {message}", path.display()));
    };
    let start = floor_char_boundary(text, span.start.min(text.len()));
    let before = &text[..start];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..start].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    match field_at(text, line_start, line) {
        Some(field) => KmsError::config(format!(
            "{}: line {line_no}, column {column}: field `{field}`: {message}",
            path.display()
        )),
        None => KmsError::config(format!(
            "{}: line {line_no}, column {column}: {message}",
            path.display()
        )),
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Best-effort dotted name of the field an error points at: the `key =` on its line, prefixed
/// by the nearest table header above.
fn field_at(text: &str, line_start: usize, line: &str) -> Option<String> {
    if let Some(header) = table_header(line) {
        return Some(header);
    }
    let eq = line.find('=')?;
    let key = line[..eq].trim();
    if key.is_empty() || !key.chars().all(is_key_char) {
        return None;
    }
    let table = text[..line_start].lines().rev().find_map(table_header);
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_owned(),
    })
}

fn table_header(line: &str) -> Option<String> {
    let line = line.trim();
    let inner = line.strip_prefix('[')?;
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let end = inner.find(']')?;
    let name = inner[..end].trim();
    (!name.is_empty() && name.chars().all(is_key_char)).then(|| name.replace(' ', ""))
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ')
}

// ---------------------------------------------------------------------------------------------
// Writing files.

/// A new owner-only file beside its target, put in place by a rename or a hard link once
/// complete, so no reader ever sees a partial file under the target name. Created with
/// `create_new` under a random name (never an existing file or a symlink's target); removed
/// on drop, also on an error or a panic, unless it was renamed into place.
pub(crate) struct TempFile {
    path: PathBuf,
    file: File,
    placed: bool,
}

impl TempFile {
    /// Creates `.<name>.<random>.p11kms.tmp` in `target`'s directory: the same filesystem as
    /// the target, so the final rename is atomic.
    pub(crate) fn beside(target: &Path, mode: u32) -> io::Result<TempFile> {
        let name = target.file_name().ok_or_else(|| {
            io::Error::new(ErrorKind::InvalidInput, "the target is not a file path")
        })?;
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut last_err = None;
        // 64 random bits only collide in a directory someone fills on purpose: retry a little.
        for _ in 0..16 {
            let mut rnd = [0u8; 8];
            OsRng.try_fill_bytes(&mut rnd).map_err(io::Error::other)?;
            let mut tmp_name = OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(format!(".{}.p11kms.tmp", hex::encode(rnd)));
            let path = dir.join(tmp_name);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file,
                        placed: false,
                    })
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::from(ErrorKind::AlreadyExists)))
    }

    /// Where the temporary file is (for messages).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, to fill.
    pub(crate) fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Flushes the content to disk; called before the file is put in place, so a crash never
    /// leaves the target name on an empty or partial file.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// Atomically replaces `target` (or creates it): readers see the old file or the new one.
    pub(crate) fn rename_onto(mut self, target: &Path) -> io::Result<()> {
        fs::rename(&self.path, target)?;
        self.placed = true;
        Ok(())
    }

    /// Publishes the file as `target` only if nothing is there yet (`AlreadyExists` otherwise,
    /// leaving the other file alone). The temporary name is removed either way.
    pub(crate) fn link_as(self, target: &Path) -> io::Result<()> {
        fs::hard_link(&self.path, target)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.placed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Rewrites the generated conf only when its content differs (e.g. the state dir moved).
pub(super) fn write_conf(path: &Path, content: &[u8]) -> Result<bool> {
    match fs::read(path) {
        Ok(existing) if existing == content => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            return Err(KmsError::config(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    }
    let tmp = write_temp(path, content, 0o600)?;
    // rename is atomic: a concurrently starting process never loads a half-written conf.
    tmp.rename_onto(path)
        .map_err(|e| KmsError::config(format!("cannot write {}: {e}", path.display())))?;
    Ok(true)
}

/// Creates `path` with `content` only if it does not exist. The hard link publishes a complete
/// file atomically and fails if another process got there first (its file is then kept).
pub(super) fn publish_new_file(path: &Path, content: &[u8], mode: u32) -> Result<bool> {
    let tmp = write_temp(path, content, mode)?;
    match tmp.link_as(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        // Some filesystems refuse hard links: fall back to a plain exclusive create.
        Err(_) => match write_new(path, content, mode) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(KmsError::config(format!(
                "cannot create {}: {e}",
                path.display()
            ))),
        },
    }
}

/// A complete, synced temporary file with `content`, beside `path`.
fn write_temp(path: &Path, content: &[u8], mode: u32) -> Result<TempFile> {
    let mut tmp = TempFile::beside(path, mode).map_err(|e| {
        KmsError::config(format!(
            "cannot create a temporary file beside {}: {e}",
            path.display()
        ))
    })?;
    tmp.file()
        .write_all(content)
        .and_then(|()| tmp.sync())
        .map_err(|e| KmsError::config(format!("cannot write {}: {e}", tmp.path().display())))?;
    Ok(tmp)
}

fn write_new(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(content)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::{cfg_path, config_err, minimal, parse};
    use crate::config::Config;

    #[test]
    fn unknown_fields_are_named() {
        let top = format!("colour = \"blue\"\n{}", minimal("pin_env = \"X\""));
        let msg = config_err(parse(&top));
        assert!(
            msg.contains("/etc/p11kms/p11kms.toml") && msg.contains("colour"),
            "{msg}"
        );
        let in_token = minimal("pin_env = \"X\"\npinn = \"1\"");
        let msg = config_err(parse(&in_token));
        assert!(
            msg.contains("token.pinn") && msg.contains("line 5"),
            "{msg}"
        );
        let in_server = format!("{}[server]\nport = 1\n", minimal("pin_env = \"X\""));
        assert!(config_err(parse(&in_server)).contains("server.port"));
    }

    #[test]
    fn toml_errors_do_not_quote_inline_pins() {
        let unterminated = minimal("pin = \"s3cr3t-pin-value");
        let msg = config_err(Config::from_toml_str(
            &unterminated,
            &cfg_path(),
            Some(0o600),
        ));
        assert!(!msg.contains("s3cr3t"), "{msg}");
        assert!(msg.contains("line 4"), "{msg}");
        let number = minimal("pin = 987654321");
        let msg = config_err(Config::from_toml_str(&number, &cfg_path(), Some(0o600)));
        assert!(
            !msg.contains("987654321") && msg.contains("token.pin"),
            "{msg}"
        );
    }
}
