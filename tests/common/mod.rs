//! Shared fixture: one fresh SoftHSM token per test binary, in its own temporary state folder
//! (its own `SOFTHSM2_CONF`), set up exactly as `p11kms token init` sets up the embedded default.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use p11kms::config::Config;
use p11kms::kms::types::CreateKeyRequest;
use p11kms::kms::Kms;

pub struct Fixture {
    _dir: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub config: Config,
    pub kms: Arc<Kms>,
}

/// The per-binary token and a `Kms` over it.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("p11kms-test-")
            .tempdir()
            .expect("temp dir");
        let state_dir = dir.path().join("state");
        p11kms::setup::init_embedded(&state_dir).expect("init embedded token");
        let config = Config::embedded(&state_dir).expect("embedded config");
        let kms = Arc::new(Kms::open(&config).expect("open kms"));
        Fixture {
            _dir: dir,
            state_dir,
            config,
            kms,
        }
    })
}

pub fn kms() -> &'static Kms {
    &fixture().kms
}

pub fn state_dir() -> &'static Path {
    &fixture().state_dir
}

/// A new enabled key; returns its id.
pub fn new_key() -> String {
    kms()
        .create_key(CreateKeyRequest::default())
        .expect("create key")
        .key_metadata
        .key_id
}

/// The `p11kms` binary with the fixture's state folder as its embedded default.
pub fn p11kms_cmd() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_p11kms"));
    cmd.env("P11KMS_STATE_DIR", state_dir())
        .env_remove("P11KMS_CONFIG")
        .env_remove("SOFTHSM2_CONF");
    cmd
}

/// A service opened afresh over the fixture's token (its own `Token`): what a restarted or
/// second process sees.
pub fn fresh_kms() -> Kms {
    let f = fixture();
    let pin = f.config.token.pin.read().expect("pin");
    let token = p11kms::hsm::Token::open(p11kms::hsm::TokenParams {
        module: &f.config.token.module,
        selector: &f.config.token.selector,
        pin: &pin,
        sessions: 2,
    })
    .expect("open token");
    Kms::new(Arc::new(token), kms().scope().clone(), Default::default()).expect("open kms")
}

pub fn key_req(k: &str) -> p11kms::kms::types::KeyIdRequest {
    p11kms::kms::types::KeyIdRequest {
        key_id: Some(k.into()),
        ..Default::default()
    }
}
