//! Shared fixture: one fresh token per test binary, in its own temporary state folder.
//!
//! Which token is chosen by `P11KMS_TEST_TOKEN`:
//! - `softhsm` (default): SoftHSMv2, set up exactly as `p11kms token init` sets up the embedded
//!   default (its own `SOFTHSM2_CONF`);
//! - `kryoptic`: Kryoptic (module from `P11KMS_KRYOPTIC_MODULE`, built by scripts/kryoptic.sh),
//!   one sqlite token per binary, initialised through p11kms's own `C_InitToken`/`C_InitPIN`,
//!   reached through a configuration file (`token.env.KRYOPTIC_CONF`) that [`p11kms_cmd`]
//!   passes to the binary.
//!
//! The state folder has the same PIN and dev-credential files in both cases.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use p11kms::config::{Config, EmbeddedToken, SecretSource};
use p11kms::kms::types::CreateKeyRequest;
use p11kms::kms::Kms;

/// The token the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    SoftHsm,
    Kryoptic,
}

pub fn token_kind() -> TokenKind {
    match std::env::var("P11KMS_TEST_TOKEN").as_deref() {
        Err(_) | Ok("") | Ok("softhsm") => TokenKind::SoftHsm,
        Ok("kryoptic") => TokenKind::Kryoptic,
        Ok(other) => panic!("P11KMS_TEST_TOKEN={other}: expected softhsm or kryoptic"),
    }
}

pub struct Fixture {
    _dir: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub config: Config,
    /// The configuration file the binary is given (`None`: the embedded default).
    pub config_file: Option<PathBuf>,
    pub kms: Arc<Kms>,
}

/// The per-binary token and a `Kms` over it.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        log_to_stderr();
        let dir = tempfile::Builder::new()
            .prefix("p11kms-test-")
            .tempdir()
            .expect("temp dir");
        let state_dir = dir.path().join("state");
        let (config, config_file) = match token_kind() {
            TokenKind::SoftHsm => {
                p11kms::setup::init_embedded(&state_dir).expect("init embedded token");
                (Config::embedded(&state_dir).expect("embedded config"), None)
            }
            TokenKind::Kryoptic => {
                let file = init_kryoptic(&state_dir);
                (
                    Config::from_file(&file).expect("kryoptic config"),
                    Some(file),
                )
            }
        };
        let kms = Arc::new(p11kms::app::open(&config).expect("open kms"));
        Fixture {
            _dir: dir,
            state_dir,
            config,
            config_file,
            kms,
        }
    })
}

/// With `P11KMS_LOG` set (`tracing` filter syntax, as for the binary), the library's log of
/// this test binary (its in-process servers included) goes to stderr, uncaptured: how to see
/// why a request failed on the server side.
fn log_to_stderr() {
    let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("P11KMS_LOG") else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// The Kryoptic module under test.
pub fn kryoptic_module() -> PathBuf {
    let module = std::env::var_os("P11KMS_KRYOPTIC_MODULE")
        .filter(|m| !m.is_empty())
        .map(PathBuf::from)
        .expect("P11KMS_TEST_TOKEN=kryoptic needs P11KMS_KRYOPTIC_MODULE=<path of libkryoptic_pkcs11.so> (built by scripts/kryoptic.sh)");
    assert!(module.is_file(), "{} does not exist", module.display());
    module
}

/// Creates a Kryoptic token in `state_dir` and the configuration file that reaches it;
/// returns the file's path.
fn init_kryoptic(state_dir: &Path) -> PathBuf {
    // The embedded token's files give the same PINs and dev credential as on SoftHSM.
    let embedded = EmbeddedToken {
        state_dir: state_dir.to_path_buf(),
    };
    embedded.ensure_files().expect("state files");
    let kryoptic_conf = state_dir.join("kryoptic.toml");
    std::fs::write(
        &kryoptic_conf,
        format!(
            "[[slots]]\nslot = 1\ndbtype = \"sqlite\"\ndbargs = \"{}\"\n",
            state_dir.join("kryoptic.sql").display()
        ),
    )
    .expect("write kryoptic.toml");
    let access_key =
        std::fs::read_to_string(state_dir.join("dev-access-key-id")).expect("dev access key id");
    let file = state_dir.join("p11kms.toml");
    std::fs::write(
        &file,
        format!(
            "[token]\n{}\n[[server.credentials]]\naccess_key_id = \"{}\"\nsecret_file = \"{}\"\nprincipal = \"arn:aws:iam::111122223333:user/dev\"\n",
            token_toml_for(state_dir),
            access_key.trim(),
            state_dir.join("dev-secret-key").display()
        ),
    )
    .expect("write p11kms.toml");
    let config = Config::from_file(&file).expect("kryoptic config");
    // Kryoptic reads KRYOPTIC_CONF in C_Initialize, before C_InitToken can run.
    config.token.export_env();
    let so = SecretSource::File(embedded.so_pin_path())
        .read()
        .expect("SO PIN");
    let user = config.token.pin.read().expect("user PIN");
    p11kms::hsm::init_token(
        &config.token.module,
        EmbeddedToken::LABEL,
        so.expose(),
        user.expose(),
    )
    .expect("init kryoptic token");
    file
}

/// The body of a `[token]` table naming the fixture's token (PIN from the state folder's file).
pub fn token_toml() -> String {
    token_toml_for(state_dir())
}

fn token_toml_for(state_dir: &Path) -> String {
    let pin = state_dir.join("user.pin");
    match token_kind() {
        TokenKind::SoftHsm => format!(
            "label = \"p11kms\"\npin_file = \"{}\"\nsofthsm2_conf = \"{}\"\n",
            pin.display(),
            state_dir.join("softhsm2.conf").display()
        ),
        TokenKind::Kryoptic => format!(
            "module = \"{}\"\nlabel = \"p11kms\"\npin_file = \"{}\"\nenv = {{ KRYOPTIC_CONF = \"{}\" }}\n",
            kryoptic_module().display(),
            pin.display(),
            state_dir.join("kryoptic.toml").display()
        ),
    }
}

pub fn kms() -> &'static Kms {
    &fixture().kms
}

