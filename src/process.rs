//! Hygiene of a long-running p11kms process (`serve`): no core dumps, not dumpable, secret
//! environment variables gone once read, and enough file descriptors for its connections.
//!
//! A core dump or a `ptrace` attach would hand out the PIN and every credential secret,
//! which must stay in memory while the server runs; environment variables stay readable
//! (in `/proc/<pid>/environ`, and by every child) for the life of a process unless they are
//! wiped. Each step is best effort and says what it managed, for the start-up log.
//!
//! This module and `hsm::raw` are the only places with `unsafe` code: wiping an inherited
//! environment string in place has no safe interface.

use std::ffi::CStr;

use rustix::process::{self, DumpableBehavior, Resource, Rlimit};

/// What [`harden`] managed to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardened {
    /// `PR_SET_DUMPABLE` is 0: no core dumps, no `ptrace` attach by the same user, and
    /// `/proc/<pid>/` files (environ, mem, maps) owned by root.
    pub not_dumpable: bool,
    /// `RLIMIT_CORE` is 0.
    pub no_core_files: bool,
    /// The soft `RLIMIT_NOFILE` now in force.
    pub open_files: u64,
}

impl Hardened {
    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        format!(
            "process: dumpable={}, core file size limit={}, open files limit={}",
            u8::from(!self.not_dumpable),
            if self.no_core_files { "0" } else { "unchanged" },
            self.open_files
        )
    }
}

/// Turns core dumps and dumpability off and raises the soft descriptor limit to the hard one
/// (every connection is a descriptor; the connection limit is kept under it).
pub fn harden() -> Hardened {
    let not_dumpable = process::set_dumpable_behavior(DumpableBehavior::NotDumpable).is_ok()
        && process::dumpable_behavior().is_ok_and(|b| b == DumpableBehavior::NotDumpable);
    let no_core_files = process::setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .is_ok();
    let files = process::getrlimit(Resource::Nofile);
    if files.current != files.maximum {
        let _ = process::setrlimit(
            Resource::Nofile,
            Rlimit {
                current: files.maximum,
                maximum: files.maximum,
            },
        );
    }
    let open_files = process::getrlimit(Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    Hardened {
        not_dumpable,
        no_core_files,
        open_files,
    }
}

/// Wipes the environment variable `name`: its value is overwritten where it lies (for an
/// inherited variable, in the block `/proc/<pid>/environ` shows), then the variable is
/// removed. Must be called before the process starts other threads that read the
/// environment (p11kms calls it right after the secrets are read at start-up).
pub fn wipe_env(name: &str) {
    if name.is_empty() || name.contains('=') {
        return;
    }
    let prefix = name.as_bytes();
    // SAFETY: `environ` is the process's NULL-terminated array of NUL-terminated strings.
    // Nothing else reads or changes it meanwhile: start-up runs this before any thread that
    // touches the environment exists. Only bytes inside an entry's own string (after
    // "NAME=", before its NUL) are written, so every entry stays a valid C string.
    #[allow(unsafe_code)]
    unsafe {
        let mut entry = libc::environ;
        while !entry.is_null() && !(*entry).is_null() {
            let text = CStr::from_ptr(*entry).to_bytes();
            if text.len() > prefix.len() && text.starts_with(prefix) && text[prefix.len()] == b'=' {
                let value = (*entry).add(prefix.len() + 1);
                std::ptr::write_bytes(value, 0, text.len() - prefix.len() - 1);
            }
            entry = entry.add(1);
        }
    }
    std::env::remove_var(name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wiped_variables_are_gone() {
        let name = "P11KMS_TEST_PROCESS_WIPE";
        std::env::set_var(name, "s3cret-value");
        wipe_env(name);
        assert!(std::env::var_os(name).is_none());
        // Names that cannot be variables are left alone (and do not panic).
        wipe_env("");
        wipe_env("A=B");
    }
}
