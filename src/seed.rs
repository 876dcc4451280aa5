//! Seeding: keys and aliases with fixed ids from a file (`p11kms seed FILE`, `serve --seed
//! FILE`), as test suites written for emulators expect. The key material is generated in the
//! token as for any CreateKey; only the ids, specs, descriptions, tags and aliases come from
//! the file. Seeding is idempotent: a key whose id exists is left as it is, an alias that
//! exists is left pointing where it points.
//!
//! ```toml
//! [[key]]
//! id = "11111111-2222-3333-4444-555555555555"
//! spec = "SYMMETRIC_DEFAULT"        # default
//! usage = "ENCRYPT_DECRYPT"         # default
//! description = "the app's key"
//! aliases = ["alias/app"]
//! tags = { team = "payments" }
//! region = "eu-west-1"              # default: the configuration's region
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{ErrorKind, KmsError, Result};
use crate::kms::types::{AliasRequest, CreateKeyRequest, Tag};
use crate::kms::{ArnScope, KeyId, KeySelector, Kms};

/// A seed file is read whole; larger ones are refused.
const MAX_SEED_BYTES: u64 = 1 << 20;
/// Keys in one seed file at most.
const MAX_SEED_KEYS: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedFile {
    #[serde(default)]
    key: Vec<SeedKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedKey {
    id: String,
    spec: Option<String>,
    usage: Option<String>,
    description: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    region: Option<String>,
}

/// What seeding did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seeded {
    /// Keys created now.
    pub created: Vec<KeyId>,
    /// Keys whose id existed already (left as they are).
    pub existing: Vec<KeyId>,
    /// Aliases created now.
    pub aliases: Vec<String>,
}

/// Seeds the keys and aliases of the file at `path` in `account` (the configuration's, or CI
/// mode's), each in its `region` or `default_region`.
pub fn seed_file(kms: &Kms, path: &Path, account: &str, default_region: &str) -> Result<Seeded> {
    let size = std::fs::metadata(path)
        .map_err(|e| KmsError::config(format!("cannot read {}: {e}", path.display())))?
        .len();
    if size > MAX_SEED_BYTES {
        return Err(KmsError::config(format!(
            "{} is over {MAX_SEED_BYTES} bytes",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| KmsError::config(format!("cannot read {}: {e}", path.display())))?;
    let file: SeedFile =
        toml::from_str(&text).map_err(|e| KmsError::config(format!("{}: {e}", path.display())))?;
    if file.key.len() > MAX_SEED_KEYS {
        return Err(KmsError::config(format!(
            "{}: at most {MAX_SEED_KEYS} keys",
            path.display()
        )));
    }
    let mut out = Seeded::default();
    for k in file.key {
        let where_ = |e: KmsError| {
            KmsError::config(format!("{}: key {}: {}", path.display(), k.id, e.message()))
        };
        let id: KeyId = k.id.parse().map_err(where_)?;
        let scope = ArnScope::new(k.region.as_deref().unwrap_or(default_region), account);
        let tags = (!k.tags.is_empty()).then(|| {
            k.tags
                .iter()
                .map(|(key, value)| Tag {
                    tag_key: key.clone(),
                    tag_value: value.clone(),
                })
                .collect()
        });
        match kms.create_key(CreateKeyRequest {
            key_id: Some(id),
            key_spec: k.spec.clone(),
            key_usage: k.usage.clone(),
            description: k.description.clone(),
            tags,
            scope: Some(scope.clone()),
            ..Default::default()
        }) {
            Ok(_) => out.created.push(id),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => out.existing.push(id),
            Err(e) => return Err(where_(e)),
        }
        for alias in &k.aliases {
            match kms.create_alias(AliasRequest {
                alias_name: Some(alias.clone()),
                target_key_id: Some(KeySelector::Resolved(id)),
                scope: Some(scope.clone()),
            }) {
                Ok(()) => out.aliases.push(alias.clone()),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(where_(e)),
            }
        }
    }
    Ok(out)
}
