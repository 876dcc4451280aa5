//! Opening the service from a configuration: the one room that knows both the configuration
//! (files, the environment the PKCS#11 module reads, PIN sources, the embedded SoftHSM token's
//! repairs) and what it builds from it (a [`Token`], then a [`Kms`] with plain settings).
//! `kms` itself knows a token and its own rules, nothing about files or the environment.

use std::sync::Arc;

use crate::config::{self, Config, ConfigSource};
use crate::error::Result;
use crate::hsm::{Token, TokenParams, TokenSelector};
use crate::kms::{ArnScope, EpochPolicy, Kms, SealingPolicy, Settings};

/// Opens the token named by `config` and the service over it. Refuses a token that cannot
/// seal data keys inside itself when `require_in_token_sealing` is set (or `sealing =
/// "token"`), naming the token and what it lacks.
pub fn open(config: &Config) -> Result<Kms> {
    let kms = open_unenforced(config)?;
    kms.enforce_custody()?;
    Ok(kms)
}

/// [`open`] without the in-token sealing requirement: for `token info`, which must be able to
/// say why a token does not meet it. The host path is still never chosen when sealing is
/// required: such a service refuses WithoutPlaintext requests instead.
pub fn open_unenforced(config: &Config) -> Result<Kms> {
    let token = open_token(config, config.sessions)?;
    Kms::new(token, settings(config))
}

/// The token `config` names, logged in, with a pool of `sessions` sessions.
pub fn open_token(config: &Config, sessions: usize) -> Result<Arc<Token>> {
    // Modules read their environment (SOFTHSM2_CONF, KRYOPTIC_CONF) in C_Initialize. This
    // runs before any token thread exists.
    config.token.export_env();
    if let ConfigSource::Embedded(state_dir) = &config.source {
        crate::setup::repair_embedded(state_dir)?;
    }
    let pin = config.token.pin.read()?;
    let token = Token::open(TokenParams {
        module: &config.token.module,
        selector: &selector(&config.token.selector),
        pin: pin.expose(),
        sessions,
    })?;
    Ok(Arc::new(token))
}

/// The service's settings from the configuration.
pub fn settings(config: &Config) -> Settings {
    Settings {
        scope: ArnScope::new(&config.region, &config.account),
        epochs: EpochPolicy::default(),
        sealing: match config.sealing {
            config::SealingPolicy::Auto => SealingPolicy::Auto,
            config::SealingPolicy::Host => SealingPolicy::Host,
            config::SealingPolicy::Token => SealingPolicy::Token,
        },
        require_in_token_sealing: config.require_in_token_sealing,
    }
}

fn selector(s: &config::TokenSelector) -> TokenSelector {
    match s {
        config::TokenSelector::Label(l) => TokenSelector::Label(l.clone()),
        config::TokenSelector::Slot(n) => TokenSelector::Slot(*n),
    }
}
