//! The KMS: operations and their rules over a token.
//!
//! [`Kms`] is the library entry point: open it over a [`Token`] (or from a
//! [`Config`](crate::config::Config)) and call the operations, named and shaped as in the AWS
//! KMS API. Nothing here knows HTTP; the wire layer and the CLI are thin callers.

pub mod blob;
pub mod context;
pub mod custody;
pub mod epoch;
pub mod keyref;
mod ops;
pub mod records;
pub mod store;
pub mod types;

use std::sync::Arc;

pub use context::EncryptionContext;
pub use custody::{Custody, SealingPath};
pub use epoch::EpochPolicy;
pub use keyref::{AliasName, ArnScope, Forms, KeyId, KeyRef};
pub use records::KeyState;

use crate::config::{Config, SealingPolicy};
use crate::error::{KmsError, Result};
use crate::hsm::{Token, TokenParams};

/// The key service over one token.
pub struct Kms {
    token: Arc<Token>,
    scope: ArnScope,
    store: store::Store,
    epochs: epoch::EpochKeys,
    /// Where GenerateDataKeyWithoutPlaintext seals (chosen at open from policy and token).
    sealing: SealingPath,
    /// Never fall back to the host path (`require_in_token_sealing`).
    require_in_token: bool,
}

impl Kms {
    /// Opens the token named by `config` and loads the metadata it holds. Refuses a token
    /// that cannot seal data keys inside itself when `require_in_token_sealing` is set (or
    /// `sealing = "token"`), naming the token and what it lacks.
    pub fn open(config: &Config) -> Result<Kms> {
        let kms = Kms::open_unenforced(config)?;
        kms.enforce_custody()?;
        Ok(kms)
    }

    /// [`Kms::open`] without the in-token sealing requirement: for `token info`, which must be
    /// able to say why a token does not meet it. The host path is still never chosen when
    /// sealing is required: such a service refuses WithoutPlaintext requests instead.
    pub fn open_unenforced(config: &Config) -> Result<Kms> {
        // Modules read their environment (SOFTHSM2_CONF, KRYOPTIC_CONF) in C_Initialize. This
        // runs before any token thread exists.
        config.token.export_env();
        if let crate::config::ConfigSource::Embedded(state_dir) = &config.source {
            crate::setup::repair_embedded(state_dir)?;
        }
        let pin = config.token.pin.read()?;
        let token = Token::open(TokenParams {
            module: &config.token.module,
            selector: &config.token.selector,
            pin: &pin,
            sessions: config.sessions,
        })?;
        let mut kms = Kms::with_sealing(
            Arc::new(token),
            ArnScope::new(&config.region, &config.account),
            EpochPolicy::default(),
            config.sealing,
        )?;
        kms.require_in_token |= config.require_in_token_sealing;
        Ok(kms)
    }

    /// A service over an already open token, sealing data keys in the token where it can.
    pub fn new(token: Arc<Token>, scope: ArnScope, policy: EpochPolicy) -> Result<Kms> {
        Kms::with_sealing(token, scope, policy, SealingPolicy::Auto)
    }

    /// A service over an already open token with an explicit sealing policy. `Token` on a
    /// token that cannot seal data keys itself is refused.
    pub fn with_sealing(
        token: Arc<Token>,
        scope: ArnScope,
        policy: EpochPolicy,
        sealing: SealingPolicy,
    ) -> Result<Kms> {
        let in_token = token.capabilities().in_token_sealing();
        let path = match (sealing, in_token) {
            (SealingPolicy::Host, _) | (SealingPolicy::Auto, false) => SealingPath::Host,
            (SealingPolicy::Auto | SealingPolicy::Token, true) => SealingPath::Token,
            (SealingPolicy::Token, false) => {
                return Err(KmsError::Config(custody::refusal(
                    &token,
                    "sealing = \"token\"",
                )))
            }
        };
        let store = store::Store::open(Arc::clone(&token))?;
        let kms = Kms {
            token,
            scope,
            store,
            epochs: epoch::EpochKeys::new(policy),
            sealing: path,
            require_in_token: sealing == SealingPolicy::Token,
        };
        kms.reconcile_token_state()?;
        Ok(kms)
    }

    /// Where GenerateDataKeyWithoutPlaintext seals data keys in this service.
    pub fn sealing_path(&self) -> SealingPath {
        self.sealing
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

    /// Whether the in-memory metadata and key caches can be read now (none is held: they
    /// never are for long). For readiness checks.
    pub fn responsive(&self) -> bool {
        self.store.responsive() && self.epochs.responsive()
    }
}
