//! Configuration: the TOML file, PIN/secret sources and the embedded default token.
//!
//! Resolution order is `--config` > `P11KMS_CONFIG` > the embedded SoftHSMv2 token under
//! [`state_dir`]. Files are parsed into `deny_unknown_fields` raw structs and then validated into
//! the public types; every failure is a [`KmsError::Config`] naming the file and the field.
//! Secret values never appear in messages or `Debug` output.
//!
//! Rooms: this file holds the public types and where a configuration comes from; `secret`
//! reads PINs and secrets, `file` is the TOML format and the safe file writes, `validate`
//! turns the raw file into the public types, `embedded` is the default token's state folder.

mod embedded;
pub(crate) mod file;
mod secret;
mod validate;

pub use embedded::{find_softhsm_module, state_dir, EmbeddedToken};
pub use secret::{Secret, SecretSource};

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use zeroize::Zeroizing;

use crate::error::{KmsError, Result};

/// Region reported in ARNs when none is configured.
pub const DEFAULT_REGION: &str = "us-east-2";
/// Account reported in ARNs when none is configured.
pub const DEFAULT_ACCOUNT: &str = "111122223333";
/// Default HTTP listen address (loopback only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4599";

const DEFAULT_SESSIONS: usize = 4;
const DEFAULT_METADATA_REFRESH_MS: u64 = 1000;
/// The largest valid KMS request p11kms serves is a CreateKey with a 32 KB policy, an 8 KB
/// description and 50 tags, or a data-key call with ten 8 KB grant tokens and an 8 KB
/// encryption context: about 140 KB even with every character JSON-escaped. 256 KiB leaves
/// room; anything larger is not a KMS request.
const DEFAULT_MAX_BODY_BYTES: usize = 256 << 10;
/// Open connections, and open connections from one address (0: no per-source limit).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Which token of the PKCS#11 module to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token whose label (trailing blanks ignored) equals this.
    Label(String),
    /// The token in this slot id.
    Slot(u64),
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
    /// The name as written in the configuration file.
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
    /// The principal's identity (IAM) policy document, JSON text (inline, or read from
    /// `identity_policy_file` at load); checked by the server when it starts.
    pub identity_policy: Option<String>,
}

/// The audit trail (see docs/audit.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Write it (`audit`, default true).
    pub enabled: bool,
    /// Its folder (`audit_dir`; default `<state>/audit`, or `audit/` beside a config file).
    pub dir: PathBuf,
    /// `audit_fsync = "record"` (true) or `"batch"` (false, the default: written before the
    /// answer, synced at checkpoints).
    pub fsync_each_record: bool,
    /// `audit_failure = "closed"` (true, the default: a state-changing request whose record
    /// is not written fails, and waits for it) or `"open"`.
    pub fail_closed: bool,
    /// `audit_failure_read_only`, the same for read-only requests (Decrypt, GenerateDataKey,
    /// Describe…): `"open"` (false, the default: answered without waiting for the record, as
    /// AWS KMS answers before CloudTrail has the event) or `"closed"`.
    pub read_only_fail_closed: bool,
    /// A file is closed and the next opened past this size (`audit_max_file_bytes`).
    pub max_file_bytes: u64,
    /// A checkpoint every this many records (`audit_checkpoint_records`)...
    pub checkpoint_records: u64,
    /// ...and at most this long after a record (`audit_checkpoint_seconds`).
    pub checkpoint_every: Duration,
}

impl AuditConfig {
    /// The defaults, writing into `dir`.
    pub fn in_dir(dir: PathBuf) -> AuditConfig {
        AuditConfig {
            enabled: true,
            dir,
            fsync_each_record: false,
            fail_closed: true,
            read_only_fail_closed: false,
            max_file_bytes: 64 << 20,
            checkpoint_records: 1000,
            checkpoint_every: Duration::from_secs(60),
        }
    }
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
    /// Serve `GET /metrics` (Prometheus text format, no authentication).
    pub metrics: bool,
    /// `host:port` serving `/metrics` alone (plain HTTP); `None`: on the main listener.
    pub metrics_listen: Option<String>,
    /// How `serve` writes its log lines (`--log-format` overrides it).
    pub log_format: LogFormat,
}

/// The shape of log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `text` or `json`.
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// Where a [`Config`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A TOML file (absolute path).
    File(PathBuf),
    /// The embedded default token in this (absolute) state directory.
    Embedded(PathBuf),
}

/// The regions a server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionSet {
    /// These regions (the first is the default).
    Only(Vec<String>),
    /// Any region a client signs for (`regions = "*"`).
    Any,
}

/// The whole validated configuration. All paths in it are absolute.
#[derive(Debug, Clone)]
pub struct Config {
    /// The PKCS#11 token holding the master keys.
    pub token: TokenConfig,
    /// Region used in ARNs: the default one (the CLI's, and keys of records without one).
    pub region: String,
    /// The regions the server serves (SigV4 scopes it accepts; keys and aliases are per
    /// region): `regions` in the file, else just `region`.
    pub regions: RegionSet,
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
    /// The audit trail (`audit*` keys).
    pub audit: AuditConfig,
    /// Where this configuration came from.
    pub source: ConfigSource,
}

