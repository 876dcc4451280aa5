//! Configuration: the TOML file, PIN/secret sources and the embedded default token.
//!
//! Resolution order is `--config` > `P11KMS_CONFIG` > the embedded SoftHSMv2 token under
//! [`state_dir`]. Files are parsed into `deny_unknown_fields` raw structs and then validated into
//! the public types; every failure is a [`KmsError::Config`] naming the file and the field.
//! Secret values never appear in messages or `Debug` output.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::{KmsError, Result};

/// Region reported in ARNs when none is configured.
pub const DEFAULT_REGION: &str = "us-east-2";
/// Account reported in ARNs when none is configured.
pub const DEFAULT_ACCOUNT: &str = "111122223333";
/// Default HTTP listen address (loopback only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4599";

const DEFAULT_SESSIONS: usize = 4;
const MAX_SESSIONS: usize = 256;
const DEFAULT_METADATA_REFRESH_MS: u64 = 1000;
const MAX_METADATA_REFRESH_MS: u64 = 3_600_000;
/// The largest valid KMS request p11kms serves is a CreateKey with a 32 KB policy, an 8 KB
/// description and 50 tags, or a data-key call with ten 8 KB grant tokens and an 8 KB
/// encryption context: about 140 KB even with every character JSON-escaped. 256 KiB leaves
/// room; anything larger is not a KMS request.
const DEFAULT_MAX_BODY_BYTES: usize = 256 << 10;
/// Open connections, and open connections from one address (0: no per-source limit).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
const MIN_MAX_CONNECTIONS: usize = 16;
const MAX_MAX_CONNECTIONS: usize = 65_536;
const MIN_MAX_BODY_BYTES: usize = 1024;
const MAX_MAX_BODY_BYTES: usize = 64 << 20;
/// Secret files larger than this are certainly a mistake (e.g. pointing at a key store).
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;
/// PKCS#11 token labels are a 32-byte blank-padded field.
const MAX_TOKEN_LABEL_BYTES: usize = 32;

const MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

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

/// Which token of the PKCS#11 module to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token whose label (trailing blanks ignored) equals this.
    Label(String),
    /// The token in this slot id.
    Slot(u64),
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
        .ok_or_else(|| KmsError::Config(format!("environment variable {name} is not set")))?;
    let value = value
        .into_string()
        .map_err(|_| KmsError::Config(format!("environment variable {name} is not valid UTF-8")))?;
    let secret = Secret::new(value);
    if secret.expose().is_empty() {
        return Err(KmsError::Config(format!(
            "environment variable {name} is empty"
        )));
    }
    Ok(secret)
}

fn read_file_secret(path: &Path) -> Result<Secret> {
    let shown = path.display();
    let file = fs::File::open(path)
        .map_err(|e| KmsError::Config(format!("cannot open secret file {shown}: {e}")))?;
    // fstat the opened handle so the mode checked is the mode of what is actually read.
    let meta = file
        .metadata()
        .map_err(|e| KmsError::Config(format!("cannot stat secret file {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(KmsError::Config(format!(
            "secret file {shown} is not a regular file"
        )));
    }
    let mode = file_mode(&meta);
    if mode & 0o077 != 0 {
        return Err(KmsError::Config(format!(
            "secret file {shown} has mode {mode:04o}, which lets group/others read it; \
             run `chmod 600 {shown}`"
        )));
    }
    if meta.len() > MAX_SECRET_FILE_BYTES {
        return Err(KmsError::Config(format!(
            "secret file {shown} is larger than {MAX_SECRET_FILE_BYTES} bytes"
        )));
    }
    // Sized up front so the buffer holding the secret is not reallocated (leaving copies).
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    (&file)
        .take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| KmsError::Config(format!("cannot read secret file {shown}: {e}")))?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(KmsError::Config(format!(
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
        return Err(KmsError::Config(format!("secret file {shown} is empty")));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| KmsError::Config(format!("secret file {shown} is not valid UTF-8")))?;
    Ok(Secret::new(text.to_owned()))
}

fn file_mode(meta: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

/// The PKCS#11 token holding the master keys.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// Absolute path of the PKCS#11 module (`libsofthsm2.so`).
    pub module: PathBuf,
    /// Which token of the module.
    pub selector: TokenSelector,
    /// The user PIN.
    pub pin: SecretSource,
    /// If set, exported as `SOFTHSM2_CONF` before the module is loaded.
    pub softhsm2_conf: Option<PathBuf>,
    /// Environment variables the module reads in `C_Initialize` (e.g. Kryoptic's
    /// `KRYOPTIC_CONF`), exported before it is loaded. Values are passed verbatim.
    pub env: Vec<(String, String)>,
}

impl TokenConfig {
    /// Exports `softhsm2_conf` and `env` for the module. Must run before the module is loaded
    /// (PKCS#11 modules read their environment in `C_Initialize`) and before the process
    /// starts other threads; the variables only ever take the configured values.
    pub fn export_env(&self) {
        if let Some(conf) = &self.softhsm2_conf {
            std::env::set_var("SOFTHSM2_CONF", conf);
        }
        for (name, value) in &self.env {
            std::env::set_var(name, value);
        }
    }
}

/// Where GenerateDataKeyWithoutPlaintext seals the data key (config `sealing`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SealingPolicy {
    /// In the token where it can (`C_GenerateKey` + `C_WrapKey` with AES-GCM), else on the host.
    #[default]
    Auto,
    /// Always `C_GenerateRandom` + `C_Encrypt`: the key bytes pass through host memory.
    Host,
    /// Always in the token; a token that cannot is refused at start-up.
    Token,
}

impl SealingPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SealingPolicy::Auto => "auto",
            SealingPolicy::Host => "host",
            SealingPolicy::Token => "token",
        }
    }
}

/// One access key accepted by the server (SigV4).
#[derive(Debug, Clone)]
pub struct Credential {
    /// The AWS access key id clients sign with.
    pub access_key_id: String,
    /// The secret access key (env var or owner-only file; never inline).
    pub secret: SecretSource,
    /// The principal ARN requests signed with this key act as.
    pub principal: String,
    /// Allowed actions (`kms:Encrypt`, `kms:*`, `*`); `None` allows all.
    pub allow_actions: Option<Vec<String>>,
    /// Allowed key ids, ARNs or aliases; `None` allows all.
    pub allow_keys: Option<Vec<String>>,
}

/// The HTTP endpoint.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `host:port` to bind.
    pub listen: String,
    /// PEM certificate chain; set together with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key; set together with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Accepted access keys.
    pub credentials: Vec<Credential>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Open connections at most; past it the oldest idle one is closed (or the new one
    /// refused when none is idle).
    pub max_connections: usize,
    /// Open connections from one IP address at most (`None`: no such limit).
    pub max_connections_per_source: Option<usize>,
}

/// Where a [`Config`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A TOML file (absolute path).
    File(PathBuf),
    /// The embedded default token in this (absolute) state directory.
    Embedded(PathBuf),
}

/// The whole validated configuration. All paths in it are absolute.
#[derive(Debug, Clone)]
pub struct Config {
    /// The PKCS#11 token holding the master keys.
    pub token: TokenConfig,
    /// Region used in ARNs.
    pub region: String,
    /// 12-digit account id used in ARNs.
    pub account: String,
    /// Session pool size, 1..=256.
    pub sessions: usize,
    /// How often changes made by other processes are picked up (zero: on every request).
    pub metadata_refresh: Duration,
    /// Where data keys are sealed (`sealing`).
    pub sealing: SealingPolicy,
    /// Refuse to run on a token that cannot seal data keys inside itself
    /// (`require_in_token_sealing`, overridden by `P11KMS_REQUIRE_IN_TOKEN_SEALING`).
    pub require_in_token_sealing: bool,
    /// The HTTP endpoint.
    pub server: ServerConfig,
    /// Where this configuration came from.
    pub source: ConfigSource,
}

