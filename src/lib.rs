//! p11kms: an AWS KMS-compatible key service whose master keys live in a PKCS#11 token.
//!
//! Rooms, one job each:
//! - [`hsm`]: everything that touches PKCS#11 (module, sessions, mechanisms, objects). The only
//!   module that imports `cryptoki`.
//! - [`kms`]: the operations and their rules (key references, states, ciphertext format,
//!   encryption context, metadata store). Plain functions over a token handle.
//! - [`envelope`]: the streaming file container built on data keys (client-side crypto).
//! - [`config`]: configuration files, PIN sources and the embedded default token.
//! - [`cli`]: the `p11kms` command line.
//! - [`error`]: the one error enum, carrying AWS exception names.
//! - [`setup`]: first-run set-up of the embedded default token.
//! - [`bench`]: `p11kms bench`, measurements against the token's own ceiling.

pub mod api;
pub mod app;
#[cfg(feature = "bench")]
pub mod bench;
pub mod cli;
pub mod config;
pub mod envelope;
pub mod error;
pub mod hsm;
pub mod kms;
pub mod process;
pub mod setup;
mod sync;

pub use error::{KmsError, Result};
