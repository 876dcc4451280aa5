//! p11kms: an AWS KMS-compatible key service whose master keys live in a PKCS#11 token.
//!
//! As a library: [`open`] a service from a [`config::Config`] (or build one with [`Kms::new`]
//! over a token from [`open_token`]), then call its operations with the request and
//! response types of [`types`], named as in the AWS KMS API Reference. Failures are a
//! [`KmsError`], whose kind is the AWS exception.
//!
//! The rooms, one job each (`docs/design.md` has the map and what each may import):
//! - [`hsm`]: everything PKCS#11 (module, sessions, mechanisms, objects), with its own error
//!   type and no AWS names. The only room that imports `cryptoki`.
//! - [`kms`]: the operations and their rules over a token (key references, states,
//!   ciphertext format, encryption context, the metadata store). A library without the server.
//! - [`api`]: the wire protocol: HTTP, SigV4, authorization, connections. The only room that
//!   knows HTTP.
//! - [`app`]: opening the service from a configuration (the environment a module reads, PIN
//!   sources, the embedded token's repairs).
//! - [`config`]: configuration files, secret sources and the embedded default token.
//! - [`setup`]: first-run set-up of the embedded default token.
//! - [`envelope`]: the streaming file container built on data keys (client-side crypto).
//! - [`cli`]: the `p11kms` command line.
//! - [`error`]: the one error type of the service, carrying AWS exception names.
//! - `bench` (feature `bench`, on by default): `p11kms bench`, measurements against the
//!   token's own ceiling.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod audit;
#[cfg(feature = "bench")]
pub(crate) mod bench;
pub mod cli;
pub mod config;
pub mod der;
pub mod envelope;
pub mod error;
pub mod hsm;
pub(crate) mod json_text;
pub mod kms;
pub mod latency;
pub(crate) mod process;
pub mod seed;
pub mod setup;
mod sync;

pub use app::{open, open_token};
pub use error::{KmsError, Result};
pub use kms::{types, Kms, Settings};