impl Config {
    /// `--config` path > `P11KMS_CONFIG` > embedded default under [`state_dir`].
    /// `P11KMS_LISTEN` overrides `server.listen` and `P11KMS_REQUIRE_IN_TOKEN_SEALING`
    /// overrides `require_in_token_sealing` in every case.
    pub fn resolve(cli_path: Option<&Path>) -> Result<Config> {
        if let Some(path) = cli_path {
            return Config::from_file(path);
        }
        if let Some(path) = non_empty_env("P11KMS_CONFIG") {
            return Config::from_file(Path::new(&path));
        }
        let mut config = Config::embedded(&state_dir())?;
        config.apply_env_overrides(|name| std::env::var_os(name))?;
        Ok(config)
    }

    /// Reads and validates a TOML file, then applies environment overrides.
    pub fn from_file(path: &Path) -> Result<Config> {
        let path = absolutize(path)?;
        let shown = path.display();
        let mut file = fs::File::open(&path)
            .map_err(|e| KmsError::Config(format!("cannot open config file {shown}: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| KmsError::Config(format!("cannot stat config file {shown}: {e}")))?;
        // Zeroizing: the text may contain an inline PIN.
        let mut text = Zeroizing::new(String::new());
        file.read_to_string(&mut text)
            .map_err(|e| KmsError::Config(format!("cannot read config file {shown}: {e}")))?;
        let mut config = Config::from_toml_str(&text, &path, Some(file_mode(&meta)))?;
        config.apply_env_overrides(|name| std::env::var_os(name))?;
        Ok(config)
    }

    /// Parses and validates TOML text. `path_for_messages` names the file in errors and is the
    /// base for relative paths; `file_mode` (None skips the check) guards inline PINs.
    pub fn from_toml_str(
        text: &str,
        path_for_messages: &Path,
        file_mode: Option<u32>,
    ) -> Result<Config> {
        let path = absolutize(path_for_messages)?;
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(&path, text, &e))?;
        Validator { path: &path }.config(raw, file_mode)
    }

    /// The embedded default token under `state_dir` (files are not created here; see
    /// [`EmbeddedToken::ensure_files`]).
    pub fn embedded(state_dir: &Path) -> Result<Config> {
        Config::embedded_with_module(state_dir, find_softhsm_module()?)
    }

    fn embedded_with_module(state_dir: &Path, module: PathBuf) -> Result<Config> {
        let state = absolute_dir(state_dir)?;
        let token = EmbeddedToken {
            state_dir: state.clone(),
        };
        let credentials = embedded_dev_credential(&state)?.into_iter().collect();
        Ok(Config {
            token: TokenConfig {
                module,
                selector: TokenSelector::Label(EmbeddedToken::LABEL.to_owned()),
                pin: SecretSource::File(token.pin_path()),
                softhsm2_conf: Some(token.conf_path()),
                env: Vec::new(),
            },
            region: DEFAULT_REGION.to_owned(),
            account: DEFAULT_ACCOUNT.to_owned(),
            sessions: DEFAULT_SESSIONS,
            metadata_refresh: Duration::from_millis(DEFAULT_METADATA_REFRESH_MS),
            sealing: SealingPolicy::Auto,
            require_in_token_sealing: false,
            server: ServerConfig {
                listen: DEFAULT_LISTEN.to_owned(),
                tls_cert: None,
                tls_key: None,
                credentials,
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                max_connections_per_source: None,
            },
            source: ConfigSource::Embedded(state),
        })
    }

    /// The environment variables this configuration reads secrets from (the PIN and the
    /// credential secrets), to be wiped once read.
    pub fn secret_env_names(&self) -> Vec<&str> {
        let mut names = Vec::new();
        if let SecretSource::Env(n) = &self.token.pin {
            names.push(n.as_str());
        }
        for c in &self.server.credentials {
            if let SecretSource::Env(n) = &c.secret {
                names.push(n.as_str());
            }
        }
        names
    }

    /// Environment overrides; `get` is injectable so tests do not touch the process env.
    fn apply_env_overrides(&mut self, get: impl Fn(&str) -> Option<OsString>) -> Result<()> {
        if let Some(listen) = get("P11KMS_LISTEN").filter(|v| !v.is_empty()) {
            let listen = listen
                .into_string()
                .map_err(|_| KmsError::Config("P11KMS_LISTEN is not valid UTF-8".to_owned()))?;
            if !valid_listen(&listen) {
                return Err(KmsError::Config(format!(
                    "P11KMS_LISTEN: `{listen}` is not a host:port address"
                )));
            }
            self.server.listen = listen;
        }
        if let Some(v) = get("P11KMS_REQUIRE_IN_TOKEN_SEALING").filter(|v| !v.is_empty()) {
            self.require_in_token_sealing = match v.to_str() {
                Some("true" | "1" | "yes") => true,
                Some("false" | "0" | "no") => false,
                _ => {
                    return Err(KmsError::Config(
                        "P11KMS_REQUIRE_IN_TOKEN_SEALING must be true or false".to_owned(),
                    ))
                }
            };
        }
        if self.require_in_token_sealing && self.sealing == SealingPolicy::Host {
            return Err(KmsError::Config(
                "require_in_token_sealing contradicts sealing = \"host\"; set sealing to \"auto\" \
                 or \"token\""
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

/// The dev credential created by `init`, if its two files exist.
fn embedded_dev_credential(state: &Path) -> Result<Option<Credential>> {
    let id_path = state.join("dev-access-key-id");
    let secret_path = state.join("dev-secret-key");
    match (id_path.exists(), secret_path.exists()) {
        (false, false) => return Ok(None),
        (true, true) => {}
        // Half a credential means an interrupted init; say so rather than silently drop it.
        (true, false) | (false, true) => {
            let missing = if id_path.exists() {
                &secret_path
            } else {
                &id_path
            };
            return Err(KmsError::Config(format!(
                "{} is missing while its partner exists; re-run `p11kms init` or delete both \
                 dev-access-key-id and dev-secret-key",
                missing.display()
            )));
        }
    }
    let id = fs::read_to_string(&id_path)
        .map_err(|e| KmsError::Config(format!("cannot read {}: {e}", id_path.display())))?;
    let id = id.trim();
    if !valid_access_key_id(id) {
        return Err(KmsError::Config(format!(
            "{}: not an access key id (16-128 letters, digits or _)",
            id_path.display()
        )));
    }
    Ok(Some(Credential {
        access_key_id: id.to_owned(),
        secret: SecretSource::File(secret_path),
        principal: format!("arn:aws:iam::{DEFAULT_ACCOUNT}:user/dev"),
        allow_actions: None,
        allow_keys: None,
    }))
}

/// `P11KMS_STATE_DIR`, or `./var` relative to the current directory; made absolute when the
/// current directory is known. Not created here.
pub fn state_dir() -> PathBuf {
    let dir = non_empty_env("P11KMS_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("var"));
    std::path::absolute(&dir).unwrap_or(dir)
}

/// The embedded default token's files under the state directory.
#[derive(Debug, Clone)]
pub struct EmbeddedToken {
    /// The state directory (see [`state_dir`]).
    pub state_dir: PathBuf,
}

impl EmbeddedToken {
    /// Label of the embedded token.
    pub const LABEL: &'static str = "p11kms";

    /// `<state>/softhsm2.conf`
    pub fn conf_path(&self) -> PathBuf {
        self.state_dir.join("softhsm2.conf")
    }

    /// `<state>/tokens`
    pub fn token_dir(&self) -> PathBuf {
        self.state_dir.join("tokens")
    }

    /// `<state>/user.pin` (0600)
    pub fn pin_path(&self) -> PathBuf {
        self.state_dir.join("user.pin")
    }

    /// `<state>/so.pin` (0600)
    pub fn so_pin_path(&self) -> PathBuf {
        self.state_dir.join("so.pin")
    }

    /// Idempotent and safe to race with another process: creates the state dir (0700), the
    /// token dir, `softhsm2.conf` and random PINs (0600) where missing. Returns true if
    /// anything was created or rewritten.
    pub fn ensure_files(&self) -> Result<bool> {
        let mut changed = false;
        changed |= create_private_dir(&self.state_dir)?;
        changed |= create_private_dir(&self.token_dir())?;

        let token_dir = absolute_dir(&self.token_dir())?;
        let conf = softhsm_conf_text(&token_dir)?;
        changed |= write_conf(&self.state_dir, &self.conf_path(), conf.as_bytes())?;

        for pin_path in [self.pin_path(), self.so_pin_path()] {
            if pin_path.exists() {
                continue;
            }
            let mut pin = random_hex_pin()?;
            pin.push('\n');
            changed |= publish_new_file(&self.state_dir, &pin_path, pin.as_bytes(), 0o600)?;
        }
        // The dev principal's credential for `p11kms serve` (both files or neither).
        let id_path = self.state_dir.join("dev-access-key-id");
        let secret_path = self.state_dir.join("dev-secret-key");
        if !secret_path.exists() {
            let mut secret = random_token(40, SECRET_ALPHABET)?;
            secret.push('\n');
            changed |= publish_new_file(&self.state_dir, &secret_path, secret.as_bytes(), 0o600)?;
        }
        if !id_path.exists() {
            let mut id = Zeroizing::new(format!("AKIA{}", random_token(16, ID_ALPHABET)?.as_str()));
            id.push('\n');
            changed |= publish_new_file(&self.state_dir, &id_path, id.as_bytes(), 0o600)?;
        }
        Ok(changed)
    }
}

const ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `len` characters drawn uniformly from `alphabet` (whose length divides 256) by the OS RNG.
fn random_token(len: usize, alphabet: &[u8]) -> Result<Zeroizing<String>> {
    let mut bytes = Zeroizing::new(vec![0u8; len]);
    rand::rngs::OsRng
        .try_fill_bytes(bytes.as_mut())
        .map_err(|e| KmsError::Config(format!("OS random number generator failed: {e}")))?;
    Ok(Zeroizing::new(
        bytes
            .iter()
            .map(|b| char::from(alphabet[usize::from(*b) % alphabet.len()]))
            .collect(),
    ))
}

fn softhsm_conf_text(token_dir: &Path) -> Result<String> {
    let dir = token_dir.to_str().ok_or_else(|| {
        KmsError::Config(format!(
            "token directory {} is not valid UTF-8",
            token_dir.display()
        ))
    })?;
    // SoftHSM's config format is line based.
    if dir.contains(['\n', '\r']) {
        return Err(KmsError::Config(format!(
            "token directory {} contains a newline",
            token_dir.display()
        )));
    }
    Ok(format!(
        "# Managed by p11kms for its embedded token; regenerated if it differs.\n\
         directories.tokendir = {dir}\n\
         objectstore.backend = file\n\
         log.level = ERROR\n\
         slots.removable = false\n"
    ))
}

/// 16 bytes from the OS RNG as 32 lowercase hex characters.
fn random_hex_pin() -> Result<Zeroizing<String>> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = Zeroizing::new([0u8; 16]);
    rand::rngs::OsRng
        .try_fill_bytes(bytes.as_mut())
        .map_err(|e| KmsError::Config(format!("OS random number generator failed: {e}")))?;
    let mut pin = Zeroizing::new(String::with_capacity(33));
    for b in bytes.iter() {
        pin.push(char::from(HEX[usize::from(b >> 4)]));
        pin.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    Ok(pin)
}

fn create_private_dir(dir: &Path) -> Result<bool> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(false),
        Ok(_) => {
            return Err(KmsError::Config(format!(
                "{} exists but is not a directory",
                dir.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(KmsError::Config(format!(
                "cannot stat {}: {e}",
                dir.display()
            )))
        }
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| KmsError::Config(format!("cannot create {}: {e}", dir.display())))?;
    Ok(true)
}

/// Rewrites the generated conf only when its content differs (e.g. the state dir moved).
fn write_conf(dir: &Path, path: &Path, content: &[u8]) -> Result<bool> {
    match fs::read(path) {
        Ok(existing) if existing == content => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(KmsError::Config(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    }
    let tmp = write_temp(dir, path, content, 0o600)?;
    // rename is atomic: a concurrently starting process never loads a half-written conf.
    let renamed = fs::rename(&tmp, path);
    if renamed.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    renamed.map_err(|e| KmsError::Config(format!("cannot write {}: {e}", path.display())))?;
    Ok(true)
}

/// Creates `path` with `content` only if it does not exist. The hard link publishes a complete
/// file atomically and fails if another process got there first (its file is then kept).
fn publish_new_file(dir: &Path, path: &Path, content: &[u8], mode: u32) -> Result<bool> {
    let tmp = write_temp(dir, path, content, mode)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        // Some filesystems refuse hard links: fall back to a plain exclusive create.
        Err(_) => match write_new(path, content, mode) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(KmsError::Config(format!(
                "cannot create {}: {e}",
                path.display()
            ))),
        },
    }
}

fn write_temp(dir: &Path, path: &Path, content: &[u8], mode: u32) -> Result<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    write_new(&tmp, content, mode).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        KmsError::Config(format!("cannot write {}: {e}", tmp.display()))
    })?;
    Ok(tmp)
}

fn write_new(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(content)?;
    file.sync_all()
}

/// Finds the SoftHSMv2 module: `P11KMS_MODULE` if set, else the first standard location that
/// exists.
pub fn find_softhsm_module() -> Result<PathBuf> {
    find_module_in(non_empty_env("P11KMS_MODULE"), MODULE_CANDIDATES)
}

fn find_module_in(env: Option<OsString>, candidates: &[&str]) -> Result<PathBuf> {
    if let Some(module) = env {
        let path = absolutize(Path::new(&module))?;
        if !path.is_file() {
            return Err(KmsError::Config(format!(
                "P11KMS_MODULE={} does not exist or is not a file",
                path.display()
            )));
        }
        return Ok(path);
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            KmsError::Config(format!(
                "SoftHSMv2 not found (looked in {}); run scripts/run.sh, or `apt-get install \
                 softhsm2`, or set P11KMS_MODULE to the PKCS#11 module path",
                candidates.join(", ")
            ))
        })
}

fn non_empty_env(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

fn absolutize(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path)
        .map_err(|e| KmsError::Config(format!("cannot make {} absolute: {e}", path.display())))
}

/// Absolute form of a directory that may not exist yet: its parent is canonicalized when it
/// exists, so symlinks and `..` in the parent do not leak into paths given to SoftHSM.
fn absolute_dir(dir: &Path) -> Result<PathBuf> {
    let abs = absolutize(dir)?;
    if let Ok(canonical) = abs.canonicalize() {
        return Ok(canonical);
    }
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Ok(parent
            .canonicalize()
            .map(|p| p.join(name))
            .unwrap_or(abs.clone())),
        _ => Ok(abs),
    }
}

// ---------------------------------------------------------------------------------------------
// The file format: raw serde structs, validated below.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    region: Option<String>,
    // A Value so an unquoted number gets a helpful message rather than a type error.
    account: Option<toml::Value>,
    // Signed so negative values reach our range check and its field-naming message.
    sessions: Option<i64>,
    metadata_refresh_ms: Option<i64>,
    sealing: Option<String>,
    require_in_token_sealing: Option<bool>,
    token: Option<RawToken>,
    server: Option<RawServer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    module: Option<String>,
    label: Option<String>,
    slot: Option<i64>,
    pin_env: Option<String>,
    pin_file: Option<String>,
    // Any TOML value, so a mistyped PIN (e.g. a bare number) never reaches a serde message.
    pin: Option<toml::Value>,
    softhsm2_conf: Option<String>,
    env: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    max_body_bytes: Option<i64>,
    max_connections: Option<i64>,
    max_connections_per_source: Option<i64>,
    credentials: Option<Vec<RawCredential>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    access_key_id: Option<String>,
    secret_env: Option<String>,
    secret_file: Option<String>,
    // Accepted by the parser only to refuse it with a clear message (without its value).
    secret: Option<toml::Value>,
    principal: Option<String>,
    allow_actions: Option<Vec<String>>,
    allow_keys: Option<Vec<String>>,
}

/// Formats a TOML error from its message and position only: `Display` would quote the source
/// line, which may hold an inline PIN.
fn toml_error(path: &Path, text: &str, err: &toml::de::Error) -> KmsError {
    let message = err.message().trim_end();
    let Some(span) = err.span() else {
        return KmsError::Config(format!("{}: {message}", path.display()));
    };
    let start = floor_char_boundary(text, span.start.min(text.len()));
    let before = &text[..start];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..start].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    match field_at(text, line_start, line) {
        Some(field) => KmsError::Config(format!(
            "{}: line {line_no}, column {column}: field `{field}`: {message}",
            path.display()
        )),
        None => KmsError::Config(format!(
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

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn err(&self, field: &str, msg: impl fmt::Display) -> KmsError {
        KmsError::Config(format!("{}: {field}: {msg}", self.path.display()))
    }

    fn config(&self, raw: RawConfig, file_mode: Option<u32>) -> Result<Config> {
        let region = match raw.region {
            Some(r) if valid_region(&r) => r,
            Some(r) => {
                return Err(self.err(
                    "region",
                    format!("`{r}` is not a region name like us-east-2"),
                ))
            }
            None => DEFAULT_REGION.to_owned(),
        };
        let account = match raw.account {
            None => DEFAULT_ACCOUNT.to_owned(),
            Some(toml::Value::String(a)) if valid_account(&a) => a,
            Some(_) => {
                return Err(self.err(
                    "account",
                    "must be a quoted string of exactly 12 digits, e.g. \"111122223333\"",
                ))
            }
        };
        let sessions = match raw.sessions {
            None => DEFAULT_SESSIONS,
            Some(n) => usize::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_SESSIONS).contains(n))
                .ok_or_else(|| {
                    self.err("sessions", format!("must be between 1 and {MAX_SESSIONS}"))
                })?,
        };
        let refresh_ms = match raw.metadata_refresh_ms {
            None => DEFAULT_METADATA_REFRESH_MS,
            Some(n) => u64::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_METADATA_REFRESH_MS)
                .ok_or_else(|| {
                    self.err(
                        "metadata_refresh_ms",
                        format!("must be between 0 and {MAX_METADATA_REFRESH_MS}"),
                    )
                })?,
        };
        let sealing = match raw.sealing.as_deref() {
            None | Some("auto") => SealingPolicy::Auto,
            Some("host") => SealingPolicy::Host,
            Some("token") => SealingPolicy::Token,
            Some(other) => {
                return Err(self.err(
                    "sealing",
                    format!("`{other}` is not one of \"auto\", \"host\", \"token\""),
                ))
            }
        };
        let require_in_token_sealing = raw.require_in_token_sealing.unwrap_or(false);
        if require_in_token_sealing && sealing == SealingPolicy::Host {
            return Err(self.err(
                "require_in_token_sealing",
                "contradicts sealing = \"host\"; set sealing to \"auto\" or \"token\"",
            ));
        }
        let token = raw
            .token
            .ok_or_else(|| self.err("token", "the [token] section is required"))?;
        let token = self.token(token, file_mode)?;
        let server = self.server(raw.server)?;
        Ok(Config {
            token,
            region,
            account,
            sessions,
            metadata_refresh: Duration::from_millis(refresh_ms),
            sealing,
            require_in_token_sealing,
            server,
            source: ConfigSource::File(self.path.to_path_buf()),
        })
    }

    fn token(&self, raw: RawToken, file_mode: Option<u32>) -> Result<TokenConfig> {
        let module = match raw.module {
            Some(m) => self.path_field("token.module", &m)?,
            // Unset: auto-detect, so one file works across distributions and architectures.
            None => find_softhsm_module().map_err(|e| self.err("token.module", e))?,
        };
        let selector = match (raw.label, raw.slot) {
            (Some(_), Some(_)) => {
                return Err(self.err("token.label/token.slot", "set exactly one, not both"))
            }
            (None, None) => {
                return Err(self.err("token.label/token.slot", "set exactly one of them"))
            }
            (Some(label), None) => {
                if label.trim().is_empty() || label.len() > MAX_TOKEN_LABEL_BYTES {
                    return Err(self.err(
                        "token.label",
                        format!("must be 1 to {MAX_TOKEN_LABEL_BYTES} bytes"),
                    ));
                }
                TokenSelector::Label(label)
            }
            (None, Some(slot)) => TokenSelector::Slot(
                u64::try_from(slot).map_err(|_| self.err("token.slot", "must not be negative"))?,
            ),
        };
        let pin = match (raw.pin_env, raw.pin_file, raw.pin) {
            (Some(name), None, None) => SecretSource::Env(self.env_name("token.pin_env", name)?),
            (None, Some(file), None) => {
                SecretSource::File(self.path_field("token.pin_file", &file)?)
            }
            (None, None, Some(value)) => SecretSource::Inline(self.inline_pin(value, file_mode)?),
            (None, None, None) => {
                return Err(self.err(
                    "token.pin_env/pin_file/pin",
                    "set exactly one of them (pin_env is recommended)",
                ))
            }
            _ => {
                return Err(self.err(
                    "token.pin_env/pin_file/pin",
                    "set exactly one of them, not several",
                ))
            }
        };
        let softhsm2_conf = raw
            .softhsm2_conf
            .map(|p| self.path_field("token.softhsm2_conf", &p))
            .transpose()?;
        let mut env = Vec::new();
        for (name, value) in raw.env.unwrap_or_default() {
            let field = format!("token.env.{name}");
            let name = self.env_name(&field, name)?;
            if name == "SOFTHSM2_CONF" && softhsm2_conf.is_some() {
                return Err(self.err(&field, "set either token.softhsm2_conf or this, not both"));
            }
            if name.starts_with("P11KMS_") {
                return Err(self.err(&field, "p11kms's own variables cannot be set here"));
            }
            if value.contains('\0') {
                return Err(self.err(&field, "contains a NUL byte"));
            }
            env.push((name, value));
        }
        Ok(TokenConfig {
            module,
            selector,
            pin,
            softhsm2_conf,
            env,
        })
    }

    fn inline_pin(&self, value: toml::Value, file_mode: Option<u32>) -> Result<Secret> {
        let toml::Value::String(pin) = value else {
            return Err(self.err("token.pin", "must be a quoted string"));
        };
        let pin = Secret::new(pin);
        if pin.expose().is_empty() {
            return Err(self.err("token.pin", "is empty"));
        }
        if let Some(mode) = file_mode {
            if mode & 0o077 != 0 {
                return Err(self.err(
                    "token.pin",
                    format!(
                        "an inline PIN is refused because this file has mode {mode:04o} \
                         (readable by group/others); run `chmod 600` on it, or use pin_env \
                         or pin_file instead"
                    ),
                ));
            }
        }
        Ok(pin)
    }

    fn server(&self, raw: Option<RawServer>) -> Result<ServerConfig> {
        let Some(raw) = raw else {
            return Ok(ServerConfig {
                listen: DEFAULT_LISTEN.to_owned(),
                tls_cert: None,
                tls_key: None,
                credentials: Vec::new(),
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                max_connections_per_source: None,
            });
        };
        let listen = match raw.listen {
            None => DEFAULT_LISTEN.to_owned(),
            Some(l) if valid_listen(&l) => l,
            Some(l) => {
                return Err(self.err("server.listen", format!("`{l}` is not a host:port address")))
            }
        };
        let (tls_cert, tls_key) = match (raw.tls_cert, raw.tls_key) {
            (Some(cert), Some(key)) => (
                Some(self.path_field("server.tls_cert", &cert)?),
                Some(self.path_field("server.tls_key", &key)?),
            ),
            (None, None) => (None, None),
            _ => return Err(self.err("server.tls_cert/server.tls_key", "set both or neither")),
        };
        let max_body_bytes = match raw.max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(n) => usize::try_from(n)
                .ok()
                .filter(|n| (MIN_MAX_BODY_BYTES..=MAX_MAX_BODY_BYTES).contains(n))
                .ok_or_else(|| {
                    self.err(
                        "server.max_body_bytes",
                        format!("must be between {MIN_MAX_BODY_BYTES} and {MAX_MAX_BODY_BYTES}"),
                    )
                })?,
        };
        let max_connections = match raw.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(n) => usize::try_from(n)
                .ok()
                .filter(|n| (MIN_MAX_CONNECTIONS..=MAX_MAX_CONNECTIONS).contains(n))
                .ok_or_else(|| {
                    self.err(
                        "server.max_connections",
                        format!("must be between {MIN_MAX_CONNECTIONS} and {MAX_MAX_CONNECTIONS}"),
                    )
                })?,
        };
        let max_connections_per_source = match raw.max_connections_per_source {
            None | Some(0) => None,
            Some(n) => Some(
                usize::try_from(n)
                    .ok()
                    .filter(|n| (1..=max_connections).contains(n))
                    .ok_or_else(|| {
                        self.err(
                            "server.max_connections_per_source",
                            format!("must be between 0 (no limit) and max_connections ({max_connections})"),
                        )
                    })?,
            ),
        };
        let mut credentials: Vec<Credential> = Vec::new();
        for (i, raw) in raw.credentials.unwrap_or_default().into_iter().enumerate() {
            let credential = self.credential(i, raw)?;
            if credentials
                .iter()
                .any(|c| c.access_key_id == credential.access_key_id)
            {
                return Err(self.err(
                    &format!("server.credentials[{i}].access_key_id"),
                    format!("`{}` is listed twice", credential.access_key_id),
                ));
            }
            credentials.push(credential);
        }
        Ok(ServerConfig {
            listen,
            tls_cert,
            tls_key,
            credentials,
            max_body_bytes,
            max_connections,
            max_connections_per_source,
        })
    }