pub fn state_dir() -> &'static Path {
    &fixture().state_dir
}

/// The dev credential (access key id, secret), read from the state folder as a user would.
pub fn dev_credentials() -> (String, String) {
    let dir = state_dir();
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .expect("dev credential file")
            .trim()
            .to_owned()
    };
    (read("dev-access-key-id"), read("dev-secret-key"))
}

/// A new enabled key; returns its id.
pub fn new_key() -> String {
    kms()
        .create_key(CreateKeyRequest::default())
        .expect("create key")
        .key_metadata
        .key_id
}

/// The `p11kms` binary over the fixture's token: its state folder as the embedded default,
/// and for tokens other than SoftHSM its configuration file (`P11KMS_CONFIG`, so an explicit
/// `--config` still wins).
pub fn p11kms_cmd() -> std::process::Command {
    let f = fixture();
    let mut cmd = embedded_cmd(&f.state_dir);
    if let Some(file) = &f.config_file {
        cmd.env("P11KMS_CONFIG", file);
    }
    cmd
}

/// The `p11kms` binary with `state_dir` as its embedded default (always SoftHSM), nothing
/// from the caller's environment steering it elsewhere.
pub fn embedded_cmd(state_dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_p11kms"));
    cmd.env("P11KMS_STATE_DIR", state_dir)
        .env_remove("P11KMS_CONFIG")
        .env_remove("P11KMS_REQUIRE_IN_TOKEN_SEALING")
        .env_remove("SOFTHSM2_CONF")
        .env_remove("KRYOPTIC_CONF");
    cmd
}

/// A service opened afresh over the fixture's token (its own `Token`): what a restarted or
/// second process sees.
pub fn fresh_kms() -> Kms {
    Kms::new(
        fresh_token(2),
        p11kms::kms::Settings::new(kms().scope().clone()),
    )
    .expect("open kms")
}

/// A second `Token` over the fixture's token, with `sessions` sessions.
pub fn fresh_token(sessions: usize) -> Arc<p11kms::hsm::Token> {
    p11kms::app::open_token(&fixture().config, sessions).expect("open token")
}

pub fn key_req(k: &str) -> p11kms::kms::types::KeyIdRequest {
    p11kms::kms::types::KeyIdRequest {
        key_id: Some(k.into()),
        ..Default::default()
    }
}

/// The backing key (version `version`) of key `id` in `token`, proven genuine.
pub fn cmk(
    token: &p11kms::hsm::Token,
    id: &p11kms::kms::KeyId,
    version: u32,
) -> p11kms::hsm::CmkHandle {
    use p11kms::kms::{cmk_id, cmk_label};
    match token
        .find_cmk(
            &cmk_label(id, version),
            &cmk_id(id, version),
            p11kms::hsm::BackingKind::Derive,
        )
        .expect("find the CMK")
    {
        p11kms::hsm::CmkLookup::Found(h) => h,
        other => panic!("CMK {id} v{version}: {other:?}"),
    }
}

/// Says, visibly even under the test harness's output capture, that a test was skipped and
/// why (a capability this token lacks).
pub fn skip(test: &str, why: &str) {
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test} on {:?}: {why}",
        token_kind()
    );
}
