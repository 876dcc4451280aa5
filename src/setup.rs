//! First-run set-up of the embedded default: the state folder's files and the SoftHSM token.

use std::path::Path;

use crate::config::{find_softhsm_module, EmbeddedToken};
use crate::error::Result;
use crate::hsm;

/// What [`init_embedded`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct InitOutcome {
    pub files_created: bool,
    pub token_created: bool,
}

/// Idempotent: creates the state folder's files (SoftHSM config, PINs, dev credential, all
/// 0600) and initialises the embedded token if it does not exist yet.
pub fn init_embedded(state_dir: &Path) -> Result<InitOutcome> {
    let embedded = EmbeddedToken {
        state_dir: state_dir.to_path_buf(),
    };
    let files_created = embedded.ensure_files()?;
    // SoftHSM reads SOFTHSM2_CONF in C_Initialize: set it before the module is loaded.
    std::env::set_var("SOFTHSM2_CONF", embedded.conf_path());
    let module = find_softhsm_module()?;
    let so_pin = crate::config::SecretSource::File(embedded.so_pin_path()).read()?;
    let user_pin = crate::config::SecretSource::File(embedded.pin_path()).read()?;
    let token_created = hsm::init_token(&module, EmbeddedToken::LABEL, &so_pin, &user_pin)?;
    Ok(InitOutcome {
        files_created,
        token_created,
    })
}