    fn credential(&self, i: usize, raw: RawCredential) -> Result<Credential> {
        let field = |name: &str| format!("server.credentials[{i}].{name}");
        let access_key_id = raw
            .access_key_id
            .ok_or_else(|| self.err(&field("access_key_id"), "is required"))?;
        if !valid_access_key_id(&access_key_id) {
            return Err(self.err(
                &field("access_key_id"),
                "must be 16 to 128 letters, digits or _",
            ));
        }
        if raw.secret.is_some() {
            return Err(self.err(
                &field("secret"),
                "inline secrets are never accepted for credentials; use secret_env or \
                 secret_file",
            ));
        }
        let secret = match (raw.secret_env, raw.secret_file) {
            (Some(name), None) => SecretSource::Env(self.env_name(&field("secret_env"), name)?),
            (None, Some(file)) => {
                SecretSource::File(self.path_field(&field("secret_file"), &file)?)
            }
            (Some(_), Some(_)) => {
                return Err(self.err(
                    &field("secret_env/secret_file"),
                    "set exactly one, not both",
                ))
            }
            (None, None) => {
                return Err(self.err(&field("secret_env/secret_file"), "set exactly one of them"))
            }
        };
        let principal = raw
            .principal
            .ok_or_else(|| self.err(&field("principal"), "is required"))?;
        if !valid_arn(&principal) {
            return Err(self.err(
                &field("principal"),
                format!("`{principal}` is not an ARN like arn:aws:iam::111122223333:user/dev"),
            ));
        }
        let allow_actions = raw
            .allow_actions
            .map(|actions| {
                self.non_empty_list(&field("allow_actions"), &actions)?;
                if let Some(bad) = actions.iter().find(|a| !valid_action(a)) {
                    return Err(self.err(
                        &field("allow_actions"),
                        format!("`{bad}` is not an action like kms:Encrypt, kms:* or *"),
                    ));
                }
                Ok(actions)
            })
            .transpose()?;
        let allow_keys = raw
            .allow_keys
            .map(|keys| {
                self.non_empty_list(&field("allow_keys"), &keys)?;
                if keys
                    .iter()
                    .any(|k| k.is_empty() || k.contains(char::is_whitespace))
                {
                    return Err(self.err(
                        &field("allow_keys"),
                        "entries must be non-empty key ids, key ARNs or alias names",
                    ));
                }
                Ok(keys)
            })
            .transpose()?;
        Ok(Credential {
            access_key_id,
            secret,
            principal,
            allow_actions,
            allow_keys,
        })
    }

