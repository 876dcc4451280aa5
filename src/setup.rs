//! First-run set-up of the embedded default: the state folder's files and the SoftHSM token.

use std::path::Path;

use crate::config::file::TempFile;
use crate::config::{find_softhsm_module, EmbeddedToken};
use crate::error::Result;
use crate::hsm;

/// What [`init_embedded`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct InitOutcome {
    /// The state folder's files were created now.
    pub files_created: bool,
    /// The token was initialised now.
    pub token_created: bool,
}

/// Idempotent: creates the state folder's files (SoftHSM config, PINs, dev credential, all
/// 0600) and initialises the embedded token if it does not exist yet.
pub fn init_embedded(state_dir: &Path) -> Result<InitOutcome> {
    let embedded = EmbeddedToken {
        state_dir: state_dir.to_path_buf(),
    };
    let files_created = embedded.ensure_files()?;
    // A token emptied by a killed login must be restored, not initialised a second time.
    repair_embedded(state_dir)?;
    // SoftHSM reads SOFTHSM2_CONF in C_Initialize: set it before the module is loaded.
    std::env::set_var("SOFTHSM2_CONF", embedded.conf_path());
    let module = find_softhsm_module()?;
    let so_pin = crate::config::SecretSource::File(embedded.so_pin_path()).read()?;
    let user_pin = crate::config::SecretSource::File(embedded.pin_path()).read()?;
    let token_created = hsm::init_token(
        &module,
        EmbeddedToken::LABEL,
        so_pin.expose(),
        user_pin.expose(),
    )?;
    // Takes the copy of the new token's file.
    repair_embedded(state_dir)?;
    Ok(InitOutcome {
        files_created,
        token_created,
    })
}

/// Where the copy of each embedded token's `token.object` is kept.
fn backup_dir(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("token-backup")
}

/// SoftHSM rewrites its `token.object` file in place (truncate, then write) on every login, so
/// a process killed at that instant leaves it empty and the token vanishes for every process.
/// For the embedded token a copy is kept (taken once the file is complete: its content, the
/// label and the PIN-wrapped token key, does not change afterwards except for status flags),
/// and an empty or missing live file is put back from it. Returns true if anything was
/// restored. Real HSMs and other tokens are not touched.
pub fn repair_embedded(state_dir: &Path) -> Result<bool> {
    let embedded = EmbeddedToken {
        state_dir: state_dir.to_path_buf(),
    };
    let Ok(dirs) = std::fs::read_dir(embedded.token_dir()) else {
        return Ok(false);
    };
    let backups = backup_dir(state_dir);
    let mut restored = false;
    for dir in dirs.flatten() {
        let live = dir.path().join("token.object");
        let backup = backups.join(format!("{}.object", dir.file_name().to_string_lossy()));
        let live_len = std::fs::metadata(&live).map(|m| m.len()).unwrap_or(0);
        if live_len > 0 {
            if !backup.exists() {
                copy_atomically(&live, &backup)?;
            }
        } else if backup.exists() {
            copy_atomically(&backup, &live)?;
            restored = true;
        }
    }
    Ok(restored)
}

/// Copies `from` to `to` through a temporary file and a rename, mode 0600.
fn copy_atomically(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |what: &str, e: std::io::Error| {
        crate::KmsError::io(format!("{what} {}: {e}", to.display()))
    };
    let bytes = std::fs::read(from).map_err(|e| io("reading the source of", e))?;
    if bytes.is_empty() {
        return Ok(());
    }
    if let Some(parent) = to.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| io("creating the folder of", e))?;
    }
    let mut tmp = TempFile::beside(to, 0o600).map_err(|e| io("writing", e))?;
    std::io::Write::write_all(tmp.file(), &bytes).map_err(|e| io("writing", e))?;
    tmp.sync().map_err(|e| io("syncing", e))?;
    tmp.rename_onto(to).map_err(|e| io("renaming onto", e))
}
