//! The KMS: operations and their rules over a token.
//!
//! [`Kms`] is the library entry point: open it over a [`Token`] ([`Kms::new`]; from a
//! configuration, [`crate::app::open`]) and call the operations, named and shaped as in the
//! AWS KMS API. Nothing here knows HTTP, files or the environment; the wire layer and the CLI
//! are thin callers.

mod backing;
pub(crate) mod blob;
pub(crate) mod context;
pub(crate) mod custody;
pub(crate) mod domain;
pub(crate) mod epoch;
pub mod grant;
pub(crate) mod keyref;
mod ops;
pub(crate) mod policy;
pub(crate) mod records;
pub(crate) mod specs;
pub(crate) mod stats;
pub(crate) mod store;
mod token_errors;
pub mod types;
mod upkeep;
pub(crate) mod validation;

use std::sync::Arc;

pub use context::EncryptionContext;
pub use custody::{Custody, SealingPath};
pub use domain::{
    AwsEnum, DataKeySpec, EncryptionAlgorithm, ExpirationModel, GrantOperation, KeyManager,
    KeySpec, KeyState, KeyUsage, MacAlgorithm, Origin, SigningAlgorithm, WrappingAlgorithm,
    WrappingKeySpec,
};
pub use epoch::{EpochPolicy, EpochStats};
pub use grant::{GrantConstraint, GrantId, GrantView, MAX_GRANTS_PER_KEY};
pub use keyref::{AliasKey, AliasName, ArnScope, Forms, KeyId, KeyRef, KeySelector};
pub use ops::{LockoutCheck, DEFAULT_POLICY_NAME};
pub use ops::{DEFAULT_ROTATION_PERIOD_DAYS, MAX_ON_DEMAND_ROTATIONS};
pub use policy::{
    ConditionContext, ConditionMap, Outcome, PolicyDocument, PolicyError, PolicyKind,
    Request as PolicyRequest,
};
pub use records::key_material_id;
/// How p11kms names its objects in a token (`docs/formats.md`): for tools that inspect one.
pub use records::{cmk_id, cmk_label, APPLICATION, CMK_LABEL_PREFIX};
pub use stats::ServiceStats;
pub use store::StoreStats;

use crate::error::{KmsError, Result};
use crate::hsm::Token;

/// Where GenerateDataKeyWithoutPlaintext is to seal data keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SealingPolicy {
    /// In the token where it can (`C_GenerateKey` + `C_WrapKey` with AES-GCM), else on the host.
    #[default]
    Auto,
    /// Always `C_GenerateRandom` + `C_Encrypt`: the key bytes pass through host memory.
    Host,
    /// Always in the token; a token that cannot is refused.
    Token,
}

/// How a [`Kms`] is set up over its token.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Region and account of the ARNs.
    pub scope: ArnScope,
    /// Bounds of the epoch keys.
    pub epochs: EpochPolicy,
    /// Where GenerateDataKeyWithoutPlaintext seals data keys.
    pub sealing: SealingPolicy,
    /// Refuse (at [`Kms::enforce_custody`]) a token that cannot seal data keys itself.
    pub require_in_token_sealing: bool,
}

impl Settings {
    /// The defaults for `scope`: sealing in the token where it can, default epoch bounds.
    pub fn new(scope: ArnScope) -> Settings {
        Settings {
            scope,
            epochs: EpochPolicy::default(),
            sealing: SealingPolicy::Auto,
            require_in_token_sealing: false,
        }
    }
}

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
    /// Public keys imported into the token as session objects (Verify, RSA Encrypt).
    public_keys: std::sync::Mutex<std::collections::HashMap<KeyId, Arc<crate::hsm::SessionKey>>>,
    /// Key agreement keys whose record's public key was proven to be the token's.
    proven_agreement_keys: std::sync::Mutex<std::collections::HashSet<KeyId>>,
    /// Compiled key policies (see `ops/policies.rs`).
    policies: ops::PolicyCache,
    /// Live grants a key may have ([`MAX_GRANTS_PER_KEY`] unless set otherwise).
    grant_limit: std::sync::atomic::AtomicUsize,
    /// When upkeep last looked for expired wrapping keys of key import (`upkeep.rs`).
    wrapping_sweep: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Kms {
    /// The service over an open token: loads the metadata the token holds and reconciles the
    /// token's attributes with it. `SealingPolicy::Token` on a token that cannot seal data keys
    /// itself is refused.
    pub fn new(token: Arc<Token>, settings: Settings) -> Result<Kms> {
        let in_token = token.capabilities().in_token_sealing();
        let path = match (settings.sealing, in_token) {
            (SealingPolicy::Host, _) | (SealingPolicy::Auto, false) => SealingPath::Host,
            (SealingPolicy::Auto | SealingPolicy::Token, true) => SealingPath::Token,
            (SealingPolicy::Token, false) => {
                return Err(KmsError::config(custody::refusal(
                    &token,
                    "sealing = \"token\"",
                )))
            }
        };
        let store = store::Store::open(Arc::clone(&token), Arc::clone(&token))?;
        let kms = Kms {
            token,
            scope: settings.scope,
            store,
            epochs: epoch::EpochKeys::new(settings.epochs),
            sealing: path,
            require_in_token: settings.sealing == SealingPolicy::Token
                || settings.require_in_token_sealing,
            public_keys: Default::default(),
            proven_agreement_keys: Default::default(),
            policies: Default::default(),
            grant_limit: std::sync::atomic::AtomicUsize::new(MAX_GRANTS_PER_KEY),
            wrapping_sweep: Default::default(),
        };
        kms.reconcile_token_state()?;
        Ok(kms)
    }

    /// Where GenerateDataKeyWithoutPlaintext seals data keys in this service.
    pub fn sealing_path(&self) -> SealingPath {
        self.sealing
    }

    /// The token the service runs over.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// The region and account of the ARNs this service hands out.
    pub fn scope(&self) -> &ArnScope {
        &self.scope
    }

    /// The account a key belongs to.
    pub fn account_of(&self, record: &records::KeyRecord) -> String {
        record
            .account
            .clone()
            .unwrap_or_else(|| self.scope.account.clone())
    }

    /// The region a key belongs to.
    pub fn region_of<'a>(&'a self, record: &'a records::KeyRecord) -> &'a str {
        record.region.as_deref().unwrap_or(&self.scope.region)
    }

    /// Whether a key belongs to `account` (in any region).
    pub fn in_account(&self, record: &records::KeyRecord, account: &str) -> bool {
        record.account.as_deref().unwrap_or(&self.scope.account) == account
    }

    /// Whether a key belongs to the region and account of `scope`.
    pub fn in_scope(&self, record: &records::KeyRecord, scope: &ArnScope) -> bool {
        self.in_account(record, &scope.account) && self.region_of(record) == scope.region
    }

    /// A key's ARN, in its own region and account.
    pub fn key_arn(&self, record: &records::KeyRecord) -> String {
        match (&record.region, &record.account) {
            (None, None) => self.scope.key_arn(&record.id),
            _ => {
                ArnScope::new(self.region_of(record), &self.account_of(record)).key_arn(&record.id)
            }
        }
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