    fn non_empty_list(&self, field: &str, list: &[String]) -> Result<()> {
        if list.is_empty() {
            // An empty list would allow nothing, which is almost certainly a mistake.
            return Err(self.err(field, "is empty; remove the field to allow all"));
        }
        Ok(())
    }

    fn env_name(&self, field: &str, name: String) -> Result<String> {
        let ok = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !ok {
            return Err(self.err(
                field,
                format!("`{name}` is not an environment variable name"),
            ));
        }
        Ok(name)
    }

    /// Relative paths are relative to the config file's directory.
    fn path_field(&self, field: &str, value: &str) -> Result<PathBuf> {
        if value.is_empty() {
            return Err(self.err(field, "is empty"));
        }
        if value.starts_with('~') {
            return Err(self.err(field, "`~` is not expanded; use an absolute path"));
        }
        let p = Path::new(value);
        if p.is_absolute() {
            return Ok(p.to_path_buf());
        }
        let base = self.path.parent().unwrap_or(Path::new("/"));
        Ok(base.join(p))
    }
}

/// `[a-z]{2}(-[a-z]+)+-\d+`
fn valid_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    let Some((last, rest)) = parts.split_last() else {
        return false;
    };
    let Some((first, middle)) = rest.split_first() else {
        return false;
    };
    let lower = |s: &&str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase());
    first.len() == 2
        && lower(first)
        && !middle.is_empty()
        && middle.iter().all(lower)
        && !last.is_empty()
        && last.bytes().all(|b| b.is_ascii_digit())
}

