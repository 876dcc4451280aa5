//! The embedded default: a SoftHSMv2 token in p11kms's state folder ([`state_dir`]), its
//! files (SoftHSM config, random PINs, the dev credential), the [`Config`] that points at it,
//! and where the SoftHSMv2 module is found.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use zeroize::Zeroizing;

use super::file::{publish_new_file, write_conf};
use super::{
    absolutize, non_empty_env, validate, Config, ConfigSource, Credential, RegionSet,
    SealingPolicy, SecretSource, ServerConfig, TokenConfig, TokenSelector, DEFAULT_ACCOUNT,
    DEFAULT_METADATA_REFRESH_MS, DEFAULT_REGION, DEFAULT_SESSIONS,
};
use crate::error::{KmsError, Result};

const MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

impl Config {
    /// [`Config::embedded`] with the module given (tests pin it).
    pub(super) fn embedded_with_module(state_dir: &Path, module: PathBuf) -> Result<Config> {
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
            regions: RegionSet::Only(vec![DEFAULT_REGION.to_owned()]),
            account: DEFAULT_ACCOUNT.to_owned(),
            sessions: DEFAULT_SESSIONS,
            metadata_refresh: Duration::from_millis(DEFAULT_METADATA_REFRESH_MS),
            sealing: SealingPolicy::Auto,
            require_in_token_sealing: false,
            server: ServerConfig::with_defaults(credentials),
            audit: super::AuditConfig::in_dir(state.join("audit")),
            source: ConfigSource::Embedded(state),
        })
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
            return Err(KmsError::config(format!(
                "{} is missing while its partner exists; re-run `p11kms init` or delete both \
                 dev-access-key-id and dev-secret-key",
                missing.display()
            )));
        }
    }
    let id = fs::read_to_string(&id_path)
        .map_err(|e| KmsError::config(format!("cannot read {}: {e}", id_path.display())))?;
    let id = id.trim();
    if !validate::valid_access_key_id(id) {
        return Err(KmsError::config(format!(
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
        identity_policy: None,
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
        changed |= write_conf(&self.conf_path(), conf.as_bytes())?;

        for pin_path in [self.pin_path(), self.so_pin_path()] {
            if pin_path.exists() {
                continue;
            }
            let mut pin = random_hex_pin()?;
            pin.push('\n');
            changed |= publish_new_file(&pin_path, pin.as_bytes(), 0o600)?;
        }
        // The dev principal's credential for `p11kms serve` (both files or neither).
        let id_path = self.state_dir.join("dev-access-key-id");
        let secret_path = self.state_dir.join("dev-secret-key");
        if !secret_path.exists() {
            let mut secret = random_token(40, SECRET_ALPHABET)?;
            secret.push('\n');
            changed |= publish_new_file(&secret_path, secret.as_bytes(), 0o600)?;
        }
        if !id_path.exists() {
            let mut id = Zeroizing::new(format!("AKIA{}", random_token(16, ID_ALPHABET)?.as_str()));
            id.push('\n');
            changed |= publish_new_file(&id_path, id.as_bytes(), 0o600)?;
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
        .map_err(|e| KmsError::config(format!("OS random number generator failed: {e}")))?;
    Ok(Zeroizing::new(
        bytes
            .iter()
            .map(|b| char::from(alphabet[usize::from(*b) % alphabet.len()]))
            .collect(),
    ))
}

fn softhsm_conf_text(token_dir: &Path) -> Result<String> {
    let dir = token_dir.to_str().ok_or_else(|| {
        KmsError::config(format!(
            "token directory {} is not valid UTF-8",
            token_dir.display()
        ))
    })?;
    // SoftHSM's config format is line based.
    if dir.contains(['\n', '\r']) {
        return Err(KmsError::config(format!(
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
        .map_err(|e| KmsError::config(format!("OS random number generator failed: {e}")))?;
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
            return Err(KmsError::config(format!(
                "{} exists but is not a directory",
                dir.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(KmsError::config(format!(
                "cannot stat {}: {e}",
                dir.display()
            )))
        }
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| KmsError::config(format!("cannot create {}: {e}", dir.display())))?;
    Ok(true)
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
            return Err(KmsError::config(format!(
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
            KmsError::config(format!(
                "SoftHSMv2 not found (looked in {}); run scripts/run.sh, or `apt-get install \
                 softhsm2`, or set P11KMS_MODULE to the PKCS#11 module path",
                candidates.join(", ")
            ))
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{config_err, write_mode, MODULE};
    use crate::config::DEFAULT_LISTEN;
    use std::os::unix::fs::PermissionsExt;

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
}