impl ServerConfig {
    /// What an absent `[server]` section means, with these accepted access keys.
    fn with_defaults(credentials: Vec<Credential>) -> ServerConfig {
        ServerConfig {
            listen: DEFAULT_LISTEN.to_owned(),
            tls_cert: None,
            tls_key: None,
            credentials,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_source: None,
            metrics: true,
            metrics_listen: None,
            log_format: LogFormat::Text,
        }
    }
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
            .map_err(|e| KmsError::config(format!("cannot open config file {shown}: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| KmsError::config(format!("cannot stat config file {shown}: {e}")))?;
        // Zeroizing: the text may contain an inline PIN.
        let mut text = Zeroizing::new(String::new());
        file.read_to_string(&mut text)
            .map_err(|e| KmsError::config(format!("cannot read config file {shown}: {e}")))?;
        let mut config = Config::from_toml_str(&text, &path, Some(secret::file_mode(&meta)))?;
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
        let raw = file::parse(text, &path)?;
        validate::Validator { path: &path }.config(raw, file_mode)
    }

    /// The embedded default token under `state_dir` (files are not created here; see
    /// [`EmbeddedToken::ensure_files`]).
    pub fn embedded(state_dir: &Path) -> Result<Config> {
        Config::embedded_with_module(state_dir, find_softhsm_module()?)
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
                .map_err(|_| KmsError::config("P11KMS_LISTEN is not valid UTF-8"))?;
            if !validate::valid_listen(&listen) {
                return Err(KmsError::config(format!(
                    "P11KMS_LISTEN: `{listen}` is not a host:port address"
                )));
            }
            self.server.listen = listen;
        }
        if let Some(v) = get("P11KMS_REQUIRE_IN_TOKEN_SEALING").filter(|v| !v.is_empty()) {
            self.require_in_token_sealing = env_flag(&v).ok_or_else(|| {
                KmsError::config("P11KMS_REQUIRE_IN_TOKEN_SEALING must be true or false")
            })?;
        }
        // `p11kms bench` compares the server with and without its trail and metrics.
        if let Some(v) = get("P11KMS_AUDIT").filter(|v| !v.is_empty()) {
            self.audit.enabled = match env_flag(&v) {
                Some(on) => on,
                // On, synced at checkpoints only (`audit_fsync = "batch"`).
                None if v == "batch" => {
                    self.audit.fsync_each_record = false;
                    true
                }
                None => return Err(KmsError::config("P11KMS_AUDIT must be on, off or batch")),
            };
        }
        if let Some(v) = get("P11KMS_METRICS").filter(|v| !v.is_empty()) {
            self.server.metrics =
                env_flag(&v).ok_or_else(|| KmsError::config("P11KMS_METRICS must be on or off"))?;
        }
        if self.require_in_token_sealing && self.sealing == SealingPolicy::Host {
            return Err(KmsError::config(
                "require_in_token_sealing contradicts sealing = \"host\"; set sealing to \"auto\" \
                 or \"token\"",
            ));
        }
        Ok(())
    }
}

/// A yes/no environment value: `true`/`1`/`yes`/`on` or `false`/`0`/`no`/`off`.
fn env_flag(v: &std::ffi::OsStr) -> Option<bool> {
    match v.to_str()? {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn non_empty_env(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

fn absolutize(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path)
        .map_err(|e| KmsError::config(format!("cannot make {} absolute: {e}", path.display())))
}

/// What the config rooms' tests share: a pinned module path, a minimal file, error unwrapping.
#[cfg(test)]
mod test_support {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    use super::Config;
    use crate::error::Result;

    pub(super) const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

    pub(super) fn cfg_path() -> PathBuf {
        PathBuf::from("/etc/p11kms/p11kms.toml")
    }

    pub(super) fn parse(text: &str) -> Result<Config> {
        Config::from_toml_str(text, &cfg_path(), None)
    }

    pub(super) fn minimal(extra_token: &str) -> String {
        format!("[token]\nmodule = \"{MODULE}\"\nlabel = \"p11kms\"\n{extra_token}\n")
    }

    pub(super) fn config_err(result: Result<Config>) -> String {
        match result {
            Err(e) if e.kind() == crate::error::ErrorKind::Config => e.message().to_owned(),
            Err(other) => panic!("expected a Config error, got {other:?}"),
            Ok(c) => panic!("expected an error, got {c:?}"),
        }
    }

    pub(super) fn write_mode(path: &Path, content: &str, mode: u32) {
        // Replace rather than overwrite: the old file may be read-only (0400).
        let _ = fs::remove_file(path);
        fs::write(path, content).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{config_err, minimal, parse, write_mode, MODULE};
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
    fn shipped_profiles_parse() {
        for (name, text) in [
            (
                "thales-luna",
                include_str!("../../config/profiles/thales-luna.toml"),
            ),
            (
                "entrust-nshield",
                include_str!("../../config/profiles/entrust-nshield.toml"),
            ),
            (
                "utimaco",
                include_str!("../../config/profiles/utimaco.toml"),
            ),
            (
                "aws-cloudhsm",
                include_str!("../../config/profiles/aws-cloudhsm.toml"),
            ),
            (
                "yubihsm2",
                include_str!("../../config/profiles/yubihsm2.toml"),
            ),
            (
                "kryoptic",
                include_str!("../../config/profiles/kryoptic.toml"),
            ),
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
        let text = include_str!("../../config/p11kms.toml");
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
