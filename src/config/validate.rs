//! Turns the raw file ([`super::file`]) into the public types: ranges, exclusive choices,
//! names and paths, each failure naming the file and the field.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::{RawConfig, RawCredential, RawServer, RawToken};
use super::{
    find_softhsm_module, Config, ConfigSource, Credential, RegionSet, SealingPolicy, Secret,
    SecretSource, ServerConfig, TokenConfig, TokenSelector, DEFAULT_ACCOUNT, DEFAULT_LISTEN,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS, DEFAULT_METADATA_REFRESH_MS, DEFAULT_REGION,
    DEFAULT_SESSIONS,
};
use crate::error::{KmsError, Result};

const MAX_SESSIONS: usize = 256;
const MAX_METADATA_REFRESH_MS: u64 = 3_600_000;
const MIN_MAX_CONNECTIONS: usize = 16;
const MAX_MAX_CONNECTIONS: usize = 65_536;
const MIN_MAX_BODY_BYTES: usize = 1024;
const MAX_MAX_BODY_BYTES: usize = 64 << 20;
/// PKCS#11 token labels are a 32-byte blank-padded field.
const MAX_TOKEN_LABEL_BYTES: usize = 32;

pub(super) struct Validator<'a> {
    /// The config file, named in every message and the base of relative paths.
    pub(super) path: &'a Path,
}

