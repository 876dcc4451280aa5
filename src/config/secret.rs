//! PINs and secrets: the redacting [`Secret`] and where one comes from ([`SecretSource`]):
//! an environment variable, an owner-only file, or a value inline in an owner-only config file.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::error::{KmsError, Result};

/// Secret files larger than this are certainly a mistake (e.g. pointing at a key store).
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// A PIN or secret in memory: zeroized on drop, `Debug`/`Display` print `<redacted>`.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Takes ownership of `value`; its buffer is zeroized when the `Secret` is dropped.
    pub fn new(value: String) -> Self {
        Secret(Zeroizing::new(value))
    }

    /// The secret itself; callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a PIN or credential secret comes from. `Debug` never shows an inline value.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// An environment variable name.
    Env(String),
    /// A file readable only by its owner; one trailing newline is ignored.
    File(PathBuf),
    /// A value written in a config file (PINs only, and only in an owner-only file).
    Inline(Secret),
}

impl SecretSource {
    /// Reads the secret now. Errors name the variable or file, never the value.
    pub fn read(&self) -> Result<Secret> {
        match self {
            SecretSource::Env(name) => read_env_secret(name),
            SecretSource::File(path) => read_file_secret(path),
            SecretSource::Inline(secret) => Ok(secret.clone()),
        }
    }
}

fn read_env_secret(name: &str) -> Result<Secret> {
    let value = std::env::var_os(name)
        .ok_or_else(|| KmsError::config(format!("environment variable {name} is not set")))?;
    let value = value
        .into_string()
        .map_err(|_| KmsError::config(format!("environment variable {name} is not valid UTF-8")))?;
    let secret = Secret::new(value);
    if secret.expose().is_empty() {
        return Err(KmsError::config(format!(
            "environment variable {name} is empty"
        )));
    }
    Ok(secret)
}

fn read_file_secret(path: &Path) -> Result<Secret> {
    let shown = path.display();
    let file = fs::File::open(path)
        .map_err(|e| KmsError::config(format!("cannot open secret file {shown}: {e}")))?;
    // fstat the opened handle so the mode checked is the mode of what is actually read.
    let meta = file
        .metadata()
        .map_err(|e| KmsError::config(format!("cannot stat secret file {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(KmsError::config(format!(
            "secret file {shown} is not a regular file"
        )));
    }
    let mode = file_mode(&meta);
    if mode & 0o077 != 0 {
        return Err(KmsError::config(format!(
            "secret file {shown} has mode {mode:04o}, which lets group/others read it; \
             run `chmod 600 {shown}`"
        )));
    }
    if meta.len() > MAX_SECRET_FILE_BYTES {
        return Err(KmsError::config(format!(
            "secret file {shown} is larger than {MAX_SECRET_FILE_BYTES} bytes"
        )));
    }
    // Sized up front so the buffer holding the secret is not reallocated (leaving copies).
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    (&file)
        .take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| KmsError::config(format!("cannot read secret file {shown}: {e}")))?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(KmsError::config(format!(
            "secret file {shown} is larger than {MAX_SECRET_FILE_BYTES} bytes"
        )));
    }
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(KmsError::config(format!("secret file {shown} is empty")));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| KmsError::config(format!("secret file {shown} is not valid UTF-8")))?;
    Ok(Secret::new(text.to_owned()))
}

/// The permission bits of a file (the checks refuse group/other access to secrets).
pub(super) fn file_mode(meta: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::write_mode;

    #[test]
    fn secret_is_redacted() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(s.clone().expose(), "hunter2");
        let src = SecretSource::Inline(s);
        assert!(!format!("{src:?}").contains("hunter2"));
    }

    #[test]
    fn secret_from_env() {
        let name = "P11KMS_TEST_CONFIG_SECRET_FROM_ENV";
        std::env::set_var(name, "envpin-42");
        assert_eq!(
            SecretSource::Env(name.into()).read().unwrap().expose(),
            "envpin-42"
        );
        std::env::set_var(name, "");
        let msg = SecretSource::Env(name.into())
            .read()
            .unwrap_err()
            .to_string();
        assert!(msg.contains(name) && msg.contains("empty"), "{msg}");
        std::env::remove_var(name);
        let msg = SecretSource::Env(name.into())
            .read()
            .unwrap_err()
            .to_string();
        assert!(msg.contains(name) && msg.contains("not set"), "{msg}");
    }

    #[test]
    fn secret_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        write_mode(&path, "filepin-7\n", 0o600);
        let src = SecretSource::File(path.clone());
        assert_eq!(src.read().unwrap().expose(), "filepin-7");
        write_mode(&path, "crlf-pin\r\n", 0o400);
        assert_eq!(src.read().unwrap().expose(), "crlf-pin");
        write_mode(&path, "filepin-7\n", 0o644);
        let err = src.read().unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Config);
        let msg = err.to_string();
        assert!(
            msg.contains("pin") && msg.contains("0644") && !msg.contains("filepin-7"),
            "{msg}"
        );
        write_mode(&path, "\n", 0o600);
        assert!(src.read().unwrap_err().to_string().contains("empty"));
        let missing = SecretSource::File(dir.path().join("absent"))
            .read()
            .unwrap_err();
        assert!(missing.to_string().contains("absent"));
    }
}
