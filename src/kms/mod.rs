//! The KMS: operations and their rules over a token.
//!
//! [`Kms`] is the library entry point: open it over a [`Token`] (or from a
//! [`Config`](crate::config::Config)) and call the operations, named and shaped as in the AWS
//! KMS API. Nothing here knows HTTP; the wire layer and the CLI are thin callers.

pub mod blob;
pub mod context;
pub mod epoch;
pub mod keyref;
mod ops;
pub mod records;
pub mod store;
pub mod types;

use std::sync::Arc;

pub use context::EncryptionContext;
pub use epoch::EpochPolicy;
pub use keyref::{AliasName, ArnScope, Forms, KeyId, KeyRef};
pub use records::KeyState;

use crate::config::Config;
use crate::error::Result;
use crate::hsm::{Token, TokenParams};

/// The key service over one token.
pub struct Kms {
    token: Arc<Token>,
    scope: ArnScope,
    store: store::Store,
    epochs: epoch::EpochKeys,
}

impl Kms {
    /// Opens the token named by `config` and loads the metadata it holds.
    pub fn open(config: &Config) -> Result<Kms> {
        if let Some(conf) = &config.token.softhsm2_conf {
            // SoftHSM reads SOFTHSM2_CONF in C_Initialize. This runs before any token thread
            // exists; the variable is only ever set to the configured file.
            std::env::set_var("SOFTHSM2_CONF", conf);
        }
        let pin = config.token.pin.read()?;
        let token = Token::open(TokenParams {
            module: &config.token.module,
            selector: &config.token.selector,
            pin: &pin,
            sessions: config.sessions,
        })?;
        Kms::new(
            Arc::new(token),
            ArnScope::new(&config.region, &config.account),
            EpochPolicy::default(),
        )
    }

    /// A service over an already open token.
    pub fn new(token: Arc<Token>, scope: ArnScope, policy: EpochPolicy) -> Result<Kms> {
        let store = store::Store::open(Arc::clone(&token))?;
        let kms = Kms {
            token,
            scope,
            store,
            epochs: epoch::EpochKeys::new(policy),
        };
        kms.reconcile_token_state()?;
        Ok(kms)
    }

    pub fn token(&self) -> &Token {
        &self.token
    }

    pub fn scope(&self) -> &ArnScope {
        &self.scope
    }

    /// Number of derived keys this process holds for opening blobs.
    pub fn cached_epoch_keys(&self) -> usize {
        self.epochs.cached_len()
    }
}