fn valid_account(account: &str) -> bool {
    account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())
}

/// AWS allows `[\w]+` of 16 to 128 characters.
fn valid_access_key_id(id: &str) -> bool {
    (16..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `arn:partition:service:region:account:resource` with partition, service and resource set.
fn valid_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && !parts[1].is_empty()
        && !parts[2].is_empty()
        && !parts[5].is_empty()
        && !arn.contains(char::is_whitespace)
}

fn valid_action(action: &str) -> bool {
    action == "*"
        || action.strip_prefix("kms:").is_some_and(|name| {
            name == "*" || (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric()))
        })
}

/// `host:port` where host is an IP (IPv6 in brackets) or a DNS name.
fn valid_listen(listen: &str) -> bool {
    if listen.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = listen.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && port.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

    fn cfg_path() -> PathBuf {
        PathBuf::from("/etc/p11kms/p11kms.toml")
    }

    fn parse(text: &str) -> Result<Config> {
        Config::from_toml_str(text, &cfg_path(), None)
    }

    fn minimal(extra_token: &str) -> String {
        format!("[token]\nmodule = \"{MODULE}\"\nlabel = \"p11kms\"\n{extra_token}\n")
    }

    fn config_err(result: Result<Config>) -> String {
        match result {
            Err(KmsError::Config(msg)) => msg,
            Err(other) => panic!("expected a Config error, got {other:?}"),
            Ok(c) => panic!("expected an error, got {c:?}"),
        }
    }

    fn write_mode(path: &Path, content: &str, mode: u32) {
        // Replace rather than overwrite: the old file may be read-only (0400).
        let _ = fs::remove_file(path);
        fs::write(path, content).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn full_valid_file() {
        let text = r#"
region = "eu-west-1"
account = "012345678901"
sessions = 8
metadata_refresh_ms = 250

[token]
module = "lib/libsofthsm2.so"
slot = 3
pin_file = "secrets/pin"
softhsm2_conf = "/var/lib/p11kms/softhsm2.conf"

[server]
listen = "0.0.0.0:8443"
tls_cert = "tls/cert.pem"
tls_key = "/etc/tls/key.pem"
max_body_bytes = 65536
max_connections = 256
max_connections_per_source = 32

[[server.credentials]]
access_key_id = "AKIAIOSFODNN7EXAMPLE"
secret_env = "P11KMS_DEV_SECRET"
principal = "arn:aws:iam::012345678901:user/dev"
allow_actions = ["kms:Encrypt", "kms:Decrypt"]
allow_keys = ["alias/app", "1234abcd-12ab-34cd-56ef-1234567890ab"]

[[server.credentials]]
access_key_id = "AKIAI44QH8DHBEXAMPLE"
secret_file = "secrets/ops"
principal = "arn:aws:iam::012345678901:role/ops"
"#;
        let c = parse(text).unwrap();
        assert_eq!(c.region, "eu-west-1");
        assert_eq!(c.account, "012345678901");
        assert_eq!(c.sessions, 8);
        assert_eq!(c.metadata_refresh, Duration::from_millis(250));
        assert_eq!(c.source, ConfigSource::File(cfg_path()));
        // Relative paths are resolved against the config file's directory.
        assert_eq!(c.token.module, Path::new("/etc/p11kms/lib/libsofthsm2.so"));
        assert_eq!(c.token.selector, TokenSelector::Slot(3));
        assert!(
            matches!(&c.token.pin, SecretSource::File(p) if p == Path::new("/etc/p11kms/secrets/pin"))
        );
        assert_eq!(
            c.token.softhsm2_conf.as_deref(),
            Some(Path::new("/var/lib/p11kms/softhsm2.conf"))
        );
        assert_eq!(c.server.listen, "0.0.0.0:8443");
        assert_eq!(
            c.server.tls_cert.as_deref(),
            Some(Path::new("/etc/p11kms/tls/cert.pem"))
        );
        assert_eq!(
            c.server.tls_key.as_deref(),
            Some(Path::new("/etc/tls/key.pem"))
        );
        assert_eq!(c.server.max_body_bytes, 65536);
        assert_eq!(c.server.max_connections, 256);
        assert_eq!(c.server.max_connections_per_source, Some(32));
        assert_eq!(c.server.credentials.len(), 2);
        let dev = &c.server.credentials[0];
        assert_eq!(dev.access_key_id, "AKIAIOSFODNN7EXAMPLE");
        assert!(matches!(&dev.secret, SecretSource::Env(n) if n == "P11KMS_DEV_SECRET"));
        assert_eq!(dev.principal, "arn:aws:iam::012345678901:user/dev");
        assert_eq!(
            dev.allow_actions.as_deref(),
            Some(&["kms:Encrypt".to_owned(), "kms:Decrypt".to_owned()][..])
        );
        assert_eq!(dev.allow_keys.as_ref().map(Vec::len), Some(2));
        let ops = &c.server.credentials[1];
        assert!(
            matches!(&ops.secret, SecretSource::File(p) if p == Path::new("/etc/p11kms/secrets/ops"))
        );
        assert!(ops.allow_actions.is_none() && ops.allow_keys.is_none());
    }

    #[test]
    fn defaults() {
        let c = parse(&minimal("pin_env = \"P11KMS_PIN\"")).unwrap();
        assert_eq!(c.region, DEFAULT_REGION);
        assert_eq!(c.account, DEFAULT_ACCOUNT);
        assert_eq!(c.sessions, 4);
        assert_eq!(c.metadata_refresh, Duration::from_secs(1));
        assert_eq!(c.token.selector, TokenSelector::Label("p11kms".into()));
        assert!(matches!(&c.token.pin, SecretSource::Env(n) if n == "P11KMS_PIN"));
        assert!(c.token.softhsm2_conf.is_none());
        assert_eq!(c.server.listen, DEFAULT_LISTEN);
        assert_eq!(c.server.max_body_bytes, 256 * 1024);
        assert_eq!(c.server.max_connections, 1024);
        assert_eq!(c.server.max_connections_per_source, None);
        assert!(c.server.credentials.is_empty());
        assert!(c.server.tls_cert.is_none() && c.server.tls_key.is_none());
    }

    #[test]
    fn relative_config_path_gives_absolute_paths() {
        let c = Config::from_toml_str(
            &minimal("pin_file = \"pin\""),
            Path::new("conf/p11kms.toml"),
            None,
        )
        .unwrap();
        let ConfigSource::File(src) = &c.source else {
            panic!("not a file source");
        };
        assert!(src.is_absolute());
        let SecretSource::File(pin) = &c.token.pin else {
            panic!("not a file pin");
        };
        assert!(pin.is_absolute());
        assert!(pin.ends_with("conf/pin"));
    }

    #[test]
    fn token_selector_exclusive() {
        let both =
            format!("[token]\nmodule = \"{MODULE}\"\nlabel = \"a\"\nslot = 1\npin_env = \"X\"\n");
        let msg = config_err(parse(&both));
        assert!(
            msg.contains("/etc/p11kms/p11kms.toml") && msg.contains("token.label"),
            "{msg}"
        );
        let neither = format!("[token]\nmodule = \"{MODULE}\"\npin_env = \"X\"\n");
        assert!(config_err(parse(&neither)).contains("token.label/token.slot"));
        let negative = format!("[token]\nmodule = \"{MODULE}\"\nslot = -1\npin_env = \"X\"\n");
        assert!(config_err(parse(&negative)).contains("token.slot"));
        let long = minimal("pin_env = \"X\"").replace("p11kms\"", &format!("{}\"", "x".repeat(33)));
        assert!(config_err(parse(&long)).contains("token.label"));
    }

    #[test]
    fn pin_sources_exclusive() {
        for extra in [
            "pin_env = \"X\"\npin_file = \"/p\"",
            "pin_env = \"X\"\npin = \"1234\"",
            "pin_file = \"/p\"\npin = \"1234\"",
            "",
        ] {
            let msg = config_err(parse(&minimal(extra)));
            assert!(msg.contains("token.pin_env/pin_file/pin"), "{extra}: {msg}");
            assert!(!msg.contains("1234"), "{msg}");
        }
        assert!(config_err(parse(&minimal("pin_env = \"1BAD\""))).contains("token.pin_env"));
    }

    #[test]
    fn tls_both_or_neither() {
        for server in ["tls_cert = \"c.pem\"", "tls_key = \"k.pem\""] {
            let text = format!("{}[server]\n{server}\n", minimal("pin_env = \"X\""));
            assert!(config_err(parse(&text)).contains("server.tls_cert/server.tls_key"));
        }
    }

    fn with_credential(body: &str) -> String {
        format!(
            "{}[[server.credentials]]\naccess_key_id = \"AKIAIOSFODNN7EXAMPLE\"\n\
             principal = \"arn:aws:iam::111122223333:user/dev\"\n{body}\n",
            minimal("pin_env = \"X\"")
        )
    }

    #[test]
    fn credential_secret_exclusive_and_never_inline() {
        let both = with_credential("secret_env = \"S\"\nsecret_file = \"/s\"");
        assert!(config_err(parse(&both)).contains("server.credentials[0].secret_env/secret_file"));
        let neither = with_credential("");
        assert!(config_err(parse(&neither)).contains("secret_env/secret_file"));
        let inline = with_credential("secret = \"wJalrXUtnFEMI\"");
        let msg = config_err(parse(&inline));
        assert!(
            msg.contains("server.credentials[0].secret") && msg.contains("never"),
            "{msg}"
        );
        assert!(!msg.contains("wJalrXUtnFEMI"));
    }

    #[test]
    fn credential_fields_validated() {
        let dup = format!(
            "{}\n[[server.credentials]]\naccess_key_id = \"AKIAIOSFODNN7EXAMPLE\"\n\
             secret_env = \"T\"\nprincipal = \"arn:aws:iam::111122223333:user/b\"\n",
            with_credential("secret_env = \"S\"")
        );
        assert!(config_err(parse(&dup)).contains("server.credentials[1].access_key_id"));
        let bad_arn = with_credential("secret_env = \"S\"")
            .replace("arn:aws:iam::111122223333:user/dev", "dev");
        assert!(config_err(parse(&bad_arn)).contains("server.credentials[0].principal"));
        let bad_action = with_credential("secret_env = \"S\"\nallow_actions = [\"Encrypt\"]");
        assert!(config_err(parse(&bad_action)).contains("allow_actions"));
        let empty_keys = with_credential("secret_env = \"S\"\nallow_keys = []");
        assert!(config_err(parse(&empty_keys)).contains("allow_keys"));
        let short_id = with_credential("secret_env = \"S\"").replace("AKIAIOSFODNN7EXAMPLE", "AK");
        assert!(config_err(parse(&short_id)).contains("access_key_id"));
        let ok = with_credential("secret_env = \"S\"\nallow_actions = [\"kms:*\", \"*\"]");
        assert!(parse(&ok).is_ok());
    }

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

    #[test]
    fn inline_pin_needs_owner_only_file() {
        let text = minimal("pin = \"123456\"");
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let msg = config_err(Config::from_toml_str(&text, &cfg_path(), Some(mode)));
            assert!(
                msg.contains("token.pin") && msg.contains("chmod 600"),
                "{msg}"
            );
            assert!(!msg.contains("123456"), "{msg}");
        }
        for mode in [0o600, 0o400] {
            let c = Config::from_toml_str(&text, &cfg_path(), Some(mode)).unwrap();
            let SecretSource::Inline(pin) = &c.token.pin else {
                panic!("not inline");
            };
            assert_eq!(pin.expose(), "123456");
            assert_eq!(c.token.pin.read().unwrap().expose(), "123456");
            assert!(!format!("{c:?}").contains("123456"));
        }
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn from_file_checks_the_real_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        write_mode(&path, &minimal("pin = \"123456\""), 0o644);
        assert!(config_err(Config::from_file(&path)).contains("token.pin"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::from_file(&path).unwrap();
        assert_eq!(c.source, ConfigSource::File(path.clone()));
        let missing = config_err(Config::from_file(&dir.path().join("nope.toml")));
        assert!(missing.contains("nope.toml"), "{missing}");
    }

    #[test]
    fn region_and_account() {
        for region in ["us-gov-west-1", "ap-southeast-2", "eu-central-1"] {
            let text = format!("region = \"{region}\"\n{}", minimal("pin_env = \"X\""));
            assert_eq!(parse(&text).unwrap().region, region);
        }
        for region in [
            "us-east",
            "US-EAST-2",
            "useast-2",
            "u-east-2",
            "us--2",
            "us-east-2a",
            "",
        ] {
            let text = format!("region = \"{region}\"\n{}", minimal("pin_env = \"X\""));
            assert!(config_err(parse(&text)).contains("region"), "{region}");
        }
        for account in [
            "\"12345678901\"",
            "\"1234567890123\"",
            "\"11112222333a\"",
            "111122223333",
        ] {
            let text = format!("account = {account}\n{}", minimal("pin_env = \"X\""));
            assert!(config_err(parse(&text)).contains("account"), "{account}");
        }
    }

    #[test]
    fn numeric_ranges() {
        for (field, bad) in [
            ("sessions", "0"),
            ("sessions", "257"),
            ("sessions", "-1"),
            ("metadata_refresh_ms", "-5"),
            ("metadata_refresh_ms", "3600001"),
        ] {
            let text = format!("{field} = {bad}\n{}", minimal("pin_env = \"X\""));
            assert!(config_err(parse(&text)).contains(field), "{field} = {bad}");
        }
        let text = format!(
            "sessions = 256\nmetadata_refresh_ms = 0\n{}",
            minimal("pin_env = \"X\"")
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.sessions, 256);
        assert_eq!(c.metadata_refresh, Duration::ZERO);
        let body = format!(
            "{}[server]\nmax_body_bytes = 10\n",
            minimal("pin_env = \"X\"")
        );
        assert!(config_err(parse(&body)).contains("server.max_body_bytes"));
        for (field, bad) in [
            ("max_connections", "3"),
            ("max_connections", "100000"),
            ("max_connections_per_source", "-1"),
            ("max_connections_per_source", "2000"),
        ] {
            let body = format!("{}[server]\n{field} = {bad}\n", minimal("pin_env = \"X\""));
            assert!(config_err(parse(&body)).contains(field), "{field} = {bad}");
        }
        let listen = format!(
            "{}[server]\nlisten = \"4599\"\n",
            minimal("pin_env = \"X\"")
        );
        assert!(config_err(parse(&listen)).contains("server.listen"));
    }

    #[test]
    fn listen_addresses() {
        for ok in [
            "127.0.0.1:4599",
            "[::1]:4599",
            "localhost:0",
            "kms.internal:443",
        ] {
            assert!(valid_listen(ok), "{ok}");
        }
        for bad in [
            "4599",
            ":4599",
            "localhost",
            "localhost:99999",
            "a b:1",
            "::1:4599",
        ] {
            assert!(!valid_listen(bad), "{bad}");
        }
    }

    #[test]
    fn listen_env_override() {
        let mut c = parse(&minimal("pin_env = \"X\"")).unwrap();
        c.apply_env_overrides(|_| None).unwrap();
        assert_eq!(c.server.listen, DEFAULT_LISTEN);
        c.apply_env_overrides(|n| (n == "P11KMS_LISTEN").then(|| "0.0.0.0:9000".into()))
            .unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:9000");
        let err = c
            .apply_env_overrides(|n| (n == "P11KMS_LISTEN").then(|| "nonsense".into()))
            .unwrap_err();
        assert!(err.message().contains("P11KMS_LISTEN"));
    }

    #[test]
    fn module_environment() {
        let c = parse(&minimal(
            "pin_env = \"X\"\nenv = { KRYOPTIC_CONF = \"/etc/p11kms/kryoptic.toml\", A_B = \"1\" }",
        ))
        .unwrap();
        assert_eq!(
            c.token.env,
            vec![
                ("A_B".to_owned(), "1".to_owned()),
                (
                    "KRYOPTIC_CONF".to_owned(),
                    "/etc/p11kms/kryoptic.toml".to_owned()
                )
            ]
        );
        assert!(parse(&minimal("pin_env = \"X\""))
            .unwrap()
            .token
            .env
            .is_empty());
        for (extra, want) in [
            ("env = { \"1X\" = \"v\" }", "token.env.1X"),
            ("env = { P11KMS_PIN = \"v\" }", "p11kms's own"),
            (
                "softhsm2_conf = \"/a\"\nenv = { SOFTHSM2_CONF = \"/b\" }",
                "not both",
            ),
            ("env = { X = 1 }", "token.env"),
        ] {
            let err = config_err(parse(&minimal(&format!("pin_env = \"X\"\n{extra}"))));
            assert!(err.contains(want), "{extra}: {err}");
        }
    }

    #[test]
    fn sealing_settings() {
        let c = parse(&minimal("pin_env = \"X\"")).unwrap();
        assert_eq!(c.sealing, SealingPolicy::Auto);
        assert!(!c.require_in_token_sealing);
        for (v, want) in [
            ("auto", SealingPolicy::Auto),
            ("host", SealingPolicy::Host),
            ("token", SealingPolicy::Token),
        ] {
            let c = parse(&format!(
                "sealing = \"{v}\"\n{}",
                minimal("pin_env = \"X\"")
            ))
            .unwrap();
            assert_eq!(c.sealing, want);
            assert_eq!(c.sealing.as_str(), v);
        }
        let err = config_err(parse(&format!(
            "sealing = \"hsm\"\n{}",
            minimal("pin_env = \"X\"")
        )));
        assert!(err.contains("sealing") && err.contains("hsm"), "{err}");
        let c = parse(&format!(
            "require_in_token_sealing = true\n{}",
            minimal("pin_env = \"X\"")
        ))
        .unwrap();
        assert!(c.require_in_token_sealing);
        let err = config_err(parse(&format!(
            "require_in_token_sealing = true\nsealing = \"host\"\n{}",
            minimal("pin_env = \"X\"")
        )));
        assert!(err.contains("contradicts"), "{err}");
    }

    #[test]
    fn require_in_token_sealing_env_override() {
        let env = |v: &'static str| {
            move |n: &str| (n == "P11KMS_REQUIRE_IN_TOKEN_SEALING").then(|| v.into())
        };
        let mut c = parse(&minimal("pin_env = \"X\"")).unwrap();
        c.apply_env_overrides(env("true")).unwrap();
        assert!(c.require_in_token_sealing);
        c.apply_env_overrides(env("")).unwrap();
        assert!(c.require_in_token_sealing, "empty means unset");
        c.apply_env_overrides(env("false")).unwrap();
        assert!(!c.require_in_token_sealing);
        let err = c.apply_env_overrides(env("maybe")).unwrap_err();
        assert!(err.message().contains("P11KMS_REQUIRE_IN_TOKEN_SEALING"));
        c.sealing = SealingPolicy::Host;
        let err = c.apply_env_overrides(env("1")).unwrap_err();
        assert!(err.message().contains("contradicts"));
    }

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
        assert!(matches!(err, KmsError::Config(_)));
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

    #[test]
    fn ensure_files_is_idempotent() {
        let parent = tempfile::tempdir().unwrap();
        let state = parent.path().join("var");
        let token = EmbeddedToken {
            state_dir: state.clone(),
        };
        assert!(token.ensure_files().unwrap());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert!(token.token_dir().is_dir());
        let pin = fs::read_to_string(token.pin_path()).unwrap();
        let so_pin = fs::read_to_string(token.so_pin_path()).unwrap();
        for p in [&pin, &so_pin] {
            let p = p.trim_end();
            assert_eq!(p.len(), 32);
            assert!(p
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        assert_ne!(pin, so_pin);
        assert_eq!(mode(&token.pin_path()), 0o600);
        assert_eq!(mode(&token.so_pin_path()), 0o600);
        let conf = fs::read_to_string(token.conf_path()).unwrap();
        let token_dir = token.token_dir().canonicalize().unwrap();
        assert!(conf.contains(&format!("directories.tokendir = {}\n", token_dir.display())));
        for line in [
            "objectstore.backend = file",
            "log.level = ERROR",
            "slots.removable = false",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line}");
        }
        // PINs read back through the normal path (mode check, newline trimmed).
        let read = SecretSource::File(token.pin_path()).read().unwrap();
        assert_eq!(read.expose(), pin.trim_end());

        assert!(!token.ensure_files().unwrap());
        assert_eq!(fs::read_to_string(token.pin_path()).unwrap(), pin);
        assert_eq!(fs::read_to_string(token.conf_path()).unwrap(), conf);
        let leftovers: Vec<_> = fs::read_dir(&state)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());

        // A conf pointing elsewhere (moved state dir) is regenerated; PINs are kept.
        fs::write(token.conf_path(), "directories.tokendir = /old\n").unwrap();
        assert!(token.ensure_files().unwrap());
        assert_eq!(fs::read_to_string(token.conf_path()).unwrap(), conf);
        assert_eq!(fs::read_to_string(token.pin_path()).unwrap(), pin);
    }

    #[test]
    fn embedded_config() {
        let parent = tempfile::tempdir().unwrap();
        let state = parent.path().join("var");
        let module = PathBuf::from(MODULE);
        let c = Config::embedded_with_module(&state, module.clone()).unwrap();
        let abs_state = parent.path().canonicalize().unwrap().join("var");
        assert_eq!(c.source, ConfigSource::Embedded(abs_state.clone()));
        assert_eq!(c.token.module, module);
        assert_eq!(c.token.selector, TokenSelector::Label("p11kms".into()));
        assert!(matches!(&c.token.pin, SecretSource::File(p) if *p == abs_state.join("user.pin")));
        assert_eq!(c.token.softhsm2_conf, Some(abs_state.join("softhsm2.conf")));
        assert!(c.server.credentials.is_empty());
        assert_eq!(c.region, DEFAULT_REGION);
        assert_eq!(c.server.listen, DEFAULT_LISTEN);

        fs::create_dir(&state).unwrap();
        fs::write(state.join("dev-access-key-id"), "AKIAP11KMSDEV0000001\n").unwrap();
        let half = config_err(Config::embedded_with_module(&state, module.clone()));
        assert!(half.contains("dev-secret-key"), "{half}");
        write_mode(&state.join("dev-secret-key"), "devsecret\n", 0o600);
        let c = Config::embedded_with_module(&state, module).unwrap();
        assert_eq!(c.server.credentials.len(), 1);
        let dev = &c.server.credentials[0];
        assert_eq!(dev.access_key_id, "AKIAP11KMSDEV0000001");
        assert!(
            matches!(&dev.secret, SecretSource::File(p) if *p == abs_state.join("dev-secret-key"))
        );
        assert_eq!(dev.secret.read().unwrap().expose(), "devsecret");
    }

    #[test]
    fn module_discovery() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libsofthsm2.so");
        fs::write(&lib, b"").unwrap();
        let missing = dir.path().join("missing.so");
        let (lib_s, missing_s) = (lib.to_str().unwrap(), missing.to_str().unwrap());
        assert_eq!(find_module_in(None, &[missing_s, lib_s]).unwrap(), lib);
        let msg = find_module_in(None, &[missing_s]).unwrap_err().to_string();
        assert!(msg.contains("scripts/run.sh") && msg.contains("apt-get install softhsm2"));
        assert_eq!(find_module_in(Some(lib.clone().into()), &[]).unwrap(), lib);
        let msg = find_module_in(Some(missing.clone().into()), &[lib_s]).unwrap_err();
        assert!(msg.to_string().contains("P11KMS_MODULE"));
    }

    #[test]
    fn shipped_profiles_parse() {
        for (name, text) in [
            (
                "thales-luna",
                include_str!("../config/profiles/thales-luna.toml"),
            ),
            (
                "entrust-nshield",
                include_str!("../config/profiles/entrust-nshield.toml"),
            ),
            ("utimaco", include_str!("../config/profiles/utimaco.toml")),
            (
                "aws-cloudhsm",
                include_str!("../config/profiles/aws-cloudhsm.toml"),
            ),
            ("yubihsm2", include_str!("../config/profiles/yubihsm2.toml")),
            ("kryoptic", include_str!("../config/profiles/kryoptic.toml")),
        ] {
            let path = PathBuf::from(format!("/repo/config/profiles/{name}.toml"));
            let c = Config::from_toml_str(text, &path, Some(0o644))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(c.token.module.is_absolute(), "{name}");
            assert!(matches!(&c.token.pin, SecretSource::Env(n) if n == "P11KMS_PIN"));
            assert!(text.contains("UNTESTED") || name == "kryoptic", "{name}");
        }
    }

    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../config/p11kms.toml");
        // Pin the module so the test does not depend on where SoftHSM is installed.
        let commented = "# module = \"/usr/lib/softhsm/libsofthsm2.so\"";
        assert!(text.contains(commented));
        let text = text.replace(commented, &format!("module = \"{MODULE}\""));
        let path = Path::new("/repo/config/p11kms.toml");
        let c = Config::from_toml_str(&text, path, Some(0o644)).unwrap();
        assert!(matches!(&c.token.pin, SecretSource::Env(n) if n == "P11KMS_PIN"));
        assert_eq!(
            c.token.softhsm2_conf.as_deref(),
            Some(Path::new("/repo/config/../var/softhsm2.conf"))
        );
        assert_eq!(c.server.credentials.len(), 1);
        assert_eq!(c.server.listen, DEFAULT_LISTEN);
    }
}