impl Validator<'_> {
    fn err(&self, field: &str, msg: impl fmt::Display) -> KmsError {
        KmsError::config(format!("{}: {field}: {msg}", self.path.display()))
    }

    pub(super) fn config(&self, raw: RawConfig, file_mode: Option<u32>) -> Result<Config> {
        let audit = self.audit(&raw)?;
        let raw_region_given = raw.region.is_some();
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
        let (region, regions) = self.regions(raw.regions, raw_region_given, region)?;
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
            regions,
            account,
            sessions,
            metadata_refresh: Duration::from_millis(refresh_ms),
            sealing,
            require_in_token_sealing,
            server,
            audit,
            source: ConfigSource::File(self.path.to_path_buf()),
        })
    }

    fn audit(&self, raw: &super::file::RawConfig) -> Result<super::AuditConfig> {
        let dir = match &raw.audit_dir {
            Some(d) => self.path_field("audit_dir", d)?,
            None => self.path_field("audit_dir", "audit")?,
        };
        let mut a = super::AuditConfig::in_dir(dir);
        a.enabled = raw.audit.unwrap_or(true);
        match raw.audit_fsync.as_deref() {
            Some("record") => a.fsync_each_record = true,
            None | Some("batch") => a.fsync_each_record = false,
            Some(o) => {
                return Err(self.err(
                    "audit_fsync",
                    format!("`{o}` is neither \"record\" nor \"batch\""),
                ))
            }
        }
        let closed = |field: &str, v: Option<&str>, default: bool| match v {
            None => Ok(default),
            Some("closed") => Ok(true),
            Some("open") => Ok(false),
            Some(o) => Err(self.err(field, format!("`{o}` is neither \"closed\" nor \"open\""))),
        };
        a.fail_closed = closed("audit_failure", raw.audit_failure.as_deref(), a.fail_closed)?;
        a.read_only_fail_closed = closed(
            "audit_failure_read_only",
            raw.audit_failure_read_only.as_deref(),
            a.read_only_fail_closed,
        )?;
        let bounded = |field: &str, v: Option<i64>, lo: u64, hi: u64, default: u64| match v {
            None => Ok(default),
            Some(n) => u64::try_from(n)
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| self.err(field, format!("must be between {lo} and {hi}"))),
        };
        a.max_file_bytes = bounded(
            "audit_max_file_bytes",
            raw.audit_max_file_bytes,
            4096,
            1 << 40,
            a.max_file_bytes,
        )?;
        a.checkpoint_records = bounded(
            "audit_checkpoint_records",
            raw.audit_checkpoint_records,
            1,
            1_000_000,
            a.checkpoint_records,
        )?;
        a.checkpoint_every = Duration::from_secs(bounded(
            "audit_checkpoint_seconds",
            raw.audit_checkpoint_seconds,
            1,
            86_400,
            a.checkpoint_every.as_secs(),
        )?);
        Ok(a)
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
            return Ok(ServerConfig::with_defaults(Vec::new()));
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
        let metrics = raw.metrics.unwrap_or(true);
        let metrics_listen = match raw.metrics_listen {
            None => None,
            Some(_) if !metrics => {
                return Err(self.err(
                    "server.metrics_listen",
                    "is set but `metrics = false` turns metrics off",
                ))
            }
            Some(l) if !valid_listen(&l) => {
                return Err(self.err(
                    "server.metrics_listen",
                    format!("`{l}` is not a host:port address"),
                ))
            }
            // Port 0 asks for any free port: two such binds never collide.
            Some(l) if l == listen && !l.ends_with(":0") => {
                return Err(self.err(
                    "server.metrics_listen",
                    "is the main listener's address; leave it out to serve /metrics there",
                ))
            }
            Some(l) => Some(l),
        };
        let log_format = match raw.log_format.as_deref() {
            None => super::LogFormat::Text,
            Some(f) => super::LogFormat::parse(f).ok_or_else(|| {
                self.err(
                    "server.log_format",
                    format!("`{f}` is neither \"text\" nor \"json\""),
                )
            })?,
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
            metrics,
            metrics_listen,
            log_format,
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
        let identity_policy = match (raw.identity_policy, raw.identity_policy_file) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    &field("identity_policy/identity_policy_file"),
                    "set at most one, not both",
                ))
            }
            (Some(text), None) => Some(text),
            (None, Some(file)) => {
                let path = self.path_field(&field("identity_policy_file"), &file)?;
                Some(self.read_policy_file(&field("identity_policy_file"), &path)?)
            }
            (None, None) => None,
        };
        if identity_policy
            .as_ref()
            .is_some_and(|p| p.trim().is_empty() || p.len() > MAX_IDENTITY_POLICY)
        {
            return Err(self.err(
                &field("identity_policy"),
                format!("must be a JSON policy document of 1 to {MAX_IDENTITY_POLICY} bytes"),
            ));
        }
        Ok(Credential {
            access_key_id,
            secret,
            principal,
            allow_actions,
            allow_keys,
            identity_policy,
        })
    }

    fn read_policy_file(&self, field: &str, path: &std::path::Path) -> Result<String> {
        let meta = std::fs::metadata(path)
            .map_err(|e| self.err(field, format!("cannot read {}: {e}", path.display())))?;
        if meta.len() > MAX_IDENTITY_POLICY as u64 {
            return Err(self.err(
                field,
                format!("{} is over {MAX_IDENTITY_POLICY} bytes", path.display()),
            ));
        }
        std::fs::read_to_string(path)
            .map_err(|e| self.err(field, format!("cannot read {}: {e}", path.display())))
    }

    /// `regions`: a non-empty list of region names (the first is the default region unless
    /// `region` names another one of them), or `"*"` for any.
    fn regions(
        &self,
        raw: Option<toml::Value>,
        region_given: bool,
        region: String,
    ) -> Result<(String, RegionSet)> {
        let list =
            match raw {
                None => return Ok((region.clone(), RegionSet::Only(vec![region]))),
                Some(toml::Value::String(s)) if s == "*" => return Ok((region, RegionSet::Any)),
                Some(toml::Value::Array(a)) => a,
                Some(_) => return Err(self.err(
                    "regions",
                    "must be a list of region names, e.g. [\"us-east-1\", \"eu-west-1\"], or \"*\"",
                )),
            };
        let mut names = Vec::new();
        for v in list {
            match v {
                toml::Value::String(r) if valid_region(&r) => {
                    if !names.contains(&r) {
                        names.push(r)
                    }
                }
                other => {
                    return Err(self.err(
                        "regions",
                        format!("`{other}` is not a region name like us-east-2"),
                    ))
                }
            }
        }
        let Some(first) = names.first().cloned() else {
            return Err(self.err("regions", "is empty; remove it to serve `region` only"));
        };
        if region_given && !names.contains(&region) {
            return Err(self.err("regions", format!("does not include `region` ({region})")));
        }
        let default = if region_given { region } else { first };
        Ok((default, RegionSet::Only(names)))
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
pub(super) fn valid_access_key_id(id: &str) -> bool {
    (16..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `arn:partition:service:region:account:resource` with partition, service and resource set.
/// The largest identity policy accepted (the size of a key policy; IAM's own limits are
/// smaller).
const MAX_IDENTITY_POLICY: usize = 32 * 1024;

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
pub(super) fn valid_listen(listen: &str) -> bool {
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
    use crate::config::test_support::{cfg_path, config_err, minimal, parse, MODULE};

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
    fn metrics_and_log_format() {
        let base = minimal("pin_env = \"X\"");
        let c = parse(&base).unwrap();
        assert!(c.server.metrics, "on by default");
        assert_eq!(c.server.metrics_listen, None);
        assert_eq!(c.server.log_format, crate::config::LogFormat::Text);
        let c = parse(&format!(
            "{base}[server]\nmetrics_listen = \"127.0.0.1:9464\"\nlog_format = \"json\"\n"
        ))
        .unwrap();
        assert_eq!(c.server.metrics_listen.as_deref(), Some("127.0.0.1:9464"));
        assert_eq!(c.server.log_format, crate::config::LogFormat::Json);
        let c = parse(&format!("{base}[server]\nmetrics = false\n")).unwrap();
        assert!(!c.server.metrics);
        for (body, field) in [
            ("metrics_listen = \"9464\"", "server.metrics_listen"),
            (
                "metrics = false\nmetrics_listen = \"127.0.0.1:9464\"",
                "server.metrics_listen",
            ),
            (
                "listen = \"127.0.0.1:4599\"\nmetrics_listen = \"127.0.0.1:4599\"",
                "server.metrics_listen",
            ),
            ("log_format = \"yaml\"", "server.log_format"),
            ("metrics = \"yes\"", "metrics"),
        ] {
            let text = format!("{base}[server]\n{body}\n");
            assert!(config_err(parse(&text)).contains(field), "{body}");
        }
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
}
